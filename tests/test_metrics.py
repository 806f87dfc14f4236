"""Tests for meet.metrics: hand-computed cases, slow sorted()-based references on random
matrices (with and without ties), the 5-fold protocol, relevance metrics, error cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from meet.errors import ConfigError, DataError
from meet.metrics import (evaluate_protocol, ground_truth_metrics, i2t_ranks, map_at_r,
                          precision_at_k, recall_from_ranks, recall_metrics, t2i_ranks)

RECALL_KEYS = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum",
               "i2t_medr", "i2t_meanr", "t2i_medr", "t2i_meanr"]


# ----------------------------------------------------------------------------- references
def reference_i2t(sims: list[list[float]], caption_image: list[int]) -> list[int]:
    """Sort each image's captions by score, lower index first among equals (the search
    engine's tie rule); the rank is the position of the first own caption."""
    ranks = []
    for image, row in enumerate(sims):
        order = sorted(range(len(row)), key=lambda c: (-row[c], c))
        ranks.append(next(pos for pos, c in enumerate(order) if caption_image[c] == image))
    return ranks


def reference_t2i(sims: list[list[float]], caption_image: list[int]) -> list[int]:
    ranks = []
    for caption, own in enumerate(caption_image):
        column = [row[caption] for row in sims]
        order = sorted(range(len(column)), key=lambda i: (-column[i], i))
        ranks.append(order.index(own))
    return ranks


def reference_precision_map(scores: list[list[float]], relevance: list[list[bool]], k: int):
    """Per query: (P@k, mAP@R), ties by lower index first; NaN when nothing is relevant."""
    precisions, maps = [], []
    for row, rel in zip(scores, relevance):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))
        n_relevant = sum(rel)
        if n_relevant == 0:
            precisions.append(math.nan)
            maps.append(math.nan)
            continue
        precisions.append(sum(rel[j] for j in order[:k]) / k)
        hits, total = 0, 0.0
        for position, item in enumerate(order[:n_relevant], start=1):
            if rel[item]:
                hits += 1
                total += hits / position
        maps.append(total / n_relevant)
    return precisions, maps


def random_case(seed: int, n_images: int, max_per_image: int, tie_levels: int | None):
    """Random sims and a caption->image map where every image has 1..max_per_image
    captions, in shuffled caption order; ``tie_levels`` quantises scores to force ties."""
    gen = torch.Generator().manual_seed(seed)
    per_image = torch.randint(1, max_per_image + 1, (n_images,), generator=gen)
    caption_image = torch.repeat_interleave(torch.arange(n_images), per_image)
    caption_image = caption_image[torch.randperm(len(caption_image), generator=gen)]
    sims = torch.rand(n_images, len(caption_image), generator=gen)
    if tie_levels is not None:
        sims = torch.floor(sims * tie_levels) / tie_levels
    return sims, caption_image


# ----------------------------------------------------------------------------- hand-made
HAND_SIMS = torch.tensor([
    [0.9, 0.1, 0.8, 0.2, 0.3, 0.4],    # own captions 0,1: best 0.9, nothing higher -> 0
    [0.7, 0.6, 0.5, 0.65, 0.1, 0.2],   # own 2,3: best 0.65, only 0.7 higher -> 1
    [0.9, 0.8, 0.7, 0.6, 0.1, 0.5],    # own 4,5: best 0.5; 0.9 0.8 0.7 0.6 higher -> 4
])
HAND_CAPTION_IMAGE = torch.tensor([0, 0, 1, 1, 2, 2])


def test_hand_made_ranks():
    assert i2t_ranks(HAND_SIMS, HAND_CAPTION_IMAGE).tolist() == [0, 1, 4]
    # caption 0: image 2 ties its own 0.9 at a higher index (not counted) -> 0; caption 1:
    # 0.6, 0.8 > 0.1 -> 2; caption 2: 0.8, 0.7 > 0.5 -> 2; caption 3: own 0.65 is top -> 0;
    # caption 4: image 0 (0.3) higher, image 1 ties at 0.1 at a lower index -> 2;
    # caption 5: own 0.5 top -> 0.
    assert t2i_ranks(HAND_SIMS, HAND_CAPTION_IMAGE).tolist() == [0, 2, 2, 0, 2, 0]


