"""Encoder factory: build the image and text towers by name from a :class:`ModelConfig`.

Every encoder returns L2-normalised ``(batch, embed_dim)`` embeddings; those trained here end
in the same :class:`~meet.encoders.pooling.ProjectAndPool` head. The common surface:

* image encoders: ``preprocess(pil_images) -> Tensor`` and
  ``forward(images, return_weights=False)``;
* text encoders: ``tokenize(texts) -> dict[str, Tensor]`` and
  ``forward(**batch, return_weights=False)``;
* both: ``save_extra(directory)`` writes what a rebuild needs besides the weights and the
  config, and ``embed_dim``.

A checkpoint is rebuilt without the original hub name or path: pass ``saved_dir`` (the
folder ``save_extra`` wrote into) and the architecture is built from those files with
random weights, which the caller then replaces with the checkpoint's state dict.
``transformers`` is imported only when an ``hf``/``bert``/``clip`` encoder is built. The ``clip``
towers (:mod:`.clip`) are a pretrained CLIP model's own, frozen, with no pooling head:
``meet.fit_codes`` fits MEET's codes on them.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from meet.config import RELEASE_ENCODERS, ModelConfig
from meet.data.vocab import Vocabulary
from meet.encoders.image_cnn import CNNGridEncoder
from meet.encoders.image_precomp import PrecompRegionEncoder
from meet.encoders.pooling import ProjectAndPool
from meet.encoders.text_bigru import BiGRUTextEncoder
from meet.errors import ConfigError

IMAGE_ENCODERS = ("precomp", "cnn", "hf", "clip", *RELEASE_ENCODERS)
"""Names accepted by ``ModelConfig.image_encoder`` (the ``release_*`` towers are ports of the
MEET release, built only from a folder that :mod:`meet.convert` wrote)."""
TEXT_ENCODERS = ("bigru", "bert", "clip", *RELEASE_ENCODERS)
"""Names accepted by ``ModelConfig.text_encoder``."""

__all__ = ["IMAGE_ENCODERS", "TEXT_ENCODERS", "ProjectAndPool", "build_image_encoder",
           "build_text_encoder"]


def build_image_encoder(cfg: ModelConfig, saved_dir: Path | None = None) -> nn.Module:
    """The image tower named by ``cfg.image_encoder``.

    ``saved_dir``: a checkpoint folder written by ``save_extra``; the ``hf`` backbone is
    then built from its saved config (random init) instead of ``cfg.vision_backbone``.
    """
    name = cfg.image_encoder
    if name == "precomp":
        return PrecompRegionEncoder(cfg)
    if name == "cnn":
        return CNNGridEncoder(cfg)
    if name == "hf":
        from meet.encoders.image_hf import build_hf_image_encoder
        return build_hf_image_encoder(cfg, saved_dir)
    if name == "clip":
        from meet.encoders.clip import build_clip_image_encoder
        return build_clip_image_encoder(cfg, saved_dir)
    if name in RELEASE_ENCODERS:
        from meet.encoders.release_towers import build_release_image_encoder
        return build_release_image_encoder(cfg, saved_dir)
    raise ConfigError(f"unknown image_encoder {name!r}",
                      fix=f"choose one of {', '.join(IMAGE_ENCODERS)}")


def build_text_encoder(cfg: ModelConfig, vocab: Vocabulary | None = None,
                       saved_dir: Path | None = None) -> nn.Module:
    """The text tower named by ``cfg.text_encoder``.

    ``vocab`` is required for ``bigru`` (built from the training captions, or loaded from
    the checkpoint's ``vocab.json``). ``saved_dir`` as in :func:`build_image_encoder`.
    """
    name = cfg.text_encoder
    if name == "bigru":
        if vocab is None:
            raise ConfigError("text_encoder='bigru' needs a vocabulary",
                              fix="pass vocab=Vocabulary.build(train captions) or "
                                  "Vocabulary.load(checkpoint/vocab.json)")
        return BiGRUTextEncoder(cfg, vocab)
    if name == "bert":
        from meet.encoders.text_bert import build_bert_text_encoder
        return build_bert_text_encoder(cfg, saved_dir)
    if name == "clip":
        from meet.encoders.clip import build_clip_text_encoder
        return build_clip_text_encoder(cfg, saved_dir)
    if name in RELEASE_ENCODERS:
        from meet.encoders.release_towers import build_release_text_encoder
        return build_release_text_encoder(cfg, saved_dir)
    raise ConfigError(f"unknown text_encoder {name!r}",
                      fix=f"choose one of {', '.join(TEXT_ENCODERS)}")
