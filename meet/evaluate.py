"""Evaluation: R@K / rSum under the 5-caption protocol, per retrieval mode, plus
ground-truth precision and mAP@R where relevance is known (Shapes).

Every mode is scored by the search engine itself (:mod:`meet.search`): the split is
indexed once per gallery (the whole split, or each COCO fold) and each mode's score matrix
is :func:`meet.search.full_scores`, so a mode here ranks exactly as ``index.search``
does, ties by gallery position (the one tie rule; :mod:`meet.metrics` ranks the same way):

- ``dense``: inner product of the query's embedding with the stored float16 rows;
- ``hash``: the Hamming stage over the whole gallery (``n_bits - 2 * distance``, or
  ``<h, b>`` with ``hamming_scores="asymmetric"``);
- ``pq``: the quantization stage over the whole gallery, with the index's quantizer (the
  model's hash-space codebooks, or the gallery-fitted dense / residual ones);
- ``cascade``: Stage II, the Hamming filter, then the quantization filter, then the dense
  re-rank of the survivors (rates from ``CascadeConfig``); filtered items rank last;
- ``meet``: the cascade with the re-rank reweighted by consistency and complementarity
  (:mod:`meet.search.rerank`). On Shapes both also report the share of truly relevant
  items each filter drops;
- ``release``: the MEET release's own evaluation (``evalrank_test``), with its constants
  (:func:`meet.config.release_cascade`): the Hamming and quantization filters over the
  hash-space codes, then the top 15 / 12 (BiGRU: 15 / 15) re-sorted by where each query
  falls among the split's queries for each candidate. Its per-stage times are also printed
  as the release prints them.

CLI::

    python -m meet.evaluate --checkpoint RUN --data DIR --split test \
        [--protocol full|1k|5fold|5k] [--modes dense,hash,pq,cascade,meet] [--json OUT] \
        [--pq-space ...] [--hamming-scores ...] [any CascadeConfig field]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from meet import cli, metrics
from meet.config import CascadeConfig, release_cascade
from meet.data.dataset import ImageTextDataset
from meet.errors import ConfigError
from meet.inference import Encoded, MEETModel
from meet.search import MODES, GalleryIndex, build_pair, full_scores, stage_survivors
from meet.search.index import BUILD_FIELDS

Galleries = tuple[GalleryIndex, GalleryIndex]
"""(image index, caption index) of one split."""

FILTER_MODES = ("cascade", "meet", "release")
"""Modes that run the two filters (and so have filter drops to report)."""


def mode_cascade(mode: str, model: MEETModel) -> CascadeConfig:
    """The Stage II settings a mode is evaluated with: the release's for ``release``
    (:func:`meet.config.release_cascade`), the model's own for every other mode."""
    return release_cascade(model.cfg) if mode == "release" else model.cfg.cascade


