"""Converting the MEET release's checkpoints, and parity with the release's own computation.

Release-format files are built from scratch with random weights (``release_fixtures``: the
key names, shapes and ``opt`` fields the release's ``HQ.state_dict()`` / ``save_checkpoint``
and ESA's ``train.py`` produce, tensors tagged as CUDA-saved), converted with
``python -m meet.convert release``, loaded with ``meet.load`` and encoded; every output is
compared with ``release_reference``, a functional re-implementation of the release's
eval-mode forward on the raw state dicts, fed by the release's own tokenisation (the slow
BERT tokenizer, NLTK's ``word_tokenize``). Dense and hash within 1e-4, sign and PQ codes
identical (outside exact ties), for both variants, each with and without ESA.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import release_fixtures as rf
import release_reference as ref

os.environ.setdefault("HF_HUB_OFFLINE", "1")
N_WORDS = 4 + len(rf.WORDS)
CAPTIONS = ["A man riding a bike down the street.", "Two dogs' toys, aren't they? Yes!", "a dog",
            "A man. A dog on St. Paul's street with a red car, and he said 3 things...",
            "Café naïve unknownword", ""]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The four release files, the BERT folder and the vocabulary, each saved once."""
    root = tmp_path_factory.mktemp("release")
    bert = rf.write_bert_folder(root / "bert-base-uncased")
    payloads = {"meet_bert": rf.meet_checkpoint("bert", 0, bert, old_bert_names=True),
                "meet_bigru": rf.meet_checkpoint("bigru", 1, vocab_size=N_WORDS),
                "esa_bert": rf.esa_checkpoint("bert", 2, bert),
                "esa_bigru": rf.esa_checkpoint("bigru", 3, vocab_size=N_WORDS + 1)}
    out = {name: rf.save_release(payload, root / f"{name}.pth") for name, payload in payloads.items()}
    return {**out, "bert": bert, "vocab": rf.write_vocab(root / "f30k_precomp_vocab.json"), "root": root}


@pytest.fixture(scope="module")
def nltk_reference(files):
    pytest.importorskip("nltk")
    with rf.nltk_with_punkt(files["root"] / "nltk_data") as nltk:
        yield nltk


def convert(argv: list[str]) -> tuple[int, str]:
    from meet.convert import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(["release", *argv])
    return code, stderr.getvalue()


@pytest.fixture(scope="module")
def converted(files, tmp_path_factory) -> dict[str, Path]:
    """Each variant converted with and without its ESA reranker."""
    out = tmp_path_factory.mktemp("converted")
    cases = {"bert": ["--checkpoint", files["meet_bert"], "--bert", files["bert"]],
             "bigru": ["--checkpoint", files["meet_bigru"], "--vocab", files["vocab"]]}
    folders = {}
    for variant, argv in cases.items():
        for esa in (False, True):
            name = variant + ("+esa" if esa else "")
            extra = ["--reranker", files[f"esa_{variant}"]] if esa else []
            code, err = convert([*map(str, argv + extra), "--out", str(out / name)])
            assert code == 0, err
            folders[name] = out / name
    return folders


def _load(path: Path) -> dict:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def reference_encodings(files, nltk, name: str, regions: np.ndarray, captions: list[str]):
    """(image dense, image hash, text dense, text hash, payload) the release computes, per item."""
    variant, esa = name.split("+")[0], name.endswith("+esa")
    meet = _load(files[f"meet_{variant}"])
    img_enc, txt_enc, img_hcode, txt_hcode, img_proj, txt_proj = meet["model"]
    esa_state = _load(files[f"esa_{variant}"])["model"] if esa else None
    images = [torch.from_numpy(r) for r in regions]
    if variant == "bert":
        import transformers

        config = transformers.BertConfig.from_json_file(str(files["bert"] / "config.json"))
        slow = rf.slow_bert_tokenizer(files["bert"])
        ids = [rf.release_bert_ids(slow, c) for c in captions]
        own_i = [ref.meet_bert_image(r, img_enc, rf.NHEAD, rf.RESIDUAL_WEIGHT) for r in images]
        own_t = [ref.meet_bert_text(i, txt_enc, config, rf.NHEAD, rf.RESIDUAL_WEIGHT) for i in ids]
        esa_t = [ref.esa_bert_text(i, esa_state[1], config) for i in ids] if esa else None
    else:
        import json

        word2idx = json.loads(files["vocab"].read_text())["word2idx"]

        def lookup(tokens):
            return [word2idx["<start>"], *(word2idx.get(t, word2idx["<unk>"]) for t in tokens), word2idx["<end>"]]
        own_i = [ref.meet_bigru_image(r, img_enc, img_hcode) for r in images]
        own_t = [ref.meet_bigru_text(lookup(rf.release_meet_bigru_tokens(nltk, c)), txt_enc, txt_hcode, 1)
                 for c in captions]
        esa_t = [ref.esa_bigru_text(lookup(rf.release_esa_bigru_tokens(nltk, c)), esa_state[1], 2)
                 for c in captions] if esa else None
    dense_i = [ref.esa_image(r, esa_state[0]) for r in images] if esa else own_i
    dense_t = esa_t if esa else own_t
    hash_i = [ref.hash_features(o, img_proj) for o in own_i]
    hash_t = [ref.hash_features(o, txt_proj) for o in own_t]
    stack = torch.stack
    return stack(dense_i), stack(hash_i), stack(dense_t), stack(hash_t), meet


