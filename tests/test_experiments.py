"""meet.experiments: the quick ablation on the tiny Shapes fixture (table, figures, resume),
the ablation notebook on the committed run in assets/ablation, and the paper reproduction
on a fake precomp set written here (plus its no-data message, from the CLI and the notebook)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from meet.errors import DataError
from meet.experiments.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "assets" / "ablation"
SMALL = ["--embed-dim", "32", "--word-dim", "16", "--n-bits", "16", "--n-codebooks", "4",
         "--codebook-size", "8", "--epochs", "1", "--batch-size", "16", "--eval-batch-size", "32",
         "--kmeans-sample", "48"]
"""A precomp model small enough to train one epoch in a second or two."""


def _notebook_text(path: Path) -> str:
    """Execute a notebook in the repository root; every text output, joined."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", out
            parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts += [data.get("text/markdown", ""), data.get("text/plain", "")]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- ablation
def test_quick_ablation_table_figures_and_resume(tiny_shapes: Path, tmp_path: Path, capsys) -> None:
    import plotly.io as pio

    out = tmp_path / "ablation"
    args = ["ablation", "--data", str(tiny_shapes), "--out", str(out), "--quick", "--quiet"]
    assert main(args) == 0
    table = json.loads((out / "ablation.json").read_text())
    rows = table["rows"]
    assert table["runs_per_number"] == 1 and table["test_images"] == 60 and table["test_captions"] == 300
    groups = [r["group"] for r in rows]
    assert groups.count("components") == 10 and groups.count("n_bits") == 2
    assert groups.count("R sweep") == 2 and groups.count("q sweep") == 2 and groups.count("seed spread") == 5
    labels = {r["label"] for r in rows}
    assert {"full MEET", "without L_f", "without L_q", "without negative filtering (training)",
            "without pair reweighting (training)", "dense only (no filters, no reweighting)",
            "without Stage II reweighting (filters + dense re-rank)", "n_bits = 32", "R = 1", "q = 0.5"} <= labels
    for row in rows:
        assert row["runs"] == (2 if row["group"] == "seed spread" else 1) and 0 <= row["rsum"] <= 600
        assert 0 <= row["t2i_map@r"] <= 1 and 0 <= row["i2t_map@r"] <= 1
        assert row["t2i_ms_per_query"] > 0 and row["bytes_per_item"] > 0
    # the rows are the cached evaluations, not recomputed numbers; the spread averages seeds 0 and 1
    full = json.loads((out / "results" / "model-full-s0.json").read_text())
    other = json.loads((out / "results" / "model-full-s1.json").read_text())
    by = {(r["group"], r["name"], r["mode"]): r for r in rows}
    assert by[("components", "full", "dense")]["rsum"] == pytest.approx(full["modes"]["dense"]["rsum"])
    spread = by[("seed spread", "full", "meet")]
    assert spread["rsum"] == pytest.approx((full["modes"]["meet"]["rsum"] + other["modes"]["meet"]["rsum"]) / 2)
    assert spread["rsum_std"] == pytest.approx(abs(full["modes"]["meet"]["rsum"] - other["modes"]["meet"]["rsum"]) / 2)
    assert by[("components", "full", "meet")]["cascade_rsum"] == pytest.approx(full["modes"]["cascade"]["rsum"])
    # costs: 16-bit codes (2 bytes) + 4 PQ bytes + float16 32-d vectors; dense is float32
    assert by[("components", "full", "dense")]["bytes_per_item"] == 4 * 32
    assert by[("components", "full", "cascade")]["bytes_per_item"] == 2 + 4 + 2 * 32
    assert by[("components", "full", "cascade")]["t2i_bytes_read_per_item"] < 4 * 32
    r_one = next(r for r in rows if r["label"] == "R = 1")
    assert r_one["t2i_relevant_kept"] >= next(r for r in rows if r["label"] == "R = 0.3")["t2i_relevant_kept"]
    markdown = (out / "ablation.md").read_text()
    assert "mean of **1 run**" in markdown and f"| full MEET | meet | {by[('components', 'full', 'meet')]['rsum']:.1f} |" in markdown
    # Stage II grid: (0, 0) re-ranks by the dense score alone, exactly the cascade mode
    baseline = json.loads((out / "results" / "rerank-full-a0-b0-s0.json").read_text())
    for key in ("rsum", "t2i_map@r", "i2t_map@r", "t2i_p@10", "i2t_p@10"):
        assert baseline["modes"]["meet"][key] == pytest.approx(full["modes"]["cascade"][key])
    paper = json.loads((out / "results" / "rerank-full-a0.1-b0.1-s0.json").read_text())
    assert paper["modes"]["meet"]["rsum"] == pytest.approx(full["modes"]["meet"]["rsum"])  # the default weights
    points = {(r["model"], r["point"]) for r in table["rerank"]}
    assert points == {(m, p) for m in ("full", "gated") for p in ("a0-b0.1", "a0.1-b0", "a0.1-b0.1", "release")}
    effect = next(r for r in table["rerank"] if (r["model"], r["point"]) == ("full", "a0.1-b0.1"))["effects"]
    assert effect["rsum"]["per_seed"] == pytest.approx([paper["modes"]["meet"]["rsum"] - baseline["modes"]["meet"]["rsum"]])
    parts = {r["name"]: r for r in table["effects"]}
    assert set(parts) == {"lf", "lq", "filter", "reweight", "gate", "rerank"}
    no_lf = json.loads((out / "results" / "model-no_lf-s0.json").read_text())
    assert parts["lf"]["effects"]["t2i_map@r"]["mean"] == pytest.approx(
        full["modes"]["meet"]["t2i_map@r"] - no_lf["modes"]["meet"]["t2i_map@r"])
    assert "## Paired effects of each part" in markdown and "### model `gated`" in markdown
    signal = json.loads((out / "results" / "signal-full-s0.json").read_text())
    assert set(signal) == {"t2i", "i2t"} and signal["t2i"]["n_queries"] == 300
    assert table["signals"]["full"][0] == signal and "## Why: how well each re-rank term" in markdown
    for name in ("components", "n_bits", "rates", "cost"):
        assert pio.read_json(out / "figures" / f"{name}.json").data
        assert (out / "figures" / f"{name}.html").stat().st_size > 1000

    # resume: cached results are kept, a deleted one is measured again (to the same numbers)
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "results").glob("model-*.json")}
    (out / "results" / "sweep-pq-0.5-s0.json").unlink()
    assert main(args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "results").glob("model-*.json")} == stamps
    again = json.loads((out / "ablation.json").read_text())["rows"]
    assert [r["rsum"] for r in again] == pytest.approx([r["rsum"] for r in rows])
    # other settings in the same folder are refused, nothing is trained
    capsys.readouterr()
    assert main([*args, "--epochs", "2"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_ablation_flags_choose_seeds_bits_and_budget() -> None:
    import argparse

    from meet.experiments.ablation import add_arguments, settings_from_args
    from meet.experiments.settings import rerank_points

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    settings = settings_from_args(parser.parse_args(["--data", "d", "--out", "o", "--bits", "64",
                                                     "--noise-seeds", "", "--seeds", "0,1,2"]))
    assert settings.bits == (64,) and settings.noise_seeds == () and settings.seeds == (0, 1, 2)
    points = rerank_points(settings)
    assert len(points) == 26 and points["a0-b0"] == {"alpha": 0.0, "beta": 0.0, "fusion": True}
    assert points["release"] == {"fusion": False}
    demo = settings_from_args(parser.parse_args(["--data", "d", "--out", "o", "--budget", "demo"]))
    assert (demo.n_train, demo.image_size, demo.epochs, demo.bits) == (20000, 64, 36, (64,))


def test_the_ablations_full_model_has_every_training_part_on() -> None:
    """shapes-demo gates filtering and drops reweighting (what the ablation found); the
    ablation's ``full`` row must still be the paper's model, at both budgets."""
    from meet.config import preset
    from meet.experiments.settings import AblationSettings, model_variants

    demo = preset("shapes-demo").loss
    assert demo.filter_max_share < 1.0 and not demo.reweight_pairs
    for budget in ("small", "demo"):
        variants = model_variants(AblationSettings(budget=budget, bits=(64,)))
        full, gated = variants["full"].loss, variants["gated"].loss
        assert full.filter_negatives and full.reweight_pairs and full.filter_max_share == 1.0
        assert full.filter_start_epoch == 1
        assert gated.reweight_pairs and gated.filter_max_share == 0.005
        assert not variants["no_pair_reweight"].loss.reweight_pairs
    small = model_variants(AblationSettings(bits=(64,)))["full"].train
    assert small.lr_schedule == "step" and small.lr_decay_epochs == 3   # as the committed results were run


def test_ablation_data_is_generated_only_into_an_empty_folder(tmp_path: Path) -> None:
    from meet.experiments.ablation import prepare_data
    from meet.experiments.settings import QUICK, AblationSettings

    settings = AblationSettings(**QUICK)
    data = prepare_data(tmp_path / "new", settings, progress=False)
    images = json.loads((data / "dataset.json").read_text())["images"]
    assert [i["split"] for i in images].count("test") == settings.n_test
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a data set")
    with pytest.raises(DataError, match="neither empty nor a Shapes data set"):
        prepare_data(tmp_path / "other", settings, progress=False)


@pytest.mark.skipif(not (ASSET / "ablation.json").is_file(), reason="no committed ablation run")
def test_ablation_notebook_states_the_committed_numbers(monkeypatch) -> None:
    monkeypatch.delenv("MEET_ABLATION_DIR", raising=False)
    text = _notebook_text(ROOT / "notebooks" / "ablation.ipynb")
    table = json.loads((ASSET / "ablation.json").read_text())
    by = {(r["group"], r["name"], r["mode"]): r for r in table["rows"]}
    full, dense = by[("components", "full", "meet")], by[("components", "full", "dense")]
    cascade = by[("components", "full", "cascade")]
    assert f"mean of {table['runs_per_number']} training run(s)" in text
    assert f"Full MEET: rSum {full['rsum']:.1f}, mAP@R t2i {full['t2i_map@r']:.3f}" in text
    assert f"(cascade): rSum {cascade['rsum']:.1f} vs dense {dense['rsum']:.1f}" in text
    for name in ("no_lf", "no_lq", "no_filter", "no_pair_reweight"):
        row = by[("components", name, "meet")]
        assert f"- {row['label']} [meet]: rSum {row['rsum']:.1f} ({row['rsum'] - full['rsum']:+.1f}" in text
        if len(row["seeds"]) > 1:  # the paired, seed-by-seed differences
            diffs = [a - b for a, b in zip(row["per_seed"]["rsum"], full["per_seed"]["rsum"])]
            assert (f"per seed {', '.join(f'{d:+.1f}' for d in diffs)}: "
                    f"{sum(d > 0 for d in diffs)} of {len(diffs)} higher") in text
    if ("seed spread", "full", "meet") in by:
        spread = by[("seed spread", "full", "meet")]
        assert f"rSum {spread['rsum']:.1f} ± {spread['rsum_std']:.1f} in meet mode" in text
    for row in table["rows"]:
        if row["group"] == "n_bits":
            assert f"{row['label']}: meet rSum {row['rsum']:.1f}, Hamming-only rSum {row['hash_rsum']:.1f}" in text
    assert "| full MEET | meet |" in text  # the Markdown table itself


# ----------------------------------------------------------------------------- reproduce
def _write_precomp(folder: Path, split: str, n_images: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    np.save(folder / f"{split}_ims.npy", rng.normal(size=(n_images, 4, 16)).astype(np.float32))
    words = ["red", "blue", "circle", "square", "left", "small"]
    lines = [" ".join(rng.choice(words, size=4)) for _ in range(5 * n_images)]
    (folder / f"{split}_caps.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def fake_f30k(tmp_path: Path) -> Path:
    data = tmp_path / "f30k_precomp"
    data.mkdir()
    for split, n, seed in (("train", 48, 0), ("dev", 20, 1), ("test", 20, 2)):
        _write_precomp(data, split, n, seed)
    return data


def test_reproduce_on_fake_precomp_prints_the_paper_beside_ours(fake_f30k: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["reproduce", "--data", str(fake_f30k), "--dataset", "f30k", "--out", str(out), "--quiet", *SMALL]
    assert main(args) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "f30k-official-results.json").read_text())
    assert record["preset"] == "official" and record["config"]["loss"]["beta1"] == 0.0
    assert set(record["results"]) == {"1k"} and set(record["results"]["1k"]) == {"dense", "cascade", "meet"}
    for metrics in record["results"]["1k"].values():
        assert 0 <= metrics["rsum"] <= 600 and math.isfinite(metrics["i2t_r1"])
    assert record["paper"]["1k"]["rsum"] == 533.4 and record["paper"]["1k"]["i2t_r1"] == 87.8
    dense = record["results"]["1k"]["dense"]
    assert "| paper (Table I, BUTD + BERT) | MEET | 87.8 | 97.7 | 98.7 | 67.8 | 88.4 | 93.0 | 533.4 |" in printed
    assert f"| ours (official) | dense | {dense['i2t_r1']:.1f} |" in printed
    assert (out / "f30k-official-results.md").read_text() in printed
    # a finished run is not trained again
    checkpoint = out / "f30k-official" / "checkpoint.json"
    stamp = checkpoint.stat().st_mtime_ns
    assert main(args) == 0
    assert checkpoint.stat().st_mtime_ns == stamp


def test_reproduce_without_data_says_what_to_download(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "meet.experiments", "reproduce", "--data", str(tmp_path / "none"),
                           "--dataset", "coco", "--out", str(out)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "https://github.com/kuanghuei/SCAN#download-data" in done.stderr
    assert "testall_ims.npy" in done.stderr and "--dataset coco" in done.stderr
    assert not out.exists()


def test_reproduce_notebook_stops_cleanly_without_data(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEET_PRECOMP_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("MEET_REPRODUCE_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("MEET_PRECOMP_DATASET", "f30k")
    text = _notebook_text(ROOT / "notebooks" / "reproduce_paper.ipynb")
    assert "nothing will be trained" in text and "test_ims.npy" in text
    assert "Skipped training and evaluation" in text and "rSum 533.4" in text
    assert not (tmp_path / "out").exists()
