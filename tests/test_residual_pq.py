"""The quantization filter over residual-quantized dense vectors (``pq_space="residual"``).

Each item's code picks one full-size codeword per book and the item is their sum, so the
ADC score is the query's inner product with that sum. The cascade over such an index must
agree with the same loop reference as the other spaces, the codes must be faiss's
``ResidualQuantizer`` codes, and the space must survive save/load/add.
"""

from __future__ import annotations

import functools

import faiss
import numpy as np
import pytest

import test_retrieval
from meet.analysis import quantization_errors
from meet.config import CascadeConfig
from meet.dense_pq import encode_residual, fit_residual
from meet.errors import ConfigError, DataError
from meet.index import GalleryIndex, build_pair
from meet.quantization import pack_codes
from meet.retrieval import full_scores, search
from test_retrieval import (DIM, N_BITS, N_ITEMS, assert_matches_reference, encoded_items, make_queries,
                            ref_cascade, unit)

N_CODEBOOKS, CODEBOOK_SIZE, BEAM = 4, 16, 4


@functools.lru_cache(maxsize=None)
def residual_gallery(seed: int = 0, n: int = N_ITEMS, side: str = "image") -> GalleryIndex:
    rng = np.random.default_rng(seed)
    dense = unit(rng, n, DIM)
    hashed = np.tanh(rng.standard_normal((n, N_BITS))).astype(np.float32)
    codebooks = fit_residual(dense, N_CODEBOOKS, CODEBOOK_SIZE, max_items=200, beam_size=BEAM)
    return GalleryIndex.from_arrays(side, [f"item{i}" for i in range(n)], dense, pack_codes(hashed),
                                    encode_residual(dense, codebooks, BEAM), codebooks,
                                    fingerprint="synthetic", meta={"pq_beam_size": BEAM}, pq_space="residual")


def decode(gallery: GalleryIndex) -> np.ndarray:
    """Each item's reconstruction: the sum of its codewords, float64 (n, dim)."""
    books = gallery.codebooks.astype(np.float64)
    return sum(books[m][gallery.pq_codes[:, m]] for m in range(books.shape[0]))


def ref_additive_adc(query_dense, gallery):
    return query_dense.astype(np.float64) @ decode(gallery).T


def test_codes_are_faiss_residual_codes():
    gallery = residual_gallery()
    assert gallery.codebooks.shape == (N_CODEBOOKS, CODEBOOK_SIZE, DIM)
    quantizer = faiss.ResidualQuantizer(DIM, N_CODEBOOKS, 4)
    faiss.copy_array_to_vector(gallery.codebooks.ravel(), quantizer.codebooks)
    quantizer.is_trained = True
    quantizer.max_beam_size = BEAM
    dense = gallery.dense.astype(np.float32)
    assert np.allclose(quantizer.decode(quantizer.compute_codes(dense)), decode(gallery), atol=1e-5)
    # closer than a single codebook could get: the residual books add up
    single = ((dense[:, None, :] - gallery.codebooks[0][None]) ** 2).sum(-1).min(1)
    assert ((dense - decode(gallery)) ** 2).sum(1).mean() < single.mean()
    errors = quantization_errors(dense, gallery.pq_codes, gallery.codebooks)
    assert np.allclose(errors, ((dense - decode(gallery)) ** 2).sum(1), atol=1e-4)


@pytest.mark.parametrize("mode", ["cascade", "meet"])
@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_cascade_over_residual_pq_matches_loop_reference(mode, direction, monkeypatch):
    gallery = residual_gallery(side="image" if direction == "t2i" else "text")
    assert gallery.pq_space == "residual"
    queries = make_queries()
    cfg = CascadeConfig(hamming_rate_t2i=120, pq_rate_t2i=40, hamming_rate_i2t=0.5, pq_rate_i2t=0.3,
                        hamming_scores="asymmetric" if direction == "t2i" else "symmetric")
    result = search(queries, gallery, cfg, direction, k=10, mode=mode, trace=True)
    # The reference's ADC: the dense query against each item's sum of codewords.
    monkeypatch.setattr(test_retrieval, "ref_adc", lambda _hash, g: ref_additive_adc(queries.dense, g))
    assert_matches_reference(result, ref_cascade(queries, gallery, cfg, direction, mode))


def test_pq_mode_scores_are_additive_adc():
    gallery = residual_gallery()
    queries = make_queries()
    scores = full_scores(queries, gallery, CascadeConfig(), "t2i", "pq")
    assert np.allclose(scores, ref_additive_adc(queries.dense, gallery), atol=1e-4)


def test_save_load_add_keep_the_residual_space(tmp_path):
    gallery = residual_gallery()
    gallery.save(tmp_path / "image")
    loaded = GalleryIndex.load(tmp_path / "image")
    assert loaded.pq_space == "residual" and loaded.rotation is None
    assert np.array_equal(loaded.codebooks, gallery.codebooks)
    new = encoded_items(5, n_codebooks=N_CODEBOOKS)
    loaded.add_encoded([f"new{i}" for i in range(5)], new)
    assert np.array_equal(loaded.pq_codes[-5:], encode_residual(new.dense, gallery.codebooks, BEAM))


def test_bad_residual_arrays_are_clear_errors():
    gallery = residual_gallery()
    with pytest.raises(DataError, match="residual codebooks"):
        GalleryIndex.from_arrays("image", gallery.ids, gallery.dense, gallery.codes, gallery.pq_codes,
                                 gallery.codebooks[:, :, :DIM // 2], pq_space="residual")
    with pytest.raises(DataError, match="takes no rotation"):
        GalleryIndex.from_arrays("image", gallery.ids, gallery.dense, gallery.codes, gallery.pq_codes,
                                 gallery.codebooks, rotation=np.eye(DIM, dtype=np.float32), pq_space="residual")
    with pytest.raises(ConfigError, match="pq_space"):
        GalleryIndex.from_arrays("image", gallery.ids, gallery.dense, gallery.codes, gallery.pq_codes,
                                 gallery.codebooks, pq_space="additive")
    with pytest.raises(ConfigError, match="power of two"):
        fit_residual(gallery.dense, N_CODEBOOKS, 12, max_items=100, beam_size=1)
    with pytest.raises(ConfigError, match="small galleries"):
        fit_residual(unit(np.random.default_rng(0), 10, DIM), N_CODEBOOKS, CODEBOOK_SIZE, 100, 1)


def test_build_pair_and_cli_with_residual_pq(tiny_run, tiny_shapes, tmp_path):
    import meet
    from meet.build_index import main
    from meet.data.loading import load_split
    from meet.index import checkpoint_fingerprint

    model = meet.load(tiny_run, device="cpu")
    ds = load_split(tiny_shapes, "test", model.cfg.model)
    images, texts = build_pair(model, ds, reciprocal_k=5, pq_space="residual")
    assert images.pq_space == texts.pq_space == "residual"
    assert images.meta["pq_beam_size"] == model.cfg.cascade.pq_beam_size
    queries = model.encode_texts(ds.captions[:4])
    result = search(queries, images, model.cfg.cascade, "t2i", k=5, mode="meet")
    assert (result.ids >= 0).all()
    assert main(["--checkpoint", str(tiny_run), "--data", str(tiny_shapes), "--out", str(tmp_path / "idx"),
                 "--reciprocal-k", "0", "--pq-space", "residual"]) == 0
    loaded = GalleryIndex.load(tmp_path / "idx" / "text", fingerprint=checkpoint_fingerprint(tiny_run))
    assert loaded.pq_space == "residual" and loaded.n_items == len(ds.captions)
