"""The "Your gallery" tab: a visitor uploads images (several files or a zip), they are encoded
and coded by the loaded model and kept in that visitor's own gallery, which can be searched
at once, by text or by an image, through MEET's cascade.

Whose gallery: a ``gr.State`` holds it, and gradio keeps one value per browser session, so
one visitor's images are never in another's searches or pages; it lives in the server's
memory while the session does (no file of it is kept: the uploaded files, which gradio
writes into its upload folder inside the app's cache, are deleted once decoded; result
thumbnails are written by gradio into that same folder under content-hash names).

How it is searched: a :class:`~meet.search.GalleryIndex` of the session's images is built
per search (a few hundred items at most: milliseconds), with the model's own hash-space
codebooks (a handful of images is too few to fit dense-space ones) and the checkpoint's
Hamming filter, at count rates (R = 2,000, q = 300 unless the checkpoint has counts), so
that a small gallery keeps its images through the filters: with the paper's fractions a
three-image gallery would return one. The summary shows the stage counts.

Models that read region features (the MEET release's) cannot encode a picture: the tab
says so instead.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from meet.config import FIT_CODES_SEARCH, CascadeConfig
from meet.errors import DataError
from meet.inference import Encoded
from meet.search import GalleryIndex, HashPQ

from app.feedback import guarded
from app.search import _decode_query_image, check_k
from app.state import AppState

THUMBNAIL = 192
"""Longest side of the thumbnails a session keeps (the images themselves are not kept)."""
RATE_FIELDS = ("hamming_rate_t2i", "pq_rate_t2i")


@dataclass
class SessionGallery:
    """One visitor's images: names, thumbnails and their encodings (rows in upload order)."""

    names: list[str] = field(default_factory=list)
    thumbnails: list[Image.Image] = field(default_factory=list)
    encoded: Encoded | None = None

    def __len__(self) -> int:
        return len(self.names)

    def with_images(self, names: list[str], images: list[Image.Image], encoded: Encoded) -> "SessionGallery":
        """A new gallery with these images appended (the old one is left as it was)."""
        thumbs = []
        for image in images:
            thumb = image.copy()
            thumb.thumbnail((THUMBNAIL, THUMBNAIL))
            thumbs.append(thumb)
        if self.encoded is None:
            merged = encoded
        else:
            merged = Encoded(*(np.concatenate([getattr(self.encoded, f), getattr(encoded, f)])
                               for f in ("dense", "hash", "codes", "pq_codes")))
        return SessionGallery(self.names + names, self.thumbnails + thumbs, merged)

    def view(self) -> list[tuple[Image.Image, str]]:
        pairs = zip(self.thumbnails, self.names, strict=True)
        return [(thumb, f"{i}: {name}") for i, (thumb, name) in enumerate(pairs)]


def session_cascade(state: AppState) -> CascadeConfig:
    """The checkpoint's search settings with count rates for the image side (see the module
    docstring) and its own codebooks for the quantization filter."""
    cfg = state.cascade
    counts = {name: value for name, value in FIT_CODES_SEARCH.items() if name in RATE_FIELDS}
    if all(getattr(cfg, name) > 1 for name in RATE_FIELDS):
        counts = {}
    return dataclasses.replace(cfg, **counts, pq_space="hash", reciprocal_k=0)


def session_index(state: AppState, gallery: SessionGallery) -> GalleryIndex:
    """The session's images as a searchable index (hash-space codes from the model's codebooks)."""
    pq = state.model.model.image_pq
    quantizer = HashPQ(pq.codebooks.detach().cpu().numpy())
    enc = gallery.encoded
    return GalleryIndex("image", [f"{i}:{name}" for i, name in enumerate(gallery.names)], enc.dense, enc.codes,
                        enc.pq_codes, quantizer, cascade=session_cascade(state), meta={"session": True})


def add_images(state: AppState, gallery: SessionGallery | None, files: list[Any]) -> tuple[SessionGallery, str]:
    """Decode, encode and append the uploaded files; the new gallery and a one-line note."""
    from gradio.utils import get_upload_folder

    from app.uploads import forget, read_uploads

    gallery = gallery or SessionGallery()
    try:
        room = state.settings.max_session_images - len(gallery)
        if room <= 0:
            raise DataError(f"your gallery is full ({len(gallery)} images)", fix="empty it first")
        uploads = read_uploads(files, state.settings, room)
    finally:
        forget(files, Path(get_upload_folder()))
    started = time.perf_counter()
    encoded = state.model.encode_images([u.image for u in uploads])
    new = gallery.with_images([u.name for u in uploads], [u.image for u in uploads], encoded)
    return new, (f"Added {len(uploads)} image(s), encoded and coded in {time.perf_counter() - started:.2f} s; "
                 f"your gallery holds {len(new)} (only you see it).")


