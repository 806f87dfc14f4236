"""Stage I training objective: ranking losses, L_f, L_q, filtering and reweighting.

Every loss here works on an in-batch similarity matrix ``sims`` of shape
``(n_images, n_captions)`` with a boolean ``positives`` matrix of the same shape (the
pair is a match) and a boolean ``ignore`` matrix (a negative that must not be pushed
away: a misleading negative). :class:`MEETLoss` assembles the named terms that
training sums, the way open_clip's losses return named terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from meet.config import LossConfig
from meet.quantization import ProductQuantizer

_NEG = -1e4  # a score no real cosine reaches; used to switch pairs off before max/logsumexp


def hinge_ranking_loss(sims: torch.Tensor, positives: torch.Tensor, ignore: torch.Tensor,
                       margin: float, max_violation: bool,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """Bidirectional triplet ranking loss (VSE++), one term per positive pair.

    For each positive pair (i, j): image->text hinges ``margin + s(i, j') - s(i, j)`` over
    negatives j' of image i; text->image hinges ``margin + s(i', j) - s(i, j)`` over
    negatives i' of caption j. ``max_violation`` keeps the hardest negative only.
    Negatives are pairs neither positive nor ignored. ``weights`` (n_captions,) scales
    each caption's pair; mean over positive pairs.
    """
    negatives = ~(positives | ignore)
    pos_rows, pos_cols = positives.nonzero(as_tuple=True)
    pos_scores = sims[pos_rows, pos_cols]  # (P,)
    neg_i2t = torch.where(negatives[pos_rows], sims[pos_rows], _NEG)  # (P, n_captions)
    neg_t2i = torch.where(negatives[:, pos_cols].T, sims[:, pos_cols].T, _NEG)  # (P, n_images)
    cost_i2t = (margin + neg_i2t - pos_scores[:, None]).clamp(min=0)
    cost_t2i = (margin + neg_t2i - pos_scores[:, None]).clamp(min=0)
    if max_violation:
        per_pair = cost_i2t.max(dim=1).values + cost_t2i.max(dim=1).values
    else:
        per_pair = cost_i2t.sum(dim=1) + cost_t2i.sum(dim=1)
    if weights is not None:
        per_pair = per_pair * weights[pos_cols]
    return per_pair.mean()


def infonce_loss(sims: torch.Tensor, positives: torch.Tensor, ignore: torch.Tensor,
                 temperature: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric multi-positive InfoNCE over the in-batch matrix.

    For caption j (text->image) the target is the set of its positive images; for image i
    (image->text) the set of its positive captions; the loss is the negative log of the
    softmax mass on the positives. Ignored pairs leave both numerator and denominator.
    ``weights`` (n_captions,) scales each caption's text->image term and, through its
    paired image, nothing else: the image->text terms are unweighted.
    """
    logits = sims / temperature
    keep = ~ignore | positives
    masked = torch.where(keep, logits, _NEG)
    pos_logits = torch.where(positives, logits, _NEG)
    t2i = torch.logsumexp(masked.T, dim=1) - torch.logsumexp(pos_logits.T, dim=1)
    i2t = torch.logsumexp(masked, dim=1) - torch.logsumexp(pos_logits, dim=1)
    has_pos_img = positives.any(dim=1)
    if weights is not None:
        t2i = t2i * weights
    return 0.5 * (t2i.mean() + i2t[has_pos_img].mean())


