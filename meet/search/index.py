"""A gallery encoded once: binary codes, PQ codes, dense vectors, ids; build, add, save, load.

One :class:`GalleryIndex` holds one side (images or captions) of a retrieval pair, in the
representations the cascade reads (:mod:`meet.retrieval`):

* ``codes`` (n, n_bits / 8) uint8: packed sign codes (faiss binary layout), searched
  through a lazily built faiss ``IndexBinaryFlat`` (``binary_index``);
* ``pq_codes`` (n, n_codebooks) uint8 and this side's ``codebooks`` (M, K, sub_dim):
  what the quantization filter reads. They quantize the hash features (``pq_space``
  ``"hash"``, METHOD.md, the model's own codebooks) or, when the index holds a
  ``rotation`` (dim, dim), the OPQ-rotated dense vectors (``"dense"``, fitted on this
  gallery at build time; see :mod:`meet.dense_pq` for why and what it costs);
* ``dense`` (n, dim) float16: the re-rank's vectors (half the bytes of float32; cosine
  scores move by ~1e-3 at most);
* ``reciprocal`` (n, k) float16 or None: each item's top-k scores (descending) against
  the *other* side's gallery, for MEET's complementarity term.

:func:`build_pair` encodes both sides with one checkpoint and computes both sides'
reciprocal scores (:mod:`meet.reciprocal`: exact faiss k-NN by inner product on the
stored float16 vectors, two products of the image x caption matrix: roughly 20-30 min
for 100k images x 500k captions at dim 256 on 2 cores; ``reciprocal_k=0`` skips them).

``fingerprint`` ties an index to the checkpoint that built it: loading with another
checkpoint's fingerprint is an error, because codes of two models are not comparable.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from meet.config import CascadeConfig
from meet.errors import CheckpointError, ConfigError, DataError
from meet.filters import build_binary_index, build_sign_scan_index
from meet.index_store import read_arrays, read_header, sha256_file, write_index_folder
from meet.reciprocal import reciprocal_scores

if TYPE_CHECKING:
    from meet.inference import Encoded, MEETModel

SIDES = ("image", "text")
PQ_SPACES = ("hash", "dense", "residual")
"""What a gallery's PQ codes can quantize (``CascadeConfig.pq_space``)."""
PROGRESS_BAR_ITEMS = 20000
"""Galleries with at least this many images + captions get a tqdm bar by default."""

Progress = Callable[[int, int, str], None]


