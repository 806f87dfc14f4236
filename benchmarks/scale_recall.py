"""How much of the dense top-10 the cascade keeps on a large real-embedding gallery.

    python -m meet.data.shapes --out data/shapes100k --n-train 0 --n-val 0 --n-test 100000 --seed 1 --workers 2
    python -m meet.build_index --checkpoint assets/shapes-demo --data data/shapes100k --split test \
        --out data/index100k --reciprocal-k 0
    python benchmarks/scale_recall.py --index data/index100k --checkpoint assets/shapes-demo \
        --data data/shapes100k [--queries 1000] [--settings 2000:200,5000:500]

    # the setting that keeps >= 0.95 of the dense top-10 (results/scale-recall-100k-*.md):
    python -m meet.hash_refit --checkpoint assets/shapes-demo --data data/shapes --out runs/demo-distill
    python benchmarks/recode_index.py --index data/index100k --checkpoint runs/demo-distill \
        --data data/shapes100k --out data/index100k-distill --pq-space dense
    python benchmarks/scale_recall.py --index data/index100k-distill --checkpoint runs/demo-distill \
        --data data/shapes100k --settings 10000:2000

For sampled queries of each direction (captions of the gallery searching its images, t2i;
images searching its captions, i2t), the exact dense top-10 over the whole gallery is the
reference; for each count-rate setting ``R:q`` (Hamming keeps R, the quantization filter
keeps q, then the dense re-rank) it prints recall@10 against that reference and the
per-query latency, batched. Embeddings are the model's, not synthetic.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from meet.config import CascadeConfig, HammingScores, choices
from meet.inference import Encoded
from meet.search import GalleryIndex, checkpoint_fingerprint, load_pair
from meet.search.rerank import dense_block_scorer
from meet.search.topk import stream_topk


def sample_queries(model, ds, side: str, n: int, seed: int) -> Encoded:
    """n items of the gallery's data set (captions for t2i, images for i2t), encoded by
    the model: the float hash feature a real query has, not just its sign code."""
    n_items = len(ds.captions) if side == "text" else ds.n_images
    rows = np.sort(np.random.default_rng(seed).choice(n_items, size=min(n, n_items), replace=False))
    if side == "text":
        return model.encode_texts([ds.captions[r] for r in rows])
    return model.encode_dataset_images(ds, rows.tolist(), batch_size=256)


def dense_top10(queries: Encoded, gallery: GalleryIndex) -> tuple[np.ndarray, np.ndarray]:
    """Exact dense top-10 (positions, scores), streamed over gallery blocks; scores use the
    gallery's stored float16 vectors, as the cascade's re-rank does."""
    scorer = dense_block_scorer(torch.from_numpy(queries.dense), gallery.dense)
    return stream_topk(scorer, gallery.n_items, len(queries), 10)


def recall_at_10(found: np.ndarray, found_dense: np.ndarray, reference_scores: np.ndarray) -> float:
    """Share of the dense top-10 the cascade returns, tie-aware: a returned item counts if
    its dense score reaches the dense 10th-best score. Shapes repeats caption texts (500k
    captions, many identical), and identical texts have identical scores, so "the" dense
    top-10 is an arbitrary pick among equals; any of them is as good."""
    threshold = reference_scores[:, 9:10] - 1e-6
    hits = (found >= 0) & (found_dense >= threshold)
    return float(hits.sum(1).mean() / 10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint that built the index")
    parser.add_argument("--data", type=Path, required=True, help="the data set the index was built from")
    parser.add_argument("--split", default="test")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--settings", default="1000:100,2000:200,5000:500,10000:1000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hamming-scores", choices=choices(HammingScores), default="symmetric",
                        help="the Hamming filter's ranking (CascadeConfig.hamming_scores)")
    args = parser.parse_args(argv)
    from meet.data.loading import load_split
    from meet.inference import load

    model = load(args.checkpoint, device="cpu")
    images, texts = load_pair(args.index, fingerprint=checkpoint_fingerprint(args.checkpoint))
    ds = load_split(args.data, args.split, model.cfg.model)
    print(f"gallery: {images.n_items:,} images, {texts.n_items:,} captions; {args.queries} sampled "
          f"queries per direction, encoded by the model; {args.hamming_scores} Hamming scores\n")
    print("| direction | R (Hamming) | q (PQ) | recall@10 vs dense (tie-aware) | ms/query (batched) |")
    print("|---|---|---|---|---|")
    for direction, side, gallery in (("t2i", "text", images), ("i2t", "image", texts)):
        queries = sample_queries(model, ds, side, args.queries, args.seed)
        _, reference_scores = dense_top10(queries, gallery)
        for setting in args.settings.split(","):
            r, q = (float(x) for x in setting.split(":"))
            cfg = dataclasses.replace(CascadeConfig(hamming_scores=args.hamming_scores),
                                      **{f"hamming_rate_{direction}": r, f"pq_rate_{direction}": q})
            start = time.perf_counter()
            result = gallery.search(queries, k=10, mode="cascade", cascade=cfg)
            ms = 1000 * (time.perf_counter() - start) / len(queries)
            found = np.where(result.ids >= 0, result.ids, 0)
            found_dense = np.einsum("qd,qkd->qk", queries.dense,
                                    np.asarray(gallery.dense[found.reshape(-1)], np.float32)
                                    .reshape(*found.shape, -1))
            recall = recall_at_10(result.ids, found_dense, reference_scores)
            print(f"| {direction} | {int(r)} | {int(q)} | {recall:.3f} | {ms:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
