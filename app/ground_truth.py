"""Which captions are relevant to which images, computed for the queries asked about.

A Shapes gallery knows every caption-image pair's truth from the stored facts; any other
data set knows only its pairing (each caption's own image). The app used to keep the
whole ``(n_captions, n_images)`` matrix: 2 GB at 20,000 images and 100,000 captions, 50 GB
at 100,000 images, quadratic in the gallery. :class:`GroundTruth` keeps the facts and the
scenes as small arrays (linear) and computes the rows a view needs: one query's column
for a search, a bounded sample of queries for the Redundancy tab's aggregates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class GroundTruth:
    """Relevance of captions to images, by Shapes facts (``facts`` and ``scenes`` set) or
    else by the data set's pairing (``caption_image``)."""

    n_captions: int
    n_images: int
    caption_image: np.ndarray
    """int (n_captions,): each caption's own image."""
    facts: Any = None
    """:class:`meet.data.shapes.relevance.FactsArrays` of every caption (Shapes only)."""
    scenes: Any = None
    """:class:`meet.data.shapes.relevance.SceneArrays` of every image (Shapes only)."""
    distinct: Any = None
    """The distinct facts (captions repeat templates), so an image's column is computed
    once per distinct fact, then spread to the captions by ``fact_of``."""
    fact_of: Any = None
    """int (n_captions,): each caption's index in ``distinct``."""
    distinct_tables: Any = None
    """:func:`meet.data.shapes.relevance.pattern_tables` of ``distinct``, computed once: on
    the 500k-caption gallery building them took 190 of the 250 ms an image query's ground
    truth cost when they were rebuilt per query (profiled, 2026-12-08)."""

    @classmethod
    def of(cls, dataset: Any) -> "GroundTruth":
        """The truth a data set split carries: Shapes facts when it has them."""
        caption_image = np.asarray(dataset.caption_image, np.int64)
        n_captions, n_images = len(caption_image), int(dataset.n_images)
        if getattr(dataset, "scenes", None) is None or getattr(dataset, "caption_facts", None) is None:
            return cls(n_captions, n_images, caption_image)
        from meet.data.shapes.relevance import encode_facts, encode_scenes, pattern_tables, unique_facts

        facts = encode_facts(dataset.caption_facts)
        distinct, fact_of = unique_facts(facts)
        return cls(n_captions, n_images, caption_image, facts, encode_scenes(dataset.scenes), distinct, fact_of,
                   pattern_tables(distinct))

    @property
    def from_facts(self) -> bool:
        """True when every pair's relevance is known (Shapes), not just the pairing."""
        return self.facts is not None

    def captions(self, rows: Any) -> np.ndarray:
        """bool (len(rows), n_images): the images each caption ``rows`` is true of."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        if self.from_facts:
            from meet.data.shapes.relevance import relevance_matrix, take_rows

            return relevance_matrix(take_rows(self.facts, rows), self.scenes)
        relevant = np.zeros((len(rows), self.n_images), bool)
        relevant[np.arange(len(rows)), self.caption_image[rows]] = True
        return relevant

    def images(self, rows: Any) -> np.ndarray:
        """bool (len(rows), n_captions): the captions true of each image ``rows``."""
        rows = np.asarray(rows, np.int64).reshape(-1)
        if self.from_facts:
            from meet.data.shapes.relevance import relevance_to_scenes, take_rows

            relevant = relevance_to_scenes(self.distinct, self.distinct_tables, take_rows(self.scenes, rows))
            return np.ascontiguousarray(relevant[self.fact_of].T)
        return self.caption_image[None, :] == rows[:, None]

    def of_facts(self, facts: list[dict]) -> np.ndarray:
        """bool (len(facts), n_images): the images each caption-facts dict (a typed query,
        parsed) is true of, against the scenes encoded once at load (Shapes only)."""
        from meet.data.shapes.relevance import relevance_matrix

        if self.scenes is None:
            raise ValueError("this gallery has no Shapes scenes")
        return relevance_matrix(facts, self.scenes)

