"""The Hamming filter over inverted lists: a sublinear first stage.

The flat Hamming filter (:mod:`meet.search.hamming`) reads every code of the gallery, so
its cost grows with the gallery (at 1M items it was two thirds of the cascade's time). Here
the 64-bit sign codes are grouped once into ``nlist`` lists by their nearest binary centroid
(faiss binary k-means, :class:`faiss.IndexBinaryIVF`'s training); a query visits the lists
of its ``nprobe`` best centroids, scored as the stage scores items (symmetric Hamming
distance, or ``<h, c>`` of its float hash feature against a centroid's signs), and more
lists in that order until they hold at least ``R`` items, then keeps the exact top ``R`` of
the items in those lists by the same score, ties by position. So per query it reads
``nprobe x n / nlist`` codes instead of ``n``; what it can miss is an item of the exact top
``R`` that sits in a list it did not visit (recall measured by ``benchmarks/pareto.py``).

The lists are a CSR layout: ``members`` holds item positions grouped by list (ascending
within a list) and ``offsets[l]:offsets[l + 1]`` is list ``l``. Candidates of a query block
are gathered into one padded matrix, so scoring and the top-R are batched torch / numpy
work, no Python loop over queries or items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from meet.errors import ConfigError
from meet.search.pq_filter import adc_gather, gather_codes, pq_block_scorer
from meet.search.topk import stable_top


TRAIN_POINTS_PER_LIST = 64
TRAIN_ITERATIONS = 10


def auto_nlist(n_items: int) -> int:
    """Lists for a gallery of ``n_items`` when none is set: the power of two nearest to
    ``4 sqrt(n)`` (1,024 at 100k items, 4,096 at 1M), at least 1 and at most n / 16."""
    if n_items < 32:
        return 1
    return int(min(2 ** round(math.log2(4 * math.sqrt(n_items))), max(1, n_items // 16)))


@dataclass
class InvertedLists:
    """``centroids`` (nlist, n_bytes) packed binary centroids; ``offsets`` (nlist + 1,) int64;
    ``members`` (n_items,) int64 item positions grouped by list."""

    centroids: np.ndarray
    offsets: np.ndarray
    members: np.ndarray

    @property
    def nlist(self) -> int:
        return self.centroids.shape[0]

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def build(cls, codes: np.ndarray, nlist: int, seed: int = 0) -> "InvertedLists":
        """Binary k-means centroids of ``codes`` (n_items, n_bytes) packed uint8, then each
        item in the list of its nearest centroid (Hamming distance, ties by centroid id)."""
        import faiss  # lazy: heavy

        codes = np.ascontiguousarray(codes, np.uint8)
        n_items, n_bytes = codes.shape
        nlist = int(nlist)
        if not 1 <= nlist <= max(1, n_items):
            raise ConfigError(f"hamming_nlist={nlist} must lie in 1..{max(1, n_items)} (the gallery size)",
                              fix="use 0 for the automatic size (about 4 sqrt(n))")
        quantizer = faiss.IndexBinaryFlat(n_bytes * 8)
        if nlist == 1 or n_items == 0:
            centroids = np.zeros((1, n_bytes), np.uint8)
        else:
            ivf = faiss.IndexBinaryIVF(quantizer, n_bytes * 8, nlist)
            ivf.cp.seed = int(seed)
            ivf.cp.min_points_per_centroid = 1  # small galleries are legitimate; silence the warning
            # A sample of 64 codes per list and 10 iterations: the lists only route queries
            # (the top R is exact inside them); faiss's 256 x 25 took 9 s at 100k items on 2 cores.
            ivf.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST
            ivf.cp.niter = TRAIN_ITERATIONS
            ivf.train(codes)
            centroids = faiss.vector_to_array(quantizer.xb).reshape(nlist, n_bytes).copy()
        return cls.assign(centroids, codes)

    @classmethod
    def assign(cls, centroids: np.ndarray, codes: np.ndarray) -> "InvertedLists":
        """Lists of ``codes`` under fixed ``centroids`` (also how added items are placed)."""
        lists = nearest_lists(centroids, codes)
        order = np.argsort(lists, kind="stable")  # by list, positions ascending within
        offsets = np.zeros(centroids.shape[0] + 1, np.int64)
        np.cumsum(np.bincount(lists, minlength=centroids.shape[0]), out=offsets[1:])
        return cls(np.ascontiguousarray(centroids, np.uint8), offsets, order.astype(np.int64))

    def candidates(self, order: np.ndarray, nprobe: int, n_keep: int) -> np.ndarray:
        """Item positions of each query's visited lists, (n_queries, L) int64 padded with -1.

        ``order`` (n_queries, nlist): every list, best first for each query. A query visits
        its first ``nprobe`` lists, and more in that order until they hold ``n_keep`` items."""
        sizes = self.sizes[order]                                          # (nq, nlist)
        enough = np.cumsum(sizes, axis=1) >= n_keep
        needed = np.where(enough.any(axis=1), enough.argmax(axis=1) + 1, self.nlist)
        visited = np.maximum(needed, min(nprobe, self.nlist))              # (nq,) lists per query
        keep = np.arange(self.nlist)[None, :] < visited[:, None]
        lengths = np.where(keep, sizes, 0)                                  # (nq, nlist), visit order
        per_row = lengths.sum(axis=1)
        out = np.full((len(order), int(per_row.max()) if len(order) else 0), -1, np.int64)
        # The visited slices of the CSR, all queries at once (a ragged arange): entry e of
        # the flat list is member ``start + i`` of its slice, at column e - (row's first entry).
        span = lengths.ravel()
        starts = self.offsets[:-1][order].ravel()[span > 0]
        span = span[span > 0]
        total = int(span.sum())
        inside = np.arange(total) - np.repeat(np.cumsum(span) - span, span)
        rows = np.repeat(np.arange(len(order)), per_row)
        columns = np.arange(total) - np.repeat(np.cumsum(per_row) - per_row, per_row)
        out[rows, columns] = self.members[np.repeat(starts, span) + inside]
        return out


def nearest_lists(centroids: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The nearest centroid of each packed code (Hamming distance, ties by centroid id)."""
    import faiss  # lazy: heavy

    if centroids.shape[0] == 1 or codes.shape[0] == 0:
        return np.zeros(codes.shape[0], np.int64)
    quantizer = faiss.IndexBinaryFlat(centroids.shape[1] * 8)
    quantizer.add(np.ascontiguousarray(centroids, np.uint8))
    _, labels = quantizer.search(np.ascontiguousarray(codes, np.uint8), 1)
    return labels[:, 0].astype(np.int64)


