"""A resumable on-disk cache of a data set's dense embeddings, in chunks.

``meet.fit_codes`` encodes a whole gallery once with a frozen encoder (hours for a large
photo collection on a CPU) and then trains only small heads on the vectors. This cache
makes the expensive part survive an interruption: the images, then the captions, are
encoded ``chunk_size`` items at a time, and each chunk is written as its own ``.npy`` file
(float32, ``(rows, dim)``) under a temporary name and renamed into place, so a crash leaves
only complete chunks. A later run with the same encoder and items finds them (checked:
shape, dtype, finite values; a bad file is encoded again) and encodes only the rest.

The folder is keyed by the encoder's identity and the items' identity
(:func:`meet.search.cache.dataset_identity`: ids, captions, file sizes and modification
times), so an edited folder or another model never reads stale vectors.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from meet.cli import atomic_write, atomic_write_json
from meet.errors import ConfigError

if TYPE_CHECKING:
    from meet.data.dataset import ImageTextDataset
    from meet.inference import MEETModel

CACHE_FORMAT = 1
"""Bumped when the chunk layout changes, so older caches are not misread."""

Progress = Callable[[int, int], None]


@dataclass
class CachedEmbeddings:
    """``image_dense`` (n_images, dim) and ``text_dense`` (n_captions, dim) float32, and how
    many of the items were ``encoded`` now (the rest came from the cache) in ``seconds``."""

    image_dense: np.ndarray
    text_dense: np.ndarray
    encoded: int
    seconds: float
    folder: Path


def cache_folder(cache_dir: str | Path, encoder_identity: str, dataset: "ImageTextDataset", chunk_size: int) -> Path:
    """``cache_dir/embeddings/<key>`` for this encoder, these items and this chunk size."""
    from meet.search.cache import dataset_identity

    key = {"format": CACHE_FORMAT, "encoder": encoder_identity, "items": dataset_identity(dataset),
           "chunk_size": chunk_size}
    return Path(cache_dir) / "embeddings" / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _read_chunk(path: Path, rows: int, dim: int) -> np.ndarray | None:
    """A complete, sane chunk, or None (missing, cut, wrong shape or type, NaN/inf)."""
    if not path.is_file():
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if array.shape != (rows, dim) or array.dtype != np.float32 or not np.isfinite(array).all():
        return None
    return array


def _write_chunk(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False))


def cached_dense(model: "MEETModel", dataset: "ImageTextDataset", folder: str | Path, chunk_size: int,
                 batch_size: int = 64, progress: bool | Progress = False, meta: dict[str, Any] | None = None
                 ) -> CachedEmbeddings:
    """The dense embeddings of every image and caption of ``dataset``, from the chunks in
    ``folder`` where they are valid, else encoded now (``model.encode_dataset_images`` /
    ``encode_texts``, ``batch_size`` images or 4x as many captions per pass) and written.

    ``progress``: True for a tqdm bar over images + captions, or ``progress(done, total)``.
    ``meta``: written to ``folder/manifest.json`` (what the vectors are, for people)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "manifest.json", {"format": CACHE_FORMAT, "chunk_size": chunk_size,
                                                     "n_images": dataset.n_images, "n_captions": dataset.n_captions,
                                                     "dim": model.cfg.model.embed_dim, **(meta or {})})
    except OSError as exc:
        raise ConfigError(f"cannot write the embedding cache {folder}: {exc}",
                          fix="choose a writable --cache-dir with free space") from exc
    dim = model.cfg.model.embed_dim
    total = dataset.n_images + dataset.n_captions
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="encode", unit="item")
    report = progress if callable(progress) else None
    done = encoded = 0
    started = time.perf_counter()
    sides: dict[str, list[np.ndarray]] = {"image": [], "text": []}
    try:
        for side, n_items in (("image", dataset.n_images), ("text", dataset.n_captions)):
            for number, start in enumerate(range(0, n_items, chunk_size)):
                rows = list(range(start, min(start + chunk_size, n_items)))
                path = folder / f"{side}-{number:05d}.npy"
                chunk = _read_chunk(path, len(rows), dim)
                if chunk is None:
                    if side == "image":
                        chunk = model.encode_dataset_images(dataset, rows, batch_size=batch_size).dense
                    else:
                        chunk = model.encode_texts([dataset.captions[r] for r in rows], batch_size=4 * batch_size).dense
                    chunk = np.ascontiguousarray(chunk, dtype=np.float32)
                    _write_chunk(path, chunk)
                    encoded += len(rows)
                sides[side].append(chunk)
                done += len(rows)
                if bar is not None:
                    bar.set_description(f"encode {side}s")
                    bar.update(len(rows))
                if report is not None:
                    report(done, total)
    except OSError as exc:
        raise ConfigError(f"cannot write the embedding cache {folder}: {exc}",
                          fix="choose a writable --cache-dir with free space") from exc
    finally:
        if bar is not None:
            bar.close()
    image_dense, text_dense = (np.concatenate(sides[s]) if sides[s] else np.zeros((0, dim), np.float32)
                               for s in ("image", "text"))
    return CachedEmbeddings(image_dense, text_dense, encoded, time.perf_counter() - started, folder)
