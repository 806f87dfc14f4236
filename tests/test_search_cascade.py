"""The Stage II engine (:mod:`meet.search`) against slow, obvious references (plain numpy /
Python loops).

Small seeded random galleries (300 items, dense dim 32, 16 bits, 4 codebooks of 16
codewords): 16-bit codes tie a lot, so the (score, position) tie rule is exercised hard.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from meet.config import CascadeConfig
from meet.errors import ConfigError, DataError
from meet.quantization import pack_codes
from meet.search import GalleryIndex, HashPQ, full_scores, stage_survivors
from meet.search import cascade as engine
from meet.search import hamming, pq_filter, rerank
from meet.search.hamming import hamming_filter
from meet.search.topk import stable_top, stream_topk, survivor_count

N_ITEMS, DIM, N_BITS, N_CODEBOOKS, CODEBOOK_SIZE, RECIPROCAL_K = 300, 32, 16, 4, 16, 20


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_gallery(seed=0, n=N_ITEMS, reciprocal=True, side="image"):
    rng = np.random.default_rng(seed)
    hashed = np.tanh(rng.standard_normal((n, N_BITS))).astype(np.float32)
    rec = None
    if reciprocal:
        rec = -np.sort(-rng.uniform(-0.2, 0.8, (n, RECIPROCAL_K)), axis=1)
    books = rng.standard_normal((N_CODEBOOKS, CODEBOOK_SIZE, N_BITS // N_CODEBOOKS)).astype(np.float32)
    return GalleryIndex(side, [f"item{i}" for i in range(n)], unit(rng, n, DIM), pack_codes(hashed),
                        rng.integers(0, CODEBOOK_SIZE, (n, N_CODEBOOKS)).astype(np.uint8), HashPQ(books),
                        hash=hashed, reciprocal=rec, fingerprint="synthetic")


def make_queries(seed=1, n=9):
    rng = np.random.default_rng(seed)
    hashed = np.tanh(rng.standard_normal((n, N_BITS))).astype(np.float32)
    return SimpleNamespace(dense=unit(rng, n, DIM), hash=hashed, codes=pack_codes(hashed))


# ------------------------------------------------------------------ references

def ref_count(rate, n):
    if rate <= 1.0:
        return min(n, max(1, int(np.floor(rate * n + 0.5))))
    return min(int(rate), n)


def ref_hamming(query_codes, codes):
    q = np.unpackbits(query_codes, axis=1, bitorder="little").astype(int)
    g = np.unpackbits(codes, axis=1, bitorder="little").astype(int)
    return (q[:, None, :] != g[None, :, :]).sum(axis=2)


def ref_asymmetric(query_hash, codes):
    """<h, b> with b the +-1 code: float64, (n_queries, n_items)."""
    signs = np.unpackbits(codes, axis=1, bitorder="little").astype(np.float64) * 2 - 1
    return query_hash.astype(np.float64) @ signs.T


def ordered(keys, positions):
    """Positions sorted by (key, position) -- the one tie rule, written as a Python sort."""
    return [p for _, p in sorted(zip(keys, positions))]


def ref_adc(query_hash, gallery):
    recon = np.concatenate([gallery.codebooks[m][gallery.pq_codes[:, m]]
                            for m in range(gallery.pq_codes.shape[1])], axis=1).astype(np.float64)
    return query_hash.astype(np.float64) @ recon.T


def ref_dense(query_dense, gallery):
    return query_dense.astype(np.float64) @ gallery.dense.astype(np.float64).T


def ref_cascade(queries, gallery, cfg, direction, mode, adc=None):
    """Per query, in loops: (hamming list, pq list, candidates' terms, final order).
    ``adc``: the quantization filter's scores (n_queries, n_items); default: hash-space
    product quantization (:func:`ref_adc`)."""
    rate_h, rate_q, top_z = (getattr(cfg, f"{p}_{direction}") for p in ("hamming_rate", "pq_rate", "top_z"))
    n = gallery.n_items
    n_h = ref_count(rate_h, n)
    n_q = ref_count(rate_q, n_h)
    if cfg.hamming_scores == "asymmetric":
        dist = -ref_asymmetric(queries.hash, gallery.codes)
    else:
        dist = ref_hamming(queries.codes, gallery.codes)
    adc = ref_adc(queries.hash, gallery) if adc is None else adc
    dense = ref_dense(queries.dense, gallery)
    out = []
    for i in range(len(queries.dense)):
        ham = ordered(list(dist[i]), list(range(n)))[:n_h]
        pq = ordered([-adc[i, j] for j in ham], ham)[:n_q]
        s = {j: dense[i, j] for j in pq}
        by_dense = ordered([-s[j] for j in pq], pq)
        terms = {"s": s, "c": {}, "rank": {}, "comp": {j: 0.0 for j in pq}}
        if mode == "cascade":
            out.append((ham, pq, terms, by_dense))
            continue
        x = {j: gallery.dense[j].astype(np.float64) for j in pq}
        logits = np.array([s[j] / cfg.consistency_temperature for j in pq])
        weights = np.exp(logits - logits.max())
        weights /= weights.sum()
        memory = sum(w * x[j] for w, j in zip(weights, pq))
        memory /= np.linalg.norm(memory)
        terms["c"] = {j: float(x[j] @ memory / np.linalg.norm(x[j])) for j in pq}
        z = min(top_z, len(pq)) if gallery.reciprocal is not None else 0
        q16 = queries.dense[i].astype(np.float16).astype(np.float64)
        for j in by_dense[:z]:
            s16 = float(np.float16(q16 @ gallery.dense[j].astype(np.float64)))
            rank = sum(1 for e in gallery.reciprocal[j] if float(e) > s16)
            terms["rank"][j] = rank
            terms["comp"][j] = 1.0 / (1 + rank)
        if cfg.fusion:
            final = [s[j] + cfg.alpha * terms["c"][j] + cfg.beta * terms["comp"][j] for j in pq]
            order = ordered([-f for f in final], pq)
        else:
            head = by_dense[:z]
            head = [j for _, _, j in sorted((terms["rank"][j], place, j) for place, j in enumerate(head))]
            order = head + by_dense[z:]
        out.append((ham, pq, terms, order))
    return out


def assert_matches_reference(result, reference, k=10):
    """Each query's Hamming survivors, PQ survivors and top k equal the loop reference's."""
    for i, (ham, pq, _, order) in enumerate(reference):
        assert result.traces[i].stage("hamming").ids.tolist() == ham
        assert result.traces[i].stage("pq").ids.tolist() == pq
        assert result.ids[i].tolist() == order[:k]


def encoded_items(n, seed=9, n_codebooks=4):
    """``n`` new items as an Encoded would hold them; their hash-space PQ codes are zeros
    (a dense- or residual-space index must re-encode them)."""
    rng = np.random.default_rng(seed)
    hashed = np.tanh(rng.standard_normal((n, N_BITS))).astype(np.float32)
    return SimpleNamespace(dense=unit(rng, n, DIM), hash=hashed, codes=pack_codes(hashed),
                           pq_codes=np.zeros((n, n_codebooks), np.uint8))


# ------------------------------------------------------------------ building blocks

def test_survivor_count_fraction_and_count():
    assert survivor_count(0.3, 300) == 90 and survivor_count(0.6, 5) == 3
    assert survivor_count(1.0, 7) == 7 and survivor_count(0.001, 300) == 1
    assert survivor_count(50, 300) == 50 and survivor_count(5000, 300) == 300
    assert survivor_count(2.9, 10) == 2 and survivor_count(0.5, 0) == 0
    for rate, n in [(0.25, 10), (0.05, 10), (0.15, 10), (17.0, 9)]:
        assert survivor_count(rate, n) == ref_count(rate, n)
    for bad in (0, -1, float("nan")):
        with pytest.raises(ConfigError, match="positive"):
            survivor_count(bad, 10)


def test_faiss_hamming_distances_equal_numpy_popcount():
    gallery, queries = make_gallery(), make_queries()
    reference = ref_hamming(queries.codes, gallery.codes)
    assert np.array_equal(hamming.hamming_distances(queries.codes, gallery.codes), reference)
    dist, labels = gallery.binary_index.search(queries.codes, N_ITEMS)
    assert np.array_equal(dist, np.take_along_axis(reference, labels, axis=1))
    # 64-bit codes take the uint64 word path.
    rng = np.random.default_rng(3)
    wide_q, wide_g = rng.integers(0, 256, (4, 8), dtype=np.uint8), rng.integers(0, 256, (50, 8), dtype=np.uint8)
    assert np.array_equal(hamming.hamming_distances(wide_q, wide_g), ref_hamming(wide_q, wide_g))


def test_hamming_distances_without_numpy_bitwise_count(monkeypatch):
    gallery, queries = make_gallery(), make_queries()
    monkeypatch.delattr(np, "bitwise_count")  # numpy < 2.0 has none: the byte table is used
    assert np.array_equal(hamming.hamming_distances(queries.codes, gallery.codes),
                          ref_hamming(queries.codes, gallery.codes))


@pytest.mark.parametrize("method", ["counting", "heap", "sort", "auto"])
@pytest.mark.parametrize("n_keep", [1, 7, 90, 180, 300])
def test_hamming_filter_equals_stable_sort(method, n_keep):
    gallery, queries = make_gallery(), make_queries()
    reference = ref_hamming(queries.codes, gallery.codes)
    pos, dist = hamming_filter(queries.codes, gallery.codes, n_keep, gallery.binary_index, method=method)
    for i in range(len(queries.codes)):
        expected = ordered(list(reference[i]), list(range(N_ITEMS)))[:n_keep]
        assert pos[i].tolist() == expected
        assert dist[i].tolist() == [reference[i, j] for j in expected]


@pytest.mark.parametrize("n_keep", [1, 20, 75, 200])
def test_asymmetric_filter_equals_exact_ranking(n_keep):
    gallery, queries = make_gallery(), make_queries()
    reference = ref_asymmetric(queries.hash, gallery.codes)
    for scan_index in (gallery.sign_scan_index, None):  # fast scan + re-score, and exact
        pos, scores = hamming.asymmetric_filter(queries.hash, gallery.codes, n_keep, scan_index)
        for i in range(len(pos)):
            assert pos[i].tolist() == ordered((-reference[i]).tolist(), list(range(N_ITEMS)))[:n_keep]
            assert np.allclose(scores[i], reference[i, pos[i]], atol=1e-5)


def test_asymmetric_fast_scan_keeps_the_exact_top_on_a_larger_gallery():
    """64-bit codes, 20,000 items: the fast scan's 8-bit tables must not cost survivors."""
    rng = np.random.default_rng(11)
    codes = pack_codes(rng.standard_normal((20000, 64)).astype(np.float32))
    query_hash = np.tanh(rng.standard_normal((16, 64))).astype(np.float32)
    reference = ref_asymmetric(query_hash, codes)
    n_keep = 500
    pos, scores = hamming.asymmetric_filter(query_hash, codes, n_keep, hamming.build_sign_scan_index(codes))
    for i in range(len(pos)):
        threshold = np.sort(reference[i])[::-1][n_keep - 1]
        assert (reference[i, pos[i]] >= threshold - 1e-5).all()  # the exact top n_keep, up to ties
        assert np.allclose(scores[i], reference[i, pos[i]], atol=1e-5)
        assert pos[i].tolist() == ordered((-scores[i]).tolist(), pos[i].tolist())


def test_sign_scan_index_follows_added_items():
    gallery, queries = make_gallery(n=200, reciprocal=False), make_queries()
    extra = make_gallery(seed=3, n=100, reciprocal=False)
    assert gallery.sign_scan_index.ntotal == 200
    gallery.add([f"new{i}" for i in range(100)], extra)  # an index holding hash features reads as items
    assert gallery.sign_scan_index.ntotal == 300
    pos, _ = hamming.asymmetric_filter(queries.hash, gallery.codes, 30, gallery.sign_scan_index)
    exact, _ = hamming.asymmetric_filter(queries.hash, gallery.codes, 30, None)
    assert np.array_equal(pos, exact)


def test_sign_codebooks_make_packed_bytes_pq_codes():
    rng = np.random.default_rng(12)
    codes = pack_codes(rng.standard_normal((50, 32)).astype(np.float32))
    query_hash = rng.standard_normal((3, 32)).astype(np.float32)
    tables = hamming.sign_tables(query_hash, 32)
    adc = pq_filter.adc_gather(tables, pq_filter.gather_codes(codes, np.tile(np.arange(50), (3, 1))))
    assert np.allclose(adc.numpy(), ref_asymmetric(query_hash, codes), atol=1e-5)


def test_small_steps_run_on_one_thread_of_torch_and_faiss_then_restore_both():
    import faiss

    from meet.search.topk import SMALL_WORK, threads_for

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    try:
        with threads_for(SMALL_WORK - 1):
            assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (1, 1)
        assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (2, 2)
        with threads_for(SMALL_WORK):
            assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == (2, 2)
    finally:
        torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])


