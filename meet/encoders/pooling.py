"""The common head of every encoder: project each position, pool by attention, normalise.

METHOD.md describes both towers the same way: per-position features (regions, grid cells,
patches or tokens) go through ``fc`` plus a residual 2-layer MLP into the joint space, an
attention pooling (a linear scorer, softmax over positions, weighted sum) makes one vector
per item, and L2 normalisation puts it on the unit sphere where the cosine is the dot
product. Keeping that head in one module means the image and text towers cannot drift
apart, and the app reads the attention weights from one place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectAndPool(nn.Module):
    """``(batch, n_positions, in_dim)`` features -> ``(batch, embed_dim)`` unit vectors.

    Projection: ``y = fc(x)``, then ``y = y + mlp(y)`` with a 2-layer MLP of hidden size
    ``embed_dim // 2`` (VSE infinity's width). The MLP is residual, so the head only has to
    learn a correction on top of the linear projection. No BatchNorm inside the head: its batch statistics
    would mix padded positions into real ones and break padding invariance.

    Pooling: a bias-free ``Linear(embed_dim, 1)`` scores each position (a bias would get
    no gradient: the softmax is shift invariant), padded positions get the
    lowest finite score, a softmax over positions gives the weights, and the embedding is
    the weighted sum. A finite fill (not ``-inf``) keeps a fully padded row finite (uniform
    weights) instead of NaN; callers never send one, tokenizers emit at least one token.
    """

    def __init__(self, in_dim: int, embed_dim: int):
        super().__init__()
        if in_dim < 1 or embed_dim < 2:
            raise ValueError(f"ProjectAndPool needs in_dim >= 1 and embed_dim >= 2, "
                             f"got {in_dim} and {embed_dim}")
        self.in_dim = in_dim
        self.embed_dim = embed_dim
        self.fc = nn.Linear(in_dim, embed_dim)
        hidden = max(1, embed_dim // 2)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, embed_dim))
        self.scorer = nn.Linear(embed_dim, 1, bias=False)  # softmax ignores a constant

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """``(batch, n_positions, in_dim)`` -> ``(batch, n_positions, embed_dim)``."""
        projected = self.fc(features)
        return projected + self.mlp(projected)

    def attention_weights(self, projected: torch.Tensor,
                          mask: torch.Tensor | None) -> torch.Tensor:
        """Softmax weights ``(batch, n_positions)``; exactly 0 where ``mask`` is False."""
        scores = self.scorer(projected).squeeze(-1)
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None,
                return_weights: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Embed and pool.

        Args:
            features: ``(batch, n_positions, in_dim)`` float.
            mask: ``(batch, n_positions)`` bool, True for real positions; None = all real.
            return_weights: also return the attention weights ``(batch, n_positions)``
                (they sum to 1 per row and are 0 on padding), for visualisation.

        Returns:
            ``(batch, embed_dim)`` L2-normalised embeddings, and the weights if asked.
        """
        if features.dim() != 3 or features.shape[-1] != self.in_dim:
            raise ValueError(f"ProjectAndPool expects (batch, n_positions, {self.in_dim}) "
                             f"features, got shape {tuple(features.shape)}")
        if mask is not None:
            if mask.shape != features.shape[:2]:
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match features "
                                 f"{tuple(features.shape[:2])}")
            mask = mask.to(torch.bool)
        projected = self.project(features)
        weights = self.attention_weights(projected, mask)
        pooled = torch.einsum("bt,btd->bd", weights.to(projected.dtype), projected)
        embedding = F.normalize(pooled, dim=-1)
        if return_weights:
            return embedding, weights
        return embedding
