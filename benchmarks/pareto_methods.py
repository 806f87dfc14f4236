"""The methods of ``benchmarks/pareto.py``: each family builds its index over one side of
the real-embedding gallery and returns its settings (knob values) to sweep.

A family is a function ``(ctx) -> list[Method]`` in :data:`FAMILIES`; MEET's cascade
variants are rows of :data:`benchmarks.pareto_meet.MEET_VARIANTS` (one line each;
``--meet-variant`` adds more from the command line). Every search returns gallery positions ``(n_queries, k)`` int64.

Bytes per item (the same rule for every method; shared tables are divided by the gallery
size): ``index_bytes`` is what the search structure holds in RAM, measured for faiss
indexes as the size of ``faiss.serialize_index`` (codes, ids, graph links, centroids,
codebooks, and the vectors of flat / HNSW / SQ indexes, which hold them); for MEET, the
8-byte sign codes + the 8-byte PQ codes + the quantizer's arrays (codebooks, rotation).
``total_bytes`` adds every stored vector the search reads besides the index: the float16
rows of an fp16 refine / rescoring step and of MEET's re-rank (2 x dim), the float32 rows
of ``IndexRefineFlat`` (4 x dim), and MEET's reciprocal scores in ``meet`` mode.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.pareto_data import Queries, Side
from meet.cli import atomic_write_json

Search = Callable[[Queries, int], np.ndarray]


@dataclass
class Setting:
    label: str
    search: Search


@dataclass
class Method:
    family: str           # the figure's trace and the headline table's row
    name: str             # the index and its fixed build parameters
    build_s: float        # seconds to build, shared parts (coarse quantizer, stores) included
    index_bytes: float    # per item, see the module docstring
    total_bytes: float
    settings: list[Setting] = field(default_factory=list)
    build_cached: bool = False  # build_s was measured when the cached index was built


class Context:
    """One side of the gallery, the run's arguments, and the parts several methods share
    (each built once, its seconds added to every method that uses it).

    ``index_cache``: a folder where built indexes are kept (faiss files, MEET index folders),
    each with the seconds its build took; a later run loads them and reports those seconds
    (``build_cached``) instead of building again, unless ``args.rebuild``."""

    def __init__(self, side: Side, direction: str, args: Any, model: Any = None, log=print,
                 index_cache: Path | None = None):
        self.side, self.direction, self.args, self.model, self.log = side, direction, args, model, log
        self.n, self.dim = side.dense.shape
        self.index_cache = index_cache
        self._shared: dict[str, tuple[Any, float]] = {}

    def shared(self, name: str, build: Callable[[], Any]) -> tuple[Any, float]:
        if name not in self._shared:
            t0 = time.perf_counter()
            value = build()
            self._shared[name] = (value, time.perf_counter() - t0)
        return self._shared[name]

    def cached(self, key: str, build: Callable[[], tuple[Any, float]]) -> tuple[Any, float, bool]:
        """``(faiss index, build seconds, loaded from the cache)``; ``build() -> (index, seconds)``."""
        import faiss

        if self.index_cache is None:
            return (*build(), False)
        path = self.index_cache / f"{self.direction}-{_slug(key)}.faiss"
        seconds_path = path.with_suffix(".json")
        binary = key.startswith("IndexBinary")
        if path.is_file() and seconds_path.is_file() and not self.args.rebuild:
            index = faiss.read_index_binary(str(path)) if binary else faiss.read_index(str(path))
            return index, json.loads(seconds_path.read_text())["build_s"], True
        index, seconds = build()
        self.index_cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        (faiss.write_index_binary if binary else faiss.write_index)(index, str(tmp))
        os.replace(tmp, path)
        atomic_write_json(seconds_path, {"build_s": seconds, "key": key})
        return index, seconds, False

    @property
    def vectors(self) -> np.ndarray:
        """The stored float16 rows as float32 (what the float faiss indexes are given)."""
        return self.shared("fp32 rows", lambda: np.ascontiguousarray(self.side.dense, dtype=np.float32))[0]

    @property
    def nlist(self) -> int:
        return self.args.nlist or max(1, int(round(2 * math.sqrt(self.n))))

    def sample(self, n_rows: int) -> np.ndarray:
        rows = np.random.default_rng(self.args.seed).choice(self.n, size=min(n_rows, self.n), replace=False)
        return self.vectors[np.sort(rows)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9=.,-]+", "_", text).strip("_")


def serialized_bytes(index: Any) -> int:
    import faiss

    if isinstance(index, faiss.IndexBinary):
        return int(faiss.serialize_index_binary(index).nbytes)
    return int(faiss.serialize_index(index).nbytes)


def _faiss_search(index: Any, params_for: Callable[[], Any] | None = None) -> Search:
    def run(q: Queries, k: int) -> np.ndarray:
        params = params_for() if params_for else None
        return index.search(q.dense, k, params=params)[1] if params is not None else index.search(q.dense, k)[1]
    return run


# ----------------------------------------------------------------- float faiss families

def _flat_index(ctx: Context) -> tuple[Any, float]:
    import faiss

    def build():
        index = faiss.IndexFlatIP(ctx.dim)
        index.add(ctx.vectors)
        return index
    return ctx.shared("flat", build)


def flat(ctx: Context) -> list[Method]:
    index, seconds = _flat_index(ctx)
    per_item = serialized_bytes(index) / ctx.n
    return [Method("IndexFlatIP (exact, fp32)", "IndexFlatIP fp32", seconds, per_item, per_item,
                   [Setting("exact", _faiss_search(index))])]


def hnsw(ctx: Context) -> list[Method]:
    """HNSW over float16 vectors (faiss ``IndexHNSWSQ`` with ``QT_fp16``): the memory-fair
    HNSW; ``--methods hnsw32`` adds ``IndexHNSWFlat`` (float32)."""
    import faiss

    return [_hnsw(ctx, "HNSW fp16", lambda: faiss.IndexHNSWSQ(ctx.dim, faiss.ScalarQuantizer.QT_fp16, ctx.args.hnsw_m,
                                                              faiss.METRIC_INNER_PRODUCT), "IndexHNSWSQ fp16")]


def hnsw32(ctx: Context) -> list[Method]:
    import faiss

    return [_hnsw(ctx, "HNSW fp32", lambda: faiss.IndexHNSWFlat(ctx.dim, ctx.args.hnsw_m, faiss.METRIC_INNER_PRODUCT),
                  "IndexHNSWFlat fp32")]


def _hnsw(ctx: Context, family: str, make: Callable[[], Any], kind: str) -> Method:
    import faiss

    name = f"{kind} (M={ctx.args.hnsw_m}, efC={ctx.args.ef_construction})"

    def build():
        t0 = time.perf_counter()
        index = make()
        index.hnsw.efConstruction = ctx.args.ef_construction
        index.train(ctx.vectors)
        index.add(ctx.vectors)
        return index, time.perf_counter() - t0
    index, build_s, cached = ctx.cached(name, build)
    per_item = serialized_bytes(index) / ctx.n
    method = Method(family, name, build_s, per_item, per_item, build_cached=cached)
    for ef in ctx.args.ef_search:
        method.settings.append(Setting(f"efSearch={ef}", _faiss_search(
            index, lambda ef=ef: faiss.SearchParametersHNSW(efSearch=ef))))
    return method


def _coarse(ctx: Context) -> tuple[Any, float]:
    """The IVF families' shared coarse quantizer: spherical k-means (inner product) on a
    sample of 30 x nlist rows, 10 iterations."""
    import faiss

    def build():
        kmeans = faiss.Kmeans(ctx.dim, ctx.nlist, niter=10, seed=ctx.args.seed, spherical=True,
                              min_points_per_centroid=1, max_points_per_centroid=10 ** 9)
        kmeans.train(ctx.sample(30 * ctx.nlist))
        quantizer = faiss.IndexFlatIP(ctx.dim)
        quantizer.add(kmeans.centroids)
        return quantizer
    return ctx.shared("coarse", build)


def _sq_store(ctx: Context, metric: int) -> Any:
    """The float16 rows as a faiss ``IndexScalarQuantizer`` (``QT_fp16``): a refine store."""
    import faiss

    store = faiss.IndexScalarQuantizer(ctx.dim, faiss.ScalarQuantizer.QT_fp16, metric)
    store.train(ctx.vectors[:1])
    store.add(ctx.vectors)
    return store


def _fp16_store(ctx: Context) -> tuple[Any, float]:
    import faiss

    return ctx.shared("fp16 store", lambda: _sq_store(ctx, faiss.METRIC_INNER_PRODUCT))


def _ivf(ctx: Context, name: str, make: Callable[[Any], Any], train_rows: int,
         own_coarse: bool = False) -> tuple[Any, float, bool]:
    """An IVF index over the shared coarse quantizer (``own_coarse``: ``make`` brings its
    own, trained by faiss on the same sample, 30 x nlist rows, 10 iterations), its codec
    trained on ``train_rows`` sampled rows; build seconds include the coarse quantizer's."""
    def build():
        quantizer, coarse_s = (None, 0.0) if own_coarse else _coarse(ctx)
        t0 = time.perf_counter()
        index = make(quantizer)
        index.cp.min_points_per_centroid = 1
        if own_coarse:
            index.cp.niter = 10
            index.cp.max_points_per_centroid = 30
        index.train(ctx.sample(train_rows if not own_coarse else max(train_rows, 30 * ctx.nlist)))
        index.add(ctx.vectors)
        return index, coarse_s + time.perf_counter() - t0
    return ctx.cached(name, build)