def test_stable_top_matches_lexsort_with_heavy_ties():
    rng = np.random.default_rng(5)
    scores = torch.from_numpy(rng.integers(0, 4, (6, 200)).astype(np.float32))  # ties everywhere
    positions = torch.from_numpy(np.stack([rng.permutation(1000)[:200] for _ in range(6)]))
    for k in (1, 5, 50, 200):
        got = stable_top(scores, k, positions)
        for i in range(6):
            expected = ordered((-scores[i]).tolist(), positions[i].tolist())[:k]
            assert positions[i][got[i]].tolist() == expected
        plain = stable_top(scores, k)
        for i in range(6):
            assert plain[i].tolist() == ordered((-scores[i]).tolist(), list(range(200)))[:k]
    # k well below a quarter of the columns: the topk path, with rows whose boundary tie
    # runs past the candidates (integer scores) next to rows where it does not.
    wide = rng.integers(0, 1000, (8, 400)).astype(np.float32)
    wide[::2] = rng.integers(0, 3, (4, 400))
    wide_pos = torch.from_numpy(np.stack([rng.permutation(5000)[:400] for _ in range(8)]))
    for k in (1, 7, 60):
        got = stable_top(torch.from_numpy(wide), k, wide_pos)
        for i in range(8):
            assert wide_pos[i][got[i]].tolist() == ordered((-wide[i]).tolist(), wide_pos[i].tolist())[:k]
        plain = stable_top(torch.from_numpy(wide), k)
        for i in range(8):
            assert plain[i].tolist() == ordered((-wide[i]).tolist(), list(range(400)))[:k]
    distinct = torch.from_numpy(rng.standard_normal((4, 300)).astype(np.float32))
    assert torch.equal(stable_top(distinct, 10), torch.sort(distinct, dim=1, descending=True, stable=True).indices[:, :10])