class SplitIndexes:
    """The index pairs of one encoded split and of its protocol subsets (a COCO fold is
    its own gallery), each built once and shared by every mode; and the last two score
    matrices (i2t and t2i of one mode and subset), since a protocol asks for both."""

    def __init__(self, model: MEETModel, images: Encoded, texts: Encoded, reciprocal: bool = True):
        self.model, self.images, self.texts = model, images, texts
        self.build = model.cfg.cascade if reciprocal else dataclasses.replace(model.cfg.cascade, reciprocal_k=0)
        self._pairs: dict[tuple, Galleries] = {}
        self._scores: tuple[Any, tuple[torch.Tensor, torch.Tensor]] | None = None

    def pair(self, image_rows: np.ndarray | None = None, caption_rows: np.ndarray | None = None,
             build: CascadeConfig | None = None) -> Galleries:
        """The pair over images ``image_rows`` and captions ``caption_rows`` (default: all),
        built with ``build``'s build-time settings (default: the model's; ``release`` needs
        the hash space); ids are positions within the subset."""
        build = build or self.build
        image_rows = np.arange(len(self.images)) if image_rows is None else np.asarray(image_rows, np.int64)
        caption_rows = np.arange(len(self.texts)) if caption_rows is None else np.asarray(caption_rows, np.int64)
        key = (image_rows.tobytes(), caption_rows.tobytes(), tuple(getattr(build, f) for f in BUILD_FIELDS))
        if key not in self._pairs:
            images, texts = _rows(self.images, image_rows), _rows(self.texts, caption_rows)
            self._pairs[key] = build_pair(self.model, images, texts, [str(i) for i in range(len(images))],
                                          [str(i) for i in range(len(texts))], cascade=build)
        return self._pairs[key]

    def pair_for(self, mode: str, image_rows: np.ndarray | None = None,
                 caption_rows: np.ndarray | None = None) -> Galleries:
        """The pair a mode searches: the model's, or a hash-space one for ``release``."""
        return self.pair(image_rows, caption_rows, mode_cascade(mode, self.model) if mode == "release" else None)

    def scores(self, mode: str, image_rows: np.ndarray, caption_rows: np.ndarray,
               cascade: CascadeConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """``(i2t, t2i)`` score matrices, each (n_images, n_captions) of the subset:
        images querying the caption index, and captions querying the image index."""
        key = (mode, np.asarray(image_rows).tobytes(), np.asarray(caption_rows).tobytes(), cascade)
        if self._scores is None or self._scores[0] != key:
            image_index, text_index = self.pair_for(mode, image_rows, caption_rows)
            i2t = full_scores(text_index, _rows(self.images, image_rows), mode, cascade)
            t2i = full_scores(image_index, _rows(self.texts, caption_rows), mode, cascade)
            self._scores = (key, (torch.from_numpy(i2t), torch.from_numpy(t2i).T))
        return self._scores[1]


def _rows(encoded: Encoded, rows: np.ndarray) -> Encoded:
    rows = np.asarray(rows, np.int64)
    if len(rows) == len(encoded) and np.array_equal(rows, np.arange(len(encoded))):
        return encoded
    return Encoded(dense=encoded.dense[rows], hash=encoded.hash[rows], codes=encoded.codes[rows],
                   pq_codes=encoded.pq_codes[rows])


def gallery_pair(model: MEETModel, images: Encoded, texts: Encoded) -> Galleries:
    """Index already-encoded images and captions (ids are positions) with the model's
    Stage II build settings."""
    return SplitIndexes(model, images, texts).pair()


def score_functions(mode: str, model: MEETModel, indexes: SplitIndexes) -> tuple[Callable, Callable]:
    """(i2t, t2i) score functions ``f(image_idx, caption_idx) -> (n_img, n_cap)`` of one mode,
    through the search engine on the subset's own index pair."""
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}", fix=f"choose from {', '.join(MODES)}")
    cascade = mode_cascade(mode, model)
    i2t = lambda i, c: indexes.scores(mode, _indices(i), _indices(c), cascade)[0]
    t2i = lambda i, c: indexes.scores(mode, _indices(i), _indices(c), cascade)[1]
    return i2t, t2i


def _indices(values: Any) -> np.ndarray:
    return np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values, np.int64)


def filter_drops(model: MEETModel, pair: Galleries, images: Encoded, texts: Encoded,
                 relevance: torch.Tensor, cascade: CascadeConfig | None = None) -> dict[str, float]:
    """Share of the truly relevant items each filter removes, per direction (Shapes).

    ``relevance`` (n_captions, n_images). t2i: every caption queries the images; i2t:
    every image queries the captions. ``*_dropped_hamming``: relevant items outside the
    Hamming survivors, over all relevant pairs; ``*_dropped_pq``: relevant items the
    quantization filter removed from the Hamming survivors, over all relevant pairs.
    """
    image_index, text_index = pair
    out = {}
    for queries, index, rel in ((texts, image_index, relevance.numpy()), (images, text_index, relevance.numpy().T)):
        direction = index.direction
        masks = stage_survivors(index, queries, cascade or model.cfg.cascade)
        total = max(int(rel.sum()), 1)
        out[f"{direction}_relevant_dropped_hamming"] = float((rel & ~masks.after_hamming).sum()) / total
        out[f"{direction}_relevant_dropped_pq"] = float((rel & masks.after_hamming & ~masks.after_pq).sum()) / total
        out[f"{direction}_kept_after_hamming"] = float(masks.after_hamming.sum(1).mean())
        out[f"{direction}_kept_after_pq"] = float(masks.after_pq.sum(1).mean())
    return out


