"""Plotly figures of the ablation table, built from its rows only (so a figure and the
table always show the same numbers).

``ablation_figures(table)`` returns ``{name: go.Figure}``:

- ``components``: rSum and ground-truth mAP@R of each component row;
- ``n_bits``: rSum of every mode against the code length;
- ``rates``: rSum and the share of relevant pairs surviving the filters, against R and q;
- ``cost``: rSum against the bytes a text query reads per gallery item (every row).
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

MODE_COLOURS = {"meet": "#1f77b4", "cascade": "#2ca02c", "dense": "#7f7f7f", "hash": "#d62728",
                "pq": "#ff7f0e"}


def _rows(table: dict[str, Any], group: str) -> list[dict[str, Any]]:
    return [r for r in table["rows"] if r["group"] == group]


def _runs_note(table: dict[str, Any]) -> str:
    n = table["runs_per_number"]
    return f"mean of {n} run{'s' if n != 1 else ''}, Shapes test split ({table['test_images']} images)"


def components_figure(table: dict[str, Any]) -> go.Figure:
    """Horizontal bars: rSum (left) and mAP@R t2i / i2t (right) per component row."""
    rows = _rows(table, "components")[::-1]  # plotly draws the first bar at the bottom
    labels = [r["label"] for r in rows]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=("rSum (5-caption protocol)", "mAP@R (ground truth)"))
    fig.add_trace(go.Bar(y=labels, x=[r["rsum"] for r in rows], orientation="h", name="rSum",
                         marker_color=[MODE_COLOURS.get(r["mode"], "#333") for r in rows],
                         text=[f"{r['rsum']:.1f}" for r in rows], textposition="auto",
                         hovertext=[f"mode {r['mode']}" for r in rows]), row=1, col=1)
    for direction, colour in (("t2i", "#1f77b4"), ("i2t", "#9467bd")):
        fig.add_trace(go.Bar(y=labels, x=[r[f"{direction}_map@r"] for r in rows], orientation="h",
                             name=f"mAP@R {direction}", marker_color=colour), row=1, col=2)
    spread = next((r for r in _rows(table, "seed spread") if r["mode"] == "meet"), None)
    if spread is not None and spread["rsum_std"] is not None:
        low, high = spread["rsum"] - spread["rsum_std"], spread["rsum"] + spread["rsum_std"]
        fig.add_vrect(x0=low, x1=high, fillcolor="#1f77b4", opacity=0.15, line_width=0, row=1, col=1,
                      annotation_text=f"full MEET over {spread['runs']} seeds: ±1 std", annotation_position="top left")
    fig.update_layout(title=f"What each part of MEET is worth ({_runs_note(table)})", barmode="group",
                      height=140 + 45 * len(rows), legend=dict(orientation="h", y=-0.12))
    return fig


def bits_figure(table: dict[str, Any]) -> go.Figure:
    """rSum against n_bits for each retrieval mode of the n_bits models."""
    rows = _rows(table, "n_bits")
    bits = [int(r["label"].split("=")[1]) for r in rows]
    fig = go.Figure()
    for mode in ("meet", "cascade", "pq", "hash", "dense"):
        fig.add_trace(go.Scatter(x=bits, y=[r[f"{mode}_rsum"] for r in rows], mode="lines+markers",
                                 name=mode, line=dict(color=MODE_COLOURS[mode],
                                                      dash="dash" if mode == "dense" else "solid")))
    fig.update_xaxes(type="log", tickvals=bits, ticktext=[str(b) for b in bits], title="n_bits (hash code length)")
    fig.update_yaxes(title="rSum")
    fig.update_layout(title=f"Code length ({_runs_note(table)}; dense = same model, no codes)")
    return fig


def rates_figure(table: dict[str, Any]) -> go.Figure:
    """Top: rSum (meet, cascade, dense) against R and q. Bottom: relevant pairs kept."""
    fig = make_subplots(rows=2, cols=2, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("R sweep (Hamming filter)", "q sweep (quantization filter)", "", ""))
    for col, group in ((1, "R sweep"), (2, "q sweep")):
        rows = _rows(table, group)
        x = [float(r["label"].split("=")[1]) for r in rows]
        hover = [f"ms/query t2i {r['t2i_ms_per_query']:.3f}, i2t {r['i2t_ms_per_query']:.3f}<br>"
                 f"bytes read/item t2i {r['t2i_bytes_read_per_item']:.1f}" for r in rows]
        for mode in ("meet", "cascade", "dense"):
            key = "rsum" if mode == "meet" else f"{mode}_rsum"
            fig.add_trace(go.Scatter(x=x, y=[r[key] for r in rows], mode="lines+markers", name=mode,
                                     legendgroup=mode, showlegend=col == 1, hovertext=hover,
                                     line=dict(color=MODE_COLOURS[mode], dash="dash" if mode == "dense" else "solid")),
                          row=1, col=col)
        for direction, dash in (("t2i", "solid"), ("i2t", "dot")):
            fig.add_trace(go.Scatter(x=x, y=[r[f"{direction}_relevant_kept"] for r in rows], mode="lines+markers",
                                     name=f"relevant kept {direction}", legendgroup=direction, showlegend=col == 1,
                                     line=dict(color="#8c564b", dash=dash)), row=2, col=col)
        fig.update_xaxes(title_text="rate (share of the gallery / of the survivors)", row=2, col=col)
    fig.update_yaxes(title_text="rSum", row=1, col=1)
    fig.update_yaxes(title_text="relevant pairs kept", row=2, col=1)
    fig.update_layout(title=f"Filter rates on the full model ({_runs_note(table)})", height=620)
    return fig


def cost_figure(table: dict[str, Any]) -> go.Figure:
    """Every row: rSum against bytes read per gallery item by a text query (log x)."""
    fig = go.Figure()
    for group in dict.fromkeys(r["group"] for r in table["rows"]):
        rows = _rows(table, group)
        fig.add_trace(go.Scatter(x=[r["t2i_bytes_read_per_item"] for r in rows], y=[r["rsum"] for r in rows],
                                 mode="markers", name=group, text=[f"{r['label']} ({r['mode']})" for r in rows],
                                 hovertemplate="%{text}<br>%{x:.1f} bytes/item, rSum %{y:.1f}<extra></extra>",
                                 marker=dict(size=10)))
    fig.update_xaxes(type="log", title="bytes read per gallery item by a text query (log)")
    fig.update_yaxes(title="rSum")
    fig.update_layout(title=f"Accuracy against memory traffic ({_runs_note(table)})")
    return fig


def ablation_figures(table: dict[str, Any]) -> dict[str, go.Figure]:
    """All figures of one ablation table, by file name."""
    return {"components": components_figure(table), "n_bits": bits_figure(table),
            "rates": rates_figure(table), "cost": cost_figure(table)}
