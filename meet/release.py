"""The MEET release's checkpoint files: read them safely, recognise them, map them to ours.

What the release saves (read from its code, iLearn-Lab/TCSVT25-MEET and KevinLight831/ESA):

- MEET (``at_bert/hq_train.py``, ``at/hq_train.py``): ``torch.save`` of ``{'epoch', 'model',
  'best_rsum', 'opt', 'Eiters', 'C_img', 'C_txt', ...recall floats}``; ``model`` is a list of six
  state dicts ``img_enc, txt_enc, img_hcode, txt_hcode, img_proj, txt_proj``; ``opt`` the
  training ``argparse.Namespace``; ``C_img``/``C_txt`` ``(M * 2**K, H)`` codebooks, zero outside
  each codeword's own ``H/M``-wide slice (``initial_centers``).
- ESA (``ESA_BERT/train.py``, ``ESA_BIGRU/train.py``): ``{'epoch', 'model', 'best_rsum', 'opt',
  'Eiters'}`` with ``model = [img_enc, txt_enc]``.

These are pickles. :func:`read_release_file` loads them with ``torch.load(weights_only=True)``
(tensors, containers and numbers only) and allow-lists exactly one class, ``argparse.Namespace``,
for ``opt``; any other global (a class, a function, ``os.system``) is refused before anything
runs. CUDA-saved tensors load on the CPU.

:func:`inspect_release` recognises the file by its state dicts (which project, which text
encoder) and :func:`release_config` / :func:`release_state_dict` turn one MEET file (plus an
optional ESA file) into a :class:`~meet.config.ModelConfig` and a state dict for
:class:`meet.model.MEET` built with the ``release_*`` encoders: a plain key mapping, since
the ported modules keep the release's parameter names.

Verified on release-format files built from the release's code with random weights
(``tests/test_release.py``); the released checkpoints themselves could not be downloaded
where this was written.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from meet.config import ModelConfig
from meet.errors import CheckpointError, ConfigError

MEET_PARTS = ("img_enc", "txt_enc", "img_hcode", "txt_hcode", "img_proj", "txt_proj")
"""The order of the six state dicts in a MEET release checkpoint's ``model`` list."""

@dataclass
class ReleaseFile:
    """One recognised release checkpoint."""

    path: Path
    sha256: str
    project: str
    """``meet`` or ``esa``."""
    text: str
    """The text encoder: ``bert`` or ``bigru``."""
    opt: dict[str, Any]
    states: list[dict[str, torch.Tensor]]
    codebooks: tuple[torch.Tensor, torch.Tensor] | None = None
    """``(C_img, C_txt)`` for MEET files."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Plain numbers saved beside the weights (epoch, best_rsum, recalls)."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_release_file(path: str | Path) -> Any:
    """The unpickled object, loaded weights-only with ``argparse.Namespace`` allowed, or
    :class:`CheckpointError` (nothing in a refused file is executed)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"release checkpoint not found: {path}",
                              fix="pass the model_best.pth.tar (MEET) or model_best.pth (ESA) file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types; none of them ran code
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise CheckpointError(
                f"{path} refers to code outside the weights-only allow-list ({', '.join(unsafe[:5])}); "
                "it was refused and nothing in it was run",
                fix="only tensors, containers, numbers and the training options (argparse.Namespace) are "
                    "read; use the checkpoint from the release's model card") from exc
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({first})",
                              fix="pass the release's .pth/.pth.tar file itself (not a folder, a "
                                  "safetensors file or a partial download)") from exc


