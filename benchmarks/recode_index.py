"""Re-code a saved index pair with a checkpoint whose *encoders* are the same, without
re-encoding the gallery.

    python benchmarks/recode_index.py --index data/index100k --checkpoint runs/demo-distill \
        --data data/shapes100k --out data/index100k-distill [--pq-space dense|residual]

Why: ``meet.hash_refit`` retrains only the hash heads, so a refit checkpoint's dense
vectors are the ones already stored in an index built by its parent, and encoding
100,000 images and 500,000 captions again costs about 15 minutes on a 2-core CPU. This
script checks that claim (it re-encodes a sample of the data set with ``--checkpoint`` and
compares with the stored vectors; a mismatch is an error), then runs the stored dense
vectors through the new hash heads and codebooks (``MEETModel.encode_dense``) and indexes
them with :func:`meet.search.build_pair`, exactly as ``meet.build_index`` would after
encoding.
The new index carries the new checkpoint's fingerprint and no reciprocal scores
(``meet.build_index --reciprocal-k`` computes those).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from meet import cli
from meet.config import CascadeConfig, PQSpace, choices
from meet.errors import CheckpointError
from meet.inference import MEETModel
from meet.search import GalleryIndex, build_pair, load_pair, save_pair

CHECK_ITEMS = 32
"""Images and captions re-encoded to verify that the stored dense vectors are this model's."""
TOLERANCE = 2e-3
"""Largest allowed difference: the index stores float16 (about 1e-3 relative)."""


def verify_same_encoders(model: MEETModel, ds, images: GalleryIndex, texts: GalleryIndex) -> float:
    """Largest |stored - re-encoded| over a sample of both sides; raises if above tolerance."""
    rows = np.linspace(0, ds.n_images - 1, num=min(CHECK_ITEMS, ds.n_images)).astype(int)
    fresh_images = model.encode_dataset_images(ds, rows.tolist(), batch_size=len(rows)).dense
    caption_rows = np.linspace(0, len(ds.captions) - 1, num=min(CHECK_ITEMS, len(ds.captions))).astype(int)
    fresh_texts = model.encode_texts([ds.captions[r] for r in caption_rows]).dense
    gap = max(float(np.abs(np.asarray(images.dense[rows], np.float32) - fresh_images).max()),
              float(np.abs(np.asarray(texts.dense[caption_rows], np.float32) - fresh_texts).max()))
    if gap > TOLERANCE:
        raise CheckpointError(f"the stored dense vectors differ from this checkpoint's by {gap:.4f}: "
                              "its encoders are not the ones that built the index",
                              fix="rebuild with python -m meet.build_index")
    return gap


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, required=True, help="the index pair to re-code")
    parser.add_argument("--checkpoint", type=Path, required=True, help="the refit checkpoint")
    parser.add_argument("--data", type=Path, required=True, help="the data set the index was built from")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pq-space", choices=choices(PQSpace), default=None)
    args = parser.parse_args(argv)
    return cli.run(lambda: recode(args))


def recode(args: argparse.Namespace) -> None:
    from meet.data.loading import load_split
    from meet.inference import load

    model = load(args.checkpoint, device="cpu")
    images, texts = load_pair(args.index)
    ds = load_split(args.data, args.split, model.cfg.model)
    gap = verify_same_encoders(model, ds, images, texts)
    start = time.perf_counter()
    cascade = CascadeConfig(**{**vars(model.cfg.cascade), "reciprocal_k": 0,
                               "pq_space": args.pq_space or model.cfg.cascade.pq_space})
    meta = {**images.meta, "checkpoint": str(args.checkpoint), "recoded_from": str(args.index)}
    new_images, new_texts = build_pair(model, model.encode_dense(images.dense, "image"),
                                       model.encode_dense(texts.dense, "text"), images.ids, texts.ids,
                                       cascade=cascade, meta=meta)
    save_pair(args.out, new_images, new_texts)
    print(f"stored vectors match the checkpoint's encoders (max gap {gap:.1e}); re-coded "
          f"{new_images.n_items:,} images and {new_texts.n_items:,} captions (pq_space={cascade.pq_space}) in "
          f"{time.perf_counter() - start:.0f} s -> {args.out}")


if __name__ == "__main__":
    sys.exit(main())
