"""How much of the dense top-10 the cascade keeps on a large real-embedding gallery.

    python -m meet.data.shapes --out data/shapes100k --n-train 0 --n-val 0 --n-test 100000 --seed 1 --workers 2
    python -m meet.build_index --checkpoint assets/shapes-demo --data data/shapes100k --split test \
        --out data/index100k --reciprocal-k 0
    python benchmarks/scale_recall.py --index data/index100k [--queries 2000] [--settings 2000:200,5000:500]

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

from meet.config import CascadeConfig
from meet.index import GalleryIndex
from meet.retrieval import search


@dataclasses.dataclass
class Queries:
    dense: np.ndarray
    hash: np.ndarray
    codes: np.ndarray


def sample_queries(index: GalleryIndex, n: int, seed: int) -> tuple[Queries, np.ndarray]:
    """n items of ``index`` as queries. The gallery stores no float hash features, so the
    query's hash is its sign code (+-1): what a query encoded by the model binarises to;
    ADC then scores the sign vector, a slightly weaker query than the float one."""
    from meet.quantization import unpack_codes

    rows = np.sort(np.random.default_rng(seed).choice(index.n_items, size=min(n, index.n_items),
                                                      replace=False))
    codes = np.asarray(index.codes[rows])
    return Queries(dense=np.asarray(index.dense[rows], np.float32),
                   hash=unpack_codes(codes, index.n_bits), codes=codes), rows


def dense_top10(queries: Queries, gallery: GalleryIndex, block: int = 65536) -> np.ndarray:
    """Exact top-10 gallery positions by inner product, streamed over gallery blocks."""
    q = torch.from_numpy(queries.dense)
    best_scores = torch.full((q.shape[0], 10), -torch.inf)
    best_ids = torch.zeros((q.shape[0], 10), dtype=torch.long)
    for start in range(0, gallery.n_items, block):
        part = torch.from_numpy(np.asarray(gallery.dense[start:start + block], np.float32))
        scores = q @ part.T
        merged_scores = torch.cat([best_scores, scores], 1)
        merged_ids = torch.cat([best_ids, torch.arange(start, start + part.shape[0]).expand(q.shape[0], -1)], 1)
        top = merged_scores.topk(10, dim=1)
        best_scores, best_ids = top.values, merged_ids.gather(1, top.indices)
    return best_ids.numpy()


def recall_at_10(found: np.ndarray, reference: np.ndarray) -> float:
    hits = [(len(set(f[f >= 0]) & set(r))) / 10 for f, r in zip(found, reference)]
    return float(np.mean(hits))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--settings", default="1000:100,2000:200,5000:500,10000:1000")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    images, texts = GalleryIndex.load(args.index / "image"), GalleryIndex.load(args.index / "text")
    print(f"gallery: {images.n_items:,} images, {texts.n_items:,} captions; {args.queries} sampled "
          f"queries per direction\n")
    print("| direction | R (Hamming) | q (PQ) | recall@10 vs dense | ms/query (batched) |")
    print("|---|---|---|---|---|")
    for direction, query_side, gallery in (("t2i", texts, images), ("i2t", images, texts)):
        queries, _ = sample_queries(query_side, args.queries, args.seed)
        reference = dense_top10(queries, gallery)
        for setting in args.settings.split(","):
            r, q = (float(x) for x in setting.split(":"))
            cfg = dataclasses.replace(CascadeConfig(), **{f"hamming_rate_{direction}": r,
                                                          f"pq_rate_{direction}": q})
            start = time.perf_counter()
            result = search(queries, gallery, cfg, direction, k=10, mode="cascade")
            ms = 1000 * (time.perf_counter() - start) / len(queries.dense)
            print(f"| {direction} | {int(r)} | {int(q)} | {recall_at_10(result.ids, reference):.3f} | {ms:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
