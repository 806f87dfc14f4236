"""The encoder family ``release_bert`` / ``release_bigru``: a converted MEET release model.

Each side is one module holding MEET's own tower (``.meet``, :mod:`.release_meet`) and, when
the checkpoint was converted with ``--reranker``, ESA's tower (``.esa``, :mod:`.release_esa`).
Both follow the encoder surface of :mod:`meet.encoders` (``preprocess_features`` /
``tokenize``, ``forward``, ``save_extra``, ``embed_dim``) and add ``embed_pair``, which
:class:`meet.model.MEET` uses to feed its hash heads:

- ``dense`` (``forward``): ESA's embedding when there is a reranker (what the release's
  Stage 3 ranks by), else MEET's own global embedding;
- the hash heads always read MEET's own global embedding (the release's ``img_proj`` /
  ``txt_proj`` read ``img_enc``/``txt_enc``'s output, detached).

These towers are only ever built from a folder that ``python -m meet.convert release`` wrote
(``bert_config.json`` and ``release_tokenizer.json`` for BERT, ``release_vocab.json`` for
BiGRU), then given the checkpoint's weights: they cannot be trained here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from meet.config import ModelConfig
from meet.encoders.hf_loading import import_transformers, read_saved_json, write_config_json
from meet.encoders.image_precomp import PrecompRegionEncoder
from meet.encoders.release_esa import ESAImageTower, build_esa_text_tower
from meet.encoders.release_meet import build_meet_image_tower, build_meet_text_tower
from meet.encoders.release_text import BertWordpiece, WordVocab
from meet.errors import CheckpointError, ConfigError, DataError

BERT_CONFIG_FILE = "bert_config.json"
TOKENIZER_FILE = "release_tokenizer.json"
VOCAB_FILE = "release_vocab.json"


def _no_weights(return_weights: bool) -> None:
    if return_weights:
        raise ConfigError("the release towers have no single attention weight per position "
                          "(max-k/average or per-dimension pooling)", fix="call without return_weights")


class ReleaseImageEncoder(nn.Module):
    """Region features ``(batch, n_regions, precomp_dim)`` (or ``(batch, precomp_dim)``, one
    region) -> ``(batch, embed_dim)``."""

    # The precomp tower's input handling, unchanged: same arrays, same checks and errors.
    preprocess = PrecompRegionEncoder.preprocess
    preprocess_features = PrecompRegionEncoder.preprocess_features
    _check_width = PrecompRegionEncoder._check_width

    def __init__(self, meet: nn.Module, esa: nn.Module | None, cfg: ModelConfig):
        super().__init__()
        self.precomp_dim = cfg.precomp_dim
        self.embed_dim = cfg.embed_dim
        self.meet = meet
        self.esa = esa

    def embed_pair(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dense, MEET's own embedding), each ``(batch, dim)``."""
        if images.dim() not in (2, 3):
            raise DataError(f"region features have shape {tuple(images.shape)}, expected "
                            f"(batch, n_regions, {self.precomp_dim})")
        self._check_width(tuple(images.shape), "region feature batch")
        regions = (images.unsqueeze(1) if images.dim() == 2 else images).float()
        own = self.meet(regions)
        return (self.esa(regions) if self.esa is not None else own), own

    def forward(self, images: torch.Tensor, return_weights: bool = False) -> torch.Tensor:
        _no_weights(return_weights)
        return self.embed_pair(images)[0]

    def save_extra(self, directory: Path) -> None:
        """Nothing to write: the config alone rebuilds the architecture."""


