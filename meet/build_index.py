"""Build and save a gallery pair index: ``python -m meet.build_index``.

    python -m meet.build_index --checkpoint RUN --data DIR --split test --out INDEX \
        [--reciprocal-k 100] [--pq-space hash|dense|residual] [--pq-fit-items N] \
        [--pq-beam-size B] [--hamming-index ivf [--hamming-nlist N]] [--device auto]

Encodes the split's images and captions once with the checkpoint, computes each item's
top-k scores against the other side (complementarity; ``--reciprocal-k 0`` skips it, which
a 100k-image gallery may want: it costs n_images x n_captions dot products), and saves
``INDEX/image`` and ``INDEX/text`` (see :class:`meet.search.GalleryIndex`; load both with
:func:`meet.search.load_pair`). Progress bars throughout. The build settings default to the
checkpoint's; ``--pq-space dense`` quantizes the OPQ-rotated dense vectors instead of the
hash features, ``--pq-space residual`` the dense vectors by residual quantization (same 8
bytes per item; far closer to the dense ranking on a large gallery, see
:mod:`meet.search.quantizers`). ``--hamming-index ivf`` also builds (and saves) the inverted
lists of the sublinear Hamming filter (:mod:`meet.search.inverted`), which the saved
index then uses by default.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from meet import cli
from meet.config import CascadeConfig
from meet.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    from meet.search.index import BUILD_FIELDS, INVERTED_FIELDS

    parser = argparse.ArgumentParser(prog="python -m meet.build_index", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint or run folder")
    parser.add_argument("--data", required=True, type=Path, help="data set folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", required=True, type=Path, help="index folder (new or empty)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=256)
    build = parser.add_argument_group("build settings (default: the checkpoint's)")
    cli.add_config_flags(build, CascadeConfig, only=BUILD_FIELDS + INVERTED_FIELDS, section="cascade")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    from meet.config import validate
    from meet.data.loading import load_split
    from meet.inference import load
    from meet.search import build_pair, save_pair
    from meet.search.index import BUILD_FIELDS, INVERTED_FIELDS, progress_reporter

    if args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1", fix="e.g. --batch-size 256")
    with cli.output_folder(args.out):
        start = time.perf_counter()
        model = load(args.checkpoint, device=args.device)
        model.cfg = validate(model.cfg.override(**cli.given_flags(args, BUILD_FIELDS + INVERTED_FIELDS)))
        ds = load_split(args.data, args.split, model.cfg.model)
        images, texts = model.encode_dataset(ds, batch_size=args.batch_size, progress=True)
        tick, close = progress_reporter(None, len(images) + len(texts))
        try:
            image_index, text_index = build_pair(model, images, texts, ds.image_ids,
                                                 [str(c) for c in ds.caption_ids], progress=tick,
                                                 meta={"dataset": f"{ds.name}/{ds.split}"})
        finally:
            close()
        try:
            save_pair(args.out, image_index, text_index)
        except OSError as exc:
            raise ConfigError(f"cannot write the index to {args.out}: {exc}",
                              fix="free disk space or choose a writable folder") from exc
    print(f"indexed {image_index.n_items} images and {text_index.n_items} captions "
          f"(pq_space={image_index.pq_space}) in {time.perf_counter() - start:.1f} s -> {args.out}")


if __name__ == "__main__":
    sys.exit(main())
