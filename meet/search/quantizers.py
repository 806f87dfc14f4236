"""The quantizer behind the quantization filter: one interface, three implementations.

A :class:`Quantizer` gives every gallery item ``n_codebooks`` codes (one byte each up to
256 codewords) and every query an ``n_codebooks x codebook_size`` lookup table, so the
filter scores a survivor with M table reads (ADC, :mod:`meet.search.pq_filter`). The
interface is faiss's: :meth:`~Quantizer.fit`, :meth:`~Quantizer.encode`,
:meth:`~Quantizer.decode`, :meth:`~Quantizer.lookup_tables`; each implementation also
says which encoding it reads (:attr:`~Quantizer.reads`: the hash feature ``h`` or the
dense vector), so no caller branches on the kind.

* :class:`HashPQ` (``pq_space="hash"``, METHOD.md): product quantization of the 64-d hash
  feature with the model's own codebooks (trained in Stage I, not refit per gallery).
* :class:`OPQ` (``pq_space="dense"``): product quantization of the dense embedding behind
  an OPQ rotation (faiss :class:`OPQMatrix`, Ge et al. 2013), fitted on the gallery.
* :class:`ResidualQuantizer` (``pq_space="residual"``): the dense embedding as the sum of
  one full-size codeword per book (faiss :class:`ResidualQuantizer`, beam search; Chen et
  al. 2010), fitted on the gallery. The lookup tables keep their M x K shape, so the
  filter costs the same per survivor.

Why the dense spaces exist: a 64-d projection of a 256-d embedding loses the fine order at
the top of a large gallery. Measured on 100k Shapes images (shapes-demo encoders, 300
caption queries), the share of each query's exact dense top-10 among the top 1,000 by ADC
score: 0.79 for ``hash``, 0.96 for ``dense``, 0.994 for ``residual`` (and among the top 200:
0.734 ``dense``, 0.966 ``residual``), all at 8 bytes per item.

Which one an index uses is chosen once, from the config, by :func:`gallery_quantizer`,
and stored with the index (:meth:`Quantizer.arrays`, :meth:`Quantizer.settings`,
:func:`quantizer_from_arrays`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch

from meet.config import PQSpace
from meet.errors import CheckpointError, ConfigError, DataError
from meet.quantization import (code_dtype, kmeans_codebooks, nearest_codewords, product_decode,
                               product_tables)

if TYPE_CHECKING:
    from meet.config import MEETConfig
    from meet.inference import MEETModel

ENCODE_BLOCK = 65536
"""Items encoded per block (bounds the distance temporaries)."""


class Quantizer(ABC):
    """``codebooks`` (n_codebooks, codebook_size, sub_dim) float32 and what they quantize."""

    space: ClassVar[str]
    """The ``CascadeConfig.pq_space`` value this implements."""
    reads: ClassVar[Literal["hash", "dense"]]
    """The encoding it quantizes: the hash feature or the dense vector."""

    def __init__(self, codebooks: Any):
        books = np.array(codebooks, dtype=np.float32)  # an owned copy: the input may be a read-only map
        if books.ndim != 3 or min(books.shape) < 1:
            raise DataError(f"{self.space} quantizer: codebooks must be (n_codebooks, codebook_size, "
                            f"sub_dim), got {books.shape}", fix="rebuild the index")
        self.codebooks = books
        self._books = torch.from_numpy(books)

    # ------------------------------------------------------------------ shape
    @property
    def n_codebooks(self) -> int:
        return self.codebooks.shape[0]

    @property
    def codebook_size(self) -> int:
        return self.codebooks.shape[1]

    @property
    def dim(self) -> int:
        """Width of the vectors it reads (hash bits or dense dims)."""
        return self.n_codebooks * self.codebooks.shape[2]

    @property
    def code_dtype(self) -> np.dtype:
        return code_dtype(self.codebook_size)

    @property
    def table_work(self) -> int:
        """Multiply-adds of one query's :meth:`lookup_tables` (one per codebook float,
        plus a rotation's), to decide how many threads a block's tables get."""
        rotation = getattr(self, "rotation", None)
        return int(self.codebooks.size + (rotation.size if rotation is not None else 0))

    def source(self, items: Any) -> np.ndarray:
        """The vectors this quantizer reads from ``items`` (anything with ``dense`` and
        ``hash`` arrays: an :class:`~meet.inference.Encoded`, a query block, an index that
        keeps its hash features), as float32 (n, :attr:`dim`)."""
        vectors = getattr(items, self.reads, None)
        if vectors is None:
            raise DataError(f"the {self.space} quantizer reads {self.reads} vectors, and these items have none",
                            fix="pass an Encoded (model.encode_texts / encode_images)")
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise DataError(f"the {self.space} quantizer reads {self.dim}-d {self.reads} vectors, got shape "
                            f"{vectors.shape}", fix="encode queries and gallery with the same checkpoint")
        return vectors

    # ------------------------------------------------------------------ the interface
    @classmethod
    @abstractmethod
    def fit(cls, x: np.ndarray, n_codebooks: int, codebook_size: int, *, seed: int = 0, n_iter: int = 20,
            beam_size: int = 8) -> "Quantizer":
        """Fit on ``x`` (n, dim) float32 vectors of the kind it :attr:`reads`."""

    @abstractmethod
    def encode(self, x: np.ndarray) -> np.ndarray:
        """Codes of ``x`` (n, dim): (n, n_codebooks) in :attr:`code_dtype`."""

    @abstractmethod
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Reconstructions (n, dim) float32 of codes (n, n_codebooks), in ``x``'s space."""

    @abstractmethod
    def lookup_tables(self, x: np.ndarray) -> torch.Tensor:
        """ADC tables (n, n_codebooks, codebook_size) float32 of query vectors ``x`` (n, dim):
        ``sum_m T[q, m, code_m]`` is the inner product of query q with the item's
        reconstruction."""

    def arrays(self) -> dict[str, np.ndarray]:
        """What an index stores to rebuild this quantizer (besides :meth:`settings`)."""
        return {"codebooks": self.codebooks}

    def settings(self) -> dict[str, Any]:
        """JSON settings an index stores to rebuild this quantizer."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.n_codebooks} x {self.codebook_size} over {self.dim}-d {self.reads})"


class HashPQ(Quantizer):
    """Product quantization of the hash features with the model's codebooks (METHOD.md)."""

    space = "hash"
    reads = "hash"

    @classmethod
    def fit(cls, x: np.ndarray, n_codebooks: int, codebook_size: int, *, seed: int = 0, n_iter: int = 20,
            beam_size: int = 8) -> "HashPQ":
        """k-means per sub-space (what Stage I does after each epoch)."""
        _check_divides(x.shape[1], n_codebooks, "n_bits")
        return cls(kmeans_codebooks(x, n_codebooks, codebook_size, n_iter=n_iter, seed=seed))

    def encode(self, x: np.ndarray) -> np.ndarray:
        codes = nearest_codewords(torch.as_tensor(np.asarray(x, np.float32)), self._books, ENCODE_BLOCK)
        return codes.numpy().astype(self.code_dtype)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return product_decode(torch.from_numpy(np.asarray(codes, np.int64)), self._books).numpy()

    def lookup_tables(self, x: np.ndarray) -> torch.Tensor:
        return product_tables(torch.as_tensor(np.asarray(x, np.float32)), self._books)


