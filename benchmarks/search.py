"""Search speed: MEET's cascade against what a user would pick instead.

Prints one markdown table per gallery size with, for every method, the per-query
latency of a batch of queries (batch time / n_queries), the median latency of single
queries, batched queries per second, the bytes each method stores per item, and ratios
measured in the same run: speed-up against exact float search (faiss ``IndexFlatIP``)
and slow-down against Hamming-only search (faiss ``IndexBinaryFlat``). Under each table:
where MEET's batched time goes per stage, and the (untimed) data and build seconds.

Data are synthetic (see :mod:`benchmarks.search_methods`); accuracy is measured
elsewhere on real model embeddings (``python -m meet.evaluate``).

Run ``python benchmarks/search.py --help``; defaults reproduce the issue's tables
(10k, 100k, 1M items, text->image direction).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.search_methods import (CODEBOOK_SIZE, N_BITS, N_CODEBOOKS, RECIPROCAL_K,  # noqa: E402
                                       Method, Workload, binary_method, build_flat,
                                       cascade_methods, flat_method, hnsw_method, hnsw_skipped,
                                       ivfpq_method, make_cascade_arrays, make_workload,
                                       pq_method, stored_vectors)


@dataclass
class Timing:
    batched_s: float
    """Seconds per query when the whole batch is searched in one call."""
    single_s: float
    """Median seconds of one single-query call."""
    stages: dict[str, float] = dataclasses.field(default_factory=dict)
    """Per-stage seconds per query of the batched call (MEET only)."""
    n_batched: int = 0
    """Queries in the timed batch (fewer than --queries when --time-budget capped it)."""
    n_single: int = 0
    """Single-query calls behind the median."""


# --------------------------------------------------------------------------- timing

def time_method(method: Method, n_queries: int, n_single: int, n_warmup: int,
                budget_s: float) -> Timing:
    """Warm up once, then time one batched call and up to ``n_single`` single-query calls.

    A method so slow that the batch would take more than ``budget_s`` seconds (estimated
    from the warm-up call, then from each timed call) is timed on fewer queries, at least
    the warm-up's; the single-query loop also stops (after at least 3 calls) before it
    would pass ``budget_s``. The counts actually used are recorded and printed, so a
    reduced run is never hidden.
    """
    n_warm = max(1, min(n_warmup, n_queries))
    t0 = time.perf_counter()
    method.run(0, n_warm)
    per_query = (time.perf_counter() - t0) / n_warm
    n_batch = 0
    while n_batch < n_queries:
        # A small warm-up batch over-estimates methods that gain from batching (faiss's
        # flat search switches to BLAS only for large enough batches: with faiss 1.15.1,
        # somewhere between 96 and 256 queries): re-estimate from each timed call, and give
        # --time-budget room for the full batch (at 1M: --time-budget 120), or the flat
        # baseline is timed on its slow path.
        fits = per_query * n_queries <= budget_s
        n_next = n_queries if fits else max(n_warm, int(budget_s / per_query))
        if n_next <= n_batch:
            break
        n_batch = n_next
        t0 = time.perf_counter()
        method.run(0, n_batch)
        batched = per_query = (time.perf_counter() - t0) / n_batch
    stages = {name: sec / n_batch for name, sec in method.stage_seconds.items() if sec > 0}
    singles: list[float] = []
    for i in range(min(n_single, n_queries)):
        t0 = time.perf_counter()
        method.run(i, i + 1)
        singles.append(time.perf_counter() - t0)
        if len(singles) >= 3 and sum(singles) + singles[-1] > budget_s:
            break
    return Timing(batched_s=batched, single_s=statistics.median(singles), stages=stages,
                  n_batched=n_batch, n_single=len(singles))


def format_table(n_items: int, n_queries: int, rows: Sequence[tuple[Method, Timing | None]],
                 single_target: int = 0) -> str:
    """Markdown table; ratios against the IndexFlatIP and IndexBinaryFlat rows of this run."""
    timed = {m.name: t for m, t in rows if t is not None}
    flat = next((t for name, t in timed.items() if name.startswith("IndexFlatIP")), None)
    binary = next((t for name, t in timed.items() if name.startswith("IndexBinaryFlat")), None)
    head = ("| method | batched ms/query | single ms/query | QPS (batched) | filter B/item "
            "| total B/item | speed-up vs FlatIP (batched) | speed-up vs FlatIP (single) "
            "| slow-down vs BinaryFlat (batched) |")
    lines = [f"### {n_items:,} items ({n_queries} queries per batch)", "", head,
             "|" + "---|" * 9]
    capped = False
    for method, timing in rows:
        if timing is None:
            lines.append(f"| {method.name} | {method.skipped} |" + " |" * 7)
            continue
        batched, single = f"{timing.batched_s * 1e3:.3f}", f"{timing.single_s * 1e3:.3f}"
        if timing.n_batched < n_queries:
            batched, capped = batched + f" ({timing.n_batched} q)*", True
        if 0 < timing.n_single < single_target:
            single, capped = single + f" ({timing.n_single} q)*", True
        cells = [method.name, batched, single,
                 f"{1.0 / timing.batched_s:,.0f}",
                 "-" if method.filter_bytes is None else f"{method.filter_bytes:g}",
                 f"{method.total_bytes:,.0f}",
                 _ratio(flat.batched_s if flat else None, timing.batched_s),
                 _ratio(flat.single_s if flat else None, timing.single_s),
                 _ratio(timing.batched_s, binary.batched_s if binary else None)]
        lines.append("| " + " | ".join(cells) + " |")
    if capped:
        lines += ["", "\\* timed on fewer queries (count in brackets): the full count would "
                  "have taken longer than --time-budget; the figure is per query of that "
                  "smaller batch (or the median of fewer single calls)."]
    return "\n".join(lines)


def format_stages(rows: Sequence[tuple[Method, Timing | None]]) -> str:
    """Where each MEET row's batched time goes, from ``SearchResult.timings``."""
    lines = []
    for method, timing in rows:
        if timing is None or not timing.stages:
            continue
        parts = ", ".join(f"{name} {sec * 1e3:.3f}" for name, sec in timing.stages.items())
        other = timing.batched_s - sum(timing.stages.values())
        lines.append(f"- {method.name}: {parts}, outside the stages {other * 1e3:.3f} "
                     f"(total {timing.batched_s * 1e3:.3f})")
    if not lines:
        return ""
    return "Per-stage batched time, ms/query:\n\n" + "\n".join(lines)


