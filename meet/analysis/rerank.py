"""Stage II reweighting: how the re-rank reorders the candidates that survived both filters.

:func:`reweighting_view` lines up every term of the final score per candidate (dense,
consistency, complementarity) with its rank before (dense order) and after (final
order); :func:`true_match_ranks` follows the best-placed truly relevant item through
the Hamming order, the PQ order, the dense order and the final order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from meet.analysis._base import Record, cascade_ids, relevance


@dataclass
class ReweightView(Record):
    """The re-ranked candidates of one query, every array (n_candidates,) in the trace's
    candidate order (the quantization filter's order).

    ``consistency``/``attention`` are None when the search did not compute them
    (``cascade`` mode); ``complementarity_ranks`` is -1 where it was not consulted.
    Ranks are 0-based: ``rank_before`` by dense score (ties by gallery position, as the
    cascade), ``rank_after`` the place in the final order.
    """

    query: int
    direction: str
    mode: str
    ids: np.ndarray
    dense: np.ndarray
    consistency: np.ndarray | None
    attention: np.ndarray | None
    complementarity_ranks: np.ndarray | None
    complementarity: np.ndarray | None
    final: np.ndarray
    rank_before: np.ndarray
    rank_after: np.ndarray


def reweighting_view(trace: Any) -> ReweightView:
    """Every re-rank term of a cascade/meet :class:`~meet.search.QueryTrace`, aligned.

    Raises :class:`~meet.errors.DataError` for traces without a re-rank (exhaustive modes).
    """
    cascade_ids(trace)  # checks the trace has the cascade's stages
    ids = np.asarray(trace.candidates, np.int64)
    dense = np.asarray(trace.dense_scores, np.float32)
    rank_before = np.empty(len(ids), np.int64)
    rank_before[np.lexsort((ids, -dense))] = np.arange(len(ids))
    final_order = np.asarray(trace.final_order, np.int64)
    sorter = np.argsort(final_order, kind="stable")
    rank_after = sorter[np.searchsorted(final_order, ids, sorter=sorter)].astype(np.int64)
    copy = lambda arr: None if arr is None else np.asarray(arr).copy()
    return ReweightView(query=int(trace.query), direction=str(trace.direction), mode=str(trace.mode),
                        ids=ids.copy(), dense=dense.copy(), consistency=copy(trace.consistency),
                        attention=copy(trace.attention),
                        complementarity_ranks=copy(trace.complementarity_ranks),
                        complementarity=copy(trace.complementarity),
                        final=np.asarray(trace.final_scores, np.float32).copy(),
                        rank_before=rank_before, rank_after=rank_after)


def true_match_ranks(trace: Any, relevant: Any) -> dict[str, Any]:
    """0-based rank of the best-placed truly relevant item at each step (None if no
    relevant item is there): ``hamming`` (the Hamming filter's order), ``pq`` (the
    quantization filter's order), ``before`` (the candidates in dense order), ``after``
    (the final order); plus ``n_relevant`` (in the gallery) and ``n_relevant_candidates``
    (among the re-ranked). ``relevant``: (gallery_size,) bool."""
    ids = cascade_ids(trace)
    rel = relevance(relevant, (int(trace.gallery_size),))
    view = reweighting_view(trace)
    dense_order = view.ids[np.argsort(view.rank_before)]
    first = lambda order: next((int(i) for i in np.flatnonzero(rel[order])[:1]), None)
    return {"hamming": first(ids["hamming"]), "pq": first(ids["pq"]), "before": first(dense_order),
            "after": first(np.asarray(trace.final_order, np.int64)), "n_relevant": int(rel.sum()),
            "n_relevant_candidates": int(rel[view.ids].sum())}


@dataclass
class RerankSignal(Record):
    """How well each re-rank term separates truly relevant from other candidates, pooled
    over many queries of one direction (the evidence behind the Stage II weights).

    ``auc``: term -> mean over queries (with relevant and other candidates both) of the
    probability that a relevant candidate scores above another one (ties count half):
    ``dense`` (s), ``consistency`` (c), ``final`` (the fused score), over every re-ranked
    candidate; ``dense_top_z`` and ``complementarity`` over the top-z candidates only (the
    ones complementarity consults), so those two compare on the same items. 0.5: the term
    says nothing; the re-rank can only help if a term separates what ``dense`` does not.
    ``rank_relevant`` / ``rank_other``: mean complementarity rank (where the query falls in
    the candidate's own stored top-k ranking; k means "beyond it"); ``beyond_k_relevant`` /
    ``beyond_k_other``: share of those consulted pairs at rank k, which all get the same
    complementarity. ``relevant_per_item``: median number of truly relevant items of the
    query side per gallery item (e.g. true captions per image for t2i), against
    ``reciprocal_k``: where it is larger, a relevant query competes with more than k other
    relevant ones for a place in the candidate's list.
    """

    direction: str
    n_queries: int
    candidates: float
    relevant_candidates: float
    auc: dict[str, float]
    queries_used: dict[str, int]
    rank_relevant: float
    rank_other: float
    beyond_k_relevant: float
    beyond_k_other: float
    relevant_per_item: float
    reciprocal_k: int


def rerank_signal(gallery: Any, queries: Any, relevant: Any, cascade: Any = None,
                  batch_size: int = 256) -> RerankSignal:
    """Search every query in ``meet`` mode with traces and score each re-rank term against
    ground truth ``relevant`` (n_queries, n_gallery) bool (see :class:`RerankSignal`)."""
    from meet.analysis._base import query_arrays

    cascade = gallery.settings(cascade)
    n_queries, take = query_arrays(queries)
    rel = relevance(relevant, (n_queries, gallery.n_items))
    terms = {name: [] for name in ("dense", "consistency", "final", "dense_top_z", "complementarity")}
    ranks_rel, ranks_other, n_candidates, n_relevant = [], [], [], []
    for start in range(0, n_queries, batch_size):
        block = take(start, min(start + batch_size, n_queries))
        result = gallery.search(block, k=1, mode="meet", cascade=cascade, trace=True, batch_size=batch_size)
        for offset, trace in enumerate(result.traces):
            view = reweighting_view(trace)
            labels = rel[start + offset, view.ids]
            n_candidates.append(len(view.ids))
            n_relevant.append(int(labels.sum()))
            terms["dense"].append((view.dense, labels))
            terms["final"].append((view.final, labels))
            if view.consistency is not None:
                terms["consistency"].append((view.consistency, labels))
            consulted = (view.complementarity_ranks >= 0) if view.complementarity_ranks is not None else None
            if consulted is not None and consulted.any():
                terms["dense_top_z"].append((view.dense[consulted], labels[consulted]))
                terms["complementarity"].append((view.complementarity[consulted], labels[consulted]))
                ranks = view.complementarity_ranks[consulted]
                ranks_rel.append(ranks[labels[consulted]])
                ranks_other.append(ranks[~labels[consulted]])
    auc, used = {}, {}
    for name, pairs in terms.items():
        values = [_auc(scores, labels) for scores, labels in pairs]
        values = [v for v in values if v is not None]
        auc[name], used[name] = (float(np.mean(values)) if values else float("nan")), len(values)
    k = int(cascade.reciprocal_k if gallery.reciprocal is None else gallery.reciprocal.shape[1])
    flat_rel = np.concatenate(ranks_rel) if ranks_rel else np.zeros(0)
    flat_other = np.concatenate(ranks_other) if ranks_other else np.zeros(0)
    mean = lambda a: float(a.mean()) if a.size else float("nan")
    per_item = rel.sum(axis=0)
    return RerankSignal(direction=gallery.direction, n_queries=n_queries,
                        candidates=float(np.mean(n_candidates)) if n_candidates else 0.0,
                        relevant_candidates=float(np.mean(n_relevant)) if n_relevant else 0.0,
                        auc=auc, queries_used=used, rank_relevant=mean(flat_rel), rank_other=mean(flat_other),
                        beyond_k_relevant=mean(flat_rel >= k), beyond_k_other=mean(flat_other >= k),
                        relevant_per_item=float(np.median(per_item)) if per_item.size else float("nan"),
                        reciprocal_k=k)


def _auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """P(relevant > other) + 0.5 P(tie) over all (relevant, other) pairs of one query; None
    when either class is empty. Pairwise, vectorised (a query has hundreds of candidates)."""
    positive, negative = scores[labels], scores[~labels]
    if not positive.size or not negative.size:
        return None
    above = (positive[:, None] > negative[None, :]).mean()
    ties = (positive[:, None] == negative[None, :]).mean()
    return float(above + 0.5 * ties)
