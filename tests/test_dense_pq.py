"""The quantization filter over OPQ-rotated dense vectors (``pq_space="dense"``).

The cascade over a dense-space index must agree with the same loop reference as the hash
space (the lookup tables are built from the rotated dense query instead of ``h``), the
rotation and codebooks must survive save/load/add, and bad shapes or tiny galleries get
clear errors.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import faiss
import numpy as np
import pytest

from meet.config import CascadeConfig
from meet.dense_pq import encode_dense_pq, fit_dense_pq, rotate
from meet.errors import ConfigError, DataError
from meet.index import GalleryIndex, build_pair
from meet.quantization import pack_codes
from meet.retrieval import full_scores, search
from test_retrieval import (DIM, N_BITS, N_ITEMS, assert_matches_reference, encoded_items, make_queries,
                            ref_cascade, unit)

N_CODEBOOKS, CODEBOOK_SIZE = 4, 16


@functools.lru_cache(maxsize=None)
def dense_gallery(seed: int = 0, n: int = N_ITEMS, side: str = "image") -> GalleryIndex:
    """A synthetic dense-space gallery (cached: fitting OPQ is the slow part; tests that
    change the index load a saved copy)."""
    rng = np.random.default_rng(seed)
    dense = unit(rng, n, DIM)
    hashed = np.tanh(rng.standard_normal((n, N_BITS))).astype(np.float32)
    rotation, codebooks = fit_dense_pq(dense, N_CODEBOOKS, CODEBOOK_SIZE, max_items=200, seed=0, n_iter=5)
    return GalleryIndex.from_arrays(side, [f"item{i}" for i in range(n)], dense, pack_codes(hashed),
                                    encode_dense_pq(dense, rotation, codebooks), codebooks,
                                    fingerprint="synthetic", rotation=rotation)


def test_rotation_is_faiss_opq_and_orthogonal():
    rng = np.random.default_rng(3)
    x = unit(rng, 400, DIM)
    rotation, codebooks = fit_dense_pq(x, N_CODEBOOKS, CODEBOOK_SIZE, max_items=1000, seed=0, n_iter=5)
    assert rotation.shape == (DIM, DIM) and codebooks.shape == (N_CODEBOOKS, CODEBOOK_SIZE, DIM // N_CODEBOOKS)
    assert np.allclose(rotation @ rotation.T, np.eye(DIM), atol=1e-4)  # inner products are kept
    opq = faiss.OPQMatrix(DIM, N_CODEBOOKS)
    faiss.copy_array_to_vector(rotation.ravel(), opq.A)
    opq.is_trained = True
    assert np.allclose(rotate(x, rotation), opq.apply(x), atol=1e-5)  # same layout as faiss


def test_codes_are_the_nearest_codewords_of_the_rotated_vectors():
    gallery = dense_gallery()
    rotated = rotate(gallery.dense, gallery.rotation)
    sub = rotated.reshape(N_ITEMS, N_CODEBOOKS, -1)
    dists = ((sub[:, :, None, :] - gallery.codebooks[None]) ** 2).sum(-1)  # (n, M, K)
    picked = np.take_along_axis(dists, gallery.pq_codes[:, :, None].astype(int), axis=2)[..., 0]
    assert np.allclose(picked, dists.min(axis=2), atol=1e-5)


@pytest.mark.parametrize("mode", ["cascade", "meet"])
@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_cascade_over_dense_pq_matches_loop_reference(mode, direction):
    gallery = dense_gallery(side="image" if direction == "t2i" else "text")
    assert gallery.pq_space == "dense"
    queries = make_queries()
    cfg = CascadeConfig(hamming_rate_t2i=120, pq_rate_t2i=40, hamming_rate_i2t=0.5, pq_rate_i2t=0.3)
    result = search(queries, gallery, cfg, direction, k=10, mode=mode, trace=True)
    # The reference computes ADC from ``hash``: hand it the rotated dense query instead.
    as_reference = SimpleNamespace(dense=queries.dense, codes=queries.codes,
                                   hash=rotate(queries.dense, gallery.rotation))
    assert_matches_reference(result, ref_cascade(as_reference, gallery, cfg, direction, mode))


def test_pq_mode_scores_are_rotated_adc():
    gallery = dense_gallery()
    queries = make_queries()
    scores = full_scores(queries, gallery, CascadeConfig(), "t2i", "pq")
    recon = np.concatenate([gallery.codebooks[m][gallery.pq_codes[:, m]] for m in range(N_CODEBOOKS)], axis=1)
    assert np.allclose(scores, rotate(queries.dense, gallery.rotation) @ recon.T, atol=1e-4)


def test_save_load_add_keep_the_rotation(tmp_path):
    gallery = dense_gallery(n=N_ITEMS)
    gallery.save(tmp_path / "image")
    loaded = GalleryIndex.load(tmp_path / "image")
    assert loaded.pq_space == "dense"
    assert np.array_equal(loaded.rotation, gallery.rotation)
    new = encoded_items(5, n_codebooks=N_CODEBOOKS)
    loaded.add_encoded([f"new{i}" for i in range(5)], new)
    assert np.array_equal(loaded.pq_codes[-5:], encode_dense_pq(new.dense, gallery.rotation, gallery.codebooks))


def test_bad_rotation_and_tiny_gallery_are_clear_errors():
    gallery = dense_gallery()
    with pytest.raises(DataError, match="rotation"):
        GalleryIndex.from_arrays("image", gallery.ids, gallery.dense, gallery.codes, gallery.pq_codes,
                                 gallery.codebooks, rotation=np.eye(DIM + 1, dtype=np.float32))
    with pytest.raises(DataError, match="dense dims"):  # codebooks cover the bits, not the dense dim
        GalleryIndex.from_arrays("image", gallery.ids, gallery.dense, gallery.codes, gallery.pq_codes,
                                 np.zeros((N_CODEBOOKS, CODEBOOK_SIZE, N_BITS // N_CODEBOOKS), np.float32),
                                 rotation=gallery.rotation)
    with pytest.raises(ConfigError, match="small galleries"):
        fit_dense_pq(unit(np.random.default_rng(0), 10, DIM), N_CODEBOOKS, CODEBOOK_SIZE, max_items=100)


def test_build_pair_and_cli_with_dense_pq(tiny_run, tiny_shapes, tmp_path):
    import meet
    from meet.build_index import main
    from meet.data.loading import load_split
    from meet.index import checkpoint_fingerprint

    model = meet.load(tiny_run, device="cpu")
    ds = load_split(tiny_shapes, "test", model.cfg.model)
    images, texts = build_pair(model, ds, reciprocal_k=5, pq_space="dense")
    assert images.pq_space == texts.pq_space == "dense" and images.meta["pq_space"] == "dense"
    queries = model.encode_texts(ds.captions[:4])
    result = search(queries, images, model.cfg.cascade, "t2i", k=5, mode="meet")
    assert (result.ids >= 0).all()
    assert main(["--checkpoint", str(tiny_run), "--data", str(tiny_shapes), "--out", str(tmp_path / "idx"),
                 "--reciprocal-k", "0", "--pq-space", "dense"]) == 0
    loaded = GalleryIndex.load(tmp_path / "idx" / "text", fingerprint=checkpoint_fingerprint(tiny_run))
    assert loaded.pq_space == "dense" and loaded.n_items == len(ds.captions)