def _ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or denominator is None or denominator <= 0:
        return "-"
    return f"{numerator / denominator:.2f}x"


def machine_summary() -> str:
    import faiss
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"Machine: {cpu}, {cores} usable cores (os.cpu_count={os.cpu_count()}), "
            f"faiss {faiss.__version__} (omp threads {faiss.omp_get_max_threads()}), "
            f"torch {torch.__version__} (threads {torch.get_num_threads()}), numpy {np.__version__}, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")


# ----------------------------------------------------------------------------- main

METHOD_NAMES = ("flat", "hnsw", "ivfpq", "binary", "pq", "cascade")


def benchmark_size(n_items: int, args, work: Workload, hnsw_rate: list) -> tuple[str, str]:
    """Build every method over one gallery size and time it; returns (table, setup line)."""
    wanted = set(args.methods)
    setup: list[str] = []
    flat, gen_s, add_s = build_flat(n_items, args.dim, args.seed, args.chunk)
    vectors = stored_vectors(flat)
    t0 = time.perf_counter()
    share = vectors if args.dense_dim == args.dim else None
    arrays = make_cascade_arrays(share, n_items, args.dense_dim, args.seed, args.chunk)
    gen_s += time.perf_counter() - t0
    setup.append(f"data generation {gen_s:.1f} s")
    methods: list[Method] = []
    if "flat" in wanted:
        methods.append(flat_method(flat, work, args.k))
        setup.append(f"IndexFlatIP add {add_s:.1f} s")
    if "hnsw" in wanted:
        if n_items <= args.hnsw_max:
            method, per_item = hnsw_method(vectors, work, args, args.k)
            hnsw_rate[:] = [(n_items, per_item)]
        else:
            method = hnsw_skipped(n_items, args, hnsw_rate[0] if hnsw_rate else None,
                                  vectors, work, args.k)
        methods.append(method)
    if "ivfpq" in wanted:
        methods.append(ivfpq_method(vectors, work, args, args.k))
    if "binary" in wanted:
        methods.append(binary_method(arrays.codes, work, args.k))
    if "pq" in wanted:
        methods.append(pq_method(arrays, work, args.k))
    if "cascade" in wanted:
        methods.extend(cascade_methods(arrays, work, args, args.k))
    builds = {}
    for m in methods:
        if m.run is not None and m.build_seconds:
            builds.setdefault(m.name.split(" (")[0].replace("MEET cascade", "MEET gallery")
                              .replace("MEET meet", "MEET gallery"), m.build_seconds)
    setup += [f"{name} build {seconds:.1f} s" for name, seconds in builds.items()]
    load_before = _load_average()
    rows = []
    for method in methods:
        timing = None if method.run is None else time_method(
            method, args.queries, args.single_queries, args.warmup_queries, args.time_budget)
        rows.append((method, timing))
        if args.verbose:
            print(f"  timed {method.name}", file=sys.stderr, flush=True)
    stages = format_stages(rows)
    table = format_table(n_items, args.queries, rows, min(args.single_queries, args.queries))
    table += "\n\n" + stages if stages else ""
    setup.append(f"1-min load average {load_before} before timing, {_load_average()} after "
                 f"(above the core count means other processes shared the CPUs)")
    return table, f"Setup at {n_items:,} items (not timed above): " + ", ".join(setup)


