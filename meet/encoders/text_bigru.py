"""Text tower: word embeddings + bidirectional GRU (VSE++ / SCAN's text encoder).

The vocabulary comes from the training captions (:class:`meet.data.vocab.Vocabulary`) and
is saved by the caller next to the checkpoint. The GRU's hidden size is ``embed_dim`` and
the two directions are averaged (as VSE++ and SCAN do), so every token is an
``embed_dim`` vector before the shared :class:`~meet.encoders.pooling.ProjectAndPool` head.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

from meet.config import ModelConfig
from meet.data.vocab import PAD_ID, UNK_ID, Vocabulary
from meet.encoders.pooling import ProjectAndPool
from meet.errors import ConfigError, DataError


class BiGRUTextEncoder(nn.Module):
    """Captions -> ``(batch, embed_dim)`` unit vectors."""

    def __init__(self, cfg: ModelConfig, vocab: Vocabulary):
        super().__init__()
        if cfg.vocab_size not in (0, len(vocab)):
            raise ConfigError(f"config says vocab_size={cfg.vocab_size} but the vocabulary "
                              f"has {len(vocab)} words",
                              fix="load the vocab.json saved with this checkpoint")
        if cfg.gru_layers < 1 or cfg.word_dim < 1 or cfg.max_text_len < 1:
            raise ConfigError(f"bigru needs gru_layers, word_dim and max_text_len >= 1, got "
                              f"{cfg.gru_layers}, {cfg.word_dim}, {cfg.max_text_len}")
        self.vocab = vocab
        self.max_text_len = cfg.max_text_len
        self.embed_dim = cfg.embed_dim
        self.embedding = nn.Embedding(len(vocab), cfg.word_dim, padding_idx=PAD_ID)
        self.gru = nn.GRU(cfg.word_dim, cfg.embed_dim, num_layers=cfg.gru_layers,
                          batch_first=True, bidirectional=True)
        self.head = ProjectAndPool(cfg.embed_dim, cfg.embed_dim)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Captions -> ``input_ids`` ``(batch, max_len)`` long, 0-padded, and ``lengths``
        ``(batch,)`` long. ``max_len`` is the batch's longest caption, capped at
        ``max_text_len``; a caption with no words becomes one ``<unk>``."""
        if isinstance(texts, str):
            raise DataError("tokenize expects a list of captions, got one string",
                            fix="wrap it in a list")
        encoded = [self.vocab.encode(text)[: self.max_text_len] or [UNK_ID] for text in texts]
        if not encoded:
            raise DataError("tokenize got an empty list of captions")
        rows = [torch.tensor(ids, dtype=torch.long) for ids in encoded]
        lengths = torch.tensor([len(ids) for ids in encoded], dtype=torch.long)
        input_ids = pad_sequence(rows, batch_first=True, padding_value=PAD_ID)
        return {"input_ids": input_ids, "lengths": lengths}

    def token_features(self, input_ids: torch.Tensor, lengths: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """GRU states ``(batch, max_len, embed_dim)`` and the mask ``(batch, max_len)``."""
        if input_ids.dim() != 2 or lengths.shape != input_ids.shape[:1]:
            raise DataError(f"bigru expects input_ids (batch, len) and lengths (batch,), got "
                            f"{tuple(input_ids.shape)} and {tuple(lengths.shape)}",
                            fix="make the batch with tokenize()")
        max_len = input_ids.shape[1]
        packed = pack_padded_sequence(self.embedding(input_ids), lengths.cpu(),
                                      batch_first=True, enforce_sorted=False)
        states, _ = self.gru(packed)
        states, _ = pad_packed_sequence(states, batch_first=True, total_length=max_len)
        forward_states, backward_states = states.chunk(2, dim=-1)
        positions = torch.arange(max_len, device=input_ids.device)
        mask = positions.unsqueeze(0) < lengths.to(input_ids.device).unsqueeze(1)
        return (forward_states + backward_states) / 2, mask

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor,
                return_weights: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(batch, embed_dim)`` and, with ``return_weights``, the token weights
        ``(batch, max_len)`` (0 on padding)."""
        states, mask = self.token_features(input_ids, lengths)
        return self.head(states, mask, return_weights=return_weights)

    def save_extra(self, directory: Path) -> None:
        """Nothing to write: the caller saves the vocabulary (``vocab.json``)."""