def test_row_reader_equals_fancy_indexing_writable_or_not():
    rng = np.random.default_rng(13)
    positions = rng.integers(0, 60, (3, 7))
    for dtype in (np.float16, np.float32):
        stored = rng.standard_normal((60, 5)).astype(dtype)
        expected = torch.from_numpy(stored[positions].astype(np.float32))
        for writable in (True, False):
            stored.setflags(write=writable)  # a loaded index is a read-only memory map
            read = rerank.RowReader(stored, 21)
            assert torch.equal(read(positions), expected)
            assert torch.equal(read(positions[:1, :3]), expected[:1, :3])  # buffer reused
        stored.setflags(write=True)


def test_stream_topk_merges_blocks_exactly():
    rng = np.random.default_rng(6)
    scores = torch.from_numpy(rng.integers(0, 5, (3, 97)).astype(np.float32))
    pos, val = stream_topk(lambda a, b: scores[:, a:b], 97, 3, 12, block=10)
    for i in range(3):
        expected = ordered((-scores[i]).tolist(), list(range(97)))[:12]
        assert pos[i].tolist() == expected and val[i].tolist() == scores[i][expected].tolist()


def test_pq_filter_scores_and_order_match_reconstruction():
    gallery, queries = make_gallery(), make_queries()
    adc = ref_adc(queries.hash, gallery)
    pos, _ = hamming_filter(queries.codes, gallery.codes, 180, gallery.binary_index)
    tables = gallery.quantizer.lookup_tables(queries.hash)
    kept, kept_scores, all_scores = pq_filter.pq_filter(tables, gallery.pq_codes, pos, 60)
    assert np.allclose(all_scores, np.take_along_axis(adc, pos, axis=1), atol=1e-5)
    for i in range(len(pos)):
        ham = pos[i].tolist()
        expected = ordered([-adc[i, j] for j in ham], ham)[:60]
        assert pos[i][kept[i]].tolist() == expected
        assert np.allclose(kept_scores[i], adc[i, expected], atol=1e-5)


