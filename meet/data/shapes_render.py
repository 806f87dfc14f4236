"""Making one Shapes example from a seed: its scene, its five captions, its pixels.

Kept apart from :mod:`meet.data.shapes` (vocabulary, ground-truth semantics, parsing,
writing, CLI) so the semantics read without the drawing code. Each image ``index``
gets its own randomness from ``SeedSequence([seed, index])`` (:func:`make_record`):
a ``random.Random`` for the discrete choices (scene, captions) and a numpy
``Generator`` for the pixels, each drawn in a fixed order. So a data set is
byte-identical however its images are spread over worker processes.

How pixels are made (why it is fast, about a millisecond per 64-px image, and
antialiased):

1. the background is built at final size in numpy: a light base colour plus, at
   random, nothing, faint stripes or faint noise (texture on the background only);
2. each object's coverage mask is drawn with ``PIL.ImageDraw`` over its own bounding
   box only, ``SUPERSAMPLE`` times larger, then box-filtered down (``Image.reduce``);
3. the object colour is blended over the background with that coverage (objects never
   overlap), and the PNG is written directly with zlib.

The palette and the drawers are keyed by the names in ``shapes.COLOURS`` and
``shapes.SHAPES`` (the single source of the vocabulary); ``tests/test_shapes.py``
checks that the keys agree.
"""

from __future__ import annotations

import math
import random
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from meet.data.shapes import (CAPTIONS_PER_IMAGE, COLOURS, COUNT_WORDS, FAMILIES,
                              FAMILY_WEIGHTS, MAX_OBJECTS, NOUNS, POSITION_JITTER,
                              RELATION_PHRASES, SHAPES, SIZE_WORDS, SIZES, tokenize,
                              with_article)


# ---------------------------------------------------------------- scenes and captions
# Discrete choices use ``random.Random`` (the stdlib generator): a scalar draw costs a
# tenth of numpy's, and only ``random()`` is used, whose stream Python guarantees stable.

def _pick(rand: random.Random, options: Sequence):
    return options[int(rand.random() * len(options))]


def _sample(rand: random.Random, n_items: int, k: int) -> list[int]:
    """``k`` distinct indices of ``range(n_items)`` in random order (partial shuffle)."""
    items = list(range(n_items))
    for i in range(k):
        j = i + int(rand.random() * (n_items - i))
        items[i], items[j] = items[j], items[i]
    return items[:k]


def sample_scene(rand: random.Random, image_size: int) -> dict:
    """Draw 1-3 objects on distinct grid rows and columns; centres rounded to 0.1 px
    (the stored values are the truth: relations are decided on them)."""
    n_objects = 1 + int(rand.random() * MAX_OBJECTS)
    columns = _sample(rand, 3, n_objects)
    rows = _sample(rand, 3, n_objects)
    cell = image_size / 3.0
    objects = []
    for column, row in zip(columns, rows):
        dx, dy = ((2.0 * rand.random() - 1.0) * POSITION_JITTER * cell for _ in range(2))
        objects.append({"shape": _pick(rand, SHAPES), "colour": _pick(rand, COLOURS),
                        "size": _pick(rand, SIZES),
                        "x": round((column + 0.5) * cell + dx, 1),
                        "y": round((row + 0.5) * cell + dy, 1)})
    return {"objects": objects}


def _pattern(obj: dict, shape: bool = True, colour: bool = True, size: bool = True) -> dict:
    return {"shape": obj["shape"] if shape else None,
            "colour": obj["colour"] if colour else None,
            "size": obj["size"] if size else None}


def _np_text(pattern: dict, rand: random.Random, synonyms: bool = False) -> str:
    """"a large red circle" for a pattern; a missing shape becomes a generic noun."""
    words = []
    if pattern["size"] is not None:
        choices = SIZE_WORDS[pattern["size"]]
        words.append(_pick(rand, choices) if synonyms else choices[0])
    if pattern["colour"] is not None:
        words.append(pattern["colour"])
    words.append(pattern["shape"] or _pick(rand, NOUNS))
    return with_article(words)


def _facts(family: str, objects: list[dict], relation: dict | None = None,
           count: int | None = None, exact: bool = False) -> dict:
    return {"family": family, "objects": objects, "relation": relation, "count": count,
            "exact": exact}


def _caption_all_objects(objects: list[dict], rand: random.Random) -> tuple[str, dict]:
    with_size = rand.random() < 0.7
    order = _sample(rand, len(objects), len(objects))
    patterns = [_pattern(objects[i], size=with_size) for i in order]
    phrases = [_np_text(p, rand) for p in patterns]
    if len(phrases) == 1:  # "only"/"just"/"alone" mark exactness for a single object
        raw = _pick(rand, ("only {}", "just {}", "{} alone")).format(phrases[0])
    else:
        raw = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return raw, _facts("all_objects", patterns, exact=True)


def _caption_one_object(objects: list[dict], rand: random.Random) -> tuple[str, dict]:
    obj = _pick(rand, objects)
    with_colour = rand.random() < 0.85
    with_size = rand.random() < 0.5 or not with_colour
    pattern = _pattern(obj, colour=with_colour, size=with_size)
    return _np_text(pattern, rand), _facts("one_object", [pattern])


