"""Ground truth of the Shapes benchmark: which caption is relevant to which image.

:func:`is_relevant` is the obvious definition (try every injective assignment of a
caption's object patterns to a scene's objects); :func:`relevance_matrix` computes the
same thing for whole collections with numpy, on captions and scenes encoded once as
small integer arrays (:class:`FactsArrays`, :class:`SceneArrays`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields

import numpy as np

from meet.data.shapes.vocab import COLOURS, MAX_OBJECTS, RELATIONS, SHAPES, SIZES
from meet.errors import DataError


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


def pattern_tables(facts: FactsArrays) -> np.ndarray:
    """The object-kind acceptance tables of ``facts`` (they depend on the facts alone): a
    caller that asks about many scene sets with the same facts computes them once and
    passes them to :func:`relevance_to_scenes`."""
    return _pattern_tables(facts)


def relevance_to_scenes(facts: FactsArrays, tables: np.ndarray, scenes: SceneArrays) -> np.ndarray:
    """``(len(facts), len(scenes))`` bool, with ``tables = pattern_tables(facts)``: for a
    few scenes (one image's column) against many facts, without recomputing the tables.
    The result is ``len(facts) * len(scenes)`` bytes: keep ``scenes`` small."""
    return _relevance_block(facts, scenes, tables, _relation_table(scenes))


def take_rows(arrays: FactsArrays | SceneArrays, rows: np.ndarray) -> FactsArrays | SceneArrays:
    """The ``rows`` of captions' facts or of scenes (each field indexed alike)."""
    return type(arrays)(*(getattr(arrays, f.name)[rows] for f in fields(arrays)))


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
    unique, inverse = unique_facts(facts)
    relation_table = _relation_table(scene_arrays)
    block = max(1, block_elements // len(scene_arrays))
    unique_relevant = np.empty((len(unique), len(scene_arrays)), dtype=bool)
    for start in range(0, len(unique), block):
        part = take_rows(unique, np.arange(start, min(start + block, len(unique))))
        unique_relevant[start:start + len(part)] = _relevance_block(
            part, scene_arrays, _pattern_tables(part), relation_table)
    return unique_relevant[inverse]


def unique_facts(facts: FactsArrays) -> tuple[FactsArrays, np.ndarray]:
    """The distinct facts and, per caption, the index of its own among them: caption
    templates repeat a lot, so relevance is computed once per distinct fact."""
    keys = np.concatenate([facts.patterns.reshape(len(facts), -1).astype(np.int16),
                           np.stack([facts.n_patterns, facts.relation, facts.subject,
                                     facts.object, facts.required_objects], axis=1)], axis=1)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    return take_rows(facts, first), inverse.reshape(-1)
