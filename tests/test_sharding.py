"""Sharded gallery encoding (:mod:`meet.sharding`): shard bounds, and ``meet.build_index``
under torchrun (gloo, 2 CPU processes) giving the index a single process builds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from meet.errors import ConfigError
from meet.inference import Encoded
from meet.sharding import Ranks, concat_encoded, shard_bounds


@pytest.mark.parametrize("n_items,world", [(0, 2), (1, 3), (10, 3), (300, 2), (7, 7), (1001, 4)])
def test_shards_tile_the_items_in_order(n_items, world):
    bounds = [shard_bounds(n_items, rank, world) for rank in range(world)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n_items
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    with pytest.raises(ConfigError):
        shard_bounds(n_items, world, world)


def test_concat_keeps_order_and_the_slowest_shards_time():
    parts = [Encoded(np.full((n, 4), i, np.float32), np.zeros((n, 8), np.float32), np.zeros((n, 1), np.uint8),
                     np.zeros((n, 2), np.uint8), seconds=s) for i, (n, s) in enumerate([(3, 1.0), (0, 0.1), (2, 2.5)])]
    merged = concat_encoded(parts)
    assert merged.dense[:, 0].tolist() == [0, 0, 0, 2, 2] and merged.seconds == 2.5
    assert Ranks().main and Ranks(rank=1, world=2).device("cpu") == "cpu"


@pytest.mark.slow
def test_torchrun_sharded_build_equals_the_single_process_build(tiny_run, tiny_shapes, tmp_path):
    from meet.build_index import main
    from meet.search import load_pair

    single = tmp_path / "single"
    assert main(["--checkpoint", str(tiny_run), "--data", str(tiny_shapes), "--out", str(single),
                 "--device", "cpu", "--reciprocal-k", "5"]) == 0
    sharded = tmp_path / "sharded"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "meet.build_index", "--checkpoint", str(tiny_run), "--data", str(tiny_shapes),
           "--out", str(sharded), "--device", "cpu", "--reciprocal-k", "5", "--batch-size", "16"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "encoded in 2 shards" in done.stdout
    for one, two in zip(load_pair(single), load_pair(sharded)):
        assert one.ids == two.ids and two.meta["encode_ranks"] == 2
        assert np.array_equal(one.codes, two.codes) and np.array_equal(one.pq_codes, two.pq_codes)
        assert np.allclose(one.dense.astype(np.float32), two.dense.astype(np.float32), atol=1e-3)
        assert np.allclose(one.reciprocal.astype(np.float32), two.reciprocal.astype(np.float32), atol=1e-3)
