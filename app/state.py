"""What the app loads once at start-up: the model, the gallery data set, its index pair and
its ground truth. Every request reads this state; nothing here changes after start-up
except the lazily computed analysis caches.

The gallery index is cached on disk, keyed by the checkpoint's fingerprint and the data's
identity (paths, sizes, modification times). A cached index that fails its checksums or
belongs to another checkpoint is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

import meet
from meet.config import CascadeConfig
from meet.data.dataset import ImageTextDataset
from meet.errors import DataError, MEETError
from meet.index import GalleryIndex, checkpoint_fingerprint, pair_from_encoded
from meet.inference import MEETModel

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
    image_hash: np.ndarray
    """float32 (n_images, n_bits) hash features before the sign (quantization error)."""
    text_hash: np.ndarray
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

    from meet.retrieval import search
    texts = model.encode_texts(["warm up"])
    images = model.encode_images([Image.new("RGB", (model.cfg.model.image_size,) * 2, "white")])
    if gallery.images.n_items:
        search(texts, gallery.images, model.cfg.cascade, "t2i", k=1)
    if gallery.texts.n_items:
        search(images, gallery.texts, model.cfg.cascade, "i2t", k=1)


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


def data_identity(dataset: ImageTextDataset) -> str:
    """A digest of what the gallery holds: ids, captions and each image file's size and
    modification time (so an edited folder gets a new index)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([dataset.name, dataset.split, dataset.image_ids, dataset.captions,
                              [str(c) for c in dataset.caption_ids]]).encode())
    for path in getattr(dataset, "paths", []):
        stat = Path(path).stat()
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def _load_gallery(settings: AppSettings, model: MEETModel, dataset: ImageTextDataset,
                  report: Report) -> Gallery:
    fingerprint = checkpoint_fingerprint(model.folder)
    key = hashlib.sha256(f"{fingerprint}:{data_identity(dataset)}".encode()).hexdigest()[:24]
    folder = Path(settings.cache_dir) / "indexes" / key
    loaded = _read_cached(folder, fingerprint, report)
    if loaded is None:
        report(f"building the gallery index ({dataset.n_images} images, {dataset.n_captions} captions)")
        loaded = _build_and_cache(model, dataset, folder, report)
    images, texts, image_hash, text_hash = loaded
    relevance = None
    if dataset.scenes is not None and dataset.caption_facts is not None:
        from meet.data.shapes import relevance_matrix
        relevance = relevance_matrix(dataset.caption_facts, dataset.scenes)
    return Gallery(dataset, images, texts, image_hash, text_hash, relevance,
                   [str(p) for p in getattr(dataset, "paths", [])])


def _read_cached(folder: Path, fingerprint: str, report: Report) -> tuple | None:
    """The cached pair and hash features, or None (missing, corrupt or foreign: rebuilt)."""
    if not folder.is_dir():
        return None
    try:
        images = GalleryIndex.load(folder / "images", fingerprint=fingerprint, mmap=False)
        texts = GalleryIndex.load(folder / "texts", fingerprint=fingerprint, mmap=False)
        image_hash = np.load(folder / "image_hash.npy", allow_pickle=False)
        text_hash = np.load(folder / "text_hash.npy", allow_pickle=False)
        if image_hash.shape[0] != images.n_items or text_hash.shape[0] != texts.n_items:
            raise DataError("cached hash features do not match the cached index")
    except (MEETError, OSError, ValueError) as exc:
        report(f"cached index at {folder} is unusable ({exc}); rebuilding it")
        return None
    report(f"loaded the cached gallery index from {folder}")
    return images, texts, image_hash, text_hash


def _build_and_cache(model: MEETModel, dataset: ImageTextDataset, folder: Path,
                     report: Report) -> tuple:
    from meet.evaluate import encode_dataset
    from meet.index import progress_reporter

    enc_images, enc_texts = encode_dataset(model, dataset, progress=True)
    meta = {"dataset": f"{dataset.name}/{dataset.split}", "n_images": dataset.n_images,
            "n_captions": dataset.n_captions}
    tick, close = progress_reporter(None, dataset.n_images + dataset.n_captions)
    try:
        images, texts = pair_from_encoded(model, enc_images, enc_texts, dataset.image_ids,
                                          [str(c) for c in dataset.caption_ids],
                                          model.cfg.cascade.reciprocal_k, meta,
                                          progress=lambda d, t: tick(d, t, "reciprocal top-k scores"))
    finally:
        close()
    _save_atomically(folder, images, texts, enc_images.hash, enc_texts.hash, report)
    return images, texts, enc_images.hash, enc_texts.hash


def _save_atomically(folder: Path, images: GalleryIndex, texts: GalleryIndex, image_hash: np.ndarray,
                     text_hash: np.ndarray, report: Report) -> None:
    """Write into a temporary sibling and rename: a crash never leaves a half cache. A
    failure to cache (read-only disk) only costs the next start-up a rebuild."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        try:
            images.save(tmp / "images")
            texts.save(tmp / "texts")
            np.save(tmp / "image_hash.npy", np.ascontiguousarray(image_hash, np.float32))
            np.save(tmp / "text_hash.npy", np.ascontiguousarray(text_hash, np.float32))
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        report(f"cached the gallery index in {folder}")
    except (OSError, MEETError) as exc:
        report(f"could not cache the gallery index in {folder} ({exc}); continuing without a cache")
