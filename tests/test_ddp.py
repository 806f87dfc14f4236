"""Data-parallel training through torchrun, gloo backend, 2 CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_FLAGS


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tiny_shapes, tmp_path):
    run = tmp_path / "ddp"
    flags = list(TINY_FLAGS)
    flags[flags.index("--epochs") + 1] = "1"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "meet.train", "--data", str(tiny_shapes), "--out", str(run), "--device", "cpu", *flags]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1  # only rank 0 writes
    pointer = json.loads((run / "checkpoint.json").read_text())
    assert (run / pointer["best"] / "model.safetensors").is_file()
    import meet
    model = meet.load(run, device="cpu")
    assert model.encode_texts(["a red circle"]).dense.shape == (1, 32)
