"""Evaluation: R@K / rSum under the 5-caption protocol, per retrieval mode, plus
ground-truth precision and mAP@R where relevance is known (Shapes).

Modes (how an image and a caption are scored):

- ``dense``: cosine of the L2-normalised joint embeddings;
- ``hash``: Hamming ranking of the sign codes (computed as the dot product of +-1
  codes, ``n_bits - 2 * hamming``). Hamming distances tie a lot; ties are broken by a
  fixed random jitter smaller than one bit, so no mode gains from index order;
- ``pq``: asymmetric quantized distance: the float hash feature of the query against
  the PQ reconstruction of each item, through an M x K lookup table per query. The two
  directions use different codebooks, hence two score matrices;
- ``cascade``: Stage II, the Hamming filter, then the quantization filter, then the dense
  re-rank of the survivors (rates from ``CascadeConfig``); filtered items rank last;
- ``meet``: the cascade with the re-rank reweighted by consistency and complementarity
  (:mod:`meet.reweighting`). On Shapes both also report the share of truly relevant items
  each filter drops.

CLI::

    python -m meet.evaluate --checkpoint RUN --data DIR --split test \
        [--protocol full|1k|5fold|5k] [--modes dense,hash,pq,cascade,meet] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from meet import metrics
from meet.data.dataset import ImageTextDataset
from meet.errors import ConfigError, MEETError
from meet.inference import Encoded, MEETModel
from meet.quantization import adc_scores

if TYPE_CHECKING:
    from meet.index import GalleryIndex

Galleries = tuple["GalleryIndex", "GalleryIndex"]
"""(image index, caption index) of one split."""

MODES = ("dense", "hash", "pq", "cascade", "meet")
_TIE_JITTER = 0.25  # < 1: +-1 code dot products step by 2, so jitter never reorders levels


def encode_dataset(model: MEETModel, ds: ImageTextDataset, batch_size: int = 256,
                   progress: bool = False) -> tuple[Encoded, Encoded]:
    """Encode every image and caption of a split: (images, captions)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=ds.n_images + len(ds.captions), desc=f"encode {ds.split}",
               disable=not progress, leave=False)
    def tick(done: int, total: int, _last=[0]) -> None:
        bar.update(done - _last[0])
        _last[0] = 0 if done >= total else done
    batches = (ds.images(range(s, min(s + batch_size, ds.n_images)))
               for s in range(0, ds.n_images, batch_size))
    images = model.encode_image_batches(batches, ds.n_images, batch_size, progress=tick)
    texts = model.encode_texts(ds.captions, batch_size=batch_size * 4, progress=tick)
    bar.close()
    return images, texts


def score_functions(mode: str, model: MEETModel, images: Encoded, texts: Encoded,
                    pair: Galleries | None = None) -> tuple[Callable, Callable]:
    """(i2t, t2i) score functions ``f(image_idx, caption_idx) -> (n_img, n_cap)``.

    ``pair``: the whole split already indexed (:func:`gallery_pair`), reused by the cascade
    modes when a call covers the whole split instead of being built again."""
    if mode == "dense":
        img, txt = torch.from_numpy(images.dense), torch.from_numpy(texts.dense)
        fn = lambda i, c: img[i] @ txt[c].T
        return fn, fn
    if mode == "hash":
        img = torch.from_numpy(np.where(images.hash >= 0, 1.0, -1.0).astype(np.float32))
        txt = torch.from_numpy(np.where(texts.hash >= 0, 1.0, -1.0).astype(np.float32))
        fn = lambda i, c: img[i] @ txt[c].T + _tie_jitter(i, c)
        return fn, fn
    if mode == "pq":
        pq_img, pq_txt = model.model.image_pq.cpu(), model.model.text_pq.cpu()
        h_img, h_txt = torch.from_numpy(images.hash), torch.from_numpy(texts.hash)
        c_img = torch.from_numpy(images.pq_codes.astype(np.int64))
        c_txt = torch.from_numpy(texts.pq_codes.astype(np.int64))
        i2t = lambda i, c: adc_scores(pq_txt.lookup_tables(h_img[i]), c_txt[c])
        t2i = lambda i, c: adc_scores(pq_img.lookup_tables(h_txt[c]), c_img[i]).T
        return i2t, t2i
    if mode in ("cascade", "meet"):
        return _cascade_functions(mode, model, images, texts, pair)
    raise ConfigError(f"unknown mode {mode!r}", fix=f"choose from {', '.join(MODES)}")


