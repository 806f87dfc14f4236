"""Checkpoints: safetensors weights + JSON config, written atomically.

A checkpoint is a folder::

    config.json            the whole MEETConfig (the model is rebuilt from it alone)
    model.safetensors      encoder and hash-head weights
    codebooks.safetensors  the image and text PQ codebooks
    vocab.json             BiGRU vocabulary (bigru models)
    tokenizer/, *_config.json, image_processor/   what pretrained encoders need
    trainer.json, optimizer.safetensors            only in training checkpoints (resume)

A training run keeps its checkpoints under ``RUN/checkpoints/epoch-NNN`` and names the
best and the last one in ``RUN/checkpoint.json``. Each folder is written under a
temporary name, flushed, then renamed; ``checkpoint.json`` is replaced atomically after
that. A crash at any moment leaves the previous checkpoint and pointer intact.
No pickle is ever read: weights go through safetensors, everything else is JSON.
"""

from __future__ import annotations

import fnmatch
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from meet.cli import atomic_folder, atomic_write_json
from meet.config import CONFIG_KEYS, MEETConfig, validate
from meet.data.vocab import Vocabulary
from meet.errors import CheckpointError, MEETError
from meet.model import MEET, build_model

POINTER = "checkpoint.json"
_PQ_PREFIXES = ("image_pq.", "text_pq.")

SAFE_PATTERNS = ("*.safetensors", "*.json", "*.jsonl", "*.txt", "*.md", "tokenizer.model",
                 "*spiece.model", "*sentencepiece*.model")
"""The files of a checkpoint that are ever shared or downloaded (meet.hub): weights as
safetensors, configs, tokenizer and text files (sentencepiece ``.model`` files are
protobuf, not pickle)."""
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt", "*.joblib", "*.npy", "*.npz")
"""Formats that may hold pickles: never shared or downloaded, even if a safe pattern matched."""
TRAINING_STATE = tuple(p for name in ("optimizer.safetensors", "optimizer.json", "trainer.json")
                       for p in (name, f"*/{name}"))
"""Resume state of a training checkpoint: not part of a published model."""

FAULT_PAUSE_ENV = "MEET_FAULT_PAUSE_S"
"""Test hook, unset in normal use: seconds :func:`save_checkpoint` sleeps at two points
(inside the temporary folder once the weights are written, and right after the rename,
before the caller updates ``checkpoint.json``), so ``tests/test_faults.py`` can SIGKILL
training inside those windows reliably instead of hoping to hit a few milliseconds."""


