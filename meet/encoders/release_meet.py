"""The MEET release's own towers (iLearn-Lab/TCSVT25-MEET), ported for inference.

Two variants, one per folder of the release:

- ``at_bert/`` (BERT): regions -> ``FC_MLP`` (a linear map plus a 2-layer MLP with
  BatchNorm) -> one ``TransformerEncoder`` layer -> mix of max-2 pooling (before the layer)
  and average pooling (after it) by ``residual_weight`` -> L2 norm. Captions: BERT ->
  ``Linear(768, embed)`` -> the same layer and pooling.
  (``EncoderImageAggr_hq`` / ``EncoderText_BERT`` in ``lib/encoders.py``.)
- ``at/`` (BiGRU): regions -> ``Linear`` -> L2 norm per region -> ``VisualSA`` (attention
  guided by the mean region). Captions: word embeddings -> BiGRU (the two directions
  averaged) -> L2 norm per word -> ``TextSA`` (attention guided by the mean word).
  (``EncoderImage`` / ``EncoderText`` / ``Hash_EncoderImage`` / ``Hash_EncoderText`` in
  ``lib/model.py``, as ``HQ.forward_emb`` chains them.)

Module and parameter names are the release's, so a converted state dict is the release's
keys under a prefix. Only the eval-mode computation is ported (no training, no dropout).

**Batching.** The release's BiGRU caption pooling runs over every padded position of a
batch: its mean word divides by the longest caption's length, so a caption's embedding
depends on the captions it was batched with. Here a caption's embedding is defined as the
release computes it for the caption *alone* (no padding): the mean and the attention run
over its own words only, which is batch independent. Everything else the release computes
is already batch independent in eval mode (padding masks, per-item lengths).

**Verified how.** ``tests/test_release.py`` builds release-format checkpoints with random
weights, converts them and compares every embedding with a plain functional
re-implementation written in the test (per item, no padding): within 1e-4. The released
weights themselves could not be downloaded here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from meet.errors import DataError

MAX_K = 2
"""Positions averaged by the release's max-k pooling (``Maxk_Pooling_Variable(k=2)``)."""
SA_DROPOUT = 0.4
"""Dropout inside VisualSA/TextSA (inactive at inference; kept so the layout matches)."""


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """The release's ``l2norm``: ``x / (||x|| + eps)`` (a zero vector stays zero)."""
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + eps)


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(batch,)`` lengths -> ``(batch, max_len)`` bool, True on real positions."""
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


class MLP(nn.Module):
    """The release's ``MLP`` with BatchNorm: ``Linear -> BN -> ReLU`` for each hidden layer,
    then a plain ``Linear``. Like the release it owns one BatchNorm per layer, the last one
    unused (it is in the state dict). ``(..., in_dim)`` -> ``(..., out_dim)``; eval-mode
    BatchNorm is per position, so padding never mixes into real positions."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, n_layers: int = 2):
        super().__init__()
        inputs = [in_dim] + [hidden_dim] * (n_layers - 1)
        outputs = [hidden_dim] * (n_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(inputs, outputs, strict=True))
        self.bns = nn.ModuleList(nn.BatchNorm1d(o) for o in outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(self.bns[index](x))
        return x.reshape(*shape, x.shape[-1])


class FCMLP(nn.Module):
    """The release's ``FC_MLP``: ``fc(x) + mlp(x)`` (hidden width ``out_dim // 2``)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.mlp = MLP(in_dim, out_dim // 2, out_dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + self.mlp(x)


def relation_layer(embed_dim: int, nhead: int, dropout: float) -> nn.TransformerEncoder:
    """One post-norm ``TransformerEncoderLayer`` (feed-forward width = ``embed_dim``, ReLU),
    as the release builds it; batch-first here (the parameters are the same)."""
    layer = nn.TransformerEncoderLayer(d_model=embed_dim, nhead=nhead, dim_feedforward=embed_dim,
                                       dropout=dropout, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)


def relation_pool(local: torch.Tensor, mask: torch.Tensor, aggr: nn.TransformerEncoder,
                  residual_weight: float) -> torch.Tensor:
    """``w * maxk(local) + (1 - w) * mean(aggr(local))`` over real positions, L2-normalised.

    ``local`` ``(batch, n, dim)``, ``mask`` ``(batch, n)`` bool -> ``(batch, dim)``. Max-k
    takes, per dimension, the mean of the ``min(2, length)`` largest values of the item's
    own positions (the release's ``maxk_pool1d_var``).
    """
    keep = mask.unsqueeze(-1)
    k = min(MAX_K, local.shape[1])
    top = local.masked_fill(~keep, float("-inf")).topk(k, dim=1).values  # (batch, k, dim)
    counts = mask.sum(dim=1).clamp(max=MAX_K)
    top = top.masked_fill(~length_mask(counts, k).unsqueeze(-1), 0.0)
    maxk = top.sum(dim=1) / counts.unsqueeze(-1).to(local.dtype)
    related = aggr(local, src_key_padding_mask=~mask)
    mean = related.masked_fill(~keep, 0.0).sum(dim=1) / mask.sum(dim=1, keepdim=True).to(local.dtype)
    return l2norm(residual_weight * maxk + (1 - residual_weight) * mean)


class BertImageTower(nn.Module):
    """``at_bert``'s ``EncoderImageAggr_hq``: regions ``(batch, n, img_dim)`` -> ``(batch, embed)``.
    Every region is real (the release's ``image_lengths`` are the region counts)."""

    def __init__(self, img_dim: int, embed_dim: int, nhead: int, dropout: float, residual_weight: float):
        super().__init__()
        self.residual_weight = residual_weight
        self.fc = FCMLP(img_dim, embed_dim)
        self.aggr = relation_layer(embed_dim, nhead, dropout)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(regions.shape[:2], dtype=torch.bool, device=regions.device)
        return relation_pool(self.fc(regions), mask, self.aggr, self.residual_weight)


class BertTextTower(nn.Module):
    """``at_bert``'s ``EncoderText_BERT``: wordpiece ids -> ``(batch, embed)``.

    BERT sees ``attention_mask = input_ids != 0`` (the release's), the pooling the first
    ``lengths`` positions."""

    def __init__(self, bert: nn.Module, embed_dim: int, nhead: int, dropout: float,
                 residual_weight: float):
        super().__init__()
        self.residual_weight = residual_weight
        self.bert = bert
        self.linear = nn.Linear(bert.config.hidden_size, embed_dim)
        self.aggr = relation_layer(embed_dim, nhead, dropout)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=(input_ids != 0).long()).last_hidden_state
        mask = length_mask(lengths, input_ids.shape[1])
        return relation_pool(self.linear(hidden), mask, self.aggr, self.residual_weight)


class VisualSA(nn.Module):
    """The release's ``VisualSA``: attention over regions guided by the mean region.

    ``embedding_local``'s BatchNorm has one channel per region *slot* (``n_regions``), so
    the region count is fixed by the weights."""

    def __init__(self, embed_dim: int, n_regions: int):
        super().__init__()
        self.embedding_local = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.BatchNorm1d(n_regions),
                                             nn.Tanh(), nn.Dropout(SA_DROPOUT))
        self.embedding_global = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.BatchNorm1d(embed_dim),
                                              nn.Tanh(), nn.Dropout(SA_DROPOUT))
        self.embedding_common = nn.Sequential(nn.Linear(embed_dim, 1))

    def forward(self, local: torch.Tensor, raw_global: torch.Tensor) -> torch.Tensor:
        """``local`` ``(batch, n_regions, dim)``, ``raw_global`` ``(batch, dim)`` -> ``(batch, dim)``."""
        common = self.embedding_local(local) * self.embedding_global(raw_global).unsqueeze(1)
        weights = torch.softmax(self.embedding_common(common).squeeze(-1), dim=1)
        return l2norm((weights.unsqueeze(-1) * local).sum(dim=1))


