"""Recall vs latency on real model embeddings: MEET's cascade against the faiss indexes
and the vector-database recipes, every method swept over its knobs.

    python benchmarks/pareto.py --size 100000 --json OUT.json --md OUT.md --figure OUT.html

A Shapes gallery (``--size`` images, five captions each) is rendered and encoded by the
model once and cached (:mod:`benchmarks.pareto_data`). For each direction (t2i: caption
queries over the images; i2t: image queries over the captions), ``--queries`` items of the
other side, as the model encodes them, search the gallery; the reference is their exact
dense top-10 (float32 queries against the stored float16 rows, MEET's re-rank scores), and
recall@10 is tie-aware (:func:`benchmarks.scale_recall.recall_at_10`: Shapes repeats
caption texts, and an item whose dense score reaches the 10th best counts). Each method
(:mod:`benchmarks.pareto_methods`) is built over the gallery and each of its settings timed:
batched (``--batch`` queries in one call; the best of ``--repeats`` calls, per query) and
single (the median of ``--single-queries`` one-query calls), after an untimed pass over all
queries that gives the recall. All methods run in one process, one after the other.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.pareto_data import Queries, Side, load_gallery, queries_from  # noqa: E402
from benchmarks.pareto_meet import MeetVariant  # noqa: E402
from benchmarks.pareto_methods import DEFAULT_FAMILIES, FAMILIES, Context, Method, Setting  # noqa: E402
from benchmarks.pareto_report import headline, machine_line, points_table, write_outputs  # noqa: E402
from benchmarks.scale_recall import recall_at_10  # noqa: E402

DIRECTIONS = {"t2i": ("image", "text"), "i2t": ("text", "image")}
"""direction -> (gallery side, query side)."""


def ground_truth(gallery: Side, queries: Queries, k: int = 10) -> np.ndarray:
    """The exact dense top-``k`` scores (nq, k), streamed over gallery blocks by the same
    scorer as MEET's exhaustive dense mode."""
    from meet.search.rerank import dense_block_scorer
    from meet.search.topk import stream_topk

    scorer = dense_block_scorer(torch.from_numpy(queries.dense), gallery.dense)
    return stream_topk(scorer, gallery.n_items, len(queries), k)[1]


def dense_of(gallery: Side, queries: Queries, found: np.ndarray) -> np.ndarray:
    """Dense scores (nq, k) of the returned positions (padding -1 reads row 0; it never counts)."""
    rows = np.asarray(gallery.dense[np.where(found >= 0, found, 0).reshape(-1)], np.float32)
    return np.einsum("qd,qkd->qk", queries.dense, rows.reshape(*found.shape, -1))


@contextmanager
def threads(n: int | None):
    """faiss's OpenMP and torch's intra-op thread counts set to ``n`` (None: unchanged)."""
    import faiss

    before = (faiss.omp_get_max_threads(), torch.get_num_threads())
    if n is not None:
        faiss.omp_set_num_threads(n)
        torch.set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before[0])
        torch.set_num_threads(before[1])


@dataclass
class Timing:
    batched_s: float      # per query: the fastest batched sample (wall clock)
    single_s: float       # median single-query wall clock
    batched_cpu_s: float  # process CPU seconds per query of that fastest batched sample (all threads)
    single_cpu_s: float   # median single-query process CPU seconds


def measure(setting: Setting, queries: Queries, k: int, batch: int, repeats: int, n_single: int,
            single_threads: int | None = 1, batch_threads: int | None = None) -> tuple[np.ndarray, Timing]:
    """(ids of every query, timings).

    The recall pass (every query, ``batch`` at a time) comes first; its full calls after the
    first (a warm-up) and ``repeats`` more calls on the first ``batch`` queries are the
    batched samples, of which the fastest counts (a shared machine only ever adds time).
    Single queries run on ``single_threads`` threads (faiss and torch; default 1: one query
    is one request, and on a busy machine a second thread's wake-up costs more than it
    saves, up to a scheduler slice). Process CPU time is kept beside the wall clock: it
    counts only the CPU this process got, so other jobs on the machine inflate it far less."""
    ids, samples = [], []

    def timed(block: Queries) -> tuple[np.ndarray, float, float]:
        w0, c0 = time.perf_counter(), time.process_time()
        out = setting.search(block, k)
        return out, time.perf_counter() - w0, time.process_time() - c0

    with threads(batch_threads):
        for s in range(0, len(queries), batch):
            block = queries.rows(s, s + batch)
            out, wall, cpu = timed(block)
            ids.append(np.asarray(out, np.int64))
            if s > 0 and len(block) == batch:
                samples.append((wall / len(block), cpu / len(block)))
        first = queries.rows(0, batch)
        for _ in range(repeats):
            _, wall, cpu = timed(first)
            samples.append((wall / len(first), cpu / len(first)))
    singles = []
    with threads(single_threads):
        setting.search(queries.rows(0, 1), k)  # warm the single-query path
        for i in range(min(n_single, len(queries))):
            singles.append(timed(queries.rows(i, i + 1))[1:])
    best = min(samples)
    return np.concatenate(ids), Timing(best[0], statistics.median(w for w, _ in singles), best[1],
                                       statistics.median(c for _, c in singles))