def _caption_relation(objects: list[dict], rand: random.Random) -> tuple[str, dict]:
    a, b = (objects[i] for i in _sample(rand, len(objects), 2))
    if rand.random() < 0.5:
        relation = "left_of" if a["x"] < b["x"] else "right_of"
    else:
        relation = "above" if a["y"] < b["y"] else "below"
    patterns = [_pattern(o, colour=rand.random() < 0.8, size=rand.random() < 0.25) for o in (a, b)]
    first, second = (_np_text(p, rand) for p in patterns)
    raw = f"{first} {RELATION_PHRASES[relation]} {second}"
    return raw, _facts("relation", patterns,
                       relation={"subject": 0, "object": 1, "relation": relation})


def _caption_count(objects: list[dict], rand: random.Random) -> tuple[str, dict]:
    n_objects = len(objects)
    noun = _pick(rand, NOUNS) + ("s" if n_objects > 1 else "")
    raw = f"{_pick(rand, COUNT_WORDS[n_objects])} {noun}"
    if rand.random() < 0.3:
        raw = ("there is " if n_objects == 1 else "there are ") + raw
    return raw, _facts("count", [], count=n_objects)


def _caption_attribute(objects: list[dict], rand: random.Random) -> tuple[str, dict]:
    obj = _pick(rand, objects)
    kind = _pick(rand, ("shape", "colour", "size"))
    pattern = _pattern(obj, shape=kind == "shape", colour=kind == "colour", size=kind == "size")
    noun = _pick(rand, NOUNS)
    if kind == "colour":
        raw = _pick(rand, (f"something {obj['colour']}", f"something that is {obj['colour']}",
                           with_article([obj["colour"], noun])))
    elif kind == "size":
        word = _pick(rand, SIZE_WORDS[obj["size"]])
        raw = _pick(rand, (with_article([word, noun]), f"something {word}"))
    else:
        raw = with_article([obj["shape"]])
    return raw, _facts("attribute", [pattern])


def _caption_rephrased(objects: list[dict], rand: random.Random) -> tuple[str, dict]:
    obj = _pick(rand, objects)
    shape, colour = obj["shape"], obj["colour"]
    size_word = _pick(rand, SIZE_WORDS[obj["size"]])
    template = int(rand.random() * (7 if len(objects) > 1 else 6))
    if template == 0:
        return ("there is " + _np_text(_pattern(obj), rand, synonyms=True),
                _facts("rephrased", [_pattern(obj)]))
    if template == 1:
        return (with_article([shape, "that", "is", colour]),
                _facts("rephrased", [_pattern(obj, size=False)]))
    if template == 2:
        return (with_article([colour, shape, "that", "is", size_word]),
                _facts("rephrased", [_pattern(obj)]))
    if template == 3:
        return with_article([size_word, shape]), _facts("rephrased", [_pattern(obj, colour=False)])
    if template == 4:
        return (with_article([shape, "that", "is", size_word, "and", colour]),
                _facts("rephrased", [_pattern(obj)]))
    if template == 5:
        return (with_article([size_word, colour, _pick(rand, NOUNS)]),
                _facts("rephrased", [_pattern(obj, shape=False)]))
    first, second = (objects[i] for i in _sample(rand, len(objects), 2))
    patterns = [_pattern(first, size=False), _pattern(second, size=False)]
    raw = f"{_np_text(patterns[0], rand)} with {_np_text(patterns[1], rand)}"
    return raw, _facts("rephrased", patterns)


_GENERATORS = {"all_objects": _caption_all_objects, "one_object": _caption_one_object,
               "relation": _caption_relation, "count": _caption_count,
               "attribute": _caption_attribute, "rephrased": _caption_rephrased}


def _pick_family(rand: random.Random, n_objects: int) -> str:
    weights = [0.0 if (f == "relation" and n_objects < 2) else FAMILY_WEIGHTS[f] for f in FAMILIES]
    threshold = rand.random() * sum(weights)
    for family, weight in zip(FAMILIES, weights):
        threshold -= weight
        if threshold < 0:
            return family
    return FAMILIES[-1]


def make_captions(scene: dict, rand: random.Random,
                  n_captions: int = CAPTIONS_PER_IMAGE) -> list[tuple[str, dict]]:
    """``n_captions`` (raw, facts) pairs true of ``scene``: first ``all_objects``, then
    families drawn with :data:`FAMILY_WEIGHTS`, avoiding repeats within the image."""
    objects = scene["objects"]
    captions = [_caption_all_objects(objects, rand)]
    seen = {captions[0][0]}
    while len(captions) < n_captions:
        for _ in range(20):  # a 1-object scene has few distinct captions; retry a little
            raw, facts = _GENERATORS[_pick_family(rand, len(objects))](objects, rand)
            if raw not in seen:
                break
        seen.add(raw)
        captions.append((raw, facts))
    return captions


# ---------------------------------------------------------------- pixels

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


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode ``(H, W, 3)`` uint8 as an 8-bit RGB PNG, written directly (PIL's
    encoder costs more than the drawing for 64-pixel images).

    Every scanline uses the "Sub" filter (difference to the pixel on the left), which
    turns the flat or striped backgrounds into runs that zlib compresses well. Fixed
    settings, so the bytes are deterministic for a given zlib.
    """
    height, width, _ = pixels.shape
    rows = pixels.reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = 1  # filter type Sub
    filtered[:, 1:4] = rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=filtered[:, 4:])  # wraps modulo 256
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(filtered.tobytes(), PNG_COMPRESS_LEVEL))
            + _png_chunk(b"IEND", b""))


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
