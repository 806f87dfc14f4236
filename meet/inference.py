"""The public inference API: ``meet.load(RUN)`` and batch encoding.

The app, the notebooks, evaluation and outside users all encode through
:class:`MEETModel`, so an embedding means the same thing everywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from meet.checkpoint import load_checkpoint
from meet.config import MEETConfig, takes_region_features
from meet.data.images import open_image
from meet.errors import ConfigError, DataError
from meet.model import MEET
from meet.quantization import code_dtype, pack_codes


def select_device(name: str | None = "auto") -> torch.device:
    """``auto``/None -> CUDA when available, else CPU (with a message); or as named."""
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name not in ("cpu", "cuda") and not str(name).startswith("cuda:"):
        raise ConfigError(f"unknown device {name!r}", fix="use auto, cpu or cuda")
    try:
        device = torch.device(name)
    except RuntimeError as exc:  # "cuda:x", "cuda:-1"
        raise ConfigError(f"unknown device {name!r}", fix="use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for but no CUDA device is available",
                          fix="use --device cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices",
                          fix="use cuda:N with N below the device count")
    return device


@dataclass
class Encoded:
    """Encodings of n items, all numpy.

    ``dense`` (n, embed_dim) float32 L2-normalised; ``hash`` (n, n_bits) float32 in
    [-1, 1]; ``codes`` (n, n_bits / 8) uint8 bit-packed ``sign(hash)``; ``pq_codes``
    (n, n_codebooks) of the model's own (hash-space) codebooks, uint8 (uint16 when
    codebook_size > 256); ``seconds`` wall time.
    """

    dense: np.ndarray
    hash: np.ndarray
    codes: np.ndarray
    pq_codes: np.ndarray
    seconds: float = 0.0

    def __len__(self) -> int:
        return self.dense.shape[0]


class MEETModel:
    """A loaded checkpoint, in eval mode on one device, ready to encode."""

    def __init__(self, model: MEET, cfg: MEETConfig, device: torch.device, folder: Path | None = None):
        self.model = model.to(device).eval()
        self.cfg = cfg
        self.device = device
        self.folder = folder

    @property
    def kind(self) -> str:
        """``precomp`` models take feature arrays; the others take images."""
        return "precomp" if takes_region_features(self.cfg.model) else "raw"

    def encode_images(self, images: Sequence[Any], batch_size: int = 256,
                      progress: Callable[[int, int], None] | None = None) -> Encoded:
        """PIL images, image paths/bytes, or (for precomp models) feature arrays."""
        images = self._as_items(images, "encode_images", allow_array=self.kind == "precomp")

        def batches():
            for start in range(0, len(images), batch_size):
                chunk = images[start:start + batch_size]
                yield self._image_batch(chunk)
        return self._encode(batches(), "image", len(images), batch_size, progress)

    def encode_image_batches(self, batches: Any, n_items: int, batch_size: int,
                             progress: Callable[[int, int], None] | None = None) -> Encoded:
        """Encode ready-made image-encoder input batches (data-set tensors)."""
        return self._encode(batches, "image", n_items, batch_size, progress)

    def encode_dataset(self, dataset: Any, batch_size: int = 256,
                       progress: Callable[[int, int], None] | bool = False) -> tuple[Encoded, Encoded]:
        """Every image and caption of a data set split (an
        :class:`~meet.data.dataset.ImageTextDataset`): ``(images, captions)``.

        ``progress``: a ``progress(done, total)`` callback counting images then captions
        against their sum, or True for a tqdm bar."""
        n_images, n_captions = dataset.n_images, len(dataset.captions)
        total, bar = n_images + n_captions, None
        if progress is True:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=f"encode {dataset.split}", leave=False)
        report = progress if callable(progress) else None

        def tick(offset: int) -> Callable[[int, int], None]:
            def step(done: int, _total: int) -> None:
                if bar is not None:
                    bar.n = offset + done
                    bar.refresh()
                if report is not None:
                    report(offset + done, total)
            return step

        try:
            images = self.encode_dataset_images(dataset, batch_size=batch_size, progress=tick(0))
            texts = self.encode_texts(dataset.captions, batch_size=batch_size * 4, progress=tick(n_images))
        finally:
            if bar is not None:
                bar.close()
        return images, texts

    def encode_dataset_images(self, dataset: Any, rows: Sequence[int] | None = None, batch_size: int = 256,
                              progress: Callable[[int, int], None] | None = None) -> Encoded:
        """Images ``rows`` (default: all) of a data set split, in that order.

        An image tower with its own preprocessing (``own_preprocessing``: CLIP's resize,
        centre crop and normalisation) reads each image from its file through that; the
        others take the data set's square uint8 tensors (what they were trained on). So a
        gallery image and the same picture given as a query encode alike."""
        rows = list(range(dataset.n_images)) if rows is None else [int(r) for r in rows]
        paths = getattr(dataset, "paths", None)
        from_files = getattr(self.model.image_encoder, "own_preprocessing", False) and paths is not None

        def batches():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                yield self._image_batch([paths[r] for r in chunk]) if from_files else dataset.images(chunk)
        return self.encode_image_batches(batches(), len(rows), batch_size, progress)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 1024,
                     progress: Callable[[int, int], None] | None = None) -> Encoded:
        """Raw caption strings (any text; unknown words map to the unknown token)."""
        if isinstance(texts, str):
            raise DataError("encode_texts takes a list of strings, got one string",
                            fix="wrap it in a list: encode_texts([text])")
        texts = self._as_items(texts, "encode_texts")
        bad = next((i for i, text in enumerate(texts) if not isinstance(text, str)), None)
        if bad is not None:
            raise DataError(f"encode_texts: item {bad} is a {type(texts[bad]).__name__}, not a string",
                            fix="pass captions as str (decode bytes first; use '' for a missing caption)")
        tokenize = self.model.text_encoder.tokenize
        batches = (tokenize(list(texts[s:s + batch_size])) for s in range(0, len(texts), batch_size))
        return self._encode(batches, "text", len(texts), batch_size, progress)

    @staticmethod
    def _as_items(items: Any, what: str, allow_array: bool = False) -> Sequence[Any]:
        """``items`` as an indexable sequence, or :class:`DataError` for one bare item
        (a string, bytes, a PIL image or, for raw-image models, one pixel array) or a
        non-iterable: iterating those would silently encode their parts."""
        from PIL import Image

        single = (str, bytes, Path, Image.Image) + (() if allow_array else (np.ndarray,))
        if isinstance(items, single):
            raise DataError(f"{what} takes a list, got one {type(items).__name__}",
                            fix=f"wrap it in a list: {what}([item])")
        if isinstance(items, (list, tuple, np.ndarray)):
            return items
        try:
            return list(items)
        except TypeError as exc:
            raise DataError(f"{what} takes a list, got {type(items).__name__}",
                            fix=f"pass a list: {what}([item, ...])") from exc

    def _image_batch(self, chunk: Sequence[Any]) -> torch.Tensor:
        encoder = self.model.image_encoder
        if self.kind == "precomp":
            return encoder.preprocess_features(list(chunk))
        return encoder.preprocess([open_image(item) for item in chunk])

    @torch.no_grad()
    def _encode(self, batches: Any, side: str, n_items: int, batch_size: int,
                progress: Callable[[int, int], None] | None) -> Encoded:
        start = time.perf_counter()
        dense, hashed = [], []
        done = 0
        for batch in batches:
            if side == "image":
                out = self.model.encode_image(batch.to(self.device))
            else:
                out = self.model.encode_text({k: v.to(self.device) for k, v in batch.items()})
            dense.append(out["dense"].float().cpu())
            hashed.append(out["hash"].float().cpu())
            done += dense[-1].shape[0]
            if progress is not None:
                progress(done, n_items)
        dim, n_bits = self.cfg.model.embed_dim, self.cfg.model.n_bits
        dense_t = torch.cat(dense) if dense else torch.zeros(0, dim)
        hash_t = torch.cat(hashed) if hashed else torch.zeros(0, n_bits)
        return self._encoded(dense_t, hash_t, side, start)

    @torch.no_grad()
    def encode_dense(self, dense: np.ndarray, side: str, batch_size: int = 65536) -> Encoded:
        """The hash features and codes of dense embeddings (n, embed_dim) that this model's
        encoders already produced, e.g. the vectors stored in an index: only the ``side``
        (``image``/``text``) hash head and quantizer run. What re-codes a gallery after
        ``meet.hash_refit``, which changes the heads and keeps the encoders."""
        if side not in ("image", "text"):
            raise ConfigError(f"side {side!r} is neither 'image' nor 'text'")
        if self.cfg.model.reranker:
            raise ConfigError(f"this model's dense embedding comes from its {self.cfg.model.reranker} "
                              "reranker, not from the embedding its hash heads read",
                              fix="encode the items with encode_images/encode_texts instead")
        start = time.perf_counter()
        head = self.model.image_hash if side == "image" else self.model.text_hash
        dense_t = torch.as_tensor(np.asarray(dense, dtype=np.float32))
        hashed = [head(dense_t[s:s + batch_size].to(self.device)).float().cpu()
                  for s in range(0, dense_t.shape[0], batch_size)]
        hash_t = torch.cat(hashed) if hashed else torch.zeros(0, self.cfg.model.n_bits)
        return self._encoded(dense_t, hash_t, side, start)

    def _encoded(self, dense_t: torch.Tensor, hash_t: torch.Tensor, side: str, start: float) -> Encoded:
        """Dense and hash features (CPU) -> :class:`Encoded`, with binary and PQ codes."""
        n_bits = self.cfg.model.n_bits
        pq = self.model.image_pq if side == "image" else self.model.text_pq
        if pq.is_fitted:
            pq_codes = pq.encode(hash_t.to(pq.codebooks.device)).cpu().numpy()
        else:
            pq_codes = np.zeros((hash_t.shape[0], self.cfg.model.n_codebooks), dtype=np.int64)
        return Encoded(dense=dense_t.numpy(), hash=hash_t.numpy(),
                       codes=pack_codes(hash_t.numpy()) if hash_t.shape[0] else
                       np.zeros((0, n_bits // 8), np.uint8),
                       pq_codes=pq_codes.astype(code_dtype(self.cfg.model.codebook_size)),
                       seconds=time.perf_counter() - start)


def locate(path: str | Path, bert: str | Path | None = None, vocab: str | Path | None = None,
           reranker: str | Path | None = None) -> Path:
    """The local checkpoint (or run) folder a user's ``path`` names.

    * an existing folder: itself (a run folder resolves to its best checkpoint later);
    * an existing file: a MEET release checkpoint (``model_best.pth.tar``), converted once
      into the cache (:func:`meet.convert.convert_into_cache`; ``bert`` / ``vocab`` /
      ``reranker`` as for ``python -m meet.convert release``);
    * a missing path that reads as a Hub repo id ``org/name[@revision]``: the checkpoint
      downloaded through :mod:`meet.hub` (a local path always wins).
    """
    candidate = Path(path)
    if candidate.is_file():
        from meet.convert import convert_into_cache

        return convert_into_cache(candidate, bert=bert, vocab=vocab, reranker=reranker)
    if any(extra is not None for extra in (bert, vocab, reranker)):
        raise ConfigError(f"--bert/--vocab/--reranker go with a MEET release file, and {path} is not a file",
                          fix="leave them out for a checkpoint folder, or pass the release's model_best.pth.tar")
    if not candidate.exists():
        from meet import hub  # lazy: huggingface_hub is only imported for a Hub id

        if hub.parse_spec(path) is not None:
            return hub.resolve(path)
    return candidate


def load(path: str | Path, device: str | None = None, *, bert: str | Path | None = None,
         vocab: str | Path | None = None, reranker: str | Path | None = None) -> MEETModel:
    """Load a checkpoint folder, a training run folder (its best checkpoint), a MEET release
    file (converted once into the cache; ``bert``/``vocab``/``reranker`` as for ``python -m
    meet.convert release``) or a Hub repo id ``org/name[@revision]`` (:func:`locate`).

    ``device``: None/"auto" picks CUDA when available, else CPU.
    """
    torch_device = select_device(device)
    model, cfg, folder = load_checkpoint(locate(path, bert, vocab, reranker), device="cpu")
    return MEETModel(model, cfg, torch_device, folder)
