"""Plotly figures of :mod:`meet.analysis` results (and of saved benchmark results), one
builder per figure.

Builders only draw: every plotted number is a field of an analysis result (or a plain
normalisation of one, stated in the builder's docstring), so a figure in the app and a
number in a notebook agree. Each returns a ``plotly.graph_objects.Figure`` with a title
and axis labels; none touches a display, and only :func:`pareto_figure_from_file` reads
the disk (a ``benchmarks/pareto.py`` results file, for the app's Efficiency tab).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from meet.analysis import (AggregateFunnel, BitBalance, CodebookUsage, Funnel, PairHistogram,
                           RecallCostCurve, ReweightView, UmapLayout)
from meet.errors import ConfigError, DataError

STAGE_LABELS = {"gallery": "gallery", "hamming": "after Hamming", "pq": "after quantization",
                "rerank": "re-ranked"}
SIDE_COLOURS = {"image": "#1f77b4", "text": "#ff7f0e"}
TEMPLATE = "plotly_white"


def _finish(fig: go.Figure, title: str, x_title: str, y_title: str, **layout: Any) -> go.Figure:
    fig.update_layout(title=dict(text=title), xaxis_title=x_title, yaxis_title=y_title,
                      template=TEMPLATE, **layout)
    return fig


def _colour(side: str, i: int) -> str:
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")
    return SIDE_COLOURS.get(side, palette[i % len(palette)])


# ------------------------------------------------------------------ Stage I

def codebook_heatmap(usage: CodebookUsage, title: str = "Codebook usage") -> go.Figure:
    """M x K heatmap of ``usage.share`` (hover: item counts)."""
    n_codebooks, size = usage.share.shape
    fig = go.Figure(go.Heatmap(
        z=usage.share, x=np.arange(size), y=np.arange(n_codebooks), customdata=usage.counts,
        colorscale="Viridis", colorbar=dict(title=dict(text="share of items")),
        hovertemplate="codebook %{y}, codeword %{x}<br>share %{z:.4f}<br>%{customdata} items<extra></extra>"))
    dead = int(usage.dead.sum())
    return _finish(fig, f"{title} ({usage.n_items} items, {dead} dead codewords)", "codeword", "codebook",
                   yaxis=dict(autorange="reversed", dtick=1))


def codebook_entropy_bars(image_usage: CodebookUsage | None, text_usage: CodebookUsage | None
                          ) -> go.Figure:
    """Entropy (bits) and perplexity per codebook, both modalities side by side; the
    dashed lines mark the maxima (log2 K bits, K codewords); hover: dead codewords."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Entropy per codebook (bits)",
                                                        "Perplexity (codewords in use)"))
    sizes = []
    for i, (side, usage) in enumerate((("image", image_usage), ("text", text_usage))):
        if usage is None:
            continue
        sizes.append(usage.codebook_size)
        x = np.arange(len(usage.entropy_bits))
        for col, values, what in ((1, usage.entropy_bits, "entropy %{y:.3f} bits"),
                                  (2, usage.perplexity, "perplexity %{y:.1f}")):
            fig.add_trace(go.Bar(x=x, y=values, name=side, legendgroup=side, showlegend=col == 1,
                                 marker_color=_colour(side, i), customdata=usage.dead,
                                 hovertemplate=f"{side} codebook %{{x}}<br>{what}<br>"
                                               "%{customdata} dead codewords<extra></extra>"),
                          row=1, col=col)
    if not sizes:
        raise DataError("codebook_entropy_bars needs at least one CodebookUsage")
    fig.add_hline(y=float(np.log2(max(sizes))), line_dash="dash", line_color="grey", row=1, col=1)
    fig.add_hline(y=float(max(sizes)), line_dash="dash", line_color="grey", row=1, col=2)
    fig.update_xaxes(title_text="codebook", dtick=1)
    fig.update_yaxes(title_text="entropy (bits)", row=1, col=1)
    fig.update_yaxes(title_text="perplexity", row=1, col=2)
    fig.update_layout(title=dict(text="Codebook entropy and perplexity"), barmode="group",
                      template=TEMPLATE)
    return fig