def _ivf_params(nprobe: int):
    import faiss

    return faiss.SearchParametersIVF(nprobe=nprobe)


def _refined(ctx: Context, family: str, name: str, base: Any, base_s: float, params_for: Callable[[int], Any],
             store_kind: str = "fp16", cached: bool = False, store: tuple[Any, float] | None = None) -> Method:
    import faiss

    # fp16: IndexRefine over an fp16 IndexScalarQuantizer; fp32: over the IndexFlatIP
    # method's rows (what IndexRefineFlat holds). Both stores are shared by every base.
    store, store_s = store or (_fp16_store(ctx) if store_kind == "fp16" else _flat_index(ctx))
    refine = faiss.IndexRefine(base, store)
    base_bytes = serialized_bytes(base) / ctx.n
    store_bytes = (2 if store_kind == "fp16" else 4) * ctx.dim
    method = Method(family, f"{name} + {store_kind} refine", base_s + store_s, base_bytes, base_bytes + store_bytes,
                    build_cached=cached)
    for nprobe in ctx.args.nprobe:
        for k_factor in ctx.args.k_factor:
            method.settings.append(Setting(f"nprobe={nprobe}, k_factor={k_factor}", _faiss_search(
                refine, lambda nprobe=nprobe, k_factor=k_factor: faiss.IndexRefineSearchParameters(
                    k_factor=k_factor, base_index_params=params_for(nprobe)))))
    return method


