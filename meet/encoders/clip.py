"""The ``clip`` encoder family: a transformers ``CLIPModel`` as two frozen towers.

``image_encoder=clip`` and ``text_encoder=clip`` are the two halves of one CLIP model
(any ``openai/clip-*``, ``laion/CLIP-*`` or a local folder in that layout): the vision
transformer with its ``visual_projection``, and the text transformer with its
``text_projection``. ``dense`` is the L2-normalised projected embedding, exactly what
``CLIPModel.get_image_features`` / ``get_text_features`` return, normalised; MEET's hash
heads read it (``meet.fit_codes`` trains only them and the codebooks). The towers never
train: their weights are frozen and they stay in eval mode.

Each tower carries its own preprocessing: the CLIP image processor (resize of the shorter
side, centre crop, CLIP's mean and std) and the CLIP tokenizer (lower-cased byte-level BPE,
``<|startoftext|>`` ... ``<|endoftext|>``, at most ``max_position_embeddings`` tokens). Gallery
images are therefore read through :meth:`CLIPImageTower.preprocess` from their files
(``own_preprocessing``, see :meth:`meet.inference.MEETModel.encode_dataset_images`), not from
a data set's square uint8 tensors; the uint8 path is kept for batches already at the
tower's input size.

Loading reads only safetensors: a CLIP folder whose weights exist only as a pickle
(``pytorch_model.bin``) is refused, never unpickled. The two towers are built from the
sub-configs of the folder's ``config.json`` (with the model's ``projection_dim``, which
transformers does not copy into them) and given just their own tensors from
``model.safetensors`` (sharded files through its index), so the model is read once per
tower and nothing of the other tower is kept. A checkpoint stores the towers' weights in
its own ``model.safetensors`` plus ``clip_config.json``, ``clip_tokenizer/`` and
``clip_image_processor/``, so it is rebuilt from its folder alone.

On a GPU the towers run under fp16 autocast (the weights stay float32; the embeddings are
returned as float32).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from meet.config import ModelConfig
from meet.data.images import open_image
from meet.encoders.hf_loading import (FrozenBackboneMixin, config_from_saved_json, import_transformers,
                                      set_frozen, write_config_json)
from meet.errors import CheckpointError, ConfigError, DataError

CLIP_CONFIG_FILE = "clip_config.json"
TOKENIZER_DIR = "clip_tokenizer"
PROCESSOR_DIR = "clip_image_processor"
CLIP_FILES = ("config.json", "model.safetensors", "model-*.safetensors", "model.safetensors.index.json",
              "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "vocab.json", "merges.txt")
"""What a CLIP model folder needs, by name (the Hub download of ``meet.backbones`` fetches
only these: no pickles, no TensorFlow/Flax/open_clip copies of the weights)."""
_PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def clip_config_dict(folder: str | Path) -> dict[str, Any] | None:
    """``config.json`` of ``folder`` when it describes a full CLIP model (``model_type``
    ``clip``), else None (no folder, no config, another model)."""
    path = Path(folder) / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("model_type") == "clip" else None


def is_clip_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a transformers CLIP model's ``config.json``."""
    return clip_config_dict(folder) is not None


def read_clip_config(folder: str | Path) -> Any:
    """The ``CLIPConfig`` of a CLIP model folder, or a :class:`ConfigError` saying what it is."""
    folder = Path(folder)
    data = clip_config_dict(folder)
    if data is None:
        raise ConfigError(f"{folder} is not a CLIP model folder (no config.json with model_type 'clip')",
                          fix="pass a folder saved by transformers CLIPModel.save_pretrained, or a Hub id "
                              "such as openai/clip-vit-base-patch32")
    transformers = import_transformers()
    data.pop("model_type", None)
    try:
        return transformers.CLIPConfig.from_dict(data)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"{folder}/config.json is not a readable CLIP config: {exc}") from exc


