"""One search, end to end: validate the input, encode the query, run the cascade with a
trace and the dense-only ranking beside it, and attach the ground truth when there is one.

Plain functions of the loaded :class:`~app.state.AppState`; the tabs and the API endpoints
only format what these return. Input errors are :class:`~meet.errors.MEETError`s whose
text the UI shows as is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from meet.config import CascadeConfig, SearchMode, choices
from meet.data.images import open_image
from meet.errors import ConfigError, DataError, ImageError
from meet.inference import Encoded
from meet.search import GalleryIndex, SearchResult

from app.state import AppState

SEARCH_MODES = ("meet", "cascade", *(m for m in choices(SearchMode) if m not in ("meet", "cascade")))
"""The modes offered, MEET's own first."""


@dataclass
class SearchOutcome:
    """A finished query: the chosen mode's top k (with its trace), the dense top k beside
    it, and which gallery items are truly relevant when that is known."""

    direction: str
    """``t2i`` (a caption over the images), ``i2t`` (an image over the captions) or ``i2i`` (an
    image over the images: the image gallery's cascade, its own settings, an image query)."""
    query_label: str
    mode: str
    cascade: CascadeConfig
    result: SearchResult
    dense: SearchResult | None
    """The dense-only ranking beside the result (None when not asked for: the API)."""
    relevant: np.ndarray | None
    """bool (n_gallery,) or None."""
    ground_truth: str
    """Where ``relevant`` comes from, in words ("" when unknown)."""
    seconds: dict[str, float]
    query_dense: np.ndarray
    """float32 (dim,) the query's dense embedding (for the analysis views)."""

    @property
    def trace(self) -> Any:
        return self.result.traces[0]

    @property
    def gallery_side(self) -> str:
        return "text" if self.direction == "i2t" else "image"


def cascade_from_controls(base: CascadeConfig, direction: str, hamming_rate: float | None = None,
                          pq_rate: float | None = None, top_z: int | None = None,
                          alpha: float | None = None, beta: float | None = None) -> CascadeConfig:
    """The checkpoint's cascade settings with the sliders' values for ``direction``.

    Rates are fractions here (R of the gallery, q of R), as on the sliders; anything
    outside (0, 1], a negative top-z, or a weight outside [-10, 10] is refused. ``i2i``
    searches the image gallery, so it sets the image gallery's (``t2i``) fields.
    """
    direction = "t2i" if direction == "i2i" else direction
    changes: dict[str, Any] = {}
    for name, value in (("hamming_rate", hamming_rate), ("pq_rate", pq_rate)):
        if value is None:
            continue
        if not _finite(value) or not 0 < float(value) <= 1:
            raise ConfigError(f"{name.replace('_', ' ')} {value!r} must be a fraction in (0, 1]",
                              fix="R is the share of the gallery kept, q the share of R kept")
        changes[f"{name}_{direction}"] = float(value)
    if top_z is not None:
        if not _finite(top_z) or float(top_z) != int(top_z) or not 0 <= int(top_z) <= 1000:
            raise ConfigError(f"top-z {top_z!r} must be a whole number in 0-1000")
        changes[f"top_z_{direction}"] = int(top_z)
    for name, value in (("alpha", alpha), ("beta", beta)):
        if value is None:
            continue
        if not _finite(value) or not -10 <= float(value) <= 10:
            raise ConfigError(f"{name} {value!r} must be a number in [-10, 10]")
        changes[name] = float(value)
    return replace(base, **changes)


def _finite(value: Any) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


def check_k(state: AppState, k: Any) -> int:
    if not _finite(k) or float(k) != int(k) or not 1 <= int(k) <= state.settings.max_k:
        raise ConfigError(f"k={k!r} must be a whole number from 1 to {state.settings.max_k}")
    return int(k)


def check_mode(mode: str) -> str:
    if mode not in SEARCH_MODES:
        raise ConfigError(f"unknown mode {mode!r}", fix=f"choose one of {', '.join(SEARCH_MODES)}")
    return mode