class OPQ(HashPQ):
    """Product quantization of the dense vectors after an orthogonal rotation ``R``
    (dim, dim): codes and tables of ``x @ R.T``, reconstructions rotated back."""

    space = "dense"
    reads = "dense"

    def __init__(self, codebooks: Any, rotation: Any):
        super().__init__(codebooks)
        rotation = np.array(rotation, dtype=np.float32)
        if rotation.shape != (self.dim, self.dim):
            raise DataError(f"OPQ rotation must be ({self.dim}, {self.dim}), got {rotation.shape}",
                            fix="rebuild the index")
        self.rotation = rotation

    def rotate(self, x: np.ndarray) -> np.ndarray:
        """``x @ rotation.T``: (n, dim) -> float32 (n, dim)."""
        return np.asarray(x, dtype=np.float32) @ self.rotation.T

    @classmethod
    def fit(cls, x: np.ndarray, n_codebooks: int, codebook_size: int, *, seed: int = 0, n_iter: int = 20,
            beam_size: int = 8) -> "OPQ":
        """faiss OPQ (``n_iter`` alternations of rotation and PQ), then k-means codebooks
        of exactly ``codebook_size`` codewords on the rotated vectors."""
        import faiss  # lazy: heavy

        dim = x.shape[1]
        _check_divides(dim, n_codebooks, "embed_dim")
        if codebook_size > 256:
            raise ConfigError(f"dense PQ stores one byte per codebook; codebook_size={codebook_size} > 256",
                              fix="use pq_space='hash' for this checkpoint")
        opq = faiss.OPQMatrix(dim, n_codebooks)
        # The PQ that OPQ alternates with while learning the rotation: 2**nbits <= codebook_size
        # codewords (faiss needs a power of two; our own codebooks have exactly codebook_size).
        trainer = faiss.ProductQuantizer(dim, n_codebooks, max(1, int(np.log2(codebook_size))))
        trainer.cp.min_points_per_centroid = 1  # small galleries are legitimate; silence the warning
        opq.pq = trainer
        opq.verbose = False
        opq.niter = n_iter  # faiss's default 50 alternations gain little here
        opq.train(np.ascontiguousarray(x, np.float32))
        rotation = faiss.vector_to_array(opq.A).reshape(dim, dim).astype(np.float32)
        rotated = np.asarray(x, np.float32) @ rotation.T
        return cls(kmeans_codebooks(rotated, n_codebooks, codebook_size, n_iter=n_iter, seed=seed), rotation)

    def encode(self, x: np.ndarray) -> np.ndarray:
        out = np.empty((x.shape[0], self.n_codebooks), self.code_dtype)
        for start in range(0, x.shape[0], ENCODE_BLOCK):
            out[start:start + ENCODE_BLOCK] = super().encode(self.rotate(x[start:start + ENCODE_BLOCK]))
        return out

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return super().decode(codes) @ self.rotation  # R is orthogonal: R^-1 = R^T

    def lookup_tables(self, x: np.ndarray) -> torch.Tensor:
        return super().lookup_tables(self.rotate(x))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"codebooks": self.codebooks, "rotation": self.rotation}