def quantization_error_histogram(errors_by_side: dict[str, np.ndarray], n_bins: int = 40) -> go.Figure:
    """Share of items per squared-error bin, one bar series per side, on shared bin
    edges (``np.histogram_bin_edges`` of all errors); legend shows each side's mean."""
    if not errors_by_side:
        raise DataError("quantization_error_histogram needs at least one side's errors")
    arrays = {side: np.asarray(err, np.float64).ravel() for side, err in errors_by_side.items()}
    edges = np.histogram_bin_edges(np.concatenate(list(arrays.values())), bins=n_bins)
    centres, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig = go.Figure()
    for i, (side, err) in enumerate(arrays.items()):
        counts, _ = np.histogram(err, bins=edges)
        fig.add_trace(go.Bar(x=centres, y=counts / max(len(err), 1), width=widths, opacity=0.6,
                             name=f"{side} (mean {err.mean():.3f})", marker_color=_colour(side, i),
                             customdata=counts,
                             hovertemplate="error %{x:.3f}<br>share %{y:.3f} (%{customdata} items)"
                                           "<extra></extra>"))
    return _finish(fig, "Quantization error ||h - decode(code)||²", "squared error", "share of items",
                   barmode="overlay")


def bit_share_bars(balance_by_side: dict[str, BitBalance]) -> go.Figure:
    """Share of ones per bit for each side (0.5 = balanced); legend: effective bits."""
    if not balance_by_side:
        raise DataError("bit_share_bars needs at least one BitBalance")
    fig = go.Figure()
    for i, (side, balance) in enumerate(balance_by_side.items()):
        fig.add_trace(go.Bar(x=np.arange(len(balance.share_ones)), y=balance.share_ones,
                             name=f"{side} ({balance.effective_bits:.1f} effective bits)",
                             marker_color=_colour(side, i), customdata=balance.bit_entropy,
                             hovertemplate="bit %{x}: share of ones %{y:.3f}<br>entropy "
                                           "%{customdata:.3f} bits<extra></extra>"))
    fig.add_hline(y=0.5, line_dash="dash", line_color="grey")
    return _finish(fig, "Bit balance", "bit", "share of ones", barmode="group",
                   yaxis=dict(range=[0, 1]))


def bit_correlation_heatmap(balance: BitBalance, title: str = "Bit-bit correlation") -> go.Figure:
    """The Pearson correlation of the bits, -1 (red) .. 1 (blue)."""
    n_bits = balance.correlation.shape[0]
    fig = go.Figure(go.Heatmap(z=balance.correlation, x=np.arange(n_bits), y=np.arange(n_bits),
                               zmin=-1, zmax=1, colorscale="RdBu", colorbar=dict(title=dict(text="r")),
                               hovertemplate="bits %{x} and %{y}: r = %{z:.3f}<extra></extra>"))
    return _finish(fig, f"{title} ({balance.effective_bits:.1f} effective bits of {n_bits})", "bit", "bit",
                   yaxis=dict(autorange="reversed"))


def hamming_histogram(hist: PairHistogram) -> go.Figure:
    """Hamming distance distribution of relevant vs non-relevant pairs, each normalised
    to sum 1 (counts in hover); dotted lines at the means."""
    fig = go.Figure()
    for name, counts, mean, colour in (("relevant pairs", hist.positive, hist.positive_mean, "#2ca02c"),
                                       ("non-relevant pairs", hist.negative, hist.negative_mean, "#7f7f7f")):
        total = counts.sum()
        fig.add_trace(go.Bar(x=hist.bins, y=counts / total if total else counts.astype(float),
                             name=f"{name} (mean {mean:.2f})", marker_color=colour, opacity=0.65,
                             customdata=counts,
                             hovertemplate="distance %{x}: %{y:.3f} (%{customdata} pairs)<extra></extra>"))
        if np.isfinite(mean):
            fig.add_vline(x=mean, line_dash="dot", line_color=colour)
    title = "Hamming distance of relevant vs non-relevant pairs"
    if np.isfinite(hist.overlap):
        title += f" ({100 * hist.overlap:.1f}% of negatives within the positives' median)"
    return _finish(fig, title, "Hamming distance (bits)", "share of pairs", barmode="overlay")


# ------------------------------------------------------------------ Stage II filters

