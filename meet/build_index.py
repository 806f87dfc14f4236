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

Sharded over processes (:mod:`meet.sharding`): ``torchrun --nproc_per_node N -m
meet.build_index ...`` encodes one contiguous shard of the images and captions per rank
(its own GPU when there are several), and rank 0 gathers them and builds the same index a
single process would.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meet import cli
from meet.config import CascadeConfig
from meet.errors import ConfigError

if TYPE_CHECKING:
    from meet.inference import MEETModel
    from meet.sharding import Ranks


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
    from meet.sharding import close_ranks, init_ranks

    if args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1", fix="e.g. --batch-size 256")
    ranks = init_ranks()
    try:
        if ranks.main:
            with cli.output_folder(args.out):
                _build(args, ranks)
        else:
            _build(args, ranks)
    finally:
        close_ranks(ranks)


def _build(args: argparse.Namespace, ranks: "Ranks") -> None:
    """Encode (this rank's shard under torchrun), then, on rank 0 only, index and save."""
    from meet.config import validate
    from meet.data.loading import load_split
    from meet.inference import load
    from meet.search import build_pair, save_pair
    from meet.search.index import BUILD_FIELDS, INVERTED_FIELDS, progress_reporter
    from meet.sharding import gather_encoded

    start = time.perf_counter()
    model = load(args.checkpoint, device=ranks.device(args.device))
    model.cfg = validate(model.cfg.override(**cli.given_flags(args, BUILD_FIELDS + INVERTED_FIELDS)))
    ds = load_split(args.data, args.split, model.cfg.model)
    if ranks.world == 1:
        images, texts = model.encode_dataset(ds, batch_size=args.batch_size, progress=True)
    else:
        images, texts = _encode_sharded(model, ds, ranks, args.batch_size)
        images, texts = gather_encoded(images, ranks), gather_encoded(texts, ranks)
        if not ranks.main:
            return
    tick, close = progress_reporter(None, len(images) + len(texts))
    try:
        image_index, text_index = build_pair(model, images, texts, ds.image_ids,
                                             [str(c) for c in ds.caption_ids], progress=tick,
                                             meta={"dataset": f"{ds.name}/{ds.split}", "encode_ranks": ranks.world})
    finally:
        close()
    try:
        save_pair(args.out, image_index, text_index)
    except OSError as exc:
        raise ConfigError(f"cannot write the index to {args.out}: {exc}",
                          fix="free disk space or choose a writable folder") from exc
    shards = f" (encoded in {ranks.world} shards)" if ranks.world > 1 else ""
    print(f"indexed {image_index.n_items} images and {text_index.n_items} captions{shards} "
          f"(pq_space={image_index.pq_space}) in {time.perf_counter() - start:.1f} s -> {args.out}")


def _encode_sharded(model: "MEETModel", ds: Any, ranks: "Ranks", batch_size: int) -> tuple:
    """This rank's shard, with a progress bar per rank (``rank r/w`` in its label)."""
    from tqdm.auto import tqdm

    from meet.sharding import encode_shard, shard_bounds

    size = sum(b - a for a, b in (shard_bounds(ds.n_images, ranks.rank, ranks.world),
                                  shard_bounds(len(ds.captions), ranks.rank, ranks.world)))
    with tqdm(total=size, desc=f"encode rank {ranks.rank}/{ranks.world}", position=ranks.rank, leave=False) as bar:
        def tick(done: int, _total: int) -> None:
            bar.n = done
            bar.refresh()
        return encode_shard(model, ds, ranks, batch_size, progress=tick)


if __name__ == "__main__":
    sys.exit(main())
