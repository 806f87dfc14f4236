"""Faults: training killed with SIGKILL and resumed; damaged gallery indexes.

``python -m meet.train`` (the tiny config, two epochs) is killed four times at seeded
random moments: twice while an epoch trains, once inside the checkpoint write (the
temporary folder holds the weights but is not renamed yet) and once between the rename
and the update of ``checkpoint.json``. The checkpoint writer sleeps at those two points
when ``MEET_FAULT_PAUSE_S`` is set (``meet.checkpoint.FAULT_PAUSE_ENV``), so the kills
land inside them on any machine. After each kill ``--resume`` must start from the last
complete checkpoint (losing at most the epoch in progress), and the run that finally
completes must end with the metrics and weights of the uninterrupted ``tiny_run``.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_FLAGS
from meet.checkpoint import FAULT_PAUSE_ENV, POINTER
from meet.errors import CheckpointError, DataError

REPO = Path(__file__).resolve().parents[1]
PAUSE_S = 1.5
"""How long the checkpoint writer sleeps at each hook point in the write-window runs."""
TIMING_KEYS = {"train_seconds", "epoch_seconds"}
N_BATCHES = 8
"""Training batches per epoch of the tiny config (240 pairs, batch 32)."""
_BAR = re.compile(r"epoch (\d+)/\d+:\s+\d+%\|[^|]*\| (\d+)/\d+")
"""tqdm's bar in the log: (epoch, batches done)."""


