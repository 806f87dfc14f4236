"""Reproducing the paper on precomputed features: ``python -m meet.experiments reproduce
--data DIR --dataset f30k|coco --out DIR [--preset official|full]``.

Trains with ``meet.train`` (the ``official`` preset: the released code's settings; ``full``:
the paper's Stage I with L_f, L_q, filtering and reweighting) on the SCAN/HREM precomp
layout, picks the best epoch on the dev split, then evaluates under the paper's
protocols with ``meet.evaluate``: Flickr30K on its 1K test split; COCO on the 5K
``testall`` split, as the mean of five 1K folds and as one 5K gallery. The paper's
numbers (:mod:`meet.experiments.paper`) are printed beside ours.

Any ``meet.train`` config flag after the options is passed to training, e.g. ``--epochs
30`` or ``--text-encoder bert --bert-path PATH`` (the paper's headline uses BERT; the
default text encoder here is the BiGRU). Re-running resumes an unfinished training run and
skips a finished one. Without the data, it prints what to download and where to put it,
and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from meet import cli
from meet.errors import ConfigError
from meet.experiments.paper import DATASETS, PAPER, SOURCE, download_instructions, missing_files

ACCEPTS_EXTRA_FLAGS = True
"""Unknown flags are meet.train config flags, checked by its parser."""

EPILOG = ("Extra flags are meet.train config flags (python -m meet.train --help lists them), e.g. "
          "--epochs 30 --text-encoder bert --bert-path PATH.")

MODES = ("dense", "cascade", "meet")
COLUMNS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def _feature_dim(data: Path, split: str) -> int:
    import numpy as np

    return int(np.load(data / f"{split}_ims.npy", mmap_mode="r", allow_pickle=False).shape[-1])


def _training_state(run: Path) -> str:
    """``done``, ``partial`` (a complete checkpoint to resume from) or ``new``."""
    from meet.checkpoint import read_pointer

    last = read_pointer(run).get("last")
    if not last:
        return "new"
    epochs = json.loads((run / "config.json").read_text())["train"]["epochs"]
    return "done" if int(last.rsplit("-", 1)[1]) + 1 >= epochs else "partial"


def train(data: Path, dataset: str, run: Path, preset: str, extra_flags: list[str], device: str) -> None:
    """Train (or finish training) ``run`` through ``meet.train.main``; skip it when done."""
    from meet.train import main as train_main

    spec = DATASETS[dataset]
    flags = ["--data", str(data), "--out", str(run), "--preset", preset, "--image-encoder", "precomp",
             "--precomp-dim", str(_feature_dim(data, spec.train_split)), "--device", device, *extra_flags]
    state = _training_state(run)
    if state == "done" and "--epochs" not in extra_flags:
        return
    if state == "new" and run.exists():
        shutil.rmtree(run)  # our own run folder, killed before its first checkpoint
    if state == "done":
        state = "partial"  # --epochs given: continue a finished run to the new length
    if train_main(flags + (["--resume"] if state == "partial" else [])) != 0:
        raise ConfigError(f"training into {run} failed", fix="see the error printed above")


def evaluate_run(run: Path, data: Path, dataset: str, modes: tuple[str, ...], device: str,
                 progress: bool = True) -> dict[str, dict[str, dict[str, float]]]:
    """{protocol label: {mode: metrics}} on the dataset's test split."""
    import meet
    from meet.data.loading import load_split
    from meet.evaluate import evaluate

    spec = DATASETS[dataset]
    model = meet.load(run, device=device)
    ds = load_split(data, spec.test_split, model.cfg.model)
    return {label: evaluate(model, ds, modes, protocol, progress) for label, protocol in spec.protocols}