def _unsafe_globals(path: Path) -> list[str]:
    """Globals the file names that weights-only loading would refuse (zip checkpoints only)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a zip checkpoint: no names to report
        return []
    return [name for name in names if name != "argparse.Namespace"]


def inspect_release(path: str | Path, role: str = "--checkpoint") -> ReleaseFile:
    """Read ``path`` and recognise it as a MEET or an ESA release checkpoint (BERT or BiGRU);
    :class:`CheckpointError` naming ``role`` for anything else."""
    path = Path(path)
    data = read_release_file(path)
    other = f"{path} ({role}) is not a MEET or ESA release checkpoint"
    if not isinstance(data, dict) or not isinstance(data.get("model"), (list, tuple)):
        keys = sorted(map(str, data))[:8] if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{other}: expected a dict with a 'model' list of state dicts, found {keys}",
                              fix="a checkpoint of another project, or a bare state dict, cannot be converted")
    states = list(data["model"])
    if not all(isinstance(s, dict) and all(isinstance(v, torch.Tensor) for v in s.values()) for s in states):
        raise CheckpointError(f"{other}: its 'model' list does not hold state dicts")
    opt = data.get("opt")
    if not isinstance(opt, argparse.Namespace):
        raise CheckpointError(f"{other}: it has no training options ('opt')")
    meet = "C_img" in data or "C_txt" in data
    if meet and (len(states) != len(MEET_PARTS) or not all(isinstance(data.get(k), torch.Tensor)
                                                          for k in ("C_img", "C_txt"))):
        raise CheckpointError(f"{other}: a MEET checkpoint holds six state dicts ({', '.join(MEET_PARTS)}) "
                              f"and C_img/C_txt tensors, this one {len(states)} state dicts")
    if not meet and len(states) != 2:
        raise CheckpointError(f"{other}: {len(states)} state dicts (ESA saves two, MEET six plus codebooks)")
    text = _text_kind(states[1])
    image_ok = _image_signature(states[0], "meet" if meet else "esa", text)
    if text is None or not image_ok:
        raise CheckpointError(f"{other}: its encoders' parameters ({_sample(states[0])}; {_sample(states[1])}) "
                              "are not those of the release's MEET (at/, at_bert/) or ESA models",
                              fix="a checkpoint of another project cannot be converted")
    extras = {k: v for k, v in data.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    codebooks = (data["C_img"].float(), data["C_txt"].float()) if meet else None
    return ReleaseFile(path=path, sha256=sha256_of(path), project="meet" if meet else "esa", text=text,
                       opt=_plain_opt(opt), states=[dict(s) for s in states], codebooks=codebooks, extras=extras)


def _sample(state: dict[str, Any]) -> str:
    keys = sorted(state)
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "") if keys else "no parameters"


def _text_kind(state: dict[str, torch.Tensor]) -> str | None:
    if any(k.startswith("bert.") for k in state) and "linear.weight" in state:
        return "bert"
    if "embed.weight" in state and "rnn.weight_ih_l0" in state:
        return "bigru"
    return None


def _image_signature(state: dict[str, torch.Tensor], project: str, text: str | None) -> bool:
    keys = set(state)
    if project == "esa":
        return {"fc.weight", "mlp.layers.0.weight", "linear1.weight"} <= keys
    if text == "bert":
        return {"fc.fc.weight", "fc.mlp.layers.0.weight", "aggr.layers.0.self_attn.in_proj_weight"} <= keys
    return keys == {"fc.weight", "fc.bias"}


def _plain_opt(opt: argparse.Namespace) -> dict[str, Any]:
    """The training options that are plain JSON values (what the model card records)."""
    plain = (str, int, float, bool, type(None))
    return {k: v for k, v in sorted(vars(opt).items())
            if isinstance(v, plain) or (isinstance(v, (list, tuple)) and all(isinstance(x, plain) for x in v))}


def _opt_number(release: ReleaseFile, name: str, kind: type) -> Any:
    value = release.opt.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise CheckpointError(f"{release.path}: its training options lack a numeric {name!r} (found {value!r})",
                              fix="the file was saved by a different version of the release's code")
    return kind(value)


def _check_norms(release: ReleaseFile) -> None:
    for flag in ("no_imgnorm", "no_txtnorm"):
        if release.opt.get(flag):
            raise ConfigError(f"{release.path} was trained with --{flag}, which the port does not support",
                              fix="the released checkpoints normalise both embeddings; use one of them")


def release_config(meet: ReleaseFile, esa: ReleaseFile | None = None, bert_config: Any = None,
                   vocab_size: int = 0) -> ModelConfig:
    """The :class:`ModelConfig` of the converted model, from ``opt`` and the weight shapes."""
    img_enc, txt_enc, img_hcode = meet.states[0], meet.states[1], meet.states[2]
    proj = meet.states[4].get("0.weight")
    if proj is None or proj.dim() != 2 or "0.weight" not in meet.states[5]:
        raise CheckpointError(f"{meet.path}: img_proj/txt_proj are not Linear+Tanh heads (no '0.weight')")
    n_bits, own_dim = proj.shape
    n_codebooks = _opt_number(meet, "M", int)
    codebook_size = 2 ** _opt_number(meet, "K", int)
    _check_norms(meet)
    cfg = ModelConfig(embed_dim=own_dim, n_bits=n_bits, n_codebooks=n_codebooks, codebook_size=codebook_size,
                      detach_hash=True, bert_path="", max_text_len=512)
    if meet.text == "bert":
        cfg.image_encoder = cfg.text_encoder = "release_bert"
        cfg.precomp_dim = int(img_enc["fc.fc.weight"].shape[1])
        cfg.release_nhead = _opt_number(meet, "nhead", int)
        cfg.release_dropout = _opt_number(meet, "dropout", float)
        cfg.release_residual_weight = _opt_number(meet, "residual_weight", float)
    else:
        cfg.image_encoder = cfg.text_encoder = "release_bigru"
        cfg.precomp_dim = int(img_enc["fc.weight"].shape[1])
        cfg.vocab_size, cfg.word_dim = (int(n) for n in txt_enc["embed.weight"].shape)
        cfg.gru_layers = _gru_layers(txt_enc)
        local_bn = img_hcode.get("v_global.embedding_local.1.weight")
        if local_bn is None:
            raise CheckpointError(f"{meet.path}: img_hcode has no VisualSA (v_global.*)",
                                  fix="the BiGRU release checkpoint pools images with VisualSA")
        cfg.release_regions = int(local_bn.shape[0])
        if vocab_size and vocab_size != cfg.vocab_size:
            raise ConfigError(f"--vocab has {vocab_size} words but the checkpoint's word embedding "
                              f"{cfg.vocab_size} rows", fix="pass the vocabulary JSON this model was trained with")
    expected = {"embed_size": own_dim, "img_dim": cfg.precomp_dim}
    for name, value in expected.items():
        if name in meet.opt and meet.opt[name] != value:
            raise CheckpointError(f"{meet.path}: opt.{name}={meet.opt[name]} but the weights say {value}",
                                  fix="the file is damaged or was edited")
    if esa is not None:
        _check_norms(esa)
        cfg.reranker = "esa_" + esa.text
        cfg.hash_input_dim = own_dim
        cfg.embed_dim = int(esa.states[0]["fc.weight"].shape[0])
        esa_dim = int(esa.states[0]["fc.weight"].shape[1])
        if esa_dim != cfg.precomp_dim:
            raise ConfigError(f"the reranker reads {esa_dim}-d region features, the MEET checkpoint "
                              f"{cfg.precomp_dim}-d", fix="pass the ESA model trained on the same features")
        if str(esa.opt.get("precomp_enc_type", "basic")) != "basic":
            raise ConfigError(f"{esa.path} is ESA's {esa.opt['precomp_enc_type']!r} image encoder (raw images)",
                              fix="pass the ESA model trained on precomputed region features")
        if esa.text == "bigru":
            cfg.reranker_vocab_size, cfg.reranker_word_dim = (int(n) for n in esa.states[1]["embed.weight"].shape)
            cfg.reranker_gru_layers = _gru_layers(esa.states[1])
            if vocab_size and cfg.reranker_vocab_size not in (vocab_size, vocab_size + 1):
                raise ConfigError(f"the reranker's word embedding has {cfg.reranker_vocab_size} rows, "
                                  f"--vocab {vocab_size} words (+1 for <mask>)",
                                  fix="pass the vocabulary both models were trained with")
    if bert_config is not None and meet.text == "bert":
        hidden = int(txt_enc["linear.weight"].shape[1])
        if bert_config.hidden_size != hidden:
            raise ConfigError(f"--bert has hidden size {bert_config.hidden_size}, the checkpoint's BERT {hidden}",
                              fix="pass the bert-base-uncased folder the model was trained from")
    return cfg


def _gru_layers(state: dict[str, torch.Tensor]) -> int:
    return len({k for k in state if re.fullmatch(r"rnn\.weight_ih_l\d+", k)})


def modern_bert_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BERT weights saved by older transformers, in today's names: drop the
    ``embeddings.position_ids``/``token_type_ids`` buffers and the pooler (unused by the
    release's forward), and rename ``LayerNorm.gamma``/``beta`` to ``weight``/``bias``."""
    out = {}
    for key, value in state.items():
        if key.startswith("bert.pooler.") or key in ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids"):
            continue
        if ".LayerNorm." in key:
            key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))
        out[key] = value
    return out


