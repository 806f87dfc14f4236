"""Precomp loader: both array ranks, repeated rows, aliases, folds, pickling, every error."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from meet.data import precomp
from meet.data.precomp import PrecompDataset, coco_folds, load_precomp
from meet.errors import DataError


def _features(n: int, regions: int | None = 36, dim: int = 16, seed: int = 0) -> np.ndarray:
    shape = (n, dim) if regions is None else (n, regions, dim)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _write(root: Path, split: str, features: np.ndarray, captions: list[str]) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    ims, caps = root / f"{split}_ims.npy", root / f"{split}_caps.txt"
    np.save(ims, features)
    caps.write_text("".join(f"{c}\n" for c in captions))
    return ims, caps


def _captions(n_images: int) -> list[str]:
    return [f"image {i // 5} caption {i % 5} " for i in range(5 * n_images)]


def test_regions_layout(tmp_path: Path) -> None:
    feats = _features(4)
    _write(tmp_path / "f30k_precomp", "test", feats, _captions(4))
    ds = load_precomp(tmp_path / "f30k_precomp", "test")
    assert isinstance(ds, PrecompDataset) and ds.kind == "precomp" and ds.name == "f30k_precomp"
    assert ds.n_images == len(ds) == 4 and ds.n_captions == 20
    assert isinstance(ds.features, np.memmap)
    assert ds.captions[7] == "image 1 caption 2"  # stripped
    assert ds.caption_image.tolist() == [i // 5 for i in range(20)]
    assert ds.caption_ids == list(range(20)) and ds.image_ids == ["0", "1", "2", "3"]
    assert ds.captions_of(3) == [15, 16, 17, 18, 19]
    image = ds.image(2)
    assert image.dtype == torch.float32 and image.shape == (36, 16)
    assert torch.equal(image, torch.from_numpy(feats[2]))
    order = [3, 0, 3]
    assert torch.equal(ds.images(order), torch.stack([ds.image(i) for i in order]))


def test_vector_layout_and_float64(tmp_path: Path) -> None:
    feats = _features(3, regions=None).astype(np.float64)
    _write(tmp_path, "train", feats, _captions(3))
    ds = load_precomp(tmp_path, "train")
    assert ds.image(1).shape == (1, 16) and ds.image(1).dtype == torch.float32
    assert ds.images([2, 1]).shape == (2, 1, 16)
    np.testing.assert_allclose(ds.images([2, 1])[:, 0].numpy(), feats[[2, 1]].astype(np.float32))


def test_repeated_rows_use_every_fifth(tmp_path: Path) -> None:
    feats = _features(3)
    _write(tmp_path, "train", np.repeat(feats, 5, axis=0), _captions(3))
    ds = load_precomp(tmp_path, "train")
    assert ds.n_images == 3 and ds.rows.tolist() == [0, 5, 10]
    assert torch.equal(ds.images([0, 1, 2]), torch.from_numpy(feats))
    assert ds.caption_image.tolist() == [i // 5 for i in range(15)]


def test_dev_val_aliases(tmp_path: Path) -> None:
    _write(tmp_path / "a", "dev", _features(2), _captions(2))
    _write(tmp_path / "b", "val", _features(2, seed=1), _captions(2))
    for root in (tmp_path / "a", tmp_path / "b"):
        for split in ("dev", "val"):
            assert load_precomp(root, split).split == "dev"


def test_subset_preload_and_pickle(tmp_path: Path) -> None:
    feats = _features(6)
    _write(tmp_path, "test", feats, _captions(6))
    ds = load_precomp(tmp_path, "test")
    sub = ds.subset([4, 1])
    assert type(sub) is PrecompDataset and sub.features is ds.features  # rows follow, array shared
    assert sub.image_ids == ["4", "1"] and sub.caption_ids == list(range(20, 25)) + list(range(5, 10))
    assert sub.captions[0] == "image 4 caption 0" and sub.caption_image.tolist() == [0] * 5 + [1] * 5
    assert torch.equal(sub.images([0, 1]), torch.from_numpy(feats[[4, 1]]))
    clone = pickle.loads(pickle.dumps(sub))
    assert isinstance(clone.features, np.memmap) and torch.equal(clone.image(1), sub.image(1))
    loaded = load_precomp(tmp_path, "test").subset([4, 1]).preload(progress=False)
    assert not isinstance(loaded.features, np.memmap) and loaded.features.shape == (2, 36, 16)
    assert torch.equal(loaded.images([1, 0]), sub.images([1, 0]))
    assert torch.equal(pickle.loads(pickle.dumps(loaded)).image(0), sub.image(0))


def test_coco_folds(tmp_path: Path) -> None:
    _write(tmp_path, "testall", _features(10, regions=None), _captions(10))
    ds = load_precomp(tmp_path, "testall")
    folds = coco_folds(ds, n_folds=5, fold_size=2)
    assert len(folds) == 5
    assert folds[3].image_ids == ["6", "7"] and folds[3].caption_ids == list(range(30, 40))
    assert folds[3].caption_image.tolist() == [0] * 5 + [1] * 5
    assert torch.equal(folds[3].image(0), ds.image(6))
    with pytest.raises(DataError, match="10"):
        coco_folds(ds)  # default: 5 x 1000


@settings(max_examples=25, deadline=None)
@given(n_folds=st.integers(1, 4), fold_size=st.integers(1, 4), data=st.data())
def test_folds_partition_captions(n_folds: int, fold_size: int, data: st.DataObject) -> None:
    n_images = n_folds * fold_size
    n_captions = data.draw(st.integers(0, 12))
    owners = data.draw(st.lists(st.integers(0, n_images - 1), min_size=n_captions, max_size=n_captions))
    ds = PrecompDataset(
        name="t", split="testall", kind="precomp", n_images=n_images,
        captions=[f"c{k}" for k in range(n_captions)], caption_image=np.asarray(owners, dtype=np.int64),
        image_ids=[str(i) for i in range(n_images)], caption_ids=list(range(n_captions)),
        features=np.arange(n_images * 2, dtype=np.float32).reshape(n_images, 2), rows=np.arange(n_images))
    folds = coco_folds(ds, n_folds=n_folds, fold_size=fold_size)
    all_ids = sorted(c for fold in folds for c in fold.caption_ids)
    assert all_ids == list(range(n_captions))  # every caption in exactly one fold
    for k, fold in enumerate(folds):
        for j, caption_id in enumerate(fold.caption_ids):  # slow reference mapping
            assert owners[caption_id] == k * fold_size + fold.caption_image[j]
            assert fold.captions[j] == f"c{caption_id}"
        for i in range(fold.n_images):
            assert [fold.caption_ids[c] for c in fold.captions_of(i)] == \
                [c for c in range(n_captions) if owners[c] == k * fold_size + i]


# ---------------------------------------------------------------------- errors
def _raises_naming(path: Path | str, root: Path, split: str = "test") -> str:
    with pytest.raises(DataError) as info:
        load_precomp(root, split)
    assert str(path) in str(info.value), str(info.value)
    return str(info.value)


def test_missing_root_split_and_files(tmp_path: Path) -> None:
    _raises_naming(tmp_path / "nope", tmp_path / "nope")
    assert "testall" in _raises_naming(tmp_path, tmp_path, split="tset")
    ims, caps = tmp_path / "test_ims.npy", tmp_path / "test_caps.txt"
    message = _raises_naming(ims, tmp_path)
    assert str(caps) in message
    _write(tmp_path, "train", _features(1), _captions(1))
    caps.write_text("x\n" * 5)
    message = _raises_naming(ims, tmp_path)
    assert "['train']" in message  # splits that do exist
    ims.write_bytes(b"")
    caps.unlink()
    _raises_naming(caps, tmp_path)


@pytest.mark.parametrize("array", [np.zeros(5, np.float32), np.zeros((1, 2, 3, 4), np.float32),
                                   np.zeros((1, 4), np.int64), np.zeros((0, 4), np.float32)])
def test_bad_arrays(tmp_path: Path, array: np.ndarray) -> None:
    ims, _ = _write(tmp_path, "test", array, _captions(1))
    _raises_naming(ims, tmp_path)


def test_pickled_or_garbage_files(tmp_path: Path) -> None:
    ims, _ = _write(tmp_path, "test", np.array([{"a": 1}], dtype=object), _captions(1))
    assert "cannot read" in _raises_naming(ims, tmp_path)
    ims.write_bytes(b"")
    assert "empty file" in _raises_naming(ims, tmp_path)
    ims.write_bytes(b"\x93NUMPY garbage")
    _raises_naming(ims, tmp_path)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_found_in_later_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: float) -> None:
    monkeypatch.setattr(precomp, "_FINITE_CHUNK_BYTES", 1)  # one image per chunk
    feats = _features(4)
    feats[3, 7, 2] = value
    ims, _ = _write(tmp_path, "test", np.repeat(feats, 5, axis=0), _captions(4))
    assert "image 3" in _raises_naming(ims, tmp_path)
    assert load_precomp(tmp_path, "test", check_finite=False).n_images == 4


def test_caption_count_mismatch_and_empty_captions(tmp_path: Path) -> None:
    ims, caps = _write(tmp_path, "test", _features(3), _captions(3)[:-1])
    message = _raises_naming(caps, tmp_path)
    assert "14 captions" in message and "3 images" in message and str(ims) in message
    caps.write_text("\n\n")
    assert "empty file" in _raises_naming(caps, tmp_path)
    # rows == lines but the rows do not repeat: one caption per image is not accepted
    _write(tmp_path, "test", _features(5), [f"c{i}" for i in range(5)])
    assert "rows 0-4 differ" in _raises_naming(caps, tmp_path)