class TextSA(nn.Module):
    """The release's ``TextSA`` (no BatchNorm), restricted to each caption's own words: the
    softmax runs over real positions only. With no padding this is the release's result;
    with padding the release's softmax also spreads weight over zero vectors, which only
    rescales the sum, but its mean word (the guide) changes with the batch."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.embedding_local = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.Tanh(), nn.Dropout(SA_DROPOUT))
        self.embedding_global = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.Tanh(), nn.Dropout(SA_DROPOUT))
        self.embedding_common = nn.Sequential(nn.Linear(embed_dim, 1))

    def forward(self, local: torch.Tensor, raw_global: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``local`` ``(batch, L, dim)``, ``raw_global`` ``(batch, dim)``, ``mask`` ``(batch, L)``."""
        common = self.embedding_local(local) * self.embedding_global(raw_global).unsqueeze(1)
        scores = self.embedding_common(common).squeeze(-1).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        return l2norm((weights.unsqueeze(-1) * local).sum(dim=1))


class BiGRUImageTower(nn.Module):
    """``at``'s ``EncoderImage`` + ``Hash_EncoderImage``: regions -> ``(batch, embed)``."""

    def __init__(self, img_dim: int, embed_dim: int, n_regions: int):
        super().__init__()
        self.n_regions = n_regions
        self.fc = nn.Linear(img_dim, embed_dim)
        self.v_global = VisualSA(embed_dim, n_regions)

    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        if regions.shape[1] != self.n_regions:
            raise DataError(f"this model's image tower takes exactly {self.n_regions} regions per image, "
                            f"got {regions.shape[1]}",
                            fix="the release's VisualSA has one BatchNorm channel per region slot; "
                                "use the features it was trained on (BUTD, 36 regions)")
        local = l2norm(self.fc(regions))
        return self.v_global(local, local.mean(dim=1))


