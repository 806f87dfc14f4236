"""Product quantization math, the Stage I product quantizer, and the binary codes.

Product quantization splits a ``dim``-d vector into ``n_codebooks`` consecutive
sub-vectors and replaces each by the nearest of ``codebook_size`` codewords: one byte per
sub-space when ``codebook_size <= 256``. The math is written once, as the functions
:func:`kmeans_codebooks`, :func:`nearest_codewords`, :func:`product_decode` and
:func:`product_tables` over an ``(n_codebooks, codebook_size, sub_dim)`` codebook tensor
(faiss contrib's shape); the Stage I :class:`ProductQuantizer` (the model's codebooks,
trained on the hash features) and the search quantizers of :mod:`meet.search.quantizers`
both call them.

Codebooks are (re)fit by faiss k-means per sub-space (METHOD.md: after each epoch, on the
training set's hash features). With block-diagonal codebooks the nearest-codeword
assignment per sub-space is the exact minimiser of ``||h - C b||^2`` (what the released
code calls an ICM update), so no iterative search is needed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from meet.errors import ConfigError


# ------------------------------------------------------------------ the math, written once

def kmeans_codebooks(x: np.ndarray, n_codebooks: int, codebook_size: int, n_iter: int = 20,
                     seed: int = 0) -> np.ndarray:
    """faiss k-means per sub-space of ``x`` (n, dim) float32 -> codebooks (M, K, dim / M)
    float32; sub-space ``m`` is seeded ``seed + m``."""
    import faiss  # lazy: heavy, and only fitting needs it

    x = np.asarray(x, dtype=np.float32)
    sub_dim = x.shape[1] // n_codebooks
    if x.shape[0] < codebook_size:
        raise ConfigError(f"k-means needs at least codebook_size={codebook_size} training vectors, "
                          f"got {x.shape[0]}", fix="use more training data or a smaller --codebook-size")
    books = np.empty((n_codebooks, codebook_size, sub_dim), np.float32)
    for m in range(n_codebooks):
        sub = np.ascontiguousarray(x[:, m * sub_dim:(m + 1) * sub_dim])
        # min_points_per_centroid=1 only silences faiss's "please provide at least 39 points
        # per centroid" warning; small fits are legitimate in tests.
        kmeans = faiss.Kmeans(sub_dim, codebook_size, niter=n_iter, seed=seed + m, verbose=False,
                              min_points_per_centroid=1)
        kmeans.train(sub)
        books[m] = kmeans.centroids
    return books


def _split(x: torch.Tensor, n_codebooks: int) -> torch.Tensor:
    """(n, dim) -> (n_codebooks, n, dim / n_codebooks)."""
    return x.reshape(x.shape[0], n_codebooks, -1).transpose(0, 1)


def nearest_codewords(x: torch.Tensor, codebooks: torch.Tensor, block: int = 65536) -> torch.Tensor:
    """Nearest codeword per sub-space: (n, dim) -> int64 codes (n, M), in blocks of rows."""
    n_codebooks = codebooks.shape[0]
    out = [torch.cdist(_split(x[s:s + block].to(codebooks), n_codebooks), codebooks).argmin(dim=2).T
           for s in range(0, x.shape[0], block)]
    if not out:
        return torch.zeros(0, n_codebooks, dtype=torch.long, device=codebooks.device)
    return torch.cat(out)


def product_decode(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Reconstruction: codes (n, M) -> (n, M * sub_dim), one codeword per sub-space.
    Differentiable in the codebooks (a gather)."""
    codes = codes.long().to(codebooks.device)
    return torch.cat([codebooks[m][codes[:, m]] for m in range(codebooks.shape[0])], dim=1)


