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

import dataclasses
import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


import meet
from meet.config import CascadeConfig, HashRefitConfig
from meet.data.dataset import ImageTextDataset
from meet.errors import DataError
from meet.inference import MEETModel
from meet.search import GalleryIndex
from meet.search.cache import cached_pair

from app.ground_truth import GroundTruth
from app.settings import AppSettings

Report = Callable[[str], None]
"""Start-up progress: one line per step."""

PLACEHOLDER_SIZE = 128
"""Side of the square tile shown for an image without a file."""

SHAPES_SIZES = {"n_train": 20000, "n_val": 1000, "n_test": 1000}
"""The Shapes split sizes whose test split is the default gallery (the benchmark's)."""


@dataclass
class Gallery:
    """The searchable items and what is known about them."""

    dataset: ImageTextDataset
    images: GalleryIndex
    texts: GalleryIndex
    """Both keep their hash features (``.hash``), which the quantization-error view reads."""
    truth: GroundTruth
    """Which captions are relevant to which images (Shapes facts, else the data set's
    pairing), computed per query: never the quadratic matrix."""
    image_paths: list[str | None]
    """Each image's file, for thumbnails; None where there is none (a precomputed-feature
    gallery without ``--images``, or an image the id file names but the folder lacks)."""
    image_labels: list[str]
    """What each image is called on the page: its file name or its data set id."""
    placeholder_dir: Path
    """Where placeholder thumbnails (an image's id on a grey tile) are drawn, on first use."""

    @property
    def has_ground_truth(self) -> bool:
        return self.truth.from_facts

    @property
    def reads_region_features(self) -> bool:
        """A precomputed-feature gallery: images cannot be encoded from pixels (no uploads)."""
        return self.dataset.kind == "precomp"

    def thumbnail(self, position: int) -> str:
        """The image file to show for gallery image ``position``: its own, or a placeholder
        naming its id (drawn once into :attr:`placeholder_dir`)."""
        path = self.image_paths[position]
        if path is not None:
            return path
        label = self.image_labels[position]
        target = self.placeholder_dir / f"{hashlib.sha256(label.encode()).hexdigest()[:16]}.png"
        if not target.is_file():
            _draw_placeholder(target, label)
        return str(target)

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
    backbone: str = ""
    """The CLIP model ``--checkpoint`` named when the codes were fitted for this gallery
    (:func:`fit_for_gallery`), else ""."""
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
    release_files = {name: getattr(settings, name) for name in ("bert", "vocab", "reranker")
                     if getattr(settings, name)}
    checkpoint, backbone = settings.checkpoint, ""
    if not release_files and is_clip_spec(settings.checkpoint):
        checkpoint, backbone = fit_for_gallery(settings, report), settings.checkpoint
    report(f"loading checkpoint {checkpoint}")
    model = meet.load(checkpoint, device=None if settings.device == "auto" else settings.device,
                      **release_files)
    if settings.hamming_index:
        model.cfg = model.cfg.override(hamming_index=settings.hamming_index)
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
    return AppState(settings, model, gallery, gallery.images.settings(model.cfg.cascade), label, seconds,
                    backbone=backbone)


def is_clip_spec(spec: str) -> bool:
    """Whether ``--checkpoint`` names a CLIP model (a folder or a Hub id), not a MEET checkpoint."""
    from meet.backbones import is_clip_spec as check

    return check(spec)


def fit_for_gallery(settings: AppSettings, report: Report) -> Path:
    """A CLIP ``--checkpoint``: MEET's codes fitted on the gallery on first use
    (:func:`meet.fit_codes.cached_fit`, keyed by the backbone and the gallery's files),
    progress reported every tenth of the encoding; the checkpoint folder in the cache."""
    from meet.fit_codes import cached_fit

    shown = {"tenth": -1}

    def progress(done: int, total: int) -> None:
        tenth = 10 * done // max(total, 1)
        if tenth != shown["tenth"]:
            shown["tenth"] = tenth
            report(f"encoding the gallery with the CLIP towers: {done:,} of {total:,} images and captions")

    return cached_fit(settings.checkpoint, lambda model: _load_dataset(settings, model, report), settings.cache_dir,
                      device=None if settings.device == "auto" else settings.device,
                      data_label=settings.data or "the Shapes test split", report=report, progress=progress,
                      refit=HashRefitConfig(method="distill", distill_steps=settings.fit_steps))


