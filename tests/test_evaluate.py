"""One scoring path: ``meet.evaluate`` ranks every mode exactly as ``GalleryIndex.search`` does.

On the tiny trained model and its Shapes test split, for each mode, Hamming scoring and
quantization space: the order that evaluation's score matrix implies (ties by position,
the rule :mod:`meet.metrics` ranks with) is the order a search returns, and each R@K rank
is the own item's place in that order. (Evaluation once broke Hamming ties by a random
jitter and scored ``pq`` with the hash-space codebooks whatever the index quantized.)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import meet
from meet import metrics
from meet.config import CascadeConfig
from meet.evaluate import SplitIndexes, evaluate, mode_cascade, score_functions
from meet.search import MODES


@pytest.fixture(scope="module")
def split(tiny_run, tiny_shapes):
    from meet.data.loading import load_split

    model = meet.load(tiny_run, device="cpu")
    ds = load_split(tiny_shapes, "test", model.cfg.model)
    images, texts = model.encode_dataset(ds)
    return model, ds, images, texts


def stable_order(scores: np.ndarray) -> np.ndarray:
    """Each row's items by score descending, ties by position: what metrics rank by."""
    return np.argsort(-scores, axis=1, kind="stable")


SETTINGS = {
    "paper": CascadeConfig(),
    "asymmetric, dense PQ": CascadeConfig(hamming_scores="asymmetric", pq_space="dense"),
    "counts, residual PQ": CascadeConfig(pq_space="residual", hamming_rate_t2i=30, pq_rate_t2i=10,
                                         hamming_rate_i2t=100, pq_rate_i2t=40),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_evaluation_ranks_every_mode_as_search_does(split, name):
    model, ds, images, texts = split
    model = meet.load(model.folder, device="cpu")
    model.cfg.cascade = dataclasses.replace(SETTINGS[name], reciprocal_k=20)
    indexes = SplitIndexes(model, images, texts)
    image_index, text_index = indexes.pair()
    assert image_index.pq_space == model.cfg.cascade.pq_space
    everything = (np.arange(ds.n_images), np.arange(len(ds.captions)))
    caption_image = torch.as_tensor(ds.caption_image)
    for mode in MODES:
        i2t_fn, t2i_fn = score_functions(mode, model, indexes)
        i2t, t2i = i2t_fn(*everything).numpy(), t2i_fn(*everything).numpy().T  # (queries, gallery)
        searched_images, searched_texts = indexes.pair_for(mode)  # release: a hash-space pair, its own rates
        cascade = mode_cascade(mode, model)
        by_search = {"i2t": searched_texts.search(images, k=len(texts), mode=mode, cascade=cascade).ids,
                     "t2i": searched_images.search(texts, k=ds.n_images, mode=mode, cascade=cascade).ids}
        for direction, scores in (("i2t", i2t), ("t2i", t2i)):
            found = by_search[direction]
            order = stable_order(scores)
            for row in range(len(found)):  # filtered items (-1) come after the survivors
                kept = found[row][found[row] >= 0]
                assert order[row, :len(kept)].tolist() == kept.tolist(), (mode, direction, row)
        # each R@K rank is the place of the own item in that order
        t2i_order = stable_order(t2i)
        expected = [int(np.flatnonzero(t2i_order[c] == ds.caption_image[c])[0]) for c in range(len(texts))]
        assert metrics.t2i_ranks(torch.from_numpy(t2i.T), caption_image).tolist() == expected
        i2t_order = stable_order(i2t)
        own = [int(np.flatnonzero(np.isin(i2t_order[i], np.flatnonzero(ds.caption_image == i)))[0])
               for i in range(ds.n_images)]
        assert metrics.i2t_ranks(torch.from_numpy(i2t), caption_image).tolist() == own


def test_hash_mode_ties_are_broken_by_position_not_chance(split):
    """64-bit codes of a tiny model tie a lot: evaluation must rank the tied items in
    gallery order, as search does, and give the same R@K twice (the symmetric filter:
    integer scores; the preset's asymmetric one scores floats)."""
    model, ds, images, texts = split
    model = meet.load(model.folder, device="cpu")
    model.cfg.cascade.hamming_scores = "symmetric"
    indexes = SplitIndexes(model, images, texts, reciprocal=False)
    _, t2i_fn = score_functions("hash", model, indexes)
    scores = t2i_fn(np.arange(ds.n_images), np.arange(len(ds.captions))).numpy().T
    assert (np.diff(np.sort(scores, axis=1), axis=1) == 0).mean() > 0.5  # mostly ties
    levels = np.unique(scores)
    assert np.allclose(levels, np.round(levels)) and levels.max() <= model.cfg.model.n_bits  # n_bits - 2 * distance
    first = evaluate(model, ds, ("hash",))
    assert evaluate(model, ds, ("hash",))["hash"]["rsum"] == first["hash"]["rsum"]


def test_pq_mode_means_the_index_quantizer(split):
    """``pq`` scores with the index's quantizer: in the residual space it is the dense
    query against each item's sum of codewords, not the hash-space ADC."""
    model, ds, images, texts = split
    model = meet.load(model.folder, device="cpu")
    model.cfg.cascade.pq_space = "residual"
    indexes = SplitIndexes(model, images, texts, reciprocal=False)
    image_index, _ = indexes.pair()
    _, t2i_fn = score_functions("pq", model, indexes)
    scores = t2i_fn(np.arange(ds.n_images), np.arange(len(ds.captions))).numpy().T
    recon = image_index.quantizer.decode(image_index.pq_codes)
    assert np.allclose(scores, texts.dense @ recon.T, atol=1e-4)
