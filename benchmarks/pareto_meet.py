"""MEET's cascade in ``benchmarks/pareto.py``: one :class:`~meet.search.GalleryIndex` per
quantization space and side, searched through ``index.search`` in every variant of
:data:`MEET_VARIANTS` over the ``--meet-rates`` settings. Bytes: see
:mod:`benchmarks.pareto_methods`."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.pareto_data import Queries
from benchmarks.pareto_methods import Context, Method, Search, Setting


@dataclass
class MeetVariant:
    """One MEET cascade variant: the build-time quantization space and the search-time
    ``CascadeConfig`` fields (any field, so a new Stage II option is one more row)."""

    label: str
    pq_space: str
    fields: dict[str, Any] = field(default_factory=dict)
    mode: str = "cascade"


MEET_VARIANTS = [
    MeetVariant("symmetric Hamming, hash PQ (the paper's)", "hash", {"hamming_scores": "symmetric"}),
    MeetVariant("asymmetric Hamming, hash PQ", "hash", {"hamming_scores": "asymmetric"}),
    MeetVariant("symmetric Hamming, dense PQ", "dense", {"hamming_scores": "symmetric"}),
    MeetVariant("asymmetric Hamming, dense PQ", "dense", {"hamming_scores": "asymmetric"}),
    MeetVariant("symmetric Hamming, residual PQ", "residual", {"hamming_scores": "symmetric"}),
    MeetVariant("asymmetric Hamming, residual PQ", "residual", {"hamming_scores": "asymmetric"}),
    MeetVariant("asymmetric Hamming, residual PQ", "residual", {"hamming_scores": "asymmetric"}, mode="meet"),
    # The sublinear Hamming filter (meet.search.inverted): inverted lists over the codes,
    # nprobe of the auto_nlist lists scanned.
    MeetVariant("IVF Hamming (nprobe 16), residual PQ", "residual",
                {"hamming_scores": "asymmetric", "hamming_index": "ivf", "hamming_nprobe": 16}),
    MeetVariant("IVF Hamming (nprobe 64), residual PQ", "residual",
                {"hamming_scores": "asymmetric", "hamming_index": "ivf", "hamming_nprobe": 64}),
]


def meet_variants(ctx: Context) -> list[Method]:
    """Every row of :data:`MEET_VARIANTS` (plus ``--meet-variant``), over each count-rate
    setting ``R:q`` of ``--meet-rates``; one index per quantization space."""
    methods = []
    for variant in MEET_VARIANTS + list(ctx.args.meet_variant):
        if variant.pq_space not in ctx.args.meet_spaces:
            continue
        try:
            methods.append(_meet_method(ctx, variant))
        except TypeError as exc:  # a CascadeConfig field this branch does not have
            ctx.log(f"MEET variant {variant.label!r} skipped: {exc}")
    return methods


def meet_index(ctx: Context, pq_space: str) -> tuple[Any, float, bool]:
    """``(GalleryIndex of this side, build seconds, loaded from the cache)``, built as
    ``build_pair`` builds one side (the quantizer from :func:`gallery_quantizer`, fitted on
    the gallery for the dense spaces); no reciprocal scores (``meet`` mode then reweights
    by consistency only)."""
    from meet.inference import Encoded
    from meet.search import GalleryIndex
    from meet.search.quantizers import gallery_quantizer

    folder = None if ctx.index_cache is None else ctx.index_cache / f"{ctx.direction}-meet-{pq_space}"

    def build():
        if folder is not None and (folder / "index.json").is_file() and not ctx.args.rebuild:
            index = GalleryIndex.load(folder, mmap=False, verify=False)
            return index, float(index.meta["build_s"]), True
        t0 = time.perf_counter()
        model = ctx.model
        cascade = dataclasses.replace(model.cfg.cascade, pq_space=pq_space, reciprocal_k=0)
        cfg = dataclasses.replace(model.cfg, cascade=cascade)
        side = ctx.side
        items = Encoded(side.dense, side.hash, side.codes, np.zeros((ctx.n, 0), np.uint8))
        quantizer = gallery_quantizer(model, side.name, items, cfg)
        pq_codes = quantizer.encode(quantizer.source(items))
        index = GalleryIndex(side.name, [str(i) for i in range(ctx.n)], side.dense, side.codes, pq_codes, quantizer,
                             cascade=cascade, fingerprint="pareto", check_values=False)
        index.meta["build_s"] = time.perf_counter() - t0
        if folder is not None:
            index.save(folder)
        return index, index.meta["build_s"], False
    return ctx.shared(f"meet {pq_space}", build)[0]


def _meet_method(ctx: Context, variant: MeetVariant) -> Method:
    from meet.config import CascadeConfig

    dataclasses.replace(CascadeConfig(), **variant.fields)  # an unknown field fails here, before building
    index, build_s, cached = meet_index(ctx, variant.pq_space)
    t0 = time.perf_counter()  # the filter's faiss structure, built on first use
    if variant.fields.get("hamming_scores", "symmetric") == "asymmetric":
        index.sign_scan_index
    else:
        index.binary_index
    lists_bytes = 0.0
    if variant.fields.get("hamming_index") == "ivf":
        lists = index.inverted_lists(variant.fields.get("hamming_nlist", 0))
        lists_bytes = sum(a.nbytes for a in (lists.centroids, lists.offsets, lists.members)) / ctx.n
    build_s += time.perf_counter() - t0
    shared = sum(a.nbytes for a in index.quantizer.arrays().values()) / ctx.n
    index_bytes = index.codes.shape[1] + index.pq_codes.shape[1] * index.pq_codes.itemsize + shared + lists_bytes
    family = f"MEET {variant.mode}: {variant.label}"
    method = Method(family, f"GalleryIndex ({variant.pq_space} PQ {index.quantizer.n_codebooks}x"
                    f"{index.quantizer.codebook_size})", build_s, index_bytes, index_bytes + 2 * ctx.dim,
                    build_cached=cached)
    for r, q in ctx.args.meet_rates:
        cfg = dataclasses.replace(index.cascade, **variant.fields, **{f"hamming_rate_{ctx.direction}": r,
                                                                       f"pq_rate_{ctx.direction}": q})
        method.settings.append(Setting(f"R={_rate(r)}, q={_rate(q)}", _meet_search(index, cfg, variant.mode,
                                                                                      ctx.args.batch)))
    return method


def _rate(rate: float) -> str:
    """A count as is, a fraction (<= 1: of the gallery, or of the Hamming survivors) in percent."""
    return f"{rate * 100:g}%" if rate <= 1 else f"{rate:g}"


def _meet_search(index: Any, cfg: Any, mode: str, batch: int) -> Search:
    def run(q: Queries, k: int) -> np.ndarray:
        return index.search(q, k=k, mode=mode, cascade=cfg, batch_size=batch).ids
    return run