def test_hand_made_recall():
    result = recall_metrics(HAND_SIMS, HAND_CAPTION_IMAGE, block_size=2)
    assert list(result) == RECALL_KEYS
    expected = {"i2t_r1": 100 / 3, "i2t_r5": 100.0, "i2t_r10": 100.0,
                "t2i_r1": 50.0, "t2i_r5": 100.0, "t2i_r10": 100.0,
                "rsum": 100 / 3 + 450.0,
                "i2t_medr": 2.0,         # median of [0, 1, 4] is 1 -> 1-based 2
                "i2t_meanr": 5 / 3 + 1,
                "t2i_medr": 2.0,         # median of [0, 0, 0, 2, 2, 2] is 1 -> floor + 1
                "t2i_meanr": 6 / 6 + 1}
    for key, value in expected.items():
        assert result[key] == pytest.approx(value), key


def test_ties_go_to_the_lower_index_as_in_search():
    """Ties are ranked as meet.search ranks them (lower index first), not in the query's
    favour: the engine's order and the metric's rank are one thing."""
    sims = torch.zeros(3, 6)
    # all equal: image i's first own caption is caption 2i, after 2i lower-index captions
    assert i2t_ranks(sims, HAND_CAPTION_IMAGE).tolist() == [0, 2, 4]
    # caption c's own image is c // 2, after c // 2 lower-index images
    assert t2i_ranks(sims, HAND_CAPTION_IMAGE).tolist() == [0, 0, 1, 1, 2, 2]
    # a strictly higher competitor counts wherever it is: caption 5 now beats image 0's own
    # captions; for caption 5 image 0 turns from a lower-index tie into a higher score
    sims[0, 5] = 1.0
    assert i2t_ranks(sims, HAND_CAPTION_IMAGE).tolist() == [1, 2, 4]
    assert t2i_ranks(sims, HAND_CAPTION_IMAGE).tolist() == [0, 0, 1, 1, 2, 2]


def test_best_own_caption_counts_for_i2t():
    # image 0's second caption is its best; a different caption in between does not matter
    sims = torch.tensor([[0.1, 0.5, 0.9], [0.0, 0.0, 0.0]])
    caption_image = torch.tensor([0, 1, 0])
    assert i2t_ranks(sims, caption_image).tolist() == [0, 1]  # image 1: caption 0 ties first


# ----------------------------------------------------------------------------- vs reference
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n_images=st.integers(1, 9),
       max_per_image=st.integers(1, 4), block_size=st.integers(1, 6),
       tie_levels=st.sampled_from([None, 3, 10]))
def test_ranks_match_reference(seed, n_images, max_per_image, block_size, tie_levels):
    sims, caption_image = random_case(seed, n_images, max_per_image, tie_levels)
    sims_list, map_list = sims.tolist(), caption_image.tolist()
    assert i2t_ranks(sims, caption_image, block_size).tolist() == reference_i2t(sims_list, map_list)
    assert t2i_ranks(sims, caption_image, block_size).tolist() == reference_t2i(sims_list, map_list)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n_images=st.integers(1, 12))
def test_recall_matches_numpy_reference(seed, n_images):
    sims, caption_image = random_case(seed, n_images, 5, tie_levels=None)
    i2t = np.array(reference_i2t(sims.tolist(), caption_image.tolist()))
    t2i = np.array(reference_t2i(sims.tolist(), caption_image.tolist()))
    result = recall_metrics(sims, caption_image, block_size=4)
    for k in (1, 5, 10):
        assert result[f"i2t_r{k}"] == pytest.approx(100.0 * np.mean(i2t < k))
        assert result[f"t2i_r{k}"] == pytest.approx(100.0 * np.mean(t2i < k))
    assert result["rsum"] == pytest.approx(sum(result[key] for key in RECALL_KEYS[:6]))
    assert result["i2t_medr"] == np.floor(np.median(i2t)) + 1
    assert result["t2i_meanr"] == pytest.approx(t2i.mean() + 1)


def test_block_size_does_not_change_ranks():
    sims, caption_image = random_case(7, 40, 5, tie_levels=20)
    full_i2t, full_t2i = i2t_ranks(sims, caption_image, 10_000), t2i_ranks(sims, caption_image, 10_000)
    for block_size in (1, 3, 17):
        assert torch.equal(i2t_ranks(sims, caption_image, block_size), full_i2t)
        assert torch.equal(t2i_ranks(sims, caption_image, block_size), full_t2i)


# ----------------------------------------------------------------------------- relevance
def assert_nan_equal(actual: torch.Tensor, expected: list[float]):
    expected_t = torch.tensor(expected, dtype=torch.float64)
    assert torch.equal(torch.isnan(actual), torch.isnan(expected_t))
    keep = ~torch.isnan(expected_t)
    assert torch.allclose(actual[keep], expected_t[keep])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n_queries=st.integers(1, 8), n_items=st.integers(1, 15),
       density=st.sampled_from([0.0, 0.1, 0.4, 0.9]), block_size=st.integers(1, 5),
       tie_levels=st.sampled_from([None, 4]), data=st.data())