def tower_config(clip_config: Any, side: str) -> Any:
    """The vision (``side="image"``) or text sub-config, with the model's ``projection_dim``
    (transformers leaves the sub-configs at their class default, 512)."""
    sub = clip_config.vision_config if side == "image" else clip_config.text_config
    sub = type(sub).from_dict(sub.to_dict())
    sub.projection_dim = clip_config.projection_dim
    return sub


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a CLIP folder (one, or the shards its index names)."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise ConfigError(f"{index} is not a readable safetensors index: {exc}") from exc
        unsafe = [name for name in names if Path(name).is_absolute() or ".." in Path(name).parts]
        if unsafe:
            raise ConfigError(f"{index} names shards outside the folder: {unsafe[:3]}",
                              fix="download the model again")
        shards = [folder / name for name in names]
        missing = [str(p) for p in shards if not p.is_file()]
        if missing:
            raise ConfigError(f"{folder}: shards named by its index are missing: {missing[:3]}",
                              fix="download the model again")
        return shards
    if any((folder / name).is_file() for name in _PICKLED_WEIGHTS):
        raise ConfigError(f"{folder} holds CLIP weights only as a pickle (pytorch_model.bin), which MEET never "
                          "loads (unpickling can run code)",
                          fix="use a copy with model.safetensors (transformers: model.save_pretrained(DIR) "
                              "writes one), or a Hub revision that has it")
    raise ConfigError(f"{folder} has no model.safetensors", fix="pass a complete CLIP model folder")


def load_tower_weights(module: nn.Module, folder: Path) -> None:
    """Copy ``module``'s own tensors (``vision_model.*`` + ``visual_projection.*``, or the text
    ones: the names a CLIPModel's state dict uses) from the folder's safetensors files."""
    from safetensors import safe_open

    wanted = set(module.state_dict())
    state: dict[str, torch.Tensor] = {}
    try:
        for path in weight_files(folder):
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is no dict
                    if key in wanted:
                        state[key] = f.get_tensor(key)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for bad files
        raise ConfigError(f"cannot read the CLIP weights in {folder}: {exc}",
                          fix="the file is truncated or not safetensors; download the model again") from exc
    missing = sorted(wanted - set(state))
    if missing:
        raise ConfigError(f"the CLIP weights in {folder} lack {len(missing)} tensors of the "
                          f"{type(module).__name__}, e.g. {missing[:3]}",
                          fix="the weights and config.json come from different models")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"the CLIP weights in {folder} do not fit its config.json: {str(exc).splitlines()[0]}",
                          fix="the weights and config.json come from different models") from exc


def _autocast(x: torch.Tensor) -> Any:
    """fp16 autocast on CUDA (batched inference at half the memory traffic); a no-op on CPU."""
    return torch.autocast("cuda", dtype=torch.float16, enabled=x.is_cuda)


def _no_weights(return_weights: bool) -> None:
    if return_weights:
        raise ConfigError("a CLIP tower has no attention-pooling weights per position (it pools one token)",
                          fix="call without return_weights")


