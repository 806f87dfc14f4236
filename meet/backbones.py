"""What ``--backbone`` (``meet.fit_codes``) and a CLIP ``--checkpoint`` (the app) name: a frozen
dual encoder, found as a local folder or on the Hugging Face Hub.

Two kinds:

* ``clip``: a transformers CLIP model (``config.json`` with ``model_type`` ``clip``,
  ``model.safetensors``, tokenizer and image-processor files), e.g.
  ``openai/clip-vit-base-patch32`` or a folder saved by ``CLIPModel.save_pretrained``;
* ``meet``: a MEET checkpoint (or training run) folder, or a Hub repo of one, whose dense
  towers act as the frozen dual encoder.

A Hub id is looked up only when no such local path exists (as for every checkpoint). Its
``config.json`` is fetched first, alone, to tell the kinds apart; a CLIP repo is then
downloaded through :func:`meet.hub.snapshot` with an allow-list of exactly the files a CLIP
folder needs (:data:`meet.encoders.clip.CLIP_FILES`: no pickles, no TensorFlow/Flax or
open_clip copies of the weights). A repo whose weights are only a pickle is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from meet.checkpoint import POINTER, is_meet_checkpoint, resolve_checkpoint
from meet.encoders.clip import CLIP_FILES, is_clip_folder, weight_files
from meet.errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class Backbone:
    """A resolved backbone: its ``kind`` (``clip``/``meet``), the local ``folder`` to read, and
    the ``spec`` the user gave (what a checkpoint records)."""

    kind: str
    folder: Path
    spec: str

    def identity(self) -> str:
        """A digest that changes when the encoder's files do: a MEET checkpoint's weight
        fingerprint; for CLIP, its config and tokenizer/processor texts and each weight
        file's resolved path, size and modification time (a Hub snapshot's blobs are named
        by their content hash). What caches of its embeddings are keyed by."""
        if self.kind == "meet":
            from meet.search.index import checkpoint_fingerprint

            return "meet:" + checkpoint_fingerprint(self.folder)
        digest = hashlib.sha256(b"clip:")
        for name in ("config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                     "vocab.json", "merges.txt"):
            path = self.folder / name
            if path.is_file():
                digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
        for path in weight_files(self.folder):
            stat, real = path.stat(), path.resolve()
            digest.update(f"{path.name}:{real}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        return digest.hexdigest()


def _kind_of(folder: Path) -> str | None:
    if is_clip_folder(folder):
        return "clip"
    if is_meet_checkpoint(folder) or (folder / POINTER).is_file():
        return "meet"
    return None


def resolve_backbone(spec: str | Path) -> Backbone:
    """The backbone ``spec`` names (a local folder, else a Hub id ``org/name[@revision]``), or a
    :class:`~meet.errors.ConfigError` / :class:`~meet.errors.CheckpointError` saying why not."""
    text = str(spec)
    folder = Path(spec)
    if folder.exists():
        if not folder.is_dir():
            raise ConfigError(f"--backbone {text} is a file, not a model folder",
                              fix="pass a CLIP model folder, a MEET checkpoint folder or a Hub id "
                                  "(a MEET release file: convert it first with python -m meet.convert release)")
        kind = _kind_of(folder)
        if kind is None:
            raise ConfigError(f"{folder} is neither a CLIP model folder (config.json with model_type 'clip') nor a "
                              "MEET checkpoint", fix="pass a folder saved by CLIPModel.save_pretrained, a MEET "
                                                     "checkpoint or run folder, or a Hub id")
        if kind == "clip":
            weight_files(folder)  # a pickle-only or weightless folder is refused now, not after the data loads
        return Backbone(kind, folder if kind == "clip" else resolve_checkpoint(folder), text)
    from meet import hub

    parsed = hub.parse_spec(text)
    if parsed is None:
        raise ConfigError(f"--backbone {text}: no such folder, and not a Hub repo id (org/name[@revision])",
                          fix="check the path, or give a Hub id such as openai/clip-vit-base-patch32")
    config_only = hub.snapshot(parsed.repo_id, parsed.revision, allow_patterns=["config.json"])
    if is_clip_folder(config_only):
        folder = hub.snapshot(parsed.repo_id, parsed.revision, allow_patterns=CLIP_FILES)
        try:
            weight_files(folder)
        except ConfigError as exc:
            remote = hub._remote_files(parsed, folder.name, None) or []
            pickles = [name for name in remote if name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
            if pickles:
                raise CheckpointError(f"the Hub repo {parsed} is a CLIP model whose weights are only pickles "
                                      f"({', '.join(pickles[:3])}), which MEET never loads (unpickling can run "
                                      "code)", fix="use a revision or copy with model.safetensors") from exc
            raise CheckpointError(f"the Hub repo {parsed} is a CLIP model without model.safetensors ({exc.message})",
                                  fix="use a revision or copy with model.safetensors") from exc
        return Backbone("clip", folder, text)
    return Backbone("meet", hub.resolve(parsed), text)


def is_clip_spec(spec: str | Path) -> bool:
    """Whether ``spec`` names a CLIP backbone rather than a MEET checkpoint: a local CLIP
    folder, or a Hub id whose ``config.json`` (fetched alone, or found in the cache
    offline) says ``clip``. Anything that cannot be told (a release file, a missing path,
    an unreachable Hub) is False, and loading it as a checkpoint then says what is wrong."""
    folder = Path(spec)
    if folder.exists():
        return folder.is_dir() and is_clip_folder(folder)
    from meet import hub

    parsed = hub.parse_spec(str(spec))
    if parsed is None:
        return False
    try:
        return is_clip_folder(hub.snapshot(parsed.repo_id, parsed.revision, allow_patterns=["config.json"]))
    except CheckpointError:
        return False


def describe(backbone: Backbone) -> str:
    """One line for logs: kind, spec and where it was read."""
    where = "" if str(backbone.folder) == backbone.spec else f" ({backbone.folder})"
    return f"{backbone.kind} backbone {backbone.spec}{where}"