class ResidualQuantizer(Quantizer):
    """Residual quantization of the dense vectors: M books of K full-size codewords
    (M, K, dim); an item is the sum of one codeword per book, each quantizing what the
    previous ones left (faiss beam search, ``beam_size`` wide)."""

    space = "residual"
    reads = "dense"

    def __init__(self, codebooks: Any, beam_size: int = 8):
        super().__init__(codebooks)
        nbits = int(np.log2(self.codebook_size))
        if self.codebook_size > 256 or 2 ** nbits != self.codebook_size:
            raise ConfigError(f"residual quantization needs codebook_size a power of two <= 256, got "
                              f"{self.codebook_size}", fix="use pq_space='hash' or 'dense' for this checkpoint")
        if int(beam_size) < 1:
            raise ConfigError(f"pq_beam_size={beam_size} must be at least 1")
        self.beam_size = int(beam_size)

    @property
    def dim(self) -> int:
        return self.codebooks.shape[2]

    def _faiss(self) -> Any:
        import faiss  # lazy: heavy

        quantizer = faiss.ResidualQuantizer(self.dim, self.n_codebooks, int(np.log2(self.codebook_size)))
        quantizer.max_beam_size = self.beam_size
        return quantizer

    @classmethod
    def fit(cls, x: np.ndarray, n_codebooks: int, codebook_size: int, *, seed: int = 0, n_iter: int = 20,
            beam_size: int = 8) -> "ResidualQuantizer":
        import faiss  # lazy: heavy

        probe = cls(np.zeros((n_codebooks, codebook_size, x.shape[1]), np.float32), beam_size)  # checks sizes
        quantizer = probe._faiss()
        quantizer.cp.seed = int(seed)
        quantizer.cp.min_points_per_centroid = 1  # small galleries are legitimate; silence the warning
        quantizer.train(np.ascontiguousarray(x, np.float32))
        books = faiss.vector_to_array(quantizer.codebooks).reshape(n_codebooks, codebook_size, x.shape[1])
        return cls(books, beam_size)

    def encode(self, x: np.ndarray) -> np.ndarray:
        import faiss  # lazy: heavy

        quantizer = self._faiss()
        faiss.copy_array_to_vector(self.codebooks.ravel(), quantizer.codebooks)
        quantizer.is_trained = True
        nbits = int(np.log2(self.codebook_size))
        out = np.empty((x.shape[0], self.n_codebooks), np.uint8)
        for start in range(0, x.shape[0], ENCODE_BLOCK):
            rows = np.ascontiguousarray(np.asarray(x[start:start + ENCODE_BLOCK], np.float32))
            out[start:start + ENCODE_BLOCK] = _unpack_fields(quantizer.compute_codes(rows), self.n_codebooks, nbits)
        return out

    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, np.int64)
        return self.codebooks[np.arange(self.n_codebooks)[None, :], codes].sum(axis=1, dtype=np.float32)

    def lookup_tables(self, x: np.ndarray) -> torch.Tensor:
        flat = self._books.reshape(self.n_codebooks * self.codebook_size, self.dim)
        queries = torch.as_tensor(np.asarray(x, np.float32))
        return (queries @ flat.T).reshape(queries.shape[0], self.n_codebooks, self.codebook_size)

    def settings(self) -> dict[str, Any]:
        return {"pq_beam_size": self.beam_size}


