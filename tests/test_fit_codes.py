"""``python -m meet.fit_codes``: MEET's codes fitted on a frozen dual encoder.

End to end on a tiny CLIP built by the test, over folders of generated images with and
without captions and over a Karpathy-JSON set; the checkpoint it writes is used by
``meet.load``, ``meet.build_index`` and ``meet.evaluate``; the embedding cache resumes after
an interruption and gives exactly what an uncached encoding gives; a MEET checkpoint as the
backbone keeps its encoders; the pseudo-query distillation leaves each query's own item out
(against a loop reference); bad input is refused with one clear error line.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import clip_fixtures as cf
import meet
from meet.fit_codes import main

FAST = ["--distill-steps", "30", "--distill-batch", "16", "--codebook-refits", "2", "--chunk-size", "16",
        "--encode-batch", "8", "--quiet"]
"""Enough steps to move the heads; seconds on a CPU."""


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """64-d projections, so the default 64-bit heads fit (ITQ projects onto n_bits dims)."""
    return cf.tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", projection_dim=64)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return cf.photo_folder(tmp_path_factory.mktemp("photos"), n_images=40)


@pytest.fixture(scope="module")
def fitted(clip_dir, photos, tmp_path_factory):
    """fit_codes on the captioned folder; returns (run, cache, stdout lines)."""
    root = tmp_path_factory.mktemp("fit")
    images, captions = photos
    assert main(["--backbone", str(clip_dir), "--data", str(images), "--captions", str(captions),
                 "--out", str(root / "run"), "--cache-dir", str(root / "cache"), *FAST]) == 0
    return root / "run", root / "cache"


def test_the_checkpoint_records_how_it_was_made_and_encodes_like_clip(fitted, clip_dir, photos):
    import transformers

    run, _ = fitted
    model = meet.load(run, device="cpu")
    cfg = model.cfg
    assert (cfg.model.image_encoder, cfg.model.text_encoder, cfg.model.embed_dim) == ("clip", "clip", 64)
    assert cfg.model.clip_backbone == str(clip_dir) and cfg.model.codebook_size == 32  # 40 images: shrunk
    record = cfg.fit_codes
    assert (record.n_images, record.n_captions, record.pseudo_queries, record.split) == (40, 80, False, "all")
    assert record.data == str(photos[0]) and record.captions == str(photos[1])
    assert cfg.hash_refit.method == "distill" and cfg.hash_refit.distill_steps == 30
    assert (cfg.cascade.hamming_scores, cfg.cascade.pq_space, cfg.cascade.hamming_rate_t2i) == \
        ("asymmetric", "residual", 2000)
    assert {p.name for p in run.iterdir()} >= {"model.safetensors", "codebooks.safetensors", "config.json",
                                               "clip_config.json", "clip_tokenizer", "clip_image_processor"}
    from meet.model_card import fit_codes_command

    assert fit_codes_command(cfg).startswith(f"python -m meet.fit_codes --backbone {clip_dir} --data DATA "
                                             "--captions CAPTIONS --out RUN --distill-steps 30 --distill-batch 16")
    reference = transformers.CLIPModel.from_pretrained(str(clip_dir)).eval()
    paths = sorted(photos[0].iterdir())[:3]
    encoded = model.encode_images([str(p) for p in paths])
    with torch.no_grad():
        pixels = model.model.image_encoder.preprocess([meet.data.images.open_image(p) for p in paths])
        out = reference.get_image_features(pixel_values=pixels)
        want = torch.nn.functional.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)
        want_hash = model.model.image_hash(want)
    np.testing.assert_allclose(encoded.dense, want.numpy(), atol=1e-5)
    np.testing.assert_allclose(encoded.hash, want_hash.numpy(), atol=1e-5)
    assert np.array_equal(encoded.codes, np.packbits(want_hash.numpy() >= 0, axis=1, bitorder="little"))


def test_the_codes_rank_captions_like_the_dense_model(fitted, photos):
    """The distilled heads agree with the dense ranking far above chance on the fitted set."""
    from meet.fit_codes import load_data

    model = meet.load(fitted[0], device="cpu")
    ds = load_data(model, photos[0], "train", photos[1])
    images, texts = model.encode_dataset(ds)
    dense_top = np.argsort(-(texts.dense @ images.dense.T), axis=1)[:, :5]
    code_scores = texts.hash @ np.where(images.hash >= 0, 1.0, -1.0).T
    hamming_top = np.argsort(-code_scores, axis=1)[:, :10]
    kept = np.mean([len(set(d) & set(h)) / 5 for d, h in zip(dense_top, hamming_top)])
    assert kept > 0.5  # chance: 10 of 40 images = 0.25


def test_build_index_and_evaluate_use_the_checkpoint(clip_dir, photos, tmp_path, capsys):
    """A Karpathy-JSON set: fit on its train split, index and evaluate its test split."""
    from meet.build_index import main as build_index
    from meet.evaluate import main as evaluate
    from meet.search import load_pair

    root = tmp_path / "data"
    shutil.copytree(photos[0], root / "images")
    lines = [line.split("\t") for line in photos[1].read_text().splitlines()]
    by_name: dict[str, list[str]] = {}
    for name, caption in lines:
        by_name.setdefault(name, []).append(caption)
    entries = [{"filename": name, "split": "test" if i % 4 == 3 else "train",
                "sentences": [{"raw": c} for c in caps]} for i, (name, caps) in enumerate(sorted(by_name.items()))]
    (root / "dataset.json").write_text(json.dumps({"images": entries}))
    run = tmp_path / "run"
    assert main(["--backbone", str(clip_dir), "--data", str(root), "--out", str(run), "--cache-dir",
                 str(tmp_path / "cache"), "--codebook-size", "8", *FAST]) == 0
    assert meet.load(run).cfg.fit_codes.split == "train"
    index = ["--checkpoint", str(run), "--data", str(root), "--split", "test", "--out", str(tmp_path / "index")]
    assert build_index(index) == 2  # 10 images cannot fit the default residual quantizer: said clearly
    assert "needs at least 64 gallery items" in capsys.readouterr().err
    assert build_index([*index, "--pq-space", "hash"]) == 0
    images, texts = load_pair(tmp_path / "index")
    assert (images.n_items, texts.n_items, images.pq_space) == (10, 20, "hash")
    assert evaluate(["--checkpoint", str(run), "--data", str(root), "--split", "test", "--modes",
                     "dense,hash,cascade", "--pq-space", "hash", "--json", str(tmp_path / "eval.json")]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report) == {"dense", "hash", "cascade"} and report["dense"]["rsum"] > 0


def test_an_image_only_folder_trains_the_text_head_on_pseudo_queries(clip_dir, tmp_path):
    photos = cf.photo_folder(tmp_path / "photos", n_images=72, captions=False, seed=5)
    run = tmp_path / "run"
    assert main(["--backbone", str(clip_dir), "--data", str(photos[0]), "--out", str(run),
                 "--cache-dir", str(tmp_path / "cache"), "--lf-weight", "0", *FAST]) == 0
    model = meet.load(run, device="cpu")
    assert model.cfg.fit_codes.pseudo_queries and model.cfg.fit_codes.n_captions == 0
    fresh = torch.nn.Linear(64, 64)  # the text head moved from its initial weights, and is finite
    assert torch.isfinite(model.model.text_hash.linear.weight).all()
    assert not torch.equal(model.model.text_hash.linear.weight, fresh.weight)
    from meet.fit_codes import load_data
    from meet.search import build_pair

    ds = load_data(model, photos[0], "all", None)
    images, texts = model.encode_dataset(ds)
    image_index, text_index = build_pair(model, images, texts, ds.image_ids, [])
    assert text_index.n_items == 0 and image_index.pq_space == "residual"
    result = image_index.search(model.encode_texts(["a red circle"]), k=5, mode="cascade")
    assert (result.ids >= 0).all()


def test_pseudo_query_distillation_leaves_each_querys_own_item_out():
    """The masked listwise KL equals a loop over queries that drops the query's own item."""
    from meet.config import HashRefitConfig
    from meet.hash_refit import listwise_distillation
    from meet.model import HashHead

    torch.manual_seed(0)
    heads = HashHead(12, 16), HashHead(12, 16)
    x = torch.nn.functional.normalize(torch.randn(10, 12), dim=1)
    queries, gallery = torch.tensor([0, 3, 7]), torch.arange(10)
    cfg = HashRefitConfig()
    exclude = queries[:, None] == gallery[None, :]
    fast = listwise_distillation(heads[1], heads[0], x[queries], x[gallery], cfg, exclude)
    total = 0.0
    for q in queries.tolist():
        others = torch.tensor([g for g in gallery.tolist() if g != q])
        total += listwise_distillation(heads[1], heads[0], x[q:q + 1], x[others], cfg)
    torch.testing.assert_close(fast, total / len(queries))
    fast.backward()
    assert all(torch.isfinite(p.grad).all() for head in heads for p in head.parameters())


