"""The Shapes benchmark: rendered scenes of coloured shapes, five captions each, with
ground truth for every caption-image pair.

Why it exists: no image-text data can be downloaded on the build machines, and MEET is
about *redundancy* (captions that truly fit many images, the "misleading negatives" of
the 5-caption protocol). Shapes makes that redundancy exact: each image stores its scene
(objects with shape, colour, size and centre) and each caption the facts it asserts, so
:func:`is_relevant` / :func:`relevance_matrix` say which pairs match.

Layout: the Karpathy JSON used by COCO/Flickr30K (``dataset.json`` + ``images/*.png``),
plus ``scene`` per image and ``facts`` per sentence, so one loader serves both.

Scenes: 1 to 3 objects placed in a 3x3 grid of cells with distinct rows *and* distinct
columns (a partial permutation) plus a jitter of at most ``POSITION_JITTER`` cells, so
any two objects differ by at least 0.9 cell in x and in y: "left of" and "above" are
decidable for every pair. y grows downwards; "above" means a smaller y.

Facts (one per caption)::

    {"family": "relation",
     "objects": [{"shape": "circle", "colour": "red", "size": None}, ...],   # 0-3 patterns
     "relation": {"subject": 0, "object": 1, "relation": "left_of"} | None,
     "count": 2 | None,       # exact number of objects in the scene
     "exact": False}          # True: the caption lists all objects of the scene

A pattern attribute ``None`` matches anything. A caption is relevant to a scene iff an
injective assignment of its patterns to scene objects matches every non-null attribute,
satisfies the relation, and the scene has ``count`` objects (if given) and exactly
``len(objects)`` objects (if ``exact``).

This module holds the vocabulary, the ground-truth semantics, query parsing and the
writing (:func:`generate`, :func:`ensure_shapes`, ``python -m meet.data.shapes``); how
one example (scene, captions, pixels) is made lives in :mod:`meet.data.shapes_render`,
imported lazily because it imports this module's vocabulary.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import numbers
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meet.errors import ConfigError, DataError, MEETError

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


def single_object_queries() -> list[str]:
    """Every "a {colour} {shape}" and "a {size} {colour} {shape}" query (P@10 probes)."""
    queries = [with_article([c, s]) for c in COLOURS for s in SHAPES]
    queries += [with_article([SIZE_WORDS[z][0], c, s]) for z in SIZES for c in COLOURS
                for s in SHAPES]
    return queries


def caption_facts_and_scenes(images: list[dict]) -> tuple[list[dict], list[dict], np.ndarray]:
    """From Karpathy records with Shapes fields: (facts per sentence, scene per image,
    ``caption_image`` of shape ``(n_captions,)``: the position of each sentence's image
    in ``images``)."""
    facts, scenes, owner = [], [], []
    for position, record in enumerate(images):
        if "scene" not in record:
            raise DataError(f"image {record.get('filename')!r} has no 'scene'",
                            fix="ground truth exists only for the Shapes benchmark")
        scenes.append(record["scene"])
        for sentence in record["sentences"]:
            facts.append(sentence["facts"])
            owner.append(position)
    return facts, scenes, np.asarray(owner, dtype=np.int64)


# ---------------------------------------------------------------- relevance

def _relation_holds(relation: str, a: dict, b: dict) -> bool:
    if relation == "left_of":
        return a["x"] < b["x"]
    if relation == "right_of":
        return a["x"] > b["x"]
    if relation == "above":
        return a["y"] < b["y"]
    return a["y"] > b["y"]


def is_relevant(facts: dict, scene: dict) -> bool:
    """The obvious definition (reference for :func:`relevance_matrix`): try every
    injective assignment of the caption's patterns to the scene's objects."""
    objects, patterns = scene["objects"], facts["objects"]
    if facts.get("count") is not None and facts["count"] != len(objects):
        return False
    if facts.get("exact") and len(patterns) != len(objects):
        return False
    relation = facts.get("relation")
    for chosen in itertools.permutations(objects, len(patterns)):
        if not all(p[key] is None or p[key] == o[key]
                   for p, o in zip(patterns, chosen) for key in ("shape", "colour", "size")):
            continue
        if relation is None or _relation_holds(relation["relation"], chosen[relation["subject"]],
                                               chosen[relation["object"]]):
            return True
    return False


_N_KINDS = len(SHAPES) * len(COLOURS) * len(SIZES)
"""Object kinds (shape, colour, size) coded as one integer; ``_N_KINDS`` = no object."""
_NO_RELATION = len(RELATIONS) * MAX_OBJECTS * MAX_OBJECTS
"""Relation-table column that is always true (captions without a relation)."""


@dataclass
class FactsArrays:
    """Captions as small integer arrays (``-1`` = any / none).

    patterns: ``(n_captions, 3, 3)`` int8, slot x (shape, colour, size) indices;
    n_patterns: ``(n_captions,)``; relation: ``(n_captions,)`` index into RELATIONS;
    subject, object: ``(n_captions,)`` pattern slots of the relation;
    required_objects: ``(n_captions,)`` the scene's object count the caption demands
    (from ``count`` or ``exact``; ``-1`` none, ``-2`` contradictory).
    """

    patterns: np.ndarray
    n_patterns: np.ndarray
    relation: np.ndarray
    subject: np.ndarray
    object: np.ndarray
    required_objects: np.ndarray

    def __len__(self) -> int:
        return len(self.n_patterns)


@dataclass
class SceneArrays:
    """Scenes as arrays: kinds ``(n_images, 3)`` int16 (``_N_KINDS`` for an empty slot),
    x, y ``(n_images, 3)`` float32 (NaN for an empty slot), n_objects ``(n_images,)``."""

    kinds: np.ndarray
    x: np.ndarray
    y: np.ndarray
    n_objects: np.ndarray

    def __len__(self) -> int:
        return len(self.n_objects)


def _index(vocabulary: tuple[str, ...], value: str | None, what: str) -> int:
    if value is None:
        return -1
    if value not in vocabulary:
        raise DataError(f"unknown {what} {value!r} in Shapes facts/scene",
                        fix=f"use one of {vocabulary}")
    return vocabulary.index(value)


def encode_facts(facts_list: list[dict]) -> FactsArrays:
    """Encode caption facts once (a Python pass over small dicts)."""
    n = len(facts_list)
    patterns = np.full((n, MAX_OBJECTS, 3), -1, dtype=np.int8)
    n_patterns = np.zeros(n, dtype=np.int8)
    relation = np.full(n, -1, dtype=np.int8)
    subject = np.zeros(n, dtype=np.int8)
    obj = np.zeros(n, dtype=np.int8)
    required = np.full(n, -1, dtype=np.int8)
    for i, facts in enumerate(facts_list):
        objects = facts["objects"]
        if len(objects) > MAX_OBJECTS:
            raise DataError(f"caption facts with {len(objects)} objects (max {MAX_OBJECTS})")
        n_patterns[i] = len(objects)
        for slot, pattern in enumerate(objects):
            patterns[i, slot] = (_index(SHAPES, pattern.get("shape"), "shape"),
                                 _index(COLOURS, pattern.get("colour"), "colour"),
                                 _index(SIZES, pattern.get("size"), "size"))
        if facts.get("relation") is not None:
            rel = facts["relation"]
            relation[i] = _index(RELATIONS, rel["relation"], "relation")
            subject[i], obj[i] = rel["subject"], rel["object"]
            if not (0 <= subject[i] < len(objects) and 0 <= obj[i] < len(objects)
                    and subject[i] != obj[i]):
                raise DataError(f"caption facts {i}: relation slots {rel} do not name two "
                                f"of its {len(objects)} objects")
        count = facts.get("count")
        if facts.get("exact"):
            required[i] = len(objects) if count is None or count == len(objects) else -2
        elif count is not None:
            required[i] = count
    return FactsArrays(patterns, n_patterns, relation, subject, obj, required)


def encode_scenes(scenes: list[dict]) -> SceneArrays:
    """Encode scenes once (a Python pass over small dicts)."""
    n = len(scenes)
    kinds = np.full((n, MAX_OBJECTS), _N_KINDS, dtype=np.int16)
    x = np.full((n, MAX_OBJECTS), np.nan, dtype=np.float32)
    y = np.full((n, MAX_OBJECTS), np.nan, dtype=np.float32)
    n_objects = np.zeros(n, dtype=np.int8)
    for i, scene in enumerate(scenes):
        objects = scene["objects"]
        if not 1 <= len(objects) <= MAX_OBJECTS:
            raise DataError(f"scene {i} has {len(objects)} objects (expected 1-{MAX_OBJECTS})")
        n_objects[i] = len(objects)
        for slot, o in enumerate(objects):
            shape = _index(SHAPES, o["shape"], "shape")
            colour = _index(COLOURS, o["colour"], "colour")
            size = _index(SIZES, o["size"], "size")
            kinds[i, slot] = (shape * len(COLOURS) + colour) * len(SIZES) + size
            x[i, slot], y[i, slot] = o["x"], o["y"]
    return SceneArrays(kinds, x, y, n_objects)


def _pattern_tables(facts: FactsArrays) -> np.ndarray:
    """``(3, n_captions, _N_KINDS + 1)`` bool: does pattern slot p accept object kind k?
    An unused slot accepts everything, including the empty slot."""
    kind = np.arange(_N_KINDS + 1)
    attributes = np.stack([kind // (len(COLOURS) * len(SIZES)),
                           (kind // len(SIZES)) % len(COLOURS), kind % len(SIZES)])  # (3, K+1)
    patterns = facts.patterns.transpose(1, 0, 2)[:, :, :, None]  # (slot, n, attr, 1)
    accepts = ((patterns == -1) | (patterns == attributes[None, None])).all(axis=2)
    accepts[:, :, _N_KINDS] = False
    unused = np.arange(MAX_OBJECTS)[:, None] >= facts.n_patterns[None, :]
    accepts |= unused[:, :, None]
    return np.ascontiguousarray(accepts)


def _relation_table(scenes: SceneArrays) -> np.ndarray:
    """``(_NO_RELATION + 1, n_images)`` bool; row ``r*9 + a*3 + b`` says whether relation
    r holds between object slots a and b; the last row is all true."""
    rows = []
    for relation in RELATIONS:
        coord = scenes.x if relation in ("left_of", "right_of") else scenes.y
        sign = -1 if relation in ("left_of", "above") else 1
        for a in range(MAX_OBJECTS):
            for b in range(MAX_OBJECTS):
                rows.append(sign * (coord[:, a] - coord[:, b]) > 0)  # NaN compares false
    rows.append(np.ones(len(scenes), dtype=bool))
    return np.stack(rows)


def _relevance_block(facts: FactsArrays, scenes: SceneArrays, tables: np.ndarray,
                     relation_table: np.ndarray) -> np.ndarray:
    """``(n_captions, n_images)`` for one block; loops over the 6 slot permutations."""
    relevant = np.zeros((len(facts), len(scenes)), dtype=bool)
    has_relation = facts.relation >= 0
    for perm in itertools.permutations(range(MAX_OBJECTS)):
        ok = np.take(tables[0], scenes.kinds[:, perm[0]], axis=1)
        for slot in range(1, MAX_OBJECTS):
            ok &= np.take(tables[slot], scenes.kinds[:, perm[slot]], axis=1)
        mapped = np.asarray(perm)
        code = np.where(has_relation, facts.relation.astype(np.int64) * 9
                        + mapped[facts.subject] * 3 + mapped[facts.object], _NO_RELATION)
        ok &= relation_table[code]
        relevant |= ok
    required = facts.required_objects[:, None]
    relevant &= (required == -1) | (required == scenes.n_objects[None, :])
    return relevant


def _take_facts(facts: FactsArrays, rows: np.ndarray) -> FactsArrays:
    return FactsArrays(*(getattr(facts, f)[rows] for f in FactsArrays.__dataclass_fields__))


def relevance_matrix(caption_facts: list[dict] | FactsArrays,
                     scenes: list[dict] | SceneArrays,
                     block_elements: int = 1 << 22) -> np.ndarray:
    """Ground-truth relevance, ``(n_captions, n_images)`` bool, vectorised.

    Identical facts are computed once (templates repeat a lot), in caption blocks of
    about ``block_elements`` pairs, so temporaries stay a few MB whatever the size; the
    result itself is ``n_captions * n_images`` bytes.
    """
    facts = caption_facts if isinstance(caption_facts, FactsArrays) else encode_facts(caption_facts)
    scene_arrays = scenes if isinstance(scenes, SceneArrays) else encode_scenes(scenes)
    if len(facts) == 0 or len(scene_arrays) == 0:
        return np.zeros((len(facts), len(scene_arrays)), dtype=bool)
    keys = np.concatenate([facts.patterns.reshape(len(facts), -1).astype(np.int16),
                           np.stack([facts.n_patterns, facts.relation, facts.subject,
                                     facts.object, facts.required_objects], axis=1)], axis=1)
    unique_keys, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    unique = _take_facts(facts, first)
    relation_table = _relation_table(scene_arrays)
    block = max(1, block_elements // len(scene_arrays))
    unique_relevant = np.empty((len(unique), len(scene_arrays)), dtype=bool)
    for start in range(0, len(unique), block):
        part = _take_facts(unique, np.arange(start, min(start + block, len(unique))))
        unique_relevant[start:start + len(part)] = _relevance_block(
            part, scene_arrays, _pattern_tables(part), relation_table)
    return unique_relevant[inverse.reshape(-1)]


# ---------------------------------------------------------------- parsing typed queries

_SHAPE_WORDS = {shape: shape for shape in SHAPES}
_COLOUR_WORDS = {colour: colour for colour in COLOURS} | {"grey": "gray"}
_SIZE_WORD_MAP = {word: size for size, words in SIZE_WORDS.items() for word in words}
_GENERIC_NOUNS = set(NOUNS)
_PLURAL_NOUNS = {noun + "s" for noun in NOUNS}
_NUMBERS = {"one": 1, "two": 2, "three": 3}
_RELATION_WORDS = (
    (("to", "the", "left", "of"), "left_of"), (("on", "the", "left", "of"), "left_of"),
    (("left", "of"), "left_of"), (("to", "the", "right", "of"), "right_of"),
    (("on", "the", "right", "of"), "right_of"), (("right", "of"), "right_of"),
    (("above",), "above"), (("over",), "above"), (("below",), "below"),
    (("under",), "below"), (("beneath",), "below"), (("underneath",), "below"))
_REPHRASE_MARKERS = {"there", "that", "which", "with", "big", "little", "tiny"}


class _NoParse(Exception):
    """The text leaves the templates' grammar."""


