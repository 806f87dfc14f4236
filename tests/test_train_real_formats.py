"""The real-data paths end to end, on tiny stand-ins built here: precomputed region
features (the SCAN/HREM layout) and pretrained BERT + a transformers vision backbone."""

from __future__ import annotations

import json
import shutil

import numpy as np

import meet
from conftest import TINY_FLAGS
from meet.train import main as train
from test_encoders_hf import bert_dir, vit_dir  # noqa: F401  (fixtures: tiny local models)

SMALL = ["--embed-dim", "32", "--word-dim", "16", "--n-bits", "16", "--n-codebooks", "4",
         "--codebook-size", "8", "--epochs", "1", "--batch-size", "16", "--eval-batch-size", "32"]


def _write_precomp(folder, split, n_images, seed):
    rng = np.random.default_rng(seed)
    np.save(folder / f"{split}_ims.npy", rng.normal(size=(n_images, 4, 16)).astype(np.float32))
    words = ["red", "blue", "circle", "square", "left", "small"]
    lines = [" ".join(rng.choice(words, size=4)) for _ in range(5 * n_images)]
    (folder / f"{split}_caps.txt").write_text("\n".join(lines) + "\n")


def test_precomp_training_official_preset(tmp_path):
    data = tmp_path / "f30k_precomp"
    data.mkdir()
    _write_precomp(data, "train", 48, 0)
    _write_precomp(data, "dev", 20, 1)
    _write_precomp(data, "test", 20, 2)
    run = tmp_path / "run"
    assert train(["--data", str(data), "--out", str(run), "--preset", "official",
                  "--image-encoder", "precomp", "--precomp-dim", "16", "--kmeans-sample", "48",
                  *SMALL]) == 0
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert "val_dense_rsum" in record and "val_dense_t2i_map@r" not in record  # no ground truth here
    model = meet.load(run, device="cpu")
    features = np.load(data / "test_ims.npy")
    encoded = model.encode_images([features[0], features[1]])
    assert encoded.dense.shape == (2, 32) and encoded.pq_codes.shape == (2, 4)
    from meet.evaluate import main as evaluate
    assert evaluate(["--checkpoint", str(run), "--data", str(data), "--split", "test",
                     "--modes", "dense,hash,pq,cascade"]) == 0


def test_bert_and_vision_backbone_training_and_rebuild(tiny_shapes, tmp_path, bert_dir, vit_dir):
    bert, vit = tmp_path / "bert", tmp_path / "vit"
    shutil.copytree(bert_dir, bert)
    shutil.copytree(vit_dir, vit)
    run = tmp_path / "run"
    flags = list(TINY_FLAGS)
    flags[flags.index("--epochs") + 1] = "1"
    assert train(["--data", str(tiny_shapes), "--out", str(run), "--text-encoder", "bert",
                  "--bert-path", str(bert), "--image-encoder", "hf", "--vision-backbone", str(vit),
                  *flags]) == 0
    shutil.rmtree(bert)  # the checkpoint must rebuild without the original folders
    shutil.rmtree(vit)
    model = meet.load(run, device="cpu")
    texts = model.encode_texts(["a red circle", "two shapes"])
    images = model.encode_images(sorted((tiny_shapes / "images").glob("*.png"))[:3])
    assert texts.dense.shape == (2, 32) and images.dense.shape == (3, 32)
    assert np.isfinite(texts.dense).all() and np.isfinite(images.dense).all()