def run_bigru(embed: nn.Embedding, rnn: nn.GRU, input_ids: torch.Tensor, lengths: torch.Tensor
              ) -> torch.Tensor:
    """Word ids ``(batch, L)`` -> BiGRU states ``(batch, L, hidden)`` with the two directions
    averaged (zeros past each caption's length), each caption run on its own words."""
    packed = pack_padded_sequence(embed(input_ids), lengths.cpu(), batch_first=True, enforce_sorted=False)
    states, _ = rnn(packed)
    states, _ = pad_packed_sequence(states, batch_first=True, total_length=input_ids.shape[1])
    forward_states, backward_states = states.chunk(2, dim=-1)
    return (forward_states + backward_states) / 2


class BiGRUTextTower(nn.Module):
    """``at``'s ``EncoderText`` + ``Hash_EncoderText``: word ids -> ``(batch, embed)``,
    batch independent (see the module docstring)."""

    def __init__(self, vocab_size: int, word_dim: int, embed_dim: int, n_layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        self.rnn = nn.GRU(word_dim, embed_dim, n_layers, batch_first=True, bidirectional=True)
        self.u_global = TextSA(embed_dim)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        local = l2norm(run_bigru(self.embed, self.rnn, input_ids, lengths))
        mask = length_mask(lengths, input_ids.shape[1])
        mean = local.sum(dim=1) / lengths.unsqueeze(-1).to(local.dtype)
        return self.u_global(local, mean, mask)


def build_meet_image_tower(cfg: Any) -> nn.Module:
    """MEET's image tower of the variant ``cfg.image_encoder``; MEET's own embedding size is
    ``cfg.hash_input_dim or cfg.embed_dim``."""
    dim = cfg.hash_input_dim or cfg.embed_dim
    if cfg.image_encoder == "release_bert":
        return BertImageTower(cfg.precomp_dim, dim, cfg.release_nhead, cfg.release_dropout,
                              cfg.release_residual_weight)
    return BiGRUImageTower(cfg.precomp_dim, dim, cfg.release_regions)


def build_meet_text_tower(cfg: Any, bert: nn.Module | None) -> nn.Module:
    """MEET's text tower of the variant ``cfg.text_encoder`` (``bert``: a ``BertModel``, for
    ``release_bert``)."""
    dim = cfg.hash_input_dim or cfg.embed_dim
    if cfg.text_encoder == "release_bert":
        return BertTextTower(bert, dim, cfg.release_nhead, cfg.release_dropout, cfg.release_residual_weight)
    return BiGRUTextTower(cfg.vocab_size, cfg.word_dim, dim, cfg.gru_layers)
