"""The ablation: ``python -m meet.experiments ablation --data DIR --out DIR``.

Trains the small Shapes models of :mod:`meet.experiments.settings` (full MEET, then one
part removed at a time, then other n_bits), evaluates each on the test split in every
retrieval mode, sweeps the cascade rates R and q on the full model without retraining,
and writes the table and figures (:mod:`meet.experiments.report`).

It also re-ranks the test split of ``rerank_models`` (the full model and the gated one)
at each point of a grid of Stage II weights (consistency ``alpha`` x complementarity
``beta``, plus the release's re-sort), without retraining, so the re-rank's effect is
measured per seed against the plain dense re-rank of the same candidates.

Resumable at three grains, so a killed run never starts over: a model's training
continues from its last complete epoch (``meet.train``'s checkpoints), a model's test
evaluation is cached in ``OUT/results/model-*.json``, and each sweep point in
``OUT/results/sweep-*.json`` / ``rerank-*.json``. Whatever is cached is skipped.

Output folder::

    settings.json              what was run (a folder with other settings is refused)
    ablation.json, ablation.md the table: one row per variant / sweep point
    figures/*.json, *.html     plotly figures (JSON for notebooks, HTML for a browser)
    results/*.json             per-model and per-sweep-point metrics (the cache)
    runs/<model>-s<seed>/      training runs with checkpoints (``--runs`` moves them)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

from meet.checkpoint import read_pointer, write_json_atomic
from meet.config import MEETConfig
from meet import cli
from meet.errors import ConfigError, DataError
from meet.experiments.settings import (DEMO, QUICK, AblationSettings, check_settings, model_variants,
                                       rerank_points, small_config, sweep_point)

Step = Callable[[str], None]

EPILOG = """Without a Shapes data set in --data (missing or empty folder), the data the ablation
needs is generated there first (meet.data.shapes.ensure_shapes: 4,000 train, 300 val and
1,000 test images at 32 px by default). Re-running with the same --out resumes: cached
results are skipped and unfinished training continues from its last epoch; seeds, n_bits
values and rates may be added later without retraining what exists. The default run trains
8 small models x 3 seeds (each about 1 min on an idle 2-core CPU, many times longer on a
busy one); --seeds 0 trains each once and the full model also with --noise-seeds."""


# ----------------------------------------------------------------------------- data
def prepare_data(data: Path, settings: AblationSettings, progress: bool = True) -> Path:
    """The Shapes data set in ``data``; generated (``ensure_shapes``) when ``data`` is
    missing or an empty folder, with the settings' split sizes and image size."""
    if not data.exists() or (data.is_dir() and not any(data.iterdir())):
        from meet.data.shapes import ensure_shapes

        return ensure_shapes(data, n_train=settings.n_train, n_val=settings.n_val,
                             n_test=settings.n_test, seed=settings.data_seed,
                             image_size=max(settings.image_size, 32), progress=progress)
    if not (data / "dataset.json").is_file():
        raise DataError(f"--data {data} is neither empty nor a Shapes data set (no dataset.json)",
                        fix="point --data at an empty or missing folder to generate one, or at "
                            "the output of python -m meet.data.shapes")
    return data


def load_test_split(data: Path, cfg: MEETConfig, n_test: int) -> Any:
    """The first ``n_test`` test images with their captions, decoded once, with ground truth."""
    from meet.data.loading import load_split

    ds = load_split(data, "test", cfg.model)
    if ds.scenes is None or ds.caption_facts is None:
        raise DataError(f"{data} has no Shapes ground truth (scenes and caption facts)",
                        fix="the ablation measures ground-truth mAP@R: use a Shapes data set")
    if ds.n_images > n_test:
        ds = ds.subset(range(n_test))
    return ds.preload(progress=False)


# ----------------------------------------------------------------------------- training
def _finished(run: Path, epochs: int) -> bool:
    last = read_pointer(run).get("last")
    return bool(last) and int(last.rsplit("-", 1)[1]) + 1 >= epochs