def test_gather_codes_matches_fancy_indexing_for_every_layout():
    rng = np.random.default_rng(8)
    positions = rng.integers(0, 40, (3, 11))
    wide = rng.integers(0, 40000, (40, 5)).astype(np.uint16)  # codebook_size > 256 (up to 65,536)
    for codes in (wide.astype(np.uint8), wide, np.asfortranarray(wide.astype(np.uint8))):
        assert np.array_equal(pq_filter.gather_codes(codes, positions).numpy(), codes[positions])
    for n_codebooks in (1, 2, 3, 4, 8):  # one-integer rows, and a record for M = 3
        codes = rng.integers(0, 256, (40, n_codebooks)).astype(np.uint8)
        assert np.array_equal(pq_filter.gather_codes(codes, positions).numpy(), codes[positions])


# ------------------------------------------------------------------ whole searches

@pytest.mark.parametrize("mode", ["dense", "hash", "pq"])
def test_exhaustive_modes_equal_full_rankings(mode):
    gallery, queries = make_gallery(), make_queries()
    full = {"dense": ref_dense(queries.dense, gallery),
            "hash": N_BITS - 2.0 * ref_hamming(queries.codes, gallery.codes),
            "pq": ref_adc(queries.hash, gallery)}[mode]
    result = gallery.search(queries, cascade=CascadeConfig(), k=25, mode=mode)
    for i in range(len(queries.dense)):
        expected = ordered((-full[i]).tolist(), list(range(N_ITEMS)))[:25]
        assert result.ids[i].tolist() == expected
        assert np.allclose(result.scores[i], full[i, expected], atol=1e-5)
    assert np.allclose(full_scores(gallery, queries, mode), full, atol=1e-5)
    padded = gallery.search(queries, cascade=CascadeConfig(), k=N_ITEMS + 5, mode=mode)
    assert (padded.ids[:, N_ITEMS:] == -1).all() and np.isneginf(padded.scores[:, N_ITEMS:]).all()