def _fault_pause() -> None:
    """Sleep ``$MEET_FAULT_PAUSE_S`` seconds when the tests set it; no-op otherwise."""
    try:
        seconds = float(os.environ.get(FAULT_PAUSE_ENV, "") or 0)
    except ValueError:
        return
    if seconds > 0:
        time.sleep(seconds)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` atomically (:func:`meet.cli.atomic_write_json`)."""
    atomic_write_json(path, data)


def save_checkpoint(model: MEET, cfg: MEETConfig, folder: Path,
                    trainer_state: dict[str, Any] | None = None,
                    optimizer: torch.optim.Optimizer | None = None,
                    files: dict[str, str] | None = None) -> Path:
    """Write a complete checkpoint folder atomically (:func:`meet.cli.atomic_folder`:
    flushed, then renamed into place); returns ``folder``. ``files``: extra text files by
    name (a model card ``README.md``), written inside the same atomic step."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        weights = {k: v for k, v in state.items() if not k.startswith(_PQ_PREFIXES)}
        codebooks = {k: v for k, v in state.items() if k.startswith(_PQ_PREFIXES)}
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "meet-1"})
        _fault_pause()
        save_file(codebooks, str(tmp / "codebooks.safetensors"), metadata={"format": "meet-1"})
        (tmp / "config.json").write_text(cfg.to_json())
        if model.vocab is not None:
            model.vocab.save(tmp / "vocab.json")
        for encoder in (model.image_encoder, model.text_encoder):
            encoder.save_extra(tmp)
        if trainer_state is not None:
            (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=2, sort_keys=True))
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "optimizer.json").write_text(json.dumps(meta))
        for name, text in (files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        for path in tmp.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)  # safetensors writes 0600
    _fault_pause()
    return folder


def matches(name: str, patterns: Any) -> bool:
    """Whether the POSIX path ``name`` matches any of the glob ``patterns``."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def is_meet_checkpoint(folder: str | Path) -> bool:
    """True for a MEET checkpoint folder: ``config.json`` made of MEET's sections (``model``
    among them, and nothing else) beside ``model.safetensors`` and
    ``codebooks.safetensors``. False for anything else, e.g. a transformers model, whose
    config has ``model_type`` instead. Cheap: reads one small JSON file, no weights."""
    folder = Path(folder)
    if not ((folder / "model.safetensors").is_file() and (folder / "codebooks.safetensors").is_file()):
        return False
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get("model"), dict) and set(config) <= CONFIG_KEYS


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A checkpoint folder from either a checkpoint folder or a training run folder (its
    ``which`` checkpoint). Release files and Hub ids are located first by
    :func:`meet.inference.locate`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}",
                              fix="pass a checkpoint folder, a training run folder, a MEET release file or a "
                                  "Hub repo id org/name[@revision]")
    if (path / "model.safetensors").is_file():
        return path
    pointer = path / POINTER
    if pointer.is_file():
        try:
            target = json.loads(pointer.read_text())[which]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{pointer} is unreadable or has no {which!r} entry",
                                  fix="the run did not finish an epoch; train again") from exc
        if not isinstance(target, str) or Path(target).is_absolute() or ".." in Path(target).parts:
            raise CheckpointError(f"{pointer}: {which!r} is {target!r}, not a folder inside the run",
                                  fix="the pointer file was edited; train again or point to a "
                                      "checkpoint folder")
        return path / target
    raise CheckpointError(f"{path} holds no model.safetensors and no {POINTER}",
                          fix="point to a training run folder (RUN) or a checkpoint inside it")


def read_config(folder: Path) -> MEETConfig:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"missing {path}", fix="the checkpoint folder is incomplete")
    try:
        return validate(MEETConfig.from_dict(json.loads(path.read_text(encoding="utf-8"))))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable JSON file: {exc}",
                              fix="the checkpoint is corrupt; re-save it or retrain") from exc
    except MEETError as exc:
        raise CheckpointError(f"{path}: {exc.message}", fix=exc.fix) from exc


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, or :class:`CheckpointError` naming the file."""
    if not path.is_file():
        raise CheckpointError(f"missing {path}", fix="the checkpoint folder is incomplete")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})",
                              fix="the file is truncated or not a safetensors file; re-save or retrain") from exc


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    which: str = "best") -> tuple[MEET, MEETConfig, Path]:
    """Rebuild a model from a checkpoint (or run) folder: (model, config, folder)."""
    folder = resolve_checkpoint(path, which)
    cfg = read_config(folder)
    vocab = None
    if cfg.model.text_encoder == "bigru":
        vocab = Vocabulary.load(folder / "vocab.json")
    files = [folder / "model.safetensors", folder / "codebooks.safetensors"]
    check_weight_shapes(folder, _build(cfg, vocab, folder, "meta").state_dict(), stored_shapes(files))
    model = _build(cfg, vocab, folder, "cpu")
    state = load_tensors(files[0])
    state.update(load_tensors(files[1]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise CheckpointError(f"weights in {folder} do not match its config.json: {' '.join(first)}",
                              fix="the config and weights come from different models") from exc
    return model.to(device).eval(), cfg, folder


def _build(cfg: MEETConfig, vocab: Vocabulary | None, folder: Path, device: str) -> MEET:
    """``cfg``'s model on ``device``; on ``meta`` it holds shapes and no memory, which is how
    a config is checked against the weight files before anything is allocated."""
    try:
        with torch.device(device):
            return build_model(cfg.model, vocab=vocab, saved_dir=folder)
    except MEETError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot rebuild the model of {folder}: {exc}",
                              fix="its config.json does not describe a model this version of meet "
                                  "can build; re-save it or retrain") from exc


def stored_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in safetensors ``files``, from their headers alone."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        if not path.is_file():
            raise CheckpointError(f"missing {path}", fix="the checkpoint folder is incomplete")
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file ({exc})",
                                  fix="the file is truncated or not a safetensors file; re-save or retrain") from exc
    return shapes


def check_weight_shapes(folder: Path, model_state: dict[str, torch.Tensor],
                        stored: dict[str, tuple[int, ...]]) -> None:
    """Refuse a config whose model does not match the weights before that model is built:
    a size edited to 2**40 would otherwise be allocated (and the process killed by the
    kernel's out-of-memory killer) before ``load_state_dict`` could notice."""
    expected = {name: tuple(value.shape) for name, value in model_state.items()}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    differ = sorted(name for name in set(expected) & set(stored) if expected[name] != stored[name])
    if not (missing or unexpected or differ):
        return
    parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
             f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
             f"{len(differ)} of another shape (e.g. {differ[0]}: config {expected[differ[0]]}, "
             f"file {stored[differ[0]]})" if differ else ""]
    raise CheckpointError(f"weights in {folder} do not match its config.json: "
                          + ", ".join(part for part in parts if part),
                          fix="the config and weights come from different models")


def export_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Copy a run's best checkpoint (or a checkpoint) to ``target`` without the training
    state (optimizer, trainer history): what ships, e.g. ``assets/shapes-demo``."""
    model, cfg, _ = load_checkpoint(source)
    return save_checkpoint(model, cfg, Path(target))


def read_pointer(run: Path) -> dict[str, Any]:
    pointer = Path(run) / POINTER
    if not pointer.is_file():
        return {}
    try:
        return json.loads(pointer.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{pointer} is corrupt: {exc}", fix="delete the run folder and train again") from exc


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (safetensors) and JSON metadata."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_state(folder: Path, optimizer: torch.optim.Optimizer) -> None:
    """Restore :func:`save_checkpoint`'s optimizer files into ``optimizer``."""
    tensors = load_tensors(Path(folder) / "optimizer.safetensors")
    try:
        meta = json.loads((Path(folder) / "optimizer.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{folder}/optimizer.json is unreadable: {exc}") from exc
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, slots in meta["scalars"].items():
        state.setdefault(int(index), {}).update(slots)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
