"""The Redundancy tab: where MEET's compact codes and filters keep, lose and reweight
information. Every number comes from :mod:`meet.analysis` and every figure from
:mod:`meet.figures` (the notebooks call the same functions).

Gallery-wide statistics are computed once per server (cached in the state) when the page
first loads; the per-query views follow the last search of this browser session; the
recall-vs-cost sweep and the UMAP map run when asked (seconds, not milliseconds).
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from meet import analysis, figures
from meet.errors import DataError
from meet.inference import Encoded

from app import evidence
from app.efficiency_tab import stored_items
from app.feedback import guarded
from app.search import SearchOutcome, gallery_index
from app.state import AppState

SWEEP_HAMMING = (0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0)
SWEEP_PQ = (0.1, 0.25, 0.5, 0.6, 0.75, 1.0)
"""The R and q grid of the recall-vs-cost curve (fractions; the paper's point is on it)."""
AGGREGATE_QUERIES = 5000
"""Queries per direction of the all-query views (aggregate funnel, recall-cost sweep, pair
histogram): all of the default gallery's 5,000 captions; a larger gallery is sampled."""
REMOVED_SHOWN = 12
UMAP_MAX_POINTS = 3000
UMAP_EPOCHS = 200
"""UMAP's layout optimisation is single-threaded when seeded; 200 epochs (not 500) keep the
map to seconds at 3,000 points."""


def query_positions(state: AppState, direction: str) -> np.ndarray:
    """The query items of the all-query views: every caption (t2i) or image (i2t) of a
    gallery up to :data:`AGGREGATE_QUERIES`, else that many evenly spaced ones, so their
    time and the ground truth they need grow linearly with the gallery, not with its square."""
    side = state.gallery.texts if direction == "t2i" else state.gallery.images
    if side.n_items <= AGGREGATE_QUERIES:
        return np.arange(side.n_items)
    return np.unique(np.linspace(0, side.n_items - 1, AGGREGATE_QUERIES).round().astype(np.int64))


def relevant_for(state: AppState, direction: str) -> np.ndarray:
    """bool (n_queries, n_gallery) for the queries of :func:`all_queries`: Shapes ground
    truth, else the data set's caption pairs."""
    truth, rows = state.gallery.truth, query_positions(state, direction)
    return truth.captions(rows) if direction == "t2i" else truth.images(rows)


def all_queries(state: AppState, direction: str) -> Encoded:
    """The encodings of :func:`query_positions` (stored, no model call)."""
    side = state.gallery.texts if direction == "t2i" else state.gallery.images
    return stored_items(side, query_positions(state, direction))


NO_CAPTIONS = "This gallery has no captions, so there are no caption codes to show."


def _sides(state: AppState) -> dict[str, Any]:
    """The gallery's non-empty sides (an image folder without captions has no text side)."""
    gallery = state.gallery
    return {side: index for side, index in (("image", gallery.images), ("text", gallery.texts)) if index.n_items}


def codebook_figures(state: AppState) -> tuple:
    def compute() -> tuple:
        sides = _sides(state)
        usage = {side: analysis.codebook_usage(index.pq_codes, index.codebooks.shape[1])
                 for side, index in sides.items()}
        # Each index's own quantizer: what it reads (hash features or dense vectors) and decodes.
        errors = {side: analysis.quantization_errors(index.quantizer.source(index), index.pq_codes,
                                                     index.quantizer)
                  for side, index in sides.items()}
        names = {"image": "image", "text": "caption"}
        text = " ".join([
            "Dead codewords: " + ", ".join(f"{names[s]} {int(u.dead.sum())}" for s, u in usage.items())
            + f" of {usage['image'].counts.size} each.",
            "Mean perplexity per codebook: " + ", ".join(f"{names[s]} {u.perplexity.mean():.1f}"
                                                         for s, u in usage.items())
            + f" (of {usage['image'].counts.shape[1]} codewords).",
            "Mean squared quantization error: " + ", ".join(f"{names[s]} {e.mean():.4f}" for s, e in errors.items())
            + "." + ("" if "text" in usage else " " + NO_CAPTIONS)])
        return (figures.codebook_heatmap(usage["image"], "Image codebook usage"),
                figures.codebook_heatmap(usage["text"], "Caption codebook usage") if "text" in usage else None,
                figures.codebook_entropy_bars(usage["image"], usage["text"]) if "text" in usage else None,
                figures.quantization_error_histogram(errors), text)
    return state.cached("codebook figures", compute)


def bit_figures(state: AppState) -> tuple:
    def compute() -> tuple:
        gallery = state.gallery
        balance = {side: analysis.bit_balance(index.codes) for side, index in _sides(state).items()}
        text = f"Effective number of bits: image {balance['image'].effective_bits:.1f}"
        if "text" not in balance:
            return (figures.bit_share_bars(balance), figures.bit_correlation_heatmap(balance["image"], "Image bits"),
                    None, None, f"{text} of {gallery.images.n_bits}. {NO_CAPTIONS}")
        captions = query_positions(state, "t2i")
        hist = analysis.hamming_pair_histogram(np.asarray(gallery.texts.codes[captions]), gallery.images.codes,
                                               relevant_for(state, "t2i"))
        text = (f"{text}, caption {balance['text'].effective_bits:.1f} of {gallery.images.n_bits}. Mean Hamming "
                f"distance between a caption and an image: {hist.positive_mean:.1f} for relevant pairs, "
                f"{hist.negative_mean:.1f} for the rest; {hist.overlap:.1%} of irrelevant pairs are as close "
                "as the median relevant pair.")
        return (figures.bit_share_bars(balance), figures.bit_correlation_heatmap(balance["image"], "Image bits"),
                figures.bit_correlation_heatmap(balance["text"], "Caption bits"),
                figures.hamming_histogram(hist), text)
    return state.cached("bit figures", compute)


def aggregate_figure(state: AppState) -> tuple:
    def compute() -> tuple:
        if not state.gallery.texts.n_items:
            return None, ("Every query's funnel needs queries with known relevant items: this gallery has no "
                          "captions. The funnel of each image search is under \"This query\".")
        aggregates = {direction: analysis.aggregate_funnel(gallery_index(state, direction),
                                                            all_queries(state, direction),
                                                            relevant_for(state, direction), state.cascade)
                      for direction in ("t2i", "i2t")}
        return figures.aggregate_funnel_figure(aggregates), _aggregate_text(aggregates, _queries_used(state))
    return state.cached("aggregate funnel", compute)


def _queries_used(state: AppState) -> str:
    """``every query of the gallery``, or how many were sampled of how many."""
    sizes = {direction: (len(query_positions(state, direction)),
                         (state.gallery.texts if direction == "t2i" else state.gallery.images).n_items)
             for direction in ("t2i", "i2t")}
    if all(used == total for used, total in sizes.values()):
        return "every query of the gallery"
    return "an evenly spaced sample of the queries (" + ", ".join(
        f"{direction}: {used:,} of {total:,}" for direction, (used, total) in sizes.items()) + ")"


def _aggregate_text(aggregates: dict[str, Any], queries: str = "every query of the gallery") -> str:
    parts = []
    for direction, agg in aggregates.items():
        described = "; ".join(f"after {row['stage']}: {row['recall_ceiling']:.1%} of relevant items remain"
                              for row in agg.rows() if row["stage"] != "gallery")
        parts.append(f"**{direction}** ({described})")
    return f"Over {queries} at the checkpoint's rates: " + " · ".join(parts)


def recall_cost(state: AppState, direction: str, progress: gr.Progress = gr.Progress()) -> Any:
    if not state.gallery.texts.n_items:
        raise DataError("the recall ceiling counts each query's relevant items, and this gallery has no captions "
                        "to pair with its images", fix="open the app with --captions to see it")
    progress(0.1, desc="sweeping R and q")
    curve = analysis.recall_cost_curve(gallery_index(state, direction), all_queries(state, direction),
                                       relevant_for(state, direction), SWEEP_HAMMING, SWEEP_PQ, state.cascade)
    return figures.recall_cost_figure(curve)


def query_views(state: AppState, outcome: SearchOutcome | None) -> tuple:
    """The last search: its funnel, what each filter removed, and the reweighting."""
    if outcome is None:
        message = "Run a search in the Search tab first; its query is analysed here."
        return None, [], [], None, None, message
    if outcome.mode not in ("cascade", "meet"):
        return (None, [], [], None, None, f"Mode `{outcome.mode}` searches the whole gallery: no filters "
                "and no re-rank to show. Pick cascade or meet in the Search tab's settings.")
    funnel = figures.funnel_figure(analysis.query_funnel(outcome.trace, outcome.relevant),
                                   title=outcome.query_label)
    removed = {stage: analysis.removed_by_stage(outcome.trace, outcome.relevant, stage, REMOVED_SHOWN,
                                                dense_query=outcome.query_dense,
                                                gallery=gallery_index(state, outcome.direction))
               for stage in ("hamming", "pq")}
    view = analysis.reweighting_view(outcome.trace)
    text = f"Query {outcome.query_label}."
    if outcome.relevant is not None:
        ranks = analysis.true_match_ranks(outcome.trace, outcome.relevant)
        text += (f" Best-ranked relevant item: rank {_rank(ranks.get('before'))} by dense score among the "
                 f"candidates, rank {_rank(ranks.get('after'))} after the re-rank.")
    labels = item_labels(state, outcome.direction)
    if outcome.mode != "meet":  # the plain cascade re-ranks by the dense score: nothing is reweighted
        text += " Mode `cascade` re-ranks by the dense score alone: pick meet to see the reweighting."
        return (funnel, _removed_items(state, outcome, removed["hamming"]),
                _removed_items(state, outcome, removed["pq"]), None, None, text)
    return (funnel, _removed_items(state, outcome, removed["hamming"]),
            _removed_items(state, outcome, removed["pq"]), figures.consistency_scatter(view, labels),
            figures.bump_chart(view, labels=labels, relevant=outcome.relevant), text)


def item_labels(state: AppState, direction: str) -> list[str]:
    """Hover and legend text per gallery position: image file names or (short) captions."""
    if direction != "i2t":
        return state.gallery.images.ids
    return state.cached("caption labels", lambda: [c if len(c) <= 48 else c[:47] + "…"
                                                   for c in state.gallery.dataset.captions])


def _rank(rank: Any) -> str:
    return "none (filtered out)" if rank is None else str(int(rank) + 1)


def _removed_items(state: AppState, outcome: SearchOutcome, positions: np.ndarray) -> list[tuple[Any, str]]:
    """Gallery entries: images for text queries; for image queries a caption card."""
    items = []
    for pos in np.asarray(positions, np.int64):
        mark = "" if outcome.relevant is None else (" ✓ relevant" if outcome.relevant[pos] else "")
        if outcome.direction != "i2t":
            items.append((state.gallery.thumbnail(pos), f"{state.gallery.image_labels[pos]}{mark}"))
        else:
            image = state.gallery.dataset.caption_image[pos]
            items.append((state.gallery.thumbnail(image),
                          f"“{state.gallery.dataset.captions[pos]}”{mark}"))
    return items


def umap_map(state: AppState, color_by: str, progress: gr.Progress = gr.Progress()) -> Any:
    progress(0.1, desc="UMAP of image and caption embeddings (first run compiles numba: ~30 s)")
    gallery = state.gallery
    layout = state.cached("umap", lambda: analysis.umap_layout(
        np.asarray(gallery.images.dense, np.float32), np.asarray(gallery.texts.dense, np.float32),
        max_points=UMAP_MAX_POINTS, n_epochs=UMAP_EPOCHS))
    hover = [gallery.images.ids[i] if side == "image" else gallery.dataset.captions[i]
             for side, i in zip(layout.side, layout.index)]
    is_image = layout.side == "image"
    codewords = np.empty(len(layout.index), np.int64)  # each point's codeword in codebook 0
    codewords[is_image] = gallery.images.pq_codes[layout.index[is_image], 0]
    codewords[~is_image] = gallery.texts.pq_codes[layout.index[~is_image], 0]
    return figures.umap_figure(layout, color_by, hover, codewords)


def render(state: AppState, last_outcome: gr.State, demo: gr.Blocks) -> None:
    investigation = evidence.load()  # the committed ablation table, read once per page build
    with gr.Tab("Redundancy"):
        with gr.Tab("Codebook usage"):
            codebook_text = gr.Markdown()
            with gr.Row():
                image_usage, text_usage = gr.Plot(), gr.Plot()
            with gr.Row():
                entropy, errors = gr.Plot(), gr.Plot()
        with gr.Tab("Bit balance"):
            bits_text = gr.Markdown()
            share = gr.Plot()
            with gr.Row():
                image_corr, text_corr = gr.Plot(), gr.Plot()
            hamming = gr.Plot()
        with gr.Tab("Filtered negatives"):
            gr.Markdown("**This query** (the last search in the Search tab)")
            query_text = gr.Markdown()
            query_funnel = gr.Plot()
            with gr.Row():
                removed_hamming = gr.Gallery(label="Removed by the Hamming filter (relevant first, then the "
                                             "best by dense score)", columns=6, height=240)
                removed_pq = gr.Gallery(label="Removed by the quantization filter", columns=6, height=240)
            gr.Markdown("**All queries of the gallery**")
            gr.Markdown(evidence.filtering_text(investigation), elem_id="filtering-evidence")
            aggregate_text = gr.Markdown()
            aggregate = gr.Plot()
            with gr.Row():
                sweep_direction = gr.Radio(["t2i", "i2t"], value="t2i", label="direction")
                sweep_button = gr.Button("Recall ceiling vs cost over R and q")
            sweep = gr.Plot()
        with gr.Tab("Reweighting"):
            gr.Markdown(evidence.reweighting_text(investigation), elem_id="reweighting-evidence")
            reweight_text = gr.Markdown()
            with gr.Row():
                scatter, bump = gr.Plot(), gr.Plot()
        with gr.Tab("Embedding map"):
            with gr.Row():
                color_by = gr.Radio(["modality", "codeword"], value="modality", label="colour by")
                umap_button = gr.Button("Draw the UMAP map")
            umap_plot = gr.Plot()

    def static() -> tuple:
        return (*codebook_figures(state), *bit_figures(state), *aggregate_figure(state))
    static_outputs = [image_usage, text_usage, entropy, errors, codebook_text, share, image_corr, text_corr,
                      hamming, bits_text, aggregate, aggregate_text]
    demo.load(guarded(static, outputs=len(static_outputs)), None, static_outputs, api_visibility="private")
    per_query = [query_funnel, removed_hamming, removed_pq, scatter, bump, reweight_text]
    views = guarded(lambda outcome: query_views(state, outcome), outputs=len(per_query))
    last_outcome.change(views, last_outcome, per_query, api_visibility="private")
    last_outcome.change(lambda outcome: "" if outcome is None else f"Query {outcome.query_label}",
                        last_outcome, query_text, api_visibility="private")
    sweep_button.click(guarded(lambda d, progress=gr.Progress(): recall_cost(state, d, progress), outputs=1),
                       sweep_direction, sweep, api_visibility="private")
    umap_button.click(guarded(lambda c, progress=gr.Progress(): umap_map(state, c, progress), outputs=1),
                      color_by, umap_plot, api_visibility="private")
