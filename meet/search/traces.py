"""Per-query records of a search, for the app's figures and the notebooks.

A :class:`QueryTrace` says, for one query, what each stage kept (gallery positions in
the stage's order, their stage scores, their rank there and in the stage before) and, for
the re-ranked candidates, every term of the final score. Arrays are numpy; ``to_dict``
gives plain lists for JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np


@dataclass
class StageTrace:
    """What one stage kept, best first.

    Stage names and their scores (always "higher is better"):
    ``hamming``: ``n_bits - 2 * distance`` (the +-1 code inner product), or ``<h, b>`` with
    ``CascadeConfig.hamming_scores="asymmetric"``;
    ``pq``: the ADC inner product; ``rerank``: the final score (see
    :mod:`meet.search.rerank`); ``dense`` / ``hash`` / ``pq`` alone (exhaustive modes):
    that mode's score over the whole gallery, top k only.
    """

    name: str
    ids: np.ndarray
    """int64 (n_kept,) gallery positions in this stage's order."""
    scores: np.ndarray
    """float32 (n_kept,) this stage's score of each kept item."""
    ranks: np.ndarray
    """int64 (n_kept,) 0-based rank in this stage (0..n_kept-1)."""
    previous_ranks: np.ndarray | None = None
    """int64 (n_kept,) each item's rank in the previous stage (None for the first)."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass
class QueryTrace:
    """One query's path through the cascade.

    The candidate arrays (``candidates`` .. ``final_scores``) are aligned with each
    other, in the quantization filter's order; None in the exhaustive modes, and
    ``attention``/``consistency`` None when consistency was not computed.
    """

    query: int
    """Row of the query in the searched batch."""
    direction: str
    mode: str
    gallery_size: int
    stages: list[StageTrace]
    candidates: np.ndarray | None = None
    """int64 (n_candidates,) gallery positions that reached the re-rank."""
    dense_scores: np.ndarray | None = None
    """float32 dense cosine ``s_j``."""
    attention: np.ndarray | None = None
    """float32 external-attention weight ``a_j`` (sums to 1 over the candidates)."""
    consistency: np.ndarray | None = None
    """float32 ``c_j = cos(x_j, m)``."""
    complementarity_ranks: np.ndarray | None = None
    """int32 ``rank_j`` (where the query falls in j's own ranking); -1: not consulted."""
    complementarity: np.ndarray | None = None
    """float32 ``comp_j = 1 / (1 + rank_j)``, 0 when not consulted."""
    final_scores: np.ndarray | None = None
    """float32 final score of each candidate."""
    final_order: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """int64 gallery positions best first (the last stage's ``ids``)."""
    notes: list[str] = field(default_factory=list)
    """Plain-language remarks (e.g. complementarity off and why)."""

    def stage(self, name: str) -> StageTrace:
        """The stage called ``name`` (KeyError if it did not run)."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r} in this trace (stages: {[s.name for s in self.stages]})")

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


def _plain(obj: Any) -> Any:
    """Dataclasses, numpy arrays and scalars -> dicts, lists and Python numbers."""
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (list, tuple)):
        return [_plain(item) for item in obj]
    if isinstance(obj, dict):
        return {key: _plain(value) for key, value in obj.items()}
    return obj
