"""A small grid CNN trained from scratch on raw pixels (the Shapes demo's image tower).

No pretrained vision model can be downloaded on the build machines, so the demo learns
its image features from scratch on a 2-core CPU. The network is three stride-2 stages
(widths ``cnn_width``, 2x, 4x) that turn a 64 px image into an 8 x 8 grid, then
:data:`N_GRID_CONVS` stride-1 convolutions at grid resolution; each grid cell is one
"region" for the shared :class:`~meet.encoders.pooling.ProjectAndPool` head.

Why the compute sits at grid resolution: on a 2-thread CPU, stride-1 convolutions at
32 x 32 cost most of the time (measured at cnn_width=32, batch 128, forward+backward:
about 230 images/s with a stride-1 conv in every stage, about 390 with both stride-1
convs at 8 x 8), and the receptive field after them (47 px) still covers a whole object.
A learned 2-D positional embedding is added to the grid before pooling, because the
attention pooling is otherwise blind to where a cell lies and Shapes captions say
"left of" and "above".
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import nn

from meet.config import ModelConfig
from meet.data.images import load_image_tensor
from meet.encoders.pooling import ProjectAndPool
from meet.errors import ConfigError, DataError

PIXEL_MEAN = (0.485, 0.456, 0.406)
"""Per-channel mean (RGB, 0-1 scale) subtracted before the first convolution: the usual
ImageNet statistics. With BatchNorm after the first conv the exact values barely matter;
fixed constants (not data statistics) keep a checkpoint independent of its training set."""
PIXEL_STD = (0.229, 0.224, 0.225)
"""Per-channel standard deviation paired with :data:`PIXEL_MEAN`."""

N_STAGES = 3
"""Stride-2 stages; 64 px -> 8 x 8 grid (each stage halves the side, rounding up)."""
N_GRID_CONVS = 2
"""Stride-1 3x3 convolutions at grid resolution after the last stage."""


def grid_side(image_size: int) -> int:
    """Side of the output grid for a square ``image_size`` input (ceil-halved per stage)."""
    side = image_size
    for _ in range(N_STAGES):
        side = (side + 1) // 2
    return side


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class CNNGridEncoder(nn.Module):
    """uint8 images ``(batch, 3, S, S)`` -> ``(batch, embed_dim)`` unit vectors.

    Stage ``i`` (i = 0, 1, 2) is a stride-2 3x3 conv to width ``cnn_width * 2**i``, then
    :data:`N_GRID_CONVS` stride-1 3x3 convs at the last width; every conv has BatchNorm +
    ReLU. About 0.5M parameters at ``cnn_width=32``, ``embed_dim=256``. The attention weights of the pooling form a
    ``grid_side x grid_side`` map in row-major order (``weights.view(B, side, side)``).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.cnn_width < 1 or cfg.image_size < 1:
            raise ConfigError(f"cnn encoder needs cnn_width >= 1 and image_size >= 1, "
                            f"got {cfg.cnn_width} and {cfg.image_size}")
        self.image_size = cfg.image_size
        self.grid_side = grid_side(cfg.image_size)
        widths = [cfg.cnn_width * 2 ** i for i in range(N_STAGES)]
        layers: list[nn.Module] = []
        in_channels = 3
        for width in widths:
            layers.append(_conv_bn_relu(in_channels, width, 2))
            in_channels = width
        layers += [_conv_bn_relu(in_channels, in_channels, 1) for _ in range(N_GRID_CONVS)]
        self.backbone = nn.Sequential(*layers)
        self.feature_dim = widths[-1]
        n_positions = self.grid_side ** 2
        self.position = nn.Parameter(torch.randn(1, n_positions, self.feature_dim) * 0.02)
        self.head = ProjectAndPool(self.feature_dim, cfg.embed_dim)
        self.embed_dim = cfg.embed_dim
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1) * 255.0,
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1) * 255.0,
                             persistent=False)

    def preprocess(self, pil_images: list[Image.Image]) -> torch.Tensor:
        """Decoded PIL images -> uint8 batch ``(n, 3, S, S)`` (bilinear resize, no crop)."""
        return torch.stack([load_image_tensor(img, self.image_size) for img in pil_images])

    def grid_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(batch, 3, S, S)`` -> grid features ``(batch, side * side, feature_dim)``.

        uint8 input is on the 0-255 scale; floating input is taken as already scaled
        to 0-1 (e.g. from an augmentation pipeline).
        """
        expected = (3, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise DataError(f"cnn encoder expects images of shape (batch, {expected[0]}, "
                            f"{expected[1]}, {expected[2]}), got {tuple(images.shape)}",
                            fix="make the batch with preprocess() or pil_to_uint8 at "
                                "the model's image_size")
        if images.dtype == torch.uint8:
            pixels = images.float()
        elif images.is_floating_point():
            pixels = images.float() * 255.0
        else:
            raise DataError(f"cnn encoder expects uint8 or float images, got {images.dtype}")
        pixels = (pixels - self.pixel_mean) / self.pixel_std
        grid = self.backbone(pixels)
        return grid.flatten(2).transpose(1, 2) + self.position

    def forward(self, images: torch.Tensor, return_weights: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``(batch, 3, S, S)`` -> ``(batch, embed_dim)``; with ``return_weights`` also the
        pooling weights ``(batch, side * side)`` over grid cells (row-major)."""
        return self.head(self.grid_features(images), return_weights=return_weights)

    def save_extra(self, directory: Path) -> None:
        """Nothing to write: the config alone rebuilds the architecture."""
