"""Redundancy statistics shared by the app and the notebooks (one number, one function).

Inputs are numpy arrays or meet objects (:class:`~meet.inference.Encoded`,
:class:`~meet.search.GalleryIndex`, :class:`~meet.search.QueryTrace`); outputs are small
dataclasses of numpy arrays and floats with ``to_dict()`` for JSON. Plots of these live
in :mod:`meet.figures`.

Stage I (:mod:`meet.analysis.codes`): :func:`codebook_usage`, :func:`quantization_errors`,
:func:`bit_balance`, :func:`hamming_pair_histogram`.
Stage II filters (:mod:`meet.analysis.funnel`): :func:`query_funnel`,
:func:`aggregate_funnel`, :func:`recall_cost_curve`, :func:`removed_by_stage`.
Stage II reweighting (:mod:`meet.analysis.rerank`): :func:`reweighting_view`,
:func:`true_match_ranks`, :func:`rerank_signal`. Embedding map (:mod:`meet.analysis.embedding`): :func:`umap_layout`.
"""

from meet.analysis.codes import (BitBalance, CodebookUsage, PairHistogram, bit_balance, codebook_usage,
                                 hamming_pair_histogram, quantization_errors)
from meet.analysis.embedding import UmapLayout, umap_layout
from meet.analysis.funnel import (AggregateFunnel, Funnel, RecallCostCurve, aggregate_funnel,
                                  query_funnel, recall_cost_curve, removed_by_stage)
from meet.analysis.rerank import RerankSignal, ReweightView, rerank_signal, reweighting_view, true_match_ranks

__all__ = [
    "AggregateFunnel", "BitBalance", "CodebookUsage", "Funnel", "PairHistogram", "RecallCostCurve",
    "RerankSignal", "ReweightView", "UmapLayout", "aggregate_funnel", "bit_balance", "codebook_usage",
    "hamming_pair_histogram", "query_funnel", "quantization_errors", "recall_cost_curve",
    "removed_by_stage", "rerank_signal", "reweighting_view", "true_match_ranks", "umap_layout",
]