def test_precision_and_map_match_reference(seed, n_queries, n_items, density, block_size,
                                           tie_levels, data):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(n_queries, n_items, generator=gen)
    if tie_levels is not None:
        scores = torch.floor(scores * tie_levels) / tie_levels
    relevance = torch.rand(n_queries, n_items, generator=gen) < density
    k = data.draw(st.integers(1, n_items))
    ref_precision, ref_map = reference_precision_map(scores.tolist(), relevance.tolist(), k)
    assert_nan_equal(precision_at_k(scores, relevance, k, block_size), ref_precision)
    assert_nan_equal(map_at_r(scores, relevance, block_size), ref_map)


def test_map_at_r_hand_made():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4]])
    relevance = torch.tensor([[True, True, False, False],     # perfect: 1
                              [False, True, False, True],     # R=2: (0 + 1/2) / 2 = 0.25
                              [False, False, False, False]])  # excluded
    result = map_at_r(scores, relevance)
    assert result[:2].tolist() == pytest.approx([1.0, 0.25])
    assert math.isnan(result[2].item())
    precision = precision_at_k(scores, relevance, k=2)
    assert precision[:2].tolist() == pytest.approx([1.0, 0.5])
    assert math.isnan(precision[2].item())


def test_ground_truth_metrics_excludes_queries_without_relevant_items():
    gen = torch.Generator().manual_seed(3)
    n_images, n_captions, k = 7, 12, 3
    sims = torch.rand(n_images, n_captions, generator=gen)
    relevance = torch.rand(n_captions, n_images, generator=gen) < 0.3
    relevance[0] = False            # caption 0 fits no image
    relevance[:, 1] = False         # image 1 fits no caption
    result = ground_truth_metrics(sims, relevance, k=k, block_size=4)
    assert set(result) == {"t2i_p@3", "t2i_map@r", "i2t_p@3", "i2t_map@r",
                           "t2i_n_queries", "i2t_n_queries"}
    for name, scores, rel in (("t2i", sims.T, relevance), ("i2t", sims, relevance.T)):
        ref_p, ref_map = reference_precision_map(scores.tolist(), rel.tolist(), k)
        used = [p for p in ref_p if not math.isnan(p)]
        assert result[f"{name}_n_queries"] == len(used) == int(rel.any(1).sum())
        assert result[f"{name}_p@{k}"] == pytest.approx(sum(used) / len(used))
        used_map = [m for m in ref_map if not math.isnan(m)]
        assert result[f"{name}_map@r"] == pytest.approx(sum(used_map) / len(used_map))
    assert result["t2i_n_queries"] < n_captions and result["i2t_n_queries"] < n_images


def test_ground_truth_metrics_perfect_ranker():
    relevance = torch.tensor([[True, False], [True, True], [False, True]])  # (3 captions, 2 images)
    sims = relevance.T.float()
    result = ground_truth_metrics(sims, relevance, k=1)
    assert result["t2i_p@1"] == 1.0 and result["t2i_map@r"] == 1.0
    assert result["i2t_p@1"] == 1.0 and result["i2t_map@r"] == 1.0


# ----------------------------------------------------------------------------- protocols
def coco_like(seed: int, n_images: int = 5000, captions_per_image: int = 5, dim: int = 8):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n_images, dim, generator=gen)
    per_image = torch.full((n_images,), captions_per_image)
    per_image[::7] = max(1, captions_per_image - 1)   # uneven counts, still grouped by image
    caption_image = torch.repeat_interleave(torch.arange(n_images), per_image)
    captions = images[caption_image] + 1.5 * torch.randn(len(caption_image), dim, generator=gen)
    calls: list[tuple[int, int]] = []

    def score_fn(image_indices, caption_indices):
        calls.append((len(image_indices), len(caption_indices)))
        return images[image_indices] @ captions[caption_indices].T

    return score_fn, caption_image, images, captions, calls


