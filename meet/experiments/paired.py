"""Paired, seed-by-seed effects: what one part of MEET changes, measured as the difference
between two results that share their training seed.

Short training on Shapes varies a lot from seed to seed (one seed in three once scored
rSum 68 where the others reached 170), so a mean over seeds hides whether a part helps:
the difference *within* a seed does not carry that noise. Every effect here is
``with the part - without it`` (positive: the part helps), listed per seed, with its mean
and the number of seeds where it helped.

Two kinds, built from the ablation's cached results:

- :func:`component_effects`: each trained part (L_f, L_q, training-time filtering and
  reweighting: the full model against the model trained without it; the label-free gate:
  the gated model against the full one) and the Stage II re-rank (the full model's
  ``meet`` mode against its ``cascade`` mode, i.e. the same candidates re-ranked by the
  dense score alone);
- :func:`rerank_effects`: each point of the Stage II weight grid against the plain dense
  re-rank (``alpha = beta = 0``) of the same model and seed.
"""

from __future__ import annotations

import math
from typing import Any

EFFECT_METRICS = ("t2i_map@r", "i2t_map@r", "t2i_p@10", "i2t_p@10", "rsum",
                  "t2i_single_object_p@10")
"""Metrics compared (``meet.evaluate`` keys): ground-truth mAP@R and P@10 both ways, the
protocol's rSum, and the P@10 of the 144 single-object queries."""

TRAINED_PARTS: dict[str, tuple[str, str, str]] = {
    "lf": ("L_f (hash loss)", "full", "no_lf"),
    "lq": ("L_q (quantization loss)", "full", "no_lq"),
    "filter": ("negative filtering (training)", "full", "no_filter"),
    "reweight": ("pair reweighting (training)", "full", "no_pair_reweight"),
    "gate": ("label-free gate on filtering + reweighting", "gated", "full"),
}
"""Effect name -> (label, model with the part, model without it)."""


