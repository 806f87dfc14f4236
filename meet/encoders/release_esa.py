"""ESA's towers (KevinLight831/ESA), the MEET release's Stage 3 dense scorer, ported for inference.

The MEET release re-ranks its filtered candidates with the similarities of a separately
trained ESA model (``evalrank_cam`` in ``lib/evalution_AHR.py`` loads ESA's
``model_best.pth`` into the release's copy of ESA's ``VSEModel``). Both ESA variants pool
the same way: a linear scorer gives every position one score *per dimension*, a softmax over
the item's positions turns each dimension's scores into weights, and the embedding is the
weighted sum, L2-normalised (``EncoderImageAggr`` / ``EncoderText`` in ``lib/encoders.py`` of
``ESA_BERT`` and ``ESA_BIGRU``):

- image: regions -> ``fc(x) + mlp(x)`` (the MLP with BatchNorm) -> that pooling;
- text (BERT): BERT -> ``Linear(768, embed)`` -> that pooling over the caption's tokens;
- text (BiGRU): word embeddings -> BiGRU, directions averaged -> that pooling.

Parameter names are ESA's. Eval mode only: ESA's training-time random region masking and its
dropout are inactive at inference. The release masks padded positions with a score of
-10000 before the softmax; here they get no weight at all, which is the same for any score
far above -10000 (and every caption alone is unaffected). Verified against a functional
re-implementation in ``tests/test_release.py`` on random weights (the released weights could
not be downloaded here).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from meet.encoders.release_meet import MLP, l2norm, length_mask, run_bigru


def dimension_attention_pool(features: torch.Tensor, scores: torch.Tensor,
                             mask: torch.Tensor | None = None) -> torch.Tensor:
    """``(batch, n, dim)`` features and per-dimension scores, ``mask`` ``(batch, n)`` (None =
    all real) -> ``(batch, dim)``: ``l2norm(sum_n softmax_n(scores) * features)``."""
    if mask is not None:
        scores = scores.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    return l2norm((torch.softmax(scores, dim=1) * features).sum(dim=1))


class ESAImageTower(nn.Module):
    """ESA's ``EncoderImageAggr`` (``precomp_enc_type='basic'``): regions -> ``(batch, embed)``."""

    def __init__(self, img_dim: int, embed_dim: int):
        super().__init__()
        self.fc = nn.Linear(img_dim, embed_dim)
        self.mlp = MLP(img_dim, embed_dim // 2, embed_dim, 2)
        self.linear1 = nn.Linear(embed_dim, embed_dim)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        features = self.fc(regions) + self.mlp(regions)
        return dimension_attention_pool(features, self.linear1(features))


class ESABertTextTower(nn.Module):
    """ESA_BERT's ``EncoderText``: wordpiece ids -> ``(batch, embed)``."""

    def __init__(self, bert: nn.Module, embed_dim: int):
        super().__init__()
        self.bert = bert
        self.linear = nn.Linear(bert.config.hidden_size, embed_dim)
        self.linear1 = nn.Linear(embed_dim, embed_dim)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=(input_ids != 0).long()).last_hidden_state
        features = self.linear(hidden)
        return dimension_attention_pool(features, self.linear1(features),
                                        length_mask(lengths, input_ids.shape[1]))


class ESABiGRUTextTower(nn.Module):
    """ESA_BIGRU's ``EncoderText``: word ids -> ``(batch, embed)``."""

    def __init__(self, vocab_size: int, word_dim: int, embed_dim: int, n_layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        self.rnn = nn.GRU(word_dim, embed_dim, n_layers, batch_first=True, bidirectional=True)
        self.linear1 = nn.Linear(embed_dim, embed_dim)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        features = run_bigru(self.embed, self.rnn, input_ids, lengths)
        return dimension_attention_pool(features, self.linear1(features),
                                        length_mask(lengths, input_ids.shape[1]))


def build_esa_text_tower(cfg: Any, bert: nn.Module | None) -> nn.Module:
    """ESA's text tower of the reranker ``cfg.reranker`` (``bert``: a ``BertModel``, for
    ``esa_bert``), embedding size ``cfg.embed_dim`` (the model's dense size)."""
    if cfg.reranker == "esa_bert":
        return ESABertTextTower(bert, cfg.embed_dim)
    return ESABiGRUTextTower(cfg.reranker_vocab_size, cfg.reranker_word_dim, cfg.embed_dim,
                             cfg.reranker_gru_layers)
