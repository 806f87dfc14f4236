"""Stage II, step 1: the Hamming filter over the gallery's 8-byte sign codes.

Two scorings of the packed codes, chosen by ``CascadeConfig.hamming_scores`` in one place
(:func:`hamming_stage`):

* ``symmetric`` (METHOD.md): Hamming distance between the query's and each item's sign
  code, through faiss ``IndexBinaryFlat`` (exact; ties by position,
  :func:`hamming_filter`); the stage score is ``n_bits - 2 * distance``, the +-1 code
  inner product;
* ``asymmetric``: the query's float hash feature against each item's +-1 code,
  ``<h, b>`` (same bytes per item, far fewer ties at the survivor boundary): faiss fast
  scan proposes candidates, which are re-scored exactly (:func:`asymmetric_filter`).

The exhaustive ``hash`` mode is this stage over the whole gallery, scored exactly
(:func:`hamming_scores`, :func:`hamming_stage` with ``exact=True``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from meet.config import HammingScores
from meet.errors import ConfigError
from meet.quantization import product_tables, unpack_codes
from meet.search.pq_filter import adc_gather, gather_codes, pq_block_scorer
from meet.search.topk import WORK_BUDGET, stable_top, stream_topk


_SORT_MIN_SHARE = 0.25
"""The Hamming filter sorts all distances when it keeps more than this share of the
gallery (the paper's fractional rates): a k-heap that large is slower than sorting."""


_POPCOUNT_8 = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1).astype(np.uint8)
"""Bits set in each byte value: the popcount for numpy < 2.0 (no ``np.bitwise_count``)."""