def _tie_jitter(image_idx: torch.Tensor, caption_idx: torch.Tensor) -> torch.Tensor:
    """A fixed pseudo-random value in [0, _TIE_JITTER) per (image, caption) pair, computed
    from the two indices (a multiplicative hash), so breaking Hamming ties needs no
    (n_images, n_captions) table: COCO 5K x 25K would cost 500 MB."""
    mixed = (image_idx.long()[:, None] * 2654435761 + caption_idx.long()[None, :] * 40503 + 12345)
    mixed = (mixed ^ (mixed >> 13)) * 1274126177
    return (mixed % 65521).float() / 65521 * _TIE_JITTER


def _take(encoded: Encoded, index: torch.Tensor) -> Encoded:
    rows = index.numpy()
    return Encoded(dense=encoded.dense[rows], hash=encoded.hash[rows], codes=encoded.codes[rows],
                   pq_codes=encoded.pq_codes[rows])


def gallery_pair(model: MEETModel, images: Encoded, texts: Encoded) -> Galleries:
    """Index already-encoded images and captions (ids are positions) with the model's
    ``reciprocal_k`` and ``pq_space``, for the cascade modes."""
    from meet.index import pair_from_encoded

    return pair_from_encoded(model, images, texts, [str(i) for i in range(len(images))],
                             [str(i) for i in range(len(texts))], model.cfg.cascade.reciprocal_k,
                             pq_space=model.cfg.cascade.pq_space)


def _covers(index: torch.Tensor, n: int) -> bool:
    return len(index) == n and bool(torch.equal(index, torch.arange(n)))


