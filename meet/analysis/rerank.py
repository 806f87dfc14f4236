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
