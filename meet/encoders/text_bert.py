"""Text tower: BERT token features (``last_hidden_state``) + the shared pooling head.

The paper uses ``bert-base-uncased``; any BERT folder with a tokenizer works. BERT's
pooler is left out (its output is unused). Tokens include ``[CLS]`` and ``[SEP]``; the
attention pooling decides how much each counts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from meet.config import ModelConfig
from meet.encoders.hf_loading import (FrozenBackboneMixin, import_transformers,
                                      load_pretrained, read_saved_json, set_frozen,
                                      write_config_json)
from meet.encoders.pooling import ProjectAndPool
from meet.errors import CheckpointError, ConfigError, DataError

BERT_CONFIG_FILE = "bert_config.json"
TOKENIZER_DIR = "tokenizer"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class BertTextEncoder(FrozenBackboneMixin, nn.Module):
    """Captions -> ``(batch, embed_dim)`` unit vectors."""

    def __init__(self, backbone: nn.Module, tokenizer: Any, cfg: ModelConfig):
        super().__init__()
        if cfg.max_text_len < 2:
            raise ConfigError(f"bert needs max_text_len >= 2 ([CLS] and [SEP]), "
                              f"got {cfg.max_text_len}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_text_len = cfg.max_text_len
        self.embed_dim = cfg.embed_dim
        self.head = ProjectAndPool(backbone.config.hidden_size, cfg.embed_dim)
        self.frozen_backbone = cfg.freeze_backbone
        set_frozen(self.backbone, cfg.freeze_backbone)
        self.train()

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Captions -> ``input_ids`` and ``attention_mask``, both ``(batch, max_len)`` long,
        padded to the longest caption and truncated at ``max_text_len`` tokens."""
        if isinstance(texts, str):
            raise DataError("tokenize expects a list of captions, got one string",
                            fix="wrap it in a list")
        # Lone surrogates (from a bad decode upstream) make the Rust tokenizer raise.
        texts = [_LONE_SURROGATE.sub("\ufffd", text) for text in texts]
        batch = self.tokenizer(texts, padding=True, truncation=True,
                               max_length=self.max_text_len, return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                return_weights: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(batch, embed_dim)`` and, with ``return_weights``, the token weights
        ``(batch, max_len)`` (0 on padding)."""
        if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
            raise DataError(f"bert expects input_ids and attention_mask of one shape "
                            f"(batch, len), got {tuple(input_ids.shape)} and "
                            f"{tuple(attention_mask.shape)}", fix="make the batch with tokenize()")
        with torch.set_grad_enabled(self.backbone_grad_enabled()):
            hidden = self.backbone(input_ids=input_ids,
                                   attention_mask=attention_mask).last_hidden_state
        return self.head(hidden, attention_mask.bool(), return_weights=return_weights)

    def save_extra(self, directory: Path) -> None:
        """Write ``bert_config.json`` and ``tokenizer/``: enough for
        :func:`build_bert_text_encoder` to rebuild the model without ``bert_path``."""
        directory = Path(directory)
        write_config_json(self.backbone.config, directory / BERT_CONFIG_FILE)
        self.tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))


def build_bert_text_encoder(cfg: ModelConfig, saved_dir: Path | None = None
                            ) -> BertTextEncoder:
    """Pretrained BERT and tokenizer from ``cfg.bert_path``, or (``saved_dir`` given) the
    same architecture randomly initialised from the files of :meth:`save_extra`; the
    caller then loads the checkpoint's weights."""
    transformers = import_transformers()
    if saved_dir is None:
        if not cfg.bert_path:
            raise ConfigError("text_encoder='bert' needs bert_path",
                              fix="set bert_path to a local BERT folder or hub name")
        backbone = load_pretrained(transformers.BertModel.from_pretrained, cfg.bert_path,
                                   "bert_path", add_pooling_layer=False)
        tokenizer = load_pretrained(transformers.AutoTokenizer.from_pretrained,
                                    cfg.bert_path, "bert_path")
    else:
        saved_dir = Path(saved_dir)
        config = transformers.BertConfig.from_dict(read_saved_json(saved_dir / BERT_CONFIG_FILE))
        backbone = transformers.BertModel(config, add_pooling_layer=False)
        tokenizer_dir = saved_dir / TOKENIZER_DIR
        if not tokenizer_dir.is_dir():
            raise CheckpointError(f"checkpoint tokenizer folder missing: {tokenizer_dir}",
                                  fix="the checkpoint folder is incomplete; save it again")
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"cannot load the tokenizer in {tokenizer_dir}: {exc}") from exc
    return BertTextEncoder(backbone, tokenizer, cfg)
