"""Stage I statistics: how the 8-byte PQ codes and the 64-bit sign codes use their capacity.

* :func:`codebook_usage`: how evenly each codebook's codewords are used (entropy,
  perplexity, dead codewords). A codebook whose perplexity is far below its size spends
  bits on codewords nobody gets: redundancy left in the code.
* :func:`quantization_errors`: ``||h - decode(code)||^2`` per item.
* :func:`bit_balance`: per-bit share of ones, binary entropy, the bit-bit correlation
  and the *effective number of bits* (how many independent bits the code is worth).
* :func:`hamming_pair_histogram`: Hamming distances of relevant vs non-relevant pairs,
  i.e. how well the codes alone separate what the Hamming filter must keep from what it
  may drop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from meet.analysis._base import Record, as_array, relevance, rows_per_block
from meet.errors import DataError
from meet.search.hamming import hamming_distances
from meet.quantization import unpack_codes


@dataclass
class CodebookUsage(Record):
    """Codeword usage of one side's PQ codes (M codebooks of K codewords)."""

    counts: np.ndarray
    """int64 (M, K): items assigned to each codeword."""
    share: np.ndarray
    """float64 (M, K): ``counts / n_items`` (each row sums to 1)."""
    entropy_bits: np.ndarray
    """float64 (M,): Shannon entropy of each row of ``share``, in bits (max log2 K)."""
    perplexity: np.ndarray
    """float64 (M,): ``2 ** entropy_bits``, the number of equally used codewords with
    the same entropy."""
    dead: np.ndarray
    """int64 (M,): codewords no item uses."""
    n_items: int
    codebook_size: int


@dataclass
class BitBalance(Record):
    """Balance and redundancy of packed sign codes.

    ``effective_bits`` is the participation ratio of the bit-bit correlation matrix
    ``C`` over the bits that vary: ``(sum_i lambda_i)^2 / sum_i lambda_i^2`` =
    ``trace(C)^2 / ||C||_F^2`` (the eigenvalues never need computing). Independent bits
    give ``C = I`` and the number of varying bits (less a little sampling noise, about
    ``n_bits / (1 + (n_bits - 1) / n_items)``); identical bits give a matrix of ones and 1.
    A constant bit (always 0 or always 1) carries no information, so it is left out
    (``constant_bits`` counts them; all bits constant gives 0); its row and column of
    ``correlation`` are 0 off the diagonal and 1 on it.
    """

    share_ones: np.ndarray
    """float64 (n_bits,): share of items whose bit i is 1 (balanced: 0.5)."""
    bit_entropy: np.ndarray
    """float64 (n_bits,): binary entropy of ``share_ones`` in bits (balanced: 1)."""
    correlation: np.ndarray
    """float64 (n_bits, n_bits): Pearson correlation of the 0/1 bits."""
    effective_bits: float
    mean_entropy: float
    """Mean of ``bit_entropy``."""
    constant_bits: int
    n_items: int


@dataclass
class PairHistogram(Record):
    """Hamming distances of every (query, gallery item) pair, split by relevance.

    Means, median and overlap are NaN (``None`` in JSON) when a class is empty.
    """

    bins: np.ndarray
    """int64 (n_bits + 1,): distances 0..n_bits."""
    positive: np.ndarray
    """int64 (n_bits + 1,): relevant pairs at each distance."""
    negative: np.ndarray
    """int64 (n_bits + 1,): non-relevant pairs at each distance."""
    positive_mean: float
    negative_mean: float
    positive_median: float
    """Median distance of the relevant pairs (``np.median`` semantics)."""
    overlap: float
    """Share of the non-relevant pairs at a distance <= ``positive_median``: negatives a
    Hamming filter cannot tell from a typical positive."""


