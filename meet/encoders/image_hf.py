"""Image tower over a transformers vision backbone (ViT, DeiT, DINOv2, ResNet, ConvNeXt...).

The backbone's ``last_hidden_state`` gives per-position features: ``(B, T, hidden)`` tokens
for ViT-like models (CLS included), ``(B, C, H, W)`` maps for CNN-like ones (flattened to
``(B, H * W, C)``, row-major). Either way they go through the shared
:class:`~meet.encoders.pooling.ProjectAndPool` head. Pooler layers are left out (their
output is unused, and unused parameters get no gradient).

Input, two paths:

* ``preprocess(pil_images)`` runs the backbone's own image processor (its resize, crop
  and normalisation) and returns float ``pixel_values``; this is the reference path.
* ``forward`` also accepts uint8 ``(B, 3, S, S)`` batches from
  :func:`meet.data.images.pil_to_uint8` (what the raw-image data sets produce for every
  encoder): they are rescaled to 0-1 and normalised with the processor's mean/std, with
  no further resize or crop, so ``image_size`` must suit the backbone (a ViT needs its
  own ``image_size``).

If the backbone folder has no image processor, ImageNet mean/std and a plain resize to
``image_size`` stand in for it (the usual statistics of pretrained vision models).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from meet.config import ModelConfig
from meet.data.images import load_image_tensor, open_image
from meet.encoders.hf_loading import (FrozenBackboneMixin, config_from_saved_json,
                                      import_transformers, load_pretrained, set_frozen,
                                      write_config_json)
from meet.encoders.pooling import ProjectAndPool
from meet.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Fallback per-channel mean (RGB, 0-1 scale) when the backbone has no image processor."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""Fallback per-channel standard deviation, paired with :data:`IMAGENET_MEAN`."""

VISION_CONFIG_FILE = "vision_config.json"
IMAGE_PROCESSOR_DIR = "image_processor"


def _check_image_size(config: Any, image_size: int) -> None:
    """A ViT-like backbone has a fixed input size (position embeddings); a different
    ``image_size`` would fail deep inside transformers at the first batch."""
    wanted = getattr(config, "image_size", None)
    if isinstance(wanted, (list, tuple)):
        wanted = wanted[0] if len(set(wanted)) == 1 else None
    if isinstance(wanted, int) and "patch_size" in config.to_dict() and wanted != image_size:
        raise ConfigError(f"the vision backbone takes {wanted} px images, but image_size is {image_size}",
                          fix=f"pass --image-size {wanted}")


