"""notebooks/redundancy_analysis.ipynb runs top to bottom on the bundled model, and the
numbers its prose states are the measured ones.

The notebook builds its gallery through the public ``meet`` API (encode, index); this test
recomputes key numbers independently from the app's own index of the same gallery (the
session fixture ``app_state``, already built when the app tests ran first) and from the
Shapes ground truth, and checks that the notebook's summary and prose carry them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "redundancy_analysis.ipynb"


def _run(path: Path) -> tuple[str, dict]:
    """Execute a notebook with the repository root as its working folder: (every
    Markdown output joined, the summary JSON output)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    markdown, summaries = [], []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", out
            data = out.get("data", {})
            markdown.append(data.get("text/markdown", ""))
            if "application/json" in data:
                summaries.append(data["application/json"])
    assert len(summaries) == 1, "the notebook shows exactly one summary JSON"
    return "\n".join(markdown), summaries[0]


def test_committed_without_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_redundancy_notebook_states_the_measured_numbers(app_cache, app_state, monkeypatch):
    from meet import analysis
    from meet.inference import Encoded

    monkeypatch.setenv("MEET_CACHE", str(app_cache))    # the app's rendered Shapes test split
    for name in ("MEET_CHECKPOINT", "MEET_DATA", "MEET_SPLIT", "MEET_BERT", "MEET_VOCAB", "MEET_RERANKER"):
        monkeypatch.delenv(name, raising=False)
    markdown, summary = _run(NOTEBOOK)
    gallery = app_state.gallery
    relevance = gallery.truth.captions(np.arange(gallery.texts.n_items))

    # Stage I: bit balance and codebook usage from the app's index of the same gallery
    for side, index in (("image", gallery.images), ("text", gallery.texts)):
        bits = analysis.bit_balance(index.codes).effective_bits
        assert summary["effective_bits"][side] == pytest.approx(bits, abs=0.05)
        assert f"{summary['effective_bits'][side]:.1f} effective bits" in markdown
        usage = analysis.codebook_usage(index.pq_codes, index.codebooks.shape[1])
        assert summary["perplexity_mean"][side] == pytest.approx(usage.perplexity.mean(), abs=0.5)
        assert 1 < summary["perplexity_mean"][side] <= 256

    # Stage II: the aggregate funnel of caption queries (the app's Redundancy tab numbers)
    texts = gallery.texts
    queries = Encoded(np.asarray(texts.dense), texts.hash, np.asarray(texts.codes), np.asarray(texts.pq_codes))
    agg = analysis.aggregate_funnel(gallery.images, queries, relevance, app_state.cascade)
    assert summary["funnel"]["t2i"]["lost_hamming"] == pytest.approx(agg.lost_share[1], abs=2e-3)
    assert summary["funnel"]["t2i"]["recall_ceiling"] == pytest.approx(agg.recall_ceiling[2], abs=2e-3)
    assert f"**{summary['funnel']['t2i']['lost_hamming']:.1%}** of all relevant pairs" in markdown

    # misleading negatives: ground truth alone, exact
    n_captions, n_images = relevance.shape
    share = (relevance.sum() - n_captions) / (relevance.size - n_captions)
    assert summary["misleading_negatives"]["protocol_negatives_relevant_share"] == pytest.approx(share, abs=1e-4)
    assert f"**{share:.1%}** of all (caption, image) pairs" in markdown
    beyond = relevance.sum(0) - np.bincount(gallery.dataset.caption_image, minlength=n_images)
    assert summary["misleading_negatives"]["image_fits_other_captions_mean"] == pytest.approx(beyond.mean(), abs=1e-3)

    # sane ranges and internal consistency
    modes = summary["modes"]
    assert set(modes) == {"dense", "hash", "pq", "cascade", "meet"}
    assert all(0 < m["rsum"] <= 600 and 0 < m["t2i_map@r"] <= 1 for m in modes.values())
    assert modes["hash"]["rsum"] < modes["dense"]["rsum"]
    for direction, n_queries in (("t2i", n_captions), ("i2t", n_images)):
        for step in ("filtering", "reweighting"):
            assert sum(summary["rank_changes"][direction][step]) == n_queries
        kept = summary["dense_top10_kept"][direction]
        assert 0 <= kept["after both filters"] <= kept["after Hamming filter"] <= 1
    assert 0 < summary["in_batch"]["negatives_relevant_share"] < summary["in_batch"]["hardest_t2i_relevant_share"]
    assert f"rSum {modes['cascade']['rsum']:.1f} against dense {modes['dense']['rsum']:.1f}" in markdown
