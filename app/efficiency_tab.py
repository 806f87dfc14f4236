"""The Efficiency tab: for the loaded gallery, what each retrieval mode costs per query
(batched and one at a time), where the cascade spends its time, how many bytes each
representation takes per item, and the speed-up over dense search.

Measured on demand, here and now: the numbers are this server's, under its current load.
Queries are the gallery's own items of the other side (captions for text -> image), so
nothing has to be encoded and only search time is measured.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import plotly.graph_objects as go

from meet.errors import MEETError
from meet.figures import pareto_figure_from_file
from meet.inference import Encoded
from meet.search import MODES

from app.feedback import guarded
from app.state import AppState

SINGLE_QUERIES = 20
"""Queries timed one at a time (each pays the per-call overhead, as an interactive user does)."""
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
"""Where ``benchmarks/pareto.py`` runs are committed (``pareto-*.json``)."""


def query_batch(state: AppState, direction: str, n_queries: int) -> Encoded:
    """The first ``n_queries`` items of the query side, as encodings (no model call): captions
    for ``t2i``, images for ``i2t`` and ``i2i`` (image queries over the images, what a gallery
    without captions can time)."""
    gallery = state.gallery
    index = gallery.texts if direction == "t2i" else gallery.images
    return stored_items(index, slice(0, min(n_queries, index.n_items)))


def stored_items(index: Any, rows: Any) -> Encoded:
    """The ``rows`` (a slice or positions) of a gallery index as query encodings, read from
    what the index stores (the app keeps the hash features): no model call."""
    return Encoded(np.asarray(index.dense[rows], np.float32), np.asarray(index.hash[rows], np.float32),
                   np.asarray(index.codes[rows]), np.asarray(index.pq_codes[rows]))


def measure(state: AppState, direction: str, n_queries: int = 256, repeats: int = 3) -> list[dict[str, Any]]:
    """One row per mode: ms per query batched (best of ``repeats``) and single, the stage
    split of the batched run, and the speed-up over dense."""
    queries = query_batch(state, direction, n_queries)
    if len(queries) == 0:
        raise gr.Error("the query side of this gallery is empty; nothing to time")
    gallery = state.gallery.texts if direction == "i2t" else state.gallery.images
    rows = []
    for mode in MODES:
        best, timings = np.inf, {}
        for _ in range(repeats):
            started = time.perf_counter()
            result = gallery.search(queries, k=10, mode=mode, cascade=state.cascade)
            elapsed = time.perf_counter() - started
            if elapsed < best:
                best, timings = elapsed, result.timings
        single = []
        for row in range(min(SINGLE_QUERIES, len(queries))):
            one = Encoded(queries.dense[row:row + 1], queries.hash[row:row + 1], queries.codes[row:row + 1],
                          queries.pq_codes[row:row + 1])
            started = time.perf_counter()
            gallery.search(one, k=10, mode=mode, cascade=state.cascade)
            single.append(time.perf_counter() - started)
        per_query = 1000 * best / len(queries)
        rows.append({"mode": mode, "batched_ms": per_query, "single_ms": 1000 * float(np.median(single)),
                     "stages_ms": {name: 1000 * value / len(queries) for name, value in timings.items() if value},
                     "counts": dict(result.stage_counts)})
    dense = rows[0]
    for row in rows:
        row["speedup_batched"] = dense["batched_ms"] / row["batched_ms"]
        row["speedup_single"] = dense["single_ms"] / row["single_ms"]
    return rows


def bytes_table(state: AppState) -> list[list[Any]]:
    """[representation, bytes per item, what reads it] for the image gallery."""
    sizes = state.gallery.images.bytes_per_item()
    return [["binary codes", sizes["binary"], "Hamming filter (every item)"],
            ["PQ codes", sizes["pq"], "quantization filter (the R survivors)"],
            ["dense float16", sizes["dense_fp16"], "re-rank (the q survivors)"],
            ["dense float32", sizes["dense_fp32"], "exact search reads this for every item"],
            ["reciprocal top-k", sizes["reciprocal"], "complementarity (the top z)"]]


def timing_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    return [[row["mode"], round(row["batched_ms"], 4), round(row["single_ms"], 3),
             round(row["speedup_batched"], 2), round(row["speedup_single"], 2),
             row["counts"]["after_hamming"], row["counts"]["after_pq"]] for row in rows]


def stage_figure(rows: list[dict[str, Any]], direction: str) -> go.Figure:
    """Stacked bars: ms per query (batched) split by stage, per mode."""
    fig = go.Figure()
    stages = sorted({name for row in rows for name in row["stages_ms"]})
    for stage in stages:
        fig.add_bar(name=stage, x=[row["mode"] for row in rows],
                    y=[row["stages_ms"].get(stage, 0.0) for row in rows])
    fig.update_layout(barmode="stack", title=f"Where the time goes ({direction}, batched, ms per query)",
                      xaxis_title="mode", yaxis_title="ms per query", legend_title="stage")
    return fig


def run(state: AppState, direction: str, n_queries: Any, progress: gr.Progress = gr.Progress()) -> tuple:
    progress(0.1, desc=f"timing {len(MODES)} modes")
    n = int(n_queries) if n_queries and int(n_queries) > 0 else 256
    rows = measure(state, direction, min(n, 4096))
    cascade = next(row for row in rows if row["mode"] == "cascade")
    note = (f"Measured now on this server ({state.device_label}), {direction}, gallery of "
            f"{rows[0]['counts']['gallery']:,} items, {min(n, 4096)} queries batched and "
            f"{SINGLE_QUERIES} one at a time, k=10. The cascade is {cascade['speedup_batched']:.2f}x dense "
            f"batched and {cascade['speedup_single']:.2f}x single. At this gallery size everything is "
            "fast and fixed costs dominate; the speed-up grows with the gallery (see benchmarks/search.py "
            "for 10k-1M items).")
    return timing_rows(rows), stage_figure(rows, direction), note


def committed_pareto(results: Path = RESULTS) -> tuple[go.Figure | None, str]:
    """The newest committed ``benchmarks/pareto.py`` run: (its figure, what it is). Measured
    offline on the machine its file names, not on this server: said in the caption."""
    files = sorted(path for path in results.glob("pareto-*.json")  # named pareto-<size>-<date>
                   if not path.name.endswith(".figure.json"))  # the plotly figure written beside it
    if not files:
        return None, "No `benchmarks/pareto.py` run is committed in this copy (benchmarks/results/pareto-*.json)."
    path = files[-1]
    try:
        run = json.loads(path.read_text(encoding="utf-8")).get("run", {})
        figure = pareto_figure_from_file(path)
    except (OSError, ValueError, MEETError) as exc:
        return None, f"Cannot read `{path.name}`: {exc}"
    machine = run.get("machine", "")
    return figure, (f"Measured offline by `benchmarks/pareto.py` (`benchmarks/results/{path.name}`), not on this "
                    f"server: {run.get('n_images', '?'):,} images, recall@10 against the exact dense top-10, "
                    f"every method in one process{f' ({machine})' if machine else ''}. Each point is one setting "
                    "of a method; the Markdown file beside it has the table.")


def render(state: AppState) -> None:
    with gr.Tab("Efficiency"):
        gr.Markdown("Per-query latency of each mode on the loaded gallery, measured when you press the "
                    "button, the bytes each representation costs per item, and the speed-up over dense search.")
        gr.Dataframe(bytes_table(state), headers=["representation", "bytes per item", "read by"],
                     label="Bytes per item (image gallery)")
        with gr.Row():
            has_captions = state.gallery.texts.n_items > 0
            direction = gr.Radio(["t2i", "i2t", "i2i"], value="t2i" if has_captions else "i2i",
                                 label="direction (i2i: image queries over the images)")
            n_queries = gr.Number(256, precision=0, label="queries", minimum=1, maximum=4096,
                                  elem_id="efficiency-queries")
            button = gr.Button("Measure", variant="primary")
        note = gr.Markdown()
        table = gr.Dataframe(headers=["mode", "batched ms/query", "single ms/query", "speed-up batched",
                                      "speed-up single", "after Hamming", "after quantization"],
                             label="Latency", elem_id="efficiency-table")
        figure = gr.Plot()
        handler = guarded(lambda d, n, progress=gr.Progress(): run(state, d, n, progress), outputs=3)
        button.click(handler, [direction, n_queries], [table, figure, note], api_visibility="private")
        with gr.Accordion("Against the ANN libraries: recall vs latency (committed benchmark)", open=False):
            pareto, caption = committed_pareto()
            gr.Markdown(caption)
            if pareto is not None:
                gr.Plot(pareto)