def _warm_up(model: MEETModel, gallery: Gallery) -> None:
    """Run each encoder and the search path once, so the first user's query does not pay
    for lazy initialisation (allocator, faiss index, kernels)."""
    from PIL import Image

    texts = model.encode_texts(["warm up"])
    if model.kind == "precomp":  # region features cannot be made from a picture: a gallery row
        images = model.encode_image_batches(iter([gallery.dataset.images([0])]), 1, 1)
    else:
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
        if not settings.data:
            raise DataError("this checkpoint reads precomputed region features, which the app cannot compute "
                            "from a picture, and the default gallery is a folder of pictures",
                            fix="pass --data with a precomputed-feature folder (e.g. f30k_precomp, with "
                                "test_ims.npy and test_caps.txt), and --images/--image-ids for thumbnails")
        return load_split(Path(settings.data), settings.split, model.cfg.model)
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


def build_cascade(model: MEETModel, dataset: ImageTextDataset, report: Report) -> CascadeConfig:
    """The checkpoint's Stage II settings, with the model's own hash-space codebooks for the
    quantization filter when a side of this gallery is too small to fit the dense-space ones
    (:func:`meet.search.quantizers.fitting_sample`: a codebook's worth of items, and at
    least the embedding's dimension), e.g. a few hundred photos with a CLIP checkpoint."""
    cascade = model.cfg.cascade
    sizes = [n for n in (dataset.n_images, dataset.n_captions) if n]
    least = max(model.cfg.model.codebook_size, model.cfg.model.embed_dim)
    if cascade.pq_space != "hash" and sizes and min(sizes) < least:
        report(f"{min(sizes)} items on a side are too few to fit {cascade.pq_space}-space codebooks "
               f"(at least {least}): the quantization filter uses the model's own codebooks")
        return dataclasses.replace(cascade, pq_space="hash")
    return cascade


def _load_gallery(settings: AppSettings, model: MEETModel, dataset: ImageTextDataset,
                  report: Report) -> Gallery:
    images, texts = cached_pair(model, dataset, settings.cache_dir, cascade=build_cascade(model, dataset, report),
                                keep_hash=True, mmap=True, report=report)
    paths: list[str | None] = [str(p) for p in getattr(dataset, "paths", [])] or [None] * dataset.n_images
    labels = [str(i) for i in dataset.image_ids]
    if settings.images:
        from meet.data.image_ids import image_files, read_image_ids

        labels = read_image_ids(settings.image_ids, dataset.n_images)
        paths = [None if p is None else str(p) for p in image_files(settings.image_ids, settings.images,
                                                                    dataset.n_images)]
        report(f"thumbnails: {sum(p is not None for p in paths)} of {dataset.n_images} images found in "
               f"{settings.images}")
    return Gallery(dataset, images, texts, GroundTruth.of(dataset), paths, labels,
                   Path(settings.cache_dir) / "placeholders")


def _draw_placeholder(target: Path, label: str) -> None:
    """A grey tile that says which image it stands for (no picture was given for it)."""
    from PIL import Image, ImageDraw

    side = PLACEHOLDER_SIZE  # square: the galleries crop to squares
    tile = Image.new("RGB", (side, side), (225, 225, 225))
    draw = ImageDraw.Draw(tile)
    draw.rectangle((0, 0, side - 1, side - 1), outline=(150, 150, 150))
    lines = [("no image file", (90, 90, 90)), ("for id", (90, 90, 90))]
    lines += [(label[i:i + 16], (20, 20, 20)) for i in range(0, min(len(label), 48), 16)]
    for row, (text, colour) in enumerate(lines):
        width = draw.textlength(text)
        draw.text(((side - width) / 2, side / 2 - 8 * len(lines) + 16 * row), text, fill=colour)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{threading.get_ident()}")
    tile.save(tmp, format="PNG")
    tmp.replace(target)