def test_five_fold_is_mean_of_folds():
    score_fn, caption_image, images, captions, calls = coco_like(0, captions_per_image=2)
    by_hand = []
    for fold in range(5):
        image_mask = (caption_image >= fold * 1000) & (caption_image < (fold + 1) * 1000)
        sims = images[fold * 1000:(fold + 1) * 1000] @ captions[image_mask].T
        by_hand.append(recall_metrics(sims, caption_image[image_mask] - fold * 1000))
    expected = {key: sum(r[key] for r in by_hand) / 5 for key in RECALL_KEYS}
    result = evaluate_protocol(score_fn, 5000, caption_image, "5fold")
    assert list(result) == RECALL_KEYS
    for key in RECALL_KEYS:
        assert result[key] == pytest.approx(expected[key]), key
    assert max(n for n, _ in calls) == 1000     # never the full 5K matrix
    assert evaluate_protocol(score_fn, 5000, caption_image, "1k") == result


def test_full_and_5k_use_the_whole_matrix():
    # one caption per image keeps the 5K matrix small (5000 x ~5000) and the test fast
    score_fn, caption_image, images, captions, calls = coco_like(1, captions_per_image=1)
    expected = recall_metrics(images @ captions.T, caption_image)
    assert evaluate_protocol(score_fn, 5000, caption_image, "5k") == expected
    assert calls == [(5000, len(caption_image))]
    score_fn, caption_image, images, captions, calls = coco_like(2, n_images=300)
    expected = recall_metrics(images @ captions.T, caption_image)
    assert evaluate_protocol(score_fn, 300, caption_image, "full") == expected
    small = evaluate_protocol(lambda i, c: HAND_SIMS[i][:, c], 3, HAND_CAPTION_IMAGE, "full")
    assert small == recall_metrics(HAND_SIMS, HAND_CAPTION_IMAGE)


# ----------------------------------------------------------------------------- errors
def test_protocol_errors():
    score_fn = lambda i, c: HAND_SIMS[i][:, c]  # noqa: E731
    with pytest.raises(ConfigError, match="unknown evaluation protocol"):
        evaluate_protocol(score_fn, 3, HAND_CAPTION_IMAGE, "10fold")
    for protocol in ("5fold", "1k", "5k"):
        with pytest.raises(ConfigError, match="5000"):
            evaluate_protocol(score_fn, 3, HAND_CAPTION_IMAGE, protocol)
    shuffled = torch.arange(25_000) // 5
    shuffled[[0, 10]] = shuffled[[10, 0]]
    with pytest.raises(ConfigError, match="grouped"):
        evaluate_protocol(lambda i, c: torch.zeros(len(i), len(c)), 5000, shuffled, "5fold")
    with pytest.raises(ConfigError, match="score_fn returned"):
        evaluate_protocol(lambda i, c: torch.zeros(2, 2), 3, HAND_CAPTION_IMAGE, "full")


def test_input_errors():
    with pytest.raises(ConfigError, match="entries"):
        i2t_ranks(HAND_SIMS, HAND_CAPTION_IMAGE[:5])
    with pytest.raises(ConfigError, match="values must lie"):
        t2i_ranks(HAND_SIMS, torch.tensor([0, 0, 1, 1, 2, 3]))
    with pytest.raises(ConfigError, match="integer"):
        t2i_ranks(HAND_SIMS, HAND_CAPTION_IMAGE.float())
    with pytest.raises(ConfigError, match="2-D"):
        i2t_ranks(HAND_SIMS[0], HAND_CAPTION_IMAGE)
    with pytest.raises(ConfigError, match="block_size"):
        recall_metrics(HAND_SIMS, HAND_CAPTION_IMAGE, block_size=0)
    with pytest.raises(DataError, match="no caption"):
        i2t_ranks(HAND_SIMS, torch.tensor([0, 0, 0, 1, 1, 1]))
    nan_sims = HAND_SIMS.clone()
    nan_sims[1, 5] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        i2t_ranks(nan_sims, HAND_CAPTION_IMAGE)
    with pytest.raises(DataError, match="zero queries"):
        recall_from_ranks(torch.zeros(0, dtype=torch.long), torch.zeros(3, dtype=torch.long))


def test_relevance_errors():
    scores = torch.rand(3, 4)
    relevance = torch.ones(3, 4, dtype=torch.bool)
    with pytest.raises(ConfigError, match="k must be"):
        precision_at_k(scores, relevance, k=5)
    with pytest.raises(ConfigError, match="k must be"):
        precision_at_k(scores, relevance, k=0)
    with pytest.raises(ConfigError, match="bool"):
        map_at_r(scores, relevance.float())
    with pytest.raises(ConfigError, match="does not match"):
        map_at_r(scores, relevance[:2])
    with pytest.raises(ConfigError, match="n_captions, n_images"):
        ground_truth_metrics(torch.rand(3, 6), torch.ones(3, 6, dtype=torch.bool))