def codebooks_from_release(matrix: torch.Tensor, n_codebooks: int, codebook_size: int, name: str) -> torch.Tensor:
    """``(M * K, H)`` with codebook ``m`` in rows ``m*K:(m+1)*K`` and columns ``m*d:(m+1)*d``
    (zero elsewhere) -> this repo's ``(M, K, d)``; codes are then the nearest codeword per
    sub-space, as the release's ``update_codes_ICM`` assigns them."""
    rows, n_bits = matrix.shape
    if rows != n_codebooks * codebook_size or n_bits % n_codebooks:
        raise CheckpointError(f"{name} has shape {tuple(matrix.shape)}, expected ({n_codebooks} * {codebook_size}, "
                              f"H) with H divisible by {n_codebooks}", fix="the file is damaged or was edited")
    sub = n_bits // n_codebooks
    blocks = matrix.reshape(n_codebooks, codebook_size, n_codebooks, sub)
    index = torch.arange(n_codebooks)
    diagonal = blocks[index, :, index, :]  # (M, K, d)
    outside = blocks.clone()
    outside[index, :, index, :] = 0
    if torch.count_nonzero(outside):
        raise CheckpointError(f"{name} is not block-diagonal: some codewords have values outside their "
                              "own sub-space", fix="the file is damaged or not a MEET release checkpoint")
    return diagonal.contiguous()


