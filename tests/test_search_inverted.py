"""The sublinear Hamming filter (:mod:`meet.search.inverted`) against a brute-force
reference over the lists it visits, and the cascade with ``hamming_index="ivf"``.

Galleries are seeded random (1,000 items, 32-bit codes) so lists are uneven and symmetric
scores tie a lot: the (score, position) tie rule and the "visit more lists until R items"
rule are both exercised.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from meet.config import CascadeConfig, MEETConfig, validate
from meet.errors import ConfigError
from meet.quantization import pack_codes
from meet.search import GalleryIndex, HashPQ, stage_survivors
from meet.search.hamming import hamming_stage, sign_tables
from meet.search.inverted import InvertedLists, auto_nlist, inverted_filter

N_ITEMS, DIM, N_BITS, N_CODEBOOKS, CODEBOOK_SIZE = 1000, 24, 32, 4, 16


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_hash(rng, n, n_bits=N_BITS, n_centres=12):
    """Hash features around a few centres, as trained codes are (lists of unequal size)."""
    centres = rng.standard_normal((n_centres, n_bits))
    return np.tanh(centres[rng.integers(0, n_centres, n)] + 0.8 * rng.standard_normal((n, n_bits))).astype(np.float32)


def make_index(seed=0, n=N_ITEMS):
    rng = np.random.default_rng(seed)
    hashed = clustered_hash(rng, n)
    books = rng.standard_normal((N_CODEBOOKS, CODEBOOK_SIZE, N_BITS // N_CODEBOOKS)).astype(np.float32)
    pq_codes = HashPQ(books).encode(hashed)
    return GalleryIndex("image", [f"item{i}" for i in range(n)], unit(rng, n, DIM), pack_codes(hashed), pq_codes,
                        HashPQ(books), hash=hashed, fingerprint="synthetic")


def make_queries(seed=1, n=13):
    """Hash features on a 1/64 grid: their sums are exact in float32, so the float64
    reference ranks exactly as the filter does (and ties happen)."""
    rng = np.random.default_rng(seed)
    hashed = np.round(clustered_hash(rng, n) * 64) / 64
    return SimpleNamespace(dense=unit(rng, n, DIM), hash=hashed, codes=pack_codes(hashed))


def signs(packed):
    return np.unpackbits(packed, axis=1, bitorder="little").astype(np.float64) * 2 - 1


def ordered(keys, positions):
    return [p for _, p in sorted(zip(keys, positions))]


def ref_inverted(query_vectors, lists: InvertedLists, codes, n_keep, nprobe):
    """Per query, in loops: rank the lists by the query's score of their centroid (ties by
    list id), visit nprobe of them and more until they hold n_keep items, and keep the top
    n_keep of their items by the same score (ties by position)."""
    centroid_scores = query_vectors.astype(np.float64) @ signs(lists.centroids).T
    item_scores = query_vectors.astype(np.float64) @ signs(codes).T
    members = [set(lists.members[lists.offsets[i]:lists.offsets[i + 1]].tolist()) for i in range(lists.nlist)]
    out = []
    for i in range(len(query_vectors)):
        visit = ordered((-centroid_scores[i]).tolist(), list(range(lists.nlist)))
        items, n_visited = [], 0
        for list_id in visit:
            if n_visited >= nprobe and len(items) >= n_keep:
                break
            items += sorted(members[list_id])
            n_visited += 1
        out.append(ordered((-item_scores[i, items]).tolist(), items)[:n_keep])
    return out


# ------------------------------------------------------------------ the lists

def test_auto_nlist_grows_as_the_square_root():
    assert auto_nlist(100_000) == 1024 and auto_nlist(1_000_000) == 4096
    assert auto_nlist(10) == 1 and auto_nlist(1000) == 62  # capped at n / 16
    assert all(1 <= auto_nlist(n) <= max(1, n // 16) for n in (32, 100, 5000, 50_000))


def test_lists_partition_the_gallery_by_nearest_centroid():
    index = make_index()
    lists = InvertedLists.build(index.codes, 16)
    assert lists.nlist == 16 and lists.offsets[-1] == N_ITEMS
    assert sorted(lists.members.tolist()) == list(range(N_ITEMS))
    distances = (signs(index.codes)[:, None, :] != signs(lists.centroids)[None, :, :]).sum(axis=2)
    for list_id in range(lists.nlist):
        members = lists.members[lists.offsets[list_id]:lists.offsets[list_id + 1]]
        assert (np.diff(members) > 0).all()  # positions ascending inside a list
        nearest = distances[members].min(axis=1)
        assert (distances[members, list_id] == nearest).all()
        # ties go to the lowest centroid id
        assert all(list_id == int(np.flatnonzero(distances[m] == nearest[j])[0]) for j, m in enumerate(members))
    again = InvertedLists.build(index.codes, 16)
    assert np.array_equal(again.centroids, lists.centroids) and np.array_equal(again.members, lists.members)


def test_candidates_visit_nprobe_lists_then_as_many_as_hold_n_keep():
    lists = InvertedLists(np.zeros((4, 1), np.uint8), np.array([0, 3, 4, 9, 10]), np.arange(10))
    order = np.array([[2, 0, 1, 3], [1, 3, 0, 2], [3, 2, 1, 0]])
    got = lists.candidates(order, nprobe=1, n_keep=4)
    rows = [sorted(r[r >= 0].tolist()) for r in got]
    assert rows[0] == [4, 5, 6, 7, 8]           # list 2 alone holds 5 >= 4
    assert rows[1] == [0, 1, 2, 3, 9]           # lists 1 (1 item), 3 (1), 0 (3): 5 >= 4
    assert rows[2] == [4, 5, 6, 7, 8, 9]        # lists 3, 2
    assert (got[:, :5] >= 0).all() and got.shape == (3, 6) and got[0, 5] == -1
    every = lists.candidates(order, nprobe=9, n_keep=1)
    assert all(sorted(r.tolist()) == list(range(10)) for r in every)


@pytest.mark.parametrize("scoring", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("n_keep,nprobe", [(1, 1), (20, 1), (50, 3), (300, 2), (999, 4)])
def test_inverted_filter_is_exact_over_the_visited_lists(scoring, n_keep, nprobe):
    index, queries = make_index(), make_queries()
    lists = InvertedLists.build(index.codes, 24)
    vectors = queries.hash if scoring == "asymmetric" else signs(queries.codes).astype(np.float32)
    positions, scores = inverted_filter(sign_tables(vectors, N_BITS), lists, index.codes, n_keep, nprobe)
    reference = ref_inverted(vectors, lists, index.codes, n_keep, nprobe)
    assert positions.tolist() == reference
    exact = vectors.astype(np.float64) @ signs(index.codes).T
    assert np.allclose(scores, np.take_along_axis(exact, positions, axis=1), atol=1e-4)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


@pytest.mark.parametrize("scoring", ["symmetric", "asymmetric"])
def test_visiting_every_list_equals_the_flat_filter(scoring):
    index, queries = make_index(), make_queries()
    lists = index.inverted_lists(20)
    flat = hamming_stage(scoring, queries.hash, queries.codes, index, 150, exact=True)
    ivf = hamming_stage(scoring, queries.hash, queries.codes, index, 150, lists=lists, nprobe=20)
    assert np.array_equal(flat[0], ivf[0]) and np.allclose(flat[1], ivf[1], atol=1e-4)


# ------------------------------------------------------------------ in the cascade

IVF = CascadeConfig(hamming_index="ivf", hamming_nlist=32, hamming_nprobe=2, hamming_rate_t2i=100, pq_rate_t2i=30)


@pytest.mark.parametrize("scoring", ["symmetric", "asymmetric"])
def test_cascade_over_inverted_lists_keeps_the_stage_it_reports(scoring):
    index, queries = make_index(), make_queries()
    cfg = dataclasses.replace(IVF, hamming_scores=scoring)
    result = index.search(queries, cascade=cfg, k=10, mode="meet", trace=True)
    vectors = queries.hash if scoring == "asymmetric" else signs(queries.codes).astype(np.float32)
    reference = ref_inverted(vectors, index.inverted_lists(32), index.codes, 100, 2)
    masks = stage_survivors(index, queries, cfg)
    for i, tr in enumerate(result.traces):
        assert tr.stage("hamming").ids.tolist() == reference[i]
        assert set(np.flatnonzero(masks.after_hamming[i])) == set(reference[i])
        assert set(np.flatnonzero(masks.after_pq[i])) == set(tr.stage("pq").ids.tolist())
    assert result.stage_counts["after_hamming"] == 100 and result.stage_counts["after_pq"] == 30
    every_list = dataclasses.replace(cfg, hamming_nprobe=32)
    flat = dataclasses.replace(cfg, hamming_index="flat")
    a = index.search(queries, cascade=every_list, k=10, mode="meet")
    b = index.search(queries, cascade=flat, k=10, mode="meet")
    assert np.array_equal(a.ids, b.ids) and np.allclose(a.scores, b.scores, atol=1e-5)


def test_lists_follow_added_items_and_survive_save_and_load(tmp_path):
    full = make_index(n=1200)
    index = make_index(n=1200)
    first = GalleryIndex("image", full.ids[:1000], full.dense[:1000], full.codes[:1000], full.pq_codes[:1000],
                         full.quantizer, hash=full.hash[:1000], fingerprint="synthetic")
    lists = first.inverted_lists(16)
    first.add(full.ids[1000:], SimpleNamespace(dense=full.dense[1000:], hash=full.hash[1000:],
                                               codes=full.codes[1000:], pq_codes=full.pq_codes[1000:]))
    grown = first.inverted_lists(16)
    assert np.array_equal(grown.centroids, lists.centroids) and grown.offsets[-1] == 1200
    assert np.array_equal(grown.members, InvertedLists.assign(lists.centroids, index.codes).members)
    queries = make_queries()
    cfg = dataclasses.replace(IVF, hamming_nlist=16)
    before = first.search(queries, cascade=cfg, k=10, mode="cascade", trace=True)
    reference = ref_inverted(signs(queries.codes).astype(np.float32), grown, index.codes, 100, 2)
    assert [tr.stage("hamming").ids.tolist() for tr in before.traces] == reference
    first.save(tmp_path / "idx")
    loaded = GalleryIndex.load(tmp_path / "idx")
    after = loaded.search(queries, cascade=cfg, k=10, mode="cascade")
    # reloaded, the saved centroids (trained on the first 1,000) route as before the save
    assert np.array_equal(after.ids, before.ids) and np.array_equal(after.scores, before.scores)
    restored = loaded.inverted_lists()  # 0: the lists the index has
    assert np.array_equal(restored.centroids, lists.centroids) and np.array_equal(restored.members, grown.members)


def test_bad_inverted_settings_raise_clear_errors():
    index, queries = make_index(n=100), make_queries()
    with pytest.raises(ConfigError, match="hamming_nlist"):
        index.search(queries, cascade=dataclasses.replace(IVF, hamming_nlist=101), mode="cascade")
    for bad in (dict(hamming_index="hnsw"), dict(hamming_nprobe=0), dict(hamming_nlist=-1)):
        cfg = MEETConfig()
        cfg = dataclasses.replace(cfg, cascade=dataclasses.replace(cfg.cascade, **bad))
        with pytest.raises(ConfigError, match="hamming"):
            validate(cfg)


def test_build_pair_builds_saves_and_reloads_the_lists(tiny_run, tiny_shapes, tmp_path):
    import meet
    from meet.data.loading import load_split
    from meet.search import build_pair, load_pair, save_pair
    from meet.search.index import build_settings

    model = meet.load(tiny_run, device="cpu")
    ds = load_split(tiny_shapes, "test", model.cfg.model)
    images, texts = model.encode_dataset(ds)
    cfg = CascadeConfig(hamming_index="ivf", hamming_nlist=4, hamming_nprobe=1, reciprocal_k=0)
    messages = []
    pair = build_pair(model, images, texts, ds.image_ids, [str(c) for c in ds.caption_ids], cascade=cfg,
                      progress=lambda d, t, m: messages.append(m))
    assert messages == ["image side: inverted lists for the Hamming filter",
                        "text side: inverted lists for the Hamming filter"]
    assert build_settings(model, cfg)["hamming_nlist"] == 4 and "hamming_nlist" not in build_settings(model)
    save_pair(tmp_path / "pair", *pair)
    assert (tmp_path / "pair" / "image" / "ivf_centroids_4.npy").is_file()
    loaded = load_pair(tmp_path / "pair")
    for built, back in zip(pair, loaded):
        assert np.array_equal(back.inverted_lists().members, built.inverted_lists(4).members)
    query = texts.dense[:5], texts.hash[:5], texts.codes[:5]
    queries = SimpleNamespace(dense=query[0], hash=query[1], codes=query[2])
    a = pair[0].search(queries, cascade=cfg, k=5, mode="meet")
    b = loaded[0].search(queries, cascade=cfg, k=5, mode="meet")
    assert np.array_equal(a.ids, b.ids)