class GalleryIndex:
    """One encoded gallery; construct with :meth:`from_arrays`, :func:`build_pair` or :meth:`load`.

    Attributes: ``side`` (``image``/``text``); ``ids`` (n,) str (image file name or
    ``str(sentence id)``; row i of every array is item ``ids[i]``, and search results are
    these row positions); ``dense`` (n, dim) float16; ``codes`` (n, n_bits / 8) uint8;
    ``pq_codes`` (n, n_codebooks) uint8; ``codebooks`` (n_codebooks, codebook_size,
    sub_dim) float32; ``reciprocal`` (n, k) float16 or None; ``fingerprint`` (the
    checkpoint's, see :func:`checkpoint_fingerprint`); ``meta`` (JSON-able dict).
    """

    def __init__(self, side: str, ids: Sequence[Any], dense: np.ndarray, codes: np.ndarray,
                 pq_codes: np.ndarray, codebooks: np.ndarray, reciprocal: np.ndarray | None = None,
                 fingerprint: str = "", meta: dict | None = None, check_values: bool = True,
                 rotation: np.ndarray | None = None, pq_space: str | None = None):
        if side not in SIDES:
            raise ConfigError(f"gallery side {side!r} is neither 'image' nor 'text'")
        self.side = side
        self.ids = [str(i) for i in ids]
        self._pq_space = _checked_space(pq_space, rotation)
        self.dense, self.codes, self.pq_codes, self.codebooks, self.reciprocal = _checked_arrays(
            len(self.ids), dense, codes, pq_codes, codebooks, reciprocal, check_values, self._pq_space)
        self.rotation = _checked_rotation(rotation, self.dense.shape[1])
        if check_values and len(set(self.ids)) != len(self.ids):
            seen: set[str] = set()
            duplicate = next(i for i in self.ids if i in seen or seen.add(i))
            raise DataError(f"gallery ids are not unique (first repeat: {duplicate!r})",
                            fix="give every image / caption its own id")
        self.fingerprint = str(fingerprint)
        self.meta = dict(meta or {})
        self._binary_index = None
        self._sign_scan_index = None

    @classmethod
    def from_arrays(cls, side: str, ids: Sequence[Any], dense: np.ndarray, codes: np.ndarray,
                    pq_codes: np.ndarray, codebooks: np.ndarray, reciprocal: np.ndarray | None = None,
                    fingerprint: str = "", meta: dict | None = None,
                    rotation: np.ndarray | None = None, pq_space: str | None = None) -> "GalleryIndex":
        """Wrap ready arrays (shapes/dtypes checked; ``dense``/``reciprocal`` stored as
        float16, ``codebooks`` float32; float16 input is kept without a copy). What
        ``pq_codes``/``codebooks`` quantize (``pq_space``, default ``"dense"`` with a
        ``rotation``, else ``"hash"``): the hash features (``hash``: books (M, K, n_bits / M)),
        the rotated dense vectors (``dense``: books (M, K, dim / M)), or the dense vectors as
        sums of one full-size codeword per book (``residual``: books (M, K, dim))."""
        return cls(side, ids, dense, codes, pq_codes, codebooks, reciprocal, fingerprint, meta,
                   rotation=rotation, pq_space=pq_space)

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
    def pq_space(self) -> str:
        """What the PQ codes quantize: ``"hash"`` (the model's h), ``"dense"`` (rotated, PQ)
        or ``"residual"`` (the dense vectors, residual quantization)."""
        return self._pq_space

    def pq_vectors(self, dense: np.ndarray, hash_features: np.ndarray) -> np.ndarray:
        """What this index's PQ codes quantize, for items or queries given both their
        ``dense`` (n, dim) and ``hash_features`` (n, n_bits): the hash features, or the
        dense vectors rotated into the codebooks' space. Lookup tables are built from it."""
        if self._pq_space == "hash":
            return hash_features
        if self._pq_space == "residual":
            return np.asarray(dense, dtype=np.float32)
        from meet.dense_pq import rotate

        return rotate(dense, self.rotation)

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
        (:func:`meet.filters.build_sign_scan_index`), built on first use."""
        if self._sign_scan_index is None:
            self._sign_scan_index = build_sign_scan_index(self.codes)
        return self._sign_scan_index

    def __len__(self) -> int:
        return self.n_items

    def __repr__(self) -> str:
        return (f"GalleryIndex(side={self.side!r}, n_items={self.n_items}, dim={self.dim}, "
                f"n_bits={self.n_bits}, n_codebooks={self.pq_codes.shape[1]}, "
                f"reciprocal_k={self.reciprocal_k}, fingerprint={self.fingerprint[:12]!r})")

    # ------------------------------------------------------------------ growth
    def add(self, ids: Sequence[Any], dense: np.ndarray, codes: np.ndarray, pq_codes: np.ndarray,
            reciprocal: np.ndarray | None = None, other: "GalleryIndex | np.ndarray | None" = None) -> None:
        """Append items (encoded with the same checkpoint).

        If this index stores reciprocal scores, the new items need theirs: pass them, or
        pass ``other`` (the other side's index, or its dense vectors) to compute them.
        Stale by design: the reciprocal scores of items already in either index are NOT
        recomputed, so the other side's stored rankings do not include the new items;
        rebuild both with :func:`build_pair` for exact complementarity.
        """
        new = GalleryIndex(self.side, ids, dense, codes, pq_codes, self.codebooks, rotation=self.rotation,
                           pq_space=self._pq_space)
        if new.dim != self.dim or new.codes.shape[1] != self.codes.shape[1]:
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
        self.pq_codes = np.concatenate([self.pq_codes, new.pq_codes.astype(self.pq_codes.dtype)])
        if rows is not None:
            self.reciprocal = np.concatenate([self.reciprocal, rows])
        self.ids = self.ids + new.ids
        if self._binary_index is not None:
            self._binary_index.add(np.ascontiguousarray(new.codes))
        self._sign_scan_index = None  # rebuilt on next use (fast, and rarely needed after add)
        self.meta["n_added"] = int(self.meta.get("n_added", 0)) + new.n_items

    def add_encoded(self, ids: Sequence[Any], encoded: "Encoded",
                    other: "GalleryIndex | np.ndarray | None" = None) -> None:
        """:meth:`add` for an :class:`~meet.inference.Encoded` (a dense-space index
        quantizes the new dense vectors with its own rotation and codebooks)."""
        pq_codes = encoded.pq_codes
        if self._pq_space == "dense":
            from meet.dense_pq import encode_dense_pq

            pq_codes = encode_dense_pq(encoded.dense, self.rotation, self.codebooks)
        elif self._pq_space == "residual":
            from meet.dense_pq import encode_residual

            beam = self.meta.get("pq_beam_size", CascadeConfig().pq_beam_size)  # what it was built with
            pq_codes = encode_residual(encoded.dense, self.codebooks, int(beam))
        self.add(ids, encoded.dense, encoded.codes, pq_codes, other=other)

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
        """Write the index to ``folder`` atomically (see :mod:`meet.index_store`)."""
        arrays = {"dense": self.dense, "codes": self.codes, "pq_codes": self.pq_codes,
                  "codebooks": self.codebooks}
        if self.reciprocal is not None:
            arrays["reciprocal"] = self.reciprocal
        if self.rotation is not None:
            arrays["rotation"] = self.rotation
        header = {"side": self.side, "ids": self.ids, "fingerprint": self.fingerprint,
                  "meta": self.meta, "n_items": self.n_items, "pq_space": self._pq_space}
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
                fix="rebuild the index with meet.index.build_pair using this checkpoint")
        arrays = read_arrays(folder, header, mmap=mmap, verify=verify)
        missing = {"dense", "codes", "pq_codes", "codebooks"} - set(arrays)
        if missing:
            raise DataError(f"index {folder} lacks arrays {sorted(missing)}", fix="rebuild the index")
        return cls(header.get("side", ""), header.get("ids", []), arrays["dense"], arrays["codes"],
                   arrays["pq_codes"], arrays["codebooks"], arrays.get("reciprocal"),
                   header.get("fingerprint", ""), header.get("meta", {}), check_values=False,
                   rotation=arrays.get("rotation"), pq_space=header.get("pq_space"))


def _checked_space(pq_space: str | None, rotation: Any) -> str:
    """The index's ``pq_space``: as given, or inferred from the rotation (older indexes)."""
    space = pq_space if pq_space is not None else ("hash" if rotation is None else "dense")
    if space not in PQ_SPACES:
        raise ConfigError(f"pq_space {space!r} is not one of {', '.join(PQ_SPACES)}")
    if (space == "dense") != (rotation is not None):
        raise DataError(f"gallery index: pq_space={space!r} " + ("needs an OPQ rotation" if space == "dense"
                        else "takes no rotation"), fix="rebuild the index")
    return space


def _checked_arrays(n: int, dense: Any, codes: Any, pq_codes: Any, codebooks: Any,
                    reciprocal: Any, check_values: bool, pq_space: str = "hash") -> tuple:
    """Validate shapes and dtypes against ``n`` ids; return storage-typed arrays.
    ``pq_space``: what the codebooks cover (see :meth:`GalleryIndex.from_arrays`)."""
    # asanyarray keeps np.memmap arrays memory-mapped.
    dense, codes, pq_codes = np.asanyarray(dense), np.asanyarray(codes), np.asanyarray(pq_codes)
    codebooks = np.asanyarray(codebooks)

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise DataError(f"gallery index: {message}", fix="check the arrays passed to the index")

    need(dense.ndim == 2 and dense.shape[0] == n, f"dense must be (n_items={n}, dim), got {dense.shape}")
    need(np.issubdtype(dense.dtype, np.floating), f"dense must be float16/float32, got {dense.dtype}")
    need(codes.ndim == 2 and codes.shape[0] == n and codes.shape[1] > 0,
         f"codes must be (n_items={n}, n_bits/8), got {codes.shape}")
    need(codes.dtype == np.uint8, f"codes must be packed uint8, got {codes.dtype}")
    need(codebooks.ndim == 3, f"codebooks must be (n_codebooks, codebook_size, sub_dim), got {codebooks.shape}")
    n_codebooks, codebook_size, sub_dim = codebooks.shape
    if pq_space == "residual":
        need(sub_dim == dense.shape[1], f"residual codebooks hold {sub_dim}-d codewords but the dense "
             f"vectors have {dense.shape[1]} dims")
    else:
        covered, what = (dense.shape[1], "dense dims") if pq_space == "dense" else (codes.shape[1] * 8, "bits")
        need(n_codebooks * sub_dim == covered,
             f"codebooks cover {n_codebooks} x {sub_dim} dims but the quantized vectors have {covered} {what}")
    need(pq_codes.ndim == 2 and pq_codes.shape == (n, n_codebooks),
         f"pq_codes must be (n_items={n}, n_codebooks={n_codebooks}), got {pq_codes.shape}")
    need(np.issubdtype(pq_codes.dtype, np.integer), f"pq_codes must be integers, got {pq_codes.dtype}")
    if check_values and n:
        need(int(pq_codes.min()) >= 0 and int(pq_codes.max()) < codebook_size,
             f"pq_codes must lie in 0..{codebook_size - 1}")
    if codebook_size <= 256 and pq_codes.dtype != np.uint8:
        pq_codes = pq_codes.astype(np.uint8)
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
    if codebooks.dtype != np.float32:
        codebooks = codebooks.astype(np.float32)
    return dense, codes, pq_codes, codebooks, reciprocal


def _checked_rotation(rotation: Any, dim: int) -> np.ndarray | None:
    """A dense-space index's OPQ rotation as float32 (dim, dim), or None."""
    if rotation is None:
        return None
    rotation = np.asanyarray(rotation)
    if rotation.shape != (dim, dim) or not np.issubdtype(rotation.dtype, np.floating):
        raise DataError(f"gallery index: rotation must be float (dim={dim}, dim), got "
                        f"{rotation.shape} {rotation.dtype}", fix="rebuild the index")
    return rotation if rotation.dtype == np.float32 else rotation.astype(np.float32)


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


def build_pair(model: "MEETModel", images: Any, image_ids: Sequence[Any] | None = None,
               captions: Sequence[str] | None = None, caption_ids: Sequence[Any] | None = None,
               reciprocal_k: int | None = None, progress: Progress | None = None,
               batch_size: int = 256, pq_space: str | None = None) -> tuple[GalleryIndex, GalleryIndex]:
    """Encode images and captions once and index both: ``(image_index, text_index)``.

    ``images``: PIL images / paths (or feature arrays for precomp models), or an
    :class:`~meet.data.dataset.ImageTextDataset` (then ``image_ids``, ``captions`` and
    ``caption_ids`` default to the data set's file names, captions and ``str(sentid)``).
    ``reciprocal_k`` (default ``cfg.cascade.reciprocal_k``; 0 = none): how many top scores
    each item keeps against the other side. ``pq_space`` (default ``cfg.cascade.pq_space``):
    ``"hash"`` or ``"dense"`` (see :class:`GalleryIndex`). ``progress(done, total, message)``;
    when None and the pair has >= :data:`PROGRESS_BAR_ITEMS` items, a tqdm bar is shown.
    """
    from meet.data.dataset import ImageTextDataset

    dataset = images if isinstance(images, ImageTextDataset) else None
    if dataset is not None:
        image_ids = list(dataset.image_ids) if image_ids is None else image_ids
        captions = dataset.captions if captions is None else captions
        caption_ids = [str(c) for c in dataset.caption_ids] if caption_ids is None else caption_ids
    if image_ids is None or captions is None or caption_ids is None:
        raise DataError("build_pair needs image_ids, captions and caption_ids (or a data set)")
    n_images, n_captions = (dataset.n_images if dataset is not None else len(images)), len(captions)
    if len(image_ids) != n_images or len(caption_ids) != n_captions:
        raise DataError(f"{n_images} images with {len(image_ids)} ids, {n_captions} captions with "
                        f"{len(caption_ids)} ids", fix="pass one id per item")
    for pq in (model.model.image_pq, model.model.text_pq):
        if not pq.is_fitted:
            raise CheckpointError("the checkpoint's product quantizers are not fitted",
                                  fix="use a trained checkpoint (training fits them each epoch)")
    report, close = progress_reporter(progress, n_images + n_captions)
    try:
        if dataset is not None:
            batches = (dataset.images(range(s, min(s + batch_size, n_images)))
                       for s in range(0, n_images, batch_size))
            enc_images = model.encode_image_batches(batches, n_images, batch_size,
                                                    progress=lambda d, t: report(d, t, "encoding images"))
        else:
            enc_images = model.encode_images(images, batch_size=batch_size,
                                             progress=lambda d, t: report(d, t, "encoding images"))
        enc_texts = model.encode_texts(list(captions), batch_size=batch_size * 4,
                                       progress=lambda d, t: report(d, t, "encoding captions"))
        k = model.cfg.cascade.reciprocal_k if reciprocal_k is None else int(reciprocal_k)
        space = model.cfg.cascade.pq_space if pq_space is None else pq_space
        meta = {"checkpoint": str(model.folder) if model.folder else "", "preset": model.cfg.preset,
                "n_images": n_images, "n_captions": n_captions, "reciprocal_k": k,
                "dataset": f"{dataset.name}/{dataset.split}" if dataset is not None else ""}
        return pair_from_encoded(model, enc_images, enc_texts, image_ids, caption_ids, k, meta,
                                 progress=lambda d, t: report(d, t, "reciprocal top-k scores"),
                                 pq_space=space)
    finally:
        close()


def pair_from_encoded(model: "MEETModel", images: "Encoded", texts: "Encoded",
                      image_ids: Sequence[Any], caption_ids: Sequence[Any], reciprocal_k: int,
                      meta: dict | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      pq_space: str = "hash") -> tuple[GalleryIndex, GalleryIndex]:
    """Index already-encoded images and captions: ``(image_index, text_index)``, each item
    keeping its top ``reciprocal_k`` scores against the other side (0 = none); ``pq_space``
    ``"dense"`` fits each side's OPQ rotation and codebooks on its own dense vectors,
    ``"residual"`` its residual codebooks. Shared by :func:`build_pair` and evaluation,
    which has its encodings already."""
    if pq_space not in PQ_SPACES:
        raise ConfigError(f"pq_space {pq_space!r} is not one of {', '.join(PQ_SPACES)}")
    image_rec = text_rec = None
    if reciprocal_k > 0 and len(images) and len(texts):
        image_rec, text_rec = reciprocal_scores(images.dense.astype(np.float16),
                                                texts.dense.astype(np.float16),
                                                reciprocal_k, reciprocal_k, progress=progress)
    fingerprint = model_fingerprint(model)
    meta = {**(meta or {}), "pq_space": pq_space}
    if pq_space == "residual":
        meta["pq_beam_size"] = int(model.cfg.cascade.pq_beam_size)
    sides = []
    for side, ids, enc, pq, rec in (("image", image_ids, images, model.model.image_pq, image_rec),
                                    ("text", caption_ids, texts, model.model.text_pq, text_rec)):
        pq_codes, codebooks, rotation = enc.pq_codes, pq.codebooks.detach().cpu().numpy(), None
        if pq_space != "hash":
            pq_codes, codebooks, rotation = _dense_quantization(model, enc.dense, pq_space)
        sides.append(GalleryIndex.from_arrays(side, ids, enc.dense, enc.codes, pq_codes, codebooks,
                                              rec, fingerprint, meta, rotation=rotation, pq_space=pq_space))
    return sides[0], sides[1]


def _dense_quantization(model: "MEETModel", dense: np.ndarray, pq_space: str
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(pq_codes, codebooks, rotation or None)`` of one side's dense vectors
    (:mod:`meet.dense_pq`), with the checkpoint's codebook shape and fitting settings."""
    from meet.dense_pq import encode_dense_pq, encode_residual, fit_dense_pq, fit_residual

    cfg = model.cfg
    if pq_space == "residual":
        beam = cfg.cascade.pq_beam_size
        codebooks = fit_residual(dense, cfg.model.n_codebooks, cfg.model.codebook_size,
                                 cfg.cascade.pq_fit_items, beam, seed=cfg.train.seed)
        return encode_residual(dense, codebooks, beam), codebooks, None
    rotation, codebooks = fit_dense_pq(dense, cfg.model.n_codebooks, cfg.model.codebook_size,
                                       cfg.cascade.pq_fit_items, seed=cfg.train.seed,
                                       n_iter=cfg.train.kmeans_iters)
    return encode_dense_pq(dense, rotation, codebooks), codebooks, rotation


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