def evaluate_mode(mode: str, model: MEETModel, ds: ImageTextDataset, images: Encoded,
                  texts: Encoded, protocol: str = "full",
                  relevance: torch.Tensor | None = None,
                  indexes: SplitIndexes | None = None) -> dict[str, float]:
    """Recall metrics (+ ground-truth metrics, timings) of one mode on one split, with the
    model's ``cfg.cascade`` as the search settings. ``indexes``: the split's index pairs,
    shared between modes (built here if None)."""
    indexes = indexes or SplitIndexes(model, images, texts, reciprocal=mode == "meet")
    i2t_fn, t2i_fn = score_functions(mode, model, indexes)
    caption_image = torch.as_tensor(ds.caption_image, dtype=torch.long)
    result = metrics.evaluate_protocol(i2t_fn, ds.n_images, caption_image, protocol)
    t2i = metrics.evaluate_protocol(t2i_fn, ds.n_images, caption_image, protocol)
    result.update({k: v for k, v in t2i.items() if k.startswith("t2i")})
    result["rsum"] = sum(result[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    result.update(_search_timing(mode, model, indexes.pair_for(mode), images, texts))
    result["encode_seconds"] = images.seconds + texts.seconds
    result["encode_ms_per_image"] = 1000 * images.seconds / max(len(images), 1)
    result["encode_ms_per_caption"] = 1000 * texts.seconds / max(len(texts), 1)
    if relevance is not None:
        everything = (np.arange(ds.n_images), np.arange(len(ds.captions)))
        gt_i2t = metrics.ground_truth_metrics(i2t_fn(*everything), relevance)
        gt_t2i = metrics.ground_truth_metrics(t2i_fn(*everything), relevance)
        result.update({k: v for k, v in gt_i2t.items() if k.startswith("i2t")})
        result.update({k: v for k, v in gt_t2i.items() if k.startswith("t2i")})
    return result


def _search_timing(mode: str, model: MEETModel, pair: Galleries, images: Encoded,
                   texts: Encoded) -> dict[str, float]:
    """Wall time per query of a batched top-10 search of the whole split, both ways, and
    the seconds each stage took in it (``{i2t,t2i}_seconds_{stage}``)."""
    image_index, text_index = pair
    cascade = mode_cascade(mode, model)
    start = time.perf_counter()
    i2t = text_index.search(images, k=10, mode=mode, cascade=cascade)
    mid = time.perf_counter()
    t2i = image_index.search(texts, k=10, mode=mode, cascade=cascade)
    end = time.perf_counter()
    out = {"search_ms_per_image_query": 1000 * (mid - start) / max(len(images), 1),
           "search_ms_per_caption_query": 1000 * (end - mid) / max(len(texts), 1)}
    for direction, result in (("i2t", i2t), ("t2i", t2i)):
        out.update({f"{direction}_seconds_{stage}": value for stage, value in result.timings.items() if value})
    return out


def shapes_relevance(ds: ImageTextDataset) -> torch.Tensor | None:
    """Ground-truth relevance (n_captions, n_images) when the data set carries facts."""
    if ds.scenes is None or ds.caption_facts is None:
        return None
    from meet.data.shapes import relevance_matrix
    return torch.from_numpy(relevance_matrix(ds.caption_facts, ds.scenes))


def single_object_precision(model: MEETModel, ds: ImageTextDataset, modes: tuple[str, ...],
                            indexes: SplitIndexes, k: int = 10) -> dict[str, dict[str, float]]:
    """Text->image P@k of the probe queries with at least k relevant images (Shapes only),
    searched over the split's image index, by group: ``all`` (the 144 single-object
    queries), ``colour_shape`` ("a red circle"), ``size_colour_shape`` ("a small blue
    star") and the one-attribute probes ``colour`` ("something red"), ``shape`` ("a
    circle"), ``size`` ("something small").
    {mode: {group: p, ..., "n_queries": n (single-object queries kept)}}."""
    from meet.data.shapes import attribute_queries, parse_caption, relevance_matrix, single_object_queries

    single = single_object_queries()
    groups = {"colour_shape": [q for q in single if len(q.split()) == 3],   # "a red circle"
              "size_colour_shape": [q for q in single if len(q.split()) == 4], **attribute_queries()}
    queries = [q for group in groups.values() for q in group]
    group_of = np.array([name for name, group in groups.items() for _ in group])
    relevance = torch.from_numpy(relevance_matrix([parse_caption(q) for q in queries], ds.scenes))
    keep = (relevance.sum(dim=1) >= k).numpy()
    kept = [q for q, ok in zip(queries, keep) if ok]
    group_of, relevance = group_of[keep], relevance[torch.from_numpy(keep)]
    probes = model.encode_texts(kept)
    single_kept = np.isin(group_of, ("colour_shape", "size_colour_shape"))
    out = {}
    for mode in modes:
        image_index, _ = indexes.pair_for(mode)
        scores = torch.from_numpy(full_scores(image_index, probes, mode, mode_cascade(mode, model)))
        p = metrics.precision_at_k(scores, relevance, k).numpy()
        out[mode] = {"all": float(p[single_kept].mean()) if single_kept.any() else float("nan"),
                     "n_queries": int(single_kept.sum()),
                     **{name: float(p[group_of == name].mean()) for name in groups if (group_of == name).any()}}
    return out


def evaluate(model: MEETModel, ds: ImageTextDataset, modes: tuple[str, ...] = MODES,
             protocol: str = "full", progress: bool = False) -> dict[str, dict[str, float]]:
    """Every requested mode on one split: {mode: metrics}."""
    images, texts = model.encode_dataset(ds, progress=progress)
    relevance = shapes_relevance(ds)
    indexes = SplitIndexes(model, images, texts, reciprocal="meet" in modes)
    results = {mode: evaluate_mode(mode, model, ds, images, texts, protocol, relevance, indexes)
               for mode in modes}
    if relevance is not None:
        for mode in modes:
            if mode in FILTER_MODES:
                results[mode].update(filter_drops(model, indexes.pair_for(mode), images, texts, relevance,
                                                  mode_cascade(mode, model)))
    if relevance is not None:
        for mode, values in single_object_precision(model, ds, modes, indexes).items():
            results[mode]["t2i_single_object_p@10"] = values["all"]
            for group in ("colour_shape", "size_colour_shape", "colour", "shape", "size"):
                if group in values:
                    results[mode][f"t2i_{group}_p@10"] = values[group]
            results[mode]["single_object_queries"] = values["n_queries"]
    return results


def release_timing(values: dict[str, float]) -> str:
    """The ``release`` mode's stage times as the release's ``evalrank_test`` prints them (its
    hashing, quantization and matching seconds per direction, and its total ``t``, which
    adds 0.3 x the encoding time; ours is both towers' encoding), then ours per query."""
    seconds = lambda direction, stage: values.get(f"{direction}_seconds_{stage}", 0.0)
    encode = values.get("encode_seconds", 0.0)
    total = sum(seconds(d, s) for d in ("i2t", "t2i") for s in ("hamming", "pq", "rerank")) + 0.3 * encode
    return "\n".join([
        "release timing, as evalrank_test prints it (seconds):",
        f"calculate hashing select time: {seconds('i2t', 'hamming'):.4f} {seconds('t2i', 'hamming'):.4f}",
        f"calculate Quantization time: {seconds('i2t', 'pq'):.4f} {seconds('t2i', 'pq'):.4f}",
        f"calculate afterhash matching time i2t_need t2i_need: {seconds('i2t', 'rerank'):.4f} "
        f"{seconds('t2i', 'rerank'):.4f}",
        f"t =  {total:.4f}",
        f"ours: {values.get('search_ms_per_image_query', 0.0):.3f} ms per image query, "
        f"{values.get('search_ms_per_caption_query', 0.0):.3f} ms per caption query (batched, top 10)"])


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
    parser.add_argument("--protocol", default="full", choices=metrics.PROTOCOLS)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {','.join(MODES)}")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image-dir", type=Path, default=None, help="raw images, if not under --data")
    stage2 = parser.add_argument_group("Stage II settings (default: the checkpoint's)")
    cli.add_config_flags(stage2, CascadeConfig, section="cascade")
    return parser


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    from meet.config import validate
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
    model.cfg = validate(model.cfg.override(**cli.given_flags(args, [f.name for f in dataclasses.fields(CascadeConfig)])))
    ds = load_split(args.data, args.split, model.cfg.model, image_dir=args.image_dir)
    results = evaluate(model, ds, modes, args.protocol, progress=True)
    print(format_table(results))
    if "release" in results:
        print(release_timing(results["release"]))
    if args.json:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            cli.atomic_write_json(args.json, results)
        except OSError as exc:
            raise ConfigError(f"cannot write --json {args.json}: {exc}", fix="choose a writable path") from exc
        print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
