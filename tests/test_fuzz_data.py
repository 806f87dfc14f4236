"""Fuzzed data sets through ``meet.data.load_split``: Karpathy JSON + images, plain image
folders and precomputed feature arrays.

Karpathy: a missing or malformed ``dataset.json`` (cut anywhere, not UTF-8, not an
object, wrong types in any field), missing or undecodable image files, unknown splits,
duplicate file names and sentids, uncaptioned images, unsafe paths. Folders: no images,
non-image files, caption files with bad lines. Precomp: wrong rank or width, empty
arrays, non-float dtypes, NaN/inf, caption/image count mismatches. A loaded data set is
checked against a small reference of what it must hold; a failure must be a clear
``DataError``/``ConfigError``; the data folder is never written to.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import fuzzing
from meet.config import ModelConfig
from meet.data.loading import load_split
from meet.errors import ConfigError, DataError, ImageError, MEETError

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
RAW = ModelConfig(image_encoder="cnn", image_size=16)
PRECOMP_DIM = 8
PRECOMP = ModelConfig(image_encoder="precomp", precomp_dim=PRECOMP_DIM)

pytestmark = pytest.mark.filterwarnings("ignore:.*skipped.*:UserWarning")


@pytest.fixture(scope="module", autouse=True)
def _tally(tmp_path_factory):
    yield
    fuzzing.flush(tmp_path_factory)


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (seed % 256, 0, 0)).save(buffer, "PNG")
    return buffer.getvalue()


def _load(root: Path, split: str, cfg: ModelConfig, category: str, loader=None, named=None):
    """load_split (or ``loader()``), or the clear error it raised, which names a path
    under ``named`` (default ``root``) or the split; the folder is never written to."""
    before = fuzzing.snapshot(root)
    try:
        ds = loader() if loader else load_split(root, split, cfg)
    except MEETError as exc:
        fuzzing.record(category, fuzzing.outcome_of(exc))
        assert isinstance(exc, (DataError, ConfigError)), exc
        fuzzing.assert_clear_error(exc)
        assert str(named or root) in str(exc) or split in str(exc), f"error names no file or split: {exc}"
        ds = exc
    else:
        fuzzing.record(category, "ok")
    assert fuzzing.snapshot(root) == before, "the loader changed the data folder"
    return ds


# ------------------------------------------------------------------ Karpathy JSON
FILENAMES = ["a.png", "b.png", "c.jpg", "d.png", "e.png"]
SPLITS = ["train", "val", "test", "restval"]
REQUESTED = st.sampled_from(["train", "train", "val", "test", "dev", "restval", "testall", "", "TRAIN", "../x"])
sentences = st.lists(st.fixed_dictionaries(
    {"raw": st.sampled_from(["a red circle", "  a blue star ", "", "   ", "two shapes", "ünï 😀"])},
    optional={"sentid": st.one_of(st.none(), st.integers(0, 6))}), max_size=3)
_entry = st.fixed_dictionaries({"filename": st.sampled_from(FILENAMES),
                                "split": st.sampled_from(SPLITS + ["other"]), "sentences": sentences},
                               optional={"filepath": st.sampled_from(["", "images", "sub"])})
entries = st.one_of(st.lists(_entry, max_size=6), st.lists(_entry, max_size=5, unique_by=lambda e: e["filename"]))
"""Image entries; half the draws with unique file names."""
files = st.one_of(st.just({name: "png" for name in FILENAMES}),
                  st.dictionaries(st.sampled_from(FILENAMES), st.sampled_from(["png", "png", "junk", "empty"]),
                                  max_size=5))
"""Image files on disk: usually all of them, else some, some undecodable."""


def _expected(entries: list[dict], split: str, present: set[str]) -> dict | None:
    """What load_karpathy must return for well-typed entries, or None if it must fail."""
    wanted = {"dev": "val"}.get(split, split)
    accepted = {wanted, "restval"} if wanted == "train" else {wanted}
    selected = [e for e in entries if e["split"] in accepted]
    kept = [(e, [s["raw"].strip() for s in e["sentences"] if s["raw"].strip()]) for e in selected]
    kept = [(e, caps) for e, caps in kept if caps]
    if not selected or not kept:
        return None
    names = [e["filename"] for e, _ in kept]
    if len(set(names)) < len(names):
        return None
    ids = [s.get("sentid") for e, _ in kept for s in e["sentences"] if s["raw"].strip()]
    if None not in ids and len(set(ids)) < len(ids):
        return None
    located = [(e.get("filepath") or "", e["filename"]) for e, _ in kept]
    if any(str(Path(fp, name)) not in present and f"images/{name}" not in present for fp, name in located):
        return None
    return {"image_ids": names, "captions": [c for _, caps in kept for c in caps]}


@settings(FUZZ, max_examples=220)
@given(entries=entries, files=files, split=REQUESTED, where=st.sampled_from(["", "images", "sub"]))
def test_karpathy_json_loads_exactly_or_fails_clearly(entries, files, split, where):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "dataset.json").write_text(json.dumps({"images": entries}))
        for name, kind in files.items():
            path = root / where / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes({"png": _png(len(name)), "junk": b"not an image", "empty": b""}[kind])
        expected = _expected(entries, split, {str(Path(where, name)) for name in files})
        ds = _load(root, split, RAW, "data: Karpathy JSON (well-formed, any content)")
        if expected is None:
            assert isinstance(ds, MEETError), f"should have failed: {entries} split {split!r}"
            return
        assert not isinstance(ds, MEETError), f"should have loaded: {ds}"
        assert ds.image_ids == expected["image_ids"] and ds.captions == expected["captions"]
        for i, path in enumerate(ds.paths):
            assert root in path.parents and path.name == ds.image_ids[i]
            try:  # decoding is lazy: a junk file fails here, naming itself
                assert ds.images([i]).shape == (1, 3, 16, 16)
            except ImageError as exc:
                fuzzing.record("data: Karpathy image file decoded", fuzzing.outcome_of(exc))
                fuzzing.assert_clear_error(exc, path.name)
            else:
                fuzzing.record("data: Karpathy image file decoded", "ok")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                           | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


@settings(FUZZ, max_examples=200)
@given(entries=entries.filter(bool), target=st.tuples(st.integers(0, 5), st.sampled_from(
    ["filename", "split", "sentences", "filepath", "raw", "sentid", "tokens", "scene", "images", "<top>"])),
    value=json_values, cut=st.one_of(st.none(), st.floats(0, 1, exclude_max=True)),
    encoding=st.sampled_from(["utf-8", "utf-16", "latin-1-bytes"]), split=REQUESTED,
    layout=st.sampled_from(["dataset.json", "dataset_coco.json", "two files", "no json"]))
def test_malformed_annotation_files_fail_clearly(entries, target, value, cut, encoding, split, layout):
    """Any field replaced by any JSON value, the file cut anywhere or mis-encoded."""
    index, key = target
    entries = json.loads(json.dumps(entries))
    document = {"images": entries}
    if key == "<top>":
        document = value
    elif key == "images":
        document["images"] = value
    elif key in ("raw", "sentid", "tokens"):
        sentences = entries[index % len(entries)]["sentences"]
        if sentences:
            sentences[0][key] = value
    else:
        entries[index % len(entries)][key] = value
    text = json.dumps(document)
    if cut is not None:
        text = text[:int(len(text) * cut)]
    data = text.encode("utf-16") if encoding == "utf-16" else text.encode("utf-8")
    if encoding == "latin-1-bytes":
        data = b"\xff\xfe\xfa" + data
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in FILENAMES:
            (root / name).write_bytes(_png(0))
        names = {"dataset.json": ["dataset.json"], "dataset_coco.json": ["dataset_coco.json"],
                 "two files": ["dataset_a.json", "dataset_b.json"], "no json": []}[layout]
        for name in names:
            (root / name).write_bytes(data)
        ds = _load(root, split, RAW, "data: Karpathy JSON (malformed or missing)")
        if layout == "no json":  # no annotation file: the folder is a plain image gallery
            assert ds.split == "all" and ds.image_ids == sorted(FILENAMES) and ds.captions == []
        elif not isinstance(ds, MEETError):  # a mutation that kept the file valid
            assert ds.n_images >= 1 and len(ds.captions) >= ds.n_images
            assert all(isinstance(c, str) and c for c in ds.captions)
            assert all(root in p.parents for p in ds.paths)
            assert len(set(ds.image_ids)) == ds.n_images


@settings(FUZZ, max_examples=120)
@given(names=st.lists(st.sampled_from(["x.png", "y.JPG", "z.gif", "w.webp", "notes.txt", "data.json",
                                       "noext", ".hidden.png", "v.jpeg"]), unique=True, max_size=5),
       junk=st.sets(st.integers(0, 4)), subfolder=st.booleans(),
       lines=st.one_of(st.none(), st.lists(st.tuples(
           st.sampled_from(["x.png", "x.png", "y.JPG", "missing.png", "", " x.png"]),
           st.sampled_from(["\t", "\t", "\t", " ", "\t\t", ""]),
           st.sampled_from(["a red circle", "a red circle", "", " ", "ünï"])), max_size=3)))
def test_image_folders(names, junk, subfolder, lines):
    from meet.data.karpathy import IMAGE_EXTENSIONS, load_image_folder

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "gallery"
        root.mkdir()
        for k, name in enumerate(names):
            (root / name).write_bytes(b"junk" if k in junk else _png(k))
        if subfolder:
            (root / "nested").mkdir()
            (root / "nested" / "deep.png").write_bytes(_png(9))
        images = sorted(n for n in names if n.lower().endswith(IMAGE_EXTENSIONS))
        if lines is None:
            ds = _load(root, "all", RAW, "data: image folder")
        else:
            captions = Path(tmp) / "captions.tsv"
            captions.write_text("\n".join(f"{a}{b}{c}" for a, b, c in lines))
            ds = _load(root, "all", RAW, "data: image folder + captions file",
                       loader=lambda: load_image_folder(root, 16, captions_file=captions), named=tmp)
        if not images:
            assert isinstance(ds, DataError) and "no images" in str(ds)
            return
        expected_captions = []
        for a, b, c in lines or []:
            name, tab, caption = f"{a}{b}{c}".partition("\t")
            if not (a + b + c).strip():
                continue
            if not tab or not caption.strip() or name.strip() not in images:
                assert isinstance(ds, DataError), f"bad captions line {a + b + c!r} was accepted"
                return
            expected_captions.append(caption.strip())
        assert not isinstance(ds, MEETError), ds
        assert ds.image_ids == images and ds.n_images == len(images)  # no recursion, sorted
        assert ds.captions == expected_captions


# ------------------------------------------------------------------ precomp
PRECOMP_FAULTS = [None, None, None, "rank 1", "rank 4", "width", "no regions", "no images", "int dtype",
                  "bool dtype", "complex dtype", "nan", "inf", "one caption less", "one caption more",
                  "one caption per image", "unknown split", "other split", "captions missing",
                  "captions empty", "captions not utf-8", "rows differ"]
"""None: a valid split (3 of 22 draws); else the one thing that is wrong."""


@settings(FUZZ, max_examples=240)
@given(fault=st.sampled_from(PRECOMP_FAULTS), n_images=st.integers(1, 4), regions=st.sampled_from([None, 1, 3]),
       dtype=st.sampled_from([np.float32, np.float64, np.float16]), repeat=st.booleans(),
       split=st.sampled_from(["train", "dev", "val", "test", "testall"]), seed=st.integers(0, 99),
       at=st.integers(0, 10**6))
def test_precomp_arrays(fault, n_images, regions, dtype, repeat, split, seed, at):
    shape = [n_images, PRECOMP_DIM] if regions is None else [n_images, regions, PRECOMP_DIM]
    shape = {"rank 1": [n_images], "rank 4": [n_images, 1, 2, PRECOMP_DIM], "no images": [0, *shape[1:]],
             "no regions": [n_images, 0, PRECOMP_DIM],
             "width": [*shape[:-1], PRECOMP_DIM - 1]}.get(fault, shape)
    dtype = {"int dtype": np.int32, "bool dtype": np.bool_, "complex dtype": np.complex64}.get(fault, dtype)
    array = np.random.default_rng(seed).normal(size=shape).astype(dtype)
    if fault in ("nan", "inf"):
        array.reshape(-1)[at % array.size] = np.nan if fault == "nan" else -np.inf
    repeat = repeat and fault not in ("rank 1", "no images", "rows differ")
    if repeat:  # the one-row-per-caption release: every image repeated five times
        array = np.repeat(array, 5, axis=0)
    n_lines = 5 * n_images + {"one caption less": -1, "one caption more": 1}.get(fault, 0)
    if fault == "one caption per image":
        n_lines = n_images
    if fault == "rows differ":  # as many rows as captions, but not repeats
        array = np.random.default_rng(seed).normal(size=(5 * n_images, *shape[1:])).astype(dtype)
    stem = {"dev": "val", "val": "dev", "other split": "testall" if split != "testall" else "train"}.get(
        split if fault != "other split" else "other split", split)
    asked = "nonsense" if fault == "unknown split" else split
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        np.save(root / f"{stem}_ims.npy", array)
        caps = root / f"{stem}_caps.txt"
        if fault == "captions empty":
            caps.write_text("\n\n")
        elif fault == "captions not utf-8":
            caps.write_bytes(b"\xff\xfe caption\n" * n_lines)
        elif fault != "captions missing":
            caps.write_text("".join(f"caption {i}\n" for i in range(n_lines)))
        ds = _load(root, asked, PRECOMP, "data: precomp arrays")
        if fault is not None:
            assert isinstance(ds, MEETError), f"{fault!r} was accepted"
            return
        assert not isinstance(ds, MEETError), ds
        assert ds.n_images == n_images and len(ds.captions) == 5 * n_images
        expected = array[::5 if repeat else 1].astype(np.float32).reshape(n_images, -1, PRECOMP_DIM)
        assert np.array_equal(ds.images(list(range(n_images))).numpy(), expected)
        assert ds.caption_image.tolist() == [i // 5 for i in range(5 * n_images)]
