"""What the app loads once at start-up: the model, the gallery data set, its index pair and
its ground truth. Every request reads this state; nothing here changes after start-up
except the lazily computed analysis caches.

The gallery index pair is cached on disk by :func:`meet.search.cache.cached_pair`, keyed by
the checkpoint's fingerprint, the data's identity (paths, sizes, modification times) and
the checkpoint's Stage II build settings (quantization space and its fitting, reciprocal
k). A cached index that fails its checksums or belongs to another checkpoint is rebuilt,
never used.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

import meet
from meet.config import CascadeConfig
from meet.data.dataset import ImageTextDataset
from meet.errors import DataError
from meet.inference import MEETModel
from meet.search import GalleryIndex
from meet.search.cache import cached_pair

from app.settings import AppSettings

Report = Callable[[str], None]
"""Start-up progress: one line per step."""

SHAPES_SIZES = {"n_train": 20000, "n_val": 1000, "n_test": 1000}
"""The Shapes split sizes whose test split is the default gallery (the benchmark's)."""


@dataclass
class Gallery:
    """The searchable items and what is known about them."""

    dataset: ImageTextDataset
    images: GalleryIndex
    texts: GalleryIndex
    """Both keep their hash features (``.hash``), which the quantization-error view reads."""
    relevance: np.ndarray | None
    """bool (n_captions, n_images): truly relevant pairs (Shapes facts), else None."""
    image_paths: list[str]

    @property
    def has_ground_truth(self) -> bool:
        return self.relevance is not None

    @property
    def is_shapes(self) -> bool:
        return self.dataset.scenes is not None


@dataclass
class AppState:
    settings: AppSettings
    model: MEETModel
    gallery: Gallery
    cascade: CascadeConfig
    """The checkpoint's Stage II defaults (the sliders start here)."""
    device_label: str
    startup_seconds: dict[str, float]
    caches: dict[str, Any] = field(default_factory=dict)
    """Analysis results computed on first use (codebook usage, UMAP, ...)."""
    _locks: dict[str, threading.Lock] = field(default_factory=dict, repr=False)
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per server and key: concurrent first requests (several
        browsers opening the page) wait for one computation instead of each running it,
        and a slow key (the UMAP) never blocks the others."""
        if key in self.caches:
            return self.caches[key]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self.caches:
                self.caches[key] = compute()
            return self.caches[key]


def load_state(settings: AppSettings, report: Report = print) -> AppState:
    """Load everything the app needs; a :class:`~meet.errors.MEETError` says what is unusable."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    report(f"loading checkpoint {settings.checkpoint}")
    model = meet.load(settings.checkpoint, device=None if settings.device == "auto" else settings.device)
    seconds["checkpoint"] = time.perf_counter() - start
    step = time.perf_counter()
    dataset = _load_dataset(settings, model, report)
    seconds["gallery data"] = time.perf_counter() - step
    step = time.perf_counter()
    gallery = _load_gallery(settings, model, dataset, report)
    seconds["gallery index"] = time.perf_counter() - step
    _warm_up(model, gallery)
    seconds["total"] = time.perf_counter() - start
    device = model.device
    label = (f"GPU ({device}, {_cuda_name(device)})" if device.type == "cuda" else "CPU")
    report(f"ready in {seconds['total']:.1f} s on the {label}: {dataset.n_images} images, "
           f"{dataset.n_captions} captions")
    return AppState(settings, model, gallery, model.cfg.cascade, label, seconds)


def _warm_up(model: MEETModel, gallery: Gallery) -> None:
    """Run each encoder and the search path once, so the first user's query does not pay
    for lazy initialisation (allocator, faiss index, kernels)."""
    from PIL import Image

    texts = model.encode_texts(["warm up"])
    images = model.encode_images([Image.new("RGB", (model.cfg.model.image_size,) * 2, "white")])
    if gallery.images.n_items:
        gallery.images.search(texts, k=1)
    if gallery.texts.n_items:
        gallery.texts.search(images, k=1)


def _cuda_name(device: Any) -> str:
    import torch
    return torch.cuda.get_device_name(device)


def _load_dataset(settings: AppSettings, model: MEETModel, report: Report) -> ImageTextDataset:
    from meet.data.loading import detect_format, load_split
    if model.kind == "precomp":
        raise DataError("this checkpoint reads precomputed region features, which the app cannot "
                        "compute from an image", fix="open the app with a checkpoint that encodes images "
                        "(image_encoder cnn or hf)")
    if not settings.data:
        from meet.data.shapes import ensure_shapes
        folder = Path(settings.cache_dir) / f"shapes-test-seed{settings.shapes_seed}-{model.cfg.model.image_size}px"
        report(f"default gallery: the Shapes test split in {folder}")
        ensure_shapes(folder, **SHAPES_SIZES, seed=settings.shapes_seed,
                      image_size=model.cfg.model.image_size, splits=("test",), progress=True)
        return load_split(folder, "test", model.cfg.model)
    root = Path(settings.data)
    if detect_format(root) == "folder":
        from meet.data.karpathy import load_image_folder
        return load_image_folder(root, model.cfg.model.image_size,
                                 captions_file=settings.captions or None)
    return load_split(root, settings.split, model.cfg.model)


def _load_gallery(settings: AppSettings, model: MEETModel, dataset: ImageTextDataset,
                  report: Report) -> Gallery:
    images, texts = cached_pair(model, dataset, settings.cache_dir, keep_hash=True, report=report)
    relevance = None
    if dataset.scenes is not None and dataset.caption_facts is not None:
        from meet.data.shapes import relevance_matrix
        relevance = relevance_matrix(dataset.caption_facts, dataset.scenes)
    return Gallery(dataset, images, texts, relevance, [str(p) for p in getattr(dataset, "paths", [])])
