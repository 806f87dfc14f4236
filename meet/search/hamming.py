"""Stage II building blocks: survivor counts, exact top-k with a fixed tie order, the
Hamming filter, the quantization (ADC) filter, and exhaustive scoring for the baselines.

One tie rule holds everywhere, so that results never depend on a library's heap order:
**items are ranked by their score, and equal scores by gallery position (lower first)**,
i.e. a stable sort over the gallery in position order. Every function here returns
exactly what that stable sort would return, and ``tests/test_retrieval.py`` checks each
against a plain numpy reference.

Temporaries are bounded by :data:`WORK_BUDGET` elements (a memory bound, not a method
constant: it changes how work is split, never a result).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch

from meet.errors import ConfigError, DataError

WORK_BUDGET = 1 << 24
"""Elements (floats or int64) one temporary may hold: ~64-128 MB."""

_TOPK_SLACK = 8
"""Extra candidates asked of ``torch.topk`` so that boundary ties are usually inside the
candidate set; when they are not, the row falls back to a full stable sort."""

CACHE_CHUNK = 1 << 18
"""Elements per gather-and-score chunk in the PQ and re-rank stages: small enough to
stay in a core's cache (converting float16 rows to float32 is several times faster
there than over a large fresh buffer)."""

_SORT_MIN_SHARE = 0.25
"""The Hamming filter sorts all distances when it keeps more than this share of the
gallery (the paper's fractional rates): a k-heap that large is slower than sorting."""


def survivor_count(rate: float, n_items: int, name: str = "rate") -> int:
    """How many of ``n_items`` a filter keeps.

    ``rate <= 1.0`` is a fraction: ``round(rate * n_items)`` (half rounds up), at least
    1 when ``n_items > 0``; ``rate > 1`` is a count: ``min(int(rate), n_items)``. So 1.0
    keeps everything, and a count of one item cannot be written (use a fraction).
    """
    try:
        rate = float(rate)
    except (TypeError, ValueError):
        rate = math.nan
    if not (math.isfinite(rate) and rate > 0):
        raise ConfigError(f"{name}={rate!r} is not a positive number",
                          fix="use a fraction in (0, 1] or a count > 1")
    if n_items <= 0:
        return 0
    if rate <= 1.0:
        return min(n_items, max(1, int(math.floor(rate * n_items + 0.5))))
    return min(int(rate), n_items)


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch ops on one intra-op thread, then restore the previous count.

    The PQ and re-rank stages work on cache-sized blocks (:data:`CACHE_CHUNK`): splitting
    one across threads costs more in synchronisation than it saves, and on a busy machine
    a two-thread float16 -> float32 copy of one block was measured 50x slower than on one
    thread (8 ms vs 0.15 ms per query). The thread count is process-wide: concurrent
    searches may briefly see it at 1, which changes speed, never results.
    """
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ------------------------------------------------------------------ stable top-k

def stable_top(scores: torch.Tensor, k: int, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Column indices of the ``k`` best entries per row, best first.

    ``scores`` (n_rows, m) float; ``positions`` (n_rows, m) int64 gallery positions of the
    columns, distinct within a row (None: the column index is the position). Order: score
    descending, then position ascending. Returns (n_rows, min(k, m)) int64 indices into
    the columns.

    For small ``k``, ``torch.topk`` picks ``k + slack`` candidates and only those are put
    in (score, position) order, so the cost does not include sorting all ``m`` columns
    (at m = 10,000, k = 2,000: about 0.2 instead of 1.0 ms per row). Rows whose tie at the
    k-th score reaches past the candidates fall back to the full stable sort.
    """
    n_rows, m = scores.shape
    k = min(k, m)
    if k <= 0 or n_rows == 0:
        return torch.zeros(n_rows, max(k, 0), dtype=torch.long)
    if k + _TOPK_SLACK >= m or 4 * k >= m:  # a large share: one full sort beats topk + sorts
        return _full_stable_top(scores, k, positions)
    _, cand = torch.topk(scores, k + _TOPK_SLACK, dim=1, sorted=False)
    key = cand if positions is None else positions.gather(1, cand)
    cand = cand.gather(1, torch.sort(key, dim=1).indices)  # candidates in position order
    ranked = torch.sort(scores.gather(1, cand), dim=1, descending=True, stable=True)
    out = cand.gather(1, ranked.indices[:, :k])
    # Every item scoring >= the k-th value is a candidate iff the last candidate is
    # strictly worse; then the first k candidates in (score, position) order are exact.
    incomplete = torch.nonzero(ranked.values[:, -1] >= ranked.values[:, k - 1]).squeeze(1)
    if incomplete.numel():
        out[incomplete] = _full_stable_top(scores[incomplete], k,
                                           None if positions is None else positions[incomplete])
    return out


def _full_stable_top(scores: torch.Tensor, k: int, positions: torch.Tensor | None) -> torch.Tensor:
    """:func:`stable_top` by sorting every column once.

    With positions, the sort key is one int64 per entry: the float32 score mapped to an
    order-preserving int32 (``-0.0`` first made ``+0.0``, so equal scores stay equal),
    negated, in the high half and the position (< 2**32) in the low half, so a plain
    ascending sort is (score desc, position asc). One sort instead of an argsort of the
    positions plus a stable sort of the scores: about half the time.
    """
    if positions is None:
        return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    bits = (scores.to(torch.float32) + 0.0).contiguous().view(torch.int32).long()
    ordinal = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # increasing with the score
    key = (-1 - ordinal) * (1 << 32) + positions
    return torch.sort(key, dim=1).indices[:, :k]


# ------------------------------------------------------------------ Hamming filter

_POPCOUNT_8 = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1).astype(np.uint8)
"""Bits set in each byte value: the popcount for numpy < 2.0 (no ``np.bitwise_count``)."""


