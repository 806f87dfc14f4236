"""Stage II filtering: what each filter removes, and how much truly relevant it loses.

* :func:`query_funnel`: one query's funnel (gallery -> Hamming -> PQ -> re-rank) from
  its trace, with the relevant items each stage dropped.
* :func:`aggregate_funnel`: the same, pooled over many queries (from
  :func:`meet.search.stage_survivors`).
* :func:`recall_cost_curve`: the recall ceiling after each filter as the rates R and q
  vary, against the share of the gallery the dense re-rank must read.
* :func:`removed_by_stage`: a gallery of what one filter removed.

"Recall ceiling" is relevant items kept / relevant items, pooled over queries: no re-rank
can find an item a filter has dropped, so this bounds the cascade's recall. Both the
funnel and the curve run the cascade's own filters (:func:`meet.search.filter_orders`), so
a ceiling here is exactly what a search with those rates keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from meet.analysis._base import (Record, as_array, cascade_ids, membership, query_arrays, relevance,
                                 rows_per_block, share)
from meet.config import CascadeConfig
from meet.errors import ConfigError, DataError
from meet.search.cascade import filter_orders, rates, stage_survivors
from meet.search.topk import survivor_count

FUNNEL_STAGES = ("gallery", "hamming", "pq", "rerank")


@dataclass
class Funnel(Record):
    """One query's path, ``stages`` in order gallery, hamming, pq, rerank; each a dict
    ``{name, kept, removed, relevant_kept, relevant_lost_here, lost_ids}``.

    ``kept``: items after the stage (``rerank``: how many were re-ranked, i.e. the PQ
    survivors); ``removed``: items this stage dropped; ``relevant_kept`` /
    ``relevant_lost_here``: truly relevant items kept / dropped here (None without
    ground truth); ``lost_ids``: int64 gallery positions of the relevant items dropped
    here (empty without ground truth).
    """

    query: int
    direction: str
    mode: str
    gallery_size: int
    n_relevant: int | None
    stages: list[dict[str, Any]]


@dataclass
class AggregateFunnel(Record):
    """The funnel pooled over queries; arrays indexed like ``stages`` (gallery, hamming, pq).

    Shares are NaN (null in JSON) when no query has a relevant item.
    """

    direction: str
    n_queries: int
    n_gallery: int
    hamming_rate: float
    pq_rate: float
    stages: list[str]
    mean_kept: np.ndarray
    """float64 (3,): items per query after each stage."""
    total_relevant: int
    """Relevant (query, item) pairs over all queries."""
    relevant_kept: np.ndarray
    """int64 (3,): relevant pairs still in after each stage."""
    lost_share: np.ndarray
    """float64 (3,): share of all relevant pairs dropped *at* this stage (gallery: 0)."""
    recall_ceiling: np.ndarray
    """float64 (3,): ``relevant_kept / total_relevant``."""
    per_query_relevant: np.ndarray
    """int64 (n_queries,): relevant items of each query."""
    per_query_lost: np.ndarray
    """int64 (n_queries, 2): relevant items each query lost at the Hamming / PQ filter."""

    def rows(self) -> list[dict[str, Any]]:
        """One plain dict per stage, for tables."""
        return [{"stage": name, "mean_kept": float(self.mean_kept[i]),
                 "relevant_kept": int(self.relevant_kept[i]), "lost_share": float(self.lost_share[i]),
                 "recall_ceiling": float(self.recall_ceiling[i])} for i, name in enumerate(self.stages)]


@dataclass
class RecallCostCurve(Record):
    """One row per (hamming_rate, pq_rate); arrays are (n_rows,).

    ``R``/``q``: survivors of each filter (:func:`meet.search.topk.survivor_count`: a rate
    <= 1 is a fraction of the gallery resp. of R, > 1 a count); ``cost = q / n_gallery``,
    the share of dense rows the re-rank reads. ``operating_index`` is the row of the
    config's own rates (appended to the grid when absent from it); ``operating_point``
    that row as a dict.
    """

    direction: str
    n_queries: int
    n_gallery: int
    total_relevant: int
    hamming_rate: np.ndarray
    pq_rate: np.ndarray
    R: np.ndarray
    q: np.ndarray
    ceiling_after_hamming: np.ndarray
    ceiling_after_pq: np.ndarray
    cost: np.ndarray
    operating_index: int
    operating_point: dict[str, float]

    def rows(self) -> list[dict[str, float]]:
        """One plain dict per row, for tables."""
        return [self._row(i) for i in range(len(self.R))]

    def _row(self, i: int) -> dict[str, float]:
        return {"hamming_rate": float(self.hamming_rate[i]), "pq_rate": float(self.pq_rate[i]),
                "R": int(self.R[i]), "q": int(self.q[i]),
                "ceiling_after_hamming": float(self.ceiling_after_hamming[i]),
                "ceiling_after_pq": float(self.ceiling_after_pq[i]), "cost": float(self.cost[i])}


def query_funnel(trace: Any, relevant: Any = None) -> Funnel:
    """The funnel of one cascade/meet :class:`~meet.search.QueryTrace`.

    ``relevant``: (gallery_size,) bool ground truth of this query, or None.
    """
    ids = cascade_ids(trace)
    n = int(trace.gallery_size)
    rel = None if relevant is None else relevance(relevant, (n,))
    stages = []
    previous, previous_kept = np.ones(n, bool), n
    for name in FUNNEL_STAGES:
        kept_ids = np.arange(n) if name == "gallery" else ids[name]
        mask = membership(kept_ids, n)
        stage: dict[str, Any] = {"name": name, "kept": int(len(kept_ids)),
                                 "removed": int(previous_kept - len(kept_ids)),
                                 "relevant_kept": None, "relevant_lost_here": None,
                                 "lost_ids": np.zeros(0, np.int64)}
        if rel is not None:
            lost = np.flatnonzero(rel & previous & ~mask)
            stage.update(relevant_kept=int((rel & mask).sum()), relevant_lost_here=int(len(lost)),
                         lost_ids=lost.astype(np.int64))
        stages.append(stage)
        previous, previous_kept = mask, len(kept_ids)
    return Funnel(query=int(trace.query), direction=str(trace.direction), mode=str(trace.mode),
                  gallery_size=n, n_relevant=None if rel is None else int(rel.sum()), stages=stages)


def aggregate_funnel(gallery: Any, queries: Any, relevant: Any,
                     cascade: CascadeConfig | None = None) -> AggregateFunnel:
    """The funnel over every query: ``gallery`` a :class:`~meet.search.GalleryIndex`,
    ``queries`` an :class:`~meet.inference.Encoded` of the other side, ``relevant`` (nq, ng)
    bool; ``cascade`` the search settings (default: the index's). Runs
    :func:`meet.search.stage_survivors` on query blocks whose (block, ng) masks stay
    within the memory budget."""
    cascade = gallery.settings(cascade)
    direction = gallery.direction
    n_queries, take = query_arrays(queries)
    n_gallery = gallery.n_items
    rel = relevance(relevant, (n_queries, n_gallery))
    hamming_rate, pq_rate, _ = rates(cascade, direction)
    kept = np.zeros(3, np.float64)
    relevant_kept = np.zeros(3, np.int64)
    per_query_relevant = rel.sum(axis=1).astype(np.int64)
    per_query_lost = np.zeros((n_queries, 2), np.int64)
    step = rows_per_block(n_gallery, 4)
    for start in range(0, n_queries, step):
        stop = min(start + step, n_queries)
        masks = stage_survivors(gallery, take(start, stop), cascade)
        block = rel[start:stop]
        in_hamming = (block & masks.after_hamming).sum(axis=1)
        in_pq = (block & masks.after_pq).sum(axis=1)
        kept += [n_gallery * (stop - start), masks.after_hamming.sum(), masks.after_pq.sum()]
        relevant_kept += [block.sum(), in_hamming.sum(), in_pq.sum()]
        per_query_lost[start:stop, 0] = per_query_relevant[start:stop] - in_hamming
        per_query_lost[start:stop, 1] = in_hamming - in_pq
    total = int(per_query_relevant.sum())
    lost = np.concatenate([[0], relevant_kept[:-1] - relevant_kept[1:]])
    return AggregateFunnel(
        direction=direction, n_queries=n_queries, n_gallery=n_gallery, hamming_rate=float(hamming_rate),
        pq_rate=float(pq_rate), stages=list(FUNNEL_STAGES[:3]),
        mean_kept=kept / max(n_queries, 1), total_relevant=total, relevant_kept=relevant_kept,
        lost_share=np.array([share(x, total) for x in lost]),
        recall_ceiling=np.array([share(x, total) for x in relevant_kept]),
        per_query_relevant=per_query_relevant, per_query_lost=per_query_lost)


def recall_cost_curve(gallery: Any, queries: Any, relevant: Any, hamming_rates: Sequence[float],
                      pq_rates: Sequence[float], cascade: CascadeConfig | None = None) -> RecallCostCurve:
    """Recall ceilings after each filter over a grid of rates (every hamming_rate x pq_rate).

    Computed by the cascade's own filters, with the index's scoring and quantizer: per
    distinct R, one run of the Hamming filter keeping R and of the quantization filter
    ordering all R survivors (:func:`meet.search.filter_orders`); every q's survivors are a
    prefix of that order, and cumulative sums of the relevance along it give the kept
    counts. So each row equals :func:`meet.search.stage_survivors` at those rates (tested
    for every Hamming scoring and quantization space).
    """
    cascade = gallery.settings(cascade)
    direction = gallery.direction
    own = tuple(float(r) for r in rates(cascade, direction)[:2])
    grid = [(float(h), float(p)) for h in hamming_rates for p in pq_rates]
    if not grid:
        raise ConfigError("recall_cost_curve needs at least one hamming rate and one pq rate")
    if own not in grid:
        grid.append(own)
    n_queries, take = query_arrays(queries)
    n_gallery = gallery.n_items
    rel = relevance(relevant, (n_queries, n_gallery))
    rounding = cascade.survivor_rounding
    big_r = np.array([survivor_count(h, n_gallery, f"hamming_rate_{direction}", rounding) for h, _ in grid])
    small_q = np.array([survivor_count(p, r, f"pq_rate_{direction}", rounding) for (_, p), r in zip(grid, big_r)])
    kept_h = np.zeros(len(grid), np.int64)
    kept_p = np.zeros(len(grid), np.int64)
    for n_h in np.unique(big_r[big_r > 0]):
        rows = np.flatnonzero(big_r == n_h)
        for start, positions, order in filter_orders(gallery, take(0, n_queries), cascade, int(n_h)):
            r = rel[start:start + positions.shape[0]]
            in_h = np.take_along_axis(r, positions, axis=1).sum()
            in_p = np.cumsum(np.take_along_axis(r, np.take_along_axis(positions, order, axis=1), axis=1), axis=1)
            for i in rows:
                kept_h[i] += in_h
                kept_p[i] += in_p[:, small_q[i] - 1].sum() if small_q[i] else 0
    total = int(rel.sum())
    curve = RecallCostCurve(
        direction=direction, n_queries=n_queries, n_gallery=n_gallery, total_relevant=total,
        hamming_rate=np.array([h for h, _ in grid]), pq_rate=np.array([p for _, p in grid]),
        R=big_r.astype(np.int64), q=small_q.astype(np.int64),
        ceiling_after_hamming=np.array([share(x, total) for x in kept_h]),
        ceiling_after_pq=np.array([share(x, total) for x in kept_p]),
        cost=small_q / max(n_gallery, 1), operating_index=grid.index(own), operating_point={})
    curve.operating_point = curve._row(curve.operating_index)
    return curve


def removed_by_stage(trace: Any, relevant: Any, stage: str, limit: int = 12, *,
                     dense_query: Any, gallery: Any) -> np.ndarray:
    """Gallery positions (int64, at most ``limit``) that ``stage`` (``hamming`` or ``pq``)
    removed for this query: truly relevant ones first, then by dense score (highest first:
    the items a dense search would have liked most), ties by position.

    ``relevant``: (gallery_size,) bool or None (then dense order only); ``dense_query``:
    the query's dense embedding (dim,); ``gallery``: the searched
    :class:`~meet.search.GalleryIndex` (or its dense rows (n, dim)). Only the removed
    rows are scored, in blocks.
    """
    if stage not in ("hamming", "pq"):
        raise ConfigError(f"unknown filter stage {stage!r}", fix="use 'hamming' or 'pq'")
    if limit < 0:
        raise ConfigError(f"limit={limit} must be 0 or more")
    ids = cascade_ids(trace)
    n = int(trace.gallery_size)
    rows = getattr(gallery, "dense", gallery)
    query = as_array(dense_query, "dense_query", 1, np.float32)
    if np.shape(rows) != (n, query.shape[0]):
        raise DataError(f"gallery dense rows {np.shape(rows)} do not match the trace's gallery of {n} "
                        f"items and the {query.shape[0]}-d query",
                        fix="pass the index the query searched and the query's own dense embedding")
    rel = np.zeros(n, bool) if relevant is None else relevance(relevant, (n,))
    before = np.ones(n, bool) if stage == "hamming" else membership(ids["hamming"], n)
    removed = np.flatnonzero(before & ~membership(ids[stage], n))
    scores = np.empty(len(removed), np.float32)
    step = rows_per_block(query.shape[0])
    for start in range(0, len(removed), step):
        part = removed[start:start + step]
        scores[start:start + len(part)] = np.asarray(rows[part], np.float32) @ query
    order = np.lexsort((removed, -scores, ~rel[removed]))
    return removed[order[:limit]].astype(np.int64)