class HFVisionEncoder(FrozenBackboneMixin, nn.Module):
    """``pixel_values`` (float) or uint8 images -> ``(batch, embed_dim)`` unit vectors."""

    def __init__(self, backbone: nn.Module, processor: Any | None, cfg: ModelConfig):
        super().__init__()
        _check_image_size(backbone.config, cfg.image_size)
        self.backbone = backbone
        self.processor = processor
        self.image_size = cfg.image_size
        self.embed_dim = cfg.embed_dim
        self.feature_dim = _feature_dim(backbone.config)
        self.head = ProjectAndPool(self.feature_dim, cfg.embed_dim)
        mean = getattr(processor, "image_mean", None) or IMAGENET_MEAN
        std = getattr(processor, "image_std", None) or IMAGENET_STD
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.frozen_backbone = cfg.freeze_backbone
        set_frozen(self.backbone, cfg.freeze_backbone)
        self.train()

    def preprocess(self, pil_images: list[Image.Image]) -> torch.Tensor:
        """Decoded PIL images -> float ``pixel_values`` ``(n, 3, H, W)`` for :meth:`forward`."""
        if self.processor is not None:
            rgb = [open_image(img) for img in pil_images]
            return self.processor(images=rgb, return_tensors="pt")["pixel_values"]
        batch = torch.stack([load_image_tensor(img, self.image_size) for img in pil_images])
        return self._normalise_uint8(batch)

    def _normalise_uint8(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.float() / 255.0
        return (pixels - self.pixel_mean) / self.pixel_std

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Backbone features ``(batch, n_positions, feature_dim)``."""
        if pixel_values.dim() != 4:
            raise DataError(f"hf encoder expects images (batch, 3, H, W), got "
                            f"{tuple(pixel_values.shape)}", fix="make the batch with preprocess()")
        if pixel_values.dtype == torch.uint8:
            pixel_values = self._normalise_uint8(pixel_values)
        with torch.set_grad_enabled(self.backbone_grad_enabled()):
            hidden = self.backbone(pixel_values=pixel_values).last_hidden_state
        if hidden.dim() == 4:
            hidden = hidden.flatten(2).transpose(1, 2)
        if hidden.dim() != 3 or hidden.shape[-1] != self.feature_dim:
            raise ConfigError(f"vision backbone returned last_hidden_state of shape "
                              f"{tuple(hidden.shape)}, expected (batch, n, {self.feature_dim}) "
                              f"or (batch, {self.feature_dim}, H, W)",
                              fix="use a vision backbone whose last_hidden_state is a "
                                  "token sequence or a feature map")
        return hidden

    def forward(self, pixel_values: torch.Tensor, return_weights: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(batch, embed_dim)`` and, with ``return_weights``, the weights
        ``(batch, n_positions)`` over tokens (ViT: CLS first) or map cells (row-major)."""
        return self.head(self.features(pixel_values), return_weights=return_weights)

    def save_extra(self, directory: Path) -> None:
        """Write ``vision_config.json`` and ``image_processor/`` (if any), enough for
        :func:`build_hf_image_encoder` to rebuild the architecture without the hub."""
        directory = Path(directory)
        write_config_json(self.backbone.config, directory / VISION_CONFIG_FILE)
        if self.processor is not None:
            self.processor.save_pretrained(str(directory / IMAGE_PROCESSOR_DIR))


def _feature_dim(config: Any) -> int:
    """Channels of ``last_hidden_state``: last stage width of CNN-like configs
    (``hidden_sizes``), else ``hidden_size``."""
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:
        return int(sizes[-1])
    size = getattr(config, "hidden_size", None)
    if not size:
        raise ConfigError(f"cannot tell the feature width of vision backbone type "
                          f"{config.model_type!r} (no hidden_size/hidden_sizes)",
                          fix="use a ViT- or ResNet-like vision backbone")
    return int(size)


def _model_class(config: Any) -> type:
    """The bare (headless) model class for ``config``, as ``AutoModel`` would pick."""
    transformers = import_transformers()
    if getattr(config, "vision_config", None) is not None:
        raise ConfigError(f"vision_backbone is a multi-modal model ({config.model_type}); "
                          "image_encoder=hf needs a vision-only model",
                          fix="point vision_backbone to a ViT/DINOv2/ResNet-style model")
    try:
        return transformers.MODEL_MAPPING[type(config)]
    except KeyError as exc:
        raise ConfigError(f"no transformers model class for config type "
                          f"{type(config).__name__}", fix="use a vision backbone") from exc


def _no_pooler_kwargs(model_class: type) -> dict[str, Any]:
    """``add_pooling_layer=False`` where the class takes it (ViT, DeiT, BERT...)."""
    parameters = inspect.signature(model_class.__init__).parameters
    return {"add_pooling_layer": False} if "add_pooling_layer" in parameters else {}


def build_hf_image_encoder(cfg: ModelConfig, saved_dir: Path | None = None) -> HFVisionEncoder:
    """Pretrained backbone from ``cfg.vision_backbone``, or (``saved_dir`` given) the
    same architecture randomly initialised from the files of :meth:`save_extra`; the
    caller then loads the checkpoint's weights."""
    transformers = import_transformers()
    if saved_dir is None:
        if not cfg.vision_backbone:
            raise ConfigError("image_encoder='hf' needs vision_backbone",
                              fix="set vision_backbone to a local model folder or hub name")
        config = load_pretrained(transformers.AutoConfig.from_pretrained,
                                 cfg.vision_backbone, "vision_backbone")
        model_class = _model_class(config)
        backbone = load_pretrained(model_class.from_pretrained, cfg.vision_backbone,
                                   "vision_backbone", config=config,
                                   **_no_pooler_kwargs(model_class))
        processor_source: Path | str = cfg.vision_backbone
    else:
        saved_dir = Path(saved_dir)
        config = config_from_saved_json(saved_dir / VISION_CONFIG_FILE)
        model_class = _model_class(config)
        backbone = model_class(config, **_no_pooler_kwargs(model_class))
        processor_source = saved_dir / IMAGE_PROCESSOR_DIR
    processor = _load_processor(transformers, processor_source)
    return HFVisionEncoder(backbone, processor, cfg)


def _load_processor(transformers: Any, source: Path | str) -> Any | None:
    """The backbone's image processor, or None (the ImageNet fallback) if it has none."""
    if isinstance(source, Path) and not source.is_dir():
        return None
    try:
        return transformers.AutoImageProcessor.from_pretrained(str(source))
    except (OSError, ValueError, KeyError):
        return None