DIRS_SIDE = {"t2i": "image", "i2t": "text"}
CONFIGS = {
    "paper-fractions": CascadeConfig(),
    "counts": CascadeConfig(hamming_rate_t2i=120, pq_rate_t2i=40, hamming_rate_i2t=150, pq_rate_i2t=0.2),
    "official": CascadeConfig(fusion=False),
    "official-counts": CascadeConfig(fusion=False, hamming_rate_i2t=100, pq_rate_i2t=30, top_z_i2t=15),
    "strong-weights": CascadeConfig(alpha=0.5, beta=0.7, consistency_temperature=0.2, top_z_t2i=40),
    # fast scan + exact re-scoring (R small against the gallery), and the exact path
    "asymmetric-counts": CascadeConfig(hamming_scores="asymmetric", hamming_rate_t2i=60, pq_rate_t2i=20),
    "asymmetric-fractions": CascadeConfig(hamming_scores="asymmetric"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("mode", ["cascade", "meet"])
def test_cascade_and_meet_match_loop_reference(name, mode):
    cfg = CONFIGS[name]
    direction = "i2t" if "i2t" in name or name == "official-counts" else "t2i"
    gallery = make_gallery(side=DIRS_SIDE[direction])
    queries = make_queries()
    result = gallery.search(queries, k=10, mode=mode, cascade=cfg, trace=True)
    reference = ref_cascade(queries, gallery, cfg, direction, mode)
    for i, (ham, pq, terms, order) in enumerate(reference):
        tr = result.traces[i]
        assert tr.stage("hamming").ids.tolist() == ham
        assert tr.stage("pq").ids.tolist() == pq
        assert result.ids[i].tolist() == order[:10]
        assert tr.final_order.tolist() == order
        assert np.allclose(tr.dense_scores, [terms["s"][j] for j in pq], atol=1e-5)
        if mode == "meet":
            assert np.allclose(tr.consistency, [terms["c"][j] for j in pq], atol=1e-5)
            assert tr.complementarity_ranks.tolist() == [terms["rank"].get(j, -1) for j in pq]
            assert np.allclose(tr.complementarity, [terms["comp"][j] for j in pq])
    n_h = ref_count(getattr(cfg, f"hamming_rate_{direction}"), N_ITEMS)
    n_q = ref_count(getattr(cfg, f"pq_rate_{direction}"), n_h)
    assert result.stage_counts == {"gallery": N_ITEMS, "after_hamming": n_h, "after_pq": n_q, "reranked": n_q}



def test_official_resort_scores_follow_the_order_and_k_beyond_survivors_pads():
    gallery, queries = make_gallery(), make_queries()
    cfg = CascadeConfig(fusion=False, hamming_rate_t2i=60, pq_rate_t2i=20, top_z_t2i=12)
    result = gallery.search(queries, cascade=cfg, k=30, mode="meet", trace=True)
    assert (result.ids[:, 20:] == -1).all() and np.isneginf(result.scores[:, 20:]).all()
    assert (np.diff(result.scores[:, :20], axis=1) <= 0).all()
    for i, tr in enumerate(result.traces):
        head_ranks = [tr.complementarity_ranks[list(tr.candidates).index(j)] for j in result.ids[i, :12]]
        assert head_ranks == sorted(head_ranks)
        assert (result.scores[i, :12] > 1.5).all() and (result.scores[i, 12:20] <= 1.01).all()


def test_meet_without_reciprocal_turns_complementarity_off():
    gallery, queries = make_gallery(reciprocal=False), make_queries()
    for fusion in (True, False):
        cfg = CascadeConfig(fusion=fusion)
        result = gallery.search(queries, cascade=cfg, k=10, mode="meet", trace=True)
        reference = ref_cascade(queries, gallery, cfg, "t2i", "meet")
        assert [r[3][:10] for r in reference] == result.ids.tolist()
        assert all((tr.complementarity_ranks == -1).all() for tr in result.traces)
        assert "complementarity off" in result.traces[0].notes[0]
    cascade = gallery.search(queries, cascade=CascadeConfig(fusion=False), k=10, mode="cascade")
    official = gallery.search(queries, cascade=CascadeConfig(fusion=False), k=10, mode="meet")
    assert np.array_equal(cascade.ids, official.ids)


def test_traces_are_consistent_with_results_and_serialise():
    gallery, queries = make_gallery(), make_queries()
    result = gallery.search(queries, cascade=CascadeConfig(), k=10, mode="meet", trace=True)
    for i, tr in enumerate(result.traces):
        ham, pq, final = tr.stage("hamming"), tr.stage("pq"), tr.stage("rerank")
        assert set(pq.ids) <= set(ham.ids) and np.array_equal(ham.ids[pq.previous_ranks], pq.ids)
        assert np.array_equal(pq.ids[final.previous_ranks], final.ids)
        assert np.array_equal(final.ids[:10], result.ids[i]) and np.allclose(final.scores[:10], result.scores[i])
        assert np.array_equal(tr.candidates, pq.ids) and np.isclose(tr.attention.sum(), 1.0, atol=1e-5)
        assert (np.diff(final.scores) <= 0).all() and (np.diff(ham.scores) <= 0).all()
        assert np.array_equal(final.ranks, np.arange(len(final.ids)))
    payload = json.loads(json.dumps(result.traces[0].to_dict()))
    assert payload["stages"][0]["name"] == "hamming" and len(payload["final_order"]) == len(result.traces[0].candidates)
    dense_trace = gallery.search(queries, cascade=CascadeConfig(), k=5, mode="dense", trace=True).traces[0]
    assert dense_trace.stages[0].name == "dense" and len(dense_trace.final_order) == 5


@pytest.mark.parametrize("mode", ["cascade", "meet"])
def test_full_scores_and_stage_survivors_agree_with_search(mode):
    gallery, queries = make_gallery(), make_queries()
    cfg = CascadeConfig()
    scores = full_scores(gallery, queries, mode, cfg)
    result = gallery.search(queries, cascade=cfg, k=N_ITEMS, mode=mode)
    masks = stage_survivors(gallery, queries, cfg)
    reference = ref_cascade(queries, gallery, cfg, "t2i", mode)
    for i, (ham, pq, _, order) in enumerate(reference):
        finite = np.flatnonzero(np.isfinite(scores[i]))
        assert sorted(finite.tolist()) == sorted(pq)
        assert ordered((-scores[i][finite]).tolist(), finite.tolist()) == order
        assert result.ids[i][:len(order)].tolist() == order
        assert set(np.flatnonzero(masks.after_hamming[i])) == set(ham)
        assert set(np.flatnonzero(masks.after_pq[i])) == set(pq)


def test_small_work_budget_changes_nothing(monkeypatch):
    gallery, queries = make_gallery(), make_queries()
    cfg = CascadeConfig()
    before = {m: gallery.search(queries, cascade=cfg, k=15, mode=m) for m in ("dense", "pq", "meet")}
    for module in (hamming, engine):
        monkeypatch.setattr(module, "WORK_BUDGET", 256)
    for module in (engine, rerank):
        monkeypatch.setattr(module, "CACHE_CHUNK", 100)
    for mode, expected in before.items():
        after = gallery.search(queries, cascade=cfg, k=15, mode=mode, batch_size=2)
        assert np.array_equal(after.ids, expected.ids)
        assert np.allclose(after.scores, expected.scores, atol=1e-6)


def test_worker_threads_change_nothing(monkeypatch):
    monkeypatch.setattr(engine, "CACHE_CHUNK", 200)  # one query per sub-block: 9 tasks
    gallery, queries = make_gallery(), make_queries()
    for mode in ("cascade", "meet"):
        one = gallery.search(queries, cascade=CascadeConfig(), k=10, mode=mode, trace=True, workers=1)
        three = gallery.search(queries, cascade=CascadeConfig(), k=10, mode=mode, trace=True, workers=3)
        assert np.array_equal(one.ids, three.ids) and np.array_equal(one.scores, three.scores)
        assert [tr.query for tr in three.traces] == list(range(len(queries.dense)))
        for a, b in zip(one.traces, three.traces):
            assert np.array_equal(a.final_order, b.final_order)
            assert np.array_equal(a.final_scores, b.final_scores)
        assert set(three.timings) == {"hamming", "pq", "rerank", "exhaustive"}
        assert all(v >= 0 for v in three.timings.values())
    with pytest.raises(ConfigError, match="workers"):
        gallery.search(queries, cascade=CascadeConfig(), mode="cascade", workers=0)


def test_bad_calls_raise_clear_errors():
    gallery, queries = make_gallery(), make_queries()
    with pytest.raises(ConfigError, match="mode"):
        gallery.search(queries, mode="fast")
    with pytest.raises(ConfigError, match="k="):
        gallery.search(queries, k=0)
    with pytest.raises(DataError, match="dense dim"):
        gallery.search(SimpleNamespace(dense=queries.dense[:, :8], hash=queries.hash, codes=queries.codes))
    with pytest.raises(DataError, match="Encoded"):
        gallery.search(queries.dense)
    with pytest.raises(DataError, match="2-D"):
        gallery.search(SimpleNamespace(dense=queries.dense[0], hash=queries.hash[0], codes=queries.codes[0]))
    with pytest.raises(ConfigError, match="consistency_temperature"):
        gallery.search(queries, cascade=CascadeConfig(consistency_temperature=0.0))
    with pytest.raises(ConfigError, match="hamming_rate_t2i"):
        gallery.search(queries, cascade=CascadeConfig(hamming_rate_t2i=0.0))
    with pytest.raises(ConfigError, match="hamming_scores"):
        gallery.search(queries, mode="cascade", cascade=CascadeConfig(hamming_scores="cosine"))
    with pytest.raises(ConfigError, match="direction"):
        engine.rates(CascadeConfig(), "x2y")


def test_direction_and_defaults_come_from_the_index():
    """An image index is searched by captions (t2i rates), a caption index by images (i2t),
    with the index's own cascade unless the call passes one; build-time fields always stay
    the index's."""
    cfg = CascadeConfig(hamming_rate_t2i=40, pq_rate_t2i=10, hamming_rate_i2t=80, pq_rate_i2t=30)
    queries = make_queries()
    images = make_gallery(side="image")
    images.cascade = cfg
    texts = make_gallery(side="text")
    texts.cascade = cfg
    assert images.direction == "t2i" and texts.direction == "i2t"
    assert images.search(queries, mode="cascade").stage_counts["after_pq"] == 10
    assert texts.search(queries, mode="cascade").stage_counts["after_pq"] == 30
    override = images.search(queries, mode="cascade", cascade=CascadeConfig(hamming_rate_t2i=50, pq_rate_t2i=5,
                                                                            pq_space="residual"))
    assert override.stage_counts["after_pq"] == 5
    assert images.settings(CascadeConfig(pq_space="residual", reciprocal_k=3)).pq_space == "hash"
    assert images.settings(CascadeConfig(pq_space="residual", reciprocal_k=3)).reciprocal_k == RECIPROCAL_K


def test_empty_gallery_and_single_query():
    rng = np.random.default_rng(0)
    empty = GalleryIndex("image", [], np.zeros((0, DIM), np.float32), np.zeros((0, 2), np.uint8),
                         np.zeros((0, N_CODEBOOKS), np.uint8),
                         HashPQ(rng.standard_normal((N_CODEBOOKS, CODEBOOK_SIZE, 4)).astype(np.float32)))
    queries = make_queries(n=1)
    for mode in ("dense", "hash", "pq", "cascade", "meet"):
        result = empty.search(queries, k=3, mode=mode)
        assert result.ids.tolist() == [[-1, -1, -1]]
