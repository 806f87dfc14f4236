"""The one tie rule of Stage II, exact top-k under it, and the bound on temporary work.

**Items are ranked by their score, and equal scores by gallery position (lower first)**,
i.e. a stable sort over the gallery in position order. Every stage of the cascade (the
Hamming filter, the quantization filter, the re-rank), every exhaustive mode and every
metric ranks this way, so a result never depends on a library's heap order, and each
fast path here is checked against a plain numpy reference (``tests/test_search_*.py``).

Temporaries are bounded by :data:`WORK_BUDGET` elements (a memory bound, not a method
constant: it changes how work is split, never a result).
"""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator

import numpy as np
import torch

from meet.errors import ConfigError

WORK_BUDGET = 1 << 24
"""Elements (floats or int64) one temporary may hold: ~64-128 MB."""

_TOPK_SLACK = 8
"""Extra candidates asked of ``torch.topk`` so that boundary ties are usually inside the
candidate set; when they are not, the row falls back to a full stable sort."""

CACHE_CHUNK = 1 << 18
"""Elements per gather-and-score chunk in the PQ and re-rank stages: small enough to
stay in a core's cache (converting float16 rows to float32 is several times faster
there than over a large fresh buffer)."""


def survivor_count(rate: float, n_items: int, name: str = "rate", rounding: str = "nearest") -> int:
    """How many of ``n_items`` a filter keeps.

    ``rate <= 1.0`` is a fraction: ``round(rate * n_items)`` (half rounds up; with
    ``rounding="floor"``, ``int(rate * n_items)`` as the MEET release computes it), at least
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
        exact = rate * n_items
        return min(n_items, max(1, int(exact) if rounding == "floor" else int(math.floor(exact + 0.5))))
    return min(int(rate), n_items)


SMALL_WORK = 1 << 23
"""Multiply-adds (or code bytes compared) below which a step runs on one thread, torch's
and faiss's (:func:`threads_for`)."""


def threads_for(work: int) -> Any:
    """:func:`single_threaded` for a product of fewer than :data:`SMALL_WORK` multiply-adds
    (one query's lookup tables, one query against a small gallery), else no change: waking
    a second OpenMP thread cost 0.5-20 ms on a busy 2-core machine, far more than such a
    product takes on one (the app sends one query at a time)."""
    return single_threaded() if work < SMALL_WORK else nullcontext()


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch ops (and faiss's, when faiss is loaded) on one intra-op thread, then
    restore the previous counts.

    The PQ and re-rank stages work on cache-sized blocks (:data:`CACHE_CHUNK`): splitting
    one across threads costs more in synchronisation than it saves, and on a busy machine
    a two-thread float16 -> float32 copy of one block was measured 50x slower than on one
    thread (8 ms vs 0.15 ms per query). The thread count is process-wide: concurrent
    searches may briefly see it at 1, which changes speed, never results.
    """
    faiss = sys.modules.get("faiss")  # its own OpenMP runtime: torch's setting does not reach it
    previous = torch.get_num_threads(), faiss.omp_get_max_threads() if faiss is not None else 1
    if previous == (1, 1):
        yield
        return
    torch.set_num_threads(1)
    if faiss is not None:
        faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        if faiss is not None:
            faiss.omp_set_num_threads(previous[1])


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
