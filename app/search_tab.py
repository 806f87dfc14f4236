"""The Search tab: text -> images and image -> texts, each with the cascade's funnel for the
query, the cascade's ranking beside the dense-only ranking, and sliders that re-run the
query live. Handlers are plain functions of the state and the inputs; :func:`render`
lays the tab out and wires them.
"""

from __future__ import annotations

from typing import Any, Callable

import gradio as gr
import numpy as np

from meet.analysis import query_funnel
from meet.figures import funnel_figure

from app.feedback import guarded
from app.search import (SEARCH_MODES, SearchOutcome, cascade_from_controls, image_search, image_to_images,
                        text_search)
from app.state import AppState

EXAMPLE_QUERIES = [
    "a red circle",
    "a small blue star",
    "a yellow hexagon to the left of a yellow triangle",
    "a purple star below a hexagon",
    "there are three things",
    "a large green square and a small pink cross",
]
"""Shown under the query box on the Shapes gallery (each parses in its grammar)."""

PICKER_IMAGES = 48
"""Gallery images offered as clickable image queries."""


class Controls:
    """The shared sliders (one set per direction, since the defaults differ)."""

    def __init__(self, state: AppState, direction: str):
        cfg = state.cascade
        mode = "cascade" if direction == "i2i" else "meet"  # meet's complementarity reads captions' rankings
        direction = "t2i" if direction == "i2i" else direction  # image queries over images: the image side's R, q
        with gr.Accordion("Cascade settings (re-run the query live)", open=False):
            with gr.Row():
                self.mode = gr.Radio(list(SEARCH_MODES), value=mode, label="mode",
                                     info="meet: filters + reweighting; cascade: filters + dense re-rank; "
                                          "release: the MEET release's re-sort (it ranks a query among a "
                                          "batch of queries, so one query alone is not re-sorted)")
                self.k = gr.Slider(1, state.settings.max_k, value=10, step=1, label="results (k)")
            with gr.Row():
                self.hamming = gr.Slider(0.01, 1.0, value=_fraction(state, direction),
                                         step=0.01, label="R: share of the gallery the Hamming filter keeps")
                self.pq = gr.Slider(0.01, 1.0, value=_fraction(state, direction, of_r=True),
                                    step=0.01, label="q: share of R the quantization filter keeps")
            with gr.Row():
                self.top_z = gr.Slider(0, 50, value=int(getattr(cfg, f"top_z_{direction}")), step=1,
                                       label="top-z: candidates whose own ranking is consulted")
                self.alpha = gr.Slider(0.0, 1.0, value=float(cfg.alpha), step=0.01, label="alpha (consistency)")
                self.beta = gr.Slider(0.0, 1.0, value=float(cfg.beta), step=0.01, label="beta (complementarity)")

    @property
    def inputs(self) -> list[Any]:
        return [self.k, self.mode, self.hamming, self.pq, self.top_z, self.alpha, self.beta]

    @property
    def live(self) -> list[Any]:
        return [self.k, self.mode, self.hamming, self.pq, self.top_z, self.alpha, self.beta]


def _fraction(state: AppState, direction: str, of_r: bool = False) -> float:
    """The checkpoint's R (share of the gallery) or q (share of R) as a slider fraction;
    count rates are converted for this gallery."""
    from meet.search import stage_sizes
    n_items = (state.gallery.images if direction == "t2i" else state.gallery.texts).n_items
    n_hamming, n_pq, _ = stage_sizes(state.cascade, direction, max(n_items, 1))
    share = n_pq / max(n_hamming, 1) if of_r else n_hamming / max(n_items, 1)
    return round(min(1.0, max(0.01, share)), 2)


def _outcome(state: AppState, direction: str, query: Any, k: Any, mode: str, hamming: float, pq: float,
             top_z: float, alpha: float, beta: float) -> SearchOutcome:
    cfg = cascade_from_controls(state.cascade, direction, hamming, pq, top_z, alpha, beta)
    if direction == "t2i":
        return text_search(state, query, k, cfg, mode)
    return image_search(state, query, k, cfg, mode)