def assert_codes_match(encoded, hashes: torch.Tensor, matrix: torch.Tensor) -> None:
    """Sign codes and PQ codes as the release assigns them, wherever no exact tie decides."""
    from meet.quantization import unpack_codes

    signs = unpack_codes(encoded.codes, rf.N_BITS)
    clear = hashes.abs().numpy() > 1e-4
    np.testing.assert_array_equal(signs[clear], np.where(hashes.numpy() >= 0, 1.0, -1.0)[clear])
    for row, h in enumerate(hashes):
        codes, gaps = ref.icm_codes(h, matrix, rf.M, 2 ** rf.K_LOG2)
        for m, (code, gap) in enumerate(zip(codes, gaps)):
            if gap > 1e-4:
                assert encoded.pq_codes[row, m] == code, (row, m)


@pytest.mark.parametrize("name", ["bert", "bert+esa", "bigru", "bigru+esa"])
def test_converted_model_matches_the_release(files, converted, nltk_reference, name):
    import meet

    model = meet.load(converted[name], device="cpu")
    n_regions = rf.REGIONS if name.startswith("bigru") else 7
    regions = np.random.default_rng(0).standard_normal((5, n_regions, rf.IMG_DIM)).astype(np.float32)
    images, texts = model.encode_images(regions), model.encode_texts(CAPTIONS)
    dense_i, hash_i, dense_t, hash_t, payload = reference_encodings(files, nltk_reference, name, regions, CAPTIONS)
    dim = rf.ESA_EMBED if name.endswith("+esa") else rf.EMBED
    assert images.dense.shape == (5, dim) and texts.dense.shape == (len(CAPTIONS), dim)
    assert images.hash.shape == (5, rf.N_BITS) and images.pq_codes.shape == (5, rf.M)
    np.testing.assert_allclose(images.dense, dense_i.numpy(), atol=1e-4)
    np.testing.assert_allclose(texts.dense, dense_t.numpy(), atol=1e-4)
    np.testing.assert_allclose(images.hash, hash_i.numpy(), atol=1e-4)
    np.testing.assert_allclose(texts.hash, hash_t.numpy(), atol=1e-4)
    assert_codes_match(images, hash_i, payload["C_img"])
    assert_codes_match(texts, hash_t, payload["C_txt"])
    assert np.abs(images.hash).max() < 1 and len(set(map(tuple, texts.pq_codes))) > 1  # not degenerate


def test_region_counts(files, converted, nltk_reference):
    """BERT variant: any count, one region (a ``(dim,)`` vector) included; BiGRU variant: its
    VisualSA's count only, else a clear error."""
    import meet
    from meet.errors import DataError

    regions = np.random.default_rng(2).standard_normal((3, 1, rf.IMG_DIM)).astype(np.float32)
    model = meet.load(converted["bert"], device="cpu")
    dense = reference_encodings(files, nltk_reference, "bert", regions, ["a"])[0]
    np.testing.assert_allclose(model.encode_images(list(regions[:, 0])).dense, dense.numpy(), atol=1e-4)
    with pytest.raises(DataError, match=f"exactly {rf.REGIONS} regions"):
        meet.load(converted["bigru"], device="cpu").encode_images(regions)


