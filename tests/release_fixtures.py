"""Release-format files built from scratch with random weights, for the release tests.

Everything here is written from the release's code as published (iLearn-Lab/TCSVT25-MEET
``at_bert/`` and ``at/``, KevinLight831/ESA): the key names and shapes of ``HQ.state_dict()``
(six state dicts) and of ESA's ``VSEModel.state_dict()`` (two), the ``opt`` Namespace fields
their argument parsers define, the ``{'epoch', 'model', ...}`` dicts ``save_checkpoint``
writes, a tiny ``bert-base-uncased``-like folder and the BiGRU vocabulary JSON. Tensors are
saved tagged as CUDA tensors (as the release saved them, from a GPU) through a storage tagger
registered with ``torch.serialization``, so loading them exercises ``map_location``.

Nothing here uses the project's modules: the checkpoints are what the release would write.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
from pathlib import Path
from typing import Any

import torch

IMG_DIM, EMBED, N_BITS, M, K_LOG2 = 20, 16, 16, 4, 3
"""Region width, joint size, hash bits, codebooks and log2(codewords) of the tiny models."""
ESA_EMBED = 12
"""ESA's joint size (differs from MEET's on purpose: the hash heads must read MEET's)."""
NHEAD, RESIDUAL_WEIGHT, WORD_DIM, REGIONS = 2, 0.8, 12, 6

WORDS = ["a", "man", "dog", "dogs", "riding", "bike", "on", "the", "street", "two", "'s", "n't", ",", ".",
         "st.", "cafe", "is", "with", "red", "car", "3", "and", "he", "said", "?", "!", "b", "'", "''", "``"]
"""The BiGRU vocabulary's words (after <pad>, <start>, <end>, <unk>)."""
WORDPIECES = ["a", "man", "dog", "##s", "riding", "bike", "on", "the", "street", "two", "'", "s", "don", "t",
              ",", ".", "!", "?", "caf", "##e", "na", "##ive", "3", "##0", "-", "(", ")", "[", "]", "x", "##x",
              "red", "car", "is", "with", "st", "he", "said", "\"", "中", "un", "##known", "é", "b"]
"""The tiny BERT vocabulary after [PAD], [UNK], [CLS], [SEP], [MASK]."""


def _uniform(*shape: int, fan_in: int) -> torch.Tensor:
    bound = 1 / math.sqrt(fan_in)
    return (torch.rand(*shape) * 2 - 1) * bound


def linear(prefix: str, n_in: int, n_out: int, bias: bool = True) -> dict[str, torch.Tensor]:
    out = {f"{prefix}.weight": _uniform(n_out, n_in, fan_in=n_in)}
    if bias:
        out[f"{prefix}.bias"] = _uniform(n_out, fan_in=n_in)
    return out


def batchnorm(prefix: str, n: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": 1 + 0.2 * torch.randn(n), f"{prefix}.bias": 0.1 * torch.randn(n),
            f"{prefix}.running_mean": 0.1 * torch.randn(n), f"{prefix}.running_var": 0.5 + torch.rand(n),
            f"{prefix}.num_batches_tracked": torch.tensor(1234)}


def mlp(prefix: str, n_in: int, hidden: int, n_out: int) -> dict[str, torch.Tensor]:
    """The release's MLP with BatchNorm: layers.0, layers.1, bns.0, bns.1 (bns.1 unused)."""
    return {**linear(f"{prefix}.layers.0", n_in, hidden), **linear(f"{prefix}.layers.1", hidden, n_out),
            **batchnorm(f"{prefix}.bns.0", hidden), **batchnorm(f"{prefix}.bns.1", n_out)}


def transformer_layer(prefix: str, dim: int) -> dict[str, torch.Tensor]:
    """``nn.TransformerEncoder(..., num_layers=1)``'s keys under ``prefix`` (``aggr``)."""
    p = f"{prefix}.layers.0"
    return {f"{p}.self_attn.in_proj_weight": _uniform(3 * dim, dim, fan_in=dim),
            f"{p}.self_attn.in_proj_bias": 0.1 * torch.randn(3 * dim),
            **linear(f"{p}.self_attn.out_proj", dim, dim), **linear(f"{p}.linear1", dim, dim),
            **linear(f"{p}.linear2", dim, dim),
            f"{p}.norm1.weight": 1 + 0.1 * torch.randn(dim), f"{p}.norm1.bias": 0.1 * torch.randn(dim),
            f"{p}.norm2.weight": 1 + 0.1 * torch.randn(dim), f"{p}.norm2.bias": 0.1 * torch.randn(dim)}


