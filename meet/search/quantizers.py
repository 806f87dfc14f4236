"""Quantizing the *dense* embedding for the quantization filter, the alternatives to PQ on
the hash features: product quantization behind an OPQ rotation (``pq_space="dense"``) and
residual quantization (``pq_space="residual"``).

Why it exists: METHOD.md quantizes the 64-d hash feature ``h``, so the quantization filter
can rank no better than ``h`` itself, and a 64-d projection of a 256-d embedding loses the
fine order at the top of a large gallery. Measured on 100k Shapes images (shapes-demo
encoders, 300 caption queries), the share of each query's exact dense top-10 found among
the top 1,000 candidates by asymmetric score was 0.79 for PQ on ``h`` (8 codebooks x 256,
8 bytes) and 0.96 for PQ on the OPQ-rotated dense vector at the same 8 bytes. The price is
a ``dim x dim`` rotation per gallery side (256 KB at dim 256) and one matrix product per
query batch; the codes stay ``n_codebooks`` bytes per item and the lookup tables stay
``n_codebooks x codebook_size``.

The rotation is faiss's :class:`OPQMatrix` (Ge et al., 2013) and the codebooks are faiss
k-means per sub-space (:class:`meet.quantization.ProductQuantizer`), both fitted on the
gallery's own dense vectors at index build time (no labels; faiss's ``train`` on the
database vectors, as for any faiss PQ index).

Residual quantization (faiss :class:`ResidualQuantizer`, beam search; Chen et al., 2010)
spends the same bytes differently: each of the M codebooks holds K full-dimensional
codewords, and an item is the *sum* of one codeword per book, each chosen to quantize what
the previous ones left. For inner products the lookup tables are unchanged in shape
(``T[m, k] = <x, C_m[k]>``, M x K per query) and ADC is the same sum of M table entries, so
the filter costs the same per survivor; only building the tables reads M x K x dim
floats instead of K x dim. Measured on the same 100k gallery and 300 caption queries, the
share of the dense top-10 in the top 200 / 500 / 1,000 by ADC score: OPQ + PQ 0.734 / 0.863
/ 0.919, residual 0.966 / 0.987 / 0.994 (beam 8, 8 bytes both).
"""

from __future__ import annotations

import numpy as np
import torch

from meet.errors import ConfigError
from meet.quantization import ProductQuantizer


def rotate(dense: np.ndarray | torch.Tensor, rotation: np.ndarray) -> np.ndarray:
    """Apply the OPQ rotation: (n, dim) -> float32 (n, dim), ``dense @ rotation.T``."""
    x = dense.detach().cpu().numpy() if isinstance(dense, torch.Tensor) else np.asarray(dense)
    return np.asarray(x, dtype=np.float32) @ np.asarray(rotation, dtype=np.float32).T


def fitting_sample(dense: np.ndarray, codebook_size: int, max_items: int, seed: int, what: str) -> np.ndarray:
    """Up to ``max_items`` rows of ``dense`` (sampled with ``seed``, in gallery order) as
    contiguous float32, for fitting codebooks of ``codebook_size`` codewords; a gallery
    smaller than one codebook is a clear error."""
    n = dense.shape[0]
    if n < codebook_size:
        raise ConfigError(f"{what} needs at least codebook_size={codebook_size} gallery items to fit "
                          f"its codebooks, got {n}", fix="use pq_space='hash' for small galleries")
    rows = np.arange(n) if n <= max_items else np.sort(
        np.random.default_rng(seed).choice(n, size=max_items, replace=False))
    return np.ascontiguousarray(np.asarray(dense[rows], dtype=np.float32))