def funnel_figure(funnel: Funnel, title: str | None = None) -> go.Figure:
    """Items kept per stage (plotly Funnel); text: relevant kept / lost at each stage.
    ``title``: e.g. the query itself (default: its row in the searched batch)."""
    labels, kept, text = [], [], []
    for stage in funnel.stages:
        labels.append(STAGE_LABELS.get(stage["name"], stage["name"]))
        kept.append(stage["kept"])
        if stage["relevant_kept"] is None:
            text.append("")
        else:
            text.append(f"relevant {stage['relevant_kept']}" +
                        (f", lost {stage['relevant_lost_here']}" if stage["relevant_lost_here"] else ""))
    fig = go.Figure(go.Funnel(y=labels, x=kept, text=text, textinfo="value+text",
                              hovertemplate="%{y}: %{x} items<br>%{text}<extra></extra>"))
    title = title or f"Query {funnel.query}"
    return _finish(fig, f"{title} ({funnel.direction}, {funnel.mode}): items per stage", "items kept", "stage")


def aggregate_funnel_figure(agg_by_direction: dict[str, AggregateFunnel]) -> go.Figure:
    """Per direction: mean items kept per query as % of the gallery (left) and the
    recall ceiling after each stage (right); hover: counts and the share lost there."""
    if not agg_by_direction:
        raise DataError("aggregate_funnel_figure needs at least one AggregateFunnel")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Items kept per query (% of gallery)",
                                                        "Recall ceiling (relevant kept / relevant)"))
    for i, (direction, agg) in enumerate(agg_by_direction.items()):
        labels = [STAGE_LABELS.get(s, s) for s in agg.stages]
        colour = _colour(direction, i)
        fig.add_trace(go.Bar(x=labels, y=100 * agg.mean_kept / agg.n_gallery, name=direction,
                             legendgroup=direction, marker_color=colour, customdata=agg.mean_kept,
                             hovertemplate="%{x}: %{y:.1f}% (%{customdata:.0f} items)<extra></extra>"),
                      row=1, col=1)
        fig.add_trace(go.Bar(x=labels, y=agg.recall_ceiling, name=direction, legendgroup=direction,
                             showlegend=False, marker_color=colour, customdata=100 * agg.lost_share,
                             hovertemplate="%{x}: ceiling %{y:.3f}<br>%{customdata:.1f}% of relevant "
                                           "lost here<extra></extra>"),
                      row=1, col=2)
    fig.update_xaxes(title_text="stage")
    fig.update_yaxes(title_text="% of gallery", row=1, col=1)
    fig.update_yaxes(title_text="recall ceiling", range=[0, 1.02], row=1, col=2)
    fig.update_layout(title=dict(text="Filtered items and lost relevant items, over all queries"),
                      barmode="group", template=TEMPLATE)
    return fig


def recall_cost_figure(curve: RecallCostCurve) -> go.Figure:
    """Recall ceiling after both filters vs the share of the gallery re-ranked densely,
    one line per Hamming rate (points ordered by cost); a star marks the config's
    operating point."""
    fig = go.Figure()
    for rate in np.unique(curve.hamming_rate):
        rows = np.flatnonzero(curve.hamming_rate == rate)
        rows = rows[np.argsort(curve.cost[rows], kind="stable")]
        fig.add_trace(go.Scatter(
            x=curve.cost[rows], y=curve.ceiling_after_pq[rows], mode="lines+markers",
            name=f"R = {rate:g} ({curve.R[rows[0]]} items)",
            customdata=np.stack([curve.pq_rate[rows], curve.q[rows], curve.ceiling_after_hamming[rows]], 1),
            hovertemplate="q = %{customdata[0]:g} (%{customdata[1]} items)<br>cost %{x:.3f}<br>"
                          "ceiling %{y:.3f} (after Hamming %{customdata[2]:.3f})<extra></extra>"))
    op = curve.operating_point
    fig.add_trace(go.Scatter(x=[op["cost"]], y=[op["ceiling_after_pq"]], mode="markers",
                             marker=dict(symbol="star", size=16, color="black"),
                             name=f"operating point (R = {op['hamming_rate']:g}, q = {op['pq_rate']:g})",
                             hovertemplate="operating point<br>cost %{x:.3f}<br>ceiling %{y:.3f}"
                                           "<extra></extra>"))
    return _finish(fig, f"Recall ceiling vs re-rank cost ({curve.direction})",
                   "share of the gallery re-ranked densely (q / n)", "recall ceiling after both filters",
                   yaxis=dict(range=[0, 1.02]))


# ------------------------------------------------------------------ Stage II reweighting

def _labels(view: ReweightView, labels: Sequence[str] | None) -> list[str]:
    """Hover label per candidate: ``labels[gallery position]`` or the position."""
    if labels is None:
        return [str(i) for i in view.ids]
    return [str(labels[i]) for i in view.ids]


