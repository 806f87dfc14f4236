"""A gallery encoded once: :class:`GalleryIndex` (build, add, search, save, load) and
:func:`build_pair`, which indexes both sides of a retrieval pair.

One :class:`GalleryIndex` holds one side (images or captions) in the representations the
cascade reads:

* ``codes`` (n, n_bits / 8) uint8: packed sign codes (faiss binary layout), for the
  Hamming filter (faiss ``IndexBinaryFlat`` and a fast-scan index, built on first use);
* ``pq_codes`` (n, n_codebooks) and the ``quantizer`` that made them
  (:mod:`meet.search.quantizers`: the hash-space PQ, the OPQ dense space or the residual
  space), for the quantization filter;
* ``dense`` (n, dim) float16: the re-rank's vectors (half the bytes of float32; cosine
  scores move by ~1e-3 at most);
* ``reciprocal`` (n, k) float16 or None: each item's top-k scores (descending) against
  the *other* side's gallery, for MEET's complementarity term;
* ``hash`` (n, n_bits) float32 or None: the hash features before the sign, kept when
  asked (the app's quantization-error view reads them).

``cascade`` holds the Stage II settings the index was built with (the checkpoint's); a
search uses them unless told otherwise. ``fingerprint`` ties an index to the checkpoint
that built it: loading with another checkpoint's fingerprint is an error, because codes of
two models are not comparable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from meet.cli import atomic_folder
from meet.config import CascadeConfig, SearchMode
from meet.errors import CheckpointError, ConfigError, DataError
from meet.search.cascade import SearchResult, run_search
from meet.search.hamming import build_binary_index, build_sign_scan_index
from meet.search.quantizers import Quantizer, gallery_quantizer, quantizer_from_arrays
from meet.search.rerank import reciprocal_scores
from meet.search.storage import read_arrays, read_header, sha256_file, write_index_folder

if TYPE_CHECKING:
    from meet.inference import Encoded, MEETModel

SIDES = ("image", "text")
DIRECTIONS = {"image": "t2i", "text": "i2t"}
"""Gallery side -> the direction that searches it (caption queries over images: t2i)."""
PROGRESS_BAR_ITEMS = 20000
"""Galleries with at least this many images + captions get a tqdm bar by default."""
BUILD_FIELDS = ("pq_space", "pq_fit_items", "pq_beam_size", "reciprocal_k")
INVERTED_FIELDS = ("hamming_index", "hamming_nlist")
"""Cascade fields :func:`build_pair` reads to build the inverted lists up front (a search
may still choose ``hamming_index`` and ``hamming_nprobe`` freely: lists are built on use)."""
INVERTED_PREFIX = "ivf_centroids_"
"""Saved arrays ``ivf_centroids_<nlist>``: the binary centroids of the inverted lists built
for the sublinear Hamming filter (the lists themselves are re-assigned on load)."""
"""The ``CascadeConfig`` fields fixed when an index is built (the others act at search time)."""

Progress = Callable[[int, int, str], None]


class GalleryIndex:
    """One encoded gallery; build with :func:`build_pair`, or from arrays, or :meth:`load`.

    ``side`` (``image``/``text``); ``ids`` (n,) str (image file name or ``str(sentence
    id)``; row i of every array is item ``ids[i]``, and search results are these
    positions); the arrays of the module docstring; ``quantizer``; ``cascade``;
    ``fingerprint``; ``meta`` (JSON-able dict). ``check_values`` validates code ranges
    and id uniqueness (a loaded index, whose files passed their checksums, skips it).
    """

    def __init__(self, side: str, ids: Sequence[Any], dense: Any, codes: Any, pq_codes: Any,
                 quantizer: Quantizer, *, hash: Any = None, reciprocal: Any = None, fingerprint: str = "",
                 cascade: CascadeConfig | None = None, meta: dict | None = None, check_values: bool = True):
        if side not in SIDES:
            raise ConfigError(f"gallery side {side!r} is neither 'image' nor 'text'")
        if not isinstance(quantizer, Quantizer):
            raise ConfigError(f"quantizer must be a meet.search.quantizers.Quantizer, got {type(quantizer).__name__}")
        self.side = side
        self.ids = [str(i) for i in ids]
        self.quantizer = quantizer
        self.dense, self.codes, self.pq_codes, self.hash, self.reciprocal = _checked_arrays(
            len(self.ids), dense, codes, pq_codes, hash, reciprocal, quantizer, check_values)
        if check_values and len(set(self.ids)) != len(self.ids):
            seen: set[str] = set()
            duplicate = next(i for i in self.ids if i in seen or seen.add(i))
            raise DataError(f"gallery ids are not unique (first repeat: {duplicate!r})",
                            fix="give every image / caption its own id")
        self.cascade = cascade or CascadeConfig()
        self.fingerprint = str(fingerprint)
        self.meta = dict(meta or {})
        self._binary_index = None
        self._sign_scan_index = None
        self._inverted: dict[int, Any] = {}

    @property
    def cascade(self) -> CascadeConfig:
        """The Stage II settings searches use by default; its build-time fields
        (:data:`BUILD_FIELDS`) always describe this index (its quantizer, its reciprocal k)."""
        return self._cascade

    @cascade.setter
    def cascade(self, value: CascadeConfig) -> None:
        self._cascade = dataclasses.replace(value, pq_space=self.quantizer.space, reciprocal_k=self.reciprocal_k,
                                            **self.quantizer.settings())

    # ------------------------------------------------------------------ sizes
    @property
    def n_items(self) -> int:
        return len(self.ids)

    @property
    def n_bits(self) -> int:
        return self.codes.shape[1] * 8

    @property
    def dim(self) -> int:
        return self.dense.shape[1]

    @property
    def direction(self) -> str:
        """The direction that searches this gallery: ``t2i`` for images, ``i2t`` for captions."""
        return DIRECTIONS[self.side]

    @property
    def pq_space(self) -> str:
        return self.quantizer.space

    @property
    def codebooks(self) -> np.ndarray:
        return self.quantizer.codebooks

    @property
    def reciprocal_k(self) -> int:
        return 0 if self.reciprocal is None else self.reciprocal.shape[1]

    def bytes_per_item(self) -> dict[str, int]:
        """Bytes one item costs in each representation."""
        return {"binary": self.codes.shape[1], "pq": self.pq_codes.shape[1] * self.pq_codes.itemsize,
                "dense_fp16": self.dim * 2, "dense_fp32": self.dim * 4,
                "reciprocal": self.reciprocal_k * 2}

    @property
    def binary_index(self) -> Any:
        """faiss ``IndexBinaryFlat`` over ``codes``, built on first use (a copy of the codes)."""
        if self._binary_index is None:
            self._binary_index = build_binary_index(self.codes)
        return self._binary_index

    @property
    def sign_scan_index(self) -> Any:
        """faiss fast-scan index of ``codes`` for the asymmetric Hamming filter
        (:func:`meet.search.hamming.build_sign_scan_index`), built on first use."""
        if self._sign_scan_index is None:
            self._sign_scan_index = build_sign_scan_index(self.codes)
        return self._sign_scan_index

    def inverted_lists(self, nlist: int = 0) -> Any:
        """The codes' :class:`~meet.search.inverted.InvertedLists` with ``nlist`` lists, for
        the sublinear Hamming filter; built on first use (binary k-means on the codes, seconds
        at 100k items), kept per ``nlist``, saved with the index and updated by :meth:`add`.
        ``nlist`` 0: the lists this index already has (the first built), else
        :func:`~meet.search.inverted.auto_nlist` of its size."""
        from meet.search.inverted import InvertedLists, auto_nlist

        nlist = int(nlist) or next(iter(self._inverted), 0) or auto_nlist(self.n_items)
        if nlist not in self._inverted:
            seed = int(self.meta.get("build", {}).get("seed", 0))
            self._inverted[nlist] = InvertedLists.build(self.codes, nlist, seed=seed)
        return self._inverted[nlist]

    def __len__(self) -> int:
        return self.n_items

    def __repr__(self) -> str:
        return (f"GalleryIndex(side={self.side!r}, n_items={self.n_items}, dim={self.dim}, "
                f"n_bits={self.n_bits}, quantizer={self.quantizer!r}, "
                f"reciprocal_k={self.reciprocal_k}, fingerprint={self.fingerprint[:12]!r})")

    # ------------------------------------------------------------------ search
    def search(self, queries: Any, k: int = 10, mode: SearchMode = "meet", cascade: CascadeConfig | None = None,
               trace: bool = False, batch_size: int = 256, workers: int | None = None) -> SearchResult:
        """The top ``k`` items for each query of the other modality; see :mod:`meet.search`.

        ``queries``: an :class:`~meet.inference.Encoded` (``dense``, ``hash``, ``codes``) of
        captions for an image index, of images for a caption index; ``mode``: ``dense``,
        ``hash``, ``pq``, ``cascade`` or ``meet``; ``cascade``: Stage II settings for this
        call (default: the index's own, i.e. the checkpoint's; the fields fixed at build
        time, :data:`BUILD_FIELDS`, always come from the index); ``trace``: attach a
        :class:`~meet.search.traces.QueryTrace` per query; ``batch_size``/``workers``:
        speed only, never results.
        """
        return run_search(self, queries, k=k, mode=mode, cascade=self.settings(cascade), trace=trace,
                          batch_size=batch_size, workers=workers)

    def settings(self, cascade: CascadeConfig | None = None) -> CascadeConfig:
        """``cascade`` (default: the index's) with the build-time fields of this index."""
        if cascade is None:
            return self.cascade
        return dataclasses.replace(cascade, **{name: getattr(self.cascade, name) for name in BUILD_FIELDS})

    # ------------------------------------------------------------------ growth
    def add(self, ids: Sequence[Any], items: "Encoded", other: "GalleryIndex | np.ndarray | None" = None,
            reciprocal: np.ndarray | None = None) -> None:
        """Append items encoded with the same checkpoint (an :class:`~meet.inference.Encoded`);
        their quantization codes come from this index's quantizer.

        If this index stores reciprocal scores, the new items need theirs: pass them, or
        pass ``other`` (the other side's index, or its dense vectors) to compute them.
        Stale by design: the reciprocal scores of items already in either index are NOT
        recomputed, so the other side's stored rankings do not include the new items;
        rebuild both with :func:`build_pair` for exact complementarity.
        """
        pq_codes = self.quantizer.encode(self.quantizer.source(items))
        new = GalleryIndex(self.side, ids, items.dense, items.codes, pq_codes, self.quantizer,
                           hash=items.hash if self.hash is not None else None)
        if new.dim != self.dim or new.n_bits != self.n_bits:
            raise DataError(f"new items have dim {new.dim} / {new.n_bits} bits, the index "
                            f"{self.dim} / {self.n_bits}", fix="encode them with the same checkpoint")
        clash = set(new.ids) & set(self.ids)
        if clash:
            raise DataError(f"{len(clash)} new ids are already in the index (e.g. {sorted(clash)[0]!r})")
        rows = None
        if self.reciprocal is not None:
            rows = self._new_reciprocal(new, reciprocal, other)
        elif reciprocal is not None:
            raise DataError("this index stores no reciprocal scores; leave reciprocal=None")
        self.dense = np.concatenate([self.dense, new.dense])
        self.codes = np.concatenate([self.codes, new.codes])
        self.pq_codes = np.concatenate([self.pq_codes, new.pq_codes])
        if self.hash is not None:
            self.hash = np.concatenate([self.hash, new.hash])
        if rows is not None:
            self.reciprocal = np.concatenate([self.reciprocal, rows])
        self.ids = self.ids + new.ids
        if self._binary_index is not None:
            self._binary_index.add(np.ascontiguousarray(new.codes))
        self._sign_scan_index = None  # rebuilt on next use (fast, and rarely needed after add)
        self._inverted = {nlist: lists.assign(lists.centroids, self.codes) for nlist, lists in self._inverted.items()}
        self.meta["n_added"] = int(self.meta.get("n_added", 0)) + new.n_items

    def _new_reciprocal(self, new: "GalleryIndex", reciprocal: np.ndarray | None, other: Any) -> np.ndarray:
        k = self.reciprocal_k
        if reciprocal is not None:
            rows = np.asarray(reciprocal)
            if rows.shape != (new.n_items, k):
                raise DataError(f"reciprocal for the new items has shape {rows.shape}, expected "
                                f"{(new.n_items, k)}")
            return rows.astype(np.float16)
        if other is None:
            raise DataError("this index stores reciprocal scores; the new items need theirs",
                            fix="pass reciprocal=... or other=<the other side's index>")
        other_dense = other.dense if isinstance(other, GalleryIndex) else np.asarray(other)
        if other_dense.shape[0] < k or other_dense.shape[1] != self.dim:
            raise DataError(f"the other side has shape {other_dense.shape}; need >= {k} rows of dim {self.dim}")
        rows, _ = reciprocal_scores(new.dense, other_dense.astype(np.float16), k, 0)
        return rows

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path) -> Path:
        """Write the index to ``folder`` atomically (see :mod:`meet.search.storage`)."""
        arrays = {"dense": self.dense, "codes": self.codes, "pq_codes": self.pq_codes, **self.quantizer.arrays(),
                  **{f"{INVERTED_PREFIX}{nlist}": lists.centroids for nlist, lists in self._inverted.items()}}
        for name in ("hash", "reciprocal"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        header = {"side": self.side, "ids": self.ids, "fingerprint": self.fingerprint, "meta": self.meta,
                  "n_items": self.n_items, "cascade": dataclasses.asdict(self.cascade),
                  "quantizer": {"space": self.quantizer.space, **self.quantizer.settings()}}
        try:
            json.dumps(self.meta)
        except TypeError as exc:
            raise DataError(f"index meta is not JSON-serialisable ({exc})",
                            fix="keep meta to strings, numbers, lists and dicts") from exc
        return write_index_folder(Path(folder), arrays, header)

    @classmethod
    def load(cls, folder: str | Path, fingerprint: str | None = None, mmap: bool = True,
             verify: bool = True) -> "GalleryIndex":
        """Read a saved index; arrays memory-mapped when ``mmap``.

        ``fingerprint``: the checkpoint the caller will encode queries with (see
        :func:`checkpoint_fingerprint`); a different one is a :class:`CheckpointError`.
        ``verify``: check every file's sha256 (reads each byte once; sizes, shapes and
        dtypes are always checked).
        """
        folder = Path(folder)
        header = read_header(folder)
        if fingerprint is not None and fingerprint != header.get("fingerprint", ""):
            raise CheckpointError(
                f"index {folder} was built with another checkpoint; rebuild it "
                f"(index fingerprint {header.get('fingerprint', '')[:12]!r}, "
                f"checkpoint {fingerprint[:12]!r})",
                fix="rebuild the index with meet.search.build_pair using this checkpoint")
        arrays = read_arrays(folder, header, mmap=mmap, verify=verify)
        missing = {"dense", "codes", "pq_codes", "codebooks"} - set(arrays)
        if missing:
            raise DataError(f"index {folder} lacks arrays {sorted(missing)}", fix="rebuild the index")
        settings = dict(header.get("quantizer") or {})
        quantizer = quantizer_from_arrays(str(settings.pop("space", "")), {
            name: arrays[name] for name in ("codebooks", "rotation") if name in arrays}, settings)
        try:
            cascade = CascadeConfig(**header.get("cascade", {}))
        except TypeError as exc:
            raise DataError(f"index {folder}: its cascade settings are not this version's ({exc})",
                            fix="rebuild the index") from exc
        index = cls(header.get("side", ""), header.get("ids", []), arrays["dense"], arrays["codes"],
                    arrays["pq_codes"], quantizer, hash=arrays.get("hash"), reciprocal=arrays.get("reciprocal"),
                    fingerprint=header.get("fingerprint", ""), cascade=cascade, meta=header.get("meta", {}),
                    check_values=False)
        index._restore_inverted({name: array for name, array in arrays.items() if name.startswith(INVERTED_PREFIX)})
        return index

    def _restore_inverted(self, saved: dict[str, np.ndarray]) -> None:
        """Inverted lists from saved centroids: the k-means is the slow part (seconds at
        100k items); re-assigning the codes to fixed centroids is one faiss pass."""
        from meet.search.inverted import InvertedLists

        for name, centroids in saved.items():
            if centroids.ndim != 2 or centroids.dtype != np.uint8 or centroids.shape[1] != self.codes.shape[1]:
                raise DataError(f"index array {name!r}: {centroids.dtype}{list(centroids.shape)} are not binary "
                                f"centroids of {self.n_bits}-bit codes", fix="rebuild the index")
            self._inverted[centroids.shape[0]] = InvertedLists.assign(np.asarray(centroids), self.codes)


def _checked_arrays(n: int, dense: Any, codes: Any, pq_codes: Any, hash: Any, reciprocal: Any,
                    quantizer: Quantizer, check_values: bool) -> tuple:
    """Validate shapes and dtypes against ``n`` ids and the quantizer; return storage-typed
    arrays (``dense``/``reciprocal`` float16, ``hash`` float32; float16 input is kept
    without a copy, memory maps stay mapped)."""
    dense, codes, pq_codes = np.asanyarray(dense), np.asanyarray(codes), np.asanyarray(pq_codes)

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise DataError(f"gallery index: {message}", fix="check the arrays passed to the index")

    need(dense.ndim == 2 and dense.shape[0] == n, f"dense must be (n_items={n}, dim), got {dense.shape}")
    need(np.issubdtype(dense.dtype, np.floating), f"dense must be float16/float32, got {dense.dtype}")
    need(codes.ndim == 2 and codes.shape[0] == n and codes.shape[1] > 0,
         f"codes must be (n_items={n}, n_bits/8), got {codes.shape}")
    need(codes.dtype == np.uint8, f"codes must be packed uint8, got {codes.dtype}")
    read_dim = {"hash": codes.shape[1] * 8, "dense": dense.shape[1]}[quantizer.reads]
    need(quantizer.dim == read_dim, f"the {quantizer.space} quantizer reads {quantizer.dim}-d {quantizer.reads} "
         f"vectors but the items have {read_dim}")
    need(pq_codes.ndim == 2 and pq_codes.shape == (n, quantizer.n_codebooks),
         f"pq_codes must be (n_items={n}, n_codebooks={quantizer.n_codebooks}), got {pq_codes.shape}")
    need(np.issubdtype(pq_codes.dtype, np.integer), f"pq_codes must be integers, got {pq_codes.dtype}")
    if check_values and n:
        need(int(pq_codes.min()) >= 0 and int(pq_codes.max()) < quantizer.codebook_size,
             f"pq_codes must lie in 0..{quantizer.codebook_size - 1}")
    if pq_codes.dtype != quantizer.code_dtype:
        pq_codes = pq_codes.astype(quantizer.code_dtype)
    if hash is not None:
        hash = np.asanyarray(hash)
        need(hash.shape == (n, codes.shape[1] * 8), f"hash must be (n_items={n}, n_bits={codes.shape[1] * 8}), "
             f"got {hash.shape}")
        if hash.dtype != np.float32:
            hash = hash.astype(np.float32)
    if reciprocal is not None:
        reciprocal = np.asanyarray(reciprocal)
        need(reciprocal.ndim == 2 and reciprocal.shape[0] == n,
             f"reciprocal must be (n_items={n}, k), got {reciprocal.shape}")
        need(np.issubdtype(reciprocal.dtype, np.floating), f"reciprocal must be float, got {reciprocal.dtype}")
        if reciprocal.dtype != np.float16:
            reciprocal = reciprocal.astype(np.float16)
        if check_values and reciprocal.shape[1] > 1:
            need(bool(np.all(reciprocal[:, :-1] >= reciprocal[:, 1:])),
                 "reciprocal rows must be sorted in descending order")
    if dense.dtype != np.float16:
        dense = dense.astype(np.float16)
    return dense, codes, pq_codes, hash, reciprocal


# ------------------------------------------------------------------ building

def checkpoint_fingerprint(folder: str | Path) -> str:
    """sha256 identity of a checkpoint's weights and codebooks (a run folder resolves to
    its best checkpoint). Two checkpoints share it only if both files are identical."""
    from meet.checkpoint import resolve_checkpoint

    folder = resolve_checkpoint(folder)
    digest = hashlib.sha256()
    for name in ("model.safetensors", "codebooks.safetensors"):
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"missing {path}", fix="the checkpoint folder is incomplete")
        digest.update(f"{name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def model_fingerprint(model: "MEETModel") -> str:
    """:func:`checkpoint_fingerprint` of a loaded model's folder ("" for an in-memory model)."""
    return checkpoint_fingerprint(model.folder) if model.folder is not None else ""


def build_settings(model: "MEETModel", cascade: CascadeConfig | None = None) -> dict[str, Any]:
    """Everything besides the checkpoint and the items that changes an index this model
    builds: the build-time cascade fields and the seed and k-means iterations the dense
    quantizers are fitted with. Caches key on it."""
    cascade = cascade or model.cfg.cascade
    inverted = {"hamming_nlist": cascade.hamming_nlist} if cascade.hamming_index == "ivf" else {}
    return {**{name: getattr(cascade, name) for name in BUILD_FIELDS}, **inverted,
            "seed": model.cfg.train.seed, "kmeans_iters": model.cfg.train.kmeans_iters}


def build_pair(model: "MEETModel", images: "Encoded", texts: "Encoded", image_ids: Sequence[Any],
               caption_ids: Sequence[Any], *, cascade: CascadeConfig | None = None, keep_hash: bool = False,
               meta: dict | None = None, progress: Progress | None = None) -> tuple[GalleryIndex, GalleryIndex]:
    """Index encoded images and captions (``model.encode_dataset`` / ``encode_images`` /
    ``encode_texts``): ``(image_index, text_index)``.

    ``cascade`` (default: the model's ``cfg.cascade``) sets what the build fixes
    (:data:`BUILD_FIELDS`): ``pq_space`` picks the quantizer (:func:`meet.search.quantizers.
    gallery_quantizer`: the model's codebooks, or fitted on each side's own vectors), and
    each item keeps its top ``reciprocal_k`` scores against the other side (0 = none;
    exact faiss k-NN on the stored float16 vectors, two products of the image x caption
    matrix: roughly 20-30 min for 100k images x 500k captions at dim 256 on 2 cores).
    ``keep_hash`` stores the hash features too. ``progress(done, total, message)``.
    """
    cascade = cascade or model.cfg.cascade
    if len(image_ids) != len(images) or len(caption_ids) != len(texts):
        raise DataError(f"{len(images)} images with {len(image_ids)} ids, {len(texts)} captions with "
                        f"{len(caption_ids)} ids", fix="pass one id per item")
    cfg = dataclasses.replace(model.cfg, cascade=cascade)
    image_rec = text_rec = None
    if cascade.reciprocal_k > 0 and len(images) and len(texts):
        report = (lambda d, t: progress(d, t, "reciprocal top-k scores")) if progress else None
        image_rec, text_rec = reciprocal_scores(images.dense.astype(np.float16), texts.dense.astype(np.float16),
                                                cascade.reciprocal_k, cascade.reciprocal_k, progress=report)
    fingerprint = model_fingerprint(model)
    meta = {**(meta or {}), "checkpoint": str(model.folder or ""), "preset": model.cfg.preset,
            "n_images": len(images), "n_captions": len(texts), "build": build_settings(model, cascade)}
    sides = []
    for side, ids, items, rec in (("image", image_ids, images, image_rec), ("text", caption_ids, texts, text_rec)):
        quantizer = gallery_quantizer(model, side, items, cfg)
        sides.append(GalleryIndex(side, ids, items.dense, items.codes, quantizer.encode(quantizer.source(items)),
                                  quantizer, hash=items.hash if keep_hash else None, reciprocal=rec,
                                  fingerprint=fingerprint, cascade=cascade, meta=meta))
        if cascade.hamming_index == "ivf" and len(items):
            if progress:
                progress(0, 1, f"{side} side: inverted lists for the Hamming filter")
            sides[-1].inverted_lists(cascade.hamming_nlist)
    return sides[0], sides[1]


def save_pair(folder: str | Path, images: GalleryIndex, texts: GalleryIndex) -> Path:
    """Write both sides to ``folder/image`` and ``folder/text`` as one atomic step."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not (folder / "image").is_dir():
        raise DataError(f"refusing to overwrite {folder}: it exists and is not a saved index pair",
                        fix="save the pair to a new or empty folder")
    with atomic_folder(folder) as tmp:
        images.save(tmp / "image")
        texts.save(tmp / "text")
    return folder


def load_pair(folder: str | Path, fingerprint: str | None = None, mmap: bool = True,
              verify: bool = True) -> tuple[GalleryIndex, GalleryIndex]:
    """``(image_index, text_index)`` saved by :func:`save_pair` (see :meth:`GalleryIndex.load`)."""
    folder = Path(folder)
    images = GalleryIndex.load(folder / "image", fingerprint, mmap, verify)
    texts = GalleryIndex.load(folder / "text", fingerprint, mmap, verify)
    if images.side != "image" or texts.side != "text":
        raise DataError(f"{folder} holds sides {images.side!r} and {texts.side!r}, not image and text",
                        fix="rebuild the pair")
    return images, texts


def progress_reporter(progress: Progress | None, total_items: int) -> tuple[Progress, Callable[[], None]]:
    """``(report(done, total, message), close)``: the caller's callback, or a tqdm bar
    for galleries of at least :data:`PROGRESS_BAR_ITEMS` items, or nothing."""
    if progress is not None:
        return progress, lambda: None
    if total_items < PROGRESS_BAR_ITEMS:
        return (lambda done, total, message: None), lambda: None
    from tqdm.auto import tqdm

    bar = tqdm(total=1, leave=False)
    state = {"message": None}

    def report(done: int, total: int, message: str) -> None:
        if message != state["message"]:
            state["message"] = message
            bar.reset(total=total)
            bar.set_description(message)
        bar.n = done
        bar.refresh()
    return report, bar.close