def search(state: AppState, gallery: SessionGallery | None, query: Any, k: Any, by: str
           ) -> tuple[list[tuple[Image.Image, str]], str]:
    """Text (``by="text"``) or an image (``"image"``) over the session's images; results as
    gallery items, and a summary with the stage counts."""
    if gallery is None or not len(gallery):
        raise DataError("your gallery is empty", fix="upload some images first")
    k = min(check_k(state, k), len(gallery))
    started = time.perf_counter()
    if by == "text":
        if not isinstance(query, str) or not query.strip():
            raise DataError("the query is empty", fix="describe the image you are looking for")
        text = " ".join(query.split())[:state.settings.max_query_chars]
        encoded, label = state.model.encode_texts([text]), f"“{text}”"
    else:
        encoded, label = state.model.encode_images([_decode_query_image(state, query)]), "your image"
    encode = time.perf_counter() - started
    index = session_index(state, gallery)
    result = index.search(encoded, k=k, mode="cascade")
    counts = result.stage_counts
    items = [(gallery.thumbnails[pos], f"#{rank} · {score:.3f} · {gallery.names[pos]}")
             for rank, (pos, score) in enumerate(zip(result.ids[0], result.scores[0], strict=True), start=1)
             if pos >= 0]
    summary = (f"**{label}** over your {len(gallery)} image(s): Hamming kept {counts['after_hamming']}, "
               f"quantization {counts['after_pq']}, re-ranked {counts['reranked']}. Encode {encode * 1000:.1f} ms, "
               f"search {(time.perf_counter() - started - encode) * 1000:.1f} ms.")
    return items, summary


UNAVAILABLE = ("**Your gallery is not available with this model.** It reads precomputed region features (a "
               "Faster R-CNN's region vectors per image, as in the MEET release), which cannot be computed from an "
               "uploaded picture here. Open the app with a model that encodes pixels (the bundled Shapes demo, a "
               "trained `cnn`/`hf` model, or a CLIP model) to search your own images.")


def render(state: AppState) -> None:
    """The tab, inside the current Blocks context."""
    with gr.Tab("Your gallery"):
        if state.gallery.reads_region_features:
            gr.Markdown(UNAVAILABLE, elem_id="your-gallery-unavailable")
            return
        s = state.settings
        gr.Markdown(f"Upload images (several files, or a zip of them; up to {s.max_upload_mb} MB and "
                    f"{s.max_upload_pixels / 1e6:.0f} megapixels each, {s.max_session_images} in all). They are "
                    "encoded and coded by this model and kept for **this browser session only**: no other visitor "
                    "sees or searches them, and the uploaded files are deleted once read.")
        session = gr.State(None)
        files = gr.File(file_count="multiple", file_types=["image", ".zip"], label="Images or a zip",
                        elem_id="upload-files")
        status = gr.Markdown(elem_id="upload-status")
        grid = gr.Gallery(label="Your gallery", columns=8, height=220, allow_preview=False, elem_id="my-gallery")
        with gr.Row():
            query = gr.Textbox(label="Search your images", placeholder="a red circle", scale=4,
                               max_length=s.max_query_chars, elem_id="my-query")
            k = gr.Slider(1, s.max_k, value=10, step=1, label="results (k)", scale=1)
            button = gr.Button("Search", variant="primary", scale=1, elem_id="my-search")
        with gr.Accordion("…or search them with an image", open=False):
            query_image = gr.Image(type="filepath", label="Query image", sources=["upload", "clipboard"])
            image_button = gr.Button("Search with the image", elem_id="my-image-search")
        summary = gr.Markdown(elem_id="my-summary")
        results = gr.Gallery(label="Best matches in your gallery", columns=5, height=380, elem_id="my-results")
        clear = gr.Button("Empty my gallery", variant="secondary", elem_id="my-clear")

        def upload(gallery: SessionGallery | None, uploaded: list[Any]) -> tuple:
            new, note = add_images(state, gallery, uploaded)
            return new, new.view(), note, None

        files.upload(guarded(upload, outputs=4), [session, files], [session, grid, status, files],
                     api_visibility="private")
        text = guarded(lambda g, q, n: search(state, g, q, n, "text"), outputs=2)
        button.click(text, [session, query, k], [results, summary], api_visibility="private")
        query.submit(text, [session, query, k], [results, summary], api_visibility="private")
        image_button.click(guarded(lambda g, q, n: search(state, g, q, n, "image"), outputs=2),
                           [session, query_image, k], [results, summary], api_visibility="private")
        clear.click(lambda: (None, [], "Your gallery is empty.", [], ""), None,
                    [session, grid, status, results, summary], api_visibility="private")
