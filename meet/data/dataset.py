"""The one shape every data set takes: images, captions, and which caption belongs to which image.

Loaders (Karpathy JSON + image folder, precomputed features, the Shapes benchmark) all
return an :class:`ImageTextDataset`, so training, evaluation, the index and the app never
ask where the data came from. The base class holds the caption side and the bookkeeping
(``caption_image``, per-image caption lists, subsets); a subclass only says how to fetch
image ``i`` (a decoded PNG or a row of a memory-mapped feature array).

Captions are kept as raw text: tokenisation belongs to the text encoder (BiGRU vocabulary
or BERT tokenizer), not to the data set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from meet.errors import DataError


@dataclass(eq=False, repr=False)
class ImageTextDataset:
    """Images and their captions, with the image of each caption.

    Subclasses implement :meth:`_load_image` (and may vectorise :meth:`images`) and
    :meth:`_subset_source` (how their image storage follows a subset).
    """

    name: str
    """Data set name (``coco``, ``f30k``, ``shapes``, a folder name, ...)."""
    split: str
    """Split as loaded (``train``, ``val``/``dev``, ``test``, ``testall``, ``all``)."""
    kind: str
    """``raw`` (image files decoded to uint8) or ``precomp`` (feature arrays)."""
    n_images: int
    captions: list[str]
    """Raw caption text, ``(n_captions,)``."""
    caption_image: np.ndarray
    """int64 ``(n_captions,)``: index (0..n_images-1) of each caption's image."""
    image_ids: list[str]
    """``(n_images,)``: raw: file name as in the JSON; precomp: ``str(row index)``."""
    caption_ids: list[int]
    """``(n_captions,)``: raw: the JSON ``sentid``; precomp: the caption's line index."""
    scenes: list[dict] | None = None
    """``(n_images,)`` ground-truth scene per image (Shapes only), else ``None``."""
    caption_facts: list[dict] | None = None
    """``(n_captions,)`` facts each caption asserts (Shapes only), else ``None``."""

    _caption_order: np.ndarray = field(init=False, repr=False)
    _caption_offsets: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.caption_image = np.asarray(self.caption_image, dtype=np.int64).reshape(-1)
        self._validate()
        # CSR index: captions of image i are _caption_order[offsets[i]:offsets[i+1]],
        # in their original order (stable sort).
        self._caption_order = np.argsort(self.caption_image, kind="stable")
        counts = np.bincount(self.caption_image, minlength=self.n_images)
        self._caption_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def _validate(self) -> None:
        """Check that the parallel lists agree; a mismatch is a loader bug or a bad
        hand-built data set, and would otherwise surface as a wrong metric much later."""
        where = f"data set {self.name!r} split {self.split!r}"
        n_captions = len(self.captions)
        if self.n_images < 0 or len(self.image_ids) != self.n_images:
            raise DataError(f"{where}: {len(self.image_ids)} image ids for n_images={self.n_images}")
        if len(self.caption_image) != n_captions or len(self.caption_ids) != n_captions:
            raise DataError(f"{where}: {n_captions} captions but {len(self.caption_image)} "
                            f"caption_image entries and {len(self.caption_ids)} caption ids")
        if n_captions and (self.caption_image.min() < 0 or self.caption_image.max() >= self.n_images):
            raise DataError(f"{where}: caption_image has values outside 0..{self.n_images - 1}")
        if self.scenes is not None and len(self.scenes) != self.n_images:
            raise DataError(f"{where}: {len(self.scenes)} scenes for {self.n_images} images")
        if self.caption_facts is not None and len(self.caption_facts) != n_captions:
            raise DataError(f"{where}: {len(self.caption_facts)} caption facts for {n_captions} captions")

    # ------------------------------------------------------------------ sizes / lookup
    def __len__(self) -> int:
        return self.n_images

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, kind={self.kind!r}, "
                f"n_images={self.n_images}, n_captions={self.n_captions})")

    def captions_of(self, i: int) -> list[int]:
        """Caption indices of image ``i``, in their original order."""
        i = self._check_index(i)
        return self._caption_order[self._caption_offsets[i]:self._caption_offsets[i + 1]].tolist()

    def captions_per_image(self) -> np.ndarray:
        """int64 ``(n_images,)``: how many captions each image has."""
        return np.diff(self._caption_offsets)

    def _check_index(self, i: int) -> int:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"image index must be an int, got {type(i).__name__}")
        i = int(i)
        if not 0 <= i < self.n_images:
            raise IndexError(f"image index {i} out of range for {self.n_images} images")
        return i

    def _check_indices(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
        """``(n,)`` int64 array of in-range indices (duplicates allowed)."""
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        idx = np.asarray(indices)
        if idx.size == 0:
            return np.zeros(0, dtype=np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"image indices must be a 1-D sequence of ints, got shape {idx.shape} "
                            f"dtype {idx.dtype}")
        idx = idx.astype(np.int64)
        if idx.min() < 0 or idx.max() >= self.n_images:
            bad = idx[(idx < 0) | (idx >= self.n_images)][0]
            raise IndexError(f"image index {bad} out of range for {self.n_images} images")
        return idx

    # ------------------------------------------------------------------ images
    def image(self, i: int) -> torch.Tensor:
        """Image ``i``: raw: uint8 ``(3, S, S)``; precomp: float32 ``(n_regions, feature_dim)``."""
        return self._load_image(self._check_index(i))

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        """Stack of :meth:`image` over ``indices``: ``(len(indices), ...)``."""
        idx = self._check_indices(indices)
        if idx.size == 0:
            raise ValueError("images() needs at least one index")
        return torch.stack([self._load_image(int(i)) for i in idx])

    def preload(self, progress: bool = True) -> "ImageTextDataset":
        """Bring all images into memory (a no-op unless a subclass overrides it); returns self."""
        return self

    def _load_image(self, i: int) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not define how to load an image")

    # ------------------------------------------------------------------ subsets
    def subset(self, image_indices: Sequence[int] | np.ndarray) -> "ImageTextDataset":
        """The data set restricted to ``image_indices`` (unique), in that order.

        Keeps exactly the captions of those images, ordered by new image index and then
        by their original order, with ``caption_image`` remapped to the new indices; ids,
        scenes and facts follow. Used for COCO's 1K folds and ``max_train_images``.
        """
        idx = self._check_indices(image_indices)
        if np.unique(idx).size != idx.size:
            raise ValueError("subset() image indices must be unique")
        new_of_old = np.full(self.n_images, -1, dtype=np.int64)
        new_of_old[idx] = np.arange(idx.size, dtype=np.int64)
        new_image = new_of_old[self.caption_image]
        kept = np.flatnonzero(new_image >= 0)
        kept = kept[np.argsort(new_image[kept], kind="stable")]
        changes: dict[str, Any] = dict(
            n_images=int(idx.size),
            captions=[self.captions[k] for k in kept],
            caption_image=new_image[kept],
            image_ids=[self.image_ids[i] for i in idx],
            caption_ids=[self.caption_ids[k] for k in kept],
            scenes=None if self.scenes is None else [self.scenes[i] for i in idx],
            caption_facts=None if self.caption_facts is None else [self.caption_facts[k] for k in kept],
        )
        changes.update(self._subset_source(idx))
        return dataclasses.replace(self, **changes)

    def _subset_source(self, image_indices: np.ndarray) -> dict[str, Any]:
        """Subclass fields that must follow a subset (paths, feature rows, caches)."""
        return {}
