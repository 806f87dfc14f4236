"""The quantizer interface (:mod:`meet.search.quantizers`): each implementation encodes and
decodes exactly on codewords the test builds, its lookup tables give the inner product
with the reconstruction, it round-trips through an index on disk and through ``add``, and
the cascade over it matches the loop reference of ``test_search_cascade``.

Three implementations behind one interface: ``HashPQ`` (the model's codebooks over the
hash features, METHOD.md), ``OPQ`` (the dense vectors behind a faiss OPQ rotation) and
``ResidualQuantizer`` (the dense vectors as a sum of faiss residual codewords).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import faiss
import numpy as np
import pytest

from meet.analysis import quantization_errors
from meet.config import CascadeConfig
from meet.errors import ConfigError, DataError
from meet.quantization import pack_codes
from meet.search import OPQ, GalleryIndex, HashPQ, ResidualQuantizer, build_pair, full_scores
from meet.search.quantizers import QUANTIZERS, fitting_sample, quantizer_from_arrays
from test_search_cascade import DIM, N_BITS, N_ITEMS, assert_matches_reference, make_queries, ref_cascade, unit

N_CODEBOOKS, CODEBOOK_SIZE, BEAM = 4, 16, 4


def fitted(space: str, x: np.ndarray) -> object:
    return QUANTIZERS[space].fit(x, N_CODEBOOKS, CODEBOOK_SIZE, seed=0, n_iter=5, beam_size=BEAM)


@functools.lru_cache(maxsize=None)
def gallery(space: str, side: str = "image", seed: int = 0) -> GalleryIndex:
    """A synthetic gallery whose quantizer is fitted on its own vectors (cached: fitting is
    the slow part; tests that change an index load a saved copy)."""
    rng = np.random.default_rng(seed)
    dense = unit(rng, N_ITEMS, DIM)
    hashed = np.tanh(rng.standard_normal((N_ITEMS, N_BITS))).astype(np.float32)
    items = SimpleNamespace(dense=dense, hash=hashed)
    quantizer = fitted(space, fitting_sample(getattr(items, QUANTIZERS[space].reads), CODEBOOK_SIZE, 200, 0, space))
    return GalleryIndex(side, [f"item{i}" for i in range(N_ITEMS)], dense, pack_codes(hashed),
                        quantizer.encode(quantizer.source(items)), quantizer, hash=hashed, fingerprint="synthetic")


def reference_decode(quantizer, codes: np.ndarray) -> np.ndarray:
    """Reconstructions written out from the definitions, float64, in the source space."""
    books = quantizer.codebooks.astype(np.float64)
    picked = [books[m][codes[:, m]] for m in range(books.shape[0])]
    if isinstance(quantizer, ResidualQuantizer):
        return sum(picked)
    recon = np.concatenate(picked, axis=1)
    return recon @ quantizer.rotation.astype(np.float64) if isinstance(quantizer, OPQ) else recon


def reference_adc(index: GalleryIndex, queries) -> np.ndarray:
    return index.quantizer.source(queries).astype(np.float64) @ reference_decode(index.quantizer, index.pq_codes).T


SPACES = ("hash", "dense", "residual")


# ------------------------------------------------------------------ the interface

@pytest.mark.parametrize("space", SPACES)
def test_encode_decode_exact_on_codewords(space):
    index = gallery(space)
    quantizer = index.quantizer
    assert quantizer.space == space and QUANTIZERS[space] is type(quantizer)
    codes = np.random.default_rng(1).integers(0, CODEBOOK_SIZE, (50, N_CODEBOOKS)).astype(np.uint8)
    vectors = quantizer.decode(codes)
    assert np.allclose(vectors, reference_decode(quantizer, codes), atol=1e-5)
    if space != "residual":  # product codebooks: a codeword combination is its own nearest
        assert np.array_equal(quantizer.encode(vectors), codes)
    tables = quantizer.lookup_tables(vectors[:3]).numpy()
    adc = np.stack([tables[:, m, codes[:, m]] for m in range(N_CODEBOOKS)]).sum(0)
    assert np.allclose(adc, vectors[:3].astype(np.float64) @ reference_decode(quantizer, codes).T, atol=1e-4)


@pytest.mark.parametrize("space", SPACES)
def test_encode_is_the_best_reconstruction_it_can_find(space):
    index = gallery(space)
    quantizer, x = index.quantizer, index.quantizer.source(index)
    errors = quantization_errors(x, index.pq_codes, quantizer)
    assert np.allclose(errors, ((x - reference_decode(quantizer, index.pq_codes)) ** 2).sum(1), atol=1e-4)
    if space == "residual":  # faiss's own codes, closer than one codebook could get
        faiss_rq = faiss.ResidualQuantizer(DIM, N_CODEBOOKS, 4)
        faiss.copy_array_to_vector(quantizer.codebooks.ravel(), faiss_rq.codebooks)
        faiss_rq.is_trained, faiss_rq.max_beam_size = True, BEAM
        assert np.allclose(faiss_rq.decode(faiss_rq.compute_codes(x)), quantizer.decode(index.pq_codes), atol=1e-5)
        single = ((x[:, None, :] - quantizer.codebooks[0][None]) ** 2).sum(-1).min(1)
        assert errors.mean() < single.mean()
        return
    source = quantizer.rotate(x) if space == "dense" else x  # nearest codeword per sub-space
    sub = source.reshape(N_ITEMS, N_CODEBOOKS, -1)
    dists = ((sub[:, :, None, :] - quantizer.codebooks[None]) ** 2).sum(-1)
    picked = np.take_along_axis(dists, index.pq_codes[:, :, None].astype(int), axis=2)[..., 0]
    assert np.allclose(picked, dists.min(axis=2), atol=1e-5)


def test_opq_rotation_is_faiss_and_orthogonal():
    quantizer = gallery("dense").quantizer
    assert np.allclose(quantizer.rotation @ quantizer.rotation.T, np.eye(DIM), atol=1e-4)  # inner products kept
    opq = faiss.OPQMatrix(DIM, N_CODEBOOKS)
    faiss.copy_array_to_vector(quantizer.rotation.ravel(), opq.A)
    opq.is_trained = True
    x = gallery("dense").dense.astype(np.float32)
    assert np.allclose(quantizer.rotate(x), opq.apply(x), atol=1e-5)  # the same layout as faiss


@pytest.mark.parametrize("space", SPACES)
def test_pq_mode_and_cascade_match_the_references(space):
    for direction, side in (("t2i", "image"), ("i2t", "text")):
        index = gallery(space, side)
        queries = make_queries()
        assert np.allclose(full_scores(index, queries, "pq"), reference_adc(index, queries), atol=1e-4)
        cfg = CascadeConfig(hamming_rate_t2i=120, pq_rate_t2i=40, hamming_rate_i2t=0.5, pq_rate_i2t=0.3,
                            hamming_scores="asymmetric" if direction == "t2i" else "symmetric")
        for mode in ("cascade", "meet"):
            result = index.search(queries, k=10, mode=mode, cascade=cfg, trace=True)
            assert_matches_reference(result, ref_cascade(queries, index, cfg, direction, mode,
                                                         adc=reference_adc(index, queries)))


@pytest.mark.parametrize("space", SPACES)
def test_save_load_and_add_keep_the_quantizer(space, tmp_path):
    index = gallery(space)
    index.save(tmp_path / "image")
    loaded = GalleryIndex.load(tmp_path / "image")
    assert type(loaded.quantizer) is type(index.quantizer) and loaded.pq_space == space
    for name, array in index.quantizer.arrays().items():
        assert np.array_equal(loaded.quantizer.arrays()[name], array)
    assert loaded.quantizer.settings() == index.quantizer.settings()
    rng = np.random.default_rng(9)
    hashed = np.tanh(rng.standard_normal((5, N_BITS))).astype(np.float32)
    new = SimpleNamespace(dense=unit(rng, 5, DIM), hash=hashed, codes=pack_codes(hashed))
    loaded.add([f"new{i}" for i in range(5)], new)
    assert np.array_equal(loaded.pq_codes[-5:], index.quantizer.encode(index.quantizer.source(new)))


def test_bad_quantizers_are_clear_errors():
    dense = gallery("dense")
    with pytest.raises(DataError, match="rotation"):
        OPQ(dense.codebooks, np.eye(DIM + 1, dtype=np.float32))
    with pytest.raises(DataError, match="reads 32-d hash vectors but the items have 16"):  # dense dims, not bits
        GalleryIndex("image", dense.ids, dense.dense, dense.codes, dense.pq_codes, HashPQ(dense.codebooks))
    with pytest.raises(DataError, match="reads 32-d dense vectors"):
        gallery("residual").quantizer.source(SimpleNamespace(dense=np.zeros((2, 8)), hash=None))
    with pytest.raises(ConfigError, match="pq_space"):
        quantizer_from_arrays("additive", {"codebooks": dense.codebooks}, {})
    with pytest.raises(DataError, match="rotation"):
        quantizer_from_arrays("dense", {"codebooks": dense.codebooks}, {})
    with pytest.raises(ConfigError, match="power of two"):
        ResidualQuantizer(np.zeros((N_CODEBOOKS, 12, DIM), np.float32))
    with pytest.raises(ConfigError, match="small galleries"):
        fitting_sample(unit(np.random.default_rng(0), 10, DIM), CODEBOOK_SIZE, 100, 0, "dense")


@pytest.mark.parametrize("space", ["dense", "residual"])
def test_build_pair_and_cli_in_each_space(space, tiny_run, tiny_shapes, tmp_path):
    import meet
    from meet.build_index import main
    from meet.data.loading import load_split
    from meet.search import checkpoint_fingerprint, load_pair

    model = meet.load(tiny_run, device="cpu")
    ds = load_split(tiny_shapes, "test", model.cfg.model)
    images, texts = model.encode_dataset(ds)
    cascade = CascadeConfig(reciprocal_k=5, pq_space=space)
    image_index, text_index = build_pair(model, images, texts, ds.image_ids, [str(c) for c in ds.caption_ids],
                                         cascade=cascade)
    assert image_index.pq_space == text_index.pq_space == space
    assert image_index.meta["build"]["pq_space"] == space
    assert image_index.quantizer.settings() == ({"pq_beam_size": model.cfg.cascade.pq_beam_size}
                                                if space == "residual" else {})
    result = image_index.search(model.encode_texts(ds.captions[:4]), k=5, mode="meet")
    assert (result.ids >= 0).all()
    assert main(["--checkpoint", str(tiny_run), "--data", str(tiny_shapes), "--out", str(tmp_path / "idx"),
                 "--reciprocal-k", "0", "--pq-space", space]) == 0
    loaded_images, loaded_texts = load_pair(tmp_path / "idx", fingerprint=checkpoint_fingerprint(tiny_run))
    assert loaded_texts.pq_space == space and loaded_texts.n_items == len(ds.captions)
    assert loaded_images.reciprocal is None and loaded_images.cascade.reciprocal_k == 0