class Attempt:
    """One ``python -m meet.train`` process with its log, started at once."""

    started: list["Attempt"] = []
    """Every attempt of this test session, so a failing test still ends its processes."""

    def __init__(self, run: Path, data: Path, number: int, resume: bool, pause: bool):
        self.log_path = run.parent / f"attempt-{number}.log"
        # Two intra-op threads, as tiny_run has (conftest): with one thread the float sums
        # differ and the PQ metrics drift by ~2e-4 relative (measured), so no exact match.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               "OMP_NUM_THREADS": "2", FAULT_PAUSE_ENV: str(PAUSE_S) if pause else ""}
        argv = [sys.executable, "-m", "meet.train", "--data", str(data), "--out", str(run), *TINY_FLAGS]
        self.started = time.monotonic()
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(argv + (["--resume"] if resume else []), stdout=log,
                                         stderr=subprocess.STDOUT, env=env)
        Attempt.started.append(self)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def epochs_seen(self) -> list[int]:
        """Epoch numbers (1-based) whose progress bar this attempt printed, in order."""
        seen: list[int] = []
        for epoch, _ in _BAR.findall(self.log()):
            if not seen or seen[-1] != int(epoch):
                seen.append(int(epoch))
        return seen

    def batches_done(self, epoch: int) -> int:
        """Training batches of ``epoch`` (1-based) done, by the progress bar; -1 before it."""
        return max((int(done) for e, done in _BAR.findall(self.log()) if int(e) == epoch), default=-1)

    def wait_for(self, condition, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"training ended before the kill point:\n{self.log()[-2000:]}"
            assert time.monotonic() < deadline, f"kill point not reached:\n{self.log()[-2000:]}"
            time.sleep(0.01)

    def kill(self) -> float:
        """SIGKILL (no cleanup handlers run); returns the moment of the kill."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL
        return time.monotonic()


def _last_epoch(run: Path) -> int:
    """0-based epoch of the last complete checkpoint, -1 if none."""
    pointer = run / POINTER
    if not pointer.is_file():
        return -1
    return int(json.loads(pointer.read_text())["last"].rsplit("-", 1)[1])


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _tensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {**load_file(str(folder / "model.safetensors")), **load_file(str(folder / "codebooks.safetensors"))}


@pytest.fixture
def attempts():
    """Kill whatever attempt a failed assertion left running (only the ones started here)."""
    yield
    for attempt in Attempt.started:
        if attempt.proc.poll() is None:
            attempt.proc.kill()
            attempt.proc.wait(timeout=30)
    Attempt.started.clear()


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run(tiny_shapes, tiny_run, tmp_path,
                                                                         attempts):
    rng = random.Random(6)
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    report = {"kills": []}

    def in_training(epoch: int):
        """After a random number of the epoch's training batches (a moment tied to progress,
        not to the clock, so it falls inside the epoch on a fast machine too)."""
        batches = rng.randrange(N_BATCHES)
        return lambda: attempt.batches_done(epoch) >= batches

    kill_points = [
        # (where, resume, pause in the writer, condition to wait for, epoch in progress)
        ("while training epoch 1", False, False, in_training(1), 1),
        ("inside the checkpoint write of epoch 1 (weights in the temporary folder)", True, True,
         lambda: any(checkpoints.glob(".tmp-epoch-000-*/model.safetensors")), 1),
        ("while training epoch 2", True, False, in_training(2), 2),
        ("after the rename of epoch 2's checkpoint, before checkpoint.json names it", True, True,
         lambda: (checkpoints / "epoch-001" / "model.safetensors").is_file(), 2),
    ]
    for number, (where, resume, pause, condition, epoch) in enumerate(kill_points):
        attempt = Attempt(run, tiny_shapes, number, resume, pause)
        if number:  # the previous kill lost at most the epoch it interrupted
            attempt.wait_for(lambda: attempt.epochs_seen())
            report["kills"][-1]["resumed_at_epoch"] = attempt.epochs_seen()[0]
            assert attempt.epochs_seen()[0] == report["kills"][-1]["complete_epochs"] + 1
        attempt.wait_for(condition)
        if pause:
            time.sleep(rng.uniform(0.0, 0.4 * PAUSE_S))  # a random moment, >= 0.9 s before the window ends
        last_before = _last_epoch(run)
        killed_at = attempt.kill()
        last = _last_epoch(run)
        assert last == last_before
        # Training progress thrown away: the part of the epoch in progress that was done
        # (all of it when the kill hit its checkpoint write) plus any complete epoch lost.
        done = 1.0 if pause else attempt.batches_done(epoch) / N_BATCHES
        epochs_lost = (epoch - 1 - (last + 1)) + done
        report["kills"].append({"where": where, "epoch_in_progress": epoch, "complete_epochs": last + 1,
                                "epochs_of_training_lost": round(epochs_lost, 3),
                                "attempt_seconds_before_kill": round(killed_at - attempt.started, 1)})
        assert epochs_lost <= 1.0, "more than the epoch in progress was lost"
        if "inside the checkpoint write" in where:
            assert list(checkpoints.glob(".tmp-epoch-000-*")) and not (checkpoints / "epoch-000").exists()
        if "after the rename" in where:
            assert last == 0 and (checkpoints / "epoch-001").is_dir()  # complete, but not yet named

    final = Attempt(run, tiny_shapes, len(kill_points), resume=True, pause=False)
    assert final.proc.wait(timeout=240) == 0, final.log()[-3000:]
    report["kills"][-1]["resumed_at_epoch"] = final.epochs_seen()[0]
    assert final.epochs_seen() == [report["kills"][-1]["complete_epochs"] + 1]
    assert "Traceback" not in final.log()

    # Nothing half-written is left: only the best and last checkpoints, no temporary files.
    leftovers = [p.name for p in run.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]
    assert not leftovers, leftovers
    pointer = json.loads((run / POINTER).read_text())
    assert {p.name for p in checkpoints.iterdir()} == {Path(pointer["best"]).name, Path(pointer["last"]).name}

    # The same metrics and weights as the run that was never interrupted.
    resumed, straight = _metrics(run), _metrics(tiny_run)
    assert [r["epoch"] for r in resumed] == [r["epoch"] for r in straight] == [0, 1]
    worst = 0.0
    for a, b in zip(resumed, straight):
        assert set(a) == set(b)
        for key in set(a) - TIMING_KEYS:
            if isinstance(a[key], float) and not (math.isnan(a[key]) and math.isnan(b[key])):
                worst = max(worst, abs(a[key] - b[key]) / max(abs(b[key]), 1e-12))
                assert math.isclose(a[key], b[key], rel_tol=1e-5, abs_tol=1e-6), (a["epoch"], key)
            elif not isinstance(a[key], float):
                assert a[key] == b[key], key
    weights_a = _tensors(run / pointer["last"])
    weights_b = _tensors(tiny_run / json.loads((tiny_run / POINTER).read_text())["last"])
    max_weight_diff = max(float(np.abs(weights_a[k].astype(np.float64) - weights_b[k]).max()) for k in weights_b)
    assert max_weight_diff < 1e-4
    report.update(max_relative_metric_difference=worst, max_abs_weight_difference=max_weight_diff,
                  identical_metrics=worst == 0.0,
                  epoch_seconds_uninterrupted=[round(r["epoch_seconds"], 2) for r in straight])
    if os.environ.get("MEET_FAULT_REPORT"):
        Path(os.environ["MEET_FAULT_REPORT"]).write_text(json.dumps(report, indent=1))


def test_a_truncated_or_foreign_index_manifest_is_detected(tmp_path):
    """test_search_index.py covers changed, cut and missing array files and a foreign checkpoint
    fingerprint; here the manifest itself is cut, swapped for another index's, or points
    its files outside the folder: never silently used."""
    from test_search_index import make_index
    from meet.search import GalleryIndex

    ours = make_index(seed=1).save(tmp_path / "ours")
    theirs = make_index(seed=2, n=50).save(tmp_path / "theirs")
    text = (ours / "index.json").read_text()
    for cut in (0, 1, len(text) // 3, len(text) - 1):
        (ours / "index.json").write_text(text[:cut])
        with pytest.raises(DataError, match="index.json"):
            GalleryIndex.load(ours)
    (ours / "index.json").write_text((theirs / "index.json").read_text())
    with pytest.raises(DataError, match="does not match its checksum|has .* bytes"):
        GalleryIndex.load(ours)
    header = json.loads(text)
    header["arrays"]["dense"] = {**json.loads((theirs / "index.json").read_text())["arrays"]["dense"],
                                 "file": "../theirs/dense.npy"}
    (ours / "index.json").write_text(json.dumps(header))
    with pytest.raises(DataError, match="manifest entry 'dense' is malformed"):
        GalleryIndex.load(ours)
    for broken in ({"arrays": [1]}, {"ids": 5}, {"arrays": {"dense": 5}}):
        (ours / "index.json").write_text(json.dumps({**json.loads(text), **broken}))
        with pytest.raises(DataError, match="malformed"):
            GalleryIndex.load(ours)
    (ours / "index.json").write_text(text)
    shutil.copy(theirs / "dense.npy", ours / "dense.npy")
    with pytest.raises(DataError):
        GalleryIndex.load(ours)
    with pytest.raises(CheckpointError, match="another checkpoint"):
        GalleryIndex.load(theirs, fingerprint="fp-other")