class CLIPImageTower(FrozenBackboneMixin, nn.Module):
    """Images -> ``(batch, projection_dim)`` unit vectors: CLIP's ``image_embeds``, normalised."""

    own_preprocessing = True
    """Gallery images go through :meth:`preprocess` from their files (see the module docstring)."""

    def __init__(self, backbone: nn.Module, processor: Any, clip_config: Any, cfg: ModelConfig):
        super().__init__()
        _check_dim(clip_config, cfg)
        self.backbone = backbone
        self.processor = processor
        self.clip_config = clip_config
        self.embed_dim = cfg.embed_dim
        self.image_size = int(backbone.config.image_size)
        mean, std = processor.image_mean, processor.image_std
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.frozen_backbone = True
        set_frozen(self.backbone, True)
        self.eval()

    def preprocess(self, pil_images: list[Image.Image]) -> torch.Tensor:
        """Decoded images -> float ``pixel_values`` ``(n, 3, S, S)`` by the CLIP image processor."""
        rgb = [open_image(img) for img in pil_images]
        return self.processor(images=rgb, return_tensors="pt")["pixel_values"]

    def forward(self, pixel_values: torch.Tensor, return_weights: bool = False) -> torch.Tensor:
        """``pixel_values`` from :meth:`preprocess`, or uint8 ``(batch, 3, S, S)`` at the tower's
        own size (rescaled and normalised, not resized) -> ``(batch, embed_dim)``."""
        _no_weights(return_weights)
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise DataError(f"a CLIP image tower expects images (batch, 3, H, W), got {tuple(pixel_values.shape)}",
                            fix="make the batch with preprocess()")
        if pixel_values.dtype == torch.uint8:
            if tuple(pixel_values.shape[2:]) != (self.image_size, self.image_size):
                raise DataError(f"uint8 images of {tuple(pixel_values.shape[2:])} px reach a CLIP tower that "
                                f"takes {self.image_size} px", fix="make the batch with preprocess()")
            pixel_values = (pixel_values.float() / 255.0 - self.pixel_mean) / self.pixel_std
        with torch.no_grad(), _autocast(pixel_values):
            embeds = self.backbone(pixel_values=pixel_values).image_embeds
        return F.normalize(embeds.float(), dim=-1)

    def save_extra(self, directory: Path) -> None:
        """``clip_config.json`` and ``clip_image_processor/``: a rebuild needs no CLIP folder."""
        directory = Path(directory)
        write_config_json(self.clip_config, directory / CLIP_CONFIG_FILE)
        self.processor.save_pretrained(str(directory / PROCESSOR_DIR))