def reproduce(data: Path, dataset: str, out: Path, preset: str = "official", extra_flags: list[str] = (),
              modes: tuple[str, ...] = MODES, device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Train + evaluate one (dataset, preset); writes and returns the comparison record."""
    from meet.checkpoint import read_config, read_pointer, write_json_atomic

    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}", fix=f"choose one of {sorted(DATASETS)}")
    missing = missing_files(data, dataset)
    if missing:
        raise ConfigError(download_instructions(data, dataset, missing))
    from meet.evaluate import MODES as KNOWN_MODES
    if not modes or set(modes) - set(KNOWN_MODES):
        raise ConfigError(f"unknown evaluation mode(s) in {list(modes)}", fix=f"choose from {', '.join(KNOWN_MODES)}")
    run = out / f"{dataset}-{preset}"
    out.mkdir(parents=True, exist_ok=True)
    train(data, dataset, run, preset, list(extra_flags), device)
    pointer = read_pointer(run)
    cfg = read_config(run / pointer["best"])
    record = {"dataset": dataset, "preset": preset, "run": str(run), "best_epoch": pointer["best_epoch"],
              "text_encoder": cfg.model.text_encoder, "epochs": cfg.train.epochs, "config": cfg.to_dict(),
              "results": evaluate_run(run, data, dataset, tuple(modes), device, progress),
              "paper": {label: _paper_dict(dataset, label) for label, _ in DATASETS[dataset].protocols},
              "paper_source": SOURCE}
    write_json_atomic(out / f"{dataset}-{preset}-results.json", record)
    (out / f"{dataset}-{preset}-results.md").write_text(format_comparison(record))
    return record


def _paper_dict(dataset: str, label: str) -> dict[str, Any] | None:
    paper = PAPER.get((dataset, label))
    if paper is None:
        return None
    values = dict(zip(COLUMNS, (*paper.i2t, *paper.t2i, paper.rsum)))
    return {"setting": paper.setting, "where": paper.where, **values}


def format_comparison(record: dict[str, Any]) -> str:
    """Markdown: per protocol, the paper's row (where METHOD.md has it) above ours."""
    name = DATASETS[record["dataset"]].name
    lines = [f"# {name}: paper vs this implementation ({record['preset']} preset)", "",
             f"Ours: {record['text_encoder']} text encoder, precomputed region features, "
             f"{record['epochs']} epochs, best epoch {record['best_epoch'] + 1} chosen on the dev split. "
             f"Paper: {record['paper_source']}."]
    header = "| source | mode | I2T R@1 | R@5 | R@10 | T2I R@1 | R@5 | R@10 | rSum |"
    for label, by_mode in record["results"].items():
        lines += ["", f"## {name} {label.upper()} test", "", header, "|---" * 9 + "|"]
        paper = record["paper"].get(label)
        if paper is None:
            lines.append("| paper | MEET | not quoted in METHOD.md |" + " |" * 6)
        else:
            cells = " | ".join("-" if paper[c] is None else f"{paper[c]:.1f}" for c in COLUMNS)
            lines.append(f"| paper ({paper['where']}, {paper['setting']}) | MEET | {cells} |")
        for mode, metrics in by_mode.items():
            cells = " | ".join(f"{metrics[c]:.1f}" for c in COLUMNS)
            lines.append(f"| ours ({record['preset']}) | {mode} | {cells} |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True,
                        help="precomp folder (f30k_precomp or coco_precomp of the SCAN data package)")
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="f30k or coco")
    parser.add_argument("--out", type=Path, required=True, help="output folder (runs and results)")
    parser.add_argument("--preset", default="official", choices=("official", "full"),
                        help="official (the released code's settings, default) or full (the paper's Stage I)")
    parser.add_argument("--modes", default=",".join(MODES), help="evaluation modes (meet.evaluate)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    missing = missing_files(args.data, args.dataset)
    if missing:
        print(download_instructions(args.data, args.dataset, missing), file=sys.stderr)
        return 2
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())

    def body() -> None:
        record = reproduce(args.data, args.dataset, args.out, args.preset, extra, modes, args.device,
                           not args.quiet)
        print(format_comparison(record))
        print(f"wrote {args.out / (args.dataset + '-' + args.preset + '-results.json')}")
    return cli.run(body)


def main(argv: list[str] | None = None) -> int:
    from meet.experiments.__main__ import main as experiments_main

    return experiments_main(["reproduce", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
