"""Stage II, step 2: the quantization filter, and asymmetric distance computation (ADC).

The survivors of the Hamming filter are scored by ADC: with the query's M x K lookup
table ``T`` from the index's quantizer (:meth:`meet.search.quantizers.Quantizer.lookup_tables`),
an item with codes ``b`` scores ``sum_m T[m, b_m]`` (an inner product with the item's
reconstruction, computed with M table reads), reading only the survivors' M-byte codes;
the best ``q`` are kept, ties by gallery position (:func:`meet.search.topk.stable_top`).

The ADC helpers here also score the asymmetric Hamming filter (sign codes are PQ codes of
the +-1 patterns, :func:`meet.search.hamming.sign_codebooks`) and the exhaustive ``pq``
mode (:func:`pq_block_scorer`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from meet.search.topk import stable_top


def adc_gather(tables: torch.Tensor, item_codes: torch.Tensor) -> torch.Tensor:
    """ADC scores ``sum_m tables[q, m, code[q, r, m]]``: (n_queries, M, K) x (n_queries, R, M)
    integer codes -> (n_queries, R) float32. The sum runs over sub-spaces in order
    m = 0..M-1; each sub-space's codes are widened to int64 (what ``gather`` indexes
    with) one column at a time, which is cheaper than widening a transposed copy."""
    scores = torch.zeros(item_codes.shape[0], item_codes.shape[1], dtype=torch.float32)
    for m in range(tables.shape[1]):
        scores += tables[:, m, :].gather(1, item_codes[:, :, m].long())
    return scores


def gather_codes(pq_codes: np.ndarray, positions: np.ndarray) -> torch.Tensor:
    """PQ codes of the items at ``positions`` (n_queries, R): (n_queries, R, M), in the
    stored dtype. A row of M uint8 codes is fetched as one integer of M bytes where such
    an integer type exists (M = 1, 2, 4, 8), else as one M-byte record: one gather per
    item, not M."""
    n_items, n_codebooks = pq_codes.shape
    if pq_codes.dtype == np.uint8 and pq_codes.flags.c_contiguous:
        word = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(n_codebooks,
                                                                          np.dtype((np.void, n_codebooks)))
        rows = pq_codes.view(word).reshape(n_items)
        raw = np.take(rows, positions).view(np.uint8).reshape(*positions.shape, n_codebooks)
    else:  # wider codes (uint16 above 256 codewords) or a strided array: one fancy index
        raw = np.asarray(pq_codes[positions])
        if raw.dtype == np.uint16:
            raw = raw.astype(np.int32)  # torch's uint16 supports few ops; int32 holds every code
    return torch.from_numpy(raw)


def pq_filter(tables: torch.Tensor, pq_codes: np.ndarray, positions: np.ndarray, n_keep: int,
              ties_by_hamming_rank: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the ``n_keep`` Hamming survivors with the best ADC score, ties by gallery
    position (or, for the release's evaluation, by Hamming rank: ``ties_by_hamming_rank``).

    ``tables`` (n_queries, M, K); ``pq_codes`` (n_items, M) the gallery's PQ codes, of
    which only the survivors' rows are read; ``positions`` (n_queries, R) survivors.
    Returns ``kept`` (n_queries, q) indices into the R survivors (= their Hamming ranks),
    best first, ``kept_scores`` (n_queries, q) and ``scores`` (n_queries, R) float32.
    """
    scores = adc_gather(tables, gather_codes(pq_codes, positions))
    kept = stable_top(scores, n_keep, None if ties_by_hamming_rank else torch.from_numpy(positions))
    return kept.numpy(), scores.gather(1, kept).numpy(), scores.numpy()


def pq_block_scorer(tables: torch.Tensor, pq_codes: np.ndarray) -> Callable[[int, int], torch.Tensor]:
    """ADC scores of every query against ``pq_codes[start:stop]`` (shared by all queries)."""
    def score(start: int, stop: int) -> torch.Tensor:
        codes = torch.from_numpy(np.asarray(pq_codes[start:stop]).astype(np.int64))  # (b, M)
        out = torch.zeros(tables.shape[0], stop - start)
        for m in range(tables.shape[1]):
            out += tables[:, m, :][:, codes[:, m]]
        return out
    return score
