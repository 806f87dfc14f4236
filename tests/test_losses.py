"""Losses against slow, obvious references on small hand-made batches."""

import math

import torch

from meet.config import LossConfig
from meet.losses import (BatchPairs, MEETLoss, hinge_ranking_loss, infonce_loss,
                         misleading_negatives, pair_weights)


def _random_case(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    sims = torch.rand(n, n, generator=g) * 2 - 1
    positives = torch.eye(n, dtype=torch.bool)
    positives[0, 3] = True  # an extra positive (identical caption)
    ignore = torch.zeros(n, n, dtype=torch.bool)
    ignore[1, 4] = ignore[2, 0] = True
    return sims, positives, ignore


def _hinge_reference(sims, positives, ignore, margin, max_violation):
    n_img, n_cap = sims.shape
    costs = []
    for i in range(n_img):
        for j in range(n_cap):
            if not positives[i, j]:
                continue
            c_i2t = [max(0.0, margin + float(sims[i, k]) - float(sims[i, j]))
                     for k in range(n_cap) if not positives[i, k] and not ignore[i, k]]
            c_t2i = [max(0.0, margin + float(sims[k, j]) - float(sims[i, j]))
                     for k in range(n_img) if not positives[k, j] and not ignore[k, j]]
            agg = max if max_violation else sum
            costs.append((agg(c_i2t) if c_i2t else 0.0) + (agg(c_t2i) if c_t2i else 0.0))
    return sum(costs) / len(costs)


def test_hinge_matches_reference_both_variants():
    sims, positives, ignore = _random_case()
    for max_violation in (True, False):
        got = hinge_ranking_loss(sims, positives, ignore, 0.2, max_violation)
        assert math.isclose(float(got), _hinge_reference(sims, positives, ignore, 0.2, max_violation),
                            rel_tol=1e-5)


def test_infonce_matches_reference():
    sims, positives, ignore = _random_case()
    t = 0.1
    t2i, i2t = [], []
    for j in range(6):
        num = sum(math.exp(sims[i, j] / t) for i in range(6) if positives[i, j])
        den = sum(math.exp(sims[i, j] / t) for i in range(6) if positives[i, j] or not ignore[i, j])
        t2i.append(-math.log(num / den))
    for i in range(6):
        num = sum(math.exp(sims[i, j] / t) for j in range(6) if positives[i, j])
        den = sum(math.exp(sims[i, j] / t) for j in range(6) if positives[i, j] or not ignore[i, j])
        i2t.append(-math.log(num / den))
    expected = 0.5 * (sum(t2i) / 6 + sum(i2t) / 6)
    assert math.isclose(float(infonce_loss(sims, positives, ignore, t)), expected, rel_tol=1e-4)


def test_misleading_negatives_flags_near_duplicate_captions_only():
    text = torch.nn.functional.normalize(torch.tensor(
        [[1.0, 0, 0], [0, 1.0, 0], [0.99, 0.05, 0], [0, 0, 1.0]]), dim=1)
    positives = torch.eye(4, dtype=torch.bool)
    flagged = misleading_negatives(text, positives, threshold=0.9)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0, 2] = expected[2, 0] = True  # captions 0 and 2 say the same thing
    assert torch.equal(flagged, expected)


def test_pair_weights_mean_one_and_favour_hard_pairs():
    sims = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.1, 0.0, 0.5]])
    positives = torch.eye(3, dtype=torch.bool)
    w = pair_weights(sims, positives, torch.zeros_like(positives), strength=1.0, temperature=0.1)
    assert math.isclose(float(w.mean()), 1.0, rel_tol=1e-5)
    assert w[2] > w[0]  # caption 2's positive (0.5) is beaten by a negative (0.8)
    w0 = pair_weights(sims, positives, torch.zeros_like(positives), strength=0.0, temperature=0.1)
    assert torch.allclose(w0, torch.ones(3))


def test_meet_loss_terms_and_filter_stats():
    torch.manual_seed(0)
    n = 8
    out = {"image_dense": torch.nn.functional.normalize(torch.randn(n, 16), dim=1),
           "text_dense": torch.nn.functional.normalize(torch.randn(n, 16), dim=1),
           "image_hash": torch.tanh(torch.randn(n, 8)), "text_hash": torch.tanh(torch.randn(n, 8)),
           "hash_detached": True}
    out["text_dense"][3] = out["text_dense"][1]  # caption 3 repeats caption 1 in meaning
    relevance = torch.eye(n, dtype=torch.bool)
    relevance[1, 3] = True
    pairs = BatchPairs(image_index=torch.arange(n), text_key=torch.arange(n), relevance=relevance)
    cfg = LossConfig(beta1=1.0, beta2=0.1, filter_negatives=True, filter_start_epoch=0,
                     reweight_pairs=True)
    terms, stats = MEETLoss(cfg)(out, pairs, epoch=0)
    assert set(terms) == {"dense_rank", "hash_rank", "l_f", "l_q", "loss"}
    assert math.isclose(float(terms["loss"]), float(sum(v for k, v in terms.items() if k != "loss")),
                        rel_tol=1e-6)
    assert stats["filtered"] == 2 and stats["filtered_relevant"] == 1
    assert "weight_std" in stats
