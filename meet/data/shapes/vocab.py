"""The Shapes vocabulary: shapes, colours, sizes, caption families and relations, the
words captions use for them, and the tokenizer.

The single source of names: the ground truth (:mod:`.relevance`), the query parser
(:mod:`.query`), the caption sampler (:mod:`.captions`) and the renderer
(:mod:`.render`) all key their tables by these tuples.
"""

from __future__ import annotations

import re

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "gray")
SIZES = ("small", "large")
FAMILIES = ("all_objects", "one_object", "relation", "count", "attribute", "rephrased")
RELATIONS = ("left_of", "right_of", "above", "below")

SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
"""Synonyms per size; the first is the canonical word (used outside ``rephrased``)."""
NOUNS = ("shape", "object", "thing")
"""Generic nouns that stand for "any object"."""
RELATION_PHRASES = {"left_of": "to the left of", "right_of": "to the right of",
                    "above": "above", "below": "below"}
COUNT_WORDS = {1: ("a single", "one"), 2: ("two",), 3: ("three",)}

MAX_OBJECTS = 3
CAPTIONS_PER_IMAGE = 5
POSITION_JITTER = 0.05
"""Largest offset of an object centre from its cell centre, in cells."""

FAMILY_WEIGHTS = {"all_objects": 0.5, "one_object": 2.0, "relation": 2.0, "count": 1.0,
                  "attribute": 1.5, "rephrased": 2.0}
"""Sampling weights of captions 2-5 (caption 1 is always ``all_objects``, so every
image has one caption that pins it down up to layout)."""


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens without punctuation (the Karpathy ``tokens`` field)."""
    return re.findall(r"[a-z]+", text.lower())


def with_article(words: list[str]) -> str:
    """``["orange", "star"]`` -> ``"an orange star"``."""
    return ("an " if words[0][0] in "aeiou" else "a ") + " ".join(words)


def attribute_queries() -> dict[str, list[str]]:
    """One-attribute probes by attribute: "something red", "a circle", "something small"
    (the easy end of the P@10 probes: each fits a large share of the images)."""
    return {"colour": [f"something {c}" for c in COLOURS],
            "shape": [with_article([s]) for s in SHAPES],
            "size": [f"something {SIZE_WORDS[z][0]}" for z in SIZES]}


def single_object_queries() -> list[str]:
    """Every "a {colour} {shape}" and "a {size} {colour} {shape}" query (P@10 probes)."""
    queries = [with_article([c, s]) for c in COLOURS for s in SHAPES]
    queries += [with_article([SIZE_WORDS[z][0], c, s]) for z in SIZES for c in COLOURS
                for s in SHAPES]
    return queries