class _Parser:
    """Recursive descent over word tokens for the caption grammar::

        caption  := ["there" ("is"|"are"|"s")] ["only"|"just"] (count | body) ["alone"|"only"]
                    ["in" "the" ("scene"|"image"|"picture")]
        count    := ("a" "single" | "one" | "two" | "three") generic-noun[s]
        body     := np REL np  |  np (("and" | "with" | ",") np)*
        np       := [article] adjective* (shape | generic-noun) ["that"|"which" "is" adjectives]
                  | "something" adjective* ["that" "is" adjectives]
    """

    def __init__(self, words: list[str]):
        self.words, self.at = words, 0

    def peek(self, ahead: int = 0) -> str | None:
        index = self.at + ahead
        return self.words[index] if index < len(self.words) else None

    def accept(self, *sequence: str) -> bool:
        if tuple(self.words[self.at:self.at + len(sequence)]) == sequence:
            self.at += len(sequence)
            return True
        return False

    def _adjective(self, word: str | None) -> bool:
        return word in _COLOUR_WORDS or word in _SIZE_WORD_MAP

    def _set_adjective(self, pattern: dict, word: str) -> None:
        key, value = (("colour", _COLOUR_WORDS[word]) if word in _COLOUR_WORDS
                      else ("size", _SIZE_WORD_MAP[word]))
        if pattern[key] is not None and pattern[key] != value:
            raise _NoParse(f"two {key}s for one object")
        pattern[key] = value
        self.at += 1

    def count(self) -> int | None:
        """A number word directly followed by a generic noun that ends the phrase."""
        start = self.at
        if self.accept("a", "single"):
            number = 1
        elif self.peek() in _NUMBERS:
            number = _NUMBERS[self.peek()]
            self.at += 1
        else:
            return None
        if self.peek() in _GENERIC_NOUNS or self.peek() in _PLURAL_NOUNS:
            self.at += 1
            if self.peek() in (None, "in", "alone", "only"):
                return number
        self.at = start  # "a single red circle": an article, not a count
        return None

    def noun_phrase(self) -> dict:
        pattern = {"shape": None, "colour": None, "size": None}
        for article in (("a", "single"), ("a",), ("an",), ("one",), ("the",)):
            if self.accept(*article):
                break
        if self.accept("something"):
            while self._adjective(self.peek()):
                self._set_adjective(pattern, self.peek())
        else:
            while self._adjective(self.peek()):
                self._set_adjective(pattern, self.peek())
            head = self.peek()
            if head in _SHAPE_WORDS:
                pattern["shape"] = _SHAPE_WORDS[head]
            elif head not in _GENERIC_NOUNS:
                raise _NoParse(f"expected a shape or noun, got {head!r}")
            self.at += 1
        if (self.peek() in ("that", "which") and self.peek(1) == "is"
                and self._adjective(self.peek(2))):
            self.at += 2
            self._set_adjective(pattern, self.peek())
            # "... that is small and red": take "and ADJ" unless ADJ starts a new phrase
            while (self.peek() == "and" and self._adjective(self.peek(1))
                   and not (self._adjective(self.peek(2)) or self.peek(2) in _SHAPE_WORDS
                            or self.peek(2) in _GENERIC_NOUNS)):
                self.at += 1
                self._set_adjective(pattern, self.peek())
        return pattern

    def relation(self) -> str | None:
        start = self.at
        if not (self.accept("that", "is") or self.accept("which", "is")):
            self.accept("is")
        for sequence, name in _RELATION_WORDS:
            if self.accept(*sequence):
                return name
        self.at = start
        return None

    def caption(self) -> dict:
        if not (self.accept("there", "is") or self.accept("there", "are")):
            self.accept("there", "s")
        exact = self.accept("only") or self.accept("just")
        count = self.count()
        patterns, relation, joiners = [], None, set()
        if count is None:
            patterns.append(self.noun_phrase())
            relation = self.relation()
            if relation is not None:
                patterns.append(self.noun_phrase())
            while relation is None and self.peek() not in (None, "alone", "only", "in"):
                joiner = "with" if self.accept("with") else ("and" if self.accept("and") else ",")
                joiners.add(joiner)
                patterns.append(self.noun_phrase())
        exact = self.accept("alone") or self.accept("only") or exact
        if self.accept("in", "the"):
            if not (self.accept("scene") or self.accept("image") or self.accept("picture")):
                raise _NoParse("unknown location")
        if self.peek() is not None:
            raise _NoParse(f"unexpected {self.peek()!r}")
        if "with" in joiners and len(joiners) > 1 or len(patterns) > MAX_OBJECTS:
            raise _NoParse("mixed or too many objects")
        # "only two shapes": the count already says how many; exact would demand 0
        exact = (exact or bool(joiners - {"with"})) and count is None
        relation_facts = (None if relation is None
                          else {"subject": 0, "object": 1, "relation": relation})
        return {"family": self.family(patterns, relation, count, exact), "objects": patterns,
                "relation": relation_facts, "count": count, "exact": exact}

    def family(self, patterns: list[dict], relation: str | None, count: int | None,
               exact: bool) -> str:
        """The template family the text most likely came from (``rephrased`` and
        ``one_object`` overlap, e.g. "a small hexagon")."""
        if count is not None:
            return "count"
        if relation is not None:
            return "relation"
        if exact:
            return "all_objects"
        if len(patterns) == 1 and sum(v is not None for v in patterns[0].values()) == 1:
            return "attribute"
        return "rephrased" if _REPHRASE_MARKERS & set(self.words) else "one_object"