def fit_dense_pq(dense: np.ndarray, n_codebooks: int, codebook_size: int, max_items: int,
                 seed: int = 0, n_iter: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Fit ``(rotation (dim, dim) float32, codebooks (M, K, dim / M) float32)`` on up to
    ``max_items`` rows of ``dense`` (n, dim), sampled with ``seed``; ``n_iter`` is both the
    OPQ alternations and the k-means iterations."""
    import faiss  # lazy: heavy

    dim = dense.shape[1]
    if dim % n_codebooks:
        raise ConfigError(f"dense PQ: embed_dim={dim} is not divisible by n_codebooks={n_codebooks}",
                          fix="use pq_space='hash' for this checkpoint")
    if codebook_size > 256:
        raise ConfigError(f"dense PQ stores one byte per codebook; codebook_size={codebook_size} > 256",
                          fix="use pq_space='hash' for this checkpoint")
    sample = fitting_sample(dense, codebook_size, max_items, seed, "dense PQ")
    opq = faiss.OPQMatrix(dim, n_codebooks)
    # The PQ that OPQ alternates with while learning the rotation: same codebook count, and
    # 2**nbits <= codebook_size codewords (faiss needs a power of two; our own codebooks
    # below have exactly codebook_size).
    trainer = faiss.ProductQuantizer(dim, n_codebooks, max(1, int(np.log2(codebook_size))))
    trainer.cp.min_points_per_centroid = 1  # small galleries are legitimate; silence the warning
    opq.pq = trainer
    opq.verbose = False
    opq.niter = n_iter  # alternations of rotation and PQ (faiss's default 50 gains little here)
    opq.train(sample)
    rotation = faiss.vector_to_array(opq.A).reshape(dim, dim).astype(np.float32)
    quantizer = ProductQuantizer(dim, n_codebooks, codebook_size)
    quantizer.fit(torch.from_numpy(rotate(sample, rotation)), n_iter=n_iter, seed=seed)
    return rotation, quantizer.codebooks.numpy().copy()


def encode_dense_pq(dense: np.ndarray, rotation: np.ndarray, codebooks: np.ndarray,
                    block: int = 65536) -> np.ndarray:
    """Nearest codeword per sub-space of the rotated vectors: (n, dim) -> uint8 (n, M)."""
    books = np.array(codebooks, dtype=np.float32)  # a copy: codebooks may be a read-only map
    n_codebooks, codebook_size, sub_dim = books.shape
    quantizer = ProductQuantizer(n_codebooks * sub_dim, n_codebooks, codebook_size)
    quantizer.codebooks.copy_(torch.from_numpy(books))
    quantizer.fitted.fill_(True)
    out = np.empty((dense.shape[0], n_codebooks), dtype=np.uint8)
    for start in range(0, dense.shape[0], block):
        rotated = torch.from_numpy(rotate(dense[start:start + block], rotation))
        out[start:start + block] = quantizer.encode(rotated).numpy()
    return out


def fit_residual(dense: np.ndarray, n_codebooks: int, codebook_size: int, max_items: int,
                 beam_size: int, seed: int = 0) -> np.ndarray:
    """Fit residual-quantizer codebooks ``(M, K, dim)`` float32 on up to ``max_items`` rows
    of ``dense`` (n, dim), sampled with ``seed``; ``beam_size`` is faiss's beam width."""
    import faiss  # lazy: heavy

    dim = dense.shape[1]
    nbits = int(np.log2(codebook_size)) if codebook_size > 1 else 0
    if codebook_size > 256 or 2 ** nbits != codebook_size:
        raise ConfigError(f"residual quantization needs codebook_size a power of two <= 256, got {codebook_size}",
                          fix="use pq_space='hash' or 'dense' for this checkpoint")
    sample = fitting_sample(dense, codebook_size, max_items, seed, "residual quantization")
    quantizer = faiss.ResidualQuantizer(dim, n_codebooks, nbits)
    quantizer.max_beam_size = int(beam_size)
    quantizer.cp.seed = int(seed)
    quantizer.cp.min_points_per_centroid = 1  # small galleries are legitimate; silence the warning
    quantizer.train(sample)
    return faiss.vector_to_array(quantizer.codebooks).reshape(n_codebooks, codebook_size, dim).astype(np.float32)


def encode_residual(dense: np.ndarray, codebooks: np.ndarray, beam_size: int,
                    block: int = 65536) -> np.ndarray:
    """Residual codes of ``dense`` (n, dim) with stored ``codebooks`` (M, K, dim): uint8 (n, M)."""
    import faiss  # lazy: heavy

    books = np.ascontiguousarray(codebooks, dtype=np.float32)
    n_codebooks, codebook_size, dim = books.shape
    quantizer = faiss.ResidualQuantizer(dim, n_codebooks, int(np.log2(codebook_size)))
    faiss.copy_array_to_vector(books.ravel(), quantizer.codebooks)
    quantizer.max_beam_size = int(beam_size)
    quantizer.is_trained = True
    out = np.empty((dense.shape[0], n_codebooks), dtype=np.uint8)
    for start in range(0, dense.shape[0], block):
        rows = np.ascontiguousarray(np.asarray(dense[start:start + block], dtype=np.float32))
        out[start:start + block] = _unpack_fields(quantizer.compute_codes(rows), n_codebooks,
                                                  int(np.log2(codebook_size)))
    return out


def _unpack_fields(packed: np.ndarray, n_fields: int, nbits: int) -> np.ndarray:
    """faiss's bit-packed codes (n, bytes), ``n_fields`` fields of ``nbits`` bits each, least
    significant bit first -> uint8 (n, n_fields)."""
    if nbits == 8:
        return np.ascontiguousarray(packed[:, :n_fields])
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, :n_fields * nbits]
    weights = (1 << np.arange(nbits)).astype(np.uint16)
    return (bits.reshape(-1, n_fields, nbits) * weights).sum(axis=2).astype(np.uint8)