def test_bigru_caption_embedding_does_not_depend_on_its_batch(files, converted, nltk_reference):
    """Ours: a caption alone = the same caption in a padded batch. The release's own pooling
    is batch dependent (its mean word divides by the batch's longest caption)."""
    import meet

    for name in ("bigru", "bigru+esa", "bert"):
        model = meet.load(converted[name], device="cpu")
        batch = model.encode_texts(CAPTIONS)
        for row, caption in enumerate(CAPTIONS):
            alone = model.encode_texts([caption])
            np.testing.assert_allclose(alone.dense[0], batch.dense[row], atol=1e-6)
            np.testing.assert_allclose(alone.hash[0], batch.hash[row], atol=1e-6)
    payload = _load(files["meet_bigru"])
    txt_enc, txt_hcode = payload["model"][1], payload["model"][3]
    ids = [1, 5, 6, 2]
    alone = ref.meet_bigru_text(ids, txt_enc, txt_hcode, 1)
    in_batch = ref.meet_bigru_text(ids, txt_enc, txt_hcode, 1, pad_to=20)
    assert (alone - in_batch).abs().max() > 1e-4  # far above rounding: why the definition above is needed


def test_converted_folder_is_an_ordinary_checkpoint(files, converted, tmp_path):
    """config.json names the release towers, the card names the sources' sha256, the model
    reads a precomp data set through the ordinary loader and round-trips through save."""
    import json

    import meet
    from meet.checkpoint import export_checkpoint
    from meet.data.loading import load_split
    from meet.release import sha256_of

    folder = converted["bert+esa"]
    config = json.loads((folder / "config.json").read_text())["model"]
    assert (config["image_encoder"], config["reranker"], config["hash_input_dim"]) == ("release_bert", "esa_bert", 16)
    card = (folder / "README.md").read_text()
    assert sha256_of(files["meet_bert"]) in card and sha256_of(files["esa_bert"]) in card
    data = tmp_path / "f30k_precomp"
    data.mkdir()
    np.save(data / "test_ims.npy", np.random.default_rng(1).standard_normal((2, 7, rf.IMG_DIM)).astype(np.float32))
    (data / "test_caps.txt").write_text("\n".join(CAPTIONS[:5] * 2) + "\n")
    model = meet.load(folder, device="cpu")
    assert model.kind == "precomp" and load_split(data, "test", model.cfg.model).n_images == 2
    copy = export_checkpoint(folder, tmp_path / "copy")
    again = meet.load(copy, device="cpu").encode_texts(CAPTIONS)
    np.testing.assert_array_equal(again.dense, model.encode_texts(CAPTIONS).dense)


def test_release_towers_are_only_built_from_a_converted_folder():
    from meet.config import MEETConfig, ModelConfig, validate
    from meet.encoders import build_image_encoder
    from meet.errors import ConfigError

    good = dict(image_encoder="release_bert", text_encoder="release_bert")
    validate(MEETConfig(model=ModelConfig(**good)))
    with pytest.raises(ConfigError, match="meet.convert release"):
        build_image_encoder(ModelConfig(**good))
    for bad in (dict(good, text_encoder="release_bigru"), dict(good, reranker="esa_bigru"),
                dict(good, reranker="clip"), dict(reranker="esa_bert")):  # mixed, mismatched, unknown, no release
        with pytest.raises(ConfigError):
            validate(MEETConfig(model=ModelConfig(**bad)))


