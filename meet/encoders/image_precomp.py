"""Image tower over precomputed region features (BUTD, the paper's setting).

The detector ran offline, so the model sees ``(n_regions, precomp_dim)`` arrays
(``{split}_ims.npy``, 36 x 2048 for BUTD) or one global vector per image (``(precomp_dim,)``,
treated as a single region). Each region is one position for the shared
:class:`~meet.encoders.pooling.ProjectAndPool` head.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from meet.config import ModelConfig
from meet.encoders.pooling import ProjectAndPool
from meet.errors import ConfigError, DataError


class PrecompRegionEncoder(nn.Module):
    """Region features ``(batch, n_regions, precomp_dim)`` -> ``(batch, embed_dim)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.precomp_dim < 1:
            raise ConfigError(f"precomp_dim must be >= 1, got {cfg.precomp_dim}")
        self.precomp_dim = cfg.precomp_dim
        self.embed_dim = cfg.embed_dim
        self.head = ProjectAndPool(cfg.precomp_dim, cfg.embed_dim)

    def _check_width(self, shape: Sequence[int], what: str) -> None:
        if len(shape) == 0 or shape[-1] != self.precomp_dim:
            raise ConfigError(
                f"{what} has shape {tuple(shape)}, expected (n_regions, {self.precomp_dim}) "
                f"or ({self.precomp_dim},) (precomp_dim={self.precomp_dim})",
                fix="set precomp_dim to the width of the feature files, or use the "
                    "features this model was trained on")

    def preprocess(self, pil_images: list) -> torch.Tensor:
        """Not applicable: this model never sees pixels."""
        raise ConfigError("a precomp image encoder takes region-feature arrays, not images",
                          fix="use preprocess_features() with (n_regions, precomp_dim) "
                              "arrays, or a model trained with image_encoder=cnn or hf")

    def preprocess_features(self, features: Sequence[np.ndarray | torch.Tensor]
                            ) -> torch.Tensor:
        """Stack per-image arrays ``(n_regions, precomp_dim)`` or ``(precomp_dim,)`` into a
        float32 batch ``(n, n_regions, precomp_dim)``; every item needs the same
        ``n_regions`` (the precomp layout stores a fixed count)."""
        if len(features) == 0:
            raise DataError("preprocess_features got an empty list of feature arrays")
        tensors = []
        for index, item in enumerate(features):
            tensor = _real_tensor(item, index)
            if tensor.dim() not in (1, 2):
                raise ConfigError(f"feature array {index} has shape {tuple(tensor.shape)}, "
                                  f"expected (n_regions, {self.precomp_dim}) or "
                                  f"({self.precomp_dim},)", fix="pass one array per image")
            self._check_width(tuple(tensor.shape), f"feature array {index}")
            shape = tuple(tensor.shape)
            tensor = tensor.reshape(-1, self.precomp_dim).to(torch.float32)
            if tensor.shape[0] == 0:
                raise DataError(f"feature array {index} has no regions (shape {shape})",
                                fix="every image needs at least one region feature")
            if not torch.isfinite(tensor).all():
                raise DataError(f"feature array {index} has NaN or inf values (after conversion to float32)",
                                fix="regenerate the features of that image")
            tensors.append(tensor)
        n_regions = {t.shape[0] for t in tensors}
        if len(n_regions) > 1:
            raise DataError(f"feature arrays have different region counts {sorted(n_regions)}",
                            fix="pad or select regions so every image has the same count")
        return torch.stack(tensors)

    def forward(self, images: torch.Tensor, return_weights: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``images``: region features ``(batch, n_regions, precomp_dim)`` or
        ``(batch, precomp_dim)``. Returns ``(batch, embed_dim)`` and, with
        ``return_weights``, the region weights ``(batch, n_regions)``."""
        if images.dim() not in (2, 3):
            raise ConfigError(f"precomp features have shape {tuple(images.shape)}, expected "
                              f"(batch, n_regions, {self.precomp_dim}) or "
                              f"(batch, {self.precomp_dim})")
        self._check_width(tuple(images.shape), "precomp feature batch")
        features = images.unsqueeze(1) if images.dim() == 2 else images
        return self.head(features.float(), return_weights=return_weights)

    def save_extra(self, directory: Path) -> None:
        """Nothing to write: the config alone rebuilds the architecture."""


def _real_tensor(item: object, index: int) -> torch.Tensor:
    """A real-valued tensor from an array-like, or :class:`DataError`: strings, None,
    ragged lists and complex values are not feature vectors."""
    try:
        tensor = item if torch.is_tensor(item) else torch.as_tensor(np.asarray(item))
    except (TypeError, ValueError) as exc:
        raise DataError(f"feature array {index} is not a numeric array ({exc})",
                        fix="pass float arrays of shape (n_regions, precomp_dim)") from exc
    if tensor.is_complex():
        raise DataError(f"feature array {index} is complex ({tensor.dtype})",
                        fix="pass real-valued float arrays")
    return tensor
