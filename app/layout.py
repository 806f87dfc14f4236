"""``build_demo``: the whole page, built from a loaded state (or an error page when the
state could not be loaded). Only ``app.py``'s ``__main__`` launches it."""

from __future__ import annotations

import gradio as gr

from app import api, efficiency_tab, redundancy_tab, search_tab, your_gallery
from app.state import AppState

TITLE = "MEET Studio"


def header(state: AppState) -> str:
    gallery, cfg = state.gallery, state.model.cfg
    truth = ("Shapes ground truth (every caption-image pair's relevance is known)" if gallery.has_ground_truth
             else "no ground truth beyond the data set's own pairs")
    fitted = (f" MEET's codes were fitted on this gallery for the CLIP model `{state.backbone}` (frozen towers; "
              "`meet.fit_codes`, cached)." if state.backbone else "")
    return (f"# {TITLE}\nImage-text retrieval with MEET: a Hamming filter, a quantization filter, then a "
            f"reweighted re-rank. **Device: {state.device_label}.** Checkpoint `{cfg.preset or 'custom'}` "
            f"({cfg.model.image_encoder} + {cfg.model.text_encoder}, {cfg.model.n_bits}-bit codes, "
            f"{cfg.model.n_codebooks} x {cfg.model.codebook_size} codebooks). Gallery: "
            f"{gallery.dataset.n_images:,} images and {gallery.dataset.n_captions:,} captions "
            f"({gallery.dataset.name}/{gallery.dataset.split}); {truth}.{fitted} Model, gallery and index "
            f"loaded in {state.startup_seconds['total']:.1f} s.")


def build_demo(state: AppState) -> gr.Blocks:
    """The app: Search, Your gallery, Redundancy and Efficiency tabs plus the named API endpoints.
    ``delete_cache``: files gradio wrote for the page (result thumbnails) older than a day are
    removed daily, so a long-running server's upload folder does not grow without end."""
    with gr.Blocks(title=TITLE, delete_cache=(86400, 86400)) as demo:
        gr.Markdown(header(state), elem_id="header")
        last_outcome = gr.State(None)
        search_tab.render(state, last_outcome)
        your_gallery.render(state)
        redundancy_tab.render(state, last_outcome, demo)
        efficiency_tab.render(state)
        api.register(state)
    return demo


def build_error_demo(message: str) -> gr.Blocks:
    """A page that says why the app cannot serve (instead of a traceback or no page)."""
    with gr.Blocks(title=f"{TITLE}: cannot start") as demo:
        gr.Markdown(f"# {TITLE} cannot start\n\n**{message}**\n\nFix the checkpoint or gallery and "
                    "restart (`python app.py --help` lists the flags; the defaults need no network).",
                    elem_id="startup-error")
    return demo