class CLIPTextTower(FrozenBackboneMixin, nn.Module):
    """Captions -> ``(batch, projection_dim)`` unit vectors: CLIP's ``text_embeds``, normalised."""

    def __init__(self, backbone: nn.Module, tokenizer: Any, clip_config: Any, cfg: ModelConfig):
        super().__init__()
        _check_dim(clip_config, cfg)
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.clip_config = clip_config
        self.embed_dim = cfg.embed_dim
        self.max_text_len = min(cfg.max_text_len, int(backbone.config.max_position_embeddings))
        if self.max_text_len < 2:
            raise ConfigError(f"CLIP needs max_text_len >= 2 (start and end tokens), got {cfg.max_text_len}")
        self.frozen_backbone = True
        set_frozen(self.backbone, True)
        self.eval()

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Captions -> ``input_ids`` and ``attention_mask``, ``(batch, length)`` long, padded to
        the longest and cut at ``max_text_len`` tokens (the end token is kept)."""
        from meet.encoders.text_bert import _LONE_SURROGATE

        if isinstance(texts, str):
            raise DataError("tokenize expects a list of captions, got one string", fix="wrap it in a list")
        texts = [_LONE_SURROGATE.sub("\ufffd", text) for text in texts]
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_text_len,
                               return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                return_weights: bool = False) -> torch.Tensor:
        _no_weights(return_weights)
        if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
            raise DataError(f"a CLIP text tower expects input_ids and attention_mask of one shape (batch, len), "
                            f"got {tuple(input_ids.shape)} and {tuple(attention_mask.shape)}",
                            fix="make the batch with tokenize()")
        with torch.no_grad(), _autocast(input_ids):
            embeds = self.backbone(input_ids=input_ids, attention_mask=attention_mask).text_embeds
        return F.normalize(embeds.float(), dim=-1)

    def save_extra(self, directory: Path) -> None:
        """``clip_config.json`` and ``clip_tokenizer/``: a rebuild needs no CLIP folder."""
        directory = Path(directory)
        write_config_json(self.clip_config, directory / CLIP_CONFIG_FILE)
        self.tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))


def _check_dim(clip_config: Any, cfg: ModelConfig) -> None:
    if cfg.embed_dim != clip_config.projection_dim:
        raise ConfigError(f"this CLIP model embeds into {clip_config.projection_dim} dims, but embed_dim is "
                          f"{cfg.embed_dim}", fix=f"use --embed-dim {clip_config.projection_dim}")


def _source(cfg: ModelConfig, saved_dir: Path | None) -> tuple[Path, Any, bool]:
    """(folder, CLIPConfig, whether it is a checkpoint folder) to build a tower from."""
    if saved_dir is not None:
        saved_dir = Path(saved_dir)
        config = config_from_saved_json(saved_dir / CLIP_CONFIG_FILE)
        return saved_dir, config, True
    if not cfg.clip_backbone:
        raise ConfigError("image_encoder/text_encoder 'clip' need clip_backbone",
                          fix="make CLIP checkpoints with python -m meet.fit_codes --backbone NAME_OR_DIR")
    folder = Path(cfg.clip_backbone)
    if not folder.is_dir():
        raise ConfigError(f"clip_backbone {cfg.clip_backbone!r} is not a local folder",
                          fix="Hub ids are downloaded by python -m meet.fit_codes (meet.backbones); pass the "
                              "folder it resolves to")
    return folder, read_clip_config(folder), False


def _load(loader: Any, folder: Path, what: str) -> Any:
    try:
        return loader(str(folder))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot load the CLIP {what} in {folder}: {exc}",
                              fix="the folder is incomplete; save or download it again") from exc


def _image_processor(folder: Path, from_checkpoint: bool, image_size: int) -> Any:
    """The folder's CLIP image processor (the PIL implementation: no torchvision needed), or
    CLIP's defaults at the tower's size when a plain CLIP folder has none."""
    transformers = import_transformers()
    klass = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    source = folder / PROCESSOR_DIR if from_checkpoint else folder
    if (source / "preprocessor_config.json").is_file():
        return _load(klass.from_pretrained, source, "image processor")
    if from_checkpoint:
        raise CheckpointError(f"checkpoint folder missing: {source}", fix="the checkpoint is incomplete; save it again")
    return klass(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def build_clip_image_encoder(cfg: ModelConfig, saved_dir: Path | None = None) -> CLIPImageTower:
    """The image tower of the CLIP folder ``cfg.clip_backbone`` (its weights), or (``saved_dir``)
    the same architecture from a checkpoint's saved files, random weights that the caller
    replaces with the checkpoint's."""
    transformers = import_transformers()
    folder, config, from_checkpoint = _source(cfg, saved_dir)
    backbone = transformers.CLIPVisionModelWithProjection(tower_config(config, "image"))
    if not from_checkpoint:
        load_tower_weights(backbone, folder)
    processor = _image_processor(folder, from_checkpoint, int(config.vision_config.image_size))
    return CLIPImageTower(backbone, processor, config, cfg)


def build_clip_text_encoder(cfg: ModelConfig, saved_dir: Path | None = None) -> CLIPTextTower:
    """The text tower and tokenizer, as :func:`build_clip_image_encoder`."""
    transformers = import_transformers()
    folder, config, from_checkpoint = _source(cfg, saved_dir)
    backbone = transformers.CLIPTextModelWithProjection(tower_config(config, "text"))
    if not from_checkpoint:
        load_tower_weights(backbone, folder)
    source = folder / TOKENIZER_DIR if from_checkpoint else folder
    if not (source / "tokenizer.json").is_file() and not (source / "vocab.json").is_file():
        raise (CheckpointError if from_checkpoint else ConfigError)(
            f"no CLIP tokenizer in {source} (tokenizer.json, or vocab.json and merges.txt)",
            fix="the folder is incomplete; save or download it again")
    tokenizer = _load(transformers.AutoTokenizer.from_pretrained, source, "tokenizer")
    return CLIPTextTower(backbone, tokenizer, config, cfg)