def consistency_scatter(view: ReweightView, labels: Sequence[str] | None = None) -> go.Figure:
    """Consistency ``c_j`` vs dense score ``s_j`` per candidate, coloured by final rank
    (0 = best). ``labels``: hover text per gallery position (e.g. the index's ids)."""
    if view.consistency is None:
        raise DataError("this re-rank computed no consistency term",
                        fix="search with mode='meet' and trace=True")
    fig = go.Figure(go.Scatter(
        x=view.dense, y=view.consistency, mode="markers", text=_labels(view, labels),
        customdata=np.stack([view.rank_after, view.rank_before], 1),
        marker=dict(color=view.rank_after, colorscale="Viridis_r", showscale=True,
                    colorbar=dict(title=dict(text="final rank"))),
        hovertemplate="%{text}<br>dense %{x:.3f}, consistency %{y:.3f}<br>"
                      "rank %{customdata[1]} -> %{customdata[0]}<extra></extra>"))
    return _finish(fig, f"Consistency vs dense score (query {view.query}, {view.direction})",
                   "dense score (cosine)", "consistency (cosine with the candidate set's memory)")


def bump_chart(view: ReweightView, top: int = 10, labels: Sequence[str] | None = None,
               relevant: np.ndarray | None = None) -> go.Figure:
    """Rank before (dense) -> after (final) of every candidate in the top ``top`` of
    either order; green moved up, red down, grey stayed. ``relevant`` (gallery_size,)
    bool draws the truly relevant ones thick."""
    if top < 1:
        raise ConfigError(f"top={top} must be at least 1")
    names = _labels(view, labels)
    chosen = np.flatnonzero((view.rank_before < top) | (view.rank_after < top))
    chosen = chosen[np.argsort(view.rank_after[chosen], kind="stable")]
    fig = go.Figure()
    for j in chosen:
        before, after = int(view.rank_before[j]), int(view.rank_after[j])
        colour = "#2ca02c" if after < before else "#d62728" if after > before else "#7f7f7f"
        is_rel = relevant is not None and bool(np.asarray(relevant)[view.ids[j]])
        fig.add_trace(go.Scatter(x=["dense (before)", "final (after)"], y=[before, after],
                                 mode="lines+markers", name=names[j] + (" ✓" if is_rel else ""),
                                 line=dict(color=colour, width=5 if is_rel else 2),
                                 hovertemplate=f"{names[j]}: rank %{{y}}<extra></extra>"))
    return _finish(fig, f"Top {top} before and after the re-rank (query {view.query}, {view.mode})",
                   "order", "rank (0 = best)", yaxis=dict(autorange="reversed"))


# ------------------------------------------------------------------ embedding map

def umap_figure(layout: UmapLayout, color_by: str = "modality", hover: Sequence[str] | None = None,
                codewords: np.ndarray | None = None) -> go.Figure:
    """The UMAP of images and captions: one marker trace per side (circles: images,
    crosses: captions), coloured by side (``modality``) or by ``codewords`` (n_points,)
    ints aligned with the layout's points (``codeword``). ``hover``: text per point."""
    n = len(layout.xy)
    if color_by not in ("modality", "codeword"):
        raise ConfigError(f"unknown color_by {color_by!r}", fix="use 'modality' or 'codeword'")
    if hover is not None and len(hover) != n:
        raise DataError(f"hover has {len(hover)} entries for {n} points",
                        fix="give one string per layout point (see layout.side and layout.index)")
    if color_by == "codeword":
        if codewords is None or len(codewords) != n:
            raise DataError("color_by='codeword' needs codewords with one entry per layout point",
                            fix="e.g. np.where(layout.side == 'image', image_pq[layout.index, 0], ...)")
        codewords = np.asarray(codewords)
    fig = go.Figure()
    for i, side in enumerate(("image", "text")):
        rows = np.flatnonzero(layout.side == side)
        if not len(rows):
            continue
        marker: dict[str, Any] = dict(size=6 if side == "image" else 4,
                                      symbol="circle" if side == "image" else "x")
        if color_by == "modality":
            marker["color"] = _colour(side, i)
        else:
            marker.update(color=codewords[rows], coloraxis="coloraxis")
        text = [hover[r] for r in rows] if hover is not None else [f"{side} {k}" for k in layout.index[rows]]
        fig.add_trace(go.Scattergl(x=layout.xy[rows, 0], y=layout.xy[rows, 1], mode="markers",
                                   name="images" if side == "image" else "captions", marker=marker,
                                   text=text, hovertemplate="%{text}<extra></extra>"))
    extra: dict[str, Any] = {}
    if color_by == "codeword":
        extra["coloraxis"] = dict(colorscale="Turbo", colorbar=dict(title=dict(text="codeword")))
    return _finish(fig, f"UMAP of image and caption embeddings (coloured by {color_by})",
                   "UMAP 1", "UMAP 2", **extra)


