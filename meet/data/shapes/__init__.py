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

Modules:

- :mod:`.vocab`: the vocabulary (shapes, colours, sizes, families, relations, words),
  ``tokenize``, ``with_article``, ``single_object_queries``;
- :mod:`.relevance`: the ground truth (``is_relevant``, ``relevance_matrix``, encoders);
- :mod:`.query`: ``parse_caption``, typed queries in the templates' grammar;
- :mod:`.captions`: sampling one image's scene and captions;
- :mod:`.render`: pixels, PNG bytes and the record of one image (imports PIL);
- :mod:`.writer`: ``generate``, ``ensure_shapes`` and the CLI
  (``python -m meet.data.shapes --out DIR``).

This package re-exports the public API of ``vocab``, ``relevance``, ``query`` and
``writer``; ``captions`` and ``render`` are imported only when images are made.
"""

from meet.data.shapes.query import parse_caption
from meet.data.shapes.relevance import (FactsArrays, SceneArrays, caption_facts_and_scenes,
                                        encode_facts, encode_scenes, is_relevant,
                                        relevance_matrix)
from meet.data.shapes.vocab import (CAPTIONS_PER_IMAGE, COLOURS, COUNT_WORDS, FAMILIES,
                                    FAMILY_WEIGHTS, MAX_OBJECTS, NOUNS, POSITION_JITTER,
                                    RELATION_PHRASES, RELATIONS, SHAPES, SIZE_WORDS, SIZES,
                                    single_object_queries, tokenize, with_article, attribute_queries)
from meet.data.shapes.writer import (MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, dataset_json,
                                     ensure_shapes, generate, main)

__all__ = [
    "CAPTIONS_PER_IMAGE", "COLOURS", "COUNT_WORDS", "FAMILIES", "FAMILY_WEIGHTS",
    "MAX_IMAGE_SIZE", "MAX_OBJECTS", "MIN_IMAGE_SIZE", "NOUNS", "POSITION_JITTER",
    "RELATIONS", "RELATION_PHRASES", "SHAPES", "SIZES", "SIZE_WORDS", "FactsArrays",
    "SceneArrays", "caption_facts_and_scenes", "dataset_json", "encode_facts",
    "encode_scenes", "ensure_shapes", "generate", "is_relevant", "main", "parse_caption",
    "relevance_matrix", "single_object_queries", "attribute_queries", "tokenize", "with_article",
]