def test_the_embedding_cache_resumes_and_matches_an_uncached_encoding(clip_dir, photos, tmp_path, monkeypatch):
    from meet.inference import MEETModel

    real, calls = MEETModel.encode_dataset_images, []

    def flaky(self, dataset, rows=None, **kwargs):
        calls.append(list(rows))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the run is stopped while the third chunk is encoded
        return real(self, dataset, rows, **kwargs)

    monkeypatch.setattr(MEETModel, "encode_dataset_images", flaky)
    args = ["--backbone", str(clip_dir), "--data", str(photos[0]), "--captions", str(photos[1]),
            "--cache-dir", str(tmp_path / "cache"), *FAST]
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--out", str(tmp_path / "first")])
    assert not (tmp_path / "first").exists()  # nothing half-written
    chunks = sorted((tmp_path / "cache" / "embeddings").glob("*/image-*.npy"))
    assert [p.name for p in chunks] == ["image-00000.npy", "image-00001.npy"]
    calls.clear()
    assert main([*args, "--out", str(tmp_path / "second")]) == 0
    assert calls == [list(range(32, 40))]  # only the image chunk that was missing
    monkeypatch.undo()
    from meet.embedding_cache import cached_dense

    model = meet.load(tmp_path / "second", device="cpu")
    ds = cf_dataset(model, photos)
    cached = cached_dense(model, ds, chunks[0].parent, 16)
    assert cached.encoded == 0
    images, texts = model.encode_dataset(ds)  # the reference: no cache, no chunks
    np.testing.assert_array_equal(cached.image_dense, images.dense)
    np.testing.assert_array_equal(cached.text_dense, texts.dense)


