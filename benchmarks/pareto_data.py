"""The real-embedding gallery of ``benchmarks/pareto.py``: rendered, encoded once, cached.

Cache layout (``--cache``, default ``data/pareto-cache``)::

    shapes-{size}-seed{seed}/                 the Shapes test split (meet.data.shapes.ensure_shapes)
    encoded-{fingerprint[:16]}-{size}-seed{seed}/
        meta.json                             written last: its presence marks a complete cache
        image/ text/                          dense.npy float16 (n, dim), hash.npy float32
                                              (n, n_bits), codes.npy uint8 (n, n_bits / 8)
        queries-image/ queries-text/          a seeded pool of each side's items (positions.npy)
                                              with their float32 dense rows (dense.npy): queries
                                              as the model outputs them, not rounded to float16
        parts/                                while encoding: one atomic folder per chunk, so an
                                              interrupted encode resumes at the first missing one

The key is the checkpoint's fingerprint (its weights and codebooks), the gallery size
(images; captions are five per image) and the Shapes seed: another model or gallery never
reads a stale cache. Every folder is written through :func:`meet.cli.atomic_folder`.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meet.cli import atomic_folder, atomic_write_json

SIDES = ("image", "text")
QUERY_POOL = 10_000
"""Items per side whose float32 dense rows are kept as the query pool (``--queries`` at most)."""
CHUNK_ITEMS = {"image": 50_000, "text": 250_000}
"""Items encoded per resumable part."""


@dataclass
class Side:
    """One side of the encoded gallery: everything a method may index or a query carries."""

    name: str
    dense: np.ndarray   # (n, dim) float16: the stored vectors (MEET's re-rank reads these)
    hash: np.ndarray    # (n, n_bits) float32: hash features before the sign
    codes: np.ndarray   # (n, n_bits / 8) uint8: packed sign codes
    pool: np.ndarray    # (n_pool,) int64 positions of the query pool, in sampled order
    pool_dense: np.ndarray  # (n_pool, dim) float32: their dense rows as the model output them

    @property
    def n_items(self) -> int:
        return self.dense.shape[0]


@dataclass
class Queries:
    """A block of encoded queries (an ``Encoded`` without the PQ codes)."""

    dense: np.ndarray   # (nq, dim) float32
    hash: np.ndarray    # (nq, n_bits) float32
    codes: np.ndarray   # (nq, n_bits / 8) uint8

    def __len__(self) -> int:
        return self.dense.shape[0]

    def rows(self, start: int, stop: int) -> "Queries":
        return Queries(self.dense[start:stop], self.hash[start:stop], self.codes[start:stop])


def queries_from(side: Side, n: int) -> Queries:
    """The first ``n`` items of ``side``'s query pool (a seeded random sample)."""
    if n > len(side.pool):
        raise SystemExit(f"error: --queries {n} exceeds the cached pool of {len(side.pool)} {side.name} items")
    pos = side.pool[:n]
    return Queries(np.array(side.pool_dense[:n], np.float32), np.ascontiguousarray(side.hash[pos]),
                   np.ascontiguousarray(side.codes[pos]))


def encoded_folder(cache: Path, fingerprint: str, size: int, seed: int) -> Path:
    return cache / f"encoded-{fingerprint[:16]}-{size}-seed{seed}"


def load_gallery(checkpoint: Path, size: int, seed: int, cache: Path, data: Path | None = None,
                 workers: int = 2, batch_size: int = 256, log=print) -> tuple[dict[str, Side], dict]:
    """``({"image": Side, "text": Side}, meta)``, encoding (and rendering) what the cache lacks."""
    from meet.search import checkpoint_fingerprint

    fingerprint = checkpoint_fingerprint(checkpoint)
    folder = encoded_folder(cache, fingerprint, size, seed)
    encoded_now = not (folder / "meta.json").is_file()
    if encoded_now:
        _encode(folder, checkpoint, fingerprint, size, seed, cache, data, workers, batch_size, log)
    meta = {**json.loads((folder / "meta.json").read_text()), "folder": str(folder), "encoded_now": encoded_now}
    load = lambda sub, file: np.load(folder / sub / file)  # noqa: E731  (into memory: no page faults in the timings)
    sides = {name: Side(name, load(name, "dense.npy"), load(name, "hash.npy"), load(name, "codes.npy"),
                        load(f"queries-{name}", "positions.npy"), load(f"queries-{name}", "dense.npy"))
             for name in SIDES}
    return sides, meta


