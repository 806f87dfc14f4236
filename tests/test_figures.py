"""meet.figures: each builder makes a titled, labelled figure from real analysis output,
and the numbers it plots are the analysis numbers."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from meet import figures
from meet.analysis import (aggregate_funnel, bit_balance, codebook_usage, hamming_pair_histogram,
                           query_funnel, quantization_errors, recall_cost_curve, reweighting_view,
                           umap_layout)
from meet.errors import ConfigError, DataError
from test_analysis import synthetic  # noqa: F401  (fixture: a small clustered index pair)


def titled(fig: go.Figure, *axes: str) -> None:
    assert isinstance(fig, go.Figure)
    assert fig.layout.title.text
    for axis in axes or ("xaxis", "yaxis"):
        assert fig.layout[axis].title.text, axis
    fig.to_json()  # serialisable, as gradio and notebooks need


def test_stage1_figures_plot_the_analysis_numbers(synthetic):
    img_usage = codebook_usage(synthetic.image_index.pq_codes, 16)
    txt_usage = codebook_usage(synthetic.text_index.pq_codes, 16)
    heat = figures.codebook_heatmap(img_usage, "Image codebooks")
    titled(heat)
    np.testing.assert_array_equal(heat.data[0].z, img_usage.share)
    np.testing.assert_array_equal(heat.data[0].customdata, img_usage.counts)

    bars = figures.codebook_entropy_bars(img_usage, txt_usage)
    titled(bars, "xaxis", "yaxis", "xaxis2", "yaxis2")
    by_axis = {(t.name, t.xaxis): t for t in bars.data}
    np.testing.assert_array_equal(by_axis["image", "x"].y, img_usage.entropy_bits)
    np.testing.assert_array_equal(by_axis["text", "x2"].y, txt_usage.perplexity)
    np.testing.assert_array_equal(by_axis["text", "x"].customdata, txt_usage.dead)
    assert len(figures.codebook_entropy_bars(img_usage, None).data) == 2

    errors = {"image": quantization_errors(synthetic.images.hash, synthetic.images.pq_codes,
                                           synthetic.image_index.quantizer),
              "text": quantization_errors(synthetic.texts.hash, synthetic.texts.pq_codes,
                                          synthetic.text_index.quantizer)}
    hist = figures.quantization_error_histogram(errors, n_bins=20)
    titled(hist)
    edges = np.histogram_bin_edges(np.concatenate(list(errors.values())), bins=20)
    for trace, err in zip(hist.data, errors.values()):
        np.testing.assert_allclose(trace.y, np.histogram(err, bins=edges)[0] / len(err))
        assert trace.y.sum() == pytest.approx(1.0)

    balances = {"image": bit_balance(synthetic.images.codes), "text": bit_balance(synthetic.texts.codes)}
    share = figures.bit_share_bars(balances)
    titled(share)
    np.testing.assert_array_equal(share.data[1].y, balances["text"].share_ones)
    assert f"{balances['image'].effective_bits:.1f}" in share.data[0].name
    corr = figures.bit_correlation_heatmap(balances["image"])
    titled(corr)
    np.testing.assert_array_equal(corr.data[0].z, balances["image"].correlation)

    pairs = hamming_pair_histogram(synthetic.texts.codes, synthetic.image_index.codes, synthetic.rel)
    ham = figures.hamming_histogram(pairs)
    titled(ham)
    np.testing.assert_allclose(ham.data[0].y, pairs.positive / pairs.positive.sum())
    np.testing.assert_allclose(ham.data[1].y, pairs.negative / pairs.negative.sum())
    np.testing.assert_array_equal(ham.data[0].customdata, pairs.positive)


def test_filter_figures_plot_the_analysis_numbers(synthetic):
    funnel = query_funnel(synthetic.traces[0], synthetic.rel[0])
    fig = figures.funnel_figure(funnel)
    titled(fig)
    assert isinstance(fig.data[0], go.Funnel)
    assert list(fig.data[0].x) == [s["kept"] for s in funnel.stages]
    assert f"relevant {funnel.stages[1]['relevant_kept']}" in fig.data[0].text[1]
    assert list(figures.funnel_figure(query_funnel(synthetic.traces[0])).data[0].text) == [""] * 4

    aggs = {"t2i": aggregate_funnel(synthetic.image_index, synthetic.texts, synthetic.rel, synthetic.cfg),
            "i2t": aggregate_funnel(synthetic.text_index, synthetic.images, synthetic.rel.T, synthetic.cfg)}
    agg_fig = figures.aggregate_funnel_figure(aggs)
    titled(agg_fig, "xaxis", "yaxis", "xaxis2", "yaxis2")
    kept_t2i, ceiling_t2i, kept_i2t, ceiling_i2t = agg_fig.data
    np.testing.assert_allclose(kept_t2i.y, 100 * aggs["t2i"].mean_kept / 150)
    np.testing.assert_allclose(kept_i2t.customdata, aggs["i2t"].mean_kept)
    np.testing.assert_array_equal(ceiling_t2i.y, aggs["t2i"].recall_ceiling)
    np.testing.assert_array_equal(ceiling_i2t.y, aggs["i2t"].recall_ceiling)

    curve = recall_cost_curve(synthetic.image_index, synthetic.texts, synthetic.rel, [0.3, 0.6], [0.25, 0.5, 1.0],
                              synthetic.cfg)
    rc = figures.recall_cost_figure(curve)
    titled(rc)
    lines, star = rc.data[:-1], rc.data[-1]
    xs = np.concatenate([t.x for t in lines])
    ys = np.concatenate([t.y for t in lines])
    assert sorted(zip(xs, ys)) == sorted(zip(curve.cost, curve.ceiling_after_pq))
    assert (star.x[0], star.y[0]) == (curve.operating_point["cost"], curve.operating_point["ceiling_after_pq"])
    assert star.marker.symbol == "star"


def test_reweighting_figures_plot_the_analysis_numbers(synthetic):
    view = reweighting_view(synthetic.traces[3])
    scatter = figures.consistency_scatter(view, labels=synthetic.image_index.ids)
    titled(scatter)
    np.testing.assert_array_equal(scatter.data[0].x, view.dense)
    np.testing.assert_array_equal(scatter.data[0].y, view.consistency)
    np.testing.assert_array_equal(scatter.data[0].marker.color, view.rank_after)
    assert scatter.data[0].text[0] == synthetic.image_index.ids[view.ids[0]]

    bump = figures.bump_chart(view, top=5, relevant=synthetic.rel[3])
    titled(bump)
    shown = {(t.y[0], t.y[1]) for t in bump.data}
    expected = {(int(b), int(a)) for b, a in zip(view.rank_before, view.rank_after) if b < 5 or a < 5}
    assert shown == expected
    cascade = synthetic.image_index.search(synthetic.texts, k=5, mode="cascade", cascade=synthetic.cfg,
                                           trace=True).traces[0]
    with pytest.raises(DataError, match="consistency"):
        figures.consistency_scatter(reweighting_view(cascade))
    with pytest.raises(ConfigError):
        figures.bump_chart(view, top=0)


def test_umap_figure_by_modality_and_codeword(synthetic):
    layout = umap_layout(synthetic.images.dense[:50], synthetic.texts.dense[:60], n_neighbors=8)
    hover = [f"{s} {i}" for s, i in zip(layout.side, layout.index)]
    fig = figures.umap_figure(layout, "modality", hover)
    titled(fig)
    images, captions = fig.data
    np.testing.assert_array_equal(images.x, layout.xy[:50, 0])
    np.testing.assert_array_equal(captions.y, layout.xy[50:, 1])
    assert list(captions.text) == hover[50:]
    codewords = np.where(layout.side == "image", synthetic.images.pq_codes[layout.index % 50, 0],
                         synthetic.texts.pq_codes[layout.index, 0])
    coloured = figures.umap_figure(layout, "codeword", hover, codewords)
    titled(coloured)
    np.testing.assert_array_equal(coloured.data[0].marker.color, codewords[:50])
    assert coloured.layout.coloraxis.colorbar.title.text == "codeword"
    with pytest.raises(DataError, match="codewords"):
        figures.umap_figure(layout, "codeword", hover)
    with pytest.raises(ConfigError):
        figures.umap_figure(layout, "colour")
    with pytest.raises(DataError, match="hover"):
        figures.umap_figure(layout, "modality", hover[:3])