def _mark(outcome: SearchOutcome, position: int) -> str:
    """A leading tick or cross by ground truth (first, so a narrow caption still shows it)."""
    if outcome.relevant is None:
        return ""
    return "✓ " if outcome.relevant[position] else "✗ "


def image_results(state: AppState, outcome: SearchOutcome, which: str = "result") -> list[tuple[str, str]]:
    """(image path, caption) per result for a gr.Gallery, best first."""
    result = outcome.result if which == "result" else outcome.dense
    items = []
    for rank, (pos, score) in enumerate(zip(result.ids[0], result.scores[0]), start=1):
        if pos < 0:
            continue
        items.append((state.gallery.thumbnail(pos),
                      f"{_mark(outcome, pos)}#{rank} · {score:.3f} · {state.gallery.image_labels[pos]}"))
    return items


def caption_results(state: AppState, outcome: SearchOutcome, which: str = "result") -> list[list[Any]]:
    """Rows [rank, caption (ticked or crossed by ground truth), score] for a gr.Dataframe."""
    result = outcome.result if which == "result" else outcome.dense
    rows = []
    for rank, (pos, score) in enumerate(zip(result.ids[0], result.scores[0]), start=1):
        if pos < 0:
            continue
        rows.append([rank, _mark(outcome, pos) + state.gallery.dataset.captions[pos], round(float(score), 3)])
    return rows


def summary(state: AppState, outcome: SearchOutcome) -> str:
    """A few lines: the stage counts, what the filters cost in truly relevant items, timings."""
    counts = outcome.result.stage_counts
    lines = [f"**{outcome.query_label}** · mode `{outcome.mode}` · "
             f"gallery {counts['gallery']:,} → Hamming {counts['after_hamming']:,} → "
             f"quantization {counts['after_pq']:,} → re-ranked {counts['reranked']:,}"]
    if outcome.relevant is not None:
        lost = ""
        if outcome.mode in ("cascade", "meet"):
            funnel = query_funnel(outcome.trace, outcome.relevant)
            lost = ", ".join(f"{stage['name']} lost {stage['relevant_lost_here']}"
                             for stage in funnel.stages if stage.get("relevant_lost_here"))
        total = int(outcome.relevant.sum())
        in_top = int(np.sum(outcome.relevant[outcome.result.ids[0][outcome.result.ids[0] >= 0]]))
        in_dense = int(np.sum(outcome.relevant[outcome.dense.ids[0][outcome.dense.ids[0] >= 0]]))
        lines.append(f"Ground truth ({outcome.ground_truth}): {total:,} relevant in the gallery; "
                     f"{in_top} in this top {outcome.result.ids.shape[1]}, {in_dense} in the dense top "
                     f"{outcome.dense.ids.shape[1]}. " + (f"Filters: {lost}." if lost else
                                                          "The filters lost none." if outcome.mode in
                                                          ("cascade", "meet") else ""))
    elif outcome.ground_truth:
        lines.append(outcome.ground_truth)
    ms = outcome.seconds
    lines.append(f"Server time: encode {ms['encode'] * 1000:.1f} ms, search {ms['search'] * 1000:.1f} ms "
                 f"(dense-only ranking {ms['dense'] * 1000:.1f} ms).")
    return "\n\n".join(lines)


def funnel_of(outcome: SearchOutcome) -> Any:
    """The funnel figure of a cascade/meet search (None for the exhaustive modes)."""
    if outcome.mode not in ("cascade", "meet"):
        return None
    return funnel_figure(query_funnel(outcome.trace, outcome.relevant), title=outcome.query_label)


def run_text(state: AppState, query: str, *controls: Any) -> tuple:
    outcome = _outcome(state, "t2i", query, *controls)
    funnel = funnel_of(outcome)
    return (image_results(state, outcome), image_results(state, outcome, "dense"), funnel,
            summary(state, outcome), outcome)