def test_convert_into_cache_converts_once(files, tmp_path):
    from meet.convert import convert_into_cache

    first = convert_into_cache(files["meet_bigru"], vocab=files["vocab"], cache_dir=tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert convert_into_cache(files["meet_bigru"], vocab=files["vocab"], cache_dir=tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    with_esa = convert_into_cache(files["meet_bigru"], vocab=files["vocab"], reranker=files["esa_bigru"],
                                  cache_dir=tmp_path)
    assert with_esa != first and (with_esa / "model.safetensors").is_file()


# --- safety ----------------------------------------------------------------------------------------

class _WritesAFile:
    """A pickle payload that writes ``target`` when unpickled."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return exec, (f"open({self.target!r}, 'w').write('pwned')",)


def test_a_malicious_release_pickle_is_refused_and_runs_nothing(files, tmp_path):
    from meet.errors import CheckpointError
    from meet.release import read_release_file

    target = tmp_path / "pwned.txt"
    payload = rf.meet_checkpoint("bigru", 5, vocab_size=N_WORDS)
    payload["opt"] = _WritesAFile(target)  # where the release keeps its Namespace
    path = rf.save_release(payload, tmp_path / "model_best.pth.tar")
    code, err = convert(["--checkpoint", str(path), "--vocab", str(files["vocab"]), "--out", str(tmp_path / "out")])
    assert code == 2 and err.strip().splitlines()[-1].startswith("error:") and "builtins.exec" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="nothing in it was run"):
        read_release_file(path)
    assert not target.exists()
    torch.load(path, map_location="cpu", weights_only=False)  # control: loaded unsafely, it runs
    assert target.read_text() == "pwned"


# --- bad inputs --------------------------------------------------------------------------------------

def _bad_files(files: dict[str, Path], root: Path) -> dict[str, Path]:
    """Files that are not what the converter expects."""
    made = {"text": root / "notes.txt", "state_dict": root / "state_dict.pth", "vse_infty": root / "vse.pth",
            "coco_esa": root / "esa_coco.pth", "skewed_codebook": root / "skewed.pth.tar"}
    made["text"].write_text("not a checkpoint")
    torch.save({"fc.weight": torch.zeros(2, 2)}, made["state_dict"])
    vse = {"model": [{"fc.weight": torch.zeros(4, 20), "gpool.linear.weight": torch.zeros(1, 4)},
                     {"bert.embeddings.word_embeddings.weight": torch.zeros(5, 4), "linear.weight": torch.zeros(4, 4)}],
           "opt": argparse.Namespace(embed_size=4), "epoch": 1}
    torch.save(vse, made["vse_infty"])
    torch.save(rf.esa_checkpoint("bigru", 7, vocab_size=N_WORDS + 1, data_name="coco"), made["coco_esa"])
    skewed = rf.meet_checkpoint("bigru", 8, vocab_size=N_WORDS)
    skewed["C_img"][0, -1] = 0.5  # a codeword with a value outside its sub-space
    torch.save(skewed, made["skewed_codebook"])
    small_bert = rf.write_bert_folder(root / "bert-1-layer")
    config = (small_bert / "config.json").read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": 1')
    (small_bert / "config.json").write_text(config)
    made["bert_1_layer"] = small_bert
    (root / "no-config").mkdir()
    made["no_config"] = root / "no-config"
    short_vocab = root / "short_vocab.json"
    short_vocab.write_text('{"word2idx": {"<pad>": 0, "<start>": 1, "<end>": 2, "<unk>": 3}}')
    made["short_vocab"] = short_vocab
    return made


BAD = {
    "missing file": (["--checkpoint", "{root}/nope.pth", "--vocab", "{vocab}"], "not found"),
    "not a checkpoint": (["--checkpoint", "{text}", "--vocab", "{vocab}"], "not a readable PyTorch checkpoint"),
    "a bare state dict": (["--checkpoint", "{state_dict}", "--vocab", "{vocab}"], "not a MEET or ESA release"),
    "another project": (["--checkpoint", "{vse_infty}", "--bert", "{bert}"], "not a MEET or ESA release"),
    "ESA as --checkpoint": (["--checkpoint", "{esa_bert}", "--bert", "{bert}"], "is an ESA checkpoint"),
    "MEET as --reranker": (["--checkpoint", "{meet_bert}", "--bert", "{bert}", "--reranker", "{meet_bert}"],
                           "is a MEET checkpoint"),
    "missing --bert": (["--checkpoint", "{meet_bert}"], "needs --bert"),
    "missing --vocab": (["--checkpoint", "{meet_bigru}"], "needs --vocab"),
    "--bert for BiGRU": (["--checkpoint", "{meet_bigru}", "--vocab", "{vocab}", "--bert", "{bert}"],
                         "--bert is for the BERT variant"),
    "--vocab for BERT": (["--checkpoint", "{meet_bert}", "--bert", "{bert}", "--vocab", "{vocab}"],
                         "--vocab is for the BiGRU variant"),
    "--bert without config": (["--checkpoint", "{meet_bert}", "--bert", "{no_config}"], "has no config.json"),
    "BERT of another shape": (["--checkpoint", "{meet_bert}", "--bert", "{bert_1_layer}"], "do not match"),
    "vocabulary of another size": (["--checkpoint", "{meet_bigru}", "--vocab", "{short_vocab}"], "rows"),
    "ESA of the other text encoder": (["--checkpoint", "{meet_bert}", "--bert", "{bert}", "--reranker",
                                       "{esa_bigru}"], "ESA's BIGRU model"),
    "ESA of another data set": (["--checkpoint", "{meet_bigru}", "--vocab", "{vocab}", "--reranker", "{coco_esa}"],
                                "trained on f30k, the reranker on coco"),
    "codebooks not block-diagonal": (["--checkpoint", "{skewed_codebook}", "--vocab", "{vocab}"],
                                     "not block-diagonal"),
}


@pytest.fixture(scope="module")
def bad_files(files, tmp_path_factory):
    return _bad_files(files, tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_bad_input_gets_one_clear_error(files, bad_files, case, tmp_path):
    argv, expected = BAD[case]
    names = {**{k: str(v) for k, v in files.items()}, **{k: str(v) for k, v in bad_files.items()}}
    out = tmp_path / "out"
    code, err = convert([arg.format(**names) for arg in argv] + ["--out", str(out)])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert expected in lines[0], lines[0]
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_out_must_be_new_or_empty(files, tmp_path):
    argv = ["--checkpoint", str(files["meet_bigru"]), "--vocab", str(files["vocab"]), "--out"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    code, err = convert([*argv, str(tmp_path / "full")])
    assert code == 2 and "not empty" in err and (tmp_path / "full" / "keep.txt").read_text() == "x"
    (tmp_path / "file").write_text("x")
    assert convert([*argv, str(tmp_path / "file")])[0] == 2
    (tmp_path / "empty").mkdir()
    assert convert([*argv, str(tmp_path / "empty")])[0] == 0
    assert (tmp_path / "empty" / "model.safetensors").is_file()


@pytest.mark.parametrize("name", ["bert+esa", "bigru"])
def test_evaluate_release_mode_on_a_converted_checkpoint(files, converted, name, tmp_path, capsys):
    """``meet.evaluate --modes ...,release`` on a converted release model over a precomp split:
    every mode runs, the release's timing lines are printed, and the ``release`` ranking is
    the release's ``evalrank_test`` ranking (test_search_release's re-implementation) of the
    model's own encodings: MEET's hash features and codes, ESA's (or MEET's) dense vectors."""
    import json

    import meet
    from meet.data.loading import load_split
    from meet.evaluate import SplitIndexes, main, mode_cascade, score_functions
    from test_search_release import release_ranking

    data = tmp_path / "f30k_precomp"
    data.mkdir()
    n_images = 40  # enough that the quantization filter keeps at least the re-sorted top z (see rerank)
    regions = meet.load(converted[name], device="cpu").cfg.model.release_regions  # BiGRU: a fixed count
    np.save(data / "test_ims.npy",
            np.random.default_rng(5).standard_normal((n_images, regions, rf.IMG_DIM)).astype(np.float32))
    captions = [f"{CAPTIONS[i % 4]} {rf.WORDS[i % len(rf.WORDS)]} {i}" for i in range(5 * n_images)]
    (data / "test_caps.txt").write_text("\n".join(captions) + "\n")
    out = tmp_path / "results.json"
    assert main(["--checkpoint", str(converted[name]), "--data", str(data), "--device", "cpu",
                 "--modes", "dense,hash,pq,release,cascade,meet", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "calculate hashing select time:" in printed and "calculate afterhash matching time" in printed
    results = json.loads(out.read_text())
    assert set(results) == {"dense", "hash", "pq", "release", "cascade", "meet"}
    assert all(0 <= row["rsum"] <= 600 for row in results.values())

    model = meet.load(converted[name], device="cpu")
    ds = load_split(data, "test", model.cfg.model)
    images, texts = model.encode_dataset(ds)
    i2t_fn, t2i_fn = score_functions("release", model, SplitIndexes(model, images, texts))
    everything = (np.arange(ds.n_images), np.arange(len(ds.captions)))
    settings = mode_cascade("release", model)
    for direction, scores, q, g, books in (
            ("i2t", i2t_fn(*everything).numpy(), images, texts, model.model.text_pq.codebooks.numpy()),
            ("t2i", t2i_fn(*everything).numpy().T, texts, images, model.model.image_pq.codebooks.numpy())):
        expected = release_ranking(q.hash.astype(np.float64), g.hash.astype(np.float64), books,
                                   g.pq_codes.astype(np.int64), q.dense.astype(np.float64),
                                   g.dense.astype(np.float16).astype(np.float64),  # the index stores float16
                                   getattr(settings, f"hamming_rate_{direction}"),
                                   getattr(settings, f"pq_rate_{direction}"), getattr(settings, f"top_z_{direction}"))
        for row, order in enumerate(expected):
            assert np.argsort(-scores[row], kind="stable")[:len(order)].tolist() == order, (direction, row)
