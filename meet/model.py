"""MEET = image encoder + text encoder + per-modality hash heads + PQ codebooks.

The module returns a dict of named outputs (open_clip's habit), so losses and tools pick
what they need by name:

- ``image_dense`` / ``text_dense``: (B, embed_dim) L2-normalised joint embeddings;
- ``image_hash`` / ``text_hash``: (B, n_bits) continuous hash features in [-1, 1];
- ``hash_detached``: whether the hash heads saw a detached embedding (config switch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from meet.config import ModelConfig
from meet.data.vocab import Vocabulary
from meet.encoders import build_image_encoder, build_text_encoder
from meet.quantization import ProductQuantizer


class HashHead(nn.Module):
    """``Linear(embed_dim -> n_bits) + tanh``: the continuous hash feature ``h``."""

    def __init__(self, embed_dim: int, n_bits: int):
        super().__init__()
        self.linear = nn.Linear(embed_dim, n_bits)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(embedding))


class MEET(nn.Module):
    """The whole Stage I model. Build with :func:`build_model`."""

    def __init__(self, cfg: ModelConfig, vocab: Vocabulary | None = None,
                 saved_dir: Path | None = None):
        super().__init__()
        self.cfg = cfg
        self.vocab = vocab
        self.image_encoder = build_image_encoder(cfg, saved_dir=saved_dir)
        self.text_encoder = build_text_encoder(cfg, vocab=vocab, saved_dir=saved_dir)
        hash_input_dim = cfg.hash_input_dim or cfg.embed_dim
        self.image_hash = HashHead(hash_input_dim, cfg.n_bits)
        self.text_hash = HashHead(hash_input_dim, cfg.n_bits)
        self.image_pq = ProductQuantizer(cfg.n_bits, cfg.n_codebooks, cfg.codebook_size)
        self.text_pq = ProductQuantizer(cfg.n_bits, cfg.n_codebooks, cfg.codebook_size)

    def _hash_input(self, dense: torch.Tensor) -> torch.Tensor:
        return dense.detach() if self.cfg.detach_hash else dense

    def encode_image(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images (a batch in the image encoder's input format) -> dense + hash."""
        dense, own = _dense_and_hash_source(self.image_encoder, images)
        return {"dense": dense, "hash": self.image_hash(self._hash_input(own))}

    def encode_text(self, text_batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A tokenized batch (from ``text_encoder.tokenize``) -> dense + hash."""
        dense, own = _dense_and_hash_source(self.text_encoder, **text_batch)
        return {"dense": dense, "hash": self.text_hash(self._hash_input(own))}

    def forward(self, images: torch.Tensor, text_batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        image = self.encode_image(images)
        text = self.encode_text(text_batch)
        return {"image_dense": image["dense"], "text_dense": text["dense"],
                "image_hash": image["hash"], "text_hash": text["hash"],
                "hash_detached": self.cfg.detach_hash}

    def hash_parameters(self) -> list[nn.Parameter]:
        """Parameters of the hash heads (they train with their own learning rate)."""
        return list(self.image_hash.parameters()) + list(self.text_hash.parameters())

    def encoder_parameters(self) -> list[nn.Parameter]:
        hash_ids = {id(p) for p in self.hash_parameters()}
        return [p for p in self.parameters() if id(p) not in hash_ids and p.requires_grad]


def _dense_and_hash_source(encoder: nn.Module, *args: Any, **kwargs: Any
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense, what the hash head reads). Our towers embed once and the hash head reads the
    dense embedding. A converted release model with an ESA reranker has two embeddings per
    item (``embed_pair`` of :mod:`meet.encoders.release_towers`): ESA's is ``dense`` (what
    Stage 3 ranks by), MEET's own is what the release's hash heads were trained on."""
    if hasattr(encoder, "embed_pair"):
        return encoder.embed_pair(*args, **kwargs)
    dense = encoder(*args, **kwargs)
    return dense, dense


def build_model(cfg: ModelConfig, vocab: Vocabulary | None = None,
                saved_dir: Path | None = None) -> MEET:
    """The factory: a MEET model for ``cfg``; ``saved_dir`` rebuilds pretrained
    architectures from a checkpoint's saved configs instead of their hub path."""
    if cfg.text_encoder == "bigru" and vocab is not None:
        cfg.vocab_size = len(vocab)
    return MEET(cfg, vocab=vocab, saved_dir=saved_dir)
