"""Precomputed region features: the SCAN / HREM ("precomp") layout.

A split is two files in one folder:

- ``{split}_ims.npy``: float array ``(n_images, n_regions, feature_dim)`` (BUTD: 36 x
  2048) or ``(n_images, feature_dim)``, opened memory-mapped (``mmap_mode="r"``, never
  with pickles), so a 33 GB COCO train array costs no RAM until rows are read;
- ``{split}_caps.txt``: one caption per line, five per image in image order (caption
  ``i`` belongs to image ``i // 5``).

Some releases store one row per caption (``5 * n_images`` rows, each image repeated five
times). We detect it by ``rows == lines`` and read every fifth row; the first block is
checked to really repeat, so a file with one caption per image is not misread.

Splits: ``train``, ``dev`` (alias ``val``; ``val_*`` files are accepted too), ``test``
and ``testall`` (COCO 5K). :func:`coco_folds` cuts the 5K set into the five 1K folds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from meet.data.dataset import ImageTextDataset
from meet.errors import DataError

CAPTIONS_PER_IMAGE = 5
"""Captions per image in the precomp layout (and in COCO / Flickr30K)."""

PRECOMP_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train",), "dev": ("dev", "val"), "val": ("dev", "val"),
    "test": ("test",), "testall": ("testall",)}
"""Requested split -> file-name stems tried in order."""

_FINITE_CHUNK_BYTES = 64 * 2**20
"""Rows are checked for NaN/inf in chunks of about this many bytes."""


@dataclass(eq=False, repr=False, kw_only=True)
class PrecompDataset(ImageTextDataset):
    """Images as rows of a (memory-mapped) feature array."""

    features: np.ndarray
    """``(n_rows, n_regions, feature_dim)`` or ``(n_rows, feature_dim)``; usually an ``np.memmap``."""
    rows: np.ndarray
    """int64 ``(n_images,)``: the row of ``features`` holding each image."""
    features_path: Path | None = None
    """The ``.npy`` file behind ``features``; lets a pickled copy (DataLoader workers)
    reopen the memory map instead of copying the array."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.rows = np.asarray(self.rows, dtype=np.int64).reshape(-1)
        if len(self.rows) != self.n_images:
            raise DataError(f"data set {self.name!r}: {len(self.rows)} feature rows for {self.n_images} images")

    @property
    def feature_shape(self) -> tuple[int, int]:
        """``(n_regions, feature_dim)`` of one image (``n_regions = 1`` for 2-D arrays)."""
        if self.features.ndim == 2:
            return 1, int(self.features.shape[1])
        return int(self.features.shape[1]), int(self.features.shape[2])

    def _load_image(self, i: int) -> torch.Tensor:
        """float32 ``(n_regions, feature_dim)``."""
        row = np.array(self.features[self.rows[i]], dtype=np.float32)  # copy out of the map
        return torch.from_numpy(row.reshape(self.feature_shape))

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        """float32 ``(len(indices), n_regions, feature_dim)`` from one fancy-indexed read."""
        idx = self._check_indices(indices)
        if idx.size == 0:
            raise ValueError("images() needs at least one index")
        batch = np.asarray(self.features[self.rows[idx]], dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(batch).reshape(idx.size, *self.feature_shape))

    def preload(self, progress: bool = True) -> "PrecompDataset":
        """Read this data set's rows into RAM as float32 (faster random access than the
        map, at ``n_images * n_regions * feature_dim * 4`` bytes). Returns self."""
        if isinstance(self.features, np.memmap) or self.features.dtype != np.float32:
            self.features = np.ascontiguousarray(self.features[self.rows], dtype=np.float32)
            self.rows = np.arange(self.n_images, dtype=np.int64)
            self.features_path = None
        return self

    def _subset_source(self, image_indices: np.ndarray) -> dict[str, Any]:
        return {"rows": self.rows[image_indices]}  # the array itself is shared, not copied

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self.features_path is not None and isinstance(self.features, np.memmap):
            state["features"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.features is None:
            self.features = np.load(self.features_path, mmap_mode="r")


def load_precomp(root: str | Path, split: str, check_finite: bool = True) -> PrecompDataset:
    """Load ``{split}_ims.npy`` + ``{split}_caps.txt`` from ``root``.

    ``check_finite`` scans every used row for NaN/inf in ~64 MB chunks (a full read of
    the array; pass False to skip it on a trusted copy of a huge train split).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"precomp folder not found: {root}", fix="check --data")
    if split not in PRECOMP_SPLITS:
        raise DataError(f"unknown precomp split {split!r} for {root}",
                        fix=f"use one of {sorted(PRECOMP_SPLITS)}")
    ims_path, caps_path = _find_split_files(root, split)
    features = _open_features(ims_path)
    captions = _read_captions(caps_path)
    n_rows, n_lines = int(features.shape[0]), len(captions)
    step = _row_step(features, n_rows, n_lines, ims_path, caps_path)
    n_images = n_rows // step
    if check_finite:
        _check_finite(features, step, n_images, ims_path)
    return PrecompDataset(
        name=root.name, split="dev" if split == "val" else split, kind="precomp",
        n_images=n_images, captions=captions,
        caption_image=np.arange(n_lines, dtype=np.int64) // CAPTIONS_PER_IMAGE,
        image_ids=[str(i) for i in range(n_images)], caption_ids=list(range(n_lines)),
        features=features, rows=np.arange(0, n_rows, step, dtype=np.int64), features_path=ims_path)


def coco_folds(dataset: ImageTextDataset, n_folds: int = 5, fold_size: int = 1000) -> list[ImageTextDataset]:
    """The five 1K folds of COCO's 5K test set: fold ``k`` holds images
    ``[fold_size * k, fold_size * (k + 1))`` and their captions (works for raw and precomp)."""
    if dataset.n_images != n_folds * fold_size:
        raise DataError(f"{n_folds} folds of {fold_size} need {n_folds * fold_size} images, "
                        f"data set {dataset.name!r} split {dataset.split!r} has {dataset.n_images}",
                        fix="load the COCO 5K split ('testall')")
    return [dataset.subset(np.arange(k * fold_size, (k + 1) * fold_size)) for k in range(n_folds)]


def _find_split_files(root: Path, split: str) -> tuple[Path, Path]:
    """The first stem whose two files both exist; else name what is missing."""
    for stem in PRECOMP_SPLITS[split]:
        ims, caps = root / f"{stem}_ims.npy", root / f"{stem}_caps.txt"
        if ims.is_file() and caps.is_file():
            return ims, caps
    stem = PRECOMP_SPLITS[split][0]
    missing = [str(p) for p in (root / f"{stem}_ims.npy", root / f"{stem}_caps.txt") if not p.is_file()]
    present = sorted(p.name[: -len("_ims.npy")] for p in root.glob("*_ims.npy"))
    raise DataError(f"precomp split {split!r} incomplete: missing {missing}; splits with features "
                    f"in {root}: {present}", fix="check the folder and the split name")


def _open_features(path: Path) -> np.ndarray:
    """Memory-map ``path`` and check rank (2 or 3), float dtype and non-emptiness."""
    if path.stat().st_size == 0:
        raise DataError(f"empty file: {path}", fix="re-download or re-extract the features")
    try:
        features = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"cannot read {path} as a .npy array: {exc}",
                        fix="expected a plain float .npy file (no pickles)") from exc
    if not isinstance(features, np.ndarray):
        raise DataError(f"{path} is not a single .npy array", fix="expected {split}_ims.npy, not .npz")
    if features.ndim not in (2, 3):
        raise DataError(f"{path} has shape {features.shape}; expected (n_images, n_regions, dim) "
                        f"or (n_images, dim)", fix="check the file")
    if not np.issubdtype(features.dtype, np.floating):
        raise DataError(f"{path} has dtype {features.dtype}; expected a float array", fix="check the file")
    if features.shape[0] == 0 or features.size == 0:
        raise DataError(f"{path} holds no features (shape {features.shape})", fix="check the file")
    return features


def _read_captions(path: Path) -> list[str]:
    """Stripped lines; trailing blank lines dropped (blank lines inside are kept, so the
    caption -> image mapping ``i // 5`` is not shifted)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}", fix="save it as UTF-8 text") from exc
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"empty file: {path}", fix="re-download or re-extract the captions")
    return [line.strip() for line in lines]


def _row_step(features: np.ndarray, n_rows: int, n_lines: int, ims_path: Path, caps_path: Path) -> int:
    """1 if one row per image; 5 if one row per caption (each image repeated 5 times)."""
    if n_lines == CAPTIONS_PER_IMAGE * n_rows:
        return 1
    if n_lines == n_rows and n_rows % CAPTIONS_PER_IMAGE == 0:
        first = np.asarray(features[:CAPTIONS_PER_IMAGE])
        if np.array_equal(first, np.broadcast_to(first[:1], first.shape)):
            return CAPTIONS_PER_IMAGE
        raise DataError(f"{caps_path} has {n_lines} captions and {ims_path} {n_rows} rows, but rows 0-4 "
                        f"differ, so this is not the one-row-per-caption layout",
                        fix=f"expected {CAPTIONS_PER_IMAGE} captions per image")
    raise DataError(f"{caps_path} has {n_lines} captions but {ims_path} has {n_rows} images; "
                    f"expected {CAPTIONS_PER_IMAGE} x {n_rows} = {CAPTIONS_PER_IMAGE * n_rows} captions",
                    fix="the two files must come from the same split and release")


def _check_finite(features: np.ndarray, step: int, n_images: int, path: Path) -> None:
    """Fail on the first image with a NaN or inf, reading the map in ~64 MB chunks."""
    row_bytes = max(1, int(np.prod(features.shape[1:])) * features.dtype.itemsize)
    chunk = max(1, _FINITE_CHUNK_BYTES // row_bytes)
    for start in range(0, n_images, chunk):
        stop = min(n_images, start + chunk)
        block = features[start * step:stop * step:step]
        finite = np.isfinite(block).reshape(block.shape[0], -1).all(axis=1)
        if not finite.all():
            bad = start + int(np.flatnonzero(~finite)[0])
            raise DataError(f"{path}: image {bad} has NaN or inf features",
                            fix="regenerate the features (or drop that image)")