def cf_dataset(model, photos):
    from meet.fit_codes import load_data

    return load_data(model, photos[0], "all", photos[1])


def test_a_meet_checkpoint_as_backbone_keeps_its_encoders(tiny_run, tiny_shapes, tmp_path):
    run = tmp_path / "run"
    assert main(["--backbone", str(tiny_run), "--data", str(tiny_shapes), "--out", str(run),
                 "--cache-dir", str(tmp_path / "cache"), *FAST]) == 0
    before, after = meet.load(tiny_run, device="cpu"), meet.load(run, device="cpu")
    assert after.cfg.fit_codes.backbone == str(tiny_run) and after.cfg.fit_codes.n_images == 240
    texts = ["a red circle", "two blue squares"]
    np.testing.assert_allclose(after.encode_texts(texts).dense, before.encode_texts(texts).dense, atol=1e-6)
    assert not np.array_equal(after.encode_texts(texts).hash, before.encode_texts(texts).hash)


def _error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_input_is_refused_with_one_error_line(clip_dir, photos, tmp_path, capsys):
    common = ["--cache-dir", str(tmp_path / "cache"), *FAST]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images in" in _error(capsys, "--backbone", str(clip_dir), "--data", str(empty),
                                    "--out", str(tmp_path / "o1"), *common)
    broken = tmp_path / "broken"
    shutil.copytree(photos[0], broken)
    (broken / "photo005.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    # 16 bits: 41 images pass the size check (made before the encoding), so the decoding fails
    line = _error(capsys, "--backbone", str(clip_dir), "--data", str(broken), "--out", str(tmp_path / "o2"), *common,
                  "--n-bits", "16")
    assert "cannot decode image" in line and "photo005.png" in line
    few = tmp_path / "few"
    few.mkdir()
    for name in sorted(photos[0].iterdir())[:5]:
        shutil.copy(name, few)
    assert "too few to fit 64-bit codes" in _error(capsys, "--backbone", str(clip_dir), "--data", str(few),
                                                   "--out", str(tmp_path / "o3"), *common)
    pickled = tmp_path / "pickled-clip"
    shutil.copytree(clip_dir, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    assert "only as a pickle" in _error(capsys, "--backbone", str(pickled), "--data", str(photos[0]),
                                        "--out", str(tmp_path / "o4"), *common)
    assert "is neither a CLIP model folder" in _error(
        capsys, "--backbone", str(photos[0]), "--data", str(photos[0]), "--out", str(tmp_path / "o5"), *common)
    karpathy = tmp_path / "karpathy"
    karpathy.mkdir()
    (karpathy / "dataset.json").write_text(json.dumps({"images": []}))
    assert "--captions goes with a plain image folder" in _error(
        capsys, "--backbone", str(clip_dir), "--data", str(karpathy), "--captions", str(photos[1]),
        "--out", str(tmp_path / "o6"), *common)
    small = cf.tiny_clip(tmp_path / "clip16", projection_dim=16)
    capsys.readouterr()  # save_pretrained's progress bar
    assert "cannot be more than the embedding has (pass --n-bits 16)" in _error(
        capsys, "--backbone", str(small), "--data", str(photos[0]), "--out", str(tmp_path / "o8"), *common)
    assert "apply to a CLIP backbone" in _error(capsys, "--backbone", "assets/shapes-demo", "--data",
                                                str(photos[0]), "--n-bits", "32", "--out", str(tmp_path / "o7"),
                                                *common)
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 9))


