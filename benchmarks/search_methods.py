"""Data and methods of ``benchmarks/search.py``: synthetic galleries and queries, and one
:class:`Method` per searcher (faiss baselines and MEET's cascade), each a closure that
searches a range of the prepared queries so the timing code treats them all alike.

Why synthetic data: timing does not depend on what the vectors mean, and a 1M-item
gallery of real embeddings cannot be made on a 2-core machine in minutes. Random unit
vectors in 1024-d are the worst case for the graph and IVF baselines' *recall*, not for
their speed, which is what the benchmark reports.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

N_BITS = 64
N_CODEBOOKS = 8
CODEBOOK_SIZE = 256
RECIPROCAL_K = 100
HNSW_PROBE_ITEMS = 5000
"""Items built to measure HNSW's insertion rate when no size up to --hnsw-max ran."""


@dataclass
class Method:
    """One searchable method: ``run(start, stop)`` searches queries ``[start, stop)``."""

    name: str
    run: Callable[[int, int], object] | None
    total_bytes: float | None
    filter_bytes: float | None = None
    build_seconds: float = 0.0
    skipped: str = ""
    stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    """Per-stage seconds of the latest call, for methods that report them (MEET)."""


@dataclass
class Workload:
    """The queries of one run, in every representation the methods take."""

    float_queries: np.ndarray
    """(n_queries, dim) float32 unit rows, for the float faiss baselines."""
    encoded: object
    """meet.inference.Encoded: dense (n_queries, dense_dim), hash (n_queries, n_bits),
    codes (n_queries, n_bits / 8), for MEET's cascade and the binary / PQ baselines."""


# ----------------------------------------------------------------------------- data

