"""The Stage II engine: runs a batch of queries through Hamming filter -> quantization
filter -> re-rank (or one stage alone, in the exhaustive modes) over a
:class:`~meet.search.index.GalleryIndex`. The public entry is ``GalleryIndex.search``;
:func:`full_scores` and :func:`stage_survivors` are the same stages for evaluation and
analysis, so a mode, a tie rule and a recall ceiling mean one thing everywhere.

Modes: ``dense`` (exact inner product over the whole gallery), ``hash`` (the Hamming
stage alone, exact over the whole gallery; score ``n_bits - 2 * distance`` or ``<h, b>``
by ``hamming_scores``), ``pq`` (the quantization stage alone: ADC over the whole
gallery with the index's quantizer), ``cascade`` (1 -> 2 -> dense), ``meet`` (1 -> 2 ->
reweighted).

A rate ``<= 1.0`` is a fraction, ``> 1`` a count (:func:`meet.search.topk.survivor_count`).
Every stage ranks equal scores by gallery position (lower first), so results are
deterministic and equal to a plain stable sort (``tests/test_search_cascade.py``).

Cost per query with count rates (R, q): one pass over the packed codes (the same scan as
Hamming-only search), R x n_codebooks table reads, and q dense rows gathered; so the
work beyond the Hamming scan does not grow with the gallery. Fractional rates gather a
share of the whole gallery and are slow at scale (the paper's setting, kept for fidelity).
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple, Sequence, TypeVar

import numpy as np
import torch

from meet.config import CascadeConfig, SearchMode, choices
from meet.errors import ConfigError, DataError
from meet.search.hamming import hamming_scores, hamming_stage
from meet.search.pq_filter import pq_block_scorer, pq_filter
from meet.search.rerank import batch_reciprocal_resort, dense_block_scorer, dense_scores, rerank
from meet.search.topk import CACHE_CHUNK, WORK_BUDGET, single_threaded, stream_topk, survivor_count, threads_for
from meet.search.traces import QueryTrace, StageTrace

if TYPE_CHECKING:  # the engine reads an index; the index calls the engine
    from meet.search.index import GalleryIndex

MODES = choices(SearchMode)
EXHAUSTIVE_MODES = ("dense", "hash", "pq")
"""Modes that score the whole gallery with one representation (no filters)."""


@dataclass
class SearchResult:
    """Top-k results of a batch of queries."""

    ids: np.ndarray
    """int64 (n_queries, k) gallery positions best first; -1 pads when fewer survive."""
    scores: np.ndarray
    """float32 (n_queries, k) final scores; -inf on padding."""
    stage_counts: dict[str, int]
    """Items per query: ``gallery``, ``after_hamming``, ``after_pq``, ``reranked`` (how
    many dense scores were computed)."""
    traces: list[QueryTrace] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent per stage over the whole call (``hamming``, ``pq``, ``rerank``,
    ``exhaustive``). Wall-clock: where worker threads run the PQ filter and the re-rank
    side by side, the section's wall time is split between the two in proportion to
    the thread-seconds each took, so the stages add up to the call's time."""


class StageMasks(NamedTuple):
    """Which gallery items each filter kept, bool (n_queries, n_gallery)."""

    after_hamming: np.ndarray
    after_pq: np.ndarray


@dataclass
class _Queries:
    dense: np.ndarray
    hash: np.ndarray
    codes: np.ndarray

    def rows(self, start: int, stop: int) -> "_Queries":
        return _Queries(self.dense[start:stop], self.hash[start:stop], self.codes[start:stop])