def product_tables(queries: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """ADC lookup tables: (n_queries, M * sub_dim) -> (n_queries, M, K), entry [q, m, c] the
    inner product of the query's m-th sub-vector with codeword c of codebook m. The
    asymmetric score of an item with codes ``b`` is ``sum_m table[q, m, b_m]``."""
    # One batched matrix product per codebook, (M, n, sub) x (M, sub, K): torch.einsum
    # chose a far slower path for this shape (0.16 ms against 0.009 ms for one query, one
    # thread), which was most of a single-query search.
    tables = torch.bmm(_split(queries.to(codebooks), codebooks.shape[0]), codebooks.transpose(1, 2))
    return tables.transpose(0, 1)


# ------------------------------------------------------------------ Stage I: the model's quantizer

class ProductQuantizer(nn.Module):
    """The model's codebooks ``(n_codebooks, codebook_size, dim // n_codebooks)`` over the
    ``dim``-d hash features, kept as a buffer so they travel with the model to a device and
    into a checkpoint; refit after each epoch, and read by L_q."""

    def __init__(self, dim: int, n_codebooks: int, codebook_size: int):
        super().__init__()
        if dim % n_codebooks:
            raise ConfigError(f"n_bits={dim} is not divisible by n_codebooks={n_codebooks}",
                              fix="choose n_codebooks dividing n_bits (e.g. 64 bits, 8 codebooks)")
        if codebook_size < 2:
            raise ConfigError(f"codebook_size={codebook_size} must be at least 2")
        self.dim = dim
        self.n_codebooks = n_codebooks
        self.codebook_size = codebook_size
        self.sub_dim = dim // n_codebooks
        self.register_buffer("codebooks", torch.zeros(n_codebooks, codebook_size, self.sub_dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted)

    @torch.no_grad()
    def fit(self, x: torch.Tensor, n_iter: int = 20, seed: int = 0) -> "ProductQuantizer":
        """Fit every codebook by faiss k-means on its sub-space of ``x`` (n, dim)."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ConfigError(f"fit expects (n, {self.dim}) features, got {tuple(x.shape)}")
        books = kmeans_codebooks(x.detach().float().cpu().numpy(), self.n_codebooks, self.codebook_size,
                                 n_iter=n_iter, seed=seed)
        self.codebooks.copy_(torch.from_numpy(books).to(self.codebooks))
        self.fitted.fill_(True)
        return self

    @torch.no_grad()
    def encode(self, x: torch.Tensor, block: int = 65536) -> torch.Tensor:
        """Nearest codeword per sub-space: (n, dim) -> long codes (n, n_codebooks)."""
        self._check_fitted()
        return nearest_codewords(x, self.codebooks, block)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Reconstruction: long codes (n, n_codebooks) -> (n, dim)."""
        return product_decode(codes, self.codebooks)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))``: the quantized vector, (n, dim)."""
        return self.decode(self.encode(x.detach()))

    def lookup_tables(self, queries: torch.Tensor) -> torch.Tensor:
        """(n_queries, dim) -> (n_queries, n_codebooks, codebook_size); see :func:`product_tables`."""
        self._check_fitted()
        return product_tables(queries, self.codebooks)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise ConfigError("the product quantizer has no codebooks yet",
                              fix="fit it (training does this after each epoch) or load a checkpoint")


def code_dtype(codebook_size: int) -> np.dtype:
    """The narrowest unsigned type that holds codes ``0..codebook_size - 1`` (uint8 up to
    256 codewords, uint16 up to 65,536)."""
    return np.dtype(np.uint8 if codebook_size <= 256 else np.uint16)


# ------------------------------------------------------------------ binary codes

def binarize(hash_features: torch.Tensor) -> torch.Tensor:
    """Sign codes in {-1, +1} (zero counts as +1), same shape as the input."""
    return torch.where(hash_features >= 0, 1.0, -1.0).to(hash_features.dtype)


def pack_codes(hash_features: torch.Tensor | np.ndarray) -> np.ndarray:
    """Bit-pack sign codes: (n, n_bits) -> uint8 (n, n_bits / 8).

    Bit ``i`` of a code lands in byte ``i // 8`` at position ``i % 8`` (little-endian
    within the byte), faiss's binary-index convention.
    """
    arr = hash_features.detach().cpu().numpy() if isinstance(hash_features, torch.Tensor) else hash_features
    if arr.shape[1] % 8:
        raise ConfigError(f"n_bits={arr.shape[1]} must be a multiple of 8 to pack codes")
    return np.packbits(arr >= 0, axis=1, bitorder="little")


def unpack_codes(packed: np.ndarray, n_bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: uint8 (n, n_bits / 8) -> float32 signs (n, n_bits)."""
    bits = np.unpackbits(packed, axis=1, count=n_bits, bitorder="little")
    return bits.astype(np.float32) * 2.0 - 1.0
