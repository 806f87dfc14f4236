"""Product quantization of the hash features, and the binary codes.

A :class:`ProductQuantizer` splits an ``n_bits``-dim hash feature into
``n_codebooks`` consecutive sub-vectors and replaces each by the nearest of
``codebook_size`` codewords: one byte per sub-space when ``codebook_size <= 256``.
Codebooks are (re)fit by faiss k-means per sub-space (METHOD.md: after each epoch, on
the training set's hash features). With block-diagonal codebooks the nearest-codeword
assignment per sub-space is the exact minimiser of ``||h - C b||^2`` (what the released
code calls an ICM update), so no iterative search is needed.

The class follows faiss contrib's shape: ``fit`` / ``encode`` / ``decode`` and an
``(n_codebooks, codebook_size, sub_dim)`` codebook tensor, here kept as a buffer of an
``nn.Module`` so it travels with the model to a device and into a checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from meet.errors import ConfigError


class ProductQuantizer(nn.Module):
    """Codebooks ``(n_codebooks, codebook_size, dim // n_codebooks)`` over ``dim``-d vectors."""

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
        import faiss  # lazy: heavy, and only training needs it

        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ConfigError(f"fit expects (n, {self.dim}) features, got {tuple(x.shape)}")
        if x.shape[0] < self.codebook_size:
            raise ConfigError(
                f"k-means needs at least codebook_size={self.codebook_size} training vectors, "
                f"got {x.shape[0]}", fix="use more training data or a smaller --codebook-size")
        data = x.detach().float().cpu().numpy()
        centroids = []
        for m in range(self.n_codebooks):
            sub = np.ascontiguousarray(data[:, m * self.sub_dim:(m + 1) * self.sub_dim])
            # min_points_per_centroid=1 only silences faiss's "please provide at least
            # 39 points per centroid" warning; small fits are legitimate in tests.
            kmeans = faiss.Kmeans(self.sub_dim, self.codebook_size, niter=n_iter,
                                  seed=seed + m, verbose=False, min_points_per_centroid=1)
            kmeans.train(sub)
            centroids.append(torch.from_numpy(kmeans.centroids.copy()))
        self.codebooks.copy_(torch.stack(centroids).to(self.codebooks))
        self.fitted.fill_(True)
        return self

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(n, dim) -> (n_codebooks, n, sub_dim)."""
        return x.reshape(x.shape[0], self.n_codebooks, self.sub_dim).transpose(0, 1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, block: int = 65536) -> torch.Tensor:
        """Nearest codeword per sub-space: (n, dim) -> long codes (n, n_codebooks)."""
        self._check_fitted()
        out = []
        for start in range(0, x.shape[0], block):
            sub = self._split(x[start:start + block].to(self.codebooks))
            dists = torch.cdist(sub, self.codebooks)  # (M, n, K)
            out.append(dists.argmin(dim=2).transpose(0, 1))
        if not out:
            return torch.zeros(0, self.n_codebooks, dtype=torch.long, device=self.codebooks.device)
        return torch.cat(out)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Reconstruction: long codes (n, n_codebooks) -> (n, dim). Differentiable in the
        codebooks (gather), which L_q does not need but costs nothing."""
        codes = codes.long().to(self.codebooks.device)
        parts = [self.codebooks[m][codes[:, m]] for m in range(self.n_codebooks)]
        return torch.cat(parts, dim=1)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))``: the quantized vector, (n, dim)."""
        return self.decode(self.encode(x.detach()))

    def lookup_tables(self, queries: torch.Tensor) -> torch.Tensor:
        """Inner products of each query sub-vector with every codeword.

        (n_queries, dim) -> (n_queries, n_codebooks, codebook_size). The asymmetric score
        of an item with codes ``b`` is ``sum_m table[q, m, b_m]`` (see :func:`adc_scores`).
        """
        self._check_fitted()
        sub = self._split(queries.to(self.codebooks))  # (M, nq, d)
        return torch.einsum("mqd,mkd->qmk", sub, self.codebooks)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise ConfigError("the product quantizer has no codebooks yet",
                              fix="fit it (training does this after each epoch) or load a checkpoint")


def adc_scores(tables: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Asymmetric (float query, quantized item) inner products from lookup tables.

    ``tables`` (n_queries, M, K), ``codes`` (n_items, M) -> scores (n_queries, n_items).
    Touches only the given items' codes: cost n_queries x n_items x M table reads.
    """
    n_queries, n_codebooks, size = tables.shape
    codes = codes.long().to(tables.device)
    # Offset each sub-space's code into one flat (M*K) table, then gather and sum.
    flat = tables.reshape(n_queries, n_codebooks * size)
    offsets = torch.arange(n_codebooks, device=tables.device) * size
    index = (codes + offsets).reshape(-1)  # (n_items*M,)
    gathered = flat[:, index].reshape(n_queries, codes.shape[0], n_codebooks)
    return gathered.sum(dim=2)


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
