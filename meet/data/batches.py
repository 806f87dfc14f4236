"""Training batches: which (image, caption) pairs an epoch visits, and in what order.

``epoch_pairs`` is a pure function of (data set, epoch, seed), so a resumed run sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from meet.data.dataset import ImageTextDataset
from meet.data.vocab import tokenize_text
from meet.losses import BatchPairs


def epoch_pairs(ds: ImageTextDataset, epoch: int, seed: int, sampling: str,
                family_weights: dict[str, float]) -> np.ndarray:
    """Shuffled (image index, caption index) pairs for one epoch, shape (n_pairs, 2).

    ``all``: every caption once (the standard VSE epoch). ``per_image``: every image
    once, with one of its captions drawn by family weight (Shapes facts name each
    caption's family; without facts, uniformly). Specific captions ("a red circle left
    of a blue star") teach more than generic ones ("two shapes"), so the demo draws
    them more often (METHOD.md's measured recipe).
    """
    rng = np.random.default_rng([seed, epoch])
    caption_image = np.asarray(ds.caption_image, dtype=np.int64)
    if sampling == "all":
        order = rng.permutation(len(caption_image))
        return np.stack([caption_image[order], order], axis=1)
    weights = np.ones(len(caption_image))
    if ds.caption_facts is not None and family_weights:
        weights = np.array([family_weights.get(f.get("family", ""), 1.0) for f in ds.caption_facts])
    # Gumbel-max per image: one weighted draw for every image at once, no Python loop.
    with np.errstate(divide="ignore"):
        keys = np.log(weights) - np.log(-np.log(rng.random(len(weights))))
    order = np.lexsort((-keys, caption_image))  # by image, best key first
    first = np.ones(len(order), dtype=bool)
    first[1:] = caption_image[order][1:] != caption_image[order][:-1]
    chosen = order[first]  # one caption per image, ordered by image
    chosen = chosen[rng.permutation(len(chosen))]
    return np.stack([caption_image[chosen], chosen], axis=1)


def text_keys(captions: list[str]) -> np.ndarray:
    """An int id per caption, equal for captions with the same normalised words."""
    index: dict[str, int] = {}
    return np.array([index.setdefault(" ".join(tokenize_text(c)), len(index)) for c in captions],
                    dtype=np.int64)


class _BatchDataset(Dataset):
    def __init__(self, owner: "PairBatches", pairs: np.ndarray, batch_size: int):
        self.owner, self.pairs, self.batch_size = owner, pairs, batch_size

    def __len__(self) -> int:
        full, rest = divmod(len(self.pairs), self.batch_size)
        return full + (1 if rest >= 2 else 0)  # a 1-pair batch has no negatives

    def __getitem__(self, k: int):
        return self.owner.make_batch(self.pairs[k * self.batch_size:(k + 1) * self.batch_size])


class PairBatches:
    """Turns pair lists into model-ready batches: (images, tokenized text, BatchPairs)."""

    def __init__(self, ds: ImageTextDataset, tokenize: Callable[[list[str]], dict[str, torch.Tensor]]):
        self.ds = ds
        self.tokenize = tokenize
        self.keys = torch.from_numpy(text_keys(ds.captions))
        self.has_facts = ds.caption_facts is not None and ds.scenes is not None

    def make_batch(self, pairs: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor], BatchPairs]:
        image_idx, caption_idx = pairs[:, 0], pairs[:, 1]
        images = self.ds.images(image_idx.tolist())
        text = self.tokenize([self.ds.captions[c] for c in caption_idx])
        relevance = None
        if self.has_facts:
            from meet.data.shapes import relevance_matrix
            rel = relevance_matrix([self.ds.caption_facts[c] for c in caption_idx],
                                   [self.ds.scenes[i] for i in image_idx])
            relevance = torch.from_numpy(np.ascontiguousarray(rel.T))  # (image row, caption col)
        pairs_info = BatchPairs(image_index=torch.from_numpy(image_idx.copy()),
                                text_key=self.keys[torch.from_numpy(caption_idx.copy())],
                                relevance=relevance)
        return images, text, pairs_info

    def loader(self, pairs: np.ndarray, batch_size: int, num_workers: int = 0) -> DataLoader:
        return DataLoader(_BatchDataset(self, pairs, batch_size), batch_size=None, shuffle=False,
                          num_workers=num_workers, persistent_workers=False)
