"""Smoke test of benchmarks/scale_recall.py on the tiny trained run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def _load_script(name: str = "scale_recall"):
    """A script of ``benchmarks/`` as a module (they are run as files, not imported)."""
    path = Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scale_recall_prints_a_row_per_setting(tiny_run, tiny_shapes, tmp_path, capsys):
    from meet.build_index import main as build

    assert build(["--checkpoint", str(tiny_run), "--data", str(tiny_shapes), "--split", "test",
                  "--out", str(tmp_path / "index"), "--reciprocal-k", "0", "--device", "cpu"]) == 0
    script = _load_script()
    assert script.main(["--index", str(tmp_path / "index"), "--checkpoint", str(tiny_run),
                        "--data", str(tiny_shapes), "--queries", "20", "--settings", "10:5,60:60"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| t2i") or line.startswith("| i2t")]
    assert len(rows) == 4
    # keeping the whole gallery (R = q = 60 images) keeps all of the dense top-10
    assert float(rows[1].split("|")[4]) == 1.0


def test_tie_aware_recall_counts_equal_scores():
    script = _load_script()
    found = np.array([[5, 6, -1, 7, 8, 9, 10, 11, 12, 13]])
    found_dense = np.array([[0.9] * 10])
    reference = np.array([[0.9] * 10])
    assert script.recall_at_10(found, found_dense, reference) == 0.9  # the -1 pad does not count


def test_recode_index_equals_a_fresh_build_and_refuses_foreign_vectors(tiny_run, tiny_shapes, tmp_path):
    import importlib.util as util

    import meet
    from meet.build_index import main as build
    from meet.data.loading import load_split
    from meet.hash_refit import main as refit
    from meet.config import CascadeConfig
    from meet.search import GalleryIndex, build_pair, checkpoint_fingerprint, load_pair

    spec = util.spec_from_file_location("recode_index", Path(__file__).parents[1] / "benchmarks" / "recode_index.py")
    recode = util.module_from_spec(spec)
    spec.loader.exec_module(recode)
    assert build(["--checkpoint", str(tiny_run), "--data", str(tiny_shapes), "--out", str(tmp_path / "old"),
                  "--reciprocal-k", "0", "--device", "cpu"]) == 0
    assert refit(["--checkpoint", str(tiny_run), "--data", str(tiny_shapes), "--out", str(tmp_path / "itq"),
                  "--method", "itq", "--device", "cpu"]) == 0
    assert recode.main(["--index", str(tmp_path / "old"), "--checkpoint", str(tmp_path / "itq"),
                        "--data", str(tiny_shapes), "--out", str(tmp_path / "new"), "--pq-space", "dense"]) == 0
    model = meet.load(tmp_path / "itq", device="cpu")
    ds = load_split(tiny_shapes, "test", model.cfg.model)
    fresh, _ = build_pair(model, *model.encode_dataset(ds), ds.image_ids, [str(c) for c in ds.caption_ids],
                          cascade=CascadeConfig(reciprocal_k=0, pq_space="dense"))
    recoded, _ = load_pair(tmp_path / "new", fingerprint=checkpoint_fingerprint(tmp_path / "itq"))
    assert recoded.pq_space == "dense"
    assert np.mean(recoded.codes == fresh.codes) > 0.99  # float16 storage may flip a near-zero bit
    # vectors that are not this checkpoint's: refused
    old = GalleryIndex.load(tmp_path / "old" / "image")
    noisy = np.asarray(old.dense, np.float32) + 0.05
    GalleryIndex("image", old.ids, noisy, old.codes, old.pq_codes, old.quantizer,
                 fingerprint=old.fingerprint).save(tmp_path / "old" / "image")
    assert recode.main(["--index", str(tmp_path / "old"), "--checkpoint", str(tmp_path / "itq"),
                        "--data", str(tiny_shapes), "--out", str(tmp_path / "bad")]) == 2


def test_map_by_relevant_count_splits_the_mean_into_groups(tiny_run, tiny_shapes, capsys):
    """benchmarks/map_by_relevant_count.py: the groups' contributions add up to the gap of the means,
    and a mode against itself gains nothing anywhere."""
    script = _load_script("map_by_relevant_count")
    values, n_relevant = script.per_query_map(str(tiny_run), tiny_shapes, "test", ["dense", "cascade"], "t2i")
    assert values["dense"].shape == n_relevant.shape == (300,)
    rows = script.table(values, n_relevant).splitlines()[2:]
    gap = float(rows[0].split("|")[-2])
    assert abs(sum(float(row.split("|")[-2]) for row in rows[1:]) - gap) < 1e-3
    same = script.table({"a": values["dense"], "b": values["dense"]}, n_relevant)
    assert all(float(row.split("|")[-2]) == 0 for row in same.splitlines()[2:])
    assert script.main(["--checkpoint", str(tiny_run), "--data", str(tiny_shapes), "--direction", "i2t"]) == 0
    assert "i2t mAP@R by number of relevant items" in capsys.readouterr().out


def test_app_gallery_benchmark_times_a_cold_and_a_warm_start(tiny_run, tiny_shapes, tmp_path, capsys):
    script = _load_script("app_gallery")
    args = ["--data", str(tiny_shapes), "--checkpoint", str(tiny_run), "--cache-dir", str(tmp_path / "cache"),
            "--queries", "4"]
    assert script.main(args) == 0
    assert "| cold start (index built) |" in capsys.readouterr().out
    assert script.main(args) == 0
    out = capsys.readouterr().out
    assert "| warm start (index from the cache) |" in out and "| text query, p50 / max (4) |" in out
    assert "| image query, p50 / max (2) |" in out and "| peak RSS (VmHWM) |" in out
