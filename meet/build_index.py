"""Build and save a gallery pair index: ``python -m meet.build_index``.

    python -m meet.build_index --checkpoint RUN --data DIR --split test --out INDEX \
        [--reciprocal-k 100] [--pq-space hash|dense|residual] [--device auto]

Encodes the split's images and captions once with the checkpoint, computes each item's
top-k scores against the other side (complementarity; ``--reciprocal-k 0`` skips it, which
a 100k-image gallery may want: it costs n_images x n_captions dot products), and saves
``INDEX/image`` and ``INDEX/text`` (see :class:`meet.index.GalleryIndex`). Progress bars
throughout. ``--pq-space dense`` quantizes the OPQ-rotated dense vectors instead of the hash
features, ``--pq-space residual`` the dense vectors by residual quantization (same 8 bytes
per item; far closer to the dense ranking on a large gallery, see :mod:`meet.dense_pq`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from meet.errors import ConfigError, MEETError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m meet.build_index", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint or run folder")
    parser.add_argument("--data", required=True, type=Path, help="data set folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", required=True, type=Path, help="index folder (created)")
    parser.add_argument("--reciprocal-k", type=int, default=None,
                        help="top-k scores kept per item against the other side (default: the checkpoint's)")
    parser.add_argument("--pq-space", choices=["hash", "dense", "residual"], default=None,
                        help="what the quantization filter's codes quantize (default: the checkpoint's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=256)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    created = False
    try:
        from meet.data.loading import load_split
        from meet.index import build_pair
        from meet.inference import load

        if args.reciprocal_k is not None and args.reciprocal_k < 0:
            raise ConfigError("--reciprocal-k must be 0 or more", fix="0 skips the complementarity scores")
        if args.batch_size < 1:
            raise ConfigError("--batch-size must be at least 1", fix="e.g. --batch-size 256")
        if args.out.is_dir() and any(args.out.iterdir()):
            raise ConfigError(f"--out {args.out} exists and is not empty", fix="choose a new folder")
        try:  # fail before the (long) encoding if --out cannot be written
            created = not args.out.exists()
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            created = False
            raise ConfigError(f"cannot create --out {args.out}: {exc}",
                              fix="choose a writable folder") from exc
        start = time.perf_counter()
        model = load(args.checkpoint, device=args.device)
        ds = load_split(args.data, args.split, model.cfg.model)
        image_index, text_index = build_pair(model, ds, reciprocal_k=args.reciprocal_k,
                                             batch_size=args.batch_size, pq_space=args.pq_space)
        try:
            image_index.save(args.out / "image")
            text_index.save(args.out / "text")
        except OSError as exc:
            raise ConfigError(f"cannot write the index to {args.out}: {exc}",
                              fix="free disk space or choose a writable folder") from exc
    except MEETError as exc:
        if created:  # nothing half-written: a folder this run made goes again
            shutil.rmtree(args.out, ignore_errors=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"indexed {image_index.n_items} images and {text_index.n_items} captions in "
          f"{time.perf_counter() - start:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
