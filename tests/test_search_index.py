"""Gallery indexes: validation, save/load (memory-mapped, checksummed, atomic), add,
reciprocal scores, fingerprints, and build_pair on a tiny trained model."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

import meet
from meet import reciprocal as reciprocal_module
from meet import index_store
from meet.checkpoint import resolve_checkpoint
from meet.config import CascadeConfig
from meet.errors import CheckpointError, DataError
from meet.index import GalleryIndex, build_pair, checkpoint_fingerprint
from meet.reciprocal import reciprocal_scores
from meet.quantization import pack_codes
from meet.retrieval import search

DIM, N_BITS, N_CODEBOOKS, CODEBOOK_SIZE = 32, 16, 4, 16


def unit(rng, n, d=DIM):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def arrays(n, seed=0, k=10):
    rng = np.random.default_rng(seed)
    hashed = np.tanh(rng.standard_normal((n, N_BITS))).astype(np.float32)
    return dict(dense=unit(rng, n), codes=pack_codes(hashed),
                pq_codes=rng.integers(0, CODEBOOK_SIZE, (n, N_CODEBOOKS)).astype(np.uint8),
                codebooks=rng.standard_normal((N_CODEBOOKS, CODEBOOK_SIZE, N_BITS // N_CODEBOOKS)).astype(np.float32),
                reciprocal=-np.sort(-rng.uniform(-1, 1, (n, k)), axis=1).astype(np.float32))


def make_index(n=120, seed=0, side="image", fingerprint="fp-A"):
    return GalleryIndex.from_arrays(side, [f"{side}{i}" for i in range(n)], fingerprint=fingerprint,
                                    meta={"note": "test"}, **arrays(n, seed))


def queries(n=5, seed=9):
    rng = np.random.default_rng(seed)
    hashed = np.tanh(rng.standard_normal((n, N_BITS))).astype(np.float32)
    return SimpleNamespace(dense=unit(rng, n), hash=hashed, codes=pack_codes(hashed))


# ------------------------------------------------------------------ arrays

def test_from_arrays_stores_compact_types_and_sizes():
    index = make_index()
    assert index.dense.dtype == np.float16 and index.reciprocal.dtype == np.float16
    assert index.codebooks.dtype == np.float32 and index.pq_codes.dtype == np.uint8
    assert index.n_items == len(index) == 120 and index.n_bits == N_BITS
    assert index.bytes_per_item() == {"binary": 2, "pq": 4, "dense_fp16": 64, "dense_fp32": 128,
                                      "reciprocal": 20}
    half = np.zeros((3, DIM), np.float16)
    same = GalleryIndex.from_arrays("text", ["a", "b", "c"], half, np.zeros((3, 2), np.uint8),
                                    np.zeros((3, 4), np.uint8), index.codebooks)
    assert same.dense is half  # float16 input is not copied
    assert index.binary_index.ntotal == 120


@pytest.mark.parametrize("change, message", [
    (dict(dense=np.zeros((5, DIM), np.float32)), "dense must be"),
    (dict(codes=np.zeros((120, 2), np.int32)), "packed uint8"),
    (dict(codes=np.zeros((120, 3), np.uint8)), "codebooks cover"),
    (dict(pq_codes=np.zeros((120, 3), np.uint8)), "pq_codes must be"),
    (dict(pq_codes=np.full((120, 4), 16, np.uint8)), "0..15"),
    (dict(codebooks=np.zeros((4, 16), np.float32)), "codebooks must be"),
    (dict(reciprocal=np.zeros((7, 3), np.float32)), "reciprocal must be"),
    (dict(reciprocal=np.tile(np.arange(3, dtype=np.float32), (120, 1))), "descending"),
])
def test_from_arrays_rejects_bad_arrays(change, message):
    kwargs = dict(arrays(120), **change)
    with pytest.raises(DataError, match=message):
        GalleryIndex.from_arrays("image", [str(i) for i in range(120)], **kwargs)


def test_ids_must_be_unique_and_match():
    kwargs = arrays(3)
    with pytest.raises(DataError, match="not unique"):
        GalleryIndex.from_arrays("image", ["a", "b", "a"], **kwargs)
    with pytest.raises(DataError, match="n_items=2"):
        GalleryIndex.from_arrays("image", ["a", "b"], **kwargs)


# ------------------------------------------------------------------ files

def test_save_load_round_trip_memory_maps_and_searches_the_same(tmp_path):
    index = make_index()
    folder = index.save(tmp_path / "gallery")
    assert sorted(p.name for p in folder.iterdir()) == ["codebooks.npy", "codes.npy", "dense.npy",
                                                         "index.json", "pq_codes.npy", "reciprocal.npy"]
    loaded = GalleryIndex.load(folder, fingerprint="fp-A")
    assert isinstance(loaded.dense, np.memmap) and isinstance(loaded.codes, np.memmap)
    for name in ("dense", "codes", "pq_codes", "codebooks", "reciprocal"):
        assert np.array_equal(getattr(loaded, name), getattr(index, name))
    assert loaded.ids == index.ids and loaded.meta == {"note": "test"} and loaded.side == "image"
    in_memory = GalleryIndex.load(folder, mmap=False)
    assert not isinstance(in_memory.dense, np.memmap)
    q = queries()
    for mode in ("hash", "meet"):
        a = search(q, index, CascadeConfig(), "t2i", k=10, mode=mode)
        b = search(q, loaded, CascadeConfig(), "t2i", k=10, mode=mode)
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.scores, b.scores)
    header = json.loads((folder / "index.json").read_text())
    assert header["arrays"]["dense"]["sha256"] == index_store.sha256_file(folder / "dense.npy")


def test_changed_or_truncated_files_are_named(tmp_path):
    folder = make_index().save(tmp_path / "gallery")
    path = folder / "pq_codes.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="pq_codes.npy does not match its checksum"):
        GalleryIndex.load(folder)
    GalleryIndex.load(folder, verify=False)  # same size: only the checksum sees it
    dense = folder / "dense.npy"
    dense.write_bytes(dense.read_bytes()[:-10])
    with pytest.raises(DataError, match="dense.npy has .* bytes"):
        GalleryIndex.load(folder, verify=False)
    (folder / "codes.npy").unlink()
    with pytest.raises(DataError, match="codes.npy is missing"):
        GalleryIndex.load(folder)
    with pytest.raises(DataError, match="not a saved gallery index"):
        GalleryIndex.load(tmp_path / "nowhere")


def test_foreign_fingerprint_is_rejected(tmp_path):
    folder = make_index(fingerprint="fp-A").save(tmp_path / "gallery")
    with pytest.raises(CheckpointError, match="built with another checkpoint; rebuild it"):
        GalleryIndex.load(folder, fingerprint="fp-B")
    assert GalleryIndex.load(folder, fingerprint="fp-A").fingerprint == "fp-A"


def test_atomic_save_leaves_nothing_half_written(tmp_path, monkeypatch):
    target = tmp_path / "gallery"
    original = make_index(seed=1)
    original.save(target)
    calls = {"n": 0}
    real_save = np.save

    def failing_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(index_store.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        make_index(seed=2).save(target)
    calls["n"] = 0
    with pytest.raises(OSError, match="disk full"):
        make_index(seed=2).save(tmp_path / "fresh")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery"]  # no temp folder, no "fresh"
    kept = GalleryIndex.load(target)
    assert np.array_equal(kept.dense, original.dense)
    # Overwriting an index with a new one works and replaces every file.
    replacement = make_index(seed=3)
    replacement.save(target)
    assert np.array_equal(GalleryIndex.load(target).dense, replacement.dense)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery"]


def test_save_refuses_to_replace_a_folder_that_is_not_an_index(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not a gallery index"):
        make_index().save(folder)
    assert (folder / "keep.txt").read_text() == "mine"


# ------------------------------------------------------------------ add, reciprocal

def test_add_appends_and_matches_a_fresh_index():
    full = arrays(150, seed=4)
    other = make_index(n=40, side="text", seed=5)
    grown = GalleryIndex.from_arrays("image", [f"i{i}" for i in range(100)],
                                     **{k: v[:100] for k, v in full.items() if k != "codebooks"},
                                     codebooks=full["codebooks"])
    grown.binary_index  # built before the add: must follow it
    grown.add([f"i{i}" for i in range(100, 150)], full["dense"][100:], full["codes"][100:],
              full["pq_codes"][100:], reciprocal=full["reciprocal"][100:])
    fresh = GalleryIndex.from_arrays("image", [f"i{i}" for i in range(150)], **full)
    q = queries()
    for mode in ("hash", "cascade", "meet"):
        assert np.array_equal(search(q, grown, CascadeConfig(), "t2i", mode=mode).ids,
                              search(q, fresh, CascadeConfig(), "t2i", mode=mode).ids)
    assert grown.meta["n_added"] == 50
    with pytest.raises(DataError, match="already in the index"):
        grown.add(["i3"], full["dense"][:1], full["codes"][:1], full["pq_codes"][:1], full["reciprocal"][:1])
    with pytest.raises(DataError, match="need theirs"):
        grown.add(["new"], full["dense"][:1], full["codes"][:1], full["pq_codes"][:1])
    grown.add(["new"], full["dense"][:1], full["codes"][:1], full["pq_codes"][:1], other=other)
    expected = np.sort(full["dense"][:1].astype(np.float16).astype(np.float32)
                       @ other.dense.astype(np.float32).T, axis=1)[:, ::-1][:, :10]
    assert np.allclose(grown.reciprocal[-1].astype(np.float32), expected, atol=1e-3)


def test_reciprocal_scores_equal_brute_force_top_k(monkeypatch):
    rng = np.random.default_rng(7)
    monkeypatch.setattr(reciprocal_module, "QUERY_BLOCK", 16)  # several faiss calls
    # Duplicate vectors give tied scores; k above and below the other side's size.
    rows = np.concatenate([unit(rng, 50), unit(rng, 10)]).astype(np.float16)
    cols = np.concatenate([unit(rng, 70), rows[:12].astype(np.float32)]).astype(np.float16)
    full = rows.astype(np.float32) @ cols.astype(np.float32).T
    steps = []
    top_rows, top_cols = reciprocal_scores(rows, cols, 8, 5, progress=lambda d, t: steps.append((d, t)))
    assert top_rows.dtype == np.float16 and top_rows.shape == (60, 8) and top_cols.shape == (82, 5)
    assert np.allclose(top_rows, np.sort(full, axis=1)[:, ::-1][:, :8], atol=1e-3)
    assert np.allclose(top_cols, np.sort(full.T, axis=1)[:, ::-1][:, :5], atol=1e-3)
    assert steps[-1] == (142, 142)
    few, none = reciprocal_scores(rows, cols[:3], 8, 0)  # k larger than the other side
    assert few.shape == (60, 3) and none is None


# ------------------------------------------------------------------ a real model

def test_build_pair_on_a_tiny_trained_model(tiny_run, tiny_shapes, tmp_path):
    from meet.data.loading import load_split
    from meet.evaluate import encode_dataset

    model = meet.load(tiny_run, device="cpu")
    ds = load_split(tiny_shapes, "test", model.cfg.model)
    messages = set()
    image_index, text_index = build_pair(model, ds, reciprocal_k=7,
                                         progress=lambda d, t, m: messages.add(m))
    assert messages == {"encoding images", "encoding captions", "reciprocal top-k scores"}
    images, texts = encode_dataset(model, ds)
    assert image_index.ids == list(ds.image_ids) and text_index.ids == [str(c) for c in ds.caption_ids]
    assert np.array_equal(image_index.codes, images.codes) and np.array_equal(text_index.pq_codes, texts.pq_codes)
    assert np.allclose(image_index.dense.astype(np.float32), images.dense, atol=1e-3)
    assert np.array_equal(image_index.codebooks, model.model.image_pq.codebooks.numpy())
    assert np.array_equal(text_index.codebooks, model.model.text_pq.codebooks.numpy())
    matrix = image_index.dense.astype(np.float32) @ text_index.dense.astype(np.float32).T
    assert np.allclose(image_index.reciprocal, np.sort(matrix, 1)[:, ::-1][:, :7], atol=1e-3)
    assert np.allclose(text_index.reciprocal, np.sort(matrix.T, 1)[:, ::-1][:, :7], atol=1e-3)
    fingerprint = checkpoint_fingerprint(tiny_run)
    assert image_index.fingerprint == text_index.fingerprint == fingerprint
    assert fingerprint == checkpoint_fingerprint(resolve_checkpoint(tiny_run))

    # Complementarity of an in-gallery caption: its own stored score is not "greater".
    cfg = CascadeConfig(hamming_rate_t2i=1.0, pq_rate_t2i=1.0, top_z_t2i=ds.n_images)
    result = search(texts, image_index, cfg, "t2i", k=5, mode="meet", trace=True)
    for j in range(0, ds.n_images, 7):
        c = int(np.argmax(matrix[j]))  # image j's favourite caption, searching for images
        tr = result.traces[c]
        rank = int(tr.complementarity_ranks[list(tr.candidates).index(j)])
        stored = image_index.reciprocal[j].astype(np.float32)
        own = np.float32(np.float16(matrix[j, c]))
        assert rank == int((stored > own).sum()) == 0
    i2t = search(images, text_index, CascadeConfig(), "i2t", k=5, mode="meet")
    assert i2t.ids.shape == (ds.n_images, 5) and (i2t.ids >= 0).all()

    # Saved with the checkpoint's fingerprint; another checkpoint's index is refused.
    folder = text_index.save(tmp_path / "captions")
    assert GalleryIndex.load(folder, fingerprint=fingerprint).n_items == len(ds.captions)
    other = tmp_path / "other-ckpt"
    shutil.copytree(resolve_checkpoint(tiny_run), other)
    with open(other / "codebooks.safetensors", "ab") as f:
        f.write(b"\0")
    with pytest.raises(CheckpointError, match="another checkpoint"):
        GalleryIndex.load(folder, fingerprint=checkpoint_fingerprint(other))

    # Lists of image paths work too and give the same codes.
    paths = [tiny_shapes / "images" / name for name in ds.image_ids[:6]]
    small_images, small_texts = build_pair(model, paths, ds.image_ids[:6], ds.captions[:12],
                                           [str(c) for c in ds.caption_ids[:12]], reciprocal_k=0)
    assert np.array_equal(small_images.codes, images.codes[:6]) and small_images.reciprocal is None
    assert small_texts.n_items == 12


def test_checkpoint_fingerprint_names_missing_files(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="codebooks.safetensors"):
        checkpoint_fingerprint(tmp_path)
