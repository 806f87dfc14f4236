"""The ablation table: rows from cached results, costs, Markdown, and the files on disk.

A row is one variant (a trained model, or a cascade setting of the full model) in one
retrieval mode. Its numbers are means over the training seeds (``runs`` says how many,
``*_std`` their spread). Definitions, also written into the Markdown:

- ``rsum``: R@1+R@5+R@10 in both directions under the 5-caption protocol (max 600);
- ``t2i_map@r`` / ``i2t_map@r``: mAP@R counting every item Shapes ground truth calls
  relevant (not only the five "own" captions);
- ``*_ms_per_query``: wall time of a batched top-10 search over the test gallery divided
  by the number of queries (one measurement per run, on a shared CPU: noisy);
- ``bytes_per_item``: what one gallery item costs in the representation the mode reads
  (dense: float32 vector; hash: n_bits/8; pq: one byte per codebook; cascade: codes +
  PQ codes + the float16 vector of the index; meet: plus the float16 reciprocal list);
- ``*_bytes_read_per_item``: bytes a query reads, divided by the gallery size: the
  Hamming filter reads every code, the quantization filter the R survivors' PQ codes,
  the re-rank the q survivors' vectors, complementarity the top-z reciprocal lists;
- ``*_relevant_kept``: share of truly relevant (query, item) pairs still in the
  candidate set after both filters, i.e. the ceiling the re-rank can reach.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from meet.cli import atomic_write_text
from meet.config import MEETConfig
from meet.experiments.paired import (component_effects, format_component_effects, format_rerank_effects,
                                     format_signals, rerank_effects)
from meet.experiments.settings import COMPONENTS, RERANK_BASELINE, AblationSettings, bits_model, sweep_point
from meet.search import stage_sizes

METRICS = {"rsum": "rsum", "t2i_map@r": "t2i_map@r", "i2t_map@r": "i2t_map@r", "t2i_p@10": "t2i_p@10",
           "t2i_ms_per_query": "search_ms_per_caption_query",
           "i2t_ms_per_query": "search_ms_per_image_query"}
"""Row key -> key in ``meet.evaluate`` results."""

REFERENCE_MODES = ("dense", "hash", "pq", "cascade", "meet")
"""The same model's rSum in these modes is kept beside each row (``dense_rsum``, ...)."""


