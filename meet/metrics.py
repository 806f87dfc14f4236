"""Retrieval metrics for image-text retrieval: ranks, R@K / rSum, protocols, and
ground-truth relevance metrics (precision@k, mAP@R).

Two families of numbers live here:

* The **5-caption protocol** of VSE++/SCAN (``recall_metrics``): each image has its own
  captions (``caption_image[c]`` is the image of caption ``c``); image->text counts the
  rank of the best-ranked own caption, text->image the rank of the caption's image.
* **Ground-truth relevance** (``ground_truth_metrics``): when every caption-image pair is
  known to be relevant or not (the synthetic Shapes benchmark), precision@k and mAP@R
  count *all* relevant items, not only the five "own" captions.

Everything streams over blocks of queries (``block_size`` rows at a time), so a COCO 5K
matrix of shape (5000, 25000) needs only ``block_size x 25000`` temporaries at once. The
similarity matrix itself is taken dense: it is the caller's (``score_fn``'s) job to keep it
small, which the fold protocol does by asking only for 1K x 5K blocks.

One tie rule (documented because it moves numbers on quantised or hashed scores): items
are ordered by score, and **equal scores by lower item index first** (a stable descending
sort), the rule every stage of :mod:`meet.search` ranks by. So a rank here is the own
item's place in the order a search returns: the competitors scoring strictly higher, plus
the equal ones at a lower index. Hashed scores tie a lot (64-bit Hamming distances take 65
values); a rule that counted ties in the query's favour would flatter them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

from meet.errors import ConfigError, DataError

DEFAULT_BLOCK_SIZE = 512
"""Query rows processed at once; bounds temporaries to ``block_size x n_items``."""

RECALL_KS = (1, 5, 10)
PROTOCOLS = ("full", "5k", "1k", "5fold")
COCO_5K_IMAGES = 5000
COCO_FOLD_IMAGES = 1000


# ----------------------------------------------------------------------------- checks
def _check_block_size(block_size: int) -> None:
    if not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"block_size must be a positive int, got {block_size!r}",
                          fix="pass e.g. block_size=512")


def _check_no_nan(block: Tensor, what: str) -> None:
    if torch.isnan(block).any():
        raise DataError(f"{what} contains NaN scores",
                        fix="check the embeddings (NaN after normalising a zero vector?)")


def _check_sims(sims: Tensor, caption_image: Tensor) -> Tensor:
    """Validate a (n_images, n_captions) matrix and its caption->image map; return the
    map as a long tensor on ``sims``' device."""
    if sims.ndim != 2:
        raise ConfigError(f"sims must be 2-D (n_images, n_captions), got shape {tuple(sims.shape)}")
    if caption_image.ndim != 1 or caption_image.dtype.is_floating_point or caption_image.dtype == torch.bool:
        raise ConfigError("caption_image must be a 1-D integer tensor (n_captions,)",
                          fix="caption c belongs to image caption_image[c]")
    n_images, n_captions = sims.shape
    if caption_image.shape[0] != n_captions:
        raise ConfigError(f"caption_image has {caption_image.shape[0]} entries but sims has "
                          f"{n_captions} caption columns", fix="sims must be (n_images, n_captions)")
    caption_image = caption_image.to(device=sims.device, dtype=torch.long)
    if n_captions and (caption_image.min() < 0 or caption_image.max() >= n_images):
        raise ConfigError(f"caption_image values must lie in [0, {n_images}), got "
                          f"[{int(caption_image.min())}, {int(caption_image.max())}]")
    return caption_image


def _own_scores(sims: Tensor, caption_image: Tensor) -> Tensor:
    """Score of each caption with its own image, shape (n_captions,)."""
    columns = torch.arange(sims.shape[1], device=sims.device)
    own = sims[caption_image, columns]
    _check_no_nan(own, "sims (own caption-image pairs)")
    return own


