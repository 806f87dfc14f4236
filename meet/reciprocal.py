"""Reciprocal top-k scores: each item's best scores against the other modality's gallery.

MEET's complementarity term asks, for a candidate j, where the query would fall in j's
own ranking of the other modality. An index stores, per item, its top-k scores against
the whole other gallery (:mod:`meet.index`); this module computes them for both sides.

Each direction is one exact faiss k-NN search by inner product (``faiss.knn``: blocked
BLAS products plus a heap that rejects a score with one comparison once the heap is
full). That is two products of the image-caption matrix, yet measured 1.7x faster than
one product followed by ``torch.topk`` along both axes, whose partial sorts cost about as
much as the product each.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

QUERY_BLOCK = 8192
"""Rows searched per faiss call (bounds its result buffers; one progress step each)."""


def reciprocal_scores(rows16: np.ndarray, cols16: np.ndarray, k_rows: int, k_cols: int,
                      progress: Callable[[int, int], None] | None = None
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """Top-k scores of ``S = rows16 @ cols16.T`` along both axes.

    ``rows16`` (n_rows, dim), ``cols16`` (n_cols, dim): the stored float16 vectors (the
    products are taken in float32 on their exact values, as the search does). Returns
    (n_rows, min(k_rows, n_cols)) and, if ``k_cols > 0``, (n_cols, min(k_cols, n_rows))
    float16 scores sorted descending. ``progress(done, total)`` counts searched rows of
    both directions.
    """
    rows = np.ascontiguousarray(np.asarray(rows16, np.float16), dtype=np.float32)
    cols = np.ascontiguousarray(np.asarray(cols16, np.float16), dtype=np.float32)
    total = rows.shape[0] + (cols.shape[0] if k_cols > 0 else 0)
    done = [0]

    def step(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    row_out = _top_scores(rows, cols, k_rows, step)
    col_out = _top_scores(cols, rows, k_cols, step) if k_cols > 0 else None
    return row_out, col_out


def _top_scores(queries: np.ndarray, base: np.ndarray, k: int, step: Callable[[int], None]) -> np.ndarray:
    """(n_queries, min(k, n_base)) float16: each query's k best inner products, descending."""
    import faiss  # lazy: heavy

    k = min(k, base.shape[0])
    out = np.empty((queries.shape[0], k), np.float16)
    if k == 0:
        step(queries.shape[0])
        return out
    for start in range(0, queries.shape[0], QUERY_BLOCK):
        block = queries[start:start + QUERY_BLOCK]
        scores, _ = faiss.knn(block, base, k, metric=faiss.METRIC_INNER_PRODUCT)
        out[start:start + block.shape[0]] = scores
        step(block.shape[0])
    return out