def _mean(values: list[float | None]) -> tuple[float | None, float | None]:
    """(mean, std) of the finite values; (None, None) when there are none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return None, None
    return float(np.mean(finite)), float(np.std(finite)) if len(finite) > 1 else 0.0


def bytes_per_item(mode: str, cfg: MEETConfig) -> int:
    """Bytes one gallery item costs in what ``mode`` searches (see the module docstring)."""
    m, code_bytes = cfg.model, cfg.model.n_bits // 8
    pq_bytes = m.n_codebooks * (1 if m.codebook_size <= 256 else 2)
    sizes = {"dense": 4 * m.embed_dim, "hash": code_bytes, "pq": pq_bytes,
             "cascade": code_bytes + pq_bytes + 2 * m.embed_dim}
    sizes["meet"] = sizes["cascade"] + 2 * cfg.cascade.reciprocal_k
    return sizes[mode]


def bytes_read_per_item(mode: str, cfg: MEETConfig, direction: str, n_gallery: int) -> float:
    """Bytes one query reads over a gallery of ``n_gallery`` items, per item."""
    if mode in ("dense", "hash", "pq"):
        return float(bytes_per_item(mode, cfg))
    n_hamming, n_pq, top_z = stage_sizes(cfg.cascade, direction, n_gallery)
    read = (n_gallery * bytes_per_item("hash", cfg) + n_hamming * bytes_per_item("pq", cfg)
            + n_pq * 2 * cfg.model.embed_dim)
    if mode == "meet":
        read += top_z * 2 * cfg.cascade.reciprocal_k
    return read / max(n_gallery, 1)


def make_row(group: str, name: str, label: str, mode: str, results: list[dict[str, Any]],
             cfg: MEETConfig, n_images: int, n_captions: int, setting: str = "") -> dict[str, Any]:
    """One table row from the per-seed results of one model/setting (``results[i][mode]``)."""
    seeds = [r.get("seed") for r in results]
    row: dict[str, Any] = {"group": group, "name": name, "label": label, "mode": mode,
                           "setting": setting, "runs": len(results), "seeds": seeds}
    for key, source in METRICS.items():
        row[key], row[f"{key}_std"] = _mean([r["modes"][mode].get(source) for r in results])
    row["per_seed"] = {key: [r["modes"][mode].get(key) for r in results] for key in ("rsum", "t2i_map@r", "i2t_map@r")}
    row["per_seed"].update({f"{other}_rsum": [r["modes"].get(other, {}).get("rsum") for r in results]
                            for other in REFERENCE_MODES})
    for other in REFERENCE_MODES:
        row[f"{other}_rsum"], _ = _mean([r["modes"].get(other, {}).get("rsum") for r in results])
    for direction in ("t2i", "i2t"):
        dropped = [r["modes"][mode].get(f"{direction}_relevant_dropped_hamming") for r in results]
        dropped_pq = [r["modes"][mode].get(f"{direction}_relevant_dropped_pq") for r in results]
        kept = [None if a is None or b is None else 1.0 - a - b for a, b in zip(dropped, dropped_pq)]
        row[f"{direction}_relevant_kept"], _ = _mean(kept)
    row["bytes_per_item"] = bytes_per_item(mode, cfg)
    row["t2i_bytes_read_per_item"] = bytes_read_per_item(mode, cfg, "t2i", n_images)
    row["i2t_bytes_read_per_item"] = bytes_read_per_item(mode, cfg, "i2t", n_captions)
    return row


def build_table(settings: AblationSettings, base: MEETConfig, models: dict[str, list[dict[str, Any]]],
                sweeps: dict[tuple[str, float], list[dict[str, Any]]], spread: list[dict[str, Any]],
                n_images: int, n_captions: int,
                rerank: dict[tuple[str, str], list[dict[str, Any]]] | None = None,
                signals: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """All rows: components, n_bits, R sweep, q sweep, and the seed spread of the full
    model (``spread``: its results over the main and the noise seeds); plus the settings,
    the paired per-seed effects of each part (:mod:`meet.experiments.paired`) and those of
    the Stage II weight grid (``rerank``: (model, point) -> per-seed results) and how well
    each re-rank term separates relevant candidates (``signals``: model -> per-seed
    :class:`~meet.analysis.RerankSignal` dicts by direction)."""
    rows = []
    size = dict(n_images=n_images, n_captions=n_captions)
    for name, (label, _) in COMPONENTS.items():
        rows.append(make_row("components", name, label, "meet", models[name], base, **size))
    full = models["full"]
    for mode, label in (("cascade", "without Stage II reweighting (filters + dense re-rank)"),
                        ("dense", "dense only (no filters, no reweighting)"),
                        ("hash", "Hamming ranking only"), ("pq", "PQ (ADC) ranking only")):
        rows.append(make_row("components", "full", label, mode, full, base, **size))
    for bits in settings.bits:
        name = bits_model(bits, base)
        rows.append(make_row("n_bits", name, f"n_bits = {bits}", "meet", models[name],
                             base.override(n_bits=bits), **size))
    c = base.cascade
    for kind, symbol, fixed in (("hamming", "R", f"q = {c.pq_rate_t2i:g} (t2i) / {c.pq_rate_i2t:g} (i2t)"),
                                ("pq", "q", f"R = {c.hamming_rate_t2i:g} (t2i) / {c.hamming_rate_i2t:g} (i2t)")):
        rates = settings.hamming_rates if kind == "hamming" else settings.pq_rates
        for rate in rates:
            point = sweeps[(kind, rate)]
            cfg = base.override(**sweep_point(kind, rate))
            results = [{"seed": s, "modes": p["modes"]} for s, p in zip(settings.seeds, point)]
            for r, model in zip(results, full):  # the model's dense rSum does not move with the rates
                r["modes"] = {**r["modes"], "dense": model["modes"]["dense"]}
            rows.append(make_row(f"{symbol} sweep", "full", f"{symbol} = {rate:g}", "meet", results,
                                 cfg, n_images, n_captions, setting=fixed))
    if len(spread) > 1 and len(spread) > len(settings.seeds):  # else the full rows already hold it
        seeds = ", ".join(str(r["seed"]) for r in spread)
        for mode in REFERENCE_MODES[::-1]:
            rows.append(make_row("seed spread", "full", f"full model, seeds {seeds}", mode, spread, base,
                                 n_images, n_captions, setting=f"mean ± std over {len(spread)} training runs"))
    return {"settings": settings.to_dict(), "runs_per_number": len(settings.seeds),
            "seeds": list(settings.seeds), "test_images": n_images, "test_captions": n_captions,
            "base_config": base.to_dict(), "rows": rows,
            "effects": component_effects(models), "rerank": rerank_effects(rerank or {}, RERANK_BASELINE),
            "signals": signals or {},
            "train_seconds": {name: [r.get("train_seconds") for r in results] for name, results in models.items()}}


# ----------------------------------------------------------------------------- Markdown
def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pair(row: dict[str, Any], key: str, digits: int) -> str:
    return f"{_fmt(row.get(f't2i_{key}'), digits)} / {_fmt(row.get(f'i2t_{key}'), digits)}"


def _with_std(row: dict[str, Any], key: str, digits: int) -> str:
    """``mean ± std`` when the row averages several runs, else the mean."""
    text = _fmt(row[key], digits)
    if row["runs"] > 1 and row.get(f"{key}_std") is not None:
        text += f" ± {row[f'{key}_std']:.{digits}f}"
    return text


def format_markdown(table: dict[str, Any]) -> str:
    """The table as Markdown: one section per group, the definitions above."""
    s = table["settings"]
    runs = table["runs_per_number"]
    recipe = (f"The bundled model's recipe and budget (shapes-demo: {s['n_train']} training images at "
              f"{s['image_size']} px, {s['epochs']} epochs)" if s.get("budget") == "demo" else
              f"Small models (shapes-demo recipe shrunk: {s['n_train']} training images at {s['image_size']} px, "
              f"{s['epochs']} epoch(s){', quick smoke run' if s['quick'] else ''})")
    lines = [
        "# MEET ablation on Shapes",
        "",
        f"{recipe}; test split of "
        f"{table['test_images']} images / {table['test_captions']} captions. Every number is the mean of "
        f"**{runs} run{'s' if runs != 1 else ''}** (training seed{'s' if runs != 1 else ''} "
        f"{', '.join(map(str, table['seeds']))}); rSum ± std when several. Rows in mode `meet` use the "
        "full cascade (Hamming filter, PQ filter, reweighted re-rank).",
        "",
        ("The seed-spread rows retrain the full model with other seeds: their ± is the run-to-run noise "
         "that single-run differences above must exceed to mean anything." if runs == 1 else
         "± is the standard deviation over the training runs; compare variants seed by seed (the notebook "
         "prints the paired differences), since the runs share their seeds."),
        "",
        "rSum: R@1+5+10 both directions (5-caption protocol). mAP@R: by Shapes ground truth. "
        "dense / cascade rSum: the same model in dense mode / with filters and a plain dense re-rank. "
        "kept: share of truly relevant pairs that survive both filters. ms/query: batched top-10 "
        "search time per query (single measurement, shared CPU). bytes/item: stored per gallery item "
        "for the mode; read/item: bytes one query reads divided by the gallery size.",
    ]
    header = ("| variant | mode | rSum | mAP@R t2i | mAP@R i2t | dense rSum | cascade rSum | kept t2i / i2t "
              "| ms/query t2i / i2t | bytes/item | read/item t2i / i2t |")
    group = None
    for row in table["rows"]:
        if row["group"] != group:
            group = row["group"]
            note = f" ({row['setting']})" if row["setting"] else ""
            lines += ["", f"## {group}{note}", "", header, "|---" * 11 + "|"]
        rsum, map_t2i, map_i2t = (_with_std(row, key, digits) for key, digits in
                                  (("rsum", 1), ("t2i_map@r", 3), ("i2t_map@r", 3)))
        kept = _pair(row, "relevant_kept", 3) if row.get("t2i_relevant_kept") is not None else "-"
        lines.append(f"| {row['label']} | {row['mode']} | {rsum} | {map_t2i} | "
                     f"{map_i2t} | {_fmt(row['dense_rsum'])} | {_fmt(row['cascade_rsum'])} | "
                     f"{kept} | {_pair(row, 'ms_per_query', 3)} | {row['bytes_per_item']} | "
                     f"{_pair(row, 'bytes_read_per_item', 1)} |")
    lines += format_component_effects(table.get("effects", []))
    lines += format_rerank_effects(table.get("rerank", []))
    lines += format_signals(table.get("signals", {}))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- files
def write_outputs(out: Path, table: dict[str, Any]) -> None:
    """``ablation.json``, ``ablation.md`` and ``figures/<name>.json|.html`` (plotly)."""
    import json

    from meet.experiments.plots import ablation_figures

    atomic_write_text(out / "ablation.json", json.dumps(table, indent=1, sort_keys=True))
    atomic_write_text(out / "ablation.md", format_markdown(table))
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    for name, fig in ablation_figures(table).items():
        atomic_write_text(figures / f"{name}.json", fig.to_json())
        atomic_write_text(figures / f"{name}.html", fig.to_html(include_plotlyjs="cdn", full_html=True))
