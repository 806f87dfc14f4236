"""Where a search mode wins or loses ground-truth mAP@R: per query, grouped by how many
gallery items are truly relevant to it (Shapes only).

    python benchmarks/map_by_relevant_count.py --checkpoint assets/shapes-demo --data data/shapes \
        [--split test] [--modes dense,cascade,meet] [--direction t2i|i2t]

Why: a mode's mean mAP@R hides whom it serves. MEET's filters keep a fixed share of the
gallery (the paper's fractional rates), so a generic query ("two shapes") whose relevant
items outnumber the survivors must lose some, while a specific one ("a small red star")
keeps all of its few. The table prints each group's mean AP@R per mode and how much the
group adds to the difference between the last mode and the first over all queries.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

BINS = ((1, 10), (10, 50), (50, 150), (150, 360), (360, None))
"""Groups of queries by their number of relevant items (lower bound inclusive)."""


def per_query_map(checkpoint: str, data: Path, split: str, modes: list[str], direction: str) -> tuple[dict, np.ndarray]:
    """({mode: AP@R per query}, relevant items per query) for one direction of one split."""
    import meet
    from meet import metrics
    from meet.data.loading import load_split
    from meet.errors import DataError
    from meet.evaluate import SplitIndexes, score_functions, shapes_relevance

    model = meet.load(checkpoint)
    ds = load_split(data, split, model.cfg.model)
    relevance = shapes_relevance(ds)  # (n_captions, n_images)
    if relevance is None:
        raise DataError(f"{data} has no Shapes facts: ground truth is unknown", fix="use a Shapes data set")
    images, texts = model.encode_dataset(ds)
    indexes = SplitIndexes(model, images, texts, reciprocal="meet" in modes)
    everything = (np.arange(ds.n_images), np.arange(len(ds.captions)))
    if direction == "i2t":
        relevance = relevance.T
    values = {}
    for mode in modes:
        i2t_fn, t2i_fn = score_functions(mode, model, indexes)
        scores = (i2t_fn if direction == "i2t" else t2i_fn)(*everything)
        if scores.shape != relevance.shape:
            scores = scores.T
        values[mode] = metrics.map_at_r(scores, relevance).numpy()
    return values, relevance.sum(1).numpy()


def table(values: dict[str, np.ndarray], n_relevant: np.ndarray) -> str:
    """Markdown: mean AP@R per group and mode, and each group's share of the last-minus-first
    difference of the overall mean."""
    modes = list(values)
    first, last = values[modes[0]], values[modes[-1]]
    counted = n_relevant > 0
    lines = [f"| relevant items | queries | {' | '.join(modes)} | adds to {modes[-1]} - {modes[0]} |",
             "|---|---|" + "---|" * len(modes) + "---|",
             f"| all | {int(counted.sum())} | " + " | ".join(f"{np.nanmean(v):.4f}" for v in values.values())
             + f" | {np.nanmean(last) - np.nanmean(first):+.4f} |"]
    for low, high in BINS:
        group = (n_relevant >= low) & (n_relevant < (high if high is not None else np.inf))
        if not group.any():
            continue
        label = f"{low}-{high - 1}" if high is not None else f">= {low}"
        share = np.nansum(last[group] - first[group]) / counted.sum()
        lines.append(f"| {label} | {int(group.sum())} | "
                     + " | ".join(f"{np.nanmean(v[group]):.4f}" for v in values.values()) + f" | {share:+.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="assets/shapes-demo")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--modes", default="dense,cascade,meet")
    parser.add_argument("--direction", choices=("t2i", "i2t"), default="t2i")
    args = parser.parse_args(argv)
    values, n_relevant = per_query_map(args.checkpoint, args.data, args.split, args.modes.split(","), args.direction)
    print(f"{args.direction} mAP@R by number of relevant items ({args.checkpoint}, {args.data} {args.split})")
    print(table(values, n_relevant))
    return 0


if __name__ == "__main__":
    sys.exit(main())
