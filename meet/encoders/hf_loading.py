"""Shared helpers for the transformers-backed encoders (``hf`` image, ``bert`` text).

``transformers`` takes seconds to import, so it is imported here, inside functions, only
when an ``hf``/``bert`` encoder is built. Loading errors (a missing folder, a hub name with
no network) become :class:`ConfigError` naming the config field to fix, and a frozen
backbone is handled the same way by both towers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import torch
from torch import nn

from meet.errors import CheckpointError, ConfigError

T = TypeVar("T")


def import_transformers() -> ModuleType:
    """``import transformers`` with a clear error when the package is missing."""
    try:
        import transformers
    except ImportError as exc:
        raise ConfigError("the hf/bert encoders need the 'transformers' package",
                          fix="pip install transformers, or use cnn/precomp and bigru") from exc
    return transformers


def load_pretrained(loader: Callable[..., T], source: str | Path, field: str,
                    **kwargs: Any) -> T:
    """Call ``loader(source, **kwargs)`` (a ``from_pretrained``), turning the many
    exceptions transformers raises for a bad path or an unreachable hub into one
    :class:`ConfigError` that names the config ``field``."""
    try:
        return loader(str(source), **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"cannot load {field}={str(source)!r}: {exc}",
            fix=f"set {field} to a local folder holding config.json and the weights "
                "(nothing can be downloaded without a network)") from exc


def read_saved_json(path: Path) -> dict[str, Any]:
    """Read a JSON object that :meth:`save_extra` wrote; :class:`CheckpointError` if not."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}",
                              fix="the checkpoint folder is incomplete; save it again")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint file {path} must hold a JSON object")
    return data


def write_config_json(config: Any, path: Path) -> None:
    """Write a transformers config (``PreTrainedConfig``) as one JSON file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_json_string(use_diff=False), encoding="utf-8")


def config_from_saved_json(path: Path) -> Any:
    """Rebuild any transformers config from :func:`write_config_json`'s file, picking
    the class by its ``model_type`` (as ``AutoConfig`` does)."""
    transformers = import_transformers()
    data = read_saved_json(path)
    model_type = data.pop("model_type", None)
    if model_type not in transformers.CONFIG_MAPPING:
        raise CheckpointError(f"{path}: unknown or missing model_type {model_type!r}",
                              fix="the checkpoint was written by another transformers "
                                  "version, or the file was edited")
    return transformers.CONFIG_MAPPING[model_type].from_dict(data)


def set_frozen(module: nn.Module, frozen: bool) -> None:
    """Turn gradients of every parameter of ``module`` off (``frozen``) or on."""
    for parameter in module.parameters():
        parameter.requires_grad_(not frozen)


class FrozenBackboneMixin:
    """For encoders with a ``backbone`` attribute and a ``frozen_backbone`` flag.

    A frozen backbone is a fixed feature extractor: it stays in eval mode even when the
    encoder trains (otherwise BatchNorm running statistics would drift and dropout would
    add noise to features nobody trains), and its forward runs without autograd
    (saves the activation memory).
    """

    backbone: nn.Module
    frozen_backbone: bool

    def train(self, mode: bool = True):  # type: ignore[override]
        super().train(mode)  # type: ignore[misc]
        if self.frozen_backbone:
            self.backbone.eval()
        return self

    def backbone_grad_enabled(self) -> bool:
        return torch.is_grad_enabled() and not self.frozen_backbone