def gru(prefix: str, n_in: int, hidden: int, layers: int) -> dict[str, torch.Tensor]:
    out = {}
    for layer in range(layers):
        width = n_in if layer == 0 else 2 * hidden
        for suffix in ("", "_reverse"):
            out[f"{prefix}.weight_ih_l{layer}{suffix}"] = _uniform(3 * hidden, width, fan_in=hidden)
            out[f"{prefix}.weight_hh_l{layer}{suffix}"] = _uniform(3 * hidden, hidden, fan_in=hidden)
            out[f"{prefix}.bias_ih_l{layer}{suffix}"] = _uniform(3 * hidden, fan_in=hidden)
            out[f"{prefix}.bias_hh_l{layer}{suffix}"] = _uniform(3 * hidden, fan_in=hidden)
    return out


def visual_sa(n_regions: int, dim: int) -> dict[str, torch.Tensor]:
    """``Hash_EncoderImage``: ``v_global`` = VisualSA(embed, 0.4, 36)."""
    return {**linear("v_global.embedding_local.0", dim, dim), **batchnorm("v_global.embedding_local.1", n_regions),
            **linear("v_global.embedding_global.0", dim, dim), **batchnorm("v_global.embedding_global.1", dim),
            **linear("v_global.embedding_common.0", dim, 1)}


def text_sa(dim: int) -> dict[str, torch.Tensor]:
    """``Hash_EncoderText``: ``u_global`` = TextSA(embed, 0.4)."""
    return {**linear("u_global.embedding_local.0", dim, dim), **linear("u_global.embedding_global.0", dim, dim),
            **linear("u_global.embedding_common.0", dim, 1)}


def hash_proj(dim: int, n_bits: int) -> dict[str, torch.Tensor]:
    """``nn.Sequential(nn.Linear(1024, H), nn.Tanh())``: keys ``0.weight``, ``0.bias``."""
    return {"0.weight": 2 * torch.randn(n_bits, dim) / math.sqrt(dim), "0.bias": 0.05 * torch.randn(n_bits)}


def codebook_matrix(n_codebooks: int, codebook_size: int, n_bits: int) -> torch.Tensor:
    """``initial_centers``' layout: codebook m in rows m*K:(m+1)*K and its own columns only."""
    sub = n_bits // n_codebooks
    matrix = torch.zeros(n_codebooks * codebook_size, n_bits)
    for m in range(n_codebooks):
        matrix[m * codebook_size:(m + 1) * codebook_size, m * sub:(m + 1) * sub] = \
            torch.tanh(torch.randn(codebook_size, sub))
    return matrix


def write_bert_folder(folder: Path, seed: int = 0) -> Path:
    """A tiny bert-base-uncased-like folder: config.json, vocab.txt, tokenizer_config.json
    (no weights needed: the release keeps BERT's weights inside its checkpoint)."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDPIECES]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    config = transformers.BertConfig(vocab_size=len(tokens), hidden_size=24, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=40, max_position_embeddings=40)
    (folder / "config.json").write_text(config.to_json_string())
    return folder


def bert_weights(bert_folder: Path, seed: int, old_names: bool = False) -> dict[str, torch.Tensor]:
    """``bert.*`` keys as transformers 2.x-4.x saved them inside ``txt_enc``: with the
    ``embeddings.position_ids`` buffer and the pooler, and (``old_names``) LayerNorm
    ``gamma``/``beta``."""
    import transformers

    config = transformers.BertConfig.from_json_file(str(bert_folder / "config.json"))
    torch.manual_seed(seed)
    model = transformers.BertModel(config)  # with the pooler, as the release's BertModel had
    state = {f"bert.{k}": v.clone() for k, v in model.state_dict().items()}
    for key in list(state):
        if "LayerNorm" in key:  # non-trivial LayerNorms
            state[key] = state[key] + 0.1 * torch.randn_like(state[key])
    state["bert.embeddings.position_ids"] = torch.arange(config.max_position_embeddings).unsqueeze(0)
    if old_names:
        state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
                 for k, v in state.items()}
    return state


def _opt(**fields: Any) -> argparse.Namespace:
    return argparse.Namespace(**fields)


def meet_opt(variant: str, vocab_size: int = 0) -> argparse.Namespace:
    """``hq_train.py``'s parser fields (at_bert adds nhead/dropout/residual_weight)."""
    fields = dict(data_path="/data", data_name="f30k_precomp", vocab_path="/data/vocab", margin=0.2,
                  num_epochs=12, batch_size=128, word_dim=WORD_DIM, embed_size=EMBED, grad_clip=2.0, num_layers=1,
                  learning_rate=0.0002, learning_hash_rate=0.02, lr_update=15, workers=10, log_step=100,
                  val_step=1500, logger_name="./runs/runX/log", model_name="/models/try1/f30k/H64_M8_K8",
                  resume="", max_violation=True, img_dim=IMG_DIM, no_imgnorm=False, no_txtnorm=False,
                  precomp_enc_type="basic", lambda_softmax=20.0, focal_type="equal", H=N_BITS, K=K_LOG2, M=M,
                  max_iter_update_Cb=1, max_iter_update_b=1, q_lambda=0.0001)
    if variant == "bert":
        fields.update(nhead=NHEAD, dropout=0.1, residual_weight=RESIDUAL_WEIGHT)
    else:
        fields.update(vocab_size=vocab_size)
    return _opt(**fields)