def release_state_dict(meet: ReleaseFile, esa: ReleaseFile | None, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The weights of :class:`meet.model.MEET` built from ``cfg`` (the release's names under
    ``image_encoder.meet.`` / ``text_encoder.meet.`` / ``*.esa.``, the hash heads, the codebooks)."""
    def under(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {prefix + key: value.float() if value.is_floating_point() else value
                for key, value in modern_bert_keys(state).items()}

    img_enc, txt_enc, img_hcode, txt_hcode, img_proj, txt_proj = meet.states
    out = {**under("image_encoder.meet.", img_enc), **under("text_encoder.meet.", txt_enc)}
    if meet.text == "bigru":  # the BERT variant's forward never calls its hcode modules
        out.update(under("image_encoder.meet.", img_hcode))
        out.update(under("text_encoder.meet.", txt_hcode))
    for side, proj in (("image", img_proj), ("text", txt_proj)):
        out[f"{side}_hash.linear.weight"] = proj["0.weight"].float()
        out[f"{side}_hash.linear.bias"] = proj["0.bias"].float()
    for side, matrix, name in (("image", meet.codebooks[0], "C_img"), ("text", meet.codebooks[1], "C_txt")):
        out[f"{side}_pq.codebooks"] = codebooks_from_release(matrix, cfg.n_codebooks, cfg.codebook_size, name)
        out[f"{side}_pq.fitted"] = torch.tensor(True)
    if esa is not None:
        out.update(under("image_encoder.esa.", esa.states[0]))
        out.update(under("text_encoder.esa.", esa.states[1]))
    return out
