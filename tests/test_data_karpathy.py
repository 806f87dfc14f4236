"""Karpathy-JSON and image-folder loaders: layouts, ordering, subsets, caching, every error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meet.data.karpathy import RawImageDataset, load_image_folder, load_karpathy
from meet.errors import DataError, ImageError

SIZE = 8


def _png(path: Path, value: int) -> None:
    """An 8x8 image whose red channel is ``value`` (identifies the image after decoding)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    arr[..., 0] = value
    arr[..., 1] = np.arange(SIZE, dtype=np.uint8)[None, :] * 10
    Image.fromarray(arr).save(path, format="PNG")  # lossless even when named .jpg


def _entry(filename: str, split: str, texts: list[str], first_sentid: int, filepath: str | None = None,
           **extra) -> dict:
    entry = {"filename": filename, "split": split, "imgid": first_sentid,
             "sentences": [{"raw": t, "tokens": t.split(), "sentid": first_sentid + j}
                           for j, t in enumerate(texts)], **extra}
    if filepath is not None:
        entry["filepath"] = filepath
    return entry


def _write_json(root: Path, entries: list[dict], name: str = "dataset_coco.json", **top) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_text(json.dumps({"images": entries, **top}))
    return path


# (filename, folder, split, captions); red value = 10 * position in this list
COCO = [
    ("COCO_train2014_1.jpg", "train2014", "train", [" a cat ", "a cat on a mat"]),
    ("COCO_val2014_2.jpg", "val2014", "restval", ["a dog", "a dog running", "dog"]),
    ("COCO_train2014_3.jpg", "train2014", "train", ["a bird"]),
    ("COCO_val2014_4.jpg", "val2014", "val", ["a car", "red car"]),
    ("COCO_val2014_5.jpg", "val2014", "test", ["a tree", "tall tree", "green tree"]),
    ("COCO_val2014_6.jpg", "val2014", "val", ["a boat"]),
]


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    entries, sentid = [], 100
    for k, (filename, folder, split, texts) in enumerate(COCO):
        # JPEG would be lossy; a PNG named .jpg still decodes (PIL sniffs the format)
        _png(root / folder / filename, 10 * k)
        entries.append(_entry(filename, split, texts, sentid, filepath=folder))
        sentid += len(texts)
    _write_json(root, entries, dataset="coco")
    return root


@pytest.fixture
def flickr_root(tmp_path: Path) -> Path:
    root = tmp_path / "f30k"
    entries = []
    for k in range(4):
        _png(root / "images" / f"{k}.jpg", 50 + k)
        entries.append(_entry(f"{k}.jpg", "test" if k % 2 else "train", [f"caption {k} a", f"caption {k} b"], 10 * k))
    _write_json(root, entries, name="dataset_flickr30k.json")
    return root


def test_coco_train_includes_restval_in_order(coco_root: Path) -> None:
    ds = load_karpathy(coco_root, "train", image_size=SIZE)
    assert isinstance(ds, RawImageDataset) and ds.kind == "raw" and ds.name == "coco" and ds.split == "train"
    assert ds.image_ids == ["COCO_train2014_1.jpg", "COCO_val2014_2.jpg", "COCO_train2014_3.jpg"]
    assert len(ds) == ds.n_images == 3
    assert ds.captions == ["a cat", "a cat on a mat", "a dog", "a dog running", "dog", "a bird"]
    assert ds.caption_image.dtype == np.int64
    assert ds.caption_image.tolist() == [0, 0, 1, 1, 1, 2]
    assert ds.caption_ids == [100, 101, 102, 103, 104, 105]
    assert ds.captions_of(1) == [2, 3, 4]
    assert ds.scenes is None and ds.caption_facts is None
    image = ds.image(1)
    assert image.dtype == torch.uint8 and image.shape == (3, SIZE, SIZE)
    assert int(image[0, 0, 0]) == 10  # red value of COCO[1]
    assert ds.paths[1] == coco_root / "val2014" / "COCO_val2014_2.jpg"