def parse_caption(text: str) -> dict | None:
    """Facts of a free-text query in the templates' grammar, or None.

    Any case and punctuation; synonyms (big/large, small/little/tiny, shape/object/
    thing, grey). "a red circle and a blue star" lists *all* objects (``exact``), as
    the ``all_objects`` captions do; "a red circle with a blue star" does not; "only"/
    "just"/"alone" make a single object exact. Example: ``parse_caption("Something
    purple!")`` -> one pattern ``{"colour": "purple"}``.
    """
    words = tokenize(text)
    if not words:
        return None
    try:
        return _Parser(words).caption()
    except _NoParse:
        return None


# ---------------------------------------------------------------- writing a data set

MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 1024
_CHUNK_IMAGES = 256
"""Most images per task: large enough to amortise inter-process traffic; small data
sets use smaller chunks so that every worker (and the progress bar) gets work."""


def _check_arguments(n_train: int, n_val: int, n_test: int, seed: int, image_size: int,
                     workers: int) -> None:
    def integer(value: object) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if not integer(value) or value < 0:
            raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    if n_train + n_val + n_test == 0:
        raise ConfigError("the data set would be empty", fix="ask for at least one image")
    if not integer(seed) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if not integer(image_size) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"image_size must be an integer in [{MIN_IMAGE_SIZE}, "
                          f"{MAX_IMAGE_SIZE}], got {image_size!r}",
                          fix="smaller images cannot show 'small' vs 'large' reliably")
    if not integer(workers) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")