def text_search(state: AppState, query: Any, k: int = 10, cascade: CascadeConfig | None = None,
                mode: str = "meet", explain: bool = True) -> SearchOutcome:
    """A typed caption over the image gallery. ``explain``: also record the trace and run
    the dense-only ranking beside it (the page shows both; the API returns neither)."""
    if not isinstance(query, str) or not query.strip():
        raise DataError("the query is empty", fix="type a caption, e.g. 'a red circle left of a blue square'")
    text = " ".join(query.split())
    limit = state.settings.max_query_chars
    if len(text) > limit:
        raise DataError(f"the query has {len(text):,} characters; the limit is {limit:,}",
                        fix="shorten it to one caption")
    started = time.perf_counter()
    encoded = state.model.encode_texts([text])
    relevant, note = _text_ground_truth(state, text)
    return _run(state, "t2i", f"“{text}”", encoded, k, cascade, mode, relevant, note,
                time.perf_counter() - started, explain)


def image_search(state: AppState, image: Any, k: int = 10, cascade: CascadeConfig | None = None,
                 mode: str = "meet", explain: bool = True) -> SearchOutcome:
    """An image over the caption gallery: a gallery position (int), an uploaded file's
    path, or a PIL image / RGB(A) array (the sketchpad). ``explain`` as for
    :func:`text_search`."""
    started = time.perf_counter()
    if state.gallery.texts.n_items == 0:
        raise DataError("this gallery has no captions to search",
                        fix="search its images with the image instead (Image → images), or open the app with "
                            "--captions (or a Karpathy-JSON data set)")
    encoded, relevant, note, label = _image_query(state, image)
    return _run(state, "i2t", label, encoded, k, cascade, mode, relevant, note,
                time.perf_counter() - started, explain)


def image_to_images(state: AppState, image: Any, k: int = 10, cascade: CascadeConfig | None = None,
                    mode: str = "cascade", explain: bool = True) -> SearchOutcome:
    """An image over the image gallery (similar pictures), through the image gallery's own
    cascade: the query's hash feature comes from the image head, and the asymmetric or
    symmetric Hamming score, the quantization filter and the dense re-rank compare it with
    the images' codes as they would a caption's. ``meet`` mode's complementarity reads
    each image's ranking of the captions, so the plain ``cascade`` is the default here."""
    started = time.perf_counter()
    encoded, _, _, label = _image_query(state, image)
    return _run(state, "i2i", label, encoded, k, cascade, mode, None, "", time.perf_counter() - started,
                explain)


def _image_query(state: AppState, image: Any) -> tuple[Encoded, np.ndarray | None, str, str]:
    """(encoding, its captions' ground truth, where that comes from, label) of an image query."""
    gallery = state.gallery
    if isinstance(image, float) and image.is_integer():  # a gr.Number value
        image = int(image)
    if isinstance(image, (int, np.integer)) and not isinstance(image, bool):
        position = int(image)
        if not 0 <= position < gallery.dataset.n_images:
            raise DataError(f"gallery image #{position} does not exist (0-{gallery.dataset.n_images - 1})")
        encoded = state.model.encode_dataset_images(gallery.dataset, [position], batch_size=1)
        relevant, note = _image_ground_truth(state, position)
        label = f"gallery image {gallery.image_labels[position]}"
    elif gallery.reads_region_features:
        raise ImageError("this model reads precomputed region features, which cannot be computed from a "
                         "picture here", fix="search with a gallery image (click it, or give its number)")
    else:
        pil = _decode_query_image(state, image)
        encoded = state.model.encode_images([pil])
        relevant, note, label = None, "", "your image"
    return encoded, relevant, note, label


def _decode_query_image(state: AppState, image: Any) -> Image.Image:
    if image is None:
        raise ImageError("no image given", fix="pick a gallery image, upload one, or draw one")
    if isinstance(image, dict):  # the sketchpad's editor value
        image = image.get("composite")
        if image is None:
            raise ImageError("the sketchpad is empty", fix="draw something first")
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or image.size == 0:
            raise ImageError(f"cannot read an image array of shape {image.shape}")
        image = Image.fromarray(image.astype(np.uint8))
    if isinstance(image, (str, Path)):
        path = Path(image)
        limit = state.settings.max_upload_mb * 1024 * 1024
        if path.is_file() and path.stat().st_size > limit:
            raise ImageError(f"the file is {path.stat().st_size / 2**20:.1f} MB; the limit is "
                             f"{state.settings.max_upload_mb} MB", fix="upload a smaller image")
    return open_image(image, max_pixels=state.settings.max_upload_pixels)