def run_image(state: AppState, image: Any, *controls: Any) -> tuple:
    outcome = _outcome(state, "i2t", image, *controls)
    funnel = funnel_of(outcome)
    return (caption_results(state, outcome), caption_results(state, outcome, "dense"), funnel,
            summary(state, outcome), outcome)


def run_similar(state: AppState, image: Any, *controls: Any) -> tuple:
    k, mode, hamming, pq, top_z, alpha, beta = controls
    cfg = cascade_from_controls(state.cascade, "i2i", hamming, pq, top_z, alpha, beta)
    outcome = image_to_images(state, image, k, cfg, mode)
    return (image_results(state, outcome), image_results(state, outcome, "dense"), funnel_of(outcome),
            summary(state, outcome), outcome)


def render(state: AppState, last_outcome: gr.State) -> None:
    """Lay out the Search tab inside the current Blocks context."""
    with gr.Tab("Search"):
        with gr.Tab("Text → images"):
            _text_panel(state, last_outcome)
        with gr.Tab("Image → captions"):
            _image_panel(state, last_outcome)
        with gr.Tab("Image → images"):
            _similar_panel(state, last_outcome)


def _similar_panel(state: AppState, last_outcome: gr.State) -> None:
    """Similar pictures: a gallery image (click it) or an upload, over the image gallery."""
    gallery = state.gallery
    with gr.Row():
        with gr.Column(scale=2):
            picker = gr.Gallery([(gallery.thumbnail(i), gallery.image_labels[i])
                                 for i in range(min(PICKER_IMAGES, gallery.dataset.n_images))],
                                columns=8, height=260, allow_preview=False,
                                label="Click an image to find similar ones", elem_id="similar-picker")
            sources = []
            if not gallery.reads_region_features:
                upload = gr.Image(type="filepath", label="…or upload one", sources=["upload", "clipboard"])
                upload_button = gr.Button("Find similar images", variant="primary", elem_id="similar-search")
                sources.append((upload, upload_button))
        with gr.Column(scale=3):
            info = gr.Markdown(elem_id="similar-summary")
    controls = Controls(state, "i2i")
    with gr.Row():
        ranked = gr.Gallery(label="MEET ranking (cascade)", columns=5, height=420, elem_id="similar-results")
        dense = gr.Gallery(label="Dense-only ranking (for comparison)", columns=5, height=420)
    funnel = gr.Plot(label="The cascade for this query", elem_id="similar-funnel")
    last_image = gr.State(None)
    _wire_image_queries(state, run_similar, picker, sources, controls,
                        [ranked, dense, funnel, info, last_outcome, last_image], last_image)


def _text_panel(state: AppState, last_outcome: gr.State) -> None:
    with gr.Row():
        query = gr.Textbox(label="Describe an image", placeholder="a red circle left of a blue square",
                           scale=4, max_length=state.settings.max_query_chars, elem_id="text-query")
        button = gr.Button("Search", variant="primary", scale=1, elem_id="text-search")
    if state.gallery.is_shapes:
        gr.Examples(EXAMPLE_QUERIES, inputs=[query], label="Example queries")
    controls = Controls(state, "t2i")
    info = gr.Markdown(elem_id="text-summary")
    with gr.Row():
        ranked = gr.Gallery(label="MEET ranking", columns=5, height=420, elem_id="text-results")
        dense = gr.Gallery(label="Dense-only ranking (for comparison)", columns=5, height=420)
    funnel = gr.Plot(label="The cascade for this query", elem_id="text-funnel")
    outputs = [ranked, dense, funnel, info, last_outcome]
    handler = guarded(lambda q, *c: run_text(state, q, *c), outputs=len(outputs))
    live = guarded(lambda q, *c: run_text(state, q, *c), outputs=len(outputs), skip_if_empty=True)
    inputs = [query, *controls.inputs]
    button.click(handler, inputs, outputs, api_visibility="private")
    query.submit(handler, inputs, outputs, api_visibility="private")
    for control in controls.live:
        control.change(live, inputs, outputs, api_visibility="private", trigger_mode="always_last")