def unit_rows(rng: np.random.Generator, n_rows: int, dim: int) -> np.ndarray:
    """Random unit vectors, (n_rows, dim) float32."""
    rows = rng.standard_normal((n_rows, dim), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def make_workload(n_queries: int, dim: int, dense_dim: int, seed: int) -> Workload:
    """Random queries; the cascade's dense query equals the float one when dims agree."""
    from meet.inference import Encoded
    from meet.quantization import pack_codes

    rng = np.random.default_rng(seed + 1)
    float_queries = unit_rows(rng, n_queries, dim)
    dense = float_queries if dense_dim == dim else unit_rows(rng, n_queries, dense_dim)
    hash_features = np.tanh(rng.standard_normal((n_queries, N_BITS), dtype=np.float32))
    encoded = Encoded(dense=dense, hash=hash_features, codes=pack_codes(hash_features),
                      pq_codes=np.zeros((n_queries, N_CODEBOOKS), dtype=np.uint8))
    return Workload(float_queries=float_queries, encoded=encoded)


def build_flat(n_items: int, dim: int, seed: int, chunk: int) -> tuple[object, float, float]:
    """IndexFlatIP over random unit rows, filled chunk by chunk (no second full copy).

    Returns (index, generation seconds, add seconds).
    """
    import faiss

    rng = np.random.default_rng(seed)
    index = faiss.IndexFlatIP(dim)
    gen_s = add_s = 0.0
    for start in range(0, n_items, chunk):
        t0 = time.perf_counter()
        rows = unit_rows(rng, min(chunk, n_items - start), dim)
        t1 = time.perf_counter()
        index.add(rows)
        gen_s, add_s = gen_s + t1 - t0, add_s + time.perf_counter() - t1
    return index, gen_s, add_s


def stored_vectors(flat_index) -> np.ndarray:
    """Zero-copy (n_items, dim) view of the vectors a flat index holds."""
    import faiss

    n_items, dim = flat_index.ntotal, flat_index.d
    return faiss.rev_swig_ptr(flat_index.get_xb(), n_items * dim).reshape(n_items, dim)


@dataclass
class CascadeArrays:
    """What MEET's gallery holds per item, synthetic."""

    dense: np.ndarray       # (n_items, dense_dim) float16
    codes: np.ndarray       # (n_items, n_bits / 8) uint8, bit-packed signs
    pq_codes: np.ndarray    # (n_items, n_codebooks) uint8
    codebooks: np.ndarray   # (n_codebooks, codebook_size, n_bits / n_codebooks) float32
    reciprocal: np.ndarray  # (n_items, RECIPROCAL_K) float16, each row descending
    dense_codebooks: np.ndarray  # (n_codebooks, codebook_size, dense_dim / n_codebooks): pq_space="dense"
    rotation: np.ndarray    # (dense_dim, dense_dim) float32 orthogonal: the OPQ rotation's stand-in
    residual_codebooks: np.ndarray  # (n_codebooks, codebook_size, dense_dim): pq_space="residual"


def make_cascade_arrays(vectors: np.ndarray | None, n_items: int, dense_dim: int,
                        seed: int, chunk: int) -> CascadeArrays:
    """Random codes, codebooks and reciprocal scores; dense rows are the float baseline's
    vectors stored as float16 when ``vectors`` is given (same gallery), else random."""
    rng = np.random.default_rng(seed + 2)
    dense = np.empty((n_items, dense_dim), dtype=np.float16)
    for start in range(0, n_items, chunk):
        stop = min(start + chunk, n_items)
        dense[start:stop] = vectors[start:stop] if vectors is not None else unit_rows(rng, stop - start, dense_dim)
    codes = rng.integers(0, 256, size=(n_items, N_BITS // 8), dtype=np.uint8)
    pq_codes = rng.integers(0, CODEBOOK_SIZE, size=(n_items, N_CODEBOOKS), dtype=np.uint8)
    codebooks = rng.standard_normal((N_CODEBOOKS, CODEBOOK_SIZE, N_BITS // N_CODEBOOKS),
                                    dtype=np.float32) * 0.5
    # Each item's top-k similarities to the other modality: descending by construction.
    reciprocal = np.empty((n_items, RECIPROCAL_K), dtype=np.float16)
    for start in range(0, n_items, chunk):
        stop = min(start + chunk, n_items)
        gaps = rng.exponential(0.003, size=(stop - start, RECIPROCAL_K)).astype(np.float32)
        reciprocal[start:stop] = 0.8 - np.cumsum(gaps, axis=1)
    dense_codebooks = rng.standard_normal((N_CODEBOOKS, CODEBOOK_SIZE, dense_dim // N_CODEBOOKS),
                                          dtype=np.float32) * 0.1
    rotation = np.linalg.qr(rng.standard_normal((dense_dim, dense_dim)))[0].astype(np.float32)
    residual_codebooks = rng.standard_normal((N_CODEBOOKS, CODEBOOK_SIZE, dense_dim), dtype=np.float32) * 0.05
    return CascadeArrays(dense, codes, pq_codes, codebooks, reciprocal, dense_codebooks, rotation,
                         residual_codebooks)


# -------------------------------------------------------------------------- methods

def flat_method(index, work: Workload, k: int) -> Method:
    q = work.float_queries
    return Method("IndexFlatIP (exact, fp32)", lambda a, b: index.search(q[a:b], k),
                  total_bytes=4 * index.d)


def hnsw_method(vectors: np.ndarray, work: Workload, args, k: int) -> tuple[Method, float]:
    """Build IndexHNSWFlat; returns the method and the build seconds per item."""
    import faiss

    n_items, dim = vectors.shape
    index = faiss.IndexHNSWFlat(dim, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = args.ef_construction
    t0 = time.perf_counter()
    index.add(vectors)
    build_s = time.perf_counter() - t0
    index.hnsw.efSearch = args.ef_search
    graph = index.hnsw
    link_bytes = graph.neighbors.size() * 4 + graph.levels.size() * 4 + graph.offsets.size() * 8
    q = work.float_queries
    name = f"IndexHNSWFlat (M={args.hnsw_m}, efC={args.ef_construction}, efS={args.ef_search})"
    method = Method(name, lambda a, b: index.search(q[a:b], k),
                    total_bytes=4 * dim + link_bytes / n_items, build_seconds=build_s)
    return method, build_s / n_items


def hnsw_skipped(n_items: int, args, rate: tuple[int, float] | None,
                 vectors: np.ndarray, work: Workload, k: int) -> Method:
    """Report HNSW as skipped, with a build-time estimate from the measured rate.

    HNSW insertion costs about log(n) distance evaluations per item, so the estimate
    scales the measured per-item time by log(n) / log(n_measured).
    """
    if rate is None:
        probe = min(HNSW_PROBE_ITEMS, n_items)
        _, per_item = hnsw_method(np.ascontiguousarray(vectors[:probe]), work, args, k)
        rate = (probe, per_item)
    measured_n, per_item = rate
    est_min = per_item * n_items * math.log(n_items) / math.log(max(measured_n, 2)) / 60
    name = f"IndexHNSWFlat (M={args.hnsw_m}, efC={args.ef_construction}, efS={args.ef_search})"
    return Method(name, None, None,
                  skipped=f"skipped (build too slow: est. {est_min:.0f} min; --hnsw-max {args.hnsw_max})")


def ivfpq_method(vectors: np.ndarray, work: Workload, args, k: int) -> Method:
    """IndexIVFPQ, nlist ~ sqrt(n), trained on a prefix of the gallery."""
    import faiss

    n_items, dim = vectors.shape
    n_lists = max(1, int(round(math.sqrt(n_items))))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, n_lists, args.ivf_m, 8, faiss.METRIC_INNER_PRODUCT)
    index.cp.min_points_per_centroid = 1  # silence the small-gallery warning in smoke runs
    index.pq.cp.min_points_per_centroid = 1
    n_train = min(n_items, max(64 * n_lists, 65536))
    t0 = time.perf_counter()
    index.train(np.ascontiguousarray(vectors[:n_train]))
    index.add(vectors)
    build_s = time.perf_counter() - t0
    index.nprobe = min(args.nprobe, n_lists)
    q = work.float_queries
    name = f"IndexIVFPQ (nlist={n_lists}, m={args.ivf_m}x8b, nprobe={index.nprobe})"
    return Method(name, lambda a, b: index.search(q[a:b], k),
                  total_bytes=index.pq.code_size + 8, build_seconds=build_s)


def binary_method(codes: np.ndarray, work: Workload, k: int) -> Method:
    import faiss

    index = faiss.IndexBinaryFlat(N_BITS)
    t0 = time.perf_counter()
    index.add(codes)
    build_s = time.perf_counter() - t0
    q = work.encoded.codes
    return Method(f"IndexBinaryFlat (Hamming only, {N_BITS}-bit)",
                  lambda a, b: index.search(q[a:b], k),
                  total_bytes=N_BITS // 8, build_seconds=build_s)


def build_pq_index(codebooks: np.ndarray, pq_codes: np.ndarray):
    """faiss IndexPQ (inner product, ADC) holding the given codebooks and codes as is."""
    import faiss

    n_codebooks, codebook_size, sub_dim = codebooks.shape
    index = faiss.IndexPQ(n_codebooks * sub_dim, n_codebooks, int(math.log2(codebook_size)),
                          faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(np.ascontiguousarray(codebooks, dtype=np.float32).ravel(),
                               index.pq.centroids)
    index.is_trained = True
    faiss.copy_array_to_vector(np.ascontiguousarray(pq_codes, dtype=np.uint8).ravel(), index.codes)
    index.ntotal = pq_codes.shape[0]
    return index


def pq_method(arrays: CascadeArrays, work: Workload, k: int) -> Method:
    t0 = time.perf_counter()
    index = build_pq_index(arrays.codebooks, arrays.pq_codes)
    build_s = time.perf_counter() - t0
    q = np.ascontiguousarray(work.encoded.hash)
    return Method(f"IndexPQ (PQ only, ADC M={N_CODEBOOKS}x{CODEBOOK_SIZE})",
                  lambda a, b: index.search(q[a:b], k),
                  total_bytes=N_CODEBOOKS, build_seconds=build_s)


def cascade_methods(arrays: CascadeArrays, work: Workload, args, k: int) -> list[Method]:
    """MEET's cascade, fractional and count rates, with and without reweighting; the
    count-rate cascade whose quantization filter reads PQ codes of the rotated dense
    vectors (``pq_space="dense"``: same bytes, plus one rotation per query batch); that
    one again with the asymmetric Hamming filter (``hamming_scores="asymmetric"``: the
    same codes, scanned by faiss's fast scan against the query's float hash feature); and
    the asymmetric filter with residual-quantized dense vectors (``pq_space="residual"``:
    same bytes, lookup tables from M x K full-size codewords)."""
    from meet.config import CascadeConfig
    from meet.search import OPQ, GalleryIndex, HashPQ, ResidualQuantizer

    n_items = arrays.dense.shape[0]
    t0 = time.perf_counter()
    ids = [f"img{i}" for i in range(n_items)]
    gallery = GalleryIndex("image", ids, arrays.dense, arrays.codes, arrays.pq_codes, HashPQ(arrays.codebooks),
                           reciprocal=arrays.reciprocal, fingerprint="synthetic")
    gallery.binary_index  # built lazily on first use: build it here, outside the timings
    build_s = time.perf_counter() - t0
    dense_pq_gallery = GalleryIndex("image", ids, arrays.dense, arrays.codes, arrays.pq_codes,
                                    OPQ(arrays.dense_codebooks, arrays.rotation), fingerprint="synthetic")
    dense_pq_gallery.binary_index
    dense_pq_gallery.sign_scan_index  # likewise for the asymmetric filter
    residual_gallery = GalleryIndex("image", ids, arrays.dense, arrays.codes, arrays.pq_codes,
                                    ResidualQuantizer(arrays.residual_codebooks), reciprocal=arrays.reciprocal,
                                    fingerprint="synthetic")
    residual_gallery.sign_scan_index
    filter_bytes = N_BITS // 8 + N_CODEBOOKS
    dense_bytes = arrays.dense.shape[1] * arrays.dense.itemsize
    reciprocal_bytes = arrays.reciprocal.shape[1] * arrays.reciprocal.itemsize
    methods = []
    symmetric, asymmetric = CascadeConfig(), CascadeConfig(hamming_scores="asymmetric")
    settings = [("frac", args.frac_rates, gallery, ("cascade", "meet"), symmetric),
                ("count", args.count_rates, gallery, ("cascade", "meet"), symmetric),
                ("count, dense PQ", args.count_rates, dense_pq_gallery, ("cascade",), symmetric),
                ("count, asymmetric Hamming, dense PQ", args.count_rates, dense_pq_gallery, ("cascade",),
                 asymmetric),
                ("count, asymmetric Hamming, residual PQ", args.count_rates, residual_gallery,
                 ("cascade", "meet"), asymmetric)]
    if args.skip_fractional:
        settings = settings[1:]
    for label, (ham, pq), searched, modes, base in settings:
        cfg = dataclasses.replace(base, hamming_rate_t2i=ham, pq_rate_t2i=pq)
        for mode in modes:
            extra = reciprocal_bytes if mode == "meet" else 0
            what = "dense re-rank" if mode == "cascade" else "MEET reweighting"
            method = Method(f"MEET {mode} ({label}: R={ham:g}, q={pq:g}; {what})", None,
                            total_bytes=filter_bytes + dense_bytes + extra,
                            filter_bytes=filter_bytes, build_seconds=build_s)

            def run(a: int, b: int, cfg=cfg, mode=mode, method=method, searched=searched):
                result = searched.search(_slice_encoded(work.encoded, a, b), k=k, mode=mode, cascade=cfg,
                                         batch_size=args.cascade_batch_size)
                method.stage_seconds = dict(result.timings)
                return result
            method.run = run
            methods.append(method)
    return methods


def _slice_encoded(encoded, start: int, stop: int):
    return dataclasses.replace(encoded, dense=encoded.dense[start:stop], hash=encoded.hash[start:stop],
                               codes=encoded.codes[start:stop], pq_codes=encoded.pq_codes[start:stop])
