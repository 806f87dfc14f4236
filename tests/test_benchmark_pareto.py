"""Smoke test of ``benchmarks/pareto.py`` on a tiny rendered gallery encoded by the bundled
model: the JSON has every field, recall is a share, exact search and the cascade keeping
the whole gallery find the exact dense top-10, bytes per item follow the documented rules,
a second run reuses the cached gallery and indexes, and the app's figure loads the file.
Plus the rescoring fast path against a plain numpy reference."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SIZE = 300   # images; 1,500 captions
DIM = 256    # the bundled model's dense width
FIELDS = ("method", "setting", "direction", "recall_at_10", "batched_ms", "single_ms",
          "index_bytes_per_item", "total_bytes_per_item", "build_s")
SMALL = ["--size", str(SIZE), "--queries", "40", "--batch", "16", "--single-queries", "3", "--repeats", "1",
         "--ef-search", "32", "--nprobe", "4", "--k-factor", "4", "--ivfpq-m", "8", "--train-items", "2000",
         "--oversample", "10", "--binary-nprobe", "4", "--binary-ivf-oversample", "10", "--stop-recall", "2",
         "--meet-spaces", "hash", "--meet-rates", "50:20,1:1",
         "--meet-variant", "IVF Hamming|hash|cascade|hamming_scores=asymmetric,hamming_index=ivf,hamming_nprobe=2"]


@pytest.fixture(scope="module")
def bench():
    if str(REPO) not in sys.path:  # benchmarks/ is a folder of scripts, not installed
        sys.path.insert(0, str(REPO))
    return importlib.import_module("benchmarks.pareto")


@pytest.fixture(scope="module")
def run(bench, tmp_path_factory):
    """One tiny run (rendered, encoded, indexed, cached); returns (results, cache, out)."""
    out = tmp_path_factory.mktemp("pareto")
    assert bench.main([*SMALL, "--cache", str(out / "cache"), "--workers", "1", "--json", str(out / "p.json"),
                       "--md", str(out / "p.md"), "--figure", str(out / "p.html")]) == 0
    return json.loads((out / "p.json").read_text()), out / "cache", out


def by(points, method, direction, setting=None):
    found = [p for p in points if p["method"].startswith(method) and p["direction"] == direction
             and (setting is None or p["setting"] == setting)]
    assert found, (method, direction, setting)
    return found


def test_points_have_the_fields_and_recall_is_a_share(run):
    results, _, out = run
    points = results["points"]
    assert {p["direction"] for p in points} == {"t2i", "i2t"}
    for p in points:
        assert all(field in p for field in FIELDS), p
        assert 0.0 <= p["recall_at_10"] <= 1.0
        assert p["batched_ms"] > 0 and p["single_ms"] > 0 and p["build_s"] >= 0
        assert p["total_bytes_per_item"] >= p["index_bytes_per_item"] > 0
    families = {p["method"] for p in points}
    for expected in ("IndexFlatIP", "HNSW fp16", "IVF-PQ", "IVF-PQ + fp16 refine", "IVF-RaBitQ + fp16 refine",
                     "IVF-SQ8", "binary + fp16 rescore", "BinaryIVF + fp16 rescore",
                     "MEET cascade: symmetric Hamming, hash PQ", "MEET cascade: asymmetric Hamming, hash PQ"):
        assert any(f.startswith(expected) for f in families), (expected, families)
    assert results["run"]["n_images"] == SIZE and results["run"]["n_captions"] == 5 * SIZE
    md = (out / "p.md").read_text()
    assert "Command: `python benchmarks/pareto.py --size 300" in md
    assert "fastest setting at recall@10 >= 0.95" in md


def test_exact_search_and_the_whole_gallery_cascade_find_the_dense_top10(run):
    points = run[0]["points"]
    for direction in ("t2i", "i2t"):
        assert by(points, "IndexFlatIP", direction)[0]["recall_at_10"] == 1.0
        for variant in ("MEET cascade: symmetric", "MEET cascade: asymmetric"):
            # R = q = the whole gallery: the cascade is the exact dense re-rank of every item
            assert by(points, variant, direction, "R=100%, q=100%")[0]["recall_at_10"] == 1.0


def test_bytes_per_item_follow_the_documented_rules(run):
    points = run[0]["points"]
    for direction, n in (("t2i", SIZE), ("i2t", 5 * SIZE)):
        flat = by(points, "IndexFlatIP", direction)[0]
        assert flat["index_bytes_per_item"] == flat["total_bytes_per_item"] == pytest.approx(4 * DIM, abs=1)
        # MEET: 8 B sign codes + 8 B PQ codes + the model's hash-space codebooks (8 x 256 x 8
        # float32) shared by the gallery; the re-rank reads the float16 rows
        meet = by(points, "MEET cascade: symmetric Hamming, hash PQ", direction)[0]
        assert meet["index_bytes_per_item"] == pytest.approx(16 + 8 * 256 * 8 * 4 / n, abs=0.01)
        assert meet["total_bytes_per_item"] == pytest.approx(meet["index_bytes_per_item"] + 2 * DIM, abs=0.01)
        binary = by(points, "binary + fp16 rescore", direction)[0]
        assert binary["index_bytes_per_item"] == pytest.approx(8, abs=0.5)
        assert binary["total_bytes_per_item"] == pytest.approx(binary["index_bytes_per_item"] + 2 * DIM, abs=0.01)
        sq8 = by(points, "IVF-SQ8", direction)[0]  # codes + 8 B id + centroids / n
        assert sq8["index_bytes_per_item"] > DIM + 8 and sq8["total_bytes_per_item"] == sq8["index_bytes_per_item"]
        refine = by(points, "IVF-PQ + fp16 refine", direction)[0]
        assert refine["total_bytes_per_item"] == pytest.approx(refine["index_bytes_per_item"] + 2 * DIM, abs=0.01)
        hnsw = by(points, "HNSW fp16", direction)[0]  # fp16 rows + graph links
        assert hnsw["index_bytes_per_item"] > 2 * DIM + 4 * 32


def test_a_second_run_reuses_the_cached_gallery_and_indexes(bench, run, capsys):
    results, cache, out = run
    encoded = [f for f in cache.iterdir() if f.name.startswith("encoded-")]
    assert len(encoded) == 1 and (encoded[0] / "meta.json").is_file() and not (encoded[0] / "parts").exists()
    capsys.readouterr()
    assert bench.main([*SMALL, "--cache", str(cache), "--methods", "ivfsq8,meet", "--json",
                       str(out / "again.json")]) == 0
    err = capsys.readouterr().err
    assert "encode " not in err and "Shapes gallery ready" not in err  # nothing rendered or encoded again
    assert "the gallery loaded from its cache" in err
    again = json.loads((out / "again.json").read_text())["points"]
    assert all(p["build_cached"] for p in again if p["method"] == "IVF-SQ8")
    first = {(p["method"], p["setting"], p["direction"]): p for p in results["points"]}
    for p in again:  # same gallery, same indexes, same queries: the same recall
        before = first[p["method"], p["setting"], p["direction"]]
        assert p["recall_at_10"] == before["recall_at_10"]
        if p["method"] == "IVF-SQ8":  # the build time measured by the first run, not a load time
            assert p["build_s"] == before["build_s"]


def test_the_figure_is_written_and_loads_for_the_app(run):
    import plotly.graph_objects as go

    from meet.figures import pareto_figure_from_file

    results, _, out = run
    assert (out / "p.html").is_file() and (out / "p.figure.json").is_file()
    fig = pareto_figure_from_file(out / "p.json")
    assert isinstance(fig, go.Figure) and fig.layout.title.text
    pairs = {(p["direction"], p["method"]) for p in results["points"]}
    assert len(fig.data) == len(pairs)
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis2.type == "log"
    shown = [t.name for t in fig.data if t.showlegend is not False]
    assert len(shown) == len(set(shown)) == len({m for _, m in pairs})  # one legend entry per family


def test_rescore_equals_a_numpy_reference():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from benchmarks.pareto_data import Queries
    from benchmarks.pareto_methods import rescore

    rng = np.random.default_rng(0)
    dense = rng.standard_normal((500, 32)).astype(np.float16)
    dense[7] = dense[3]  # a tie: the lower position first
    queries = Queries(rng.standard_normal((9, 32)).astype(np.float32), np.zeros((9, 64), np.float32),
                      np.zeros((9, 8), np.uint8))
    candidates = np.stack([rng.permutation(500)[:40] for _ in range(9)])
    candidates[0] = np.concatenate([[7, 3], [c for c in rng.permutation(500) if c not in (3, 7)][:38]])
    candidates[1, 5] = -1  # a padded slot never comes back
    got = rescore(dense, queries, candidates, 10)
    for row in range(9):
        cand = candidates[row][candidates[row] >= 0]
        scores = dense[cand].astype(np.float32) @ queries.dense[row]
        order = np.lexsort((cand, -scores))[:10]
        np.testing.assert_array_equal(got[row], cand[order])


def test_frontier_and_fastest():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from benchmarks.pareto_report import fastest, frontier

    pts = [{"method": "a", "setting": "1", "recall_at_10": 0.9, "batched_ms": 1.0, "single_ms": 2.0},
           {"method": "a", "setting": "2", "recall_at_10": 0.97, "batched_ms": 3.0, "single_ms": 1.5},
           {"method": "a", "setting": "3", "recall_at_10": 0.99, "batched_ms": 5.0, "single_ms": 1.0},
           {"method": "b", "setting": "1", "recall_at_10": 0.8, "batched_ms": 2.0, "single_ms": 1.0}]
    assert frontier(pts) == {0, 1, 2}
    best = fastest(pts, 0.95)
    assert best["a"]["setting"] == "2" and best["a"]["best_single_ms"] == 1.0 and best["a"]["reached"]
    assert not best["b"]["reached"]


def test_the_sublinear_hamming_filter_is_a_row_and_its_lists_are_counted(run):
    points = run[0]["points"]
    for direction in ("t2i", "i2t"):
        ivf = by(points, "MEET cascade: IVF Hamming", direction, "R=50, q=20")[0]
        flat = by(points, "MEET cascade: asymmetric Hamming, hash PQ", direction, "R=50, q=20")[0]
        # the same codes and PQ codes plus the lists: centroids, offsets and one member id per item
        assert ivf["index_bytes_per_item"] > flat["index_bytes_per_item"] + 4
        assert 0.0 < ivf["recall_at_10"] <= 1.0


def test_the_apps_efficiency_tab_shows_the_newest_committed_run(run, tmp_path):
    from app.efficiency_tab import RESULTS, committed_pareto

    figure, caption = committed_pareto(tmp_path)
    assert figure is None and "No `benchmarks/pareto.py` run" in caption
    (tmp_path / "pareto-300-2026-01-01.json").write_text((run[2] / "p.json").read_text())
    (tmp_path / "pareto-300-2026-01-01.zz.figure.json").write_text("{}")  # a figure file is not a run
    (tmp_path / "pareto-broken.json").write_text("{")  # sorts after: the newest file is unreadable
    figure, caption = committed_pareto(tmp_path)
    assert figure is None and "Cannot read `pareto-broken.json`" in caption
    (tmp_path / "pareto-broken.json").unlink()
    figure, caption = committed_pareto(tmp_path)
    assert figure is not None and "pareto-300-2026-01-01.json" in caption and "300 images" in caption
    assert len(figure.data) > 0
    assert RESULTS.name == "results" and RESULTS.parent.name == "benchmarks"