def train_model(cfg: MEETConfig, data: Path, run: Path, n_val: int, progress: bool = True) -> dict[str, Any]:
    """Train (or finish training) one model into ``run``; returns its training record.

    A run with a complete checkpoint resumes from it (same result as uninterrupted, see
    ``meet.train --resume``); one without any is started afresh. Validation uses the
    first ``n_val`` val images, so checkpoint selection stays cheap and never sees test.
    """
    from meet.train import Trainer

    if not _finished(run, cfg.train.epochs):
        resume = "last" in read_pointer(run)
        if not resume:
            shutil.rmtree(run, ignore_errors=True)
            run.mkdir(parents=True)
            (run / "config.json").write_text(cfg.to_json())
        for stale in run.glob("checkpoints/.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        trainer = Trainer(cfg, data, run, resume=resume, progress=progress)
        if trainer.val_ds.n_images > n_val:
            trainer.val_ds = trainer.val_ds.subset(range(n_val))
        trainer.run()
    pointer = read_pointer(run)
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return {"best_epoch": pointer["best_epoch"], "select_metric": pointer["select_metric"],
            "best_val_score": pointer["best_score"],
            "train_seconds": sum(r.get("epoch_seconds", 0.0) for r in history),
            "train_images": cfg.train.max_train_images, "epochs": cfg.train.epochs}


# ----------------------------------------------------------------------------- evaluation
def evaluate_model(run: Path, test_ds: Any, device: str) -> dict[str, dict[str, float]]:
    """Every retrieval mode of the run's best checkpoint on the test split."""
    import meet
    from meet.evaluate import MODES, evaluate

    return evaluate(meet.load(run, device=device), test_ds, MODES)


SWEEP_MODES = ("cascade", "meet")


@dataclasses.dataclass
class SweepPoint:
    """One search-time setting of a trained model: ``changes`` to its config, the modes to
    evaluate, whether to count what the filters drop, and the cache ``path`` of its
    result (``record`` adds fields to it, e.g. the kind and rate)."""

    label: str
    changes: dict[str, Any]
    path: Path
    modes: tuple[str, ...] = SWEEP_MODES
    drops: bool = True
    record: dict[str, Any] = dataclasses.field(default_factory=dict)


def evaluate_sweep(run: Path, test_ds: Any, points: list[SweepPoint], device: str, step: Step) -> None:
    """Evaluate one model at each point, writing each point's metrics to its cache path as
    soon as it is measured. The split is encoded and indexed once; the points change only
    search-time settings (rates, re-rank weights)."""
    import meet
    from meet.evaluate import SplitIndexes, evaluate_mode, filter_drops, shapes_relevance

    model = meet.load(run, device=device)
    images, texts = model.encode_dataset(test_ds)
    relevance = shapes_relevance(test_ds)
    indexes = SplitIndexes(model, images, texts)  # built once; each point changes only search-time settings
    for point in points:
        step(point.label)
        changed = copy.copy(model)
        changed.cfg = model.cfg.override(**point.changes)
        modes = {mode: evaluate_mode(mode, changed, test_ds, images, texts, "full", relevance, indexes)
                 for mode in point.modes}
        if point.drops:
            drops = filter_drops(changed, indexes.pair(), images, texts, relevance)
            for values in modes.values():
                values.update(drops)
        write_json_atomic(point.path, {**point.record, "modes": modes,
                                       "cascade": dataclasses.asdict(changed.cfg.cascade)})


def measure_rerank_signal(run: Path, test_ds: Any, path: Path, device: str) -> None:
    """How well each re-rank term of the run's model separates the truly relevant
    candidates, both directions (:func:`meet.analysis.rerank_signal`), cached at ``path``."""
    import meet
    from meet.analysis import rerank_signal
    from meet.evaluate import SplitIndexes, shapes_relevance

    model = meet.load(run, device=device)
    images, texts = model.encode_dataset(test_ds)
    relevance = shapes_relevance(test_ds).numpy()
    image_index, text_index = SplitIndexes(model, images, texts).pair()
    write_json_atomic(path, {"t2i": rerank_signal(image_index, texts, relevance).to_dict(),
                             "i2t": rerank_signal(text_index, images, relevance.T).to_dict()})


# ----------------------------------------------------------------------------- the run
RESULT_DEFINING = ("n_train", "n_val", "n_test", "image_size", "epochs", "data_seed", "quick",
                   "model_overrides")
"""Settings that change what a cached result means. The others (seeds, noise seeds, the
n_bits values, the rates) only add or drop results, each cached under its own name, so
they may change between runs of the same folder."""


def _check_out(out: Path, settings: AblationSettings) -> None:
    """Refuse an output folder whose cached results were measured under other settings."""
    path = out / "settings.json"
    if path.is_file():
        saved, wanted = json.loads(path.read_text()), settings.to_dict()
        changed = sorted(k for k in RESULT_DEFINING if saved.get(k) != wanted.get(k))
        if changed:
            raise ConfigError(f"{out} holds ablation results of other settings (differ in {changed})",
                              fix="use another --out, or delete that folder to start over")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, settings.to_dict())