def _render_records(images_dir: Path, n_train: int, n_val: int, n_test: int, seed: int,
                    image_size: int, workers: int, progress: bool) -> list[dict]:
    """All records in image order; PNGs written into ``images_dir`` (chunks in parallel
    when ``workers > 1``; each image's randomness depends on (seed, index) only)."""
    from tqdm import tqdm

    from meet.data.shapes_render import render_chunk

    total = n_train + n_val + n_test
    chunk_images = min(_CHUNK_IMAGES, max(8, -(-total // (4 * workers))))
    tasks = [(str(images_dir), start, min(start + chunk_images, total), seed, image_size,
              n_train, n_val) for start in range(0, total, chunk_images)]
    records: list[dict] = []
    with tqdm(total=total, unit="img", desc="rendering shapes", disable=not progress) as bar:
        if workers == 1 or len(tasks) == 1:
            for chunk in map(render_chunk, tasks):
                records.extend(chunk)
                bar.update(len(chunk))
            return records
        # spawn: safe even when the parent holds threads (torch, BLAS); a worker that
        # cannot start raises BrokenProcessPool instead of hanging like multiprocessing.Pool
        executor = ProcessPoolExecutor(min(workers, len(tasks)),
                                       mp_context=multiprocessing.get_context("spawn"))
        try:
            for chunk in executor.map(render_chunk, tasks):
                records.extend(chunk)
                bar.update(len(chunk))
        except BrokenProcessPool as exc:
            raise DataError(f"Shapes worker processes failed: {exc}",
                            fix="run from an importable script (not stdin), or use workers=1"
                            ) from exc
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
    return records


def _non_empty(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def _replace_directory(source: Path, target: Path, overwrite: bool) -> None:
    """Move the finished ``source`` to ``target``; an old ``target`` is removed only
    after the new one is in place under a temporary name."""
    if _non_empty(target) and not overwrite:  # another process finished first
        raise ConfigError(f"output folder {target} was filled while generating",
                          fix="another process wrote it; reuse it or pass --overwrite")
    if target.exists() and not target.is_dir():
        target.unlink()
    if not target.exists():
        source.rename(target)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    target.rename(trash / "old")
    source.rename(target)
    shutil.rmtree(trash, ignore_errors=True)


def dataset_json(records: list[dict], seed: int, image_size: int) -> str:
    """Byte-deterministic JSON text (sorted keys, fixed separators)."""
    return json.dumps({"dataset": "shapes", "seed": seed, "image_size": image_size,
                       "images": records}, sort_keys=True, separators=(",", ":"))


def generate(out_dir: str | Path, n_train: int = 20000, n_val: int = 1000, n_test: int = 1000,
             seed: int = 0, image_size: int = 64, workers: int = 1, overwrite: bool = False,
             progress: bool = True) -> Path:
    """Write ``out_dir/dataset.json`` and ``out_dir/images/*.png``; return ``out_dir``.

    Atomic: everything is written into a hidden sibling folder that is renamed into
    place at the end, so a crash leaves no half-written data set. Refuses a non-empty
    ``out_dir`` unless ``overwrite``. Same arguments give byte-identical files for any
    ``workers``.
    """
    _check_arguments(n_train, n_val, n_test, seed, image_size, workers)
    n_train, n_val, n_test, seed, image_size, workers = (
        int(v) for v in (n_train, n_val, n_test, seed, image_size, workers))
    out = Path(out_dir)
    if _non_empty(out) and not overwrite:
        raise ConfigError(f"output folder {out} exists and is not empty",
                          fix="choose another folder or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the data set is not
        (staging / "images").mkdir()
        records = _render_records(staging / "images", n_train, n_val, n_test, seed,
                                  image_size, workers, progress)
        (staging / "dataset.json").write_text(dataset_json(records, seed, image_size),
                                              encoding="utf-8")
        _replace_directory(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _split_counts(images: list[dict]) -> tuple[int, int, int]:
    splits = [record.get("split") for record in images]
    return splits.count("train"), splits.count("val"), splits.count("test")


def ensure_shapes(out_dir: str | Path, n_train: int = 20000, n_val: int = 1000,
                  n_test: int = 1000, seed: int = 0, image_size: int = 64, workers: int = 1,
                  overwrite: bool = False, progress: bool = True) -> Path:
    """A cache: generate unless ``out_dir/dataset.json`` exists, else reuse it.

    An existing data set made with other arguments (seed, image size, split sizes) is
    an error, or is regenerated when ``overwrite``: a stale cache must not silently
    stand in for the one asked for.
    """
    out = Path(out_dir)
    path = out / "dataset.json"
    if not path.is_file():
        try:
            return generate(out, n_train, n_val, n_test, seed, image_size, workers, overwrite,
                            progress)
        except ConfigError:
            if not path.is_file():  # a bad argument, or a folder holding something else
                raise
            # another process generated it meanwhile: check it below like any cache
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
        found = (existing["dataset"], existing["seed"], existing["image_size"],
                 _split_counts(existing["images"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        found = (f"unreadable ({exc})",)
    wanted = ("shapes", seed, image_size, (n_train, n_val, n_test))
    if found == wanted:
        return out
    if overwrite:
        return generate(out, n_train, n_val, n_test, seed, image_size, workers, True, progress)
    raise DataError(f"{path} holds another Shapes data set: found (dataset, seed, image_size, "
                    f"(train, val, test)) = {found}, wanted {wanted}",
                    fix="delete the folder, pick another, or pass overwrite=True")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m meet.data.shapes",
        description="Generate the Shapes benchmark (Karpathy-JSON layout with scenes and facts).")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--n-train", type=int, default=20000, help="training images")
    parser.add_argument("--n-val", type=int, default=1000, help="validation images")
    parser.add_argument("--n-test", type=int, default=1000, help="test images")
    parser.add_argument("--seed", type=int, default=0, help="base seed (non-negative)")
    parser.add_argument("--image-size", type=int, default=64,
                        help=f"image side in pixels ({MIN_IMAGE_SIZE}-{MAX_IMAGE_SIZE})")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry; bad arguments (or a non-empty --out without --overwrite) exit with 2
    before anything is written."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        _check_arguments(args.n_train, args.n_val, args.n_test, args.seed, args.image_size,
                         args.workers)
        started = time.perf_counter()
        out = generate(args.out, args.n_train, args.n_val, args.n_test, args.seed,
                       args.image_size, args.workers, args.overwrite, not args.quiet)
    except ConfigError as exc:
        parser.error(str(exc))
    except MEETError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    total = args.n_train + args.n_val + args.n_test
    seconds = time.perf_counter() - started
    print(f"wrote {total} images to {out} in {seconds:.1f} s ({total / seconds:.0f} images/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