def ranking_loss(sims: torch.Tensor, positives: torch.Tensor, ignore: torch.Tensor,
                 cfg: LossConfig, epoch: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The configured ranking loss (hinge with the warm-up schedule, or InfoNCE)."""
    if cfg.ranking == "infonce":
        return infonce_loss(sims, positives, ignore, cfg.temperature, weights)
    max_violation = cfg.max_violation and epoch >= cfg.sum_violation_epochs
    return hinge_ranking_loss(sims, positives, ignore, cfg.margin, max_violation, weights)


def feature_discrepancy_loss(dense_sims: torch.Tensor, hash_sims: torch.Tensor) -> torch.Tensor:
    """L_f: mean squared gap between the hash-space and dense similarity matrices.

    Keeps the similarity structure of the hash space consistent with the dense space, so
    ranking by codes preserves the dense ranking. ``dense_sims`` should be detached when
    the hash heads are (then L_f teaches the heads, never the encoders).
    """
    return F.mse_loss(hash_sims, dense_sims)


def encoding_loss(hash_features: torch.Tensor, quantizer: ProductQuantizer | None,
                  binary_weight: float) -> torch.Tensor:
    """L_q: quantization error ``||h - C b||^2`` plus a push of ``h`` towards {-1, +1}.

    Codes ``b`` come from the current (fixed) codebooks; only ``h`` receives gradient.
    Before the first k-means fit (epoch 0) only the binary term is active. Both terms
    are per-dimension means, so they do not grow with ``n_bits``.
    """
    binary = (hash_features.abs() - 1.0).pow(2).mean()
    if quantizer is None or not quantizer.is_fitted:
        return binary_weight * binary
    quant = (hash_features - quantizer.quantize(hash_features)).pow(2).mean()
    return quant + binary_weight * binary


def misleading_negatives(text_dense: torch.Tensor, positives: torch.Tensor,
                         threshold: float) -> torch.Tensor:
    """Flag (image i, caption j) negatives whose caption nearly repeats a caption of i.

    A real data set has no relevance labels, but a caption that says (almost) the same
    thing as one of image i's own captions is probably true of image i too. "Almost the
    same" is the model's own text space: cosine above ``threshold`` (detached).
    ``text_dense`` (n_captions, d) normalised; ``positives`` (n_images, n_captions).
    Returns bool (n_images, n_captions), never flagging a positive.
    """
    text_sims = text_dense.detach() @ text_dense.detach().T  # (n_captions, n_captions)
    near = (text_sims > threshold).float()
    # caption j is near a positive caption of image i  <=>  (positives @ near)[i, j] > 0
    flagged = (positives.float() @ near) > 0
    return flagged & ~positives


def pair_weights(sims: torch.Tensor, positives: torch.Tensor, ignore: torch.Tensor,
                 strength: float, temperature: float) -> torch.Tensor:
    """Adaptive weights (n_captions,) of each caption's positive pair, mean 1.

    A pair is informative when its hardest remaining negative comes close to (or beats)
    the positive: ``w ~ sigmoid((s_hardneg - s_pos) / temperature)``, normalised to mean 1
    and blended with 1 by ``strength`` in [0, 1]. Detached: weights steer, never learn.
    """
    sims = sims.detach()
    negatives = ~(positives | ignore)
    pos = torch.where(positives, sims, _NEG).max(dim=0).values  # best positive per caption
    hardest = torch.where(negatives, sims, _NEG).max(dim=0).values
    raw = torch.sigmoid((hardest - pos) / temperature)
    raw = torch.where(hardest <= _NEG / 2, torch.zeros_like(raw), raw)  # no negative left
    if raw.sum() <= 0:
        return torch.ones_like(raw)
    normalised = raw / raw.mean()
    return 1.0 + strength * (normalised - 1.0)


@dataclass
class BatchPairs:
    """Who matches whom in a batch of (image, caption) pairs.

    ``image_index`` (B,) data-set index of each row's image; ``text_key`` (B,) an id
    equal for captions with the same normalised text; ``relevance`` (B, B) bool ground
    truth (image of row i, caption of row j) when the data set has it (Shapes), else None.
    """

    image_index: torch.Tensor
    text_key: torch.Tensor
    relevance: torch.Tensor | None = None


class MEETLoss:
    """The Stage I objective as named terms; ``terms['loss']`` is their weighted sum.

    Also returns batch statistics (not differentiable): how many negatives were
    filtered, how many of those ground truth calls relevant, and the pair-weight spread.
    """

    def __init__(self, cfg: LossConfig):
        self.cfg = cfg

    def __call__(self, out: dict[str, torch.Tensor], pairs: BatchPairs, epoch: int,
                 image_pq: ProductQuantizer | None = None,
                 text_pq: ProductQuantizer | None = None) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        cfg = self.cfg
        img, txt = out["image_dense"], out["text_dense"]
        h_img, h_txt = out["image_hash"], out["text_hash"]
        positives = pairs.image_index[:, None] == pairs.image_index[None, :]
        if cfg.text_positives:
            positives = positives | (pairs.text_key[:, None] == pairs.text_key[None, :])
        ignore = torch.zeros_like(positives)
        resolved = True  # the label-free gate: is the text space resolved enough to trust?
        if cfg.filter_negatives and epoch >= cfg.filter_start_epoch:
            ignore = misleading_negatives(txt, positives, cfg.filter_threshold)
            resolved = float(ignore.sum()) <= cfg.filter_max_share * float((~positives).sum())
            if not resolved:
                ignore = torch.zeros_like(positives)
        if cfg.oracle_filter:
            if pairs.relevance is None:
                raise ValueError("oracle_filter needs ground-truth relevance (Shapes data)")
            ignore = ignore | (pairs.relevance & ~positives)

        dense_sims = img @ txt.T
        hash_sims = F.normalize(h_img, dim=1) @ F.normalize(h_txt, dim=1).T
        weights = None
        if cfg.reweight_pairs and resolved:
            weights = pair_weights(dense_sims, positives, ignore, cfg.reweight_strength,
                                   cfg.reweight_temperature)
        terms = {"dense_rank": ranking_loss(dense_sims, positives, ignore, cfg, epoch, weights)}
        if cfg.hash_ranking_weight:
            terms["hash_rank"] = cfg.hash_ranking_weight * ranking_loss(
                hash_sims, positives, ignore, cfg, epoch, weights)
        if cfg.beta1:
            target = dense_sims.detach() if out.get("hash_detached", True) else dense_sims
            terms["l_f"] = cfg.beta1 * feature_discrepancy_loss(target, hash_sims)
        if cfg.beta2:
            terms["l_q"] = cfg.beta2 * 0.5 * (encoding_loss(h_img, image_pq, cfg.binary_weight)
                                              + encoding_loss(h_txt, text_pq, cfg.binary_weight))
        terms["loss"] = sum(terms.values())
        stats = self._stats(positives, ignore, weights, pairs)
        stats["gate_open"] = float(resolved)
        return terms, stats

    @staticmethod
    def _stats(positives: torch.Tensor, ignore: torch.Tensor, weights: torch.Tensor | None,
               pairs: BatchPairs) -> dict[str, float]:
        stats = {"negatives": float((~positives).sum()), "filtered": float(ignore.sum())}
        if pairs.relevance is not None:
            relevance = pairs.relevance.to(ignore.device)
            stats["filtered_relevant"] = float((ignore & relevance).sum())
            stats["negatives_relevant"] = float((~positives & relevance).sum())
        if weights is not None:
            stats["weight_std"] = float(weights.std()) if weights.numel() > 1 else 0.0
            stats["weight_min"] = float(weights.min())
            stats["weight_max"] = float(weights.max())
        return stats
