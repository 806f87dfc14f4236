"""Making one Shapes example from a seed: its pixels, its PNG file, its Karpathy record.

Each image ``index`` gets its own randomness from ``SeedSequence([seed, index])``
(:func:`make_record`): a ``random.Random`` for the discrete choices (scene and captions,
:mod:`meet.data.shapes.captions`) and a numpy ``Generator`` for the pixels, each drawn
in a fixed order. So a data set is byte-identical however its images are spread over
worker processes.

How pixels are made (why it is fast, under a millisecond per 64-px image, and
antialiased):

1. the background is built at final size in numpy: a light base colour plus, at
   random, nothing, faint stripes or faint noise (texture on the background only);
2. each object's coverage mask is drawn with ``PIL.ImageDraw`` over its own bounding
   box only, ``SUPERSAMPLE`` times larger, then box-filtered down (``Image.reduce``);
3. the object colour is blended over the background with that coverage (objects never
   overlap), and the PNG is encoded by Pillow (:func:`png_bytes`).

The palette and the drawers are keyed by the names in ``vocab.COLOURS`` and
``vocab.SHAPES`` (the single source of the vocabulary); ``tests/test_shapes.py``
checks that the keys agree.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from meet.data.shapes.captions import make_captions, sample_scene
from meet.data.shapes.vocab import CAPTIONS_PER_IMAGE, tokenize


SUPERSAMPLE = 4
"""Drawing canvas scale; the image is box-filtered down by this factor."""

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "orange": (245, 130, 10),
    "yellow": (230, 200, 0),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (130, 40, 190),
    "pink": (245, 110, 190),
    "gray": (115, 115, 115),
}
"""Object colours, chosen far apart in RGB and dark or saturated enough to stand out
on the light backgrounds; each object gets a jitter of at most ``COLOUR_JITTER``."""

COLOUR_JITTER = 10
"""Largest per-channel change of an object colour (keeps colours clearly distinct)."""

RADIUS_FRACTION = {"small": 0.24, "large": 0.40}
"""Object radius as a fraction of the grid cell (image_size / 3); with the position
jitter of the scene sampler (<= 0.05 cell) every object stays inside its own cell."""

RADIUS_JITTER = 0.05
"""Relative jitter of the radius, small enough that sizes never overlap."""

PNG_COMPRESS_LEVEL = 1
"""zlib level of the PNG data: level 1 encodes about twice as fast as zlib's default 6
on these images, for files about 20% larger (about 2.9 kB at 64 px)."""


def _circle(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill) -> None:
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)


def _square(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill) -> None:
    half = r * 0.85  # a square of side 1.7 r has about the area of the circle
    draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=fill)


def _triangle(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill) -> None:
    # Equilateral, pointing up, centred on its bounding box rather than its centroid
    # so that it covers the same vertical band as the other shapes.
    r = r * 1.1
    height = 1.5 * r
    top = cy - height / 2
    half_base = r * math.sqrt(3) / 2
    draw.polygon([(cx, top), (cx - half_base, top + height), (cx + half_base, top + height)],
                 fill=fill)


def _star(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill) -> None:
    r = r * 1.1
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else r * 0.45
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle) + 0.1 * r))
    draw.polygon(points, fill=fill)


def _hexagon(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill) -> None:
    points = [(cx + r * math.cos(k * math.pi / 3), cy + r * math.sin(k * math.pi / 3))
              for k in range(6)]
    draw.polygon(points, fill=fill)


def _cross(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill) -> None:
    arm = r * 0.36
    draw.rectangle((cx - r, cy - arm, cx + r, cy + arm), fill=fill)
    draw.rectangle((cx - arm, cy - r, cx + arm, cy + r), fill=fill)


DRAWERS: dict[str, Callable[..., None]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "hexagon": _hexagon,
    "cross": _cross,
}
"""One drawing function per shape name: ``draw(canvas, cx, cy, radius, fill)``."""


def _background(image_size: int, rng: np.random.Generator) -> np.ndarray:
    """A light, faintly textured background, ``(image_size, image_size, 3)`` float32."""
    base = (rng.uniform(215.0, 250.0) + rng.uniform(-8.0, 8.0, size=3)).astype(np.float32)
    texture = int(rng.integers(3))  # 0 plain, 1 stripes, 2 noise
    if texture == 1:
        period = rng.uniform(4.0, 12.0)
        angle = rng.uniform(0.0, math.pi)
        coords = np.arange(image_size, dtype=np.float32)
        phase = (coords[None, :] * math.cos(angle) + coords[:, None] * math.sin(angle)) / period
        shade = (rng.uniform(3.0, 7.0) * np.sin(2 * math.pi * phase)).astype(np.float32)
        return base + shade[:, :, None]
    if texture == 2:
        noise = rng.normal(0.0, rng.uniform(1.5, 4.0), size=(image_size, image_size, 1))
        return base + noise.astype(np.float32)
    return np.broadcast_to(base, (image_size, image_size, 3)).copy()


def _coverage(shape: str, cx: float, cy: float, radius: float,
              box: tuple[int, int, int, int]) -> np.ndarray:
    """Antialiased coverage in [0, 1] of one shape over the pixel box
    ``(x0, y0, x1, y1)``: drawn ``SUPERSAMPLE`` times larger, then box-filtered."""
    x0, y0, x1, y1 = box
    canvas = Image.new("L", ((x1 - x0) * SUPERSAMPLE, (y1 - y0) * SUPERSAMPLE), 0)
    DRAWERS[shape](ImageDraw.Draw(canvas), (cx - x0) * SUPERSAMPLE, (cy - y0) * SUPERSAMPLE,
                   radius * SUPERSAMPLE, 255)
    return np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32) * (1.0 / 255.0)


def render_scene(scene: dict, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``scene`` (``{"objects": [{"shape", "colour", "size", "x", "y"}, ...]}``,
    centres in pixels of the final image) and return ``(image_size, image_size, 3)`` uint8.

    ``rng`` supplies the background, the colour jitter and the radius jitter, in a fixed
    order, so the same scene and generator state give the same pixels. Each object is
    drawn only over its own bounding box (objects never overlap: each stays inside its
    grid cell), which keeps the supersampled canvases small.
    """
    pixels = _background(image_size, rng)
    cell = image_size / 3.0
    for obj in scene["objects"]:
        jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
        fill = np.clip(np.asarray(COLOUR_RGB[obj["colour"]]) + jitter, 0, 255).astype(np.float32)
        radius = RADIUS_FRACTION[obj["size"]] * cell * (1.0 + rng.uniform(-RADIUS_JITTER,
                                                                          RADIUS_JITTER))
        reach = radius * 1.25 + 1.0  # star and triangle reach 1.1 r (+ the star's shift)
        x0, y0 = max(0, int(obj["x"] - reach)), max(0, int(obj["y"] - reach))
        x1 = min(image_size, int(math.ceil(obj["x"] + reach)))
        y1 = min(image_size, int(math.ceil(obj["y"] + reach)))
        alpha = _coverage(obj["shape"], obj["x"], obj["y"], radius, (x0, y0, x1, y1))[:, :, None]
        patch = pixels[y0:y1, x0:x1]
        patch += alpha * (fill - patch)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode ``(H, W, 3)`` uint8 as an 8-bit RGB PNG with Pillow.

    A fixed ``compress_level`` and no metadata make the bytes deterministic for a given
    Pillow/zlib. (A hand-written zlib writer measured 0.20 vs 0.35 ms per 64 px image,
    about 15% of the whole per-image cost with rendering: not worth owning a PNG encoder.)
    """
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), mode="RGB").save(
        buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


# ---------------------------------------------------------------- one record, one chunk

def split_of(index: int, n_train: int, n_val: int) -> str:
    """Images are ordered train, then val, then test."""
    return "train" if index < n_train else ("val" if index < n_train + n_val else "test")


def make_record(seed: int, index: int, image_size: int, split: str,
                images_dir: Path | None) -> dict:
    """Build image ``index`` (its Karpathy record) and, if ``images_dir`` is given,
    write its PNG there. The generator is seeded by ``(seed, index)`` alone."""
    state = np.random.SeedSequence([seed, index]).generate_state(4)
    rand = random.Random(int(state[0]) << 32 | int(state[1]))
    scene = sample_scene(rand, image_size)
    captions = make_captions(scene, rand)
    filename = f"{index:06d}.png"
    if images_dir is not None:
        pixels = render_scene(scene, image_size, np.random.default_rng(state[2:]))
        (images_dir / filename).write_bytes(png_bytes(pixels))
    sentids = [CAPTIONS_PER_IMAGE * index + j for j in range(len(captions))]
    sentences = [{"raw": raw, "tokens": tokenize(raw), "sentid": sentid, "imgid": index,
                  "facts": facts} for sentid, (raw, facts) in zip(sentids, captions)]
    return {"filename": filename, "filepath": "images", "split": split, "imgid": index,
            "sentids": sentids, "scene": scene, "sentences": sentences}


def render_chunk(task: tuple[str, int, int, int, int, int, int]) -> list[dict]:
    """Worker entry: ``(images_dir, start, stop, seed, image_size, n_train, n_val)`` ->
    the records of images ``start..stop-1`` (PNGs written as a side effect)."""
    images_dir, start, stop, seed, image_size, n_train, n_val = task
    folder = Path(images_dir)
    return [make_record(seed, index, image_size, split_of(index, n_train, n_val), folder)
            for index in range(start, stop)]