# ------------------------------------------------------------------ benchmarks

PARETO_FIELDS = ("method", "setting", "direction", "recall_at_10", "batched_ms", "single_ms",
                 "index_bytes_per_item", "total_bytes_per_item", "build_s")
"""What each point of a ``benchmarks/pareto.py`` results file holds (at least)."""


def pareto_figure(points: Sequence[dict], target: float | None = 0.95,
                  title: str = "Recall@10 vs batched latency") -> go.Figure:
    """Recall@10 against batched ms per query (log x), one trace per method family and
    one panel per direction (t2i, i2t), from the points of a ``benchmarks/pareto.py``
    results file (each a dict with :data:`PARETO_FIELDS`); points of a trace ordered by
    time; MEET's variants drawn as diamonds; hover: the setting, single-query ms, bytes per
    item (total / index) and build seconds; a dashed line at ``target`` recall."""
    if not points:
        raise DataError("pareto_figure needs at least one point")
    missing = [f for f in PARETO_FIELDS if f not in points[0]]
    if missing:
        raise DataError(f"pareto points lack the fields {missing}", fix="use a benchmarks/pareto.py --json file")
    directions = list(dict.fromkeys(p["direction"] for p in points))
    what = {"t2i": "t2i: caption queries, image gallery", "i2t": "i2t: image queries, caption gallery"}
    fig = make_subplots(rows=1, cols=len(directions), shared_yaxes=True,
                        subplot_titles=[what.get(d, d) for d in directions])
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd")
    methods = list(dict.fromkeys(p["method"] for p in points))
    shown: set[str] = set()
    for col, direction in enumerate(directions, start=1):
        for i, method in enumerate(methods):
            mine = sorted((p for p in points if p["direction"] == direction and p["method"] == method),
                          key=lambda p: p["batched_ms"])
            if not mine:
                continue
            fig.add_trace(go.Scatter(
                x=[p["batched_ms"] for p in mine], y=[p["recall_at_10"] for p in mine], mode="lines+markers",
                name=method, legendgroup=method, showlegend=method not in shown,
                line=dict(color=palette[i % len(palette)], dash="solid" if method.startswith("MEET") else "dot"),
                marker=dict(symbol="diamond" if method.startswith("MEET") else "circle", size=7),
                customdata=[[p["setting"], p["single_ms"], p["total_bytes_per_item"], p["index_bytes_per_item"],
                             p["build_s"]] for p in mine],
                hovertemplate=f"{method}<br>%{{customdata[0]}}<br>recall@10 %{{y:.3f}}<br>batched %{{x:.3f}} ms"
                              "<br>single %{customdata[1]:.3f} ms<br>%{customdata[2]:,.0f} B/item total "
                              "(%{customdata[3]:,.1f} index)<br>build %{customdata[4]:.1f} s<extra></extra>"),
                row=1, col=col)
            shown.add(method)
        if target is not None:
            fig.add_hline(y=target, line_dash="dash", line_color="grey", row=1, col=col)
        fig.update_xaxes(type="log", title_text="batched ms per query (log)", row=1, col=col)
    fig.update_yaxes(title_text="recall@10 vs exact dense top-10", row=1, col=1)
    fig.update_layout(title=dict(text=title), template=TEMPLATE, height=600, legend=dict(font=dict(size=10)))
    return fig


def pareto_figure_from_file(path: Any, target: float | None = None) -> go.Figure:
    """:func:`pareto_figure` of a saved ``benchmarks/pareto.py --json`` file (for the app's
    Efficiency tab; the one builder here that reads a file). ``target``: the run's own
    recall target when None."""
    import json
    from pathlib import Path

    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
        points, run = content["points"], content.get("run", {})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read pareto results {path}: {exc}",
                        fix="pass a file written by benchmarks/pareto.py --json") from exc
    size = run.get("n_images")
    title = "Recall@10 vs batched latency" + (f", {size:,}-image Shapes gallery" if size else "")
    return pareto_figure(points, target=run.get("target", 0.95) if target is None else target, title=title)