# ----------------------------------------------------------------------------- ranks
def i2t_ranks(sims: Tensor, caption_image: Tensor,
              block_size: int = DEFAULT_BLOCK_SIZE) -> Tensor:
    """Image->text rank of each image: the 0-based rank of its best-ranked own caption.

    This is the standard 5-caption protocol ("rank of the first of the image's captions").
    No argsort: each image's first own caption in (score desc, index asc) order comes from
    a scatter-amax of the scores and a scatter-amin of the indices at that score; its rank
    is the number of captions scoring strictly higher plus those scoring the same at a
    lower index, computed ``block_size`` images at a time.

    Args:
        sims: (n_images, n_captions) similarities, higher = more similar.
        caption_image: (n_captions,) integer, the image of each caption.
        block_size: images per block (memory: ``block_size x n_captions`` booleans).

    Returns:
        (n_images,) long ranks, 0 = an own caption is retrieved first.

    Raises:
        DataError: an image has no caption (its rank is undefined) or a score is NaN.
    """
    _check_block_size(block_size)
    caption_image = _check_sims(sims, caption_image)
    n_images = sims.shape[0]
    n_captions_per_image = torch.bincount(caption_image, minlength=n_images)
    captionless = torch.nonzero(n_captions_per_image == 0).flatten()
    if captionless.numel():
        raise DataError(f"{captionless.numel()} image(s) have no caption (first: "
                        f"{captionless[:5].tolist()}); image->text rank is undefined",
                        fix="evaluate on images that have captions, or drop them from sims")
    own = _own_scores(sims, caption_image)
    best = torch.full((n_images,), float("-inf"), dtype=sims.dtype, device=sims.device)
    best = best.scatter_reduce(0, caption_image, own, reduce="amax", include_self=True)
    columns = torch.arange(sims.shape[1], device=sims.device)
    at_best = torch.where(own == best[caption_image], columns, sims.shape[1])
    first = torch.full((n_images,), sims.shape[1], dtype=torch.long, device=sims.device)
    first = first.scatter_reduce(0, caption_image, at_best, reduce="amin", include_self=True)
    ranks = torch.empty(n_images, dtype=torch.long, device=sims.device)
    for start in range(0, n_images, block_size):
        block = sims[start:start + block_size]
        _check_no_nan(block, "sims")
        level = best[start:start + block_size, None]
        earlier = columns[None, :] < first[start:start + block_size, None]
        ranks[start:start + block_size] = ((block > level) | ((block == level) & earlier)).sum(1)
    return ranks


def t2i_ranks(sims: Tensor, caption_image: Tensor,
              block_size: int = DEFAULT_BLOCK_SIZE) -> Tensor:
    """Text->image rank of each caption: the number of images scoring strictly higher
    than the caption's own image, plus those scoring the same at a lower index (0-based).

    Args:
        sims: (n_images, n_captions) similarities.
        caption_image: (n_captions,) integer, the image of each caption.
        block_size: captions per block (memory: ``n_images x block_size`` booleans).

    Returns:
        (n_captions,) long ranks.
    """
    _check_block_size(block_size)
    caption_image = _check_sims(sims, caption_image)
    n_captions = sims.shape[1]
    own = _own_scores(sims, caption_image)
    rows = torch.arange(sims.shape[0], device=sims.device)
    ranks = torch.empty(n_captions, dtype=torch.long, device=sims.device)
    for start in range(0, n_captions, block_size):
        block = sims[:, start:start + block_size]
        _check_no_nan(block, "sims")
        level = own[None, start:start + block_size]
        earlier = rows[:, None] < caption_image[None, start:start + block_size]
        ranks[start:start + block_size] = ((block > level) | ((block == level) & earlier)).sum(0)
    return ranks


