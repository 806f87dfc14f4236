"""Smoke test of ``benchmarks/search.py``: a tiny run prints complete tables with ratios,
and the faiss PQ baseline scores exactly what a direct numpy ADC computes."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    if str(REPO) not in sys.path:  # benchmarks/ is a folder of scripts, not installed
        sys.path.insert(0, str(REPO))
    return importlib.import_module("benchmarks.search")


def test_tiny_run_prints_tables_with_ratios(bench, capsys, tmp_path):
    out = tmp_path / "search.md"
    assert bench.main(["--sizes", "2000", "--queries", "20", "--single-queries", "3",
                       "--warmup-queries", "2", "--ivf-m", "16", "--count-rates", "500,50",
                       "--dense-dim", "256", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Machine:" in printed and "faiss" in printed
    assert "### 2,000 items (20 queries per batch)" in printed
    rows = [line for line in printed.splitlines() if line.startswith("| ") and "---" not in line]
    names = [row.split(" | ")[0] for row in rows[1:]]
    for expected in ("IndexFlatIP", "IndexHNSWFlat", "IndexIVFPQ", "IndexBinaryFlat", "IndexPQ",
                     "MEET cascade (frac", "MEET meet (frac", "MEET cascade (count", "MEET meet (count"):
        assert any(expected in name for name in names), (expected, names)
    for row in rows[1:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 9, row
        assert all(re.fullmatch(r"[\d.,]+x", c) for c in cells[6:9]), row  # three ratios
        assert float(cells[1]) > 0 and float(cells[2]) > 0
    flat = next(r for r in rows if "IndexFlatIP" in r)
    assert "| 1.00x | 1.00x |" in flat
    meet_count = next(r for r in rows if "MEET cascade (count" in r)
    assert "| 16 | 528 |" in meet_count  # 16 filter bytes; 16 + 256 * 2 total
    assert out.read_text().count("### 2,000 items") == 1


def test_hnsw_beyond_limit_is_reported_as_skipped(bench, capsys):
    assert bench.main(["--sizes", "600", "--queries", "4", "--single-queries", "2",
                       "--hnsw-max", "300", "--methods", "flat,hnsw"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"IndexHNSWFlat .*\| skipped \(build too slow: est\. \d+ min", printed)


def test_pq_baseline_matches_numpy_adc(bench):
    from benchmarks.search_methods import build_pq_index

    rng = np.random.default_rng(0)
    codebooks = rng.standard_normal((8, 256, 8), dtype=np.float32)
    pq_codes = rng.integers(0, 256, size=(500, 8), dtype=np.uint8)
    queries = rng.standard_normal((5, 64), dtype=np.float32)
    index = build_pq_index(codebooks, pq_codes)
    scores, ids = index.search(queries, 500)
    # Reference: inner product of each query with each item's reconstruction.
    recon = np.concatenate([codebooks[m][pq_codes[:, m]] for m in range(8)], axis=1)
    expected = queries @ recon.T
    got = np.empty_like(expected)
    np.put_along_axis(got, ids, scores, axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
