"""What the committed investigation measured about MEET's parts, for the Redundancy tab.

The Filtered-negatives and Reweighting views show one query at a time; whether the part
helps on average is a question for the ablation (``python -m meet.experiments ablation``),
whose committed table (``assets/investigation/small/ablation.json``) these texts quote.
Every number is read from that file, never typed here, so a new run updates the app.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

INVESTIGATION = Path(__file__).resolve().parents[1] / "assets" / "investigation" / "small" / "ablation.json"
"""The committed ablation table (small budget) the texts quote."""
PAPER_POINT = "a0.1-b0.1"
"""The re-rank grid point with the paper's weights (alpha = beta = 0.1)."""


def load(path: Path = INVESTIGATION) -> dict[str, Any] | None:
    """The ablation table, or None when this copy has none (or it is unreadable)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _effect(effects: dict[str, Any], metric: str, digits: int = 3) -> str:
    """``+0.015 (2/3 seeds)``: the paired mean difference and on how many seeds it helped."""
    cell = effects.get(metric) or {}
    if cell.get("mean") is None:
        return "n/a"
    mean = f"{cell['mean']:+.{digits}f}"
    return f"{mean} ({cell['helped']}/{cell['runs']} seeds better)"


def _source(table: dict[str, Any]) -> str:
    seeds = ", ".join(str(s) for s in table.get("seeds", []))
    return (f"Measured offline on Shapes by `python -m meet.experiments ablation` (small models, training "
            f"seed(s) {seeds}; `assets/investigation/small/ablation.md`), with it minus without it, paired "
            "per seed, by Shapes ground truth.")


def filtering_text(table: dict[str, Any] | None) -> str:
    """Markdown for the Filtered-negatives view: what the filters cost and what training-time
    negative filtering did, on average."""
    if table is None:
        return "_No committed investigation in this copy (assets/investigation/small): no measured effect to show._"
    parts = {effect["name"]: effect for effect in table.get("effects", [])}
    lines = [f"**Measured effect.** {_source(table)}"]
    full = next((row for row in table.get("rows", []) if row.get("name") == "full" and row.get("mode") == "meet"),
                None)
    if full is not None and "t2i_relevant_kept" in full:
        lines.append(f"- At the paper's rates the two search-time filters keep {full['t2i_relevant_kept']:.3f} "
                     f"(t2i) / {full['i2t_relevant_kept']:.3f} (i2t) of the truly relevant pairs; rSum with the "
                     f"filters and a plain dense re-rank {full['cascade_rsum']:.1f}, dense search over everything "
                     f"{full['dense_rsum']:.1f}.")
    if "filter" in parts:
        effects = parts["filter"]["effects"]
        lines.append(f"- Training-time negative filtering: mAP@R t2i {_effect(effects, 't2i_map@r')}, i2t "
                     f"{_effect(effects, 'i2t_map@r')}; rSum {_effect(effects, 'rsum', 1)}.")
    if "gate" in parts:
        effects = parts["gate"]["effects"]
        lines.append(f"- Filtering and reweighting behind the label-free gate instead of from a fixed epoch: "
                     f"rSum {_effect(effects, 'rsum', 1)}.")
    return "\n".join(lines)


def reweighting_text(table: dict[str, Any] | None, model: str = "full") -> str:
    """Markdown for the Reweighting view: the re-rank's measured effect at the paper's
    weights and at the best grid point, and how well each term separates relevant items."""
    if table is None:
        return "_No committed investigation in this copy (assets/investigation/small): no measured effect to show._"
    lines = [f"**Measured effect.** {_source(table)}"]
    points = {entry["point"]: entry for entry in table.get("rerank", []) if entry.get("model") == model}
    if PAPER_POINT in points:
        effects = points[PAPER_POINT]["effects"]
        lines.append(f"- The paper's re-rank (consistency and complementarity, alpha = beta = 0.1) against the "
                     f"plain dense re-rank of the same candidates: mAP@R t2i {_effect(effects, 't2i_map@r')}, "
                     f"i2t {_effect(effects, 'i2t_map@r')}; rSum {_effect(effects, 'rsum', 1)}.")
    if points:
        name, best = max(points.items(), key=lambda item: (item[1]["effects"].get("rsum") or {}).get("mean") or -1e9)
        effects = best["effects"]
        what = ("the release's re-sort of the top z by complementarity rank" if name == "release"
                else "aA-bB: A x consistency + B x complementarity")
        lines.append(f"- Best grid point by rSum, `{name}` ({what}): rSum {_effect(effects, 'rsum', 1)}, mAP@R t2i "
                     f"{_effect(effects, 't2i_map@r')}.")
    training = next((effect for effect in table.get("effects", []) if effect["name"] == "reweight"), None)
    if training is not None:
        effects = training["effects"]
        lines.append(f"- Pair reweighting in training (the loss-side counterpart): mAP@R t2i "
                     f"{_effect(effects, 't2i_map@r')}, i2t {_effect(effects, 'i2t_map@r')}; rSum "
                     f"{_effect(effects, 'rsum', 1)}.")
    signals = (table.get("signals") or {}).get(model) or []
    if signals:
        t2i = signals[0].get("t2i", {})
        auc = t2i.get("auc", {})
        if auc:
            lines.append(f"- Why (t2i, seed {table.get('seeds', ['?'])[0]}): how well each term ranks a truly "
                         f"relevant candidate above another (AUC): dense {auc.get('dense', float('nan')):.3f}, "
                         f"consistency {auc.get('consistency', float('nan')):.3f}, complementarity "
                         f"{auc.get('complementarity', float('nan')):.3f} (dense over the same top-z: "
                         f"{auc.get('dense_top_z', float('nan')):.3f}). Each image has "
                         f"{t2i.get('relevant_per_item', 0):.0f} truly relevant captions but stores its top "
                         f"{t2i.get('reciprocal_k', 0)}: {t2i.get('beyond_k_relevant', 0):.0%} of relevant queries "
                         "fall beyond that list, where complementarity cannot tell them apart.")
    return "\n".join(lines)