QUANTIZERS: dict[str, type[Quantizer]] = {q.space: q for q in (HashPQ, OPQ, ResidualQuantizer)}
"""``pq_space`` -> implementation: the one place the name is dispatched on."""


def quantizer_class(space: PQSpace | str) -> type[Quantizer]:
    """The implementation of ``space``, or a :class:`ConfigError` naming the choices."""
    if space not in QUANTIZERS:
        raise ConfigError(f"pq_space {space!r} is not one of {', '.join(QUANTIZERS)}")
    return QUANTIZERS[space]


def gallery_quantizer(model: "MEETModel", side: str, items: Any, cfg: "MEETConfig | None" = None) -> Quantizer:
    """The quantizer an index of ``side`` (``image``/``text``) uses, chosen once from
    ``cfg.cascade.pq_space`` (default: the model's config): the model's own codebooks for
    ``hash``; for the dense spaces, fitted on up to ``pq_fit_items`` of the gallery's own
    ``items`` (an Encoded), seeded by ``train.seed`` (no labels: faiss's ``train`` on the
    database vectors, as for any faiss index)."""
    cfg = cfg or model.cfg
    klass = quantizer_class(cfg.cascade.pq_space)
    if klass is HashPQ:
        pq = model.model.image_pq if side == "image" else model.model.text_pq
        if not pq.is_fitted:
            raise CheckpointError("the checkpoint's product quantizers are not fitted",
                                  fix="use a trained checkpoint (training fits them each epoch)")
        return HashPQ(pq.codebooks.detach().cpu().numpy())
    x = fitting_sample(getattr(items, klass.reads), cfg.model.codebook_size, cfg.cascade.pq_fit_items,
                       cfg.train.seed, klass.space)
    return klass.fit(x, cfg.model.n_codebooks, cfg.model.codebook_size, seed=cfg.train.seed,
                     n_iter=cfg.train.kmeans_iters, beam_size=cfg.cascade.pq_beam_size)


def quantizer_from_arrays(space: str, arrays: dict[str, np.ndarray], settings: dict[str, Any]) -> Quantizer:
    """Rebuild a stored quantizer (the inverse of :meth:`Quantizer.arrays` / :meth:`settings`)."""
    klass = quantizer_class(space)
    try:
        if klass is OPQ:
            return OPQ(arrays["codebooks"], arrays["rotation"])
        if klass is ResidualQuantizer:
            return ResidualQuantizer(arrays["codebooks"], int(settings.get("pq_beam_size", 8)))
        extra = set(arrays) - {"codebooks"}
        if extra:
            raise DataError(f"a {space} quantizer takes only codebooks, got {sorted(extra)}", fix="rebuild the index")
        return HashPQ(arrays["codebooks"])
    except KeyError as exc:
        raise DataError(f"the stored {space} quantizer lacks its {exc.args[0]!r} array", fix="rebuild the index") from exc


def fitting_sample(vectors: np.ndarray, codebook_size: int, max_items: int, seed: int, what: str) -> np.ndarray:
    """Up to ``max_items`` rows of ``vectors`` (sampled with ``seed``, in gallery order) as
    contiguous float32, for fitting codebooks of ``codebook_size`` codewords; a gallery
    smaller than one codebook is a clear error."""
    n = vectors.shape[0]
    if n < codebook_size:
        raise ConfigError(f"pq_space={what!r} needs at least codebook_size={codebook_size} gallery items to fit "
                          f"its codebooks, got {n}", fix="use pq_space='hash' for small galleries")
    rows = np.arange(n) if n <= max_items else np.sort(
        np.random.default_rng(seed).choice(n, size=max_items, replace=False))
    return np.ascontiguousarray(np.asarray(vectors[rows], dtype=np.float32))


def _check_divides(dim: int, n_codebooks: int, what: str) -> None:
    if dim % n_codebooks:
        raise ConfigError(f"{what}={dim} is not divisible by n_codebooks={n_codebooks}",
                          fix="use pq_space='hash' or 'residual' for this checkpoint")


def _unpack_fields(packed: np.ndarray, n_fields: int, nbits: int) -> np.ndarray:
    """faiss's bit-packed codes (n, bytes), ``n_fields`` fields of ``nbits`` bits each, least
    significant bit first -> uint8 (n, n_fields)."""
    if nbits == 8:
        return np.ascontiguousarray(packed[:, :n_fields])
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, :n_fields * nbits]
    weights = (1 << np.arange(nbits)).astype(np.uint16)
    return (bits.reshape(-1, n_fields, nbits) * weights).sum(axis=2).astype(np.uint8)
