"""Shared fixtures: one tiny Shapes data set and one tiny trained run per test session.

Sizes are chosen so the whole suite stays within minutes on a 2-core CPU; every run is
seeded, so results are the same on every machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(2)

TINY_FLAGS = ["--epochs", "2", "--batch-size", "32", "--embed-dim", "32", "--word-dim", "16",
              "--cnn-width", "8", "--image-size", "32", "--n-bits", "16", "--n-codebooks", "4",
              "--codebook-size", "16", "--kmeans-sample", "240", "--kmeans-iters", "5",
              "--eval-batch-size", "64"]
"""A from-scratch model small enough to train two epochs in seconds."""


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    from meet.data.shapes import generate

    return generate(tmp_path_factory.mktemp("shapes") / "data", n_train=240, n_val=60, n_test=60,
                    seed=0, image_size=32)


@pytest.fixture(scope="session")
def tiny_run(tiny_shapes, tmp_path_factory) -> Path:
    from meet.train import main

    run = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["--data", str(tiny_shapes), "--out", str(run), *TINY_FLAGS]) == 0
    return run
