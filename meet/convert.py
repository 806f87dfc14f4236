"""Convert the MEET release's trained weights into an ordinary checkpoint folder.

    python -m meet.convert release --checkpoint model_best.pth.tar [--bert DIR] \\
        [--vocab VOCAB.json] [--reranker ESA/model_best.pth] --out DIR

``--checkpoint``: a MEET release checkpoint (``at_bert/`` BERT variant or ``at/`` BiGRU
variant); ``--bert``: the ``bert-base-uncased`` folder the BERT variant needs (its
``config.json`` and ``vocab.txt``; the BERT weights themselves are inside the checkpoint);
``--vocab``: the BiGRU variant's vocabulary JSON (``{coco,f30k}_precomp_vocab.json``);
``--reranker``: an ESA checkpoint (same text encoder) whose embeddings become the model's
``dense`` (what the release's Stage 3 ranks by; without it ``dense`` is MEET's own global
embedding). ``--out`` must be new or empty; the folder appears complete or not at all.

The result is a checkpoint like any other (``config.json``, ``model.safetensors``,
``codebooks.safetensors``, tokenizer files) plus a model card (``README.md``) naming the
source files and their sha256: ``meet.load(OUT)``, ``meet.evaluate`` and ``meet.build_index``
read it unchanged. :func:`convert_into_cache` converts once into a cache folder keyed by the
inputs' hashes, for loading a release file directly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from meet.cli import run
from meet.errors import CheckpointError, ConfigError, MEETError

CARD = "README.md"
CACHE_FORMAT = "meet-release-1"
"""Part of the cache key: bump it when a conversion's output changes."""


def convert_release(checkpoint: str | Path, out: str | Path, bert: str | Path | None = None,
                    vocab: str | Path | None = None, reranker: str | Path | None = None) -> Path:
    """Convert the release files into the checkpoint folder ``out`` (new or empty); returns it.

    Every bad input raises a :class:`~meet.errors.MEETError` with a ``fix``: a missing or
    unreadable file, a checkpoint of another project or one refused as unsafe, a missing
    ``--bert``/``--vocab`` (or one given to the variant that has no use for it), an ESA model
    of the other text encoder or data set, and shapes that do not match.
    """
    from meet.checkpoint import save_checkpoint
    from meet.config import MEETConfig, validate
    from meet.model import build_model
    from meet.release import inspect_release, release_config, release_state_dict

    out = Path(out)
    _check_out(out)
    meet = inspect_release(checkpoint, "--checkpoint")
    if meet.project != "meet":
        raise ConfigError(f"{meet.path} is an ESA checkpoint, not a MEET one",
                          fix="pass it as --reranker and the MEET model_best.pth.tar as --checkpoint")
    esa = inspect_release(reranker, "--reranker") if reranker is not None else None
    if esa is not None:
        if esa.project != "esa":
            raise ConfigError(f"--reranker {esa.path} is a MEET checkpoint, not an ESA one",
                              fix="pass ESA's model_best.pth (KevinLight831/ESA) as --reranker")
        if esa.text != meet.text:
            raise ConfigError(f"the reranker is ESA's {esa.text.upper()} model but the MEET checkpoint is the "
                              f"{meet.text.upper()} variant",
                              fix=f"pass the ESA_{meet.text.upper()} model the release pairs with it")
        _check_same_data(meet.opt, esa.opt)
    bert_config, wordpiece, word_vocab = _text_assets(meet.text, bert, vocab)
    cfg = release_config(meet, esa, bert_config=bert_config, vocab_size=len(word_vocab) if word_vocab else 0)
    full = validate(MEETConfig(model=cfg, preset="release"))
    with tempfile.TemporaryDirectory(prefix="meet-convert-") as scratch:
        assets = Path(scratch)  # what the towers are rebuilt from (tokenizer, BERT config)
        _write_assets(assets, bert_config, wordpiece, word_vocab)
        model = build_model(cfg, saved_dir=assets)
        state = release_state_dict(meet, esa, cfg)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            lines = [line.strip() for line in str(exc).splitlines()[1:4]]
            raise CheckpointError("the release files do not match the model they describe: "
                                  + " ".join(lines)[:600],
                                  fix="pass the --bert folder / --vocab file the checkpoint was trained with, "
                                      "and an undamaged checkpoint") from exc
        try:  # one atomic step: the folder appears complete, card included, or not at all
            save_checkpoint(model.eval(), full, out, files={CARD: model_card(meet, esa, bert, vocab, full)})
        except OSError as exc:
            raise ConfigError(f"cannot write the converted checkpoint to {out}: {exc}",
                              fix="free disk space or choose a writable --out") from exc
    return out


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file", fix="choose a new folder")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty", fix="choose a new folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the parent of --out {out}: {exc}", fix="choose a writable folder") from exc