class ReleaseTextEncoder(nn.Module):
    """Captions -> ``(batch, embed_dim)``; :meth:`tokenize` makes the release's token ids for
    each tower (BERT: one set shared by MEET and ESA; BiGRU: MEET's from the bytes form of
    the caption, ESA's from its text, see :mod:`.release_text`)."""

    def __init__(self, meet: nn.Module, esa: nn.Module | None, cfg: ModelConfig,
                 wordpiece: BertWordpiece | None = None, vocab: WordVocab | None = None,
                 bert_config: Any = None):
        super().__init__()
        self.embed_dim = cfg.embed_dim
        self.meet = meet
        self.esa = esa
        self.wordpiece = wordpiece
        self.vocab = vocab
        self.bert_config = bert_config
        self.bytes_captions = cfg.release_bytes_captions

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` ``(batch, L)`` long, 0-padded, and ``lengths`` ``(batch,)``; for a BiGRU
        model with a reranker also ``esa_input_ids`` / ``esa_lengths``."""
        if isinstance(texts, str):
            raise DataError("tokenize expects a list of captions, got one string", fix="wrap it in a list")
        texts = list(texts)
        if not texts:
            raise DataError("tokenize got an empty list of captions")
        if self.wordpiece is not None:
            return _pad(self.wordpiece.encode(texts, self.bert_config.max_position_embeddings))
        batch = _pad([self.vocab.encode(t, self.bytes_captions) for t in texts])
        if self.esa is not None:
            esa = _pad([self.vocab.encode(t, False) for t in texts])
            batch.update(esa_input_ids=esa["input_ids"], esa_lengths=esa["lengths"])
        return batch

    def embed_pair(self, input_ids: torch.Tensor, lengths: torch.Tensor,
                   esa_input_ids: torch.Tensor | None = None, esa_lengths: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(dense, MEET's own embedding), each ``(batch, dim)``."""
        if input_ids.dim() != 2 or lengths.shape != input_ids.shape[:1]:
            raise DataError(f"expected input_ids (batch, len) and lengths (batch,), got "
                            f"{tuple(input_ids.shape)} and {tuple(lengths.shape)}",
                            fix="make the batch with tokenize()")
        own = self.meet(input_ids, lengths)
        if self.esa is None:
            return own, own
        if esa_input_ids is None:  # BERT: both towers read the same wordpieces
            esa_input_ids, esa_lengths = input_ids, lengths
        return self.esa(esa_input_ids, esa_lengths), own

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor,
                esa_input_ids: torch.Tensor | None = None, esa_lengths: torch.Tensor | None = None,
                return_weights: bool = False) -> torch.Tensor:
        _no_weights(return_weights)
        return self.embed_pair(input_ids, lengths, esa_input_ids, esa_lengths)[0]

    def save_extra(self, directory: Path) -> None:
        """The tokenizer (BERT: ``bert_config.json`` + ``release_tokenizer.json``; BiGRU:
        ``release_vocab.json``), so :func:`build_release_text_encoder` rebuilds it."""
        directory = Path(directory)
        if self.wordpiece is not None:
            write_config_json(self.bert_config, directory / BERT_CONFIG_FILE)
            (directory / TOKENIZER_FILE).write_text(self.wordpiece.to_json(), encoding="utf-8")
        else:
            self.vocab.save(directory / VOCAB_FILE)


def _pad(rows: list[list[int]]) -> dict[str, torch.Tensor]:
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.long)
    input_ids = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, :len(row)] = torch.tensor(row, dtype=torch.long)
    return {"input_ids": input_ids, "lengths": lengths}


def _require_saved(saved_dir: Path | None) -> Path:
    if saved_dir is None:
        raise ConfigError("the release_* encoders are built from a converted checkpoint, not trained",
                          fix="convert the release files with `python -m meet.convert release` and load that folder")
    return Path(saved_dir)


def _bert_model(saved_dir: Path) -> tuple[Any, Any]:
    transformers = import_transformers()
    config = transformers.BertConfig.from_dict(read_saved_json(saved_dir / BERT_CONFIG_FILE))
    return config, transformers.BertModel(config, add_pooling_layer=False)


def build_release_image_encoder(cfg: ModelConfig, saved_dir: Path | None) -> ReleaseImageEncoder:
    """MEET's image tower of the variant ``cfg.image_encoder`` (+ ESA's with a reranker),
    random weights (the caller loads the checkpoint's)."""
    _require_saved(saved_dir)
    esa = ESAImageTower(cfg.precomp_dim, cfg.embed_dim) if cfg.reranker else None
    return ReleaseImageEncoder(build_meet_image_tower(cfg), esa, cfg)


def build_release_text_encoder(cfg: ModelConfig, saved_dir: Path | None) -> ReleaseTextEncoder:
    """MEET's text tower of the variant ``cfg.text_encoder`` (+ ESA's with a reranker) and
    its tokenizer, from the files :meth:`ReleaseTextEncoder.save_extra` wrote."""
    saved_dir = _require_saved(saved_dir)
    if cfg.text_encoder == "release_bert":
        config, bert = _bert_model(saved_dir)
        path = saved_dir / TOKENIZER_FILE
        if not path.is_file():
            raise CheckpointError(f"checkpoint file missing: {path}", fix="convert the release checkpoint again")
        try:
            wordpiece = BertWordpiece.from_json(path.read_text(encoding="utf-8"))
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - JSON, key and the tokenizers library's own errors
            raise CheckpointError(f"{path} is not a readable tokenizer: {exc}",
                                  fix="convert the release checkpoint again") from exc
        if wordpiece.vocab_size != config.vocab_size:
            raise CheckpointError(f"{path} has {wordpiece.vocab_size} wordpieces, BERT {config.vocab_size}",
                                  fix="convert the release checkpoint again")
        esa = build_esa_text_tower(cfg, _bert_model(saved_dir)[1]) if cfg.reranker else None
        return ReleaseTextEncoder(build_meet_text_tower(cfg, bert), esa, cfg, wordpiece=wordpiece,
                                  bert_config=config)
    try:
        vocab = WordVocab.load(saved_dir / VOCAB_FILE)
    except ConfigError as exc:
        raise CheckpointError(exc.message, fix="convert the release checkpoint again") from exc
    if cfg.vocab_size != len(vocab):
        raise CheckpointError(f"config says vocab_size={cfg.vocab_size} but {VOCAB_FILE} has {len(vocab)} words",
                              fix="convert the release checkpoint again")
    esa = build_esa_text_tower(cfg, None) if cfg.reranker else None
    return ReleaseTextEncoder(build_meet_text_tower(cfg, None), esa, cfg, vocab=vocab)