def _encode(folder: Path, checkpoint: Path, fingerprint: str, size: int, seed: int, cache: Path,
            data: Path | None, workers: int, batch_size: int, log) -> None:
    import meet
    from meet.data.loading import load_split
    from meet.data.shapes import ensure_shapes
    from tqdm.auto import tqdm

    started = time.perf_counter()
    if data is None:
        data = ensure_shapes(cache / f"shapes-{size}-seed{seed}", n_train=0, n_val=0, n_test=size, seed=seed,
                             workers=workers, splits=("test",))
        log(f"Shapes gallery ready in {data} ({time.perf_counter() - started:.0f} s)")
    model = meet.load(checkpoint, device="cpu")
    ds = load_split(data, "test", model.cfg.model)
    if ds.n_images != size:
        raise SystemExit(f"error: {data} holds {ds.n_images} test images, --size asks for {size}")
    counts = {"image": ds.n_images, "text": len(ds.captions)}
    pools = {name: np.random.default_rng([seed, i]).permutation(counts[name])[:QUERY_POOL]
             for i, name in enumerate(SIDES)}
    parts = folder / "parts"
    bar = tqdm(total=sum(counts.values()), desc=f"encode {size:,} images + {counts['text']:,} captions",
               unit="item", file=sys.stderr)
    offset, dim = 0, None
    for name in SIDES:
        for start in range(0, counts[name], CHUNK_ITEMS[name]):
            stop = min(start + CHUNK_ITEMS[name], counts[name])
            part = parts / f"{name}-{start:010d}"
            if not part.is_dir():
                enc = _encode_rows(model, ds, name, start, stop, batch_size, bar, offset)
                inside = np.sort(pools[name][(pools[name] >= start) & (pools[name] < stop)])
                with atomic_folder(part) as tmp:
                    np.save(tmp / "dense.npy", enc.dense.astype(np.float16))
                    np.save(tmp / "hash.npy", enc.hash.astype(np.float32))
                    np.save(tmp / "codes.npy", enc.codes)
                    np.save(tmp / "pool.npy", inside)
                    np.save(tmp / "pool_dense.npy", enc.dense[inside - start].astype(np.float32))
            offset += stop - start
            bar.n = offset
            bar.refresh()
    bar.close()
    # The finished cache replaces the folder that holds the parts (they go with it).
    with atomic_folder(folder) as tmp:
        for name in SIDES:
            files = sorted(parts.glob(f"{name}-*"))
            (tmp / name).mkdir()
            for array in ("dense", "hash", "codes"):
                np.save(tmp / name / f"{array}.npy", np.concatenate([np.load(f / f"{array}.npy") for f in files]))
            rows = {int(p): row for f in files
                    for p, row in zip(np.load(f / "pool.npy"), np.load(f / "pool_dense.npy"))}
            dim = np.load(files[0] / "pool_dense.npy").shape[1]
            (tmp / f"queries-{name}").mkdir()
            np.save(tmp / f"queries-{name}" / "positions.npy", pools[name].astype(np.int64))
            np.save(tmp / f"queries-{name}" / "dense.npy",
                    np.stack([rows[int(p)] for p in pools[name]]).astype(np.float32))
        atomic_write_json(tmp / "meta.json", {
            "checkpoint": str(checkpoint), "fingerprint": fingerprint, "size": size, "seed": seed,
            "data": str(data), "n_images": counts["image"], "n_captions": counts["text"], "dim": int(dim),
            "query_pool": QUERY_POOL, "encode_s": round(time.perf_counter() - started, 1)})
    log(f"encoded gallery cached in {folder} ({time.perf_counter() - started:.0f} s)")


def _encode_rows(model, ds, side: str, start: int, stop: int, batch_size: int, bar, offset: int):
    def tick(n_done: int, _total: int) -> None:
        bar.n = offset + n_done
        bar.refresh()
    if side == "text":
        return model.encode_texts(ds.captions[start:stop], batch_size=batch_size * 4, progress=tick)
    batches = (ds.images(range(s, min(s + batch_size, stop))) for s in range(start, stop, batch_size))
    return model.encode_image_batches(batches, stop - start, batch_size, progress=tick)