def paired(with_part: list[dict[str, Any]], without: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-metric differences of two lists of per-seed metric dicts, matched by position
    (the callers pass results in seed order). Missing or non-finite values are skipped."""
    out: dict[str, Any] = {}
    for metric in EFFECT_METRICS:
        diffs = []
        for a, b in zip(with_part, without):
            x, y = a.get(metric), b.get(metric)
            ok = x is not None and y is not None and math.isfinite(float(x)) and math.isfinite(float(y))
            diffs.append(float(x) - float(y) if ok else None)
        finite = [d for d in diffs if d is not None]
        out[metric] = {"per_seed": diffs, "mean": sum(finite) / len(finite) if finite else None,
                       "helped": sum(d > 0 for d in finite), "hurt": sum(d < 0 for d in finite),
                       "runs": len(finite)}
    return out


def _modes(results: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    return [r["modes"].get(mode, {}) for r in results]


def component_effects(models: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One entry per part present in ``models`` (model name -> per-seed results, in the
    same seed order): ``{name, label, seeds, effects}``."""
    rows = []
    for name, (label, with_part, without) in TRAINED_PARTS.items():
        if with_part in models and without in models:
            rows.append({"name": name, "label": label, "seeds": [r.get("seed") for r in models[with_part]],
                         "effects": paired(_modes(models[with_part], "meet"), _modes(models[without], "meet"))})
    if "full" in models:
        full = models["full"]
        rows.append({"name": "rerank", "label": "Stage II re-rank (consistency + complementarity, paper weights)",
                     "seeds": [r.get("seed") for r in full],
                     "effects": paired(_modes(full, "meet"), _modes(full, "cascade"))})
    return rows


def rerank_effects(points: dict[tuple[str, str], list[dict[str, Any]]], baseline: str) -> list[dict[str, Any]]:
    """One entry per (model, point) other than ``baseline``: the point's ``meet`` mode
    against the baseline point's, per seed: ``{model, point, changes, effects}``."""
    rows = []
    for (model, point), results in points.items():
        base = points.get((model, baseline))
        if point == baseline or base is None:
            continue
        changes = {k: v for k, v in results[0].get("cascade", {}).items() if k in ("alpha", "beta", "fusion")}
        rows.append({"model": model, "point": point, "changes": changes,
                     "seeds": [r.get("seed") for r in results],
                     "effects": paired(_modes(results, "meet"), _modes(base, "meet"))})
    return rows


def best_rerank(rows: list[dict[str, Any]], model: str, metric: str = "t2i_map@r") -> dict[str, Any] | None:
    """The point of ``model`` with the largest mean effect on ``metric`` (None without rows)."""
    candidates = [r for r in rows if r["model"] == model and r["effects"][metric]["mean"] is not None]
    return max(candidates, key=lambda r: r["effects"][metric]["mean"], default=None)


# ----------------------------------------------------------------------------- Markdown
def _cell(effect: dict[str, Any], digits: int, scale: float = 1.0) -> str:
    if effect["mean"] is None:
        return "-"
    seeds = ", ".join("-" if d is None else f"{scale * d:+.{digits}f}" for d in effect["per_seed"])
    text = f"{scale * effect['mean']:+.{digits}f}"
    return f"{text} ({seeds})" if effect["runs"] > 1 else text


def _columns(effects: dict[str, Any]) -> str:
    maps = " | ".join(_cell(effects[m], 3) for m in ("t2i_map@r", "i2t_map@r"))
    precision = " | ".join(_cell(effects[m], 3) for m in ("t2i_p@10", "i2t_p@10", "t2i_single_object_p@10"))
    rsum = effects["rsum"]
    return f"{maps} | {precision} | {_cell(rsum, 1)} | {rsum['helped']}/{rsum['runs']}"


HEADER = ("| mAP@R t2i | mAP@R i2t | P@10 t2i | P@10 i2t | P@10 single-object | rSum | rSum better on |",
          "|---|---|---|---|---|---|---|")


def format_component_effects(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: one row per part, mean effect (per-seed effects)."""
    if not rows:
        return []
    lines = ["", "## Paired effects of each part (with it - without it, seed by seed)", "",
             "Each cell: mean difference (the difference on each seed). Positive: the part helps. "
             "A part whose per-seed differences change sign has no effect measurable at this budget.", "",
             "| part " + HEADER[0], "|---" + HEADER[1]]
    lines += [f"| {row['label']} | {_columns(row['effects'])} |" for row in rows]
    return lines


def format_rerank_effects(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: the Stage II grid, one table per model."""
    if not rows:
        return []
    lines = ["", "## Stage II re-rank weights (against the plain dense re-rank of the same candidates)", "",
             "`aA-bB`: final score s + A * consistency + B * complementarity; `release`: the release's "
             "re-sort of the top z by complementarity rank. Same model, same filters, same seed: only the "
             "re-rank differs."]
    for model in dict.fromkeys(r["model"] for r in rows):
        lines += ["", f"### model `{model}`", "", "| point " + HEADER[0], "|---" + HEADER[1]]
        lines += [f"| {row['point']} | {_columns(row['effects'])} |" for row in rows if row["model"] == model]
    return lines


SIGNAL_TERMS = ("dense", "consistency", "final", "dense_top_z", "complementarity")


def format_signals(signals: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Markdown lines: per model and direction, each re-rank term's AUC for telling truly
    relevant candidates from the others (mean over seeds), and the complementarity ranks."""
    if not signals:
        return []
    lines = ["", "## Why: how well each re-rank term tells relevant candidates apart", "",
             "AUC over each query's re-ranked candidates (P(a truly relevant candidate scores above another)), "
             "mean over queries and seeds. `dense top-z` and `complementarity` are over the top-z candidates "
             "complementarity consults. A term can only help the re-rank if it separates what the dense score "
             "does not; `final` is the fused score at the model's weights. Complementarity rank: where the query "
             "falls in the candidate's own top-k list (k = beyond it); relevant per item: median truly relevant "
             "queries per gallery item (true captions per image for t2i).", "",
             "| model | direction | dense | consistency | final | dense top-z | complementarity "
             "| compl. rank relevant / other | beyond k relevant / other | relevant per item / k |",
             "|---" * 10 + "|"]
    for model, seeds in signals.items():
        for direction in ("t2i", "i2t"):
            runs = [s[direction] for s in seeds if direction in s]
            if not runs:
                continue
            mean = lambda get: _finite_mean([get(r) for r in runs])
            aucs = " | ".join(_fmt(mean(lambda r, t=t: r["auc"].get(t)), 3) for t in SIGNAL_TERMS)
            ranks = f"{_fmt(mean(lambda r: r['rank_relevant']), 1)} / {_fmt(mean(lambda r: r['rank_other']), 1)}"
            beyond = (f"{_fmt(mean(lambda r: r['beyond_k_relevant']), 2)} / "
                      f"{_fmt(mean(lambda r: r['beyond_k_other']), 2)}")
            per_item = f"{_fmt(mean(lambda r: r['relevant_per_item']), 0)} / {runs[0]['reciprocal_k']}"
            lines.append(f"| {model} | {direction} | {aucs} | {ranks} | {beyond} | {per_item} |")
    return lines


def _finite_mean(values: list[Any]) -> float | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite else None


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
