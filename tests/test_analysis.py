"""meet.analysis: every statistic against a slow, obvious reference on small random data.

The synthetic pair below has clustered hash features (items of one cluster share most
bits), so "relevant" (same cluster) pairs are nearer in Hamming distance and the cascade
filters keep some relevant items and drop others: every branch of the funnel counts runs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest

import meet.analysis._base as analysis_base
from meet.analysis import (aggregate_funnel, bit_balance, codebook_usage, hamming_pair_histogram,
                           query_funnel, quantization_errors, recall_cost_curve, removed_by_stage,
                           rerank_signal, reweighting_view, true_match_ranks, umap_layout)
from meet.config import CascadeConfig
from meet.errors import ConfigError, DataError
from meet.inference import Encoded
from meet.quantization import ProductQuantizer, pack_codes, unpack_codes
from meet.search import GalleryIndex, HashPQ, stage_survivors
from meet.search.quantizers import QUANTIZERS
from meet.search.rerank import reciprocal_scores

N_BITS, N_CODEBOOKS, CODEBOOK_SIZE, DIM = 16, 4, 16, 12


def _side(rng: np.random.Generator, labels: np.ndarray, centres: np.ndarray, dense_centres: np.ndarray,
          books: np.ndarray) -> Encoded:
    hashed = np.tanh(centres[labels] + 0.9 * rng.normal(size=(len(labels), N_BITS))).astype(np.float32)
    dense = dense_centres[labels] + 0.6 * rng.normal(size=(len(labels), DIM))
    dense = (dense / np.linalg.norm(dense, axis=1, keepdims=True)).astype(np.float32)
    sub = hashed.reshape(len(labels), N_CODEBOOKS, 1, -1)
    pq = ((sub - books[None]) ** 2).sum(-1).argmin(-1).astype(np.uint8)  # nearest codeword
    return Encoded(dense=dense, hash=hashed, codes=pack_codes(hashed), pq_codes=pq)


def make_pair(seed: int = 0, n_images: int = 150, n_texts: int = 120, n_clusters: int = 6):
    """(image index, text index, images, texts, relevance (n_texts, n_images))."""
    rng = np.random.default_rng(seed)
    centres = 1.5 * rng.normal(size=(n_clusters, N_BITS))
    dense_centres = rng.normal(size=(n_clusters, DIM))
    books = rng.uniform(-1, 1, size=(2, N_CODEBOOKS, CODEBOOK_SIZE, N_BITS // N_CODEBOOKS)).astype(np.float32)
    image_labels = rng.integers(0, n_clusters, n_images)
    text_labels = rng.integers(0, n_clusters, n_texts)
    images = _side(rng, image_labels, centres, dense_centres, books[0])
    texts = _side(rng, text_labels, centres, dense_centres, books[1])
    rec_img, rec_txt = reciprocal_scores(images.dense.astype(np.float16), texts.dense.astype(np.float16), 20, 20)
    image_index = GalleryIndex("image", [f"img{i}" for i in range(n_images)], images.dense, images.codes,
                               images.pq_codes, HashPQ(books[0]), hash=images.hash, reciprocal=rec_img)
    text_index = GalleryIndex("text", [f"cap{i}" for i in range(n_texts)], texts.dense, texts.codes,
                              texts.pq_codes, HashPQ(books[1]), hash=texts.hash, reciprocal=rec_txt)
    return image_index, text_index, images, texts, text_labels[:, None] == image_labels[None, :]


def in_space(index: GalleryIndex, space: str) -> GalleryIndex:
    """The same items behind a quantizer of ``space`` fitted on them (``hash``: unchanged)."""
    if space == "hash":
        return index
    quantizer = QUANTIZERS[space].fit(index.dense.astype(np.float32), N_CODEBOOKS, CODEBOOK_SIZE, n_iter=5,
                                      beam_size=2)
    return GalleryIndex(index.side, index.ids, index.dense, index.codes, quantizer.encode(quantizer.source(index)),
                        quantizer, hash=index.hash, reciprocal=index.reciprocal, cascade=index.cascade)


@pytest.fixture(scope="module")
def synthetic():
    image_index, text_index, images, texts, rel = make_pair()
    cfg = CascadeConfig(reciprocal_k=20)
    traces = image_index.search(texts, k=10, mode="meet", cascade=cfg, trace=True).traces
    return SimpleNamespace(image_index=image_index, text_index=text_index, images=images, texts=texts,
                           rel=rel, cfg=cfg, traces=traces)


def small_budget(monkeypatch, budget: int = 500) -> None:
    """Force tiny query blocks, so blocked code paths run several blocks."""
    monkeypatch.setattr(analysis_base, "WORK_BUDGET", budget)


def json_round_trip(record) -> dict:
    out = record.to_dict()
    json.loads(json.dumps(out, allow_nan=False))
    return out


# ------------------------------------------------------------------ Stage I

def test_codebook_usage_matches_loops():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 5, size=(300, 3)).astype(np.uint8)  # codewords 5..7 never used
    codes[:, 2] = 4                                             # one codebook uses one codeword
    usage = codebook_usage(codes, 8)
    for m in range(3):
        counts = [sum(1 for i in range(300) if codes[i, m] == k) for k in range(8)]
        assert usage.counts[m].tolist() == counts
        probs = [c / 300 for c in counts if c]
        entropy = -sum(p * np.log2(p) for p in probs)
        assert usage.entropy_bits[m] == pytest.approx(entropy)
        assert usage.perplexity[m] == pytest.approx(2 ** entropy)
        assert usage.dead[m] == sum(1 for c in counts if c == 0)
    np.testing.assert_allclose(usage.share.sum(axis=1), 1.0)
    assert usage.entropy_bits[2] == 0 and usage.perplexity[2] == 1 and usage.dead[2] == 7
    assert usage.n_items == 300
    assert json_round_trip(usage)["counts"][2][4] == 300
    with pytest.raises(DataError, match="outside"):
        codebook_usage(codes, 4)
    with pytest.raises(DataError):
        codebook_usage(np.zeros((0, 3), np.uint8), 8)


def test_codebook_usage_uniform_codes_reach_log2_k():
    codes = np.tile(np.arange(16, dtype=np.uint8), 10)[:, None].repeat(2, axis=1)
    usage = codebook_usage(codes, 16)
    np.testing.assert_allclose(usage.entropy_bits, 4.0)
    np.testing.assert_allclose(usage.perplexity, 16.0)


def test_quantization_errors_match_product_quantizer_decode(monkeypatch):
    import torch
    rng = np.random.default_rng(2)
    pq = ProductQuantizer(N_BITS, N_CODEBOOKS, CODEBOOK_SIZE)
    pq.codebooks.copy_(torch.from_numpy(rng.normal(size=tuple(pq.codebooks.shape)).astype(np.float32)))
    pq.fitted.fill_(True)
    features = rng.normal(size=(50, N_BITS)).astype(np.float32)
    codes = pq.encode(torch.from_numpy(features)).numpy().astype(np.uint8)
    recon = pq.decode(torch.from_numpy(codes.astype(np.int64))).numpy()
    expected = [float(((features[i] - recon[i]) ** 2).sum()) for i in range(50)]
    small_budget(monkeypatch, 40)
    errors = quantization_errors(features, codes, HashPQ(pq.codebooks.numpy()))
    np.testing.assert_allclose(errors, expected, rtol=1e-5)
    assert errors.shape == (50,)
    with pytest.raises(DataError, match="do not fit"):
        quantization_errors(features[:, :8], codes, HashPQ(pq.codebooks.numpy()))


def test_unpack_codes_inverts_pack_codes():
    signs = np.where(np.random.default_rng(3).random((20, 24)) < 0.5, -1.0, 1.0).astype(np.float32)
    np.testing.assert_array_equal(unpack_codes(pack_codes(signs), 24), signs)


def test_bit_balance_independent_identical_and_constant_bits(monkeypatch):
    rng = np.random.default_rng(4)
    independent = rng.random((20000, 32)) < 0.5
    balance = bit_balance(np.packbits(independent, axis=1, bitorder="little"))
    assert balance.effective_bits > 0.97 * 32
    assert balance.mean_entropy > 0.999 and balance.constant_bits == 0
    # identical bits: one bit's worth
    same = np.repeat(rng.random((500, 1)) < 0.3, 16, axis=1)
    identical = bit_balance(np.packbits(same, axis=1, bitorder="little"))
    assert identical.effective_bits == pytest.approx(1.0)
    np.testing.assert_allclose(identical.correlation, 1.0)
    # reference: np.corrcoef, eigenvalues, binary entropy per bit; one constant bit
    bits = rng.random((400, 16)) < np.linspace(0.1, 0.9, 16)
    bits[:, 5] = bits[:, 3] ^ (rng.random(400) < 0.1)  # correlated pair
    bits[:, 9] = True                                  # constant
    small_budget(monkeypatch, 16 * 7)
    result = bit_balance(np.packbits(bits, axis=1, bitorder="little"))
    varying = [i for i in range(16) if i != 9]
    ref = np.corrcoef(bits[:, varying].astype(float), rowvar=False)
    np.testing.assert_allclose(result.correlation[np.ix_(varying, varying)], ref, atol=1e-9)
    assert result.correlation[9, 9] == 1 and not result.correlation[9, varying].any()
    eig = np.linalg.eigvalsh(ref)
    assert result.effective_bits == pytest.approx(eig.sum() ** 2 / (eig ** 2).sum())
    assert result.constant_bits == 1 and result.bit_entropy[9] == 0
    p = bits.mean(axis=0)
    for i in varying:
        assert result.share_ones[i] == pytest.approx(p[i])
        assert result.bit_entropy[i] == pytest.approx(-p[i] * np.log2(p[i]) - (1 - p[i]) * np.log2(1 - p[i]))
    json_round_trip(result)
    with pytest.raises(DataError, match="uint8"):
        bit_balance(bits)


def test_hamming_pair_histogram_matches_pairwise_loop(synthetic, monkeypatch):
    queries, gallery, rel = synthetic.texts.codes[:40], synthetic.image_index.codes, synthetic.rel[:40]
    small_budget(monkeypatch, 3 * 150 * 7)  # 7 queries per block
    hist = hamming_pair_histogram(queries, gallery, rel)
    q_bits, g_bits = unpack_codes(queries, N_BITS), unpack_codes(gallery, N_BITS)
    dist = np.array([[int((q_bits[i] != g_bits[j]).sum()) for j in range(len(g_bits))]
                     for i in range(len(q_bits))])
    assert hist.positive.sum() + hist.negative.sum() == rel.size
    np.testing.assert_array_equal(hist.positive, np.bincount(dist[rel], minlength=N_BITS + 1))
    np.testing.assert_array_equal(hist.negative, np.bincount(dist[~rel], minlength=N_BITS + 1))
    assert hist.positive_mean == pytest.approx(dist[rel].mean())
    assert hist.negative_mean == pytest.approx(dist[~rel].mean())
    assert hist.positive_median == np.median(dist[rel])
    assert hist.overlap == pytest.approx((dist[~rel] <= np.median(dist[rel])).mean())
    assert hist.positive_mean < hist.negative_mean  # clustered codes separate the classes
    # an even number of positives: median halfway between the middle two
    one = hamming_pair_histogram(queries[:1], gallery[:2], np.array([[True, True]]))
    pair = sorted(dist[0, :2])
    assert one.positive_median == (pair[0] + pair[1]) / 2
    empty = hamming_pair_histogram(queries[:2], gallery, np.zeros((2, len(gallery)), bool))
    assert np.isnan(empty.positive_mean) and json_round_trip(empty)["overlap"] is None
    with pytest.raises(DataError, match="shape"):
        hamming_pair_histogram(queries, gallery, rel[:, :10])


# ------------------------------------------------------------------ Stage II filters

def test_query_funnel_matches_set_arithmetic(synthetic):
    for trace, rel in zip(synthetic.traces[:20], synthetic.rel[:20]):
        funnel = query_funnel(trace, rel)
        hamming = set(trace.stage("hamming").ids.tolist())
        pq = set(trace.stage("pq").ids.tolist())
        relevant = set(np.flatnonzero(rel).tolist())
        gallery = set(range(trace.gallery_size))
        expected = [("gallery", gallery, set()), ("hamming", hamming, relevant - hamming),
                    ("pq", pq, (relevant & hamming) - pq), ("rerank", pq, set())]
        assert [s["name"] for s in funnel.stages] == [e[0] for e in expected]
        for stage, (_, kept, lost) in zip(funnel.stages, expected):
            assert stage["kept"] == len(kept)
            assert stage["relevant_kept"] == len(relevant & kept)
            assert stage["relevant_lost_here"] == len(lost)
            assert sorted(stage["lost_ids"].tolist()) == sorted(lost)
        assert funnel.n_relevant == len(relevant)
        assert funnel.stages[1]["removed"] == trace.gallery_size - len(hamming)
    no_truth = query_funnel(synthetic.traces[0])
    assert no_truth.stages[2]["relevant_kept"] is None and no_truth.stages[2]["lost_ids"].size == 0
    assert json_round_trip(funnel)["stages"][3]["name"] == "rerank"


def test_funnel_views_reject_exhaustive_traces(synthetic):
    trace = synthetic.image_index.search(synthetic.texts, k=5, mode="dense", trace=True).traces[0]
    for call in (lambda: query_funnel(trace), lambda: reweighting_view(trace),
                 lambda: true_match_ranks(trace, synthetic.rel[0])):
        with pytest.raises(DataError, match="mode='cascade' or 'meet'"):
            call()


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_aggregate_funnel_matches_stage_survivors(synthetic, monkeypatch, direction):
    queries, gallery, rel = ((synthetic.texts, synthetic.image_index, synthetic.rel) if direction == "t2i"
                             else (synthetic.images, synthetic.text_index, synthetic.rel.T))
    masks = stage_survivors(gallery, queries, synthetic.cfg)
    small_budget(monkeypatch, 4 * gallery.n_items * 9)  # blocks of 9 queries
    agg = aggregate_funnel(gallery, queries, rel, synthetic.cfg)
    assert agg.direction == direction
    total = rel.sum()
    after_h, after_pq = (rel & masks.after_hamming).sum(), (rel & masks.after_pq).sum()
    assert agg.total_relevant == total
    np.testing.assert_array_equal(agg.relevant_kept, [total, after_h, after_pq])
    np.testing.assert_allclose(agg.recall_ceiling, [1, after_h / total, after_pq / total])
    np.testing.assert_allclose(agg.lost_share, [0, (total - after_h) / total, (after_h - after_pq) / total])
    np.testing.assert_allclose(agg.mean_kept, [gallery.n_items, masks.after_hamming.sum(1).mean(),
                                               masks.after_pq.sum(1).mean()])
    np.testing.assert_array_equal(agg.per_query_lost[:, 0], (rel & ~masks.after_hamming).sum(1))
    np.testing.assert_array_equal(agg.per_query_lost[:, 1], (rel & masks.after_hamming & ~masks.after_pq).sum(1))
    assert 0 < agg.recall_ceiling[2] < agg.recall_ceiling[1] < 1  # both filters lose something
    assert [row["stage"] for row in agg.rows()] == ["gallery", "hamming", "pq"]
    json_round_trip(agg)


@pytest.mark.parametrize("space,hamming_index", [("hash", "flat"), ("dense", "flat"), ("residual", "flat"),
                                                 ("hash", "ivf")])
@pytest.mark.parametrize("scoring", ["symmetric", "asymmetric"])
def test_recall_cost_curve_rows_equal_stage_survivors(synthetic, monkeypatch, scoring, space, hamming_index):
    """Every row of the curve is what the cascade's filters keep at those rates, for every
    Hamming scoring, quantization space and Hamming index (the curve once re-implemented
    the filters and scored Hamming symmetrically whatever the config said)."""
    cfg = dataclasses.replace(synthetic.cfg, hamming_scores=scoring, hamming_index=hamming_index,
                              hamming_nlist=8, hamming_nprobe=2)
    gallery = in_space(synthetic.image_index, space)
    small_budget(monkeypatch, 8 * 150 * 11)  # blocks of 11 queries
    curve = recall_cost_curve(gallery, synthetic.texts, synthetic.rel, hamming_rates=[0.2, 0.6, 60],
                              pq_rates=[0.5, 1.0, 7], cascade=cfg)
    assert len(curve.R) == 10  # 3 x 3 grid + the config's own (0.6, 0.6) appended
    assert curve.operating_index == 9
    assert curve.operating_point["hamming_rate"] == 0.6 and curve.operating_point["pq_rate"] == 0.6
    total = synthetic.rel.sum()
    for i in range(len(curve.R)):
        rates = dataclasses.replace(cfg, hamming_rate_t2i=float(curve.hamming_rate[i]),
                                    pq_rate_t2i=float(curve.pq_rate[i]))
        masks = stage_survivors(gallery, synthetic.texts, rates)
        assert curve.R[i] == masks.after_hamming.sum(1)[0] and curve.q[i] == masks.after_pq.sum(1)[0]
        assert curve.ceiling_after_hamming[i] == pytest.approx((synthetic.rel & masks.after_hamming).sum() / total)
        assert curve.ceiling_after_pq[i] == pytest.approx((synthetic.rel & masks.after_pq).sum() / total)
        assert curve.cost[i] == pytest.approx(curve.q[i] / 150)
    agg = aggregate_funnel(gallery, synthetic.texts, synthetic.rel, cfg)
    assert curve.operating_point["ceiling_after_pq"] == pytest.approx(agg.recall_ceiling[2])
    assert curve.operating_point["ceiling_after_hamming"] == pytest.approx(agg.recall_ceiling[1])


def test_recall_cost_curve_grid_and_errors(synthetic):
    cfg = synthetic.cfg
    # the config's rates already in the grid: no extra row
    inside = recall_cost_curve(synthetic.image_index, synthetic.texts, synthetic.rel, [0.6], [0.6], cfg)
    assert len(inside.R) == 1 and inside.operating_index == 0 and inside.direction == "t2i"
    curve = recall_cost_curve(synthetic.image_index, synthetic.texts, synthetic.rel, [0.2, 0.6], [0.5], cfg)
    assert len(json_round_trip(curve)["R"]) == 3 and len(curve.rows()) == 3
    with pytest.raises(ConfigError):
        recall_cost_curve(synthetic.image_index, synthetic.texts, synthetic.rel, [], [0.5], cfg)
    with pytest.raises(DataError, match="relevant has shape"):  # image queries need the transposed truth
        recall_cost_curve(synthetic.text_index, synthetic.images, synthetic.rel, [0.5], [0.5], cfg)


def test_removed_by_stage_orders_relevant_then_dense(synthetic):
    gallery = synthetic.image_index
    dense = gallery.dense.astype(np.float32)
    for row in range(10):
        trace, rel = synthetic.traces[row], synthetic.rel[row]
        query = synthetic.texts.dense[row]
        hamming = set(trace.stage("hamming").ids.tolist())
        pq = set(trace.stage("pq").ids.tolist())
        for stage, removed in (("hamming", set(range(gallery.n_items)) - hamming), ("pq", hamming - pq)):
            ranked = sorted(removed, key=lambda j: (not rel[j], -float(dense[j] @ query), j))
            out = removed_by_stage(trace, rel, stage, 12, dense_query=query, gallery=gallery)
            assert out.tolist() == ranked[:12]
        out = removed_by_stage(trace, None, "pq", 1000, dense_query=query, gallery=dense)
        assert out.tolist() == sorted(hamming - pq, key=lambda j: (-float(dense[j] @ query), j))
    with pytest.raises(ConfigError):
        removed_by_stage(trace, rel, "rerank", dense_query=query, gallery=gallery)
    with pytest.raises(DataError, match="do not match"):
        removed_by_stage(trace, rel, "pq", dense_query=query[:4], gallery=gallery)


# ------------------------------------------------------------------ Stage II reweighting

def test_reweighting_view_ranks_match_argsort(synthetic):
    for trace in synthetic.traces[:15]:
        view = reweighting_view(trace)
        n = len(view.ids)
        assert n == len(trace.stage("pq").ids) and view.consistency is not None
        dense_order = sorted(range(n), key=lambda j: (-float(view.dense[j]), int(view.ids[j])))
        assert [dense_order.index(j) for j in range(n)] == view.rank_before.tolist()
        assert view.ids[np.argsort(view.rank_after)].tolist() == trace.final_order.tolist()
        final_order = sorted(range(n), key=lambda j: (-float(view.final[j]), int(view.ids[j])))
        assert view.rank_after.tolist() == [final_order.index(j) for j in range(n)]
    assert (view.complementarity_ranks >= -1).all()
    json_round_trip(view)
    cascade = synthetic.image_index.search(synthetic.texts, k=5, mode="cascade", cascade=synthetic.cfg,
                                           trace=True).traces[0]
    plain = reweighting_view(cascade)
    assert plain.consistency is None and (plain.rank_before == plain.rank_after).all()


def test_true_match_ranks_match_loops(synthetic):
    for trace, rel in zip(synthetic.traces, synthetic.rel):
        ranks = true_match_ranks(trace, rel)
        def first(order):
            return next((i for i, j in enumerate(order) if rel[j]), None)
        view = reweighting_view(trace)
        dense_order = [int(view.ids[j]) for j in np.argsort(view.rank_before)]
        assert ranks == {"hamming": first(trace.stage("hamming").ids), "pq": first(trace.stage("pq").ids),
                         "before": first(dense_order), "after": first(trace.final_order),
                         "n_relevant": int(rel.sum()), "n_relevant_candidates": int(rel[view.ids].sum())}
    assert true_match_ranks(synthetic.traces[0], np.zeros(150, bool))["after"] is None


def test_rerank_signal_matches_pairwise_loops(synthetic):
    """Each term's AUC is the mean over queries of P(relevant candidate above another),
    ties half, computed here by a double loop over every (relevant, other) pair."""
    signal = rerank_signal(synthetic.image_index, synthetic.texts, synthetic.rel, synthetic.cfg, batch_size=7)

    def auc(scores, labels):
        pos = [x for x, y in zip(scores, labels) if y]
        neg = [x for x, y in zip(scores, labels) if not y]
        if not pos or not neg:
            return None
        return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (len(pos) * len(neg))

    expected = {"dense": [], "consistency": [], "final": [], "complementarity": [], "dense_top_z": []}
    ranks_rel = []
    for trace, rel in zip(synthetic.traces, synthetic.rel):
        view = reweighting_view(trace)
        labels = rel[view.ids]
        for name, values in (("dense", view.dense), ("consistency", view.consistency), ("final", view.final)):
            expected[name].append(auc(values, labels))
        consulted = view.complementarity_ranks >= 0
        expected["complementarity"].append(auc(view.complementarity[consulted], labels[consulted]))
        expected["dense_top_z"].append(auc(view.dense[consulted], labels[consulted]))
        ranks_rel += view.complementarity_ranks[consulted & labels].tolist()
    for name, values in expected.items():
        used = [v for v in values if v is not None]
        assert signal.auc[name] == pytest.approx(np.mean(used)) and signal.queries_used[name] == len(used)
    assert signal.rank_relevant == pytest.approx(np.mean(ranks_rel)) and signal.reciprocal_k == 20
    assert signal.relevant_per_item == np.median(synthetic.rel.sum(axis=0)) and signal.direction == "t2i"
    assert 0.5 < signal.auc["dense"] <= 1.0  # the clustered fixture is far from random
    json_round_trip(signal)


# ------------------------------------------------------------------ UMAP

def test_umap_layout_is_deterministic_and_subsamples():
    rng = np.random.default_rng(5)
    images, texts = rng.normal(size=(60, 16)), rng.normal(size=(140, 16))
    start = time.perf_counter()
    layout = umap_layout(images, texts, n_neighbors=10, seed=0)
    first = time.perf_counter() - start
    assert layout.xy.shape == (200, 2) and layout.xy.dtype == np.float32 and np.isfinite(layout.xy).all()
    assert (layout.side[:60] == "image").all() and (layout.side[60:] == "text").all()
    np.testing.assert_array_equal(layout.index, np.r_[np.arange(60), np.arange(140)])
    again = umap_layout(images, texts, n_neighbors=10, seed=0)
    np.testing.assert_array_equal(again.xy, layout.xy)
    sub = umap_layout(images, texts, n_neighbors=10, seed=1, max_points=80)
    sub2 = umap_layout(images, texts, n_neighbors=10, seed=1, max_points=80)
    assert len(sub.xy) == 80
    np.testing.assert_array_equal(sub.index, sub2.index)
    np.testing.assert_array_equal(sub.xy, sub2.xy)
    rows = np.where(sub.side == "image", sub.index, 60 + sub.index)
    assert (np.diff(rows) > 0).all()  # input order kept
    assert len(json_round_trip(sub)["side"]) == 80
    short = umap_layout(images, texts, n_neighbors=10, seed=0, n_epochs=30)
    assert short.xy.shape == (200, 2) and not np.array_equal(short.xy, layout.xy)
    print(f"umap_layout, 200 points: first call {first:.1f} s")
    with pytest.raises(DataError, match="at least"):
        umap_layout(images[:2], texts[:1])
    with pytest.raises(DataError, match="-d"):
        umap_layout(images, texts[:, :8])
