"""The public API (meet.load / encode_*), evaluation CLI and checkpoint failure modes."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

import meet
from meet.checkpoint import resolve_checkpoint
from meet.errors import CheckpointError, DataError, ImageError


def test_load_and_encode_both_modalities(tiny_run, tiny_shapes):
    model = meet.load(tiny_run, device="cpu")
    paths = sorted((tiny_shapes / "images").glob("*.png"))[:5]
    images = model.encode_images([Image.open(p) for p in paths])
    assert images.dense.shape == (5, 32) and images.hash.shape == (5, 16)
    assert images.codes.shape == (5, 2) and images.codes.dtype == np.uint8
    assert images.pq_codes.shape == (5, 4) and images.pq_codes.dtype == np.uint8
    assert np.allclose(np.linalg.norm(images.dense, axis=1), 1.0, atol=1e-5)
    same = model.encode_images(paths)  # paths work too, and give the same vectors
    assert np.allclose(same.dense, images.dense, atol=1e-6)
    texts = model.encode_texts(["a red circle", "", "zzz unknown words 🙂"])
    assert texts.dense.shape == (3, 32) and np.isfinite(texts.dense).all()
    assert model.encode_texts([]).dense.shape == (0, 32)


def test_api_encoding_matches_the_data_set_path(tiny_run, tiny_shapes):
    from meet.data.loading import load_split

    model = meet.load(tiny_run, device="cpu")
    ds = load_split(tiny_shapes, "test", model.cfg.model)
    images, texts = model.encode_dataset(ds)
    paths = [tiny_shapes / "images" / name for name in ds.image_ids[:4]]
    assert np.allclose(model.encode_images(paths).dense, images.dense[:4], atol=1e-5)
    assert np.array_equal(model.encode_texts(ds.captions[:7]).pq_codes, texts.pq_codes[:7])


def test_encode_dense_recodes_stored_embeddings_like_full_encoding(tiny_run):
    from meet.errors import ConfigError

    model = meet.load(tiny_run, device="cpu")
    full = model.encode_texts(["a red circle", "two shapes", "a small blue star"])
    again = model.encode_dense(full.dense, "text")
    assert np.allclose(again.hash, full.hash, atol=1e-6)
    assert np.array_equal(again.codes, full.codes) and np.array_equal(again.pq_codes, full.pq_codes)
    assert model.encode_dense(np.zeros((0, full.dense.shape[1]), np.float32), "image").codes.shape[0] == 0
    with pytest.raises(ConfigError):
        model.encode_dense(full.dense, "caption")


def test_bad_inputs_raise_clear_errors(tiny_run, tmp_path):
    model = meet.load(tiny_run, device="cpu")
    with pytest.raises(DataError, match="list of strings"):
        model.encode_texts("a red circle")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="bad.png"):
        model.encode_images([bad])
    with pytest.raises(ImageError, match="not found"):
        model.encode_images([tmp_path / "missing.png"])


def _checkpoint_copy(tiny_run, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(resolve_checkpoint(tiny_run), folder)
    return folder


def test_truncated_weights_are_detected(tiny_run, tmp_path):
    folder = _checkpoint_copy(tiny_run, tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        meet.load(folder)


def test_pickle_renamed_safetensors_is_never_unpickled(tiny_run, tmp_path):
    folder = _checkpoint_copy(tiny_run, tmp_path)
    (folder / "model.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        meet.load(folder)


def test_config_that_does_not_match_the_weights(tiny_run, tmp_path):
    folder = _checkpoint_copy(tiny_run, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model"]["embed_dim"] = 48
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match"):
        meet.load(folder)


@pytest.mark.parametrize("field", ["embed_dim", "word_dim", "n_bits"])
def test_a_config_edited_to_a_huge_size_is_refused_before_anything_is_allocated(tiny_run, tmp_path, monkeypatch,
                                                                                field):
    """A size of 2**20 makes a model of gigabytes: meet.load must compare the shapes on the
    meta device with the files' headers and never build it for real (the full suite was
    once killed by the out-of-memory killer in the config fuzz test)."""
    import torch

    import meet.checkpoint

    folder = _checkpoint_copy(tiny_run, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model"][field] = 2**20
    (folder / "config.json").write_text(json.dumps(cfg))
    devices, build = [], meet.checkpoint.build_model

    def spy(*args, **kwargs):
        devices.append(str(torch.get_default_device()))
        return build(*args, **kwargs)

    monkeypatch.setattr(meet.checkpoint, "build_model", spy)
    with pytest.raises(CheckpointError, match="another shape"):
        meet.load(folder)
    assert devices == ["meta"]


def test_missing_codebooks_and_wrong_paths(tiny_run, tmp_path):
    folder = _checkpoint_copy(tiny_run, tmp_path)
    (folder / "codebooks.safetensors").unlink()
    with pytest.raises(CheckpointError, match="codebooks.safetensors"):
        meet.load(folder)
    with pytest.raises(CheckpointError, match="not found"):
        meet.load(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        meet.load(tmp_path)


def test_evaluate_cli_writes_every_mode(tiny_run, tiny_shapes, tmp_path, capsys):
    from meet.evaluate import main

    out = tmp_path / "eval.json"
    assert main(["--checkpoint", str(tiny_run), "--data", str(tiny_shapes), "--split", "test",
                 "--modes", "dense,hash,pq", "--json", str(out), "--device", "cpu"]) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"dense", "hash", "pq"}
    for values in results.values():
        for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum",
                    "t2i_p@10", "t2i_map@r", "i2t_map@r", "search_ms_per_caption_query",
                    "encode_ms_per_image"):
            assert key in values, key
        assert 0 <= values["rsum"] <= 600
        recalls = [values[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
        assert abs(sum(recalls) - values["rsum"]) < 1e-6
    assert "| dense |" in capsys.readouterr().out
    assert main(["--checkpoint", str(tiny_run), "--data", str(tiny_shapes), "--modes", "bogus"]) == 2


def test_evaluate_cascade_modes_report_filter_drops(tiny_run, tiny_shapes, tmp_path):
    from meet.evaluate import main

    out = tmp_path / "cascade.json"
    assert main(["--checkpoint", str(tiny_run), "--data", str(tiny_shapes), "--split", "test",
                 "--modes", "dense,cascade,meet", "--json", str(out), "--device", "cpu"]) == 0
    results = json.loads(out.read_text())
    for mode in ("cascade", "meet"):
        values = results[mode]
        for direction in ("t2i", "i2t"):
            dropped = values[f"{direction}_relevant_dropped_hamming"] + values[f"{direction}_relevant_dropped_pq"]
            assert 0.0 <= dropped <= 1.0
        # paper rates on 60 images / 300 captions: R = 0.6 * 60, q = 0.6 * R (t2i)
        assert values["t2i_kept_after_hamming"] == 36 and values["t2i_kept_after_pq"] == 22
        assert 0 <= values["rsum"] <= 600


def test_build_index_cli_round_trip(tiny_run, tiny_shapes, tmp_path, capsys):
    from meet.build_index import main
    from meet.search import checkpoint_fingerprint, load_pair

    out = tmp_path / "index"
    assert main(["--checkpoint", str(tiny_run), "--data", str(tiny_shapes), "--split", "test",
                 "--out", str(out), "--reciprocal-k", "5", "--device", "cpu",
                 "--hamming-index", "ivf", "--hamming-nlist", "4"]) == 0
    fingerprint = checkpoint_fingerprint(tiny_run)
    images, texts = load_pair(out, fingerprint=fingerprint)
    assert (images.n_items, texts.n_items) == (60, 300) and images.reciprocal.shape == (60, 5)
    # the inverted lists were built and saved, and the index searches with them by default
    assert (out / "text" / "ivf_centroids_4.npy").is_file() and texts.cascade.hamming_index == "ivf"
    assert texts.inverted_lists().nlist == 4
    assert images.ids[0].endswith(".png")
    assert main(["--checkpoint", str(tiny_run), "--data", str(tiny_shapes), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_api_searches_skip_the_trace_and_the_dense_comparison(app_state):
    from app.api import search_text_json
    from app.search import text_search

    page = text_search(app_state, "a red circle", k=5)
    api = text_search(app_state, "a red circle", k=5, explain=False)
    assert page.result.traces is not None and page.dense is not None
    assert api.result.traces is None and api.dense is None and "dense" not in api.seconds
    assert api.result.ids.tolist() == page.result.ids.tolist()  # same answer, less work
    assert [r["rank"] for r in search_text_json(app_state, "a red circle", 5)["results"]] == [1, 2, 3, 4, 5]