def hamming_distances(query_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Popcount of XOR: (n_queries, n_bytes) x (n_items, n_bytes) uint8 -> (n_queries, n_items).

    The direct computation: the filter's path for large survivor shares, and the hash
    mode of :func:`meet.search.cascade.full_scores`. Returns uint8 when ``n_bits < 256``, else
    uint16.
    """
    n_bytes = codes.shape[1]
    out_dtype = np.uint8 if n_bytes * 8 < 256 else np.uint16
    out = np.empty((query_codes.shape[0], codes.shape[0]), dtype=out_dtype)
    popcount = getattr(np, "bitwise_count", None)  # numpy >= 2.0
    if popcount is None:
        popcount = _POPCOUNT_8.__getitem__
        q_words, g_words = query_codes, codes
    elif n_bytes % 8 == 0:
        q_words = np.ascontiguousarray(query_codes).view(np.uint64)
        g_words = np.ascontiguousarray(codes).view(np.uint64)
    else:
        q_words, g_words = query_codes, codes
    step = max(1, WORK_BUDGET // max(1, codes.shape[0] * g_words.shape[1]))
    for start in range(0, query_codes.shape[0], step):
        xor = q_words[start:start + step, None, :] ^ g_words[None, :, :]
        out[start:start + step] = popcount(xor).sum(axis=2, dtype=out_dtype)
    return out


def hamming_filter(query_codes: np.ndarray, codes: np.ndarray, n_keep: int,
                   binary_index: object | None = None, method: str = "auto"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_keep`` nearest items by Hamming distance, ties by position.

    ``query_codes`` (n_queries, n_bytes) and ``codes`` (n_items, n_bytes) packed uint8;
    ``binary_index``: a faiss ``IndexBinaryFlat`` holding ``codes``. Returns
    ``positions`` (n_queries, n_keep) int64 and ``distances`` (n_queries, n_keep) int32,
    sorted by (distance, position).

    Why this is exact and cheap. Both faiss exact k-NN paths scan items in position
    order and keep the first k of the stable (distance, position) sort:

    * ``counting`` (``use_heap=False``, faiss's counting sort): one bucket per distance,
      filled in scan order; O(n) with no heap, the fastest for all but the smallest k
      (at 1M items and k=10,000: 2.3 against 5.0 ms per query for the heap). Its buckets
      take ``(n_bits + 1) x k`` int64 per query of a faiss query block, so the block
      shrinks (from 32 queries) to stay within the memory bound :data:`WORK_BUDGET`;
    * ``heap`` (faiss's default): a max-heap that admits an item only when it is
      *strictly* nearer than the top and orders equal distances by id (``CMax::cmp2``);
    * ``sort``: above :data:`_SORT_MIN_SHARE` of the gallery (fractional rates) a k-heap
      is slower than computing every distance (``np.bitwise_count``) and taking a stable
      radix argsort, which is the definition itself.

    After faiss, the k results are put in order of the packed key ``distance * n_items +
    position`` (a check, O(k), and a sort only where faiss's output is not already in that
    order), so the order never rests on faiss's output order. ``method``: ``auto``,
    ``counting``, ``heap`` or ``sort`` (tests force each; ``tests/test_retrieval.py``
    checks all three against a popcount reference with heavy ties). Not thread-safe on a
    shared ``binary_index`` (it sets ``use_heap``).
    """
    n_items = codes.shape[0]
    n_queries = query_codes.shape[0]
    n_keep = min(n_keep, n_items)
    if n_keep <= 0 or n_queries == 0:
        return np.zeros((n_queries, max(n_keep, 0)), np.int64), np.zeros((n_queries, max(n_keep, 0)), np.int32)
    counting_block = min(32, 8 * WORK_BUDGET // ((codes.shape[1] * 8 + 1) * n_keep * 8))
    if method == "auto":
        method = ("sort" if n_keep > _SORT_MIN_SHARE * n_items else
                  "counting" if counting_block >= 1 else "heap")
    query_codes = np.ascontiguousarray(query_codes, dtype=np.uint8)
    if method == "sort":
        positions = np.empty((n_queries, n_keep), np.int64)
        distances = np.empty((n_queries, n_keep), np.int32)
        step = max(1, WORK_BUDGET // n_items)
        for start in range(0, n_queries, step):
            dist = hamming_distances(query_codes[start:start + step], codes)
            order = np.argsort(dist, axis=1, kind="stable")[:, :n_keep]
            positions[start:start + step] = order
            distances[start:start + step] = np.take_along_axis(dist, order, axis=1)
        return positions, distances
    if method not in ("counting", "heap"):
        raise ConfigError(f"unknown Hamming method {method!r}", fix="use auto, counting, heap or sort")
    if binary_index is None:
        binary_index = build_binary_index(codes)
    binary_index.use_heap = method == "heap"
    binary_index.query_batch_size = max(1, counting_block) if method == "counting" else 32
    dist, labels = binary_index.search(query_codes, n_keep)
    key = dist.astype(np.int64) * n_items + labels
    if not (key[:, 1:] > key[:, :-1]).all():  # faiss's counting output is already in order
        key.sort(axis=1)
    return key % n_items, (key // n_items).astype(np.int32)


def build_binary_index(codes: np.ndarray) -> object:
    """A faiss ``IndexBinaryFlat`` over packed codes (n_items, n_bytes) uint8 (a copy)."""
    import faiss  # lazy: heavy

    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    if codes.shape[0]:
        index.add(np.ascontiguousarray(codes, dtype=np.uint8))
    return index


# ------------------------------------------------------------------ asymmetric Hamming filter

_SIGN_SCAN_SLACK = 0.25
"""The fast scan asks for this share more candidates than it keeps (at least
:data:`_SIGN_SCAN_MIN_EXTRA`), so its 8-bit lookup tables rarely push an item of the exact
top R out of the candidates, which are then re-scored exactly."""
_SIGN_SCAN_MIN_EXTRA = 64


def sign_codebooks(n_bits: int, group: int = 8) -> np.ndarray:
    """Every +-1 pattern of ``group`` bits, as PQ codebooks: (n_bits / group, 2**group, group)
    float32, codeword ``v`` of each book being bit ``i`` of ``v`` mapped to -1/+1 (the
    little-endian order of :func:`meet.quantization.pack_codes`). With ``group=8`` the
    packed bytes of a sign code *are* its PQ codes, so ADC with these books gives the
    asymmetric score ``<h, b>`` of a float query ``h`` against a stored code ``b``."""
    patterns = ((np.arange(2 ** group)[:, None] >> np.arange(group)[None, :]) & 1) * 2.0 - 1.0
    return np.ascontiguousarray(np.broadcast_to(patterns, (n_bits // group, 2 ** group, group)), np.float32)


def build_sign_scan_index(codes: np.ndarray, chunk: int = 1 << 16) -> object:
    """A faiss ``IndexPQFastScan`` (inner product) over packed sign codes: 4-bit
    sub-quantizers whose 16 codewords are every +-1 pattern of 4 bits, so each item's
    fast-scan code is its own sign code, and a float query is scored by ``<h, b>``
    through SIMD lookup tables quantized to 8 bits (faiss's fast scan: approximate)."""
    import faiss  # lazy: heavy

    n_bits = codes.shape[1] * 8
    index = faiss.IndexPQFastScan(n_bits, n_bits // 4, 4, faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(sign_codebooks(n_bits, 4).ravel(), index.pq.centroids)
    index.is_trained = True
    for start in range(0, codes.shape[0], chunk):  # each +-1 vector encodes to its own bits
        block = np.unpackbits(np.asarray(codes[start:start + chunk], np.uint8), axis=1, bitorder="little")
        index.add(block.astype(np.float32) * 2.0 - 1.0)
    return index


def asymmetric_filter(query_hash: np.ndarray, codes: np.ndarray, n_keep: int,
                      scan_index: object | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_keep`` items with the highest asymmetric score ``<h, b>`` (the query's float
    hash feature against each item's +-1 code), ties by position.

    ``query_hash`` (n_queries, n_bits) float; ``codes`` (n_items, n_bits / 8) packed;
    ``scan_index``: :func:`build_sign_scan_index` of ``codes``. Returns ``positions``
    (n_queries, n_keep) int64 and ``scores`` (n_queries, n_keep) float32, best first.

    Why: ``<sign(h), b> = n_bits - 2 * Hamming`` takes 65 values at 64 bits, so at the
    survivor boundary thousands of items tie and the filter's pick among them is by
    gallery position. Keeping ``h``'s magnitudes orders them at the same 8 bytes per item.

    How: faiss's fast scan (4-bit lookup tables, SIMD) proposes ``n_keep`` plus
    :data:`_SIGN_SCAN_SLACK` candidates; they are re-scored exactly (ADC with
    :func:`sign_codebooks`, float32, bytes summed in order) and the best ``n_keep`` kept.
    So the order of the kept items is exact, the set is approximate: an item of the exact
    top ``n_keep`` is lost only if the 8-bit tables put it below the candidates (the tests
    bound this). Above :data:`_SORT_MIN_SHARE` of the gallery, or without an index, every
    item is scored exactly instead.
    """
    n_items, n_queries = codes.shape[0], query_hash.shape[0]
    n_keep = min(n_keep, n_items)
    if n_keep <= 0 or n_queries == 0:
        return np.zeros((n_queries, max(n_keep, 0)), np.int64), np.zeros((n_queries, max(n_keep, 0)), np.float32)
    n_bits = codes.shape[1] * 8
    tables = sign_tables(query_hash, n_bits)
    n_candidates = n_keep + max(_SIGN_SCAN_MIN_EXTRA, int(math.ceil(_SIGN_SCAN_SLACK * n_keep)))
    if scan_index is not None and n_candidates < n_items and n_keep <= _SORT_MIN_SHARE * n_items:
        _, candidates = scan_index.search(np.ascontiguousarray(query_hash, np.float32), n_candidates)
        if (candidates >= 0).all():  # faiss pads with -1 only when it finds fewer items
            return _rescored(tables, codes, candidates, n_keep)
    return stream_topk(pq_block_scorer(tables, codes), n_items, n_queries, n_keep,
                       block=max(1, WORK_BUDGET // max(1, n_queries * 8)))


def _rescored(tables: torch.Tensor, codes: np.ndarray, candidates: np.ndarray, n_keep: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """The best ``n_keep`` of ``candidates`` (n_queries, c) by exact ADC score, ties by position."""
    exact = adc_gather(tables, gather_codes(np.ascontiguousarray(codes, np.uint8), candidates))
    positions = torch.from_numpy(candidates)
    kept = stable_top(exact, n_keep, positions)
    return positions.gather(1, kept).numpy(), exact.gather(1, kept).numpy()


def sign_tables(query_hash: np.ndarray, n_bits: int) -> torch.Tensor:
    """ADC tables (n_queries, n_bits / 8, 256) of float hash features against every +-1
    pattern of each byte: ``sum_m T[m, byte_m]`` is ``<h, b>`` for a packed sign code."""
    return product_tables(torch.as_tensor(np.ascontiguousarray(query_hash, np.float32)),
                          torch.from_numpy(sign_codebooks(n_bits)))


def hamming_stage(scoring: HammingScores, query_hash: np.ndarray, query_codes: np.ndarray, index: Any,
                  n_keep: int, exact: bool = False, lists: Any = None, nprobe: int = 1
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The Hamming filter of ``index`` (a :class:`~meet.search.index.GalleryIndex`): the
    ``n_keep`` best items per query by ``scoring``, best first, ties by position.

    ``query_hash`` (n_queries, n_bits) float hash features and ``query_codes`` (n_queries,
    n_bits / 8) their packed signs. Returns ``positions`` (n_queries, n_keep) int64 and
    ``scores`` (n_queries, n_keep) float32 (``n_bits - 2 * distance`` or ``<h, b>``).
    ``exact``: score every item exactly (the asymmetric filter then skips its fast-scan
    proposal; the symmetric one is always exact). ``lists``: the gallery's
    :class:`~meet.search.inverted.InvertedLists`: only the items of each query's visited
    lists (at least ``nprobe``) are scored (the sublinear filter).
    """
    if lists is not None and not exact:
        from meet.search.inverted import inverted_filter

        signs = query_hash if scoring == "asymmetric" else unpack_codes(np.asarray(query_codes, np.uint8),
                                                                        index.n_bits)
        if scoring not in ("symmetric", "asymmetric"):
            raise ConfigError(f"hamming_scores={scoring!r} is neither 'symmetric' nor 'asymmetric'")
        return inverted_filter(sign_tables(signs, index.n_bits), lists, index.codes, n_keep, nprobe)
    if scoring == "asymmetric":
        return asymmetric_filter(query_hash, index.codes, n_keep, None if exact else index.sign_scan_index)
    if scoring != "symmetric":
        raise ConfigError(f"hamming_scores={scoring!r} is neither 'symmetric' nor 'asymmetric'")
    positions, distances = hamming_filter(query_codes, index.codes, n_keep, index.binary_index)
    return positions, (index.n_bits - 2.0 * distances).astype(np.float32)


def hamming_scores(scoring: HammingScores, query_hash: np.ndarray, query_codes: np.ndarray,
                   codes: np.ndarray) -> np.ndarray:
    """Every item's Hamming-stage score, float32 (n_queries, n_items): what
    :func:`hamming_stage` ranks, for evaluation over a whole (test-size) gallery."""
    n_bits = codes.shape[1] * 8
    if scoring == "asymmetric":
        return pq_block_scorer(sign_tables(query_hash, n_bits), codes)(0, codes.shape[0]).numpy()
    if scoring != "symmetric":
        raise ConfigError(f"hamming_scores={scoring!r} is neither 'symmetric' nor 'asymmetric'")
    return n_bits - 2.0 * hamming_distances(query_codes, codes).astype(np.float32)
