"""Gallery indexes: validation, save/load (memory-mapped, checksummed, atomic; pairs too),
add, reciprocal scores, fingerprints, and build_pair on a tiny trained model."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

import meet
from meet.checkpoint import resolve_checkpoint
from meet.config import CascadeConfig
from meet.errors import CheckpointError, ConfigError, DataError
from meet.quantization import pack_codes
from meet.search import GalleryIndex, HashPQ, build_pair, checkpoint_fingerprint, load_pair, save_pair
from meet.search import rerank as rerank_module
from meet.search import storage
from meet.search.rerank import reciprocal_scores

DIM, N_BITS, N_CODEBOOKS, CODEBOOK_SIZE = 32, 16, 4, 16


def unit(rng, n, d=DIM):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def arrays(n, seed=0, k=10):
    """An index's arrays; its PQ codes are the hash features' nearest codewords, as an
    index built from encodings (or grown by ``add``) holds them."""
    rng = np.random.default_rng(seed)
    hashed = np.tanh(rng.standard_normal((n, N_BITS))).astype(np.float32)
    books = rng.standard_normal((N_CODEBOOKS, CODEBOOK_SIZE, N_BITS // N_CODEBOOKS)).astype(np.float32)
    return dict(dense=unit(rng, n), codes=pack_codes(hashed), pq_codes=HashPQ(books).encode(hashed),
                quantizer=HashPQ(books), hash=hashed,
                reciprocal=-np.sort(-rng.uniform(-1, 1, (n, k)), axis=1).astype(np.float32))


def index_of(ids, side="image", **kwargs):
    """``GalleryIndex`` from the dict of :func:`arrays` (keyword arrays by name)."""
    positional = [kwargs.pop(name) for name in ("dense", "codes", "pq_codes", "quantizer")]
    return GalleryIndex(side, ids, *positional, **kwargs)


def make_index(n=120, seed=0, side="image", fingerprint="fp-A"):
    return index_of([f"{side}{i}" for i in range(n)], side, fingerprint=fingerprint, meta={"note": "test"},
                    **arrays(n, seed))


def queries(n=5, seed=9):
    rng = np.random.default_rng(seed)
    hashed = np.tanh(rng.standard_normal((n, N_BITS))).astype(np.float32)
    return SimpleNamespace(dense=unit(rng, n), hash=hashed, codes=pack_codes(hashed))


# ------------------------------------------------------------------ arrays

def test_constructor_stores_compact_types_and_sizes():
    index = make_index()
    assert index.dense.dtype == np.float16 and index.reciprocal.dtype == np.float16
    assert index.codebooks.dtype == np.float32 and index.pq_codes.dtype == np.uint8
    assert index.n_items == len(index) == 120 and index.n_bits == N_BITS
    assert index.bytes_per_item() == {"binary": 2, "pq": 4, "dense_fp16": 64, "dense_fp32": 128,
                                      "reciprocal": 20}
    assert index.hash.dtype == np.float32 and index.pq_space == "hash"
    half = np.zeros((3, DIM), np.float16)
    same = GalleryIndex("text", ["a", "b", "c"], half, np.zeros((3, 2), np.uint8), np.zeros((3, 4), np.uint8),
                        index.quantizer)
    assert same.dense is half and same.hash is None  # float16 input is not copied
    assert index.binary_index.ntotal == 120


@pytest.mark.parametrize("change, message", [
    (dict(dense=np.zeros((5, DIM), np.float32)), "dense must be"),
    (dict(codes=np.zeros((120, 2), np.int32)), "packed uint8"),
    (dict(codes=np.zeros((120, 3), np.uint8)), "reads 16-d hash vectors but the items have 24"),
    (dict(pq_codes=np.zeros((120, 3), np.uint8)), "pq_codes must be"),
    (dict(pq_codes=np.full((120, 4), 16, np.uint8)), "0..15"),
    (dict(hash=np.zeros((120, 8), np.float32)), "hash must be"),
    (dict(reciprocal=np.zeros((7, 3), np.float32)), "reciprocal must be"),
    (dict(reciprocal=np.tile(np.arange(3, dtype=np.float32), (120, 1))), "descending"),
])
def test_constructor_rejects_bad_arrays(change, message):
    kwargs = dict(arrays(120), **change)
    with pytest.raises(DataError, match=message):
        index_of([str(i) for i in range(120)], **kwargs)


def test_constructor_rejects_bad_quantizers_sides_and_ids():
    with pytest.raises(DataError, match="codebooks must be"):
        HashPQ(np.zeros((4, 16), np.float32))
    with pytest.raises(ConfigError, match="Quantizer"):
        index_of([str(i) for i in range(3)], **dict(arrays(3), quantizer=np.zeros((4, 16, 4), np.float32)))
    with pytest.raises(ConfigError, match="side"):
        index_of([str(i) for i in range(3)], side="audio", **arrays(3))
    kwargs = arrays(3)
    with pytest.raises(DataError, match="not unique"):
        index_of(["a", "b", "a"], **kwargs)
    with pytest.raises(DataError, match="n_items=2"):
        index_of(["a", "b"], **arrays(3))


# ------------------------------------------------------------------ files

def test_save_load_round_trip_memory_maps_and_searches_the_same(tmp_path):
    index = make_index()
    folder = index.save(tmp_path / "gallery")
    assert sorted(p.name for p in folder.iterdir()) == ["codebooks.npy", "codes.npy", "dense.npy", "hash.npy",
                                                         "index.json", "pq_codes.npy", "reciprocal.npy"]
    index.cascade = CascadeConfig(hamming_rate_t2i=50, pq_rate_t2i=20, alpha=0.3)
    index.save(folder)
    loaded = GalleryIndex.load(folder, fingerprint="fp-A")
    assert isinstance(loaded.dense, np.memmap) and isinstance(loaded.codes, np.memmap)
    for name in ("dense", "codes", "pq_codes", "codebooks", "reciprocal", "hash"):
        assert np.array_equal(getattr(loaded, name), getattr(index, name))
    assert loaded.ids == index.ids and loaded.meta == {"note": "test"} and loaded.side == "image"
    assert loaded.cascade == index.cascade and isinstance(loaded.quantizer, HashPQ)
    in_memory = GalleryIndex.load(folder, mmap=False)
    assert not isinstance(in_memory.dense, np.memmap)
    q = queries()
    for mode in ("hash", "meet"):
        a = index.search(q, k=10, mode=mode)
        b = loaded.search(q, k=10, mode=mode)
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.scores, b.scores)
    header = json.loads((folder / "index.json").read_text())
    assert header["arrays"]["dense"]["sha256"] == storage.sha256_file(folder / "dense.npy")
    assert header["quantizer"] == {"space": "hash"} and header["cascade"]["alpha"] == 0.3


def test_pairs_save_and_load_as_one_step(tmp_path):
    images, texts = make_index(side="image"), make_index(n=60, side="text", seed=1)
    folder = save_pair(tmp_path / "pair", images, texts)
    assert sorted(p.name for p in folder.iterdir()) == ["image", "text"]
    loaded_images, loaded_texts = load_pair(folder, fingerprint="fp-A", mmap=False)
    assert loaded_images.ids == images.ids and loaded_texts.ids == texts.ids
    save_pair(folder, texts, images)  # replacing a pair is fine; a swapped pair is refused on load
    with pytest.raises(DataError, match="not image and text"):
        load_pair(folder)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not a saved index pair"):
        save_pair(notes, images, texts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "pair"]


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

    monkeypatch.setattr(storage.np, "save", failing_save)
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
    rows = lambda a, b: SimpleNamespace(dense=full["dense"][a:b], hash=full["hash"][a:b], codes=full["codes"][a:b])
    grown = index_of([f"i{i}" for i in range(100)],
                     **{k: v[:100] if isinstance(v, np.ndarray) else v for k, v in full.items()})
    grown.binary_index  # built before the add: must follow it
    grown.add([f"i{i}" for i in range(100, 150)], rows(100, 150), reciprocal=full["reciprocal"][100:])
    fresh = index_of([f"i{i}" for i in range(150)], **full)
    assert np.array_equal(grown.pq_codes, fresh.pq_codes) and np.array_equal(grown.hash, fresh.hash)
    q = queries()
    for mode in ("hash", "cascade", "meet"):
        assert np.array_equal(grown.search(q, mode=mode).ids, fresh.search(q, mode=mode).ids)
    assert grown.meta["n_added"] == 50
    with pytest.raises(DataError, match="already in the index"):
        grown.add(["i3"], rows(0, 1), reciprocal=full["reciprocal"][:1])
    with pytest.raises(DataError, match="need theirs"):
        grown.add(["new"], rows(0, 1))
    grown.add(["new"], rows(0, 1), other=other)
    expected = np.sort(full["dense"][:1].astype(np.float16).astype(np.float32)
                       @ other.dense.astype(np.float32).T, axis=1)[:, ::-1][:, :10]
    assert np.allclose(grown.reciprocal[-1].astype(np.float32), expected, atol=1e-3)


def test_reciprocal_scores_equal_brute_force_top_k(monkeypatch):
    rng = np.random.default_rng(7)
    monkeypatch.setattr(rerank_module, "QUERY_BLOCK", 16)  # several faiss calls
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

    model = meet.load(tiny_run, device="cpu")
    ds = load_split(tiny_shapes, "test", model.cfg.model)
    ticks = []
    images, texts = model.encode_dataset(ds, progress=lambda d, t: ticks.append((d, t)))
    assert ticks[-1] == (ds.n_images + len(ds.captions),) * 2
    messages = set()
    image_index, text_index = build_pair(model, images, texts, ds.image_ids, [str(c) for c in ds.caption_ids],
                                         cascade=CascadeConfig(reciprocal_k=7),
                                         progress=lambda d, t, m: messages.add(m))
    assert messages == {"reciprocal top-k scores"}
    assert image_index.ids == list(ds.image_ids) and text_index.ids == [str(c) for c in ds.caption_ids]
    assert np.array_equal(image_index.codes, images.codes) and np.array_equal(text_index.pq_codes, texts.pq_codes)
    assert np.allclose(image_index.dense.astype(np.float32), images.dense, atol=1e-3)
    assert np.array_equal(image_index.codebooks, model.model.image_pq.codebooks.numpy())
    assert np.array_equal(text_index.codebooks, model.model.text_pq.codebooks.numpy())
    assert image_index.cascade.reciprocal_k == 7 and image_index.hash is None
    assert image_index.meta["build"]["reciprocal_k"] == 7
    matrix = image_index.dense.astype(np.float32) @ text_index.dense.astype(np.float32).T
    assert np.allclose(image_index.reciprocal, np.sort(matrix, 1)[:, ::-1][:, :7], atol=1e-3)
    assert np.allclose(text_index.reciprocal, np.sort(matrix.T, 1)[:, ::-1][:, :7], atol=1e-3)
    fingerprint = checkpoint_fingerprint(tiny_run)
    assert image_index.fingerprint == text_index.fingerprint == fingerprint
    assert fingerprint == checkpoint_fingerprint(resolve_checkpoint(tiny_run))

    # Complementarity of an in-gallery caption: its own stored score is not "greater".
    cfg = CascadeConfig(hamming_rate_t2i=1.0, pq_rate_t2i=1.0, top_z_t2i=ds.n_images)
    result = image_index.search(texts, k=5, mode="meet", cascade=cfg, trace=True)
    for j in range(0, ds.n_images, 7):
        c = int(np.argmax(matrix[j]))  # image j's favourite caption, searching for images
        tr = result.traces[c]
        rank = int(tr.complementarity_ranks[list(tr.candidates).index(j)])
        stored = image_index.reciprocal[j].astype(np.float32)
        own = np.float32(np.float16(matrix[j, c]))
        assert rank == int((stored > own).sum()) == 0
    i2t = text_index.search(images, k=5, mode="meet")
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

    # Lists of image paths encode to the same codes; keep_hash keeps the hash features.
    paths = [tiny_shapes / "images" / name for name in ds.image_ids[:6]]
    small_images, small_texts = build_pair(model, model.encode_images(paths), model.encode_texts(ds.captions[:12]),
                                           ds.image_ids[:6], [str(c) for c in ds.caption_ids[:12]],
                                           cascade=CascadeConfig(reciprocal_k=0), keep_hash=True)
    assert np.array_equal(small_images.codes, images.codes[:6]) and small_images.reciprocal is None
    assert small_texts.n_items == 12 and np.allclose(small_images.hash, images.hash[:6], atol=1e-6)
    with pytest.raises(DataError, match="6 images with 5 ids"):
        build_pair(model, model.encode_images(paths), model.encode_texts(ds.captions[:12]), ds.image_ids[:5],
                   [str(c) for c in ds.caption_ids[:12]])


def test_checkpoint_fingerprint_names_missing_files(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="codebooks.safetensors"):
        checkpoint_fingerprint(tmp_path)


def test_codes_of_more_than_32768_codewords_are_stored_unsigned(tiny_run, tiny_shapes):
    """The config allows 65,536 codewords: codes from 32,768 need uint16 (an int16 overflowed
    to negative codes), and every stage reads them."""
    import torch

    from meet.data.loading import load_split
    from meet.quantization import ProductQuantizer

    model = meet.load(tiny_run, device="cpu")
    mcfg = model.cfg.model
    wide = ProductQuantizer(mcfg.n_bits, mcfg.n_codebooks, 40000)
    wide.codebooks.copy_(torch.randn(wide.codebooks.shape, generator=torch.Generator().manual_seed(0)))
    wide.fitted.fill_(True)
    model.model.text_pq, model.cfg.model.codebook_size = wide, 40000
    captions = load_split(tiny_shapes, "test", mcfg).captions[:120]
    texts = model.encode_texts(captions)
    assert texts.pq_codes.dtype == np.uint16 and texts.pq_codes.max() >= 32768
    assert np.array_equal(texts.pq_codes.astype(np.int64), wide.encode(torch.from_numpy(texts.hash)).numpy())
    index = GalleryIndex("text", [str(i) for i in range(len(captions))], texts.dense, texts.codes, texts.pq_codes,
                         HashPQ(wide.codebooks.numpy()))
    assert index.pq_codes.dtype == np.uint16
    probe = model.encode_texts(["a red circle", "two shapes", "a small blue star"])
    adc = probe.hash @ HashPQ(wide.codebooks.numpy()).decode(texts.pq_codes).T
    top = index.search(probe, k=10, mode="pq")
    for row in range(3):
        assert top.ids[row].tolist() == sorted(range(len(captions)), key=lambda j: (-adc[row, j], j))[:10]
    cascade = index.search(probe, k=5, mode="cascade", cascade=CascadeConfig(hamming_rate_i2t=60, pq_rate_i2t=20))
    assert (cascade.ids >= 0).all()