def _load_average() -> str:
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"


def _int_list(text: str) -> list[int]:
    return [int(float(v)) for v in text.split(",") if v.strip()]


def _rate_pair(text: str) -> tuple[float, float]:
    parts = [float(v) for v in text.split(",")]
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError("expected two positive rates 'R,q', e.g. 0.6,0.6 or 2000,200")
    return parts[0], parts[1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=_int_list, default=[10_000, 100_000, 1_000_000],
                   help="gallery sizes, comma-separated")
    p.add_argument("--queries", type=int, default=256, help="queries per timed batch")
    p.add_argument("--single-queries", type=int, default=30, help="single-query calls (median reported)")
    p.add_argument("--warmup-queries", type=int, default=8, help="queries in the untimed warm-up call")
    p.add_argument("--time-budget", type=float, default=60.0,
                   help="seconds one timed batch (and the single-query loop) may take; slower "
                        "methods are timed on fewer queries, marked in the table")
    p.add_argument("--k", type=int, default=10, help="results per query")
    p.add_argument("--dim", type=int, default=1024, help="float baselines' vector size (float32)")
    p.add_argument("--dense-dim", type=int, default=1024, help="cascade re-rank vector size (float16)")
    p.add_argument("--hnsw-max", type=int, default=100_000, help="largest gallery HNSW is built for")
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=40)
    p.add_argument("--ef-search", type=int, default=64)
    p.add_argument("--ivf-m", type=int, default=64, help="IVFPQ sub-quantizers (8 bits each)")
    p.add_argument("--nprobe", type=int, default=16, help="IVFPQ lists visited per query")
    p.add_argument("--frac-rates", type=_rate_pair, default=(0.6, 0.6),
                   help="cascade R,q as fractions (the paper's t2i)")
    p.add_argument("--skip-fractional", action="store_true",
                   help="leave out the paper-fraction cascade rows (minutes per query batch at 1M)")
    p.add_argument("--count-rates", type=_rate_pair, default=(2000.0, 200.0),
                   help="cascade R,q as counts")
    p.add_argument("--cascade-batch-size", type=int, default=256,
                   help="batch_size passed to GalleryIndex.search")
    p.add_argument("--methods", type=lambda s: s.split(","), default=list(METHOD_NAMES),
                   help=f"subset of {','.join(METHOD_NAMES)}")
    p.add_argument("--chunk", type=int, default=65536, help="rows generated per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file")
    p.add_argument("--verbose", action="store_true", help="progress on stderr")
    args = p.parse_args(argv)
    unknown = set(args.methods) - set(METHOD_NAMES)
    if unknown:
        p.error(f"unknown --methods {sorted(unknown)}; choose from {','.join(METHOD_NAMES)}")
    if min(args.sizes, default=0) < CODEBOOK_SIZE:
        p.error(f"--sizes must each be at least {CODEBOOK_SIZE} (PQ training needs that many items)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    header = [f"# Search benchmark ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
              machine_summary(), "",
              f"Synthetic data: random unit vectors ({args.dim}-d float32 for the faiss float indexes; "
              f"the cascade re-ranks the same vectors stored as {args.dense_dim}-d float16), random "
              f"{N_BITS}-bit codes, random {N_CODEBOOKS}-byte PQ codes with random codebooks "
              f"({N_CODEBOOKS}x{CODEBOOK_SIZE}x{N_BITS // N_CODEBOOKS} over the hash features; "
              f"{N_CODEBOOKS}x{CODEBOOK_SIZE}x{args.dense_dim // N_CODEBOOKS} behind a random "
              f"orthogonal {args.dense_dim}x{args.dense_dim} rotation for the dense-PQ rows); "
              f"direction t2i; k={args.k}. "
              f"Batched = one call over {args.queries} queries / {args.queries}; single = median of "
              f"{args.single_queries} one-query calls; one untimed warm-up call first. "
              f"MEET total bytes = 16 filter bytes + {2 * args.dense_dim} dense bytes "
              f"(+ {2 * RECIPROCAL_K} reciprocal-score bytes for reweighting); ids not counted.", ""]
    print("\n".join(header), flush=True)
    work = make_workload(args.queries, args.dim, args.dense_dim, args.seed)
    parts = list(header)
    hnsw_rate: list = []
    for n_items in args.sizes:
        table, setup = benchmark_size(n_items, args, work, hnsw_rate)
        print(table + "\n\n" + setup + "\n", flush=True)
        parts += [table, "", setup, ""]
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