def hamming_distances(query_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Popcount of XOR: (n_queries, n_bytes) x (n_items, n_bytes) uint8 -> (n_queries, n_items).

    The direct computation: the filter's path for large survivor shares, and the hash
    mode of :func:`meet.retrieval.full_scores`. Returns uint8 when ``n_bits < 256``, else
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
    tables = adc_tables(query_hash, sign_codebooks(n_bits))
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


# ------------------------------------------------------------------ quantization filter

def adc_tables(query_hash: np.ndarray | torch.Tensor, codebooks: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Lookup tables of the query vectors against one side's codebooks.

    ``query_hash`` (n_queries, M * sub_dim) float: the hash features, or the rotated dense
    vectors of a dense-space index (``GalleryIndex.pq_vectors``); ``codebooks``
    (n_codebooks, codebook_size, sub_dim) -> (n_queries, n_codebooks, codebook_size)
    float32: entry [q, m, c] is the inner product of the query's m-th sub-vector with
    codeword c of codebook m. Additive codebooks (residual quantization: each codeword as
    long as the query, sub_dim = dim) give the query's whole vector against codeword c.
    """
    # Copies (small): codebooks may be a read-only memory map.
    books = torch.as_tensor(np.array(codebooks, dtype=np.float32))
    hashed = torch.as_tensor(np.array(query_hash, dtype=np.float32))
    n_codebooks, _, sub_dim = books.shape
    if n_codebooks * sub_dim == hashed.shape[1]:  # product codebooks: one sub-vector each
        sub = hashed.reshape(hashed.shape[0], n_codebooks, sub_dim)
        return torch.einsum("qmd,mkd->qmk", sub, books)
    if sub_dim == hashed.shape[1]:  # additive (residual) codebooks: full-size codewords
        return (hashed @ books.reshape(n_codebooks * books.shape[1], sub_dim).T).reshape(
            hashed.shape[0], n_codebooks, books.shape[1])
    raise DataError(f"query vectors of {hashed.shape[1]} dims fit neither product codebooks "
                    f"{tuple(books.shape)} nor additive ones", fix="encode queries with the index's checkpoint")


def adc_gather(tables: torch.Tensor, item_codes: torch.Tensor) -> torch.Tensor:
    """ADC scores ``sum_m tables[q, m, code[q, r, m]]``: (n_queries, M, K) x (n_queries, R, M)
    integer codes -> (n_queries, R) float32. The sum runs over sub-spaces in order
    m = 0..M-1; each sub-space's codes are widened to int64 (what ``gather`` indexes
    with) one column at a time, which is cheaper than widening a transposed copy."""
    scores = torch.zeros(item_codes.shape[0], item_codes.shape[1], dtype=torch.float32)
    for m in range(tables.shape[1]):
        scores += tables[:, m, :].gather(1, item_codes[:, :, m].long())
    return scores


def gather_codes(pq_codes: np.ndarray, positions: np.ndarray) -> torch.Tensor:
    """PQ codes of the items at ``positions`` (n_queries, R): (n_queries, R, M), in the
    stored dtype. A row of M uint8 codes is fetched as one integer of M bytes where such
    an integer type exists (M = 1, 2, 4, 8), else as one M-byte record: one gather per
    item, not M."""
    n_items, n_codebooks = pq_codes.shape
    if pq_codes.dtype == np.uint8 and pq_codes.flags.c_contiguous:
        word = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(n_codebooks,
                                                                          np.dtype((np.void, n_codebooks)))
        rows = pq_codes.view(word).reshape(n_items)
        raw = np.take(rows, positions).view(np.uint8).reshape(*positions.shape, n_codebooks)
    else:
        raw = np.asarray(pq_codes[positions])
    return torch.from_numpy(raw)


def pq_filter(tables: torch.Tensor, pq_codes: np.ndarray, positions: np.ndarray, n_keep: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the ``n_keep`` Hamming survivors with the best ADC score (ties by position).

    ``tables`` (n_queries, M, K); ``pq_codes`` (n_items, M) the gallery's PQ codes, of
    which only the survivors' rows are read; ``positions`` (n_queries, R) survivors.
    Returns ``kept`` (n_queries, q) indices into the R survivors (= their Hamming ranks),
    best first, ``kept_scores`` (n_queries, q) and ``scores`` (n_queries, R) float32.
    """
    scores = adc_gather(tables, gather_codes(pq_codes, positions))
    kept = stable_top(scores, n_keep, torch.from_numpy(positions))
    return kept.numpy(), scores.gather(1, kept).numpy(), scores.numpy()


# ------------------------------------------------------------------ exhaustive scoring

def stream_topk(score_block: Callable[[int, int], torch.Tensor], n_items: int, n_queries: int,
                k: int, block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over a gallery scored block by block (faiss contrib's exhaustive search).

    ``score_block(start, stop)`` returns (n_queries, stop - start) float32 scores of
    gallery items ``start..stop-1``. Returns positions (n_queries, k) int64 and scores
    (n_queries, k) float32, ordered by (score desc, position asc).
    """
    k = min(k, n_items)
    block = block or max(1, WORK_BUDGET // max(1, n_queries))
    best_pos = torch.zeros(n_queries, 0, dtype=torch.long)
    best_val = torch.zeros(n_queries, 0, dtype=torch.float32)
    for start in range(0, n_items, block):
        stop = min(start + block, n_items)
        values = score_block(start, stop)
        top = stable_top(values, k)
        # Earlier blocks hold lower positions: a stable sort of [best, block] by score
        # keeps (score desc, position asc) order.
        cand_pos = torch.cat([best_pos, top + start], dim=1)
        cand_val = torch.cat([best_val, values.gather(1, top)], dim=1)
        order = torch.sort(cand_val, dim=1, descending=True, stable=True).indices[:, :k]
        best_pos, best_val = cand_pos.gather(1, order), cand_val.gather(1, order)
    return best_pos.numpy(), best_val.numpy()


def dense_block_scorer(query_dense: torch.Tensor, dense: np.ndarray) -> Callable[[int, int], torch.Tensor]:
    """Inner products of float32 queries (n_queries, d) with stored rows ``dense[start:stop]``."""
    return lambda start, stop: query_dense @ torch.from_numpy(np.asarray(dense[start:stop], np.float32)).T


def pq_block_scorer(tables: torch.Tensor, pq_codes: np.ndarray) -> Callable[[int, int], torch.Tensor]:
    """ADC scores of every query against ``pq_codes[start:stop]`` (shared by all queries)."""
    def score(start: int, stop: int) -> torch.Tensor:
        codes = torch.from_numpy(np.asarray(pq_codes[start:stop]).astype(np.int64))  # (b, M)
        out = torch.zeros(tables.shape[0], stop - start)
        for m in range(tables.shape[1]):
            out += tables[:, m, :][:, codes[:, m]]
        return out
    return score