def _text_ground_truth(state: AppState, text: str) -> tuple[np.ndarray | None, str]:
    gallery = state.gallery
    if gallery.is_shapes:
        from meet.data.shapes import parse_caption, relevance_matrix
        facts = parse_caption(text)
        if facts is None:
            return None, ("no ground truth: this query is outside the Shapes caption grammar "
                          "(try the examples)")
        relevant = (gallery.truth.of_facts([facts])[0] if gallery.has_ground_truth  # scenes encoded once
                    else relevance_matrix([facts], gallery.dataset.scenes)[0])
        return (relevant,
                "Shapes ground truth: the images whose scene makes this caption true")
    matches = state.cached("caption positions", lambda: _caption_positions(gallery.dataset.captions)).get(text)
    if matches:
        relevant = np.zeros(gallery.dataset.n_images, bool)
        relevant[gallery.dataset.caption_image[matches]] = True
        return relevant, "the data set's pairing: the image(s) this exact caption belongs to"
    return None, ""


def _caption_positions(captions: list[str]) -> dict[str, list[int]]:
    """Normalised caption text -> its positions (built once, then a dict lookup per query)."""
    positions: dict[str, list[int]] = {}
    for i, caption in enumerate(captions):
        positions.setdefault(" ".join(caption.split()), []).append(i)
    return positions


def _image_ground_truth(state: AppState, position: int) -> tuple[np.ndarray, str]:
    gallery = state.gallery
    if gallery.has_ground_truth:
        return (gallery.truth.images([position])[0],
                "Shapes ground truth: every caption true of this scene, not just its own five")
    return (gallery.dataset.caption_image == position,
            "the data set's pairing: this image's own captions (others that fit count as misses)")


def _run(state: AppState, direction: str, label: str, encoded: Encoded, k: int,
         cascade: CascadeConfig | None, mode: str, relevant: np.ndarray | None, note: str,
         encode_seconds: float, explain: bool = True) -> SearchOutcome:
    k = check_k(state, k)
    mode = check_mode(mode)
    cfg = cascade or state.cascade
    index = gallery_index(state, direction)
    k = min(k, index.n_items)
    started = time.perf_counter()
    result = index.search(encoded, k=k, mode=mode, cascade=cfg, trace=explain)
    search_seconds = time.perf_counter() - started
    started = time.perf_counter()
    dense = index.search(encoded, k=k, mode="dense", cascade=cfg) if explain else None
    dense_seconds = time.perf_counter() - started if explain else 0.0
    seconds = {"encode": encode_seconds, "search": search_seconds, **({"dense": dense_seconds} if explain else {}),
               **{f"stage {name}": value for name, value in result.timings.items() if value}}
    return SearchOutcome(direction, label, mode, cfg, result, dense, relevant, note, seconds,
                         np.asarray(encoded.dense[0], np.float32))


def gallery_index(state: AppState, direction: str) -> GalleryIndex:
    return state.gallery.texts if direction == "i2t" else state.gallery.images


def results_json(state: AppState, outcome: SearchOutcome) -> dict[str, Any]:
    """The API's answer: ``{"results": [{"id", "score", "rank"}...], "stages": {...}}``.

    ``id``: the image's file name as in the data set, or the caption's sentence id;
    results best first; ``stages``: items per query after each stage."""
    index = gallery_index(state, outcome.direction)
    ids, scores = outcome.result.ids[0], outcome.result.scores[0]
    results = [{"id": index.ids[int(pos)], "score": round(float(score), 6), "rank": rank + 1}
               for rank, (pos, score) in enumerate(zip(ids, scores)) if pos >= 0]
    if outcome.direction == "i2t":
        for item, pos in zip(results, ids):
            item["caption"] = state.gallery.dataset.captions[int(pos)]
    return {"query": outcome.query_label, "direction": outcome.direction, "mode": outcome.mode,
            "results": results, "stages": dict(outcome.result.stage_counts),
            "ms": {name: round(value * 1000, 3) for name, value in outcome.seconds.items()}}