def _check_same_data(meet_opt: dict[str, Any], esa_opt: dict[str, Any]) -> None:
    names = [str(opt.get("data_name", "")).removesuffix("_precomp") for opt in (meet_opt, esa_opt)]
    if all(names) and names[0] != names[1]:
        raise ConfigError(f"the MEET checkpoint was trained on {names[0]}, the reranker on {names[1]}",
                          fix="pass the ESA model trained on the same data set")


def _text_assets(text: str, bert: str | Path | None, vocab: str | Path | None) -> tuple[Any, Any, Any]:
    """(BERT config, wordpiece tokenizer, word vocabulary) for the variant ``text``."""
    from meet.encoders.release_text import BertWordpiece, WordVocab

    if text == "bert":
        if vocab is not None:
            raise ConfigError("--vocab is for the BiGRU variant; this checkpoint is the BERT variant",
                              fix="drop --vocab and pass --bert")
        if bert is None:
            raise ConfigError("the BERT variant needs --bert", fix="pass the bert-base-uncased folder "
                              "(config.json and vocab.txt; the weights are inside the checkpoint)")
        folder = Path(bert)
        if not (folder / "config.json").is_file():
            raise ConfigError(f"--bert {folder} has no config.json",
                              fix="pass the bert-base-uncased folder (config.json and vocab.txt)")
        from meet.encoders.hf_loading import import_transformers
        try:
            config = import_transformers().BertConfig.from_json_file(str(folder / "config.json"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--bert {folder}/config.json is not a BERT config: {exc}") from exc
        wordpiece = BertWordpiece.from_bert_folder(folder)
        if wordpiece.vocab_size != config.vocab_size:
            raise ConfigError(f"--bert: vocab.txt has {wordpiece.vocab_size} entries, config.json says "
                              f"{config.vocab_size}", fix="pass an unmodified bert-base-uncased folder")
        return config, wordpiece, None
    if bert is not None:
        raise ConfigError("--bert is for the BERT variant; this checkpoint is the BiGRU variant",
                          fix="drop --bert and pass --vocab")
    if vocab is None:
        raise ConfigError("the BiGRU variant needs --vocab",
                          fix="pass the release's vocabulary JSON ({coco,f30k}_precomp_vocab.json)")
    return None, None, WordVocab.load(Path(vocab))


def _write_assets(folder: Path, bert_config: Any, wordpiece: Any, word_vocab: Any) -> None:
    """What :func:`meet.encoders.release_towers.build_release_text_encoder` reads."""
    from meet.encoders.hf_loading import write_config_json
    from meet.encoders.release_towers import BERT_CONFIG_FILE, TOKENIZER_FILE, VOCAB_FILE

    if bert_config is not None:
        write_config_json(bert_config, folder / BERT_CONFIG_FILE)
        (folder / TOKENIZER_FILE).write_text(wordpiece.to_json(), encoding="utf-8")
    else:
        word_vocab.save(folder / VOCAB_FILE)


def model_card(meet: Any, esa: Any, bert: Any, vocab: Any, cfg: Any) -> str:
    """The converted checkpoint's README: sources, what each output is, how it was verified."""
    from meet.config import RELEASE_SEARCH

    m = cfg.model
    sources = [f"- MEET checkpoint: `{meet.path.name}`, sha256 `{meet.sha256}`"]
    if esa is not None:
        sources.append(f"- ESA reranker: `{esa.path.name}`, sha256 `{esa.sha256}`")
    if bert is not None:
        sources.append(f"- BERT folder (config and vocab only): `{Path(bert).name}`, vocab.txt sha256 "
                       f"`{_file_hash(Path(bert) / 'vocab.txt')}`")
    if vocab is not None:
        sources.append(f"- vocabulary: `{Path(vocab).name}`, sha256 `{_file_hash(Path(vocab))}`")
    dense = (f"ESA's embedding ({m.reranker}, {m.embed_dim}-d), what the release's Stage 3 ranks by"
             if m.reranker else f"MEET's own global embedding ({m.embed_dim}-d)")
    notes = ""
    if meet.text == "bigru":
        notes = ("\nCaptions are tokenised as the release's BiGRU data loader does: it reads captions as "
                 "bytes and tokenises `str(line)` (`\"b'a dog.'\"`), the form the model was trained on "
                 f"(`release_bytes_captions={str(m.release_bytes_captions).lower()}` in config.json). A "
                 "caption's embedding is the release's for the caption alone (the release's pooling "
                 "depends on the longest caption of its batch; ours does not).\n")
    return f"""# MEET release checkpoint ({meet.text.upper()} variant), converted

Converted by `python -m meet.convert release` from the MEET release (iLearn-Lab/TCSVT25-MEET,
IEEE TCSVT 2025){" and its ESA Stage 3 model (KevinLight831/ESA)" if esa is not None else ""}.

## Sources
{chr(10).join(sources)}

## Outputs of `meet.load(folder).encode_images(regions)` / `.encode_texts(captions)`
- `dense`: {dense};
- `hash`: MEET's hash heads (`img_proj`/`txt_proj`, Linear + tanh, {m.n_bits} bits) on MEET's own
  global embedding; `codes`: their signs, bit-packed;
- `pq_codes`: the nearest codeword of each of the {m.n_codebooks} sub-spaces ({m.codebook_size}
  codewords each), from the release's `C_img`/`C_txt`.
{notes}
## Verification
The ported towers were checked on release-format checkpoints with random weights against an
independent functional re-implementation of the release's eval-mode forward (dense and hash
within 1e-4, sign and PQ codes identical): `tests/test_release.py`. The released weights
themselves were not available where this converter was written, so no real-weight number has
been checked here.

## The release's own search settings ({meet.text} variant)
`{json.dumps(RELEASE_SEARCH[meet.text], sort_keys=True)}`

## Training options of the MEET checkpoint (`opt`)
```json
{json.dumps(meet.opt, indent=1, sort_keys=True, default=str)}
```
"""


def _file_hash(path: Path) -> str:
    from meet.release import sha256_of

    return sha256_of(path) if path.is_file() else "(missing)"


def default_cache_dir() -> Path:
    """``$MEET_CACHE`` or ``~/.cache/meet-studio`` (the app's cache), plus ``converted``."""
    return Path(os.environ.get("MEET_CACHE") or Path.home() / ".cache" / "meet-studio") / "converted"


def convert_into_cache(checkpoint: str | Path, bert: str | Path | None = None, vocab: str | Path | None = None,
                       reranker: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """The converted folder for these release files, converting only the first time.

    The folder is named by a hash of the inputs' contents (the files' sha256, the BERT
    folder's ``config.json``, ``vocab.txt`` and ``tokenizer_config.json``) and of
    :data:`CACHE_FORMAT`, so changed inputs never reuse a stale conversion. What ``meet.load(release_file, bert=..., vocab=...,
    reranker=...)`` and ``app.py --checkpoint release_file`` are meant to call.
    """
    from meet.release import sha256_of

    inputs = [checkpoint, reranker, vocab]
    if bert is not None:
        inputs += [Path(bert) / name for name in ("config.json", "vocab.txt", "tokenizer_config.json")]
    digest = hashlib.sha256(CACHE_FORMAT.encode())
    for path in inputs:  # a missing file hashes as such; convert_release then names it
        present = path is not None and Path(path).is_file()
        digest.update(b"|" + (sha256_of(Path(path)).encode() if present else str(path is None).encode()))
    folder = Path(cache_dir or default_cache_dir()) / digest.hexdigest()[:20]
    if (folder / "model.safetensors").is_file():
        return folder
    try:
        return convert_release(checkpoint, folder, bert=bert, vocab=vocab, reranker=reranker)
    except MEETError:
        if (folder / "model.safetensors").is_file():  # another process converted it meanwhile
            return folder
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m meet.convert", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="release")
    release = commands.add_parser("release",
                                  help="the MEET release's model_best.pth.tar (+ ESA) -> a checkpoint folder")
    release.add_argument("--checkpoint", required=True, type=Path, help="MEET release model_best.pth.tar")
    release.add_argument("--bert", type=Path, default=None, help="bert-base-uncased folder (BERT variant)")
    release.add_argument("--vocab", type=Path, default=None, help="vocabulary JSON (BiGRU variant)")
    release.add_argument("--reranker", type=Path, default=None, help="ESA model_best.pth (same text encoder)")
    release.add_argument("--out", required=True, type=Path, help="new or empty output folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    from meet.checkpoint import read_config

    out = convert_release(args.checkpoint, args.out, bert=args.bert, vocab=args.vocab, reranker=args.reranker)
    cfg = read_config(out).model
    kind = cfg.text_encoder.removeprefix("release_").upper()
    dense = f"{cfg.reranker} reranker" if cfg.reranker else "MEET's own embedding"
    print(f"converted the {kind} variant ({cfg.n_bits} bits, {cfg.n_codebooks}x{cfg.codebook_size} codewords; "
          f"dense = {dense}) -> {out}")


if __name__ == "__main__":
    sys.exit(main())
