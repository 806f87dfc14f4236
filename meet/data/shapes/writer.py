"""Writing a Shapes data set: :func:`generate`, the cache :func:`ensure_shapes`, and the
command line (``python -m meet.data.shapes --out DIR``, :func:`main`).

Rendering runs in :mod:`meet.data.shapes.render`, imported lazily so that importing
the package (evaluation code only needs the ground truth) does not load PIL or tqdm.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import numbers
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Sequence

from meet.cli import atomic_folder, run
from meet.errors import ConfigError, DataError

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


SPLITS = ("train", "val", "test")


def split_ranges(n_train: int, n_val: int, n_test: int,
                 splits: Sequence[str] = SPLITS) -> list[tuple[int, int]]:
    """Global image-index ranges ``[start, stop)`` of the chosen splits.

    Images are numbered train, then val, then test, and each image is seeded by its
    global index, so the test split alone (``splits=("test",)``) is byte-identical to
    the test split of the full data set: the app's default gallery needs only that.
    """
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise ConfigError(f"unknown or no Shapes splits {sorted(set(splits))}",
                          fix=f"choose among {', '.join(SPLITS)}")
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val),
              "test": (n_train + n_val, n_train + n_val + n_test)}
    return [bounds[name] for name in SPLITS if name in splits and bounds[name][1] > bounds[name][0]]


def _render_records(images_dir: Path, n_train: int, n_val: int, n_test: int, seed: int,
                    image_size: int, workers: int, progress: bool,
                    splits: Sequence[str] = SPLITS) -> list[dict]:
    """The records of ``splits`` in image order; PNGs written into ``images_dir`` (chunks
    in parallel when ``workers > 1``; each image's randomness depends on (seed, index) only)."""
    from tqdm import tqdm

    from meet.data.shapes.render import render_chunk

    ranges = split_ranges(n_train, n_val, n_test, splits)
    total = sum(stop - start for start, stop in ranges)
    chunk_images = min(_CHUNK_IMAGES, max(8, -(-total // (4 * workers))))
    tasks = [(str(images_dir), start, min(start + chunk_images, stop), seed, image_size,
              n_train, n_val) for first, stop in ranges for start in range(first, stop, chunk_images)]
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


def dataset_json(records: list[dict], seed: int, image_size: int,
                 sizes: tuple[int, int, int] | None = None) -> str:
    """Byte-deterministic JSON text (sorted keys, fixed separators). ``sizes``: the full
    (train, val, test) sizes, stored when only some splits were written."""
    content = {"dataset": "shapes", "seed": seed, "image_size": image_size, "images": records}
    if sizes is not None:
        content["split_sizes"] = list(sizes)
    return json.dumps(content, sort_keys=True, separators=(",", ":"))


def generate(out_dir: str | Path, n_train: int = 20000, n_val: int = 1000, n_test: int = 1000,
             seed: int = 0, image_size: int = 64, workers: int = 1, overwrite: bool = False,
             progress: bool = True, splits: Sequence[str] = SPLITS) -> Path:
    """Write ``out_dir/dataset.json`` and ``out_dir/images/*.png``; return ``out_dir``.

    ``splits``: write only these splits (same images as in the full data set; see
    :func:`split_ranges`). Atomic: everything is written into a hidden sibling folder that is renamed into
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
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK):
            raise PermissionError(f"no write permission for {out.parent}")
    except OSError as exc:
        raise ConfigError(f"cannot write the data set under {out.parent}: {exc.strerror or exc}",
                          fix="choose an --out folder in a writable place") from exc
    with atomic_folder(out, replace=overwrite, fsync=False) as staging:
        (staging / "images").mkdir()
        records = _render_records(staging / "images", n_train, n_val, n_test, seed,
                                  image_size, workers, progress, splits)
        partial = set(splits) != set(SPLITS)
        (staging / "dataset.json").write_text(
            dataset_json(records, seed, image_size, (n_train, n_val, n_test) if partial else None),
            encoding="utf-8")
    return out


def _split_counts(images: list[dict]) -> tuple[int, int, int]:
    splits = [record.get("split") for record in images]
    return splits.count("train"), splits.count("val"), splits.count("test")


def _identity(content: dict) -> tuple:
    """What a cached data set was made with: (dataset, seed, image_size, full split sizes,
    split counts present)."""
    present = _split_counts(content["images"])
    sizes = tuple(content.get("split_sizes", present))
    return content["dataset"], content["seed"], content["image_size"], sizes, present


def ensure_shapes(out_dir: str | Path, n_train: int = 20000, n_val: int = 1000,
                  n_test: int = 1000, seed: int = 0, image_size: int = 64, workers: int = 1,
                  overwrite: bool = False, progress: bool = True,
                  splits: Sequence[str] = SPLITS) -> Path:
    """A cache: generate unless ``out_dir/dataset.json`` exists, else reuse it.

    An existing data set made with other arguments (seed, image size, split sizes, the
    splits written) is an error, or is regenerated when ``overwrite``: a stale cache
    must not silently stand in for the one asked for.
    """
    out = Path(out_dir)
    path = out / "dataset.json"
    if not path.is_file():
        try:
            return generate(out, n_train, n_val, n_test, seed, image_size, workers, overwrite,
                            progress, splits)
        except ConfigError:
            if not path.is_file():  # a bad argument, or a folder holding something else
                raise
            # another process generated it meanwhile: check it below like any cache
    try:
        found = _identity(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        found = (f"unreadable ({exc})",)
    sizes = (n_train, n_val, n_test)
    present = tuple(size if name in splits else 0 for name, size in zip(SPLITS, sizes))
    wanted = ("shapes", seed, image_size, sizes, present)
    if found == wanted:
        return out
    if overwrite:
        return generate(out, n_train, n_val, n_test, seed, image_size, workers, True, progress,
                        splits)
    raise DataError(f"{path} holds another Shapes data set: found (dataset, seed, image_size, "
                    f"(train, val, test) sizes, counts present) = {found}, wanted {wanted}",
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
    parser.add_argument("--splits", default=",".join(SPLITS),
                        help="comma-separated splits to write (e.g. 'test': the same test images "
                             "as the full data set, without rendering the others)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry; bad arguments (or a non-empty --out without --overwrite) exit with 2
    and argparse's usage line before anything is written; a failure while rendering
    prints one ``error:`` line and exits with 2 (:func:`meet.cli.run`)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        _check_arguments(args.n_train, args.n_val, args.n_test, args.seed, args.image_size,
                         args.workers)
        splits = tuple(name.strip() for name in args.splits.split(",") if name.strip())
        ranges = split_ranges(args.n_train, args.n_val, args.n_test, splits)
        if _non_empty(args.out) and not args.overwrite:
            raise ConfigError(f"output folder {args.out} exists and is not empty",
                              fix="choose another folder or pass --overwrite")
    except ConfigError as exc:
        parser.error(str(exc))

    def render() -> None:
        started = time.perf_counter()
        out = generate(args.out, args.n_train, args.n_val, args.n_test, args.seed,
                       args.image_size, args.workers, args.overwrite, not args.quiet, splits)
        total = sum(stop - start for start, stop in ranges)
        seconds = time.perf_counter() - started
        print(f"wrote {total} images to {out} in {seconds:.1f} s ({total / seconds:.0f} images/s)")
    return run(render)