def run_direction(direction: str, sides: dict[str, Side], args, model, log, index_cache: Path | None) -> list[dict]:
    gallery_name, query_name = DIRECTIONS[direction]
    gallery = sides[gallery_name]
    queries = queries_from(sides[query_name], args.queries)
    t0 = time.perf_counter()
    reference = ground_truth(gallery, queries, args.k)
    log(f"[{direction}] {gallery.n_items:,} {gallery_name} items, {len(queries)} {query_name} queries; "
        f"exact dense top-{args.k} in {time.perf_counter() - t0:.1f} s")
    ctx = Context(gallery, direction, args, model, log, index_cache)
    points = []
    for family in args.methods:
        t0 = time.perf_counter()
        try:
            methods: list[Method] = FAMILIES[family](ctx)
        except MemoryError as exc:
            log(f"[{direction}] {family} skipped: {exc!r}")
            continue
        built = time.perf_counter() - t0
        for method in methods:
            for setting in method.settings:
                if points and points[-1]["index"] == method.name and points[-1]["method"] == method.family \
                        and points[-1]["recall_at_10"] >= args.stop_recall:
                    break  # the sweep runs cheap to costly: past this recall, only slower settings remain
                ids, timing = measure(setting, queries, args.k, args.batch, args.repeats, args.single_queries,
                                      args.single_threads or None, args.batch_threads or None)
                recall = recall_at_10(ids, dense_of(gallery, queries, ids), reference)
                points.append({
                    "method": method.family, "index": method.name, "setting": setting.label,
                    "direction": direction, "recall_at_10": round(recall, 4),
                    "batched_ms": round(timing.batched_s * 1e3, 4), "single_ms": round(timing.single_s * 1e3, 4),
                    "batched_cpu_ms": round(timing.batched_cpu_s * 1e3, 4),
                    "single_cpu_ms": round(timing.single_cpu_s * 1e3, 4),
                    "index_bytes_per_item": round(method.index_bytes, 2),
                    "total_bytes_per_item": round(method.total_bytes, 2), "build_s": round(method.build_s, 2),
                    "build_cached": method.build_cached, "n_items": gallery.n_items, "n_queries": len(queries)})
                if args.verbose:
                    p = points[-1]
                    log(f"  {p['method']} | {p['setting']}: recall {p['recall_at_10']:.3f}, "
                        f"{p['batched_ms']:.3f} / {p['single_ms']:.3f} ms")
        log(f"[{direction}] {family}: built and timed in {time.perf_counter() - t0:.0f} s "
            f"(build {built:.0f} s)")
    return points


# ------------------------------------------------------------------------------- CLI

def _ints(text: str) -> list[int]:
    return [int(float(v)) for v in text.split(",") if v.strip()]


def _rates(text: str) -> list[tuple[float, float]]:
    pairs = []
    for item in text.split(","):
        r, q = (float(v) for v in item.split(":"))
        pairs.append((r, q))
    return pairs