@dataclass
class _HammingBlock:
    """One block of queries after the Hamming filter."""

    start: int
    positions: np.ndarray        # (nb, R) survivors, best first
    scores: np.ndarray           # (nb, R) float32 +-1 code inner products (n_bits - 2 * Hamming, or <h, b>)
    tables: torch.Tensor         # (nb, M, K) the quantization filter's lookup tables

    def sub_blocks(self, n_hamming: int, n_codebooks: int) -> list[tuple["_HammingBlock", int, int]]:
        """(self, lo, hi) row ranges whose gathered PQ codes fit :data:`CACHE_CHUNK`."""
        step = max(1, CACHE_CHUNK // max(1, n_hamming * n_codebooks))
        n_rows = self.positions.shape[0]
        return [(self, lo, min(lo + step, n_rows)) for lo in range(0, n_rows, step)]


@dataclass
class _Filtered:
    """One query block after both filters."""

    start: int
    hamming_pos: np.ndarray      # (nb, R)
    hamming_scores: np.ndarray   # (nb, R)
    kept: np.ndarray             # (nb, q) indices into the R survivors
    kept_scores: np.ndarray      # (nb, q)
    candidates: np.ndarray       # (nb, q) gallery positions


def rates(cfg: CascadeConfig, direction: str) -> tuple[float, float, int]:
    """(hamming_rate, pq_rate, top_z) of one direction (``t2i`` or ``i2t``)."""
    if direction not in ("t2i", "i2t"):
        raise ConfigError(f"unknown direction {direction!r}", fix="use t2i (text queries over images) "
                          "or i2t (image queries over captions)")
    return (getattr(cfg, f"hamming_rate_{direction}"), getattr(cfg, f"pq_rate_{direction}"),
            int(getattr(cfg, f"top_z_{direction}")))


def stage_sizes(cfg: CascadeConfig, direction: str, n_items: int) -> tuple[int, int, int]:
    """(R, q, z) for a gallery of ``n_items``."""
    hamming_rate, pq_rate, top_z = rates(cfg, direction)
    n_hamming = survivor_count(hamming_rate, n_items, f"hamming_rate_{direction}", cfg.survivor_rounding)
    n_pq = survivor_count(pq_rate, n_hamming, f"pq_rate_{direction}", cfg.survivor_rounding)
    if top_z < 0:
        raise ConfigError(f"top_z_{direction}={top_z} is negative", fix="use 0 or more")
    if not cfg.consistency_temperature > 0:
        raise ConfigError(f"consistency_temperature={cfg.consistency_temperature} must be positive")
    return n_hamming, n_pq, min(top_z, n_pq)


def run_search(index: GalleryIndex, queries: Any, k: int, mode: SearchMode, cascade: CascadeConfig,
               trace: bool = False, batch_size: int = 256, workers: int | None = None) -> SearchResult:
    """Top-k gallery positions per query (``GalleryIndex.search`` is the public entry).

    ``queries``: an :class:`~meet.inference.Encoded` (or anything with ``dense`` (nq, dim),
    ``hash`` (nq, n_bits), ``codes`` (nq, n_bits / 8)) of the other modality; ``trace``:
    attach a :class:`~meet.search.traces.QueryTrace` per query (stores every survivor:
    small galleries); ``batch_size``: queries per Hamming pass (faiss shares each scan of
    the codes among them); the PQ and re-rank stages then work in cache-sized sub-blocks,
    each on one torch thread (:func:`meet.search.topk.single_threaded`), ``workers``
    sub-blocks side by side (None: torch's thread count). Worker threads change speed,
    never results: each sub-block writes its own rows. Per-stage seconds land in
    ``timings``.

    Why threads for those two stages: they gather rows at random gallery positions, so
    one core spends most of its time waiting on memory; two cores keep twice as many
    reads in flight (at 1M items and 2,000 candidates, the re-rank measured 2.6 -> 1.5 ms
    per query on 2 cores).
    """
    q = _prepare(queries, index, mode, k, batch_size)
    n_workers = torch.get_num_threads() if workers is None else int(workers)
    if n_workers < 1:
        raise ConfigError(f"workers={workers} must be at least 1", fix="leave it out to use torch's thread count")
    direction, n_items, n_queries = index.direction, index.n_items, q.dense.shape[0]
    ids = np.full((n_queries, k), -1, np.int64)
    scores = np.full((n_queries, k), -np.inf, np.float32)
    traces: list[QueryTrace] | None = [] if trace else None
    timings = {"hamming": 0.0, "pq": 0.0, "rerank": 0.0, "exhaustive": 0.0}
    if mode in EXHAUSTIVE_MODES:
        counts = {"gallery": n_items, "after_hamming": n_items, "after_pq": n_items,
                  "reranked": n_items if mode == "dense" else 0}
        for start in range(0, n_queries, batch_size):
            t0 = time.perf_counter()
            pos, val = _exhaustive(q.rows(start, start + batch_size), index, mode, k, cascade)
            timings["exhaustive"] += time.perf_counter() - t0
            ids[start:start + pos.shape[0], :pos.shape[1]] = pos
            scores[start:start + pos.shape[0], :pos.shape[1]] = val
            if traces is not None:
                traces.extend(_exhaustive_trace(start + b, direction, mode, n_items, pos[b], val[b])
                              for b in range(pos.shape[0]))
        return SearchResult(ids, scores, counts, traces, timings)
    n_hamming, n_pq, top_z = stage_sizes(cascade, direction, n_items)
    counts = {"gallery": n_items, "after_hamming": n_hamming, "after_pq": n_pq, "reranked": n_pq}
    if mode == "release":
        return _release_search(q, index, cascade, k, n_hamming, n_pq, top_z, batch_size, trace, counts, timings)

    def finish(task: tuple[_HammingBlock, int, int]) -> tuple[_Filtered, Any, float, float]:
        """Quantization filter and re-rank of one sub-block; writes its rows of the result."""
        t0 = time.perf_counter()
        block = _pq_step(*task, index, n_pq)
        t1 = time.perf_counter()
        stop = block.start + block.candidates.shape[0]
        rr = rerank(torch.from_numpy(q.dense[block.start:stop]), index.dense, index.reciprocal,
                    block.candidates, cascade, top_z, mode, want_consistency=trace,
                    n_best=None if trace else k)
        best = rr.order[:, :k]
        ids[block.start:stop, :best.shape[1]] = np.take_along_axis(block.candidates, best, axis=1)
        scores[block.start:stop, :best.shape[1]] = np.take_along_axis(rr.final, best, axis=1)
        return block, (rr if trace else None), t1 - t0, time.perf_counter() - t1

    with _worker_pool(n_workers) as pool:
        for hamming_block in _hamming_blocks(q, index, cascade, n_hamming, batch_size, timings):
            t0 = time.perf_counter()
            done = pool(finish, hamming_block.sub_blocks(n_hamming, index.pq_codes.shape[1]))
            _split_wall(timings, time.perf_counter() - t0, sum(d[2] for d in done), sum(d[3] for d in done))
            if traces is not None:
                traces.extend(_cascade_trace(block, rr, b, direction, mode, index, top_z, cascade.fusion)
                              for block, rr, _, _ in done for b in range(block.candidates.shape[0]))
    return SearchResult(ids, scores, counts, traces, timings)


def _release_search(q: _Queries, index: GalleryIndex, cascade: CascadeConfig, k: int, n_hamming: int, n_pq: int,
                    top_z: int, batch_size: int, trace: bool, counts: dict[str, int],
                    timings: dict[str, float]) -> SearchResult:
    """``mode="release"``: the filters (quantization ties by Hamming rank, as the release's
    stable sort over its Hamming-ordered survivors does), then the release's re-sort over
    the whole batch (:func:`meet.search.rerank.batch_reciprocal_resort`), which needs every
    query's candidates first: two passes, on one thread."""
    blocks = []
    for hamming_block in _hamming_blocks(q, index, cascade, n_hamming, batch_size, timings):
        t0 = time.perf_counter()
        with single_threaded():
            blocks += [_pq_step(*task, index, n_pq, ties_by_hamming_rank=True)
                       for task in hamming_block.sub_blocks(n_hamming, index.pq_codes.shape[1])]
        timings["pq"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    candidates = np.concatenate([b.candidates for b in blocks]) if blocks else np.zeros((0, n_pq), np.int64)
    scores, _ = dense_scores(torch.from_numpy(q.dense), index.dense, candidates)
    rr = batch_reciprocal_resort(candidates, scores.numpy(), top_z)
    best = rr.order[:, :k]
    n_queries = q.dense.shape[0]
    ids = np.full((n_queries, k), -1, np.int64)
    out = np.full((n_queries, k), -np.inf, np.float32)
    ids[:, :best.shape[1]] = np.take_along_axis(candidates, best, axis=1)
    out[:, :best.shape[1]] = np.take_along_axis(rr.final, best, axis=1)
    timings["rerank"] += time.perf_counter() - t0
    traces = None
    if trace:
        traces = [_cascade_trace(block, _rows_of(rr, block.start, block.candidates.shape[0]), b, index.direction,
                                 "release", index, top_z, fusion=False)
                  for block in blocks for b in range(block.candidates.shape[0])]
    return SearchResult(ids, out, counts, traces, timings)


def _rows_of(rr: Any, start: int, n: int) -> Any:
    """The rows ``start:start + n`` of a batch :class:`~meet.search.rerank.Rerank`."""
    pick = lambda arr: None if arr is None else arr[start:start + n]
    return dataclasses.replace(rr, **{f.name: pick(getattr(rr, f.name)) for f in dataclasses.fields(rr)})


def full_scores(index: GalleryIndex, queries: Any, mode: SearchMode = "meet", cascade: CascadeConfig | None = None,
                batch_size: int = 256) -> np.ndarray:
    """Every query's score for every gallery item, float32 (n_queries, n_gallery).

    For evaluation at test-split scale (R@K and mAP code that ranks a full matrix with the
    same tie rule). Exhaustive modes: the mode's score everywhere, exactly as
    ``index.search`` ranks it. ``cascade``/``meet``/``release``: the final score of each
    re-ranked candidate and ``-inf`` for items a filter removed, so sorting a row (ties by
    position) reproduces the search's order, with the removed items after it by position.
    """
    cascade = index.settings(cascade)
    q = _prepare(queries, index, mode, 1, batch_size)
    n_items, n_queries = index.n_items, q.dense.shape[0]
    out = np.full((n_queries, n_items), -np.inf, np.float32)
    if mode == "release":  # its re-sort ranks each query among the whole batch: one call
        result = run_search(index, q, max(n_items, 1), mode, cascade, batch_size=batch_size)
        rows, cols = np.nonzero(result.ids >= 0)
        out[rows, result.ids[rows, cols]] = result.scores[rows, cols]
        return out
    for start in range(0, n_queries, batch_size):
        block = q.rows(start, start + batch_size)
        stop = start + block.dense.shape[0]
        if mode == "dense":
            out[start:stop] = dense_block_scorer(torch.from_numpy(block.dense), index.dense)(0, n_items)
        elif mode == "hash":
            out[start:stop] = hamming_scores(cascade.hamming_scores, block.hash, block.codes, index.codes)
        elif mode == "pq":
            tables = index.quantizer.lookup_tables(index.quantizer.source(block))
            out[start:stop] = pq_block_scorer(tables, index.pq_codes)(0, n_items).numpy()
        else:
            result = run_search(index, block, max(n_items, 1), mode, cascade, batch_size=batch_size)
            rows, cols = np.nonzero(result.ids >= 0)
            out[start + rows, result.ids[rows, cols]] = result.scores[rows, cols]
    return out


def filter_orders(index: GalleryIndex, queries: Any, cascade: CascadeConfig, n_hamming: int,
                  batch_size: int = 256) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """The two filters as the cascade runs them, keeping the whole quantization order:
    ``(start, hamming_positions, pq_order)`` per query block, where ``hamming_positions``
    (nb, R) are the Hamming survivors best first and ``pq_order`` (nb, R) the survivors'
    indices by ADC score (ties by position). The quantization filter's ``q`` survivors
    are ``hamming_positions[pq_order[:, :q]]`` for every ``q`` (a stable order's prefix is
    its top q), so one pass serves every pq rate (:func:`stage_survivors`, the recall
    curve of :mod:`meet.analysis.funnel`)."""
    q = _prepare(queries, index, "cascade", 1, batch_size)
    for hamming_block in _hamming_blocks(q, index, cascade, n_hamming, batch_size, {"hamming": 0.0, "pq": 0.0}):
        with single_threaded():
            for block in (_pq_step(*task, index, n_hamming)
                          for task in hamming_block.sub_blocks(n_hamming, index.pq_codes.shape[1])):
                yield block.start, block.hamming_pos, block.kept


def stage_survivors(index: GalleryIndex, queries: Any, cascade: CascadeConfig | None = None,
                    batch_size: int = 256) -> StageMasks:
    """Boolean masks (n_queries, n_gallery) of the items kept after the Hamming filter and
    after the quantization filter, e.g. to count the truly relevant items each one drops."""
    cascade = index.settings(cascade)
    queries = _prepare(queries, index, "cascade", 1, batch_size)
    n_queries = queries.dense.shape[0]
    after_hamming = np.zeros((n_queries, index.n_items), bool)
    after_pq = np.zeros((n_queries, index.n_items), bool)
    n_hamming, n_pq, _ = stage_sizes(cascade, index.direction, index.n_items)
    for start, positions, order in filter_orders(index, queries, cascade, n_hamming, batch_size):
        rows = np.arange(start, start + positions.shape[0])[:, None]
        after_hamming[rows, positions] = True
        after_pq[rows, np.take_along_axis(positions, order[:, :n_pq], axis=1)] = True
    return StageMasks(after_hamming, after_pq)


# ------------------------------------------------------------------ internals

def _hamming_blocks(q: _Queries, index: GalleryIndex, cascade: CascadeConfig, n_hamming: int,
                    batch_size: int, timings: dict[str, float]) -> Iterator[_HammingBlock]:
    """The Hamming filter over up to ``batch_size`` queries at once (faiss shares each
    pass over the codes between them, on all its threads), plus the quantization filter's
    lookup tables for the block (one matrix product on all torch threads: for residual
    codebooks that is M x K x dim floats read once per block, not once per sub-block)."""
    step = max(1, min(batch_size, WORK_BUDGET // max(1, n_hamming)))
    lists = index.inverted_lists(cascade.hamming_nlist) if cascade.hamming_index == "ivf" else None
    for start in range(0, q.dense.shape[0], step):
        block = q.rows(start, start + step)
        t0 = time.perf_counter()
        with threads_for(block.dense.shape[0] * index.n_items * index.codes.shape[1]):
            positions, scores = hamming_stage(cascade.hamming_scores, block.hash, block.codes, index, n_hamming,
                                              lists=lists, nprobe=cascade.hamming_nprobe)
        t1 = time.perf_counter()
        timings["hamming"] += t1 - t0
        with threads_for(block.dense.shape[0] * index.quantizer.table_work):
            tables = index.quantizer.lookup_tables(index.quantizer.source(block))
        timings["pq"] += time.perf_counter() - t1
        yield _HammingBlock(start, positions, scores, tables)


def _pq_step(block: _HammingBlock, lo: int, hi: int, index: GalleryIndex, n_pq: int,
             ties_by_hamming_rank: bool = False) -> _Filtered:
    """The quantization filter over rows ``lo:hi`` of a Hamming block (call it on one
    torch thread: the work is cache-sized)."""
    pos, ham = block.positions[lo:hi], block.scores[lo:hi]
    kept, kept_scores, _ = pq_filter(block.tables[lo:hi], index.pq_codes, pos, n_pq, ties_by_hamming_rank)
    return _Filtered(block.start + lo, pos, ham, kept, kept_scores, np.take_along_axis(pos, kept, axis=1))


_T = TypeVar("_T")
_R = TypeVar("_R")


@contextmanager
def _worker_pool(n_workers: int) -> Iterator[Callable[[Callable[[_T], _R], Sequence[_T]], list[_R]]]:
    """``run(fn, tasks) -> [fn(task) ...]`` in task order, on ``n_workers`` threads (in the
    calling thread when there is one worker or one task), torch at one intra-op thread."""
    pool = ThreadPoolExecutor(n_workers, thread_name_prefix="meet-search") if n_workers > 1 else None

    def one_thread(fn: Callable[[_T], _R]) -> Callable[[_T], _R]:
        def call(task: _T) -> _R:
            torch.set_num_threads(1)  # this thread's OpenMP setting (shared with faiss)
            return fn(task)
        return call

    def run(fn: Callable[[_T], _R], tasks: Sequence[_T]) -> list[_R]:
        with single_threaded():
            if pool is None or len(tasks) <= 1:
                return [fn(task) for task in tasks]
            return list(pool.map(one_thread(fn), tasks))

    try:
        yield run
    finally:
        if pool is not None:
            pool.shutdown()


def _split_wall(timings: dict[str, float], wall: float, pq_seconds: float, rerank_seconds: float) -> None:
    """Add a parallel section's wall time to ``pq`` and ``rerank`` in proportion to the
    thread-seconds each stage took in it."""
    busy = pq_seconds + rerank_seconds
    share = pq_seconds / busy if busy > 0 else 0.5
    timings["pq"] += wall * share
    timings["rerank"] += wall * (1.0 - share)


def _writable(array: Any, dtype: Any) -> np.ndarray:
    """A contiguous array of ``dtype``; copied when it is read-only (rows of a memory-mapped
    index used as queries), since torch warns on wrapping read-only memory."""
    out = np.ascontiguousarray(array, dtype)
    return out if out.flags.writeable else out.copy()


def _exhaustive(q: _Queries, index: GalleryIndex, mode: str, k: int, cascade: CascadeConfig
                ) -> tuple[np.ndarray, np.ndarray]:
    """One stage over the whole gallery, exactly: positions and scores (nq, k)."""
    n_items, n_queries = index.n_items, q.dense.shape[0]
    if mode == "hash":
        with threads_for(n_queries * n_items * index.codes.shape[1]):
            return hamming_stage(cascade.hamming_scores, q.hash, q.codes, index, min(k, n_items), exact=True)
    if mode == "dense":
        block = max(1, WORK_BUDGET // max(n_queries, index.dense.shape[1]))
        scorer = dense_block_scorer(torch.from_numpy(q.dense), index.dense)
        work = n_queries * n_items * index.dense.shape[1]
    else:
        block = max(1, WORK_BUDGET // max(n_queries, index.pq_codes.shape[1]))
        with threads_for(n_queries * index.quantizer.table_work):
            tables = index.quantizer.lookup_tables(index.quantizer.source(q))
        scorer = pq_block_scorer(tables, index.pq_codes)
        work = n_queries * n_items * index.pq_codes.shape[1]
    with threads_for(work):
        return stream_topk(scorer, n_items, n_queries, k, block=block)


def _exhaustive_trace(row: int, direction: str, mode: str, n_items: int, pos: np.ndarray,
                      val: np.ndarray) -> QueryTrace:
    stage = StageTrace(mode, pos.copy(), val.copy(), np.arange(len(pos)))
    return QueryTrace(row, direction, mode, n_items, [stage], final_order=pos.copy(),
                      notes=[f"{mode} mode ranks the whole gallery; the trace keeps the top {len(pos)}"])


def _cascade_trace(block: _Filtered, rr: Any, b: int, direction: str, mode: str,
                   index: GalleryIndex, top_z: int, fusion: bool) -> QueryTrace:
    n_hamming = block.hamming_pos.shape[1]
    hamming = StageTrace("hamming", block.hamming_pos[b].copy(), block.hamming_scores[b].copy(),
                         np.arange(n_hamming))
    pq = StageTrace("pq", block.candidates[b].copy(), block.kept_scores[b].copy(),
                    np.arange(block.kept.shape[1]), previous_ranks=block.kept[b].copy())
    order = rr.order[b]
    final_ids = block.candidates[b][order]
    final = StageTrace("rerank", final_ids, rr.final[b][order].copy(), np.arange(len(order)),
                       previous_ranks=order.copy())
    notes = []
    if mode == "release":
        notes.append(f"release re-sort: the top {top_z} candidates by dense score, re-sorted by where this query "
                     "falls among the searched batch's queries for each candidate (the MEET release's "
                     "i2t_rerank; a single query is not re-sorted); their final scores are ordinals 2 + (z - place) / z")
    if mode == "meet" and index.reciprocal is None:
        notes.append("complementarity off: the gallery index stores no reciprocal scores "
                     "(build it with reciprocal_k > 0)")
    elif mode == "meet":
        notes.append(f"complementarity consulted for the top {top_z} candidates by dense score")
    if mode == "meet":
        notes.append("fusion: final = dense + alpha * consistency + beta * complementarity" if fusion else
                     "no fusion (official release): the top z are re-sorted by reciprocal rank; "
                     "their final scores are ordinals 2 + (z - place) / z")
    pick = lambda arr: None if arr is None else arr[b].copy()
    return QueryTrace(block.start + b, direction, mode, index.n_items, [hamming, pq, final],
                      candidates=block.candidates[b].copy(), dense_scores=pick(rr.dense),
                      attention=pick(rr.attention), consistency=pick(rr.consistency),
                      complementarity_ranks=pick(rr.comp_ranks), complementarity=pick(rr.complementarity),
                      final_scores=pick(rr.final), final_order=final_ids.copy(), notes=notes)


def _prepare(queries: Any, index: GalleryIndex, mode: str, k: int, batch_size: int) -> _Queries:
    """Validate the call and return the queries as contiguous numpy arrays."""
    if mode not in MODES:
        raise ConfigError(f"unknown search mode {mode!r}", fix=f"choose one of {', '.join(MODES)}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k={k!r} must be a positive integer")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be at least 1")
    try:
        dense, hashed, codes = queries.dense, queries.hash, queries.codes
    except AttributeError as exc:
        raise DataError("queries must have dense, hash and codes arrays (an Encoded)",
                        fix="encode them with model.encode_texts / encode_images") from exc
    q = _Queries(*(_writable(array, dtype) for array, dtype in ((dense, np.float32), (hashed, np.float32),
                                                                 (codes, np.uint8))))
    if q.dense.ndim != 2 or q.hash.ndim != 2 or q.codes.ndim != 2:
        raise DataError(f"queries must be 2-D arrays (n_queries, ...), got dense {q.dense.shape}, "
                        f"hash {q.hash.shape}, codes {q.codes.shape}", fix="for one query use shape (1, dim)")
    n_queries = q.dense.shape[0]
    checks = [
        (q.hash.shape[0] == n_queries and q.codes.shape[0] == n_queries,
         f"queries have {n_queries} dense rows but {q.hash.shape[0]} hash and {q.codes.shape[0]} code rows"),
        (q.dense.shape[1:] == index.dense.shape[1:],
         f"query dense dim {q.dense.shape[1:]} != gallery dense dim {index.dense.shape[1:]}"),
        (q.codes.shape[1:] == index.codes.shape[1:] and q.hash.shape[1:] == (index.n_bits,),
         f"query codes/hash features have {q.codes.shape[1:]} bytes / {q.hash.shape[1:]} bits, the gallery "
         f"{index.codes.shape[1:]} / {index.n_bits}"),
    ]
    for ok, message in checks:
        if not ok:
            raise DataError(message, fix="encode queries and gallery with the same checkpoint")
    return q