def run_ablation(data: Path, out: Path, settings: AblationSettings, runs: Path | None = None,
                 device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Run (or finish) the whole ablation; returns the table written to ``out``."""
    from tqdm.auto import tqdm

    from meet.experiments import report

    check_settings(settings)
    _check_out(out, settings)
    runs = runs or out / "runs"
    (out / "results").mkdir(exist_ok=True)
    data = prepare_data(data, settings, progress)
    variants = {name: cfg.override(device=device) for name, cfg in model_variants(settings).items()}
    test_ds = load_test_split(data, next(iter(variants.values())), settings.n_test)
    sweep = [("hamming", r) for r in settings.hamming_rates] + [("pq", r) for r in settings.pq_rates]
    reranks = rerank_points(settings)
    noise_seeds = [s for s in settings.noise_seeds if s not in settings.seeds]
    total = (len(settings.seeds) * (2 * len(variants) + len(sweep)
                                    + (len(reranks) + 1) * len(settings.rerank_models) * bool(reranks))
             + 2 * len(noise_seeds))
    bar = tqdm(total=total, desc="ablation", unit="step", disable=not progress)

    def step(what: str) -> None:
        bar.set_postfix_str(what)
        bar.update(1)

    def model_result(name: str, seed: int) -> dict[str, Any]:
        """Train and evaluate one (model, seed), or read its cached result."""
        path = out / "results" / f"model-{name}-s{seed}.json"
        if path.is_file():
            bar.update(2)
        else:
            cfg, run = variants[name].override(seed=seed), runs / f"{name}-s{seed}"
            step(f"train {name} (seed {seed})")
            record = train_model(cfg, data, run, settings.n_val, progress)
            step(f"evaluate {name} (seed {seed})")
            record["modes"] = evaluate_model(run, test_ds, device)
            record.update(model=name, seed=seed, config=cfg.to_dict())
            write_json_atomic(path, record)
        return json.loads(path.read_text())

    def pending(run: Path, points: list[SweepPoint]) -> None:
        """Evaluate the points not cached yet (the model is loaded only if one is missing)."""
        bar.update(sum(p.path.is_file() for p in points))
        todo = [p for p in points if not p.path.is_file()]
        if todo:
            evaluate_sweep(run, test_ds, todo, device, step)

    models: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for seed in settings.seeds:
        for name in variants:
            models[name].append(model_result(name, seed))
        rates = [SweepPoint(f"sweep {kind} rate {rate:g}", sweep_point(kind, rate),
                            out / "results" / f"sweep-{kind}-{rate:g}-s{seed}.json", record={"kind": kind, "rate": rate})
                 for kind, rate in sweep]
        pending(runs / f"full-s{seed}", rates)
        for name in settings.rerank_models:
            pending(runs / f"{name}-s{seed}", [
                SweepPoint(f"re-rank {point} ({name})", changes, out / "results" / f"rerank-{name}-{point}-s{seed}.json",
                           modes=("meet",), drops=False, record={"model": name, "point": point, "seed": seed})
                for point, changes in reranks.items()])
            signal = out / "results" / f"signal-{name}-s{seed}.json"
            if reranks and not signal.is_file():
                step(f"re-rank signal ({name})")
                measure_rerank_signal(runs / f"{name}-s{seed}", test_ds, signal, device)
            elif reranks:
                bar.update(1)
    spread = models["full"] + [model_result("full", seed) for seed in noise_seeds]
    bar.close()
    sweeps = {(kind, rate): [json.loads((out / "results" / f"sweep-{kind}-{rate:g}-s{s}.json").read_text())
                             for s in settings.seeds] for kind, rate in sweep}
    rerank = {(name, point): [json.loads((out / "results" / f"rerank-{name}-{point}-s{s}.json").read_text())
                              for s in settings.seeds] for name in settings.rerank_models for point in reranks}
    signals = {name: [json.loads((out / "results" / f"signal-{name}-s{s}.json").read_text()) for s in settings.seeds]
               for name in settings.rerank_models} if reranks else {}
    table = report.build_table(settings, small_config(settings), models, sweeps, spread,
                               test_ds.n_images, test_ds.n_captions, rerank, signals)
    report.write_outputs(out, table)
    return table


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = AblationSettings()
    parser.add_argument("--data", type=Path, required=True,
                        help="a Shapes data set (python -m meet.data.shapes), or an empty or missing "
                             "folder: the Shapes data the ablation needs is then generated there")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: table, figures, cached results (resumes what is there)")
    parser.add_argument("--runs", type=Path, default=None,
                        help="where training runs (checkpoints) go; default OUT/runs")
    parser.add_argument("--quick", action="store_true",
                        help="tiny models, 1 epoch, small sweeps: a smoke run, not a measurement")
    parser.add_argument("--seeds", default=None,
                        help=f"comma-separated training seeds; numbers average over them (default "
                             f"{','.join(map(str, defaults.seeds))})")
    parser.add_argument("--noise-seeds", default=None,
                        help=f"extra seeds of the full model alone, for the seed-spread rows (default "
                             f"{','.join(map(str, defaults.noise_seeds))}; empty for none)")
    parser.add_argument("--n-train", type=int, default=None, help=f"training images (default {defaults.n_train})")
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs per model (default {defaults.epochs})")
    parser.add_argument("--bits", default=None,
                        help=f"comma-separated n_bits values, each a trained model (default "
                             f"{','.join(map(str, defaults.bits))}; the full model's alone skips the sweep)")
    parser.add_argument("--budget", choices=("small", "demo"), default="small",
                        help="small: the shrunk recipe (default); demo: the bundled model's recipe and budget "
                             "(about 26 minutes per model on 2 cores), no sweeps")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def settings_from_args(args: argparse.Namespace) -> AblationSettings:
    changes: dict[str, Any] = dict(QUICK) if args.quick else dict(DEMO) if args.budget == "demo" else {}
    for flag in ("seeds", "noise_seeds", "bits"):
        text = getattr(args, flag)
        if text is not None:
            try:
                changes[flag] = tuple(int(s) for s in text.split(",") if s.strip())
            except ValueError as exc:
                raise ConfigError(f"--{flag.replace('_', '-')} {text!r} is not a list of integers",
                                  fix="e.g. 0,1,2") from exc
    if args.n_train is not None:
        changes["n_train"] = args.n_train
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    return AblationSettings(**changes)


def run(args: argparse.Namespace) -> int:
    from meet.experiments.report import format_markdown

    def body() -> None:
        table = run_ablation(args.data, args.out, settings_from_args(args), args.runs, args.device,
                             not args.quiet)
        print(format_markdown(table))
        print(f"wrote {args.out / 'ablation.md'}, {args.out / 'ablation.json'} and {args.out / 'figures'}")
    return cli.run(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meet.experiments ablation", description=__doc__.split("\n\n")[0],
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