def _cascade_functions(mode: str, model: MEETModel, images: Encoded, texts: Encoded,
                       pair: Galleries | None = None) -> tuple[Callable, Callable]:
    """Score functions through the Stage II cascade; items a filter removed score -inf.

    The gallery of each call is the given subset (a COCO fold is its own gallery), so the
    index is built per subset; a full-split evaluation builds it once (memoised).
    """
    from meet.retrieval import full_scores

    cfg = model.cfg.cascade
    cache: dict[tuple[bytes, bytes], tuple[torch.Tensor, torch.Tensor]] = {}

    def both(i: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (i.numpy().tobytes(), c.numpy().tobytes())
        if key not in cache:
            sub_images, sub_texts = _take(images, i), _take(texts, c)
            whole = pair is not None and _covers(i, len(images)) and _covers(c, len(texts))
            image_index, text_index = pair if whole else gallery_pair(model, sub_images, sub_texts)
            i2t = full_scores(sub_images, text_index, cfg, "i2t", mode)
            t2i = full_scores(sub_texts, image_index, cfg, "t2i", mode)
            cache.clear()
            cache[key] = (torch.from_numpy(i2t), torch.from_numpy(t2i).T)
        return cache[key]
    return (lambda i, c: both(i, c)[0]), (lambda i, c: both(i, c)[1])


def filter_drops(model: MEETModel, pair: Galleries, images: Encoded, texts: Encoded,
                 relevance: torch.Tensor) -> dict[str, float]:
    """Share of the truly relevant items each filter removes, per direction (Shapes).

    ``relevance`` (n_captions, n_images). t2i: every caption queries the images; i2t:
    every image queries the captions. ``*_dropped_hamming``: relevant items outside the
    Hamming survivors, over all relevant pairs; ``*_dropped_pq``: relevant items the
    quantization filter removed from the Hamming survivors, over all relevant pairs.
    """
    from meet.retrieval import stage_survivors

    image_index, text_index = pair
    cfg = model.cfg.cascade
    out = {}
    for direction, queries, gallery, rel in (("t2i", texts, image_index, relevance.numpy()),
                                             ("i2t", images, text_index, relevance.numpy().T)):
        masks = stage_survivors(queries, gallery, cfg, direction)
        total = max(int(rel.sum()), 1)
        out[f"{direction}_relevant_dropped_hamming"] = float((rel & ~masks.after_hamming).sum()) / total
        out[f"{direction}_relevant_dropped_pq"] = float((rel & masks.after_hamming & ~masks.after_pq).sum()) / total
        out[f"{direction}_kept_after_hamming"] = float(masks.after_hamming.sum(1).mean())
        out[f"{direction}_kept_after_pq"] = float(masks.after_pq.sum(1).mean())
    return out


def _as_index(indices: torch.Tensor | np.ndarray | range) -> torch.Tensor:
    return torch.as_tensor(np.asarray(indices), dtype=torch.long)


def evaluate_mode(mode: str, model: MEETModel, ds: ImageTextDataset, images: Encoded,
                  texts: Encoded, protocol: str = "full",
                  relevance: torch.Tensor | None = None,
                  pair: Galleries | None = None) -> dict[str, float]:
    """Recall metrics (+ ground-truth metrics, timings) of one mode on one split.
    ``pair``: the split already indexed, for the cascade modes (built here if None)."""
    if mode in ("cascade", "meet") and pair is None:
        pair = gallery_pair(model, images, texts)
    i2t_fn, t2i_fn = score_functions(mode, model, images, texts, pair)
    i2t_fn_idx = lambda i, c: i2t_fn(_as_index(i), _as_index(c))
    t2i_fn_idx = lambda i, c: t2i_fn(_as_index(i), _as_index(c))
    caption_image = torch.as_tensor(ds.caption_image, dtype=torch.long)
    result = metrics.evaluate_protocol(i2t_fn_idx, ds.n_images, caption_image, protocol)
    if t2i_fn is not i2t_fn:
        t2i = metrics.evaluate_protocol(t2i_fn_idx, ds.n_images, caption_image, protocol)
        result.update({k: v for k, v in t2i.items() if k.startswith("t2i")})
        result["rsum"] = sum(result[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    all_img, all_cap = torch.arange(ds.n_images), torch.arange(len(ds.captions))
    if mode in ("cascade", "meet"):  # the score functions are memoised: time real searches
        result.update(_cascade_timing(mode, model, pair, images, texts))
    else:
        result.update(_search_timing(i2t_fn, t2i_fn, all_img, all_cap))
    result["encode_ms_per_image"] = 1000 * images.seconds / max(len(images), 1)
    result["encode_ms_per_caption"] = 1000 * texts.seconds / max(len(texts), 1)
    if relevance is not None:
        gt_i2t = metrics.ground_truth_metrics(i2t_fn(all_img, all_cap), relevance)
        gt_t2i = metrics.ground_truth_metrics(t2i_fn(all_img, all_cap), relevance)
        result.update({k: v for k, v in gt_i2t.items() if k.startswith("i2t")})
        result.update({k: v for k, v in gt_t2i.items() if k.startswith("t2i")})
    return result


def _search_timing(i2t_fn: Callable, t2i_fn: Callable, all_img: torch.Tensor,
                   all_cap: torch.Tensor) -> dict[str, float]:
    """Wall time per query of scoring the whole split and taking the top 10, batched."""
    start = time.perf_counter()
    i2t_fn(all_img, all_cap).topk(min(10, len(all_cap)), dim=1)
    mid = time.perf_counter()
    t2i_fn(all_img, all_cap).T.topk(min(10, len(all_img)), dim=1)
    end = time.perf_counter()
    return {"search_ms_per_image_query": 1000 * (mid - start) / max(len(all_img), 1),
            "search_ms_per_caption_query": 1000 * (end - mid) / max(len(all_cap), 1)}


def _cascade_timing(mode: str, model: MEETModel, pair: Galleries, images: Encoded,
                    texts: Encoded) -> dict[str, float]:
    """Wall time per query of a batched top-10 cascade search over the whole split."""
    from meet.retrieval import search

    image_index, text_index = pair
    start = time.perf_counter()
    search(images, text_index, model.cfg.cascade, "i2t", k=10, mode=mode)
    mid = time.perf_counter()
    search(texts, image_index, model.cfg.cascade, "t2i", k=10, mode=mode)
    end = time.perf_counter()
    return {"search_ms_per_image_query": 1000 * (mid - start) / max(len(images), 1),
            "search_ms_per_caption_query": 1000 * (end - mid) / max(len(texts), 1)}


def shapes_relevance(ds: ImageTextDataset) -> torch.Tensor | None:
    """Ground-truth relevance (n_captions, n_images) when the data set carries facts."""
    if ds.scenes is None or ds.caption_facts is None:
        return None
    from meet.data.shapes import relevance_matrix
    return torch.from_numpy(relevance_matrix(ds.caption_facts, ds.scenes))


def single_object_precision(model: MEETModel, ds: ImageTextDataset, images: Encoded,
                            texts: Encoded, modes: tuple[str, ...], k: int = 10,
                            pair: Galleries | None = None) -> dict[str, dict[str, float]]:
    """Text->image P@k of the single-object queries with at least k relevant images
    (Shapes only): all of them, "a {colour} {shape}" ("a red circle") and "a {size}
    {colour} {shape}" ("a small blue star"). {mode: {"all": p, "colour_shape": p,
    "size_colour_shape": p, "n_queries": n}}."""
    from meet.data.shapes import parse_caption, relevance_matrix, single_object_queries

    queries = single_object_queries()
    relevance = torch.from_numpy(relevance_matrix([parse_caption(q) for q in queries], ds.scenes))
    keep = relevance.sum(dim=1) >= k
    kept = [q for q, ok in zip(queries, keep) if ok]
    with_size = torch.tensor([len(q.split()) == 4 for q in kept], dtype=torch.bool)  # "a small blue star"
    probes = model.encode_texts(kept)
    relevance = relevance[keep]
    image_index = pair[0] if pair is not None else None
    out = {}
    for mode in modes:
        if mode in ("cascade", "meet"):
            # the gallery is the split's images, indexed against the split's captions
            from meet.retrieval import full_scores
            if image_index is None:
                image_index, _ = gallery_pair(model, images, texts)
            scores = torch.from_numpy(full_scores(probes, image_index, model.cfg.cascade, "t2i", mode))
        else:
            _, t2i_fn = score_functions(mode, model, images, probes)
            scores = t2i_fn(torch.arange(len(images)), torch.arange(len(probes))).T
        p = metrics.precision_at_k(scores, relevance, k)
        out[mode] = {"all": float(p.mean()), "colour_shape": float(p[~with_size].mean()),
                     "size_colour_shape": float(p[with_size].mean()), "n_queries": len(kept)}
    return out


def evaluate(model: MEETModel, ds: ImageTextDataset, modes: tuple[str, ...] = MODES,
             protocol: str = "full", progress: bool = False) -> dict[str, dict[str, float]]:
    """Every requested mode on one split: {mode: metrics}."""
    images, texts = encode_dataset(model, ds, progress=progress)
    relevance = shapes_relevance(ds)
    pair = gallery_pair(model, images, texts) if any(m in ("cascade", "meet") for m in modes) else None
    results = {mode: evaluate_mode(mode, model, ds, images, texts, protocol, relevance, pair)
               for mode in modes}
    if relevance is not None and pair is not None:
        drops = filter_drops(model, pair, images, texts, relevance)
        for mode in modes:
            if mode in ("cascade", "meet"):
                results[mode].update(drops)
    if relevance is not None:
        for mode, values in single_object_precision(model, ds, images, texts, modes, pair=pair).items():
            results[mode]["t2i_single_object_p@10"] = values["all"]
            results[mode]["t2i_colour_shape_p@10"] = values["colour_shape"]
            results[mode]["t2i_size_colour_shape_p@10"] = values["size_colour_shape"]
            results[mode]["single_object_queries"] = values["n_queries"]
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table of the headline numbers, one row per mode."""
    columns = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum",
               "t2i_p@10", "t2i_map@r", "i2t_map@r", "t2i_single_object_p@10",
               "t2i_colour_shape_p@10", "t2i_size_colour_shape_p@10"]
    present = [c for c in columns if any(c in r for r in results.values())]
    lines = ["| mode | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
    for mode, values in results.items():
        cells = [_format_cell(c, values.get(c)) for c in present]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format_cell(column: str, value: float | None) -> str:
    """Fractions (precision, mAP) with 3 decimals; recalls (percent) with 1."""
    if value is None:
        return "-"
    return f"{value:.3f}" if ("p@" in column or "map" in column) else f"{value:.1f}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m meet.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint or run folder")
    parser.add_argument("--data", required=True, type=Path, help="data set folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--protocol", default="full", choices=["full", "1k", "5fold", "5k"])
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {','.join(MODES)}")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--pq-space", choices=["hash", "dense", "residual"], default=None,
                        help="what the quantization filter's codes quantize (default: the checkpoint's)")
    parser.add_argument("--hamming-scores", choices=["symmetric", "asymmetric"], default=None,
                        help="how the Hamming filter ranks codes (default: the checkpoint's)")
    parser.add_argument("--image-dir", type=Path, default=None, help="raw images, if not under --data")
    return parser


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from meet.data.loading import load_split
        from meet.inference import load

        modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
        unknown = [m for m in modes if m not in MODES]
        if unknown or not modes:
            raise ConfigError(f"unknown mode(s) {unknown}", fix=f"--modes takes {','.join(MODES)}")
        if args.json is not None and (args.json.is_dir() or _first_existing(args.json.parent).is_file()):
            raise ConfigError(f"--json {args.json} cannot be written (a folder, or under a file)",
                              fix="pass a file path in a writable folder")
        model = load(args.checkpoint, device=args.device)
        if args.pq_space is not None:
            model.cfg.cascade.pq_space = args.pq_space
        if args.hamming_scores is not None:
            model.cfg.cascade.hamming_scores = args.hamming_scores
        ds = load_split(args.data, args.split, model.cfg.model, image_dir=args.image_dir)
        results = evaluate(model, ds, modes, args.protocol, progress=True)
    except MEETError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(results))
    if args.json:
        tmp = args.json.with_name(args.json.name + ".tmp")
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(results, indent=2, sort_keys=True))
            tmp.replace(args.json)
        except OSError as exc:
            if tmp.is_file():
                tmp.unlink()
            print(f"error: cannot write --json {args.json}: {exc} (choose a writable path)", file=sys.stderr)
            return 2
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
