"""Tables and files of ``benchmarks/pareto.py``: the headline (each method's fastest setting
at the recall target), every point, the JSON, the Markdown and the plotly figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from meet.cli import atomic_write_json, atomic_write_text


def machine_line() -> str:
    from benchmarks.search import machine_summary

    return machine_summary()


def _by_direction(points: Sequence[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for p in points:
        out.setdefault(p["direction"], []).append(p)
    return out


def frontier(points: Sequence[dict]) -> set[int]:
    """Indexes (into ``points``) of the recall-vs-batched-time Pareto frontier: no other
    point is at least as fast with a higher recall, or faster with as high a recall."""
    order = sorted(range(len(points)), key=lambda i: (points[i]["batched_ms"], -points[i]["recall_at_10"]))
    best, kept = -1.0, set()
    for i in order:
        if points[i]["recall_at_10"] > best:
            kept.add(i)
            best = points[i]["recall_at_10"]
    return kept


def fastest(points: Sequence[dict], target: float) -> dict[str, dict]:
    """method -> its point with the lowest batched ms among those with recall >= target
    (with ``best_single_ms``: the lowest single ms among them), or, if none reaches it,
    its highest-recall point with ``reached: False``."""
    out: dict[str, dict] = {}
    for method in dict.fromkeys(p["method"] for p in points):
        mine = [p for p in points if p["method"] == method]
        good = [p for p in mine if p["recall_at_10"] >= target]
        if good:
            pick = min(good, key=lambda p: p["batched_ms"])
            out[method] = {**pick, "reached": True, "best_single_ms": min(p["single_ms"] for p in good)}
        else:
            out[method] = {**max(mine, key=lambda p: p["recall_at_10"]), "reached": False}
    return out


def _ratio(base: float | None, value: float) -> str:
    return "-" if not base or not value else f"{base / value:.1f}x"


def _build(point: dict) -> str:
    return f"{point['build_s']:.1f}" + (" (c)" if point.get("build_cached") else "")


def headline(points: Sequence[dict], target: float) -> str:
    lines = []
    for direction, mine in _by_direction(points).items():
        best = fastest(mine, target)
        flat = next((p for p in mine if p["method"].startswith("IndexFlatIP")), None)
        lines += [f"### {direction}: each method's fastest setting at recall@10 >= {target:g} "
                  f"({mine[0]['n_items']:,} items, {mine[0]['n_queries']} queries)", "",
                  "| method | setting | recall@10 | batched ms/query | single ms/query | best single ms "
                  "(any setting >= target) | total B/item | index B/item | speed-up vs FlatIP (batched / single) "
                  "| build s |", "|" + "---|" * 10]
        for method, p in sorted(best.items(), key=lambda kv: (not kv[1]["reached"], kv[1]["batched_ms"])):
            if p["reached"]:
                cells = [method, p["setting"], f"{p['recall_at_10']:.3f}", f"{p['batched_ms']:.3f}",
                         f"{p['single_ms']:.3f}", f"{p['best_single_ms']:.3f}"]
            else:
                cells = [method, f"not reached (best: {p['setting']})", f"{p['recall_at_10']:.3f}",
                         f"({p['batched_ms']:.3f})", f"({p['single_ms']:.3f})", "-"]
            cells += [f"{p['total_bytes_per_item']:,.0f}", f"{p['index_bytes_per_item']:,.1f}",
                      f"{_ratio(flat and flat['batched_ms'], p['batched_ms'])} / "
                      f"{_ratio(flat and flat['single_ms'], p['single_ms'])}", _build(p)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip()


def points_table(points: Sequence[dict]) -> str:
    lines = []
    for direction, mine in _by_direction(points).items():
        on_front = frontier(mine)
        lines += [f"### {direction}: every point (* on the recall / batched-time Pareto frontier)", "",
                  "| method | index | setting | recall@10 | batched ms | single ms | batched CPU ms | single CPU ms "
                  "| index B/item | total B/item | build s |", "|" + "---|" * 11]
        for i, p in enumerate(mine):
            star = " *" if i in on_front else ""
            lines.append(f"| {p['method']} | {p['index']} | {p['setting']}{star} | {p['recall_at_10']:.3f} "
                         f"| {p['batched_ms']:.3f} | {p['single_ms']:.3f} "
                         f"| {p.get('batched_cpu_ms', float('nan')):.3f} | {p.get('single_cpu_ms', float('nan')):.3f} "
                         f"| {p['index_bytes_per_item']:,.1f} "
                         f"| {p['total_bytes_per_item']:,.0f} | {_build(p)} |")
        lines.append("")
    return "\n".join(lines).rstrip()


def markdown(run: dict, text: str) -> str:
    head = [f"# Recall vs latency on real embeddings ({run['date']})", "",
            f"Command: `{run['command']}`", "", run["machine"], "",
            f"Gallery: Shapes, {run['n_images']:,} images and {run['n_captions']:,} captions encoded by "
            f"`{run['checkpoint']}` ({run['dim']}-d dense, float16 stored; fingerprint {run['fingerprint'][:12]}). "
            f"{run['queries']} queries per direction; recall@10 against the exact dense top-{run['k']} "
            f"(tie-aware); batched = the fastest of the recall pass's full calls after the first and "
            f"{run['repeats']} more, {run['batch']} queries each, per query, on {run.get('batch_threads', 'default')} "
            f"threads; "
            f"single = median of {run['single_queries']} one-query calls on {run.get('single_threads', 1)} "
            f"thread(s) (faiss and torch). CPU ms: process CPU time per query of the same calls (all threads; "
            f"less sensitive to other jobs than the wall clock). Build seconds marked (c) were measured when the "
            f"index was built and cached by an earlier run with the same gallery. 1-min load average "
            f"{run['load_average_before']} before, {run['load_average_after']} after (a value above the core count "
            f"means other processes shared the CPUs). Benchmark wall time {run['total_s'] / 60:.1f} min.", ""]
    return "\n".join(head) + "\n" + text + "\n"


def write_outputs(run: dict, points: list[dict], text: str, json_path: Path | None, md_path: Path | None,
                  figure_path: Path | None) -> None:
    if json_path is not None:
        atomic_write_json(json_path, {"run": run, "points": points})
    if md_path is not None:
        atomic_write_text(md_path, markdown(run, text))
    if figure_path is not None:
        from meet.figures import pareto_figure

        fig = pareto_figure(points, target=run["target"],
                            title=f"Recall@10 vs batched latency, {run['n_images']:,}-image Shapes gallery")
        figure_path.parent.mkdir(parents=True, exist_ok=True)
        fig.write_html(str(figure_path), include_plotlyjs="cdn")
        atomic_write_text(figure_path.with_name(figure_path.stem + ".figure.json"), fig.to_json())


def load_points(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text())["points"]