def meet_checkpoint(variant: str, seed: int, bert_folder: Path | None = None, vocab_size: int = 0,
                    old_bert_names: bool = False) -> dict[str, Any]:
    """What the release's ``save_checkpoint`` writes for ``HQ`` (``at_bert`` or ``at``)."""
    torch.manual_seed(seed)
    if variant == "bert":
        img_enc = {**linear("fc.fc", IMG_DIM, EMBED), **mlp("fc.mlp", IMG_DIM, EMBED // 2, EMBED),
                   **transformer_layer("aggr", EMBED)}
        txt_enc = {**bert_weights(bert_folder, seed + 1, old_bert_names), **linear("linear", 24, EMBED),
                   **transformer_layer("aggr", EMBED)}
        img_hcode, txt_hcode = visual_sa(36, EMBED), text_sa(EMBED)  # built by HQ, unused by its forward
    else:
        img_enc = linear("fc", IMG_DIM, EMBED)
        txt_enc = {"embed.weight": torch.randn(vocab_size, WORD_DIM) * 0.5, **gru("rnn", WORD_DIM, EMBED, 1)}
        img_hcode, txt_hcode = visual_sa(REGIONS, EMBED), text_sa(EMBED)
    states = [img_enc, txt_enc, img_hcode, txt_hcode, hash_proj(EMBED, N_BITS), hash_proj(EMBED, N_BITS)]
    codebook_size = 2 ** K_LOG2
    return {"epoch": 7, "model": states, "best_rsum": 512.5, "opt": meet_opt(variant, vocab_size),
            "Eiters": 9000, "C_img": codebook_matrix(M, codebook_size, N_BITS),
            "C_txt": codebook_matrix(M, codebook_size, N_BITS), "r1i": 80.1, "r5i": 95.0, "r10i": 97.5,
            "r1t": 60.2, "r5t": 85.3, "r10t": 90.4}


def esa_opt(variant: str, vocab_size: int = 0, data_name: str = "f30k") -> argparse.Namespace:
    fields = dict(data_path="./data/", data_name=data_name, vocab_path="./vocab/", margin=0.2, num_epochs=30,
                  batch_size=128, word_dim=WORD_DIM, embed_size=ESA_EMBED, grad_clip=2.0, learning_rate=0.0005,
                  lr_update=15, optim="adam", workers=10, log_step=10, val_step=500,
                  logger_name="./runs/runX/log", model_name="./runs/runX/checkpoint", resume="",
                  max_violation=False, img_dim=IMG_DIM, no_imgnorm=False, no_txtnorm=False,
                  vse_mean_warmup_epochs=1, reset_start_epoch=False, hardnum=2, vocab_size=vocab_size)
    if variant == "bert":
        fields.update(precomp_enc_type="basic", backbone_path="", backbone_source="detector",
                      backbone_warmup_epochs=5, embedding_warmup_epochs=2, backbone_lr_factor=0.01,
                      input_scale_factor=1.0)
    else:
        fields.update(num_layers=2)
    return _opt(**fields)


def esa_checkpoint(variant: str, seed: int, bert_folder: Path | None = None, vocab_size: int = 0,
                   data_name: str = "f30k") -> dict[str, Any]:
    """What ESA's ``train.py`` saves: ``{'epoch', 'model': [img_enc, txt_enc], 'best_rsum', 'opt', 'Eiters'}``."""
    torch.manual_seed(seed)
    img_enc = {**linear("fc", IMG_DIM, ESA_EMBED), **mlp("mlp", IMG_DIM, ESA_EMBED // 2, ESA_EMBED),
               **linear("linear1", ESA_EMBED, ESA_EMBED)}
    if variant == "bert":
        txt_enc = {**bert_weights(bert_folder, seed + 1), **linear("linear", 24, ESA_EMBED),
                   **linear("linear1", ESA_EMBED, ESA_EMBED)}
    else:  # the vocabulary plus '<mask>' (evalrank_cam adds it before building the model)
        txt_enc = {"embed.weight": torch.randn(vocab_size, WORD_DIM) * 0.5, **gru("rnn", WORD_DIM, ESA_EMBED, 2),
                   **linear("linear1", ESA_EMBED, ESA_EMBED)}
    return {"epoch": 25, "model": [img_enc, txt_enc], "best_rsum": 520.0,
            "opt": esa_opt(variant, vocab_size, data_name), "Eiters": 30000}


def write_vocab(path: Path) -> Path:
    """``serialize_vocab``'s JSON: ``<pad> <start> <end> <unk>`` then the words."""
    words = ["<pad>", "<start>", "<end>", "<unk>", *WORDS]
    path.write_text(json.dumps({"word2idx": {w: i for i, w in enumerate(words)},
                                "idx2word": {str(i): w for i, w in enumerate(words)}, "idx": len(words)}))
    return path


@contextlib.contextmanager
def _cuda_tagged():
    """Make ``torch.save`` record every storage's location as ``cuda:0``."""
    import torch.serialization as serialization

    entry = (0, lambda obj: "cuda:0", lambda obj, location: None)
    serialization._package_registry.insert(0, entry)
    try:
        yield
    finally:
        serialization._package_registry.remove(entry)


def save_release(payload: dict[str, Any], path: Path) -> Path:
    """``torch.save`` as a GPU run would: every tensor's location says ``cuda:0``."""
    with _cuda_tagged():
        torch.save(payload, path)
    assert b"cuda:0" in path.read_bytes()
    return path


# --- the release's tokenisation, run as the release runs it --------------------------------

def slow_bert_tokenizer(folder: Path):
    """transformers' slow (pure Python) BertTokenizer: the release's ``BertTokenizer``."""
    try:
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as Slow
    except ImportError:  # transformers 4.x: BertTokenizer is the slow one
        from transformers import BertTokenizer as Slow
    return Slow(str(folder / "vocab.txt"), do_lower_case=True)


def release_bert_ids(tokenizer: Any, caption: str) -> list[int]:
    """``PrecompDataset_bert.__getitem__`` + ``process_caption_bert(..., train=False)``."""
    words = tokenizer.basic_tokenizer.tokenize(caption.strip())
    pieces = [piece for word in words for piece in tokenizer.wordpiece_tokenizer.tokenize(word)]
    return tokenizer.convert_tokens_to_ids(["[CLS]", *pieces, "[SEP]"])


def release_meet_bigru_tokens(nltk: Any, caption: str) -> list[str]:
    """``at/lib/data.py``: the caption file is read in binary mode, ``line.strip()``, then
    ``nltk.tokenize.word_tokenize(str(caption).lower())``."""
    line = (caption + "\n").encode("utf-8").strip()
    return nltk.tokenize.word_tokenize(str(line).lower())


def release_esa_bigru_tokens(nltk: Any, caption: str) -> list[str]:
    """``lib/image_caption.py`` (ESA): text mode, ``line.strip()``, ``word_tokenize(caption.lower())``."""
    return nltk.tokenize.word_tokenize(caption.strip().lower())


@contextlib.contextmanager
def nltk_with_punkt(root: Path):
    """NLTK with its English Punkt model installed as a ``punkt_tab`` data folder under
    ``root`` (written from the tables the project ships, in NLTK's own tab format), so the
    release's ``nltk.tokenize.word_tokenize`` runs; NLTK's search path is restored after."""
    import nltk
    from nltk.tabdata import TabEncoder

    from meet.encoders.release_text import punkt_english_tables

    folder = root / "tokenizers" / "punkt_tab" / "english"
    folder.mkdir(parents=True, exist_ok=True)
    tables, encode = punkt_english_tables(), TabEncoder()
    (folder / "abbrev_types.txt").write_text(encode.set2txt(sorted(tables["abbrev_types"])), encoding="utf-8")
    (folder / "sent_starters.txt").write_text(encode.set2txt(sorted(tables["sent_starters"])), encoding="utf-8")
    (folder / "collocations.tab").write_text(encode.tups2tab(sorted(tables["collocations"])), encoding="utf-8")
    (folder / "ortho_context.tab").write_text(encode.ivdict2tab(tables["ortho_context"]), encoding="utf-8")
    saved = list(nltk.data.path)
    nltk.data.path[:] = [str(root)]
    nltk.tokenize._get_punkt_tokenizer.cache_clear()
    try:
        yield nltk
    finally:
        nltk.data.path[:] = saved
        nltk.tokenize._get_punkt_tokenizer.cache_clear()