REGION_FEATURES_NOTE = (
    "**Image queries come from the gallery here.** This model reads precomputed region features "
    "(a Faster R-CNN's 36 region vectors per image, as in the MEET release), which cannot be computed "
    "from an uploaded picture in this app; click a gallery image, or give its number.")


def _image_panel(state: AppState, last_outcome: gr.State) -> None:
    gallery = state.gallery
    sources = []
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Tab("Gallery image"):
                picker = gr.Gallery([(gallery.thumbnail(i), gallery.image_labels[i])
                                     for i in range(min(PICKER_IMAGES, gallery.dataset.n_images))],
                                    columns=8, height=260, allow_preview=False,
                                    label="Click an image to search with it",
                                    elem_id="image-picker")
                number = gr.Number(label="or its number in the gallery", precision=0, minimum=0,
                                   maximum=max(0, gallery.dataset.n_images - 1))
                gallery_button = gr.Button("Search with image number", variant="primary")
                sources.append((number, gallery_button))
            if gallery.reads_region_features:
                gr.Markdown(REGION_FEATURES_NOTE, elem_id="no-upload-note")
            else:
                with gr.Tab("Upload"):
                    upload = gr.Image(type="filepath", label="Your image", sources=["upload", "clipboard"])
                    upload_button = gr.Button("Search with the upload", variant="primary")
                with gr.Tab("Sketch"):
                    sketch = gr.Sketchpad(type="numpy", label="Draw shapes", canvas_size=(256, 256))
                    sketch_button = gr.Button("Search with the sketch", variant="primary")
                sources += [(upload, upload_button), (sketch, sketch_button)]
        with gr.Column(scale=3):
            info = gr.Markdown(elem_id="image-summary")
            with gr.Row():
                headers = ["rank", "caption (✓ relevant, ✗ not, by ground truth)", "score"]
                ranked = gr.Dataframe(headers=headers, label="MEET ranking", wrap=True, elem_id="image-results")
                dense = gr.Dataframe(headers=headers, label="Dense-only ranking", wrap=True)
            funnel = gr.Plot(label="The cascade for this query", elem_id="image-funnel")
    controls = Controls(state, "i2t")
    last_image = gr.State(None)
    """The last image searched with (a gallery position, a file path or a sketch array):
    the sliders re-run it."""
    _wire_image_queries(state, run_image, picker, sources, controls,
                        [ranked, dense, funnel, info, last_outcome, last_image], last_image)


def picker_handler(state: AppState, run: Callable[..., tuple], outputs: int) -> Callable[..., tuple]:
    """A click on a picker image searches with it at once (no race with a button). The
    ``gr.SelectData`` annotation is what makes gradio pass the click: without it the
    handler never learns which image was clicked."""
    def pick(k: Any, mode: str, hamming: float, pq: float, top_z: float, alpha: float, beta: float,
             event: gr.SelectData) -> tuple:
        return (*run(state, event.index, k, mode, hamming, pq, top_z, alpha, beta), event.index)
    return guarded(pick, outputs=outputs)


def _wire_image_queries(state: AppState, run: Callable[..., tuple], picker: gr.Gallery,
                        sources: list[tuple[Any, gr.Button]], controls: Controls, outputs: list[Any],
                        last_image: gr.State) -> None:
    """An image panel's events: a picker click, each source's button, and the cascade
    sliders re-running the last image (``run`` returns the outputs before ``last_image``)."""
    handler = guarded(lambda image, *c: (*run(state, image, *c), image), outputs=len(outputs))
    live = guarded(lambda image, *c: (*run(state, image, *c), image), outputs=len(outputs), skip_if_empty=True)
    picker.select(picker_handler(state, run, len(outputs)), controls.inputs, outputs, api_visibility="private")
    for source, button in sources:
        button.click(handler, [source, *controls.inputs], outputs, api_visibility="private")
    for control in controls.live:
        control.change(live, [last_image, *controls.inputs], outputs, api_visibility="private",
                       trigger_mode="always_last")
