"""One entry point that picks the right loader for a data folder.

Training, evaluation and the app call :func:`load_split` and never care which layout a
folder uses: precomp features (``{split}_ims.npy``), a Karpathy JSON with images (COCO,
Flickr30K, Flickr8k, Shapes), or a plain folder of images.
"""

from __future__ import annotations

from pathlib import Path

from meet.config import ModelConfig, takes_region_features
from meet.data.dataset import ImageTextDataset
from meet.errors import ConfigError, DataError

_PRECOMP_ALIASES = {"val": "dev"}


def detect_format(root: Path) -> str:
    """``precomp``, ``karpathy`` or ``folder`` (images only), from the files present."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}",
                        fix="generate Shapes with `python -m meet.data.shapes --out DIR` or check the path")
    if any(root.glob("*_ims.npy")):
        return "precomp"
    if (root / "dataset.json").is_file() or any(root.glob("dataset_*.json")):
        return "karpathy"
    return "folder"


def load_split(root: str | Path, split: str, model_cfg: ModelConfig,
               image_dir: Path | None = None) -> ImageTextDataset:
    """Load ``split`` of the data set in ``root`` in the form ``model_cfg`` consumes."""
    root = Path(root)
    fmt = detect_format(root)
    wants_features = takes_region_features(model_cfg)
    if fmt == "precomp":
        if not wants_features:
            raise ConfigError(f"{root} holds precomputed features, but the model's image encoder is "
                              f"{model_cfg.image_encoder!r}", fix="use --image-encoder precomp")
        from meet.data.precomp import load_precomp
        name = split if (root / f"{split}_ims.npy").exists() else _PRECOMP_ALIASES.get(split, split)
        ds = load_precomp(root, name)
        width = ds.feature_shape[1]
        if width != model_cfg.precomp_dim:
            raise ConfigError(f"{root} has {width}-d features but the model expects "
                              f"precomp_dim={model_cfg.precomp_dim}", fix=f"use --precomp-dim {width}")
        return ds
    if wants_features:
        raise ConfigError(f"{root} holds raw images, but the model's image encoder is 'precomp'",
                          fix="use --image-encoder cnn (or hf with --vision-backbone)")
    if fmt == "karpathy":
        from meet.data.karpathy import load_karpathy
        return load_karpathy(root, split, image_size=model_cfg.image_size, image_dir=image_dir)
    from meet.data.karpathy import load_image_folder
    return load_image_folder(root, image_size=model_cfg.image_size)
