"""The named API endpoints, for ``gradio_client`` and scripts.

``/search_text`` takes (query text, k) and ``/search_image`` (an image file, k, target);
both run the checkpoint's default cascade (without the trace and the dense-only ranking the
page shows) and return JSON
``{"results": [{"id", "score", "rank"}...], "stages": {...}}``, best first, ``id`` being
the image's file name in the data set or the caption's sentence id. ``target`` is
``captions`` (the default: image -> captions, ``meet`` mode) or ``images`` (similar images
of the gallery, ``cascade`` mode; what an image-only gallery offers). Bad input raises a
``gr.Error`` with the reason, which the client receives as an ``AppError``.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio import FileData

from meet.errors import ConfigError

from app.feedback import guarded
from app.search import image_search, image_to_images, results_json, text_search
from app.state import AppState


def search_text_json(state: AppState, query: str, k: int = 10) -> dict[str, Any]:
    """Text -> images: the top ``k`` gallery images for ``query``."""
    return results_json(state, text_search(state, query, k, explain=False))


def search_image_json(state: AppState, image: Any, k: int = 10, target: str = "captions") -> dict[str, Any]:
    """Image -> captions (``target="captions"``) or similar images (``"images"``): the top ``k``."""
    path = image.get("path") if isinstance(image, dict) else getattr(image, "path", image)
    if target == "images":
        return results_json(state, image_to_images(state, path, k, explain=False))
    if target != "captions":
        raise ConfigError(f"target {target!r} is neither 'captions' nor 'images'")
    return results_json(state, image_search(state, path, k, explain=False))


def register(state: AppState) -> None:
    """Add both endpoints to the Blocks being built (no UI of their own)."""
    def search_text(query: str, k: int = 10) -> dict:
        """Text -> images: the top k gallery images for a caption."""
        return search_text_json(state, query, k)

    def search_image(image: FileData, k: int = 10, target: str = "captions") -> dict:
        """Image -> the top k gallery captions (target="captions") or similar gallery images ("images")."""
        return search_image_json(state, image, k, target)

    gr.api(guarded(search_text, outputs=1, in_page=False), api_name="search_text")
    gr.api(guarded(search_image, outputs=1, in_page=False), api_name="search_image")