def test_restval_handling_and_aliases(coco_root: Path) -> None:
    strict = load_karpathy(coco_root, "train", image_size=SIZE, restval_as_train=False)
    assert strict.image_ids == ["COCO_train2014_1.jpg", "COCO_train2014_3.jpg"]
    assert load_karpathy(coco_root, "restval", image_size=SIZE).image_ids == ["COCO_val2014_2.jpg"]
    val = load_karpathy(coco_root, "dev", image_size=SIZE)
    assert val.split == "val" and val.image_ids == ["COCO_val2014_4.jpg", "COCO_val2014_6.jpg"]
    assert val.caption_image.tolist() == [0, 0, 1]


def test_flickr_layout_images_folder_and_image_dir(flickr_root: Path, tmp_path: Path) -> None:
    ds = load_karpathy(flickr_root, "test", image_size=4)
    assert ds.name == "flickr30k" and ds.image_ids == ["1.jpg", "3.jpg"]
    assert ds.paths[0] == flickr_root / "images" / "1.jpg"
    assert ds.image(1).shape == (3, 4, 4) and int(ds.image(1)[0, 0, 0]) == 53
    elsewhere = tmp_path / "elsewhere"
    for k in range(4):
        _png(elsewhere / f"{k}.jpg", 200 + k)
    moved = load_karpathy(flickr_root, "train", image_size=SIZE, image_dir=elsewhere)
    assert int(moved.image(1)[0, 0, 0]) == 202