def _variant(text: str) -> MeetVariant:
    """``label|pq_space|mode|field=value,field=value`` (values: numbers or strings)."""
    parts = text.split("|")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError("expected 'label|pq_space|mode|field=value,...'")
    label, space, mode, fields = parts
    values = {}
    for item in filter(None, fields.split(",")):
        key, value = item.split("=", 1)
        try:
            values[key] = int(value) if value.isdigit() else float(value)
        except ValueError:
            values[key] = value
    return MeetVariant(label, space, values, mode or "cascade")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--size", type=int, default=1_000_000, help="gallery images (captions: five per image)")
    p.add_argument("--seed", type=int, default=1, help="Shapes seed (and the query sample's)")
    p.add_argument("--checkpoint", type=Path, default=Path("assets/shapes-demo"))
    p.add_argument("--cache", type=Path, default=Path("data/pareto-cache"), help="rendered and encoded galleries")
    p.add_argument("--data", type=Path, default=None,
                   help="an existing Shapes folder whose test split has --size images (else rendered into --cache)")
    p.add_argument("--workers", type=int, default=2, help="rendering processes")
    p.add_argument("--directions", type=lambda s: s.split(","), default=["t2i", "i2t"])
    p.add_argument("--methods", type=lambda s: s.split(","), default=list(DEFAULT_FAMILIES),
                   help=f"families, of {','.join(FAMILIES)}")
    p.add_argument("--queries", type=int, default=1000, help="queries per direction (recall)")
    p.add_argument("--batch", type=int, default=256, help="queries per batched call")
    p.add_argument("--single-queries", type=int, default=50, help="one-query calls (median)")
    p.add_argument("--repeats", type=int, default=2,
                   help="batched calls timed after the recall pass (best of these and the pass's own calls)")
    p.add_argument("--single-threads", type=int, default=1, help="threads for single queries (0: the default)")
    p.add_argument("--batch-threads", type=int, default=0, help="threads for batched calls (0: the default)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--stop-recall", type=float, default=0.995,
                   help="a method's sweep stops after its first setting with this recall (above 1: never)")
    p.add_argument("--target", type=float, default=0.95, help="recall@10 the headline table asks for")
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=40)
    p.add_argument("--ef-search", type=_ints, default=[16, 32, 64, 128, 256, 512, 1024])
    p.add_argument("--nlist", type=int, default=0, help="IVF lists (0: 2 sqrt(n))")
    p.add_argument("--nprobe", type=_ints, default=[4, 8, 16, 32, 64, 128])
    p.add_argument("--k-factor", type=_ints, default=[4, 16, 64], help="refine: base candidates / k")
    p.add_argument("--train-items", type=int, default=20_000, help="rows the IVF codecs are trained on")
    p.add_argument("--ivfpq-m", type=int, default=32, help="IVF-PQ sub-quantizers (8 bits each)")
    p.add_argument("--rabitq-qb", type=int, default=8, help="RaBitQ query bits")
    p.add_argument("--refine-flat", action="store_true", help="add IVF-PQ + IndexRefineFlat (fp32 rows)")
    p.add_argument("--oversample", type=_ints, default=[10, 30, 100, 300, 1000, 3000],
                   help="binary + rescore: Hamming candidates / k rescored")
    p.add_argument("--binary-nprobe", type=_ints, default=[8, 32, 128], help="IndexBinaryIVF lists visited")
    p.add_argument("--binary-ivf-oversample", type=_ints, default=[10, 100, 1000],
                   help="BinaryIVF + rescore: Hamming candidates / k rescored")
    p.add_argument("--meet-rates", type=_rates, default=_rates("1000:100,2000:200,2000:300,5000:500,10000:1000,"
                                                               "20000:2000,50000:5000"),
                   help="cascade R:q settings (counts; <= 1: fractions, 1:1 keeps the whole gallery)")
    p.add_argument("--meet-spaces", type=lambda s: s.split(","), default=["hash", "dense", "residual"],
                   help="MEET variants to run, by quantization space (dense / residual are fitted on the gallery)")
    p.add_argument("--meet-variant", type=_variant, action="append", default=[],
                   help="one more MEET variant, 'label|pq_space|mode|CascadeConfig field=value,...'")
    p.add_argument("--rebuild", action="store_true",
                   help="build every index anew (else built indexes are reused from the cache with their build time)")
    p.add_argument("--no-index-cache", action="store_true", help="neither read nor write built indexes")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--md", type=Path, default=None)
    p.add_argument("--figure", type=Path, default=None, help="plotly HTML (and its figure JSON beside it)")
    p.add_argument("--verbose", action="store_true", help="a line per timed setting")
    args = p.parse_args(argv)
    unknown = set(args.methods) - set(FAMILIES)
    if unknown or set(args.directions) - set(DIRECTIONS):
        p.error(f"unknown --methods {sorted(unknown)} or --directions {args.directions}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    import meet

    sides, meta = load_gallery(args.checkpoint, args.size, args.seed, args.cache, args.data, args.workers,
                               log=log)
    index_cache = None if args.no_index_cache else Path(meta["folder"]) / "indexes"
    model = meet.load(args.checkpoint, device="cpu")
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    points = []
    for direction in args.directions:
        points += run_direction(direction, sides, args, model, log, index_cache)
    total_s = time.perf_counter() - started
    run = {
        "command": "python benchmarks/pareto.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC", "machine": machine_line(),
        "size": args.size, "n_images": meta["n_images"], "n_captions": meta["n_captions"], "dim": meta["dim"],
        "checkpoint": str(args.checkpoint), "fingerprint": meta["fingerprint"], "queries": args.queries,
        "batch": args.batch, "single_queries": args.single_queries, "repeats": args.repeats, "k": args.k,
        "single_threads": args.single_threads or "default", "batch_threads": args.batch_threads or "default",
        "target": args.target, "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "total_s": round(total_s, 1), "gallery_encoded_in_this_run": meta["encoded_now"]}
    text = "\n\n".join([headline(points, args.target), points_table(points)])
    print(text)
    write_outputs(run, points, text, args.json, args.md, args.figure)
    log(f"total time {total_s / 60:.1f} min" + (" (rendering and encoding the gallery included)"
                                               if meta["encoded_now"] else " (the gallery loaded from its cache)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
