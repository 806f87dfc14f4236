"""A gallery index pair built once per (checkpoint, items, build settings), then reused
from disk: what the app opens at start-up, and what any long-lived process can use.

The cache key covers everything that changes the index: the checkpoint's fingerprint
(weights and codebooks), the items (ids, captions, and each image file's size and
modification time) and :func:`meet.search.index.build_settings` (quantization space,
fitting sample and seed, beam width, reciprocal k). A cached pair that fails its
checksums or belongs to another checkpoint is rebuilt, never used; a cache that cannot be
written (read-only disk) only costs the next start a rebuild.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from meet.config import CascadeConfig
from meet.errors import MEETError
from meet.search.index import (GalleryIndex, build_pair, build_settings, load_pair, model_fingerprint,
                               progress_reporter, save_pair)

if TYPE_CHECKING:
    from meet.data.dataset import ImageTextDataset
    from meet.inference import MEETModel

Report = Callable[[str], None]
"""Progress of the cache: one line per step."""

CACHE_FORMAT = 2
"""Bumped when the cached layout changes, so older caches are rebuilt, not misread."""


def dataset_identity(dataset: "ImageTextDataset") -> str:
    """A digest of what a gallery holds: ids, captions and each image file's size and
    modification time (so an edited folder gets a new index)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([dataset.name, dataset.split, list(dataset.image_ids), list(dataset.captions),
                              [str(c) for c in dataset.caption_ids]]).encode())
    for path in getattr(dataset, "paths", []):
        stat = Path(path).stat()
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def cache_key(model: "MEETModel", dataset: "ImageTextDataset", cascade: CascadeConfig | None = None,
              keep_hash: bool = True) -> str:
    """The folder name of this (checkpoint, items, build settings) pair in a cache."""
    parts = {"format": CACHE_FORMAT, "fingerprint": model_fingerprint(model), "items": dataset_identity(dataset),
             "build": build_settings(model, cascade), "keep_hash": keep_hash}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def cached_pair(model: "MEETModel", dataset: "ImageTextDataset", cache_dir: str | Path, *,
                cascade: CascadeConfig | None = None, keep_hash: bool = True, mmap: bool = False,
                report: Report = print, progress: Any = None) -> tuple[GalleryIndex, GalleryIndex]:
    """``(image_index, text_index)`` of ``dataset`` with ``model``, from
    ``cache_dir/indexes/<key>`` when a valid copy is there, else built (progress bars or
    ``progress(done, total, message)``) and cached. ``mmap``: memory-map the cached arrays
    instead of reading them into memory."""
    folder = Path(cache_dir) / "indexes" / cache_key(model, dataset, cascade, keep_hash)
    fingerprint = model_fingerprint(model)
    if folder.is_dir():
        try:
            pair = load_pair(folder, fingerprint=fingerprint, mmap=mmap)
            report(f"loaded the cached gallery index from {folder}")
            return pair
        except (MEETError, OSError, ValueError) as exc:
            report(f"cached index at {folder} is unusable ({exc}); rebuilding it")
    report(f"building the gallery index ({dataset.n_images} images, {dataset.n_captions} captions)")
    tick, close = progress_reporter(progress, dataset.n_images + dataset.n_captions)
    try:
        images, texts = model.encode_dataset(dataset, progress=lambda d, t: tick(d, t, "encoding"))
        pair = build_pair(model, images, texts, dataset.image_ids, [str(c) for c in dataset.caption_ids],
                          cascade=cascade, keep_hash=keep_hash, progress=tick,
                          meta={"dataset": f"{dataset.name}/{dataset.split}"})
    finally:
        close()
    try:
        save_pair(folder, *pair)
        report(f"cached the gallery index in {folder}")
    except (OSError, MEETError) as exc:
        report(f"could not cache the gallery index in {folder} ({exc}); continuing without a cache")
        return pair
    if mmap:  # serve the saved copy, so the built arrays leave memory as they would on a warm start
        pair = load_pair(folder, fingerprint=fingerprint, mmap=True, verify=False)
    return pair
