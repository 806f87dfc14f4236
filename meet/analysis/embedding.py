"""A 2-D map of image and caption embeddings (UMAP), for the app's and notebooks' scatter.

The k-nearest-neighbour graph is computed here exactly (cosine, blocked, ties by row)
and handed to umap-learn as ``precomputed_knn``, so UMAP only builds the fuzzy graph and
optimises the layout: no approximate neighbour search, and with ``random_state`` the
layout is the same on every run.

umap-learn JIT-compiles its numba kernels on first use in each process (about 15-30 s on
a 2-core CPU). :func:`umap_layout` turns on numba's on-disk cache for umap's own kernels
(``Dispatcher.enable_caching``, the same cache umap uses for a few kernels already), so
only the first process on a machine pays that; later ones load the compiled code in well
under a second. Where no cache location is writable numba refuses, and we carry on
uncached.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from meet.analysis._base import Record, as_array, rows_per_block
from meet.errors import ConfigError, DataError
from meet.search.topk import stable_top

_MIN_POINTS = 4
_numba_cache_tried = False


@dataclass
class UmapLayout(Record):
    """Points of both sides in one layout; row i of each array is one point."""

    xy: np.ndarray
    """float32 (n_points, 2) coordinates."""
    side: np.ndarray
    """str (n_points,): ``image`` or ``text``."""
    index: np.ndarray
    """int64 (n_points,): the point's row in its side's input."""


def umap_layout(image_dense: Any, text_dense: Any, n_neighbors: int = 15, min_dist: float = 0.1,
                seed: int = 0, max_points: int | None = None, n_epochs: int | None = None) -> UmapLayout:
    """UMAP (cosine) of ``image_dense`` (ni, d) and ``text_dense`` (nt, d) together.

    ``max_points``: keep a uniform random subset of that many points (seeded by
    ``seed``, kept in input order, images before texts), else all ni + nt. Needs at
    least 4 points; ``n_neighbors`` is capped at the number of points. ``n_epochs``:
    layout optimisation epochs (None: umap's default, 500 up to 10,000 points, else 200);
    the optimisation is most of the time (e.g. 1,000 images + 5,000 captions: ~15 s of 500
    epochs on one core; ``random_state`` makes umap single-threaded).
    """
    images = as_array(image_dense, "image_dense", 2, np.float32)
    texts = as_array(text_dense, "text_dense", 2, np.float32)
    if images.shape[1] != texts.shape[1]:
        raise DataError(f"image embeddings are {images.shape[1]}-d, text embeddings {texts.shape[1]}-d",
                        fix="pass dense embeddings of one checkpoint")
    if n_neighbors < 2 or not 0 <= min_dist:
        raise ConfigError(f"n_neighbors={n_neighbors} must be >= 2 and min_dist={min_dist} >= 0")
    side = np.array(["image"] * len(images) + ["text"] * len(texts))
    index = np.concatenate([np.arange(len(images)), np.arange(len(texts))]).astype(np.int64)
    points = np.concatenate([images, texts])
    if max_points is not None and max_points < len(points):
        keep = np.sort(np.random.default_rng(seed).choice(len(points), int(max_points), replace=False))
        points, side, index = points[keep], side[keep], index[keep]
    if len(points) < _MIN_POINTS:
        raise DataError(f"UMAP needs at least {_MIN_POINTS} points, got {len(points)}",
                        fix="pass more items or a larger max_points")
    norms = np.linalg.norm(points, axis=1, keepdims=True)
    if not np.all(np.isfinite(points)) or np.any(norms == 0):
        raise DataError("embeddings contain zero or non-finite rows; the cosine is undefined there")
    unit = points / norms
    k = min(int(n_neighbors), len(points))
    knn_ids, knn_dist = _cosine_knn(unit, k)

    import umap  # lazy: heavy (numba)

    _enable_umap_cache()
    reducer = umap.UMAP(n_neighbors=k, min_dist=float(min_dist), metric="cosine", n_components=2,
                        random_state=int(seed), precomputed_knn=(knn_ids, knn_dist, None),
                        n_epochs=None if n_epochs is None else int(n_epochs))
    with warnings.catch_warnings():
        # "n_jobs overridden by random_state" and "no NNDescent index, transform unavailable":
        # both expected here (a seeded layout, neighbours computed exactly above).
        warnings.simplefilter("ignore", UserWarning)
        xy = reducer.fit_transform(unit)
    return UmapLayout(xy=np.asarray(xy, np.float32), side=side, index=index)


def _cosine_knn(unit: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows by cosine (each row its own first neighbour): ids (n, k)
    int64 and distances ``1 - cos`` (n, k) float32, ties by row index."""
    data = torch.from_numpy(unit)
    ids = np.empty((len(unit), k), np.int64)
    dist = np.empty((len(unit), k), np.float32)
    step = rows_per_block(len(unit), 2)
    for start in range(0, len(unit), step):
        sims = data[start:start + step] @ data.T
        rows = torch.arange(start, min(start + step, len(unit)))
        sims[torch.arange(len(rows)), rows] = float("inf")  # itself first, whatever rounding says
        top = stable_top(sims, k)
        ids[start:start + len(rows)] = top.numpy()
        dist[start:start + len(rows)] = np.clip(1.0 - sims.gather(1, top).numpy(), 0.0, 2.0)
    return ids, dist


def _enable_umap_cache() -> None:
    """Ask numba to cache umap's compiled kernels on disk (once per process)."""
    global _numba_cache_tried
    if _numba_cache_tried:
        return
    _numba_cache_tried = True
    try:
        from numba.core.registry import CPUDispatcher
        import umap.layouts
        import umap.spectral
        import umap.umap_
        import umap.utils
    except ImportError:
        return
    for module in (umap.umap_, umap.layouts, umap.spectral, umap.utils):
        for obj in vars(module).values():
            if isinstance(obj, CPUDispatcher):
                try:
                    obj.enable_caching()
                except Exception:  # no writable cache location: stay uncached
                    return