def recall_from_ranks(i2t: Tensor, t2i: Tensor) -> dict[str, float]:
    """R@1/5/10 in both directions, rSum, median and mean rank from 0-based ranks.

    Useful on its own when ranks come from elsewhere (e.g. a cascade that ranks only its
    candidates: give filtered-out own items a rank >= 10 and R@K stays exact).

    Args:
        i2t: (n_images,) 0-based image->text ranks.
        t2i: (n_captions,) 0-based text->image ranks.

    Returns:
        ``i2t_r1 i2t_r5 i2t_r10 t2i_r1 t2i_r5 t2i_r10 rsum`` in percent (R@K = share of
        queries with rank < K, x100; rsum = sum of the six, max 600), then ``i2t_medr
        i2t_meanr t2i_medr t2i_meanr``, 1-based as in VSE++ (medr = floor(median) + 1,
        the median averaging the two middle ranks of an even count, as numpy does).
    """
    if i2t.numel() == 0 or t2i.numel() == 0:
        raise DataError("cannot compute recall over zero queries",
                        fix="pass at least one image and one caption")
    result: dict[str, float] = {}
    for direction, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in RECALL_KS:
            result[f"{direction}_r{k}"] = 100.0 * (ranks < k).double().mean().item()
    result["rsum"] = sum(result[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in RECALL_KS)
    for direction, ranks in (("i2t", i2t), ("t2i", t2i)):
        as_numpy = ranks.detach().cpu().numpy()
        result[f"{direction}_medr"] = float(np.floor(np.median(as_numpy)) + 1)
        result[f"{direction}_meanr"] = float(as_numpy.mean() + 1)
    return result


def recall_metrics(sims: Tensor, caption_image: Tensor,
                   block_size: int = DEFAULT_BLOCK_SIZE) -> dict[str, float]:
    """The 5-caption protocol on one similarity matrix; see :func:`recall_from_ranks`
    for the keys.

    Args:
        sims: (n_images, n_captions) similarities.
        caption_image: (n_captions,) integer, the image of each caption.
        block_size: query rows per block.
    """
    return recall_from_ranks(i2t_ranks(sims, caption_image, block_size),
                             t2i_ranks(sims, caption_image, block_size))


# ----------------------------------------------------------------------------- relevance
def _check_relevance(scores: Tensor, relevance: Tensor) -> None:
    if scores.ndim != 2:
        raise ConfigError(f"scores must be 2-D (n_queries, n_items), got shape {tuple(scores.shape)}")
    if relevance.dtype != torch.bool:
        raise ConfigError(f"relevance must be a bool tensor, got {relevance.dtype}")
    if relevance.shape != scores.shape:
        raise ConfigError(f"relevance shape {tuple(relevance.shape)} does not match scores "
                          f"shape {tuple(scores.shape)}", fix="both are (n_queries, n_items)")


def _top_relevance(block_scores: Tensor, block_relevance: Tensor, length: int) -> Tensor:
    """Relevance of each query's top ``length`` items in score order, ties by lower item
    index first (a stable descending sort): (block, n_items) -> (block, length) bool."""
    _check_no_nan(block_scores, "scores")
    order = torch.sort(block_scores, dim=1, descending=True, stable=True).indices[:, :length]
    return block_relevance.to(block_scores.device).gather(1, order)


def precision_at_k(scores: Tensor, relevance: Tensor, k: int,
                   block_size: int = DEFAULT_BLOCK_SIZE) -> Tensor:
    """Share of each query's top ``k`` items that are relevant.

    Args:
        scores: (n_queries, n_items), higher = ranked first (ties: lower index first).
        relevance: (n_queries, n_items) bool, True where the item is relevant.
        k: cut-off, 1 <= k <= n_items.
        block_size: queries per block (memory: ``block_size x n_items`` sort buffers).

    Returns:
        (n_queries,) float64 in [0, 1]; NaN for queries with no relevant item, so that
        averaging with ``nanmean`` excludes them (a query nothing can answer says nothing
        about the ranker).
    """
    _check_block_size(block_size)
    _check_relevance(scores, relevance)
    n_queries, n_items = scores.shape
    if not isinstance(k, int) or not 1 <= k <= n_items:
        raise ConfigError(f"k must be an int in [1, {n_items}] (n_items), got {k!r}")
    precision = torch.empty(n_queries, dtype=torch.float64, device=scores.device)
    for start in range(0, n_queries, block_size):
        ranked = _top_relevance(scores[start:start + block_size],
                                relevance[start:start + block_size], k)
        precision[start:start + block_size] = ranked.sum(1).double() / k
    precision[~relevance.any(1).to(scores.device)] = float("nan")
    return precision


def map_at_r(scores: Tensor, relevance: Tensor,
             block_size: int = DEFAULT_BLOCK_SIZE) -> Tensor:
    """mAP@R (Musgrave et al., "A Metric Learning Reality Check") per query.

    For a query with R relevant items: (1/R) * sum_{i<=R} P@i * rel_i, i.e. average
    precision truncated at R, which is 1 only if all relevant items come first. Each block
    sorts its rows once and keeps the top max(R) positions, then a cumsum gives P@i.

    Args:
        scores: (n_queries, n_items), higher = ranked first (ties: lower index first).
        relevance: (n_queries, n_items) bool.
        block_size: queries per block.

    Returns:
        (n_queries,) float64 in [0, 1]; NaN for queries with no relevant item.
    """
    _check_block_size(block_size)
    _check_relevance(scores, relevance)
    n_queries = scores.shape[0]
    n_relevant = relevance.sum(1).to(scores.device)
    result = torch.full((n_queries,), float("nan"), dtype=torch.float64, device=scores.device)
    for start in range(0, n_queries, block_size):
        block_r = n_relevant[start:start + block_size]
        length = int(block_r.max()) if block_r.numel() else 0
        if length == 0:
            continue
        ranked = _top_relevance(scores[start:start + block_size],
                                relevance[start:start + block_size], length)
        positions = torch.arange(1, length + 1, device=scores.device, dtype=torch.float64)
        hits = ranked.cumsum(1).double()
        within_r = positions[None, :] <= block_r[:, None]
        terms = (hits / positions) * ranked * within_r
        values = terms.sum(1) / block_r.double()
        result[start:start + block_size] = torch.where(block_r > 0, values,
                                                       torch.full_like(values, float("nan")))
    return result


def ground_truth_metrics(sims: Tensor, relevance: Tensor, k: int = 10,
                         block_size: int = DEFAULT_BLOCK_SIZE) -> dict[str, float]:
    """Precision@k and mAP@R in both directions when every pair's relevance is known.

    Text->image: each caption queries the images; image->text: each image queries the
    captions. Queries without any relevant item are excluded from the means; the number
    of queries used is reported beside each direction.

    Args:
        sims: (n_images, n_captions) similarities.
        relevance: (n_captions, n_images) bool, True where the caption fits the image.
        k: precision cut-off; the key names carry it (``t2i_p@{k}``).
        block_size: queries per block.

    Returns:
        ``t2i_p@{k}``, ``t2i_map@r``, ``i2t_p@{k}``, ``i2t_map@r`` as fractions in [0, 1],
        and ``t2i_n_queries``, ``i2t_n_queries`` (queries with >= 1 relevant item; a
        direction with none gives NaN means).
    """
    if sims.ndim != 2 or relevance.shape != sims.T.shape:
        raise ConfigError(f"relevance must be (n_captions, n_images) = {tuple(sims.T.shape)}, "
                          f"got {tuple(relevance.shape)}",
                          fix="relevance[c, i] says whether caption c fits image i")
    result: dict[str, float] = {}
    directions = (("t2i", sims.T, relevance), ("i2t", sims, relevance.T))
    for name, scores, rel in directions:
        precision = precision_at_k(scores, rel, k, block_size)
        average_precision = map_at_r(scores, rel, block_size)
        used = ~torch.isnan(precision)
        n_used = int(used.sum())
        result[f"{name}_p@{k}"] = precision[used].mean().item() if n_used else float("nan")
        result[f"{name}_map@r"] = average_precision[used].mean().item() if n_used else float("nan")
        result[f"{name}_n_queries"] = float(n_used)
    return result


# ----------------------------------------------------------------------------- protocols
ScoreFn = Callable[[Tensor, Tensor], Tensor]


def _scored(score_fn: ScoreFn, image_indices: Tensor, caption_indices: Tensor) -> Tensor:
    sims = score_fn(image_indices, caption_indices)
    expected = (len(image_indices), len(caption_indices))
    if not isinstance(sims, Tensor) or tuple(sims.shape) != expected:
        got = tuple(sims.shape) if isinstance(sims, Tensor) else type(sims).__name__
        raise ConfigError(f"score_fn returned {got}, expected a tensor of shape {expected}",
                          fix="score_fn(image_indices, caption_indices) -> (n_images, n_captions)")
    return sims


def evaluate_protocol(score_fn: ScoreFn, n_images: int, caption_image: Tensor,
                      protocol: str, block_size: int = DEFAULT_BLOCK_SIZE) -> dict[str, float]:
    """Recall metrics under a named evaluation protocol.

    Protocols:
        ``full``: the whole split in one matrix (e.g. Flickr30K 1K test, Shapes test).
        ``5k``: the whole COCO 5K test set ("testall"); requires n_images == 5000.
        ``1k`` / ``5fold`` (synonyms): COCO 1K, the mean of :func:`recall_metrics` over
        the five consecutive 1,000-image folds of the 5K set, each with its own captions.
        Requires n_images == 5000 and captions grouped by image in image order
        (``caption_image`` non-decreasing, as in the precomp layout ``c // 5``). Every
        key, medr and meanr included, is the mean over folds (as VSE++ reports it).

    Args:
        score_fn: ``score_fn(image_indices, caption_indices)`` -> (len(image_indices),
            len(caption_indices)) similarities; asked only for what the protocol needs,
            so folds never build the full 5K x 25K matrix.
        n_images: images in the split.
        caption_image: (n_captions,) integer, the image of each caption.
        protocol: one of ``full``, ``5k``, ``1k``, ``5fold``.
        block_size: query rows per block in the rank computation.

    Raises:
        ConfigError: unknown protocol, or sizes that do not fit it.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown evaluation protocol {protocol!r}",
                          fix=f"choose one of {list(PROTOCOLS)}")
    if caption_image.ndim != 1:
        raise ConfigError("caption_image must be 1-D (n_captions,)")
    caption_image = caption_image.to(torch.long)
    device = caption_image.device
    if protocol in ("5k", "1k", "5fold") and n_images != COCO_5K_IMAGES:
        raise ConfigError(f"protocol {protocol!r} needs the {COCO_5K_IMAGES}-image COCO test "
                          f"set, got {n_images} images", fix="use protocol 'full' for other splits")
    if protocol in ("full", "5k"):
        sims = _scored(score_fn, torch.arange(n_images, device=device),
                       torch.arange(len(caption_image), device=device))
        return recall_metrics(sims, caption_image, block_size)
    if len(caption_image) and (caption_image[1:] < caption_image[:-1]).any():
        raise ConfigError(f"protocol {protocol!r} needs captions grouped by image in image "
                          "order (caption_image non-decreasing)",
                          fix="reorder captions so caption c belongs to image c // 5")
    fold_results = []
    for fold in range(COCO_5K_IMAGES // COCO_FOLD_IMAGES):
        first, stop = fold * COCO_FOLD_IMAGES, (fold + 1) * COCO_FOLD_IMAGES
        bounds = torch.searchsorted(caption_image, torch.tensor([first, stop], device=device))
        caption_indices = torch.arange(int(bounds[0]), int(bounds[1]), device=device)
        sims = _scored(score_fn, torch.arange(first, stop, device=device), caption_indices)
        fold_results.append(recall_metrics(sims, caption_image[caption_indices] - first, block_size))
    return {key: float(np.mean([r[key] for r in fold_results])) for key in fold_results[0]}
