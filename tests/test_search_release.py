"""``mode="release"``: the MEET release's evaluation (``evalrank_test`` in its
``lib/evalution_AHR.py``), against a direct re-implementation of that ranking written here in
plain numpy loops, read from the release's code: ``HammingD`` (sign codes, inner product,
argsort, keep ``int(n * R)``), ``AQD_i2t``/``AQD_t2i`` (the query's hash feature against each
survivor's codeword reconstruction, in Hamming order, keep ``int(R * q)``), then
``afterhash_*`` (survivors' dense scores, -10 elsewhere) and ``i2t_rerank`` (each query's top
K re-sorted by its place in the candidate's column).

Sorts are stable here: the release leaves ties to numpy's (unstable) quicksort, which no
re-implementation can reproduce; ours breaks Hamming ties by gallery position and the
others as the release's stable sorts do (tested with ties on purpose: 16-bit codes).
"""

from __future__ import annotations

import numpy as np
import pytest

from meet.config import RELEASE_SEARCH, MEETConfig, ModelConfig, release_cascade
from meet.quantization import pack_codes
from meet.search import GalleryIndex, HashPQ
from meet.search.rerank import batch_reciprocal_resort

N_IMAGES, N_BITS, M, K, DIM = 40, 16, 4, 16, 24


def release_ranking(query_hash, gallery_hash, books, gallery_codes, query_dense, gallery_dense,
                    hamming_rate, pq_rate, top_k):
    """The release's final order per query (gallery positions), as ``evalrank_test`` computes it."""
    n_queries, n_gallery = len(query_hash), len(gallery_hash)
    n_books, size, width = books.shape
    signs = lambda h: 2 * (h >= 0).astype(np.int64) - 1
    hamming = signs(query_hash) @ signs(gallery_hash).T                      # HammingD
    survivors = np.argsort(-hamming, axis=1, kind="stable")[:, :int(n_gallery * hamming_rate)]
    blocks = np.zeros((n_books * size, n_books * width))                      # C: (M * K, H)
    for m in range(n_books):
        blocks[m * size:(m + 1) * size, m * width:(m + 1) * width] = books[m]
    onehot = np.zeros((n_gallery, n_books * size))
    onehot[np.arange(n_gallery)[:, None], np.arange(n_books) * size + gallery_codes] = 1
    adc = query_hash @ (onehot @ blocks).T                                    # AQD
    kept = []
    for i in range(n_queries):
        order = np.argsort(-adc[i][survivors[i]], kind="stable")
        kept.append(survivors[i][order][:int(survivors.shape[1] * pq_rate)])
    newsim = np.full((n_queries, n_gallery), -10.0)                           # afterhash
    for i in range(n_queries):
        newsim[i, kept[i]] = gallery_dense[kept[i]] @ query_dense[i]
    rows = np.argsort(-newsim, axis=1, kind="stable")                         # i2t_rerank
    columns = np.argsort(-newsim, axis=0, kind="stable")
    for i in range(n_queries):
        address = [int(np.where(columns[:, t] == i)[0][0]) for t in rows[i, :top_k]]
        rows[i, :top_k] = rows[i, :top_k][np.argsort(address, kind="stable")]
    return [rows[i, :len(kept[i])].tolist() for i in range(n_queries)]


def side(rng, n, books):
    hashed = np.tanh(rng.standard_normal((n, N_BITS))).astype(np.float32)
    dense = rng.standard_normal((n, DIM)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    return hashed, dense.astype(np.float16).astype(np.float32), HashPQ(books).encode(hashed)


@pytest.mark.parametrize("variant", sorted(RELEASE_SEARCH))
def test_release_mode_ranks_as_the_release_evaluation(variant):
    rng = np.random.default_rng(0)
    books = rng.standard_normal((2, M, K, N_BITS // M)).astype(np.float32)
    img_hash, img_dense, img_codes = side(rng, N_IMAGES, books[0])
    txt_hash, txt_dense, txt_codes = side(rng, 5 * N_IMAGES, books[1])
    settings = RELEASE_SEARCH[variant]
    cascade = release_cascade(MEETConfig(model=ModelConfig(text_encoder=f"release_{variant}")))
    assert cascade.survivor_rounding == "floor" and not cascade.fusion and cascade.pq_space == "hash"
    images = GalleryIndex("image", range(N_IMAGES), img_dense, pack_codes(img_hash), img_codes, HashPQ(books[0]))
    texts = GalleryIndex("text", range(5 * N_IMAGES), txt_dense, pack_codes(txt_hash), txt_codes, HashPQ(books[1]))
    queries = {"i2t": type("Q", (), dict(dense=img_dense, hash=img_hash, codes=pack_codes(img_hash))),
               "t2i": type("Q", (), dict(dense=txt_dense, hash=txt_hash, codes=pack_codes(txt_hash)))}
    for direction, gallery, (q_hash, q_dense), (g_hash, g_dense, g_codes, g_books) in (
            ("i2t", texts, (img_hash, img_dense), (txt_hash, txt_dense, txt_codes, books[1])),
            ("t2i", images, (txt_hash, txt_dense), (img_hash, img_dense, img_codes, books[0]))):
        expected = release_ranking(q_hash, g_hash, g_books, g_codes.astype(np.int64), q_dense.astype(np.float64),
                                   g_dense.astype(np.float64), settings[f"hamming_rate_{direction}"],
                                   settings[f"pq_rate_{direction}"], settings[f"top_z_{direction}"])
        result = gallery.search(queries[direction], k=gallery.n_items, mode="release", cascade=cascade, trace=True)
        for row, order in enumerate(expected):
            assert result.ids[row, :len(order)].tolist() == order, (variant, direction, row)
            assert (result.ids[row, len(order):] == -1).all()
        head = result.traces[0]
        assert head.mode == "release" and "release re-sort" in head.notes[0]


def test_the_batch_resort_counts_the_other_queries_and_not_itself():
    """Two queries share candidate 7; the one that scores it higher comes first in 7's column,
    so for the other 7 has address 1 and is re-sorted below its candidate with address 0."""
    candidates = np.array([[7, 3], [7, 5]])
    scores = np.array([[0.9, 0.8], [0.5, 0.4]], np.float32)
    rr = batch_reciprocal_resort(candidates, scores, top_z=2)
    assert rr.order.tolist() == [[0, 1], [1, 0]]  # query 1: candidate 5 (address 0) before 7 (address 1)
    assert rr.comp_ranks.tolist() == [[0, 0], [1, 0]]
    alone = batch_reciprocal_resort(candidates[1:], scores[1:], top_z=2)
    assert alone.order.tolist() == [[0, 1]]  # a single query is never re-sorted
    assert (np.diff(rr.final[1][rr.order[1]]) < 0).all()  # the final scores follow the order
