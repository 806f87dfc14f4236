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


@pytest.fixture(scope="session")
def app_cache(tmp_path_factory) -> Path:
    """One cache for the app tests: the default gallery is generated and indexed once."""
    return tmp_path_factory.mktemp("app-cache")


@pytest.fixture(scope="session")
def app_state(app_cache):
    """The app's state on its defaults: the bundled model over the Shapes test split."""
    from app.settings import AppSettings
    from app.state import load_state

    return load_state(AppSettings(cache_dir=str(app_cache)), report=lambda line: None)


@pytest.fixture(scope="session")
def app_server(app_cache):
    """``python app.py`` on a free local port (the real entry point), shared by the API,
    load and browser tests; yields (url, log path). Stopped at the end of the session."""
    from benchmarks.app_server import start_app

    log = app_cache / "server.log"
    process, url, _, _ = start_app(app_cache, log, timeout=180)
    try:
        yield url, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except Exception:  # noqa: BLE001 - a hung server must not hang the suite
            process.kill()