def codebook_usage(pq_codes: Any, codebook_size: int) -> CodebookUsage:
    """Usage of each codeword of each codebook. ``pq_codes`` (n, M) integer codes in
    ``[0, codebook_size)`` (uint8, or uint16 for codebooks above 256)."""
    codes = as_array(pq_codes, "pq_codes", 2)
    size = int(codebook_size)
    n_items, n_codebooks = codes.shape
    if size < 1:
        raise DataError(f"codebook_size={codebook_size} must be at least 1")
    if n_items == 0 or n_codebooks == 0:
        raise DataError(f"pq_codes has shape {codes.shape}: no items or no codebooks",
                        fix="pass the codes of at least one item")
    if not np.issubdtype(codes.dtype, np.integer):
        raise DataError(f"pq_codes must hold integers, got {codes.dtype}")
    low, high = int(codes.min()), int(codes.max())
    if low < 0 or high >= size:
        raise DataError(f"pq_codes hold values in [{low}, {high}], outside [0, {size})",
                        fix="pass the codebook size the codes were assigned with "
                            "(gallery.codebooks.shape[1])")
    offsets = np.arange(n_codebooks, dtype=np.int64) * size
    counts = np.zeros(n_codebooks * size, np.int64)
    step = rows_per_block(n_codebooks)
    for start in range(0, n_items, step):
        flat = codes[start:start + step].astype(np.int64) + offsets
        counts += np.bincount(flat.ravel(), minlength=n_codebooks * size)
    counts = counts.reshape(n_codebooks, size)
    share = counts / n_items
    entropy = _entropy_bits(share)
    return CodebookUsage(counts=counts, share=share, entropy_bits=entropy, perplexity=2.0 ** entropy,
                         dead=(counts == 0).sum(axis=1).astype(np.int64), n_items=n_items,
                         codebook_size=size)


def _entropy_bits(share: np.ndarray) -> np.ndarray:
    """Row entropies ``-sum p log2 p`` with ``0 log 0 = 0``."""
    logs = np.log2(np.where(share > 0, share, 1.0))
    return -(share * logs).sum(axis=-1)


def quantization_errors(features: Any, pq_codes: Any, quantizer: Any) -> np.ndarray:
    """Squared reconstruction error ``||x - decode(code)||^2`` per item, float64 (n,).

    ``features`` (n, d): the vectors the codes were assigned from, i.e. what the quantizer
    reads (``quantizer.source(items)``: the hash features, or the dense vectors of a
    dense- or residual-space index); ``pq_codes`` (n, M); ``quantizer`` a
    :class:`~meet.search.quantizers.Quantizer` (``GalleryIndex.quantizer``), whose own
    ``decode`` reconstructs, in blocks of items.
    """
    x = as_array(features, "features", 2, np.float32)
    codes = as_array(pq_codes, "pq_codes", 2)
    if codes.shape != (x.shape[0], quantizer.n_codebooks) or x.shape[1] != quantizer.dim:
        raise DataError(f"features {x.shape} and pq_codes {codes.shape} do not fit {quantizer!r}",
                        fix="pass (n, quantizer.dim) features and (n, n_codebooks) codes of the same side")
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= quantizer.codebook_size):
        raise DataError(f"pq_codes reach {int(codes.max())}, but the codebooks hold "
                        f"{quantizer.codebook_size} codewords")
    out = np.empty(x.shape[0], np.float64)
    step = rows_per_block(x.shape[1], 4)
    for start in range(0, x.shape[0], step):
        diff = x[start:start + step].astype(np.float64) - quantizer.decode(codes[start:start + step])
        out[start:start + diff.shape[0]] = np.einsum("bd,bd->b", diff, diff)
    return out