def _unrefined(family: str, name: str, index: Any, build_s: float, ctx: Context,
               params_for: Callable[[int], Any], cached: bool = False) -> Method:
    per_item = serialized_bytes(index) / ctx.n
    method = Method(family, name, build_s, per_item, per_item, build_cached=cached)
    for nprobe in ctx.args.nprobe:
        method.settings.append(Setting(f"nprobe={nprobe}",
                                       _faiss_search(index, lambda nprobe=nprobe: params_for(nprobe))))
    return method


def ivfpq(ctx: Context) -> list[Method]:
    import faiss

    m = ctx.args.ivfpq_m
    name = f"IndexIVFPQ (nlist={ctx.nlist}, m={m}x8b)"

    def make(quantizer):
        index = faiss.IndexIVFPQ(quantizer, ctx.dim, ctx.nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.min_points_per_centroid = 1
        return index
    index, build_s, cached = _ivf(ctx, f"{name}, train {ctx.args.train_items}", make, ctx.args.train_items)
    methods = [_unrefined("IVF-PQ", name, index, build_s, ctx, _ivf_params, cached),
               _refined(ctx, "IVF-PQ + fp16 refine", name, index, build_s, _ivf_params, cached=cached)]
    if ctx.args.refine_flat:
        methods.append(_refined(ctx, "IVF-PQ + fp32 refine (IndexRefineFlat)", name, index, build_s, _ivf_params,
                                "fp32", cached))
    return methods


def rabitq(ctx: Context) -> list[Method]:
    """IVF-RaBitQ (1 bit per dimension) refined by float16 rows. Built with the L2 metric:
    in faiss 1.15.1 ``IndexIVFRaBitQ`` with inner product returns worse candidates the more
    lists it visits (measured here: recall 0.70 at nprobe 4, 0.0 at nprobe 64 on the caption
    gallery); the rows are unit vectors, so L2 ranks as the inner product does, up to the
    float16 rows' norms (|1 - |x|^2| < 1e-3), and the refine store is L2 too."""
    import faiss

    if not hasattr(faiss, "IndexIVFRaBitQ"):
        ctx.log(f"faiss {faiss.__version__} has no IndexIVFRaBitQ: RaBitQ skipped")
        return []
    name = f"IndexIVFRaBitQ (L2, nlist={ctx.nlist}, 1 bit, qb={ctx.args.rabitq_qb})"

    def make(_):  # faiss's Python wrapper keeps the new coarse quantizer alive with the index
        return faiss.IndexIVFRaBitQ(faiss.IndexFlatL2(ctx.dim), ctx.dim, ctx.nlist, faiss.METRIC_L2)
    index, build_s, cached = _ivf(ctx, f"IndexIVFRaBitQ (L2, nlist={ctx.nlist}), train {ctx.args.train_items}",
                                  make, ctx.args.train_items, own_coarse=True)
    index.qb = ctx.args.rabitq_qb
    store, store_s = ctx.shared("fp16 store L2", lambda: _sq_store(ctx, faiss.METRIC_L2))
    method = _refined(ctx, "IVF-RaBitQ + fp16 refine", name, index, build_s, _ivf_params, cached=cached,
                      store=(store, store_s))
    return [method]


def ivfsq8(ctx: Context) -> list[Method]:
    import faiss

    name = f"IndexIVFScalarQuantizer (nlist={ctx.nlist}, SQ8)"
    index, build_s, cached = _ivf(ctx, f"{name}, train {ctx.args.train_items}", lambda quantizer: (
        faiss.IndexIVFScalarQuantizer(quantizer, ctx.dim, ctx.nlist, faiss.ScalarQuantizer.QT_8bit,
                                      faiss.METRIC_INNER_PRODUCT)), ctx.args.train_items)
    return [_unrefined("IVF-SQ8", name, index, build_s, ctx, _ivf_params, cached)]


# ------------------------------------------------------------- binary codes + rescoring

def rescore(dense: np.ndarray, queries: Queries, candidates: np.ndarray, k: int) -> np.ndarray:
    """The best ``k`` of ``candidates`` (nq, c) by the float32 query against the stored
    float16 rows, ties by position: MEET's re-rank scoring (:func:`meet.search.rerank.
    dense_scores`), run as MEET runs it, on one torch thread per block of queries, the
    blocks on ``torch.get_num_threads()`` worker threads."""
    n_workers = max(1, min(torch.get_num_threads(), len(queries)))
    if n_workers == 1:
        return _rescore_block(dense, queries, candidates, k)
    bounds = np.linspace(0, len(queries), n_workers + 1).astype(int)
    with ThreadPoolExecutor(n_workers) as pool:
        parts = pool.map(lambda ab: _rescore_block(dense, queries.rows(*ab), candidates[ab[0]:ab[1]], k),
                         zip(bounds[:-1], bounds[1:]))
        return np.concatenate(list(parts))


def _rescore_block(dense: np.ndarray, queries: Queries, candidates: np.ndarray, k: int) -> np.ndarray:
    from meet.search.rerank import dense_scores
    from meet.search.topk import single_threaded, stable_top

    with single_threaded():
        valid = candidates >= 0
        safe = np.where(valid, candidates, 0)
        scores, _ = dense_scores(torch.from_numpy(np.array(queries.dense)), dense, safe)
        scores[torch.from_numpy(~valid)] = -math.inf
        positions = torch.from_numpy(safe)
        best = stable_top(scores, min(k, safe.shape[1]), positions)
        return np.where(torch.gather(torch.from_numpy(valid), 1, best).numpy(), positions.gather(1, best).numpy(), -1)


def binary(ctx: Context) -> list[Method]:
    import faiss

    t0 = time.perf_counter()
    index = faiss.IndexBinaryFlat(ctx.side.codes.shape[1] * 8)
    index.add(np.ascontiguousarray(ctx.side.codes))
    build_s = time.perf_counter() - t0
    per_item = serialized_bytes(index) / ctx.n
    method = Method("binary + fp16 rescore", f"IndexBinaryFlat ({index.d}-bit MEET codes) + fp16 rescore",
                    build_s, per_item, per_item + 2 * ctx.dim)
    for over in ctx.args.oversample:
        method.settings.append(Setting(f"oversample={over}", _binary_search(ctx, index, over)))
    return [method]


def binary_ivf(ctx: Context) -> list[Method]:
    import faiss

    n_bits = ctx.side.codes.shape[1] * 8
    name = f"IndexBinaryIVF (nlist={ctx.nlist})"

    def build():
        t0 = time.perf_counter()
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(n_bits), n_bits, ctx.nlist)
        index.cp.min_points_per_centroid = 1
        rows = np.random.default_rng(ctx.args.seed).choice(ctx.n, size=min(ctx.n, 30 * ctx.nlist), replace=False)
        index.train(np.ascontiguousarray(ctx.side.codes[np.sort(rows)]))
        index.add(np.ascontiguousarray(ctx.side.codes))
        return index, time.perf_counter() - t0
    index, build_s, cached = ctx.cached(name, build)
    per_item = serialized_bytes(index) / ctx.n
    method = Method("BinaryIVF + fp16 rescore", f"{name} + fp16 rescore", build_s, per_item,
                    per_item + 2 * ctx.dim, build_cached=cached)
    for nprobe in ctx.args.binary_nprobe:
        for over in ctx.args.binary_ivf_oversample:
            method.settings.append(Setting(f"nprobe={nprobe}, oversample={over}",
                                           _binary_search(ctx, index, over, nprobe)))
    return [method]


def _binary_search(ctx: Context, index: Any, oversample: int, nprobe: int | None = None) -> Search:
    def run(q: Queries, k: int) -> np.ndarray:
        if nprobe is not None:
            index.nprobe = nprobe
        _, candidates = index.search(q.codes, min(ctx.n, oversample * k))
        return rescore(ctx.side.dense, q, candidates, k)
    return run


def meet(ctx: Context) -> list[Method]:
    """MEET's cascade variants (:mod:`benchmarks.pareto_meet`)."""
    from benchmarks.pareto_meet import meet_variants

    return meet_variants(ctx)


FAMILIES: dict[str, Callable[[Context], list[Method]]] = {
    "flat": flat, "hnsw": hnsw, "hnsw32": hnsw32, "ivfpq": ivfpq, "rabitq": rabitq, "ivfsq8": ivfsq8,
    "binary": binary, "binary_ivf": binary_ivf, "meet": meet,
}
"""``--methods`` name -> family (run in this order)."""
DEFAULT_FAMILIES = ("flat", "hnsw", "ivfpq", "rabitq", "ivfsq8", "binary", "binary_ivf", "meet")