def test_the_redundancy_notebook_runs_on_a_fitted_clip_checkpoint(clip_dir, tmp_path, monkeypatch):
    """A Karpathy-JSON photo set: codes fitted on its train split, the notebook on its test split."""
    from test_notebooks import NOTEBOOK, _run

    images, captions = cf.photo_folder(tmp_path / "photos", n_images=144, seed=3)
    by_name: dict[str, list[str]] = {}
    for line in captions.read_text().splitlines():
        name, caption = line.split("\t")
        by_name.setdefault(name, []).append(caption)
    entries = [{"filename": name, "split": "test" if i % 2 else "train", "sentences": [{"raw": c} for c in caps]}
               for i, (name, caps) in enumerate(sorted(by_name.items()))]
    (tmp_path / "photos" / "dataset.json").write_text(json.dumps({"images": entries}))
    run = tmp_path / "run"
    assert main(["--backbone", str(clip_dir), "--data", str(tmp_path / "photos"), "--out", str(run),
                 "--cache-dir", str(tmp_path / "cache"), *FAST]) == 0
    for name, value in (("MEET_CHECKPOINT", str(run)), ("MEET_DATA", str(tmp_path / "photos")),
                        ("MEET_SPLIT", "test"), ("MEET_CACHE", str(tmp_path / "cache"))):
        monkeypatch.setenv(name, value)
    for name in ("MEET_BERT", "MEET_VOCAB", "MEET_RERANKER"):
        monkeypatch.delenv(name, raising=False)
    markdown, summary = _run(NOTEBOOK)
    assert summary["data"] == "photos/test" and summary["ground_truth"] == "the data set's own pairs"
    assert set(summary["modes"]) == {"dense", "hash", "pq", "cascade", "meet"}