def inverted_filter(tables: torch.Tensor, lists: InvertedLists, codes: np.ndarray, n_keep: int,
                    nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_keep`` best items per query among those of its visited lists, by ADC with
    ``tables`` (n_queries, n_bytes, 256) over the packed sign codes (the +-1 code inner
    product: :func:`meet.search.hamming.sign_tables` of the float hash feature for the
    asymmetric score, of the signs themselves for the symmetric one), ties by position.

    Lists are visited in the order of the same score of their centroids. Returns
    ``positions`` (n_queries, n_keep) int64 and ``scores`` (n_queries, n_keep) float32."""
    n_items = codes.shape[0]
    n_keep = min(n_keep, n_items)
    n_queries = tables.shape[0]
    if n_keep <= 0 or n_queries == 0:
        return np.zeros((n_queries, max(n_keep, 0)), np.int64), np.zeros((n_queries, max(n_keep, 0)), np.float32)
    centroid_scores = pq_block_scorer(tables, lists.centroids)(0, lists.nlist)           # (nq, nlist)
    order = stable_top(centroid_scores, lists.nlist).numpy()
    candidates = lists.candidates(order, nprobe, n_keep)                              # (nq, L), -1 padded
    valid = candidates >= 0
    scores = adc_gather(tables, gather_codes(np.ascontiguousarray(codes, np.uint8), np.where(valid, candidates, 0)))
    scores = torch.where(torch.from_numpy(valid), scores, torch.tensor(-torch.inf))
    positions = torch.from_numpy(np.where(valid, candidates, n_items + np.arange(candidates.shape[1])[None, :]))
    kept = stable_top(scores, n_keep, positions)
    return positions.gather(1, kept).numpy(), scores.gather(1, kept).numpy()