def test_shapes_style_scene_and_facts(tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    entries = []
    for k in range(3):
        _png(root / "images" / f"{k:06d}.png", k)
        entry = _entry(f"{k:06d}.png", "test", ["a red circle", "two shapes"], 2 * k, filepath="images",
                       scene={"objects": [{"shape": "circle", "id": k}]})
        for j, sentence in enumerate(entry["sentences"]):
            sentence["facts"] = {"family": "one_object" if j == 0 else "count", "k": k}
        entries.append(entry)
    _write_json(root, entries, name="dataset.json")
    ds = load_karpathy(root, "test", image_size=SIZE)
    assert ds.name == "shapes"  # no "dataset" key: the folder name
    assert [s["objects"][0]["id"] for s in ds.scenes] == [0, 1, 2]
    assert [f["k"] for f in ds.caption_facts] == [0, 0, 1, 1, 2, 2]
    sub = ds.subset([2, 0])
    assert [s["objects"][0]["id"] for s in sub.scenes] == [2, 0]
    assert [f["k"] for f in sub.caption_facts] == [2, 2, 0, 0]
    # one image without a scene and one sentence without facts: both become None
    del entries[1]["scene"]
    del entries[2]["sentences"][0]["facts"]
    _write_json(root, entries, name="dataset.json")
    partial = load_karpathy(root, "test", image_size=SIZE)
    assert partial.scenes is None and partial.caption_facts is None


def test_subset_remaps_captions(coco_root: Path) -> None:
    ds = load_karpathy(coco_root, "train", image_size=SIZE)
    sub = ds.subset(np.array([2, 0]))
    assert type(sub) is RawImageDataset and sub.n_images == 2
    assert sub.image_ids == ["COCO_train2014_3.jpg", "COCO_train2014_1.jpg"]
    assert sub.captions == ["a bird", "a cat", "a cat on a mat"]
    assert sub.caption_image.tolist() == [0, 1, 1] and sub.caption_ids == [105, 100, 101]
    assert torch.equal(sub.image(0), ds.image(2))
    # slow reference: each kept caption still points at the same image file
    for c, image in enumerate(sub.caption_image):
        original = ds.caption_ids.index(sub.caption_ids[c])
        assert ds.image_ids[ds.caption_image[original]] == sub.image_ids[image]
    with pytest.raises(ValueError):
        ds.subset([0, 0])
    with pytest.raises(IndexError):
        ds.subset([3])


def test_preload_equals_lazy_and_batches(coco_root: Path) -> None:
    lazy = load_karpathy(coco_root, "train", image_size=SIZE)
    cached = load_karpathy(coco_root, "train", image_size=SIZE).preload(progress=False)
    assert cached.cache is not None and cached.cache.shape == (3, 3, SIZE, SIZE)
    for i in range(3):
        assert torch.equal(lazy.image(i), cached.image(i))
    order = [2, 0, 2]
    reference = torch.stack([lazy.image(i) for i in order])
    assert torch.equal(lazy.images(order), reference)
    assert torch.equal(cached.images(order), reference)
    assert torch.equal(cached.subset([1]).cache[0], lazy.image(1))
    with pytest.raises(IndexError):
        lazy.image(3)


def test_uncaptioned_images_and_empty_captions_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _png(root / "a.png", 1)
    _png(root / "b.png", 2)
    entries = [_entry("a.png", "val", [], 0), _entry("b.png", "val", ["  ", "ok"], 0)]
    _write_json(root, entries, name="dataset.json")
    with pytest.warns(UserWarning, match=r"skipped 1 image.*1 empty caption"):
        ds = load_karpathy(root, "val", image_size=SIZE)
    assert ds.image_ids == ["b.png"] and ds.captions == ["ok"] and ds.caption_ids == [1]


# ---------------------------------------------------------------------- errors
def _raises_naming(path: Path | str, fn, *args, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    assert str(path) in str(info.value), str(info.value)
    return info.value


def test_missing_root_and_json(tmp_path: Path) -> None:
    _raises_naming(tmp_path / "nope", load_karpathy, tmp_path / "nope", "train")
    (tmp_path / "empty").mkdir()
    _raises_naming(tmp_path / "empty", load_karpathy, tmp_path / "empty", "train")
    _raises_naming(tmp_path / "empty" / "x.json", load_karpathy, tmp_path / "empty", "train", json_name="x.json")


def test_several_json_files_named(tmp_path: Path) -> None:
    _write_json(tmp_path, [], name="dataset_coco.json")
    _write_json(tmp_path, [], name="dataset_f30k.json")
    err = _raises_naming(tmp_path, load_karpathy, tmp_path, "train")
    assert "dataset_coco.json" in str(err) and "dataset_f30k.json" in str(err)


def test_malformed_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "dataset.json"
    path.write_text('{"images": [\n  {"filename": "a.png",,}\n]}')
    err = _raises_naming(path, load_karpathy, tmp_path, "train")
    assert "line 2" in str(err) and "column" in str(err)


def test_missing_images_key(tmp_path: Path) -> None:
    path = tmp_path / "dataset.json"
    path.write_text('{"annotations": []}')
    _raises_naming(path, load_karpathy, tmp_path, "train")


@pytest.mark.parametrize("key", ["filename", "split", "sentences"])
def test_entry_missing_key(tmp_path: Path, key: str) -> None:
    entry = _entry("a.png", "train", ["x"], 0)
    del entry[key]
    path = _write_json(tmp_path, [entry], name="dataset.json")
    err = _raises_naming(path, load_karpathy, tmp_path, "train")
    assert key in str(err)


def test_sentence_without_text(tmp_path: Path) -> None:
    path = _write_json(tmp_path, [{"filename": "a.png", "split": "train", "sentences": [{"sentid": 1}]}],
                       name="dataset.json")
    _raises_naming(path, load_karpathy, tmp_path, "train")


def test_unknown_split_lists_present(coco_root: Path) -> None:
    err = _raises_naming(coco_root / "dataset_coco.json", load_karpathy, coco_root, "testall")
    assert "['restval', 'test', 'train', 'val']" in str(err)


def test_empty_split(tmp_path: Path) -> None:
    path = _write_json(tmp_path, [_entry("a.png", "test", [], 0)], name="dataset.json")
    with pytest.warns(UserWarning):
        err = _raises_naming(path, load_karpathy, tmp_path, "test")
    assert "no images with captions" in str(err)


def test_duplicate_file_names_and_sentids(tmp_path: Path) -> None:
    path = _write_json(tmp_path, [_entry("a.png", "test", ["x"], 0), _entry("a.png", "test", ["y"], 1)],
                       name="dataset.json")
    assert "a.png" in str(_raises_naming(path, load_karpathy, tmp_path, "test"))
    path = _write_json(tmp_path, [_entry("a.png", "test", ["x"], 7), _entry("b.png", "test", ["y"], 7)],
                       name="dataset.json")
    assert "sentids" in str(_raises_naming(path, load_karpathy, tmp_path, "test"))
    # duplicates across different splits are fine (only the loaded split matters)
    _png(tmp_path / "images" / "a.png", 0)
    _write_json(tmp_path, [_entry("a.png", "test", ["x"], 7), _entry("b.png", "train", ["y"], 7)],
                name="dataset.json")
    assert load_karpathy(tmp_path, "test", image_size=SIZE).caption_ids == [7]


def test_missing_image_files_counted(coco_root: Path) -> None:
    (coco_root / "val2014" / "COCO_val2014_4.jpg").unlink()
    (coco_root / "val2014" / "COCO_val2014_6.jpg").unlink()
    err = _raises_naming(coco_root / "dataset_coco.json", load_karpathy, coco_root, "val")
    assert "2 of 2 image files" in str(err)
    assert str(coco_root / "val2014" / "COCO_val2014_4.jpg") in str(err)
    _raises_naming(coco_root / "wrong", load_karpathy, coco_root, "train", image_dir=coco_root / "wrong")


def test_unreadable_image_raises_image_error(coco_root: Path) -> None:
    bad = coco_root / "val2014" / "COCO_val2014_5.jpg"
    bad.write_bytes(b"not an image at all")
    ds = load_karpathy(coco_root, "test", image_size=SIZE)  # existence is fine; decoding is lazy
    with pytest.raises(ImageError, match=re.escape(str(bad))):
        ds.image(0)
    with pytest.raises(ImageError, match=re.escape(str(bad))):
        ds.preload(progress=False)


# ---------------------------------------------------------------------- plain folders
def test_image_folder_sorted_with_captions(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    for name, value in [("b.jpg", 2), ("a.png", 1), ("C.WEBP", 3)]:
        folder.mkdir(exist_ok=True)
        arr = np.full((SIZE, SIZE, 3), value, dtype=np.uint8)
        Image.fromarray(arr).save(folder / name, format="WEBP" if name.endswith("WEBP") else "PNG", lossless=True)
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    gallery = load_image_folder(folder, image_size=SIZE)
    assert gallery.image_ids == ["C.WEBP", "a.png", "b.jpg"] and gallery.split == "all"
    assert gallery.captions == [] and gallery.caption_image.shape == (0,)
    assert int(gallery.image(1)[0, 0, 0]) == 1
    captions = tmp_path / "caps.txt"
    captions.write_text("b.jpg\ta blue thing\n\na.png\t an apple \nb.jpg\tanother\n")
    ds = load_image_folder(folder, image_size=SIZE, captions_file=captions)
    assert ds.captions == ["a blue thing", "an apple", "another"]
    assert ds.caption_image.tolist() == [2, 1, 2] and ds.caption_ids == [0, 1, 2]
    assert ds.captions_of(2) == [0, 2] and ds.captions_of(0) == []


def test_image_folder_errors(tmp_path: Path) -> None:
    _raises_naming(tmp_path / "nope", load_image_folder, tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    _raises_naming(empty, load_image_folder, empty)
    folder = tmp_path / "imgs"
    _png(folder / "a.png", 0)
    caps = tmp_path / "caps.txt"
    _raises_naming(caps, load_image_folder, folder, captions_file=caps)
    caps.write_text("just a caption without a file\n")
    assert "line 1" in str(_raises_naming(caps, load_image_folder, folder, captions_file=caps))
    caps.write_text("a.png\tfine\nz.png\tunknown image\n")
    assert "line 2" in str(_raises_naming(caps, load_image_folder, folder, captions_file=caps))
