"""Product quantizer and binary codes, checked against direct computations."""

import faiss
import numpy as np
import pytest
import torch

from meet.errors import ConfigError
from meet.quantization import ProductQuantizer, binarize, code_dtype, pack_codes, unpack_codes


def _quantizer_with_known_centroids(seed: int = 0) -> ProductQuantizer:
    pq = ProductQuantizer(dim=8, n_codebooks=4, codebook_size=16)
    pq.codebooks.copy_(torch.randn(4, 16, 2, generator=torch.Generator().manual_seed(seed)))
    pq.fitted.fill_(True)
    return pq


def test_encode_decode_exact_on_centroids():
    pq = _quantizer_with_known_centroids()
    codes = torch.randint(0, 16, (50, 4), generator=torch.Generator().manual_seed(1))
    vectors = pq.decode(codes)
    assert torch.equal(pq.encode(vectors), codes)
    assert torch.allclose(pq.quantize(vectors), vectors)


def test_encode_is_nearest_codeword_per_subspace():
    pq = _quantizer_with_known_centroids()
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(2))
    codes = pq.encode(x, block=7)  # blocks must not change the answer
    for i in range(40):
        for m in range(4):
            sub = x[i, 2 * m:2 * m + 2]
            expected = int(((pq.codebooks[m] - sub) ** 2).sum(1).argmin())
            assert codes[i, m] == expected


def test_adc_scores_match_inner_product_with_reconstruction():
    pq = _quantizer_with_known_centroids()
    queries = torch.randn(5, 8, generator=torch.Generator().manual_seed(3))
    codes = torch.randint(0, 16, (30, 4), generator=torch.Generator().manual_seed(4))
    direct = queries @ pq.decode(codes).T
    tables = pq.lookup_tables(queries)  # (5, M, K): sum the table entries of each item's codes
    adc = sum(tables[:, m, codes[:, m]] for m in range(4))
    assert torch.allclose(adc, direct, atol=1e-5)


def test_code_dtype_holds_every_codeword():
    """uint8 up to 256 codewords, uint16 up to the config's maximum of 65,536 (an int16
    would overflow from 32,768)."""
    assert code_dtype(256) == np.uint8 and code_dtype(257) == np.uint16 and code_dtype(65536) == np.uint16
    assert np.iinfo(code_dtype(65536)).max == 65535


def test_fit_uses_faiss_kmeans_and_reduces_error():
    torch.manual_seed(0)
    x = torch.tanh(torch.randn(2000, 16))
    pq = ProductQuantizer(16, 4, 32).fit(x, n_iter=10, seed=0)
    assert pq.is_fitted and pq.codebooks.shape == (4, 32, 4)
    err = (x - pq.quantize(x)).pow(2).sum(1).mean()
    assert err < 0.25 * x.pow(2).sum(1).mean()
    again = ProductQuantizer(16, 4, 32).fit(x, n_iter=10, seed=0)
    assert torch.equal(pq.codebooks, again.codebooks)  # seeded


def test_errors_are_clear():
    with pytest.raises(ConfigError, match="divisible"):
        ProductQuantizer(10, 4, 16)
    pq = ProductQuantizer(8, 4, 16)
    with pytest.raises(ConfigError, match="no codebooks"):
        pq.encode(torch.zeros(1, 8))
    with pytest.raises(ConfigError, match="at least codebook_size"):
        pq.fit(torch.zeros(5, 8))


def test_packed_codes_roundtrip_and_match_faiss_hamming():
    rng = np.random.default_rng(0)
    h = rng.uniform(-1, 1, size=(20, 64)).astype(np.float32)
    packed = pack_codes(h)
    assert packed.shape == (20, 8) and packed.dtype == np.uint8
    signs = unpack_codes(packed, 64)
    assert np.array_equal(signs, binarize(torch.from_numpy(h)).numpy())
    index = faiss.IndexBinaryFlat(64)
    index.add(packed[10:])
    dist, ids = index.search(packed[:10], 10)
    direct = (signs[:10, None, :] != signs[None, 10:, :]).sum(-1)
    for q in range(10):
        assert np.array_equal(dist[q], direct[q, ids[q]])
        assert np.array_equal(np.sort(direct[q]), dist[q])
