"""What one Shapes image shows and says: its scene (1-3 objects on a 3x3 grid) and its
five captions with their facts.

Discrete choices use ``random.Random`` (the stdlib generator): a scalar draw costs a
tenth of numpy's, and only ``random()`` is used, whose stream Python guarantees stable.
The caller (:func:`meet.data.shapes.render.make_record`) seeds it per image.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from meet.data.shapes.vocab import (CAPTIONS_PER_IMAGE, COLOURS, COUNT_WORDS, FAMILIES,
                                    FAMILY_WEIGHTS, MAX_OBJECTS, NOUNS, POSITION_JITTER,
                                    RELATION_PHRASES, SHAPES, SIZE_WORDS, SIZES, with_article)


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