def bit_balance(codes: Any) -> BitBalance:
    """Per-bit balance and the redundancy between bits of packed codes.

    ``codes`` (n, n_bits / 8) uint8, packed as :func:`meet.quantization.pack_codes`
    (bit i in byte i // 8 at position i % 8). The Gram matrix of the 0/1 bits is
    accumulated block by block in float64, so memory is (n_bits, n_bits) whatever n.
    """
    packed = as_array(codes, "codes", 2)
    if packed.dtype != np.uint8:
        raise DataError(f"codes must be packed uint8, got {packed.dtype}",
                        fix="pass Encoded.codes / GalleryIndex.codes (meet.quantization.pack_codes)")
    n_items, n_bits = packed.shape[0], packed.shape[1] * 8
    if n_items == 0 or n_bits == 0:
        raise DataError(f"codes have shape {packed.shape}: no items or no bits")
    ones = np.zeros(n_bits, np.float64)
    gram = np.zeros((n_bits, n_bits), np.float64)
    step = rows_per_block(n_bits)
    for start in range(0, n_items, step):
        bits = (unpack_codes(packed[start:start + step], n_bits) > 0).astype(np.float64)
        ones += bits.sum(axis=0)
        gram += bits.T @ bits
    p = ones / n_items
    cov = gram / n_items - np.outer(p, p)
    std = np.sqrt(np.clip(p * (1.0 - p), 0.0, None))
    constant = std == 0
    denom = np.outer(std, std)
    corr = np.divide(cov, denom, out=np.zeros_like(cov), where=denom > 0)
    corr = np.clip(corr, -1.0, 1.0)
    np.fill_diagonal(corr, 1.0)
    varying = corr[np.ix_(~constant, ~constant)]
    effective = float(np.trace(varying) ** 2 / np.sum(varying ** 2)) if varying.size else 0.0
    entropy = _entropy_bits(np.stack([p, 1.0 - p], axis=1))
    return BitBalance(share_ones=p, bit_entropy=entropy, correlation=corr, effective_bits=effective,
                      mean_entropy=float(entropy.mean()), constant_bits=int(constant.sum()),
                      n_items=n_items)


def hamming_pair_histogram(query_codes: Any, gallery_codes: Any, relevant: Any) -> PairHistogram:
    """Histogram of the Hamming distances of all (query, item) pairs, relevant vs not.

    ``query_codes`` (nq, B) and ``gallery_codes`` (ng, B) packed uint8; ``relevant``
    (nq, ng) bool ground truth. Distances come from :func:`meet.search.hamming.hamming_distances`
    (vectorised popcount) over query blocks of bounded size; one ``bincount`` per block
    fills both histograms.
    """
    queries = as_array(query_codes, "query_codes", 2)
    gallery = as_array(gallery_codes, "gallery_codes", 2)
    if queries.dtype != np.uint8 or gallery.dtype != np.uint8 or queries.shape[1] != gallery.shape[1]:
        raise DataError(f"query codes {queries.shape} {queries.dtype} and gallery codes {gallery.shape} "
                        f"{gallery.dtype} must be packed uint8 of the same width",
                        fix="encode both sides with the same checkpoint")
    rel = relevance(relevant, (queries.shape[0], gallery.shape[0]))
    n_bins = gallery.shape[1] * 8 + 1
    counts = np.zeros(2 * n_bins, np.int64)
    step = rows_per_block(gallery.shape[0], 3)
    for start in range(0, queries.shape[0], step):
        stop = start + step
        dist = hamming_distances(queries[start:stop], gallery).astype(np.int64)
        dist += n_bins * rel[start:stop]           # relevant pairs land in the upper half
        counts += np.bincount(dist.ravel(), minlength=2 * n_bins)
    negative, positive = counts[:n_bins], counts[n_bins:]
    bins = np.arange(n_bins, dtype=np.int64)
    median = _hist_median(positive)
    overlap = float(negative[bins <= median].sum() / negative.sum()) if negative.sum() and \
        not math.isnan(median) else math.nan
    return PairHistogram(bins=bins, positive=positive, negative=negative,
                         positive_mean=_hist_mean(bins, positive), negative_mean=_hist_mean(bins, negative),
                         positive_median=median, overlap=overlap)


def _hist_mean(bins: np.ndarray, counts: np.ndarray) -> float:
    total = counts.sum()
    return float((bins * counts).sum() / total) if total else math.nan


def _hist_median(counts: np.ndarray) -> float:
    """``np.median`` of the values a histogram counts (mean of the two middle values
    when the count is even)."""
    total = int(counts.sum())
    if total == 0:
        return math.nan
    cumulative = np.cumsum(counts)
    kth = lambda k: int(np.searchsorted(cumulative, k + 1))  # value of the k-th smallest (0-based)
    return (kth((total - 1) // 2) + kth(total // 2)) / 2.0
