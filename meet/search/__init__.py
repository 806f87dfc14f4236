"""MEET's Stage II: search a gallery through a Hamming filter, a quantization filter and a
reweighted re-rank.

How a query flows. A model (``meet.load``) encodes the gallery once, and
:func:`build_pair` indexes both sides (:class:`GalleryIndex`, :mod:`.index`): per item the
packed 8-byte sign code, the codes of the side's quantizer (:mod:`.quantizers`: the
hash-space PQ of METHOD.md, the OPQ dense space or the residual space, chosen once from
``CascadeConfig.pq_space``), the float16 dense vector and, for MEET's complementarity, the
item's top-k scores against the other side (:mod:`.storage` writes and checks it on disk).
``index.search(queries, k, mode)`` (:mod:`.cascade`, the engine) takes a block of encoded
queries of the other modality and keeps the ``R`` best items by Hamming score
(:mod:`.hamming`: symmetric distance, or the query's float hash against the signs; over
every code, or only over the inverted lists nearest the query, :mod:`.inverted`), scores
only those by ADC with the quantizer's M x K lookup tables and keeps the ``q`` best
(:mod:`.pq_filter`), then re-ranks those by the dense cosine, in ``meet`` mode reweighted
by consistency and complementarity (:mod:`.rerank`). Every stage ranks ties by gallery
position (:mod:`.topk`, the one tie rule), ``trace=True`` records what each stage kept
(:mod:`.traces`), and evaluation (``meet.evaluate``) and analysis (``meet.analysis``) call
the same stages (:func:`full_scores`, :func:`stage_survivors`, :func:`filter_orders`).

The whole public path::

    import meet
    model = meet.load("assets/shapes-demo")
    images, texts = model.encode_dataset(dataset)            # or encode_images / encode_texts
    image_index, text_index = meet.search.build_pair(model, images, texts, image_ids, caption_ids)
    result = image_index.search(model.encode_texts(["a red circle"]), k=10)   # mode="meet"
"""

from meet.search.cascade import MODES, SearchResult, StageMasks, filter_orders, full_scores, stage_sizes, \
    stage_survivors
from meet.search.index import (GalleryIndex, build_pair, build_settings, checkpoint_fingerprint, load_pair,
                               save_pair)
from meet.search.quantizers import OPQ, HashPQ, Quantizer, ResidualQuantizer
from meet.search.traces import QueryTrace, StageTrace

__all__ = [
    "MODES", "OPQ", "GalleryIndex", "HashPQ", "Quantizer", "QueryTrace", "ResidualQuantizer", "SearchResult",
    "StageMasks", "StageTrace", "build_pair", "build_settings", "checkpoint_fingerprint", "filter_orders",
    "full_scores", "load_pair", "save_pair", "stage_sizes", "stage_survivors",
]
