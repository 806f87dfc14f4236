"""Shared plumbing of :mod:`meet.analysis`: JSON conversion, input checks, row blocks.

Every statistic works on query blocks whose temporaries stay within
:data:`meet.search.topk.WORK_BUDGET` elements, so memory is bounded whatever the gallery
size; the block size changes how work is split, never a result.
"""

from __future__ import annotations

import math
from dataclasses import fields
from types import SimpleNamespace
from typing import Any

import numpy as np

from meet.errors import DataError
from meet.search.topk import WORK_BUDGET


class Record:
    """Mixin for the result dataclasses: ``to_dict()`` gives plain JSON types."""

    def to_dict(self) -> dict[str, Any]:
        return plain(self)


def plain(obj: Any) -> Any:
    """Dataclasses, numpy arrays and scalars -> dicts, lists, Python numbers and strings.

    Non-finite floats (NaN where a statistic is undefined, e.g. the mean distance of
    positives when there are none) become ``None``, so ``json.dumps`` writes strict JSON.
    """
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, np.generic):
        return plain(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (list, tuple)):
        return [plain(item) for item in obj]
    if isinstance(obj, dict):
        return {str(key): plain(value) for key, value in obj.items()}
    return obj


def rows_per_block(n_cols: int, arrays: int = 1) -> int:
    """Rows of an (rows, n_cols) computation that keep ``arrays`` temporaries of that
    shape within :data:`~meet.search.topk.WORK_BUDGET` elements (at least one row)."""
    return max(1, WORK_BUDGET // max(1, n_cols * arrays))


def as_array(values: Any, name: str, ndim: int, dtype: Any = None) -> np.ndarray:
    """``values`` (numpy, torch CPU tensor or nested lists) as a numpy array of ``ndim``."""
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu().numpy()
    arr = np.asarray(values) if dtype is None else np.asarray(values, dtype=dtype)
    if arr.ndim != ndim:
        raise DataError(f"{name} must be a {ndim}-D array, got shape {arr.shape}",
                        fix=f"pass {name} with shape ({', '.join(['n'] * ndim)})" if ndim > 1 else
                        f"pass one row of {name} per gallery item")
    return arr


def relevance(values: Any, shape: tuple[int, ...], name: str = "relevant") -> np.ndarray:
    """Ground-truth relevance as a bool array of exactly ``shape``."""
    arr = as_array(values, name, len(shape))
    if arr.shape != shape:
        raise DataError(f"{name} has shape {arr.shape}, expected {shape}",
                        fix="t2i: relevance (n_captions, n_images) as is; i2t: its transpose "
                            "(n_images, n_captions); one query's row for a single trace")
    return arr.astype(bool, copy=False)


def query_arrays(queries: Any) -> tuple[int, Any]:
    """(n_queries, take) for an Encoded-like object; ``take(start, stop)`` returns the rows
    as an object with ``dense``, ``hash`` and ``codes`` (what :mod:`meet.search` reads)."""
    try:
        dense, hashed, codes = queries.dense, queries.hash, queries.codes
    except AttributeError as exc:
        raise DataError("queries must have dense, hash and codes arrays (an Encoded)",
                        fix="encode them with model.encode_texts / encode_images") from exc
    n = int(np.shape(dense)[0])

    def take(start: int, stop: int) -> SimpleNamespace:
        return SimpleNamespace(dense=dense[start:stop], hash=hashed[start:stop], codes=codes[start:stop])
    return n, take


def share(part: float, whole: float) -> float:
    """``part / whole``, NaN when ``whole`` is 0 (undefined, written as null in JSON)."""
    return float(part) / float(whole) if whole else math.nan


CASCADE_STAGES = ("hamming", "pq", "rerank")


def cascade_ids(trace: Any) -> dict[str, np.ndarray]:
    """Gallery positions each stage of a cascade/meet trace kept: {stage: (n_kept,) int64}."""
    names = [stage.name for stage in getattr(trace, "stages", [])]
    if any(name not in names for name in CASCADE_STAGES) or getattr(trace, "candidates", None) is None:
        raise DataError(f"this trace (mode {getattr(trace, 'mode', '?')!r}, stages {names}) has no "
                        "Hamming -> PQ -> re-rank path",
                        fix="search with mode='cascade' or 'meet' and trace=True")
    return {name: np.asarray(trace.stage(name).ids, np.int64) for name in CASCADE_STAGES}


def membership(ids: np.ndarray, n_items: int) -> np.ndarray:
    """bool (n_items,) mask of the positions in ``ids``."""
    mask = np.zeros(n_items, bool)
    mask[ids] = True
    return mask
