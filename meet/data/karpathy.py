"""Raw image data sets: the Karpathy split JSON (COCO, Flickr30K, Flickr8k, Shapes) and
plain image folders.

The Karpathy JSON is a dict with ``"images"``: a list of entries, each with ``filename``,
``split`` (``train``/``val``/``test``/``restval``), optional ``filepath`` (COCO:
``train2014``/``val2014``; Shapes: ``images``) and ``sentences`` (each with ``raw``,
``tokens``, ``sentid``). The Shapes benchmark adds ``scene`` per image and ``facts`` per
sentence, which are kept (``scenes``/``caption_facts``) when every selected item has them.

Image paths are resolved in this order, and nothing else is tried:

1. ``image_dir`` given: ``image_dir/filepath/filename`` only;
2. otherwise ``root/filepath/filename``, then ``root/images/filename``.

Every image file of the split is checked for existence at load time (one directory
listing per folder, not one ``stat`` per file), so a wrong root fails at once and not
in the middle of an epoch. Decoding stays lazy (:meth:`RawImageDataset.image`) unless
:meth:`RawImageDataset.preload` is called.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from meet.data.dataset import ImageTextDataset
from meet.data.images import load_image_tensor
from meet.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
"""File types :func:`load_image_folder` picks up (case-insensitive)."""

SPLIT_ALIASES = {"dev": "val"}
"""Requested split names mapped to the Karpathy JSON's names."""

_SHOW = 5
"""How many offending items an error message lists."""


@dataclass(eq=False, repr=False, kw_only=True)
class RawImageDataset(ImageTextDataset):
    """Image files decoded on demand to uint8 ``(3, image_size, image_size)`` tensors."""

    paths: list[Path]
    """``(n_images,)`` resolved image file paths."""
    image_size: int = 64
    cache: torch.Tensor | None = None
    """uint8 ``(n_images, 3, S, S)`` after :meth:`preload`, else ``None``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.paths) != self.n_images:
            raise DataError(f"data set {self.name!r}: {len(self.paths)} paths for {self.n_images} images")

    def _load_image(self, i: int) -> torch.Tensor:
        if self.cache is not None:
            return self.cache[i]
        return load_image_tensor(self.paths[i], self.image_size)  # ImageError names the file

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 ``(len(indices), 3, S, S)``; one gather from the cache once preloaded."""
        if self.cache is None:
            return super().images(indices)
        idx = self._check_indices(indices)
        if idx.size == 0:
            raise ValueError("images() needs at least one index")
        return self.cache[torch.from_numpy(idx)]

    def preload(self, progress: bool = True) -> "RawImageDataset":
        """Decode every image once into one uint8 tensor ``(n_images, 3, S, S)``.

        Training epochs then skip PNG/JPEG decoding; costs ``3 * S * S`` bytes per image
        (64 px: 12 KiB, so 1.4 GiB for COCO's 113K training images). Returns self.
        """
        if self.cache is not None:
            return self
        from tqdm.auto import tqdm  # lazy: only needed here

        size = self.image_size
        cache = torch.empty((self.n_images, 3, size, size), dtype=torch.uint8)
        for i in tqdm(range(self.n_images), desc=f"decoding {self.name}/{self.split}",
                      unit="img", disable=not progress):
            cache[i] = load_image_tensor(self.paths[i], size)
        self.cache = cache
        return self

    def _subset_source(self, image_indices: np.ndarray) -> dict[str, Any]:
        cache = None if self.cache is None else self.cache[torch.from_numpy(image_indices)]
        return {"paths": [self.paths[i] for i in image_indices], "cache": cache}


# ---------------------------------------------------------------------- Karpathy JSON
def load_karpathy(root: str | Path, split: str, image_size: int = 64, json_name: str | None = None,
                  image_dir: str | Path | None = None, restval_as_train: bool = True) -> RawImageDataset:
    """Load one split of a Karpathy-style JSON data set with its image files.

    ``json_name`` defaults to ``dataset.json``, else the single ``dataset_*.json`` in
    ``root``. ``split`` is ``train``/``val`` (alias ``dev``)/``test``/``restval``;
    ``train`` includes ``restval`` when ``restval_as_train`` (the usual 113K COCO train
    set). Images with no captions are skipped with a warning.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data set folder not found: {root}", fix="check --data")
    json_path = _find_json(root, json_name)
    data = _read_json(json_path)
    entries = data["images"]
    _check_entries(entries, json_path)

    wanted = SPLIT_ALIASES.get(split, split)
    accepted = {wanted, "restval"} if wanted == "train" and restval_as_train else {wanted}
    present = sorted({e["split"] for e in entries})
    if not accepted & set(present):
        raise DataError(f"{json_path}: split {split!r} not found; splits present: {present}",
                        fix=f"use one of {present}")
    selected = [e for e in entries if e["split"] in accepted]
    fields = _parse_entries(selected, json_path, wanted)
    name = data.get("dataset") if isinstance(data.get("dataset"), str) else _name_from_json(json_path)
    paths = _resolve_paths(fields.pop("entries"), root,
                           None if image_dir is None else Path(image_dir), json_path)
    return RawImageDataset(name=name, split=wanted, kind="raw", paths=paths, image_size=image_size, **fields)


def _find_json(root: Path, json_name: str | None) -> Path:
    """``root/json_name``, else ``dataset.json``, else the one ``dataset_*.json``."""
    if json_name is not None:
        path = root / json_name
        if not path.is_file():
            raise DataError(f"annotation file not found: {path}", fix="check json_name")
        return path
    if (root / "dataset.json").is_file():
        return root / "dataset.json"
    candidates = sorted(root.glob("dataset_*.json"))
    if not candidates:
        raise DataError(f"no dataset.json or dataset_*.json in {root}",
                        fix="put the Karpathy split JSON there or pass json_name")
    if len(candidates) > 1:
        names = [p.name for p in candidates]
        raise DataError(f"several annotation files in {root}: {names}",
                        fix="pass json_name to pick one")
    return candidates[0]


def _read_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}", fix="save it as UTF-8 JSON") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"malformed JSON in {path} at line {exc.lineno} column {exc.colno}: {exc.msg}",
                        fix="fix or re-download the file") from exc
    if not isinstance(data, dict) or "images" not in data:
        raise DataError(f"{path} has no top-level 'images' key",
                        fix="expected the Karpathy split layout: {\"images\": [...]}")
    if not isinstance(data["images"], list):
        raise DataError(f"{path}: 'images' must be a list, got {type(data['images']).__name__}",
                        fix="expected the Karpathy split layout: {\"images\": [...]}")
    return data


def _check_entries(entries: list, json_path: Path) -> None:
    """Every entry is a dict with a string ``filename`` and ``split``, a list of
    ``sentences`` and an optional string ``filepath``; ``filepath/filename`` must stay
    inside the image folder (no absolute paths, no ``..``), so a data set file cannot
    make the loader, or an app serving its images, read files elsewhere."""
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"{json_path}: images[{k}] is a {type(entry).__name__}, not an object",
                            fix="each item of 'images' must be an object with filename, split, sentences")
        for key, kind in (("filename", str), ("split", str), ("sentences", list)):
            if not isinstance(entry.get(key), kind) or (kind is str and not entry[key]):
                label = entry.get("filename", "?")
                raise DataError(f"{json_path}: images[{k}] (filename {label!r}) lacks a valid {key!r}",
                                fix="every image entry needs 'filename', 'split' and 'sentences'")
        filepath = entry.get("filepath") or ""
        if not isinstance(filepath, str):
            raise DataError(f"{json_path}: images[{k}] (filename {entry['filename']!r}) has a "
                            f"{type(filepath).__name__} 'filepath'",
                            fix="'filepath' must be a folder name string")
        relative = Path(filepath, entry["filename"])
        if relative.is_absolute() or ".." in relative.parts or "\x00" in str(relative):
            raise DataError(f"{json_path}: images[{k}] has an unsafe image path {str(relative)!r}",
                            fix="'filepath' and 'filename' must be relative names inside the data "
                                "folder (no leading '/', no '..', no NUL)")


def _parse_entries(selected: list[dict], json_path: Path, split: str) -> dict[str, Any]:
    """Captions, ids, scenes and facts of the selected entries; drops uncaptioned images."""
    captions: list[str] = []
    caption_image: list[int] = []
    sentids: list[Any] = []
    facts: list[Any] = []
    kept: list[dict] = []
    n_skipped_images = n_empty_captions = 0
    for entry in selected:
        image_captions = []
        for j, sentence in enumerate(entry["sentences"]):
            text = _sentence_text(sentence, entry, j, json_path)
            if not text:
                n_empty_captions += 1
                continue
            image_captions.append((text, sentence.get("sentid"), sentence.get("facts")))
        if not image_captions:
            n_skipped_images += 1
            continue
        for text, sentid, fact in image_captions:
            captions.append(text)
            caption_image.append(len(kept))
            sentids.append(sentid)
            facts.append(fact)
        kept.append(entry)
    if n_skipped_images or n_empty_captions:
        warnings.warn(f"{json_path} split {split!r}: skipped {n_skipped_images} image(s) without "
                      f"captions and {n_empty_captions} empty caption(s)", stacklevel=3)
    if not kept:
        raise DataError(f"{json_path}: split {split!r} has no images with captions",
                        fix="check the 'sentences' of that split")
    _fail_on_duplicates([e["filename"] for e in kept], "image file names", json_path, split)
    if any(s is None for s in sentids):
        caption_ids = list(range(len(captions)))  # no sentid: fall back to the running index
    elif not all(isinstance(s, int) and not isinstance(s, bool) for s in sentids):
        bad = next(s for s in sentids if not isinstance(s, int) or isinstance(s, bool))
        raise DataError(f"{json_path}: split {split!r} has a sentid that is not an integer: {bad!r}",
                        fix="sentids must be integers (or be left out everywhere)")
    else:
        _fail_on_duplicates(sentids, "sentids", json_path, split)
        caption_ids = [int(s) for s in sentids]
    scenes = [e.get("scene") for e in kept]
    return dict(
        n_images=len(kept), captions=captions, caption_image=np.asarray(caption_image, dtype=np.int64),
        image_ids=[e["filename"] for e in kept], caption_ids=caption_ids,
        scenes=None if any(s is None for s in scenes) else scenes,
        caption_facts=None if any(f is None for f in facts) else facts,
        entries=kept,
    )


def _sentence_text(sentence: Any, entry: dict, j: int, json_path: Path) -> str:
    """The stripped ``raw`` text, or the joined ``tokens`` when ``raw`` is missing."""
    if isinstance(sentence, dict):
        if isinstance(sentence.get("raw"), str):
            return sentence["raw"].strip()
        tokens = sentence.get("tokens")
        if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
            return " ".join(tokens).strip()
    raise DataError(f"{json_path}: sentence {j} of image {entry['filename']!r} has no 'raw' text",
                    fix="each sentence needs a 'raw' string (or a 'tokens' list)")


def _fail_on_duplicates(values: list, what: str, json_path: Path, split: str) -> None:
    duplicates = [v for v, count in Counter(values).items() if count > 1]
    if duplicates:
        raise DataError(f"{json_path}: {len(duplicates)} duplicate {what} in split {split!r}, "
                        f"e.g. {duplicates[:_SHOW]}", fix=f"{what} must be unique within a split")


def _name_from_json(json_path: Path) -> str:
    """``dataset_coco.json`` -> ``coco``; ``dataset.json`` -> the folder's name."""
    stem = json_path.stem
    return stem[len("dataset_"):] if stem.startswith("dataset_") else json_path.parent.name


class _DirListing:
    """File names per folder, listed once: existence checks for 100K images without 100K stats."""

    def __init__(self) -> None:
        self._names: dict[Path, frozenset[str]] = {}

    def has(self, path: Path) -> bool:
        parent = path.parent
        if parent not in self._names:
            try:
                with os.scandir(parent) as it:
                    self._names[parent] = frozenset(e.name for e in it if not e.is_dir())
            except OSError:
                self._names[parent] = frozenset()
        return path.name in self._names[parent]


def _resolve_paths(entries: list[dict], root: Path, image_dir: Path | None, json_path: Path) -> list[Path]:
    """First existing candidate per entry (see the module docstring); fail listing the missing."""
    listing = _DirListing()
    paths: list[Path] = []
    missing: list[Path] = []
    for entry in entries:
        filepath, filename = entry.get("filepath") or "", entry["filename"]
        if image_dir is not None:
            candidates = [image_dir / filepath / filename]
        else:
            candidates = [root / filepath / filename, root / "images" / filename]
        found = next((c for c in candidates if listing.has(c)), None)
        if found is None:
            missing.append(candidates[0])
        paths.append(found or candidates[0])
    if missing:
        where = f"{image_dir}/<filepath>/" if image_dir is not None else f"{root}/<filepath>/ or {root}/images/"
        raise DataError(f"{len(missing)} of {len(entries)} image files listed in {json_path} are missing, "
                        f"e.g. {[str(p) for p in missing[:_SHOW]]}",
                        fix=f"put the images under {where} or pass image_dir")
    return paths


# ---------------------------------------------------------------------- plain folders
def load_image_folder(folder: str | Path, image_size: int = 64,
                      captions_file: str | Path | None = None) -> RawImageDataset:
    """Every image directly inside ``folder`` (sorted by name; no recursion), split ``all``.

    ``captions_file`` (optional, UTF-8): one ``filename<TAB>caption`` per line; blank
    lines are ignored; captions keep the file's order and ``caption_ids`` count them from
    0. Without it the data set has images only (a gallery for image search).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}", fix="check the path")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"no images in {folder}",
                        fix=f"expected files ending in {', '.join(IMAGE_EXTENSIONS)}")
    names = [p.name for p in files]
    captions: list[str] = []
    caption_image: list[int] = []
    if captions_file is not None:
        captions, caption_image = _read_captions_file(Path(captions_file), names)
    return RawImageDataset(
        name=folder.name, split="all", kind="raw", n_images=len(files), captions=captions,
        caption_image=np.asarray(caption_image, dtype=np.int64), image_ids=names,
        caption_ids=list(range(len(captions))), paths=files, image_size=image_size)


def _read_captions_file(path: Path, names: list[str]) -> tuple[list[str], list[int]]:
    """Parse ``filename<TAB>caption`` lines into captions and their image indices."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise DataError(f"captions file not found: {path}", fix="check the path") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read captions file {path}: {exc}", fix="save it as UTF-8 text") from exc
    index_of = {name: i for i, name in enumerate(names)}
    captions: list[str] = []
    caption_image: list[int] = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        filename, tab, caption = line.partition("\t")
        filename, caption = filename.strip(), caption.strip()
        if not tab or not caption:
            raise DataError(f"{path} line {line_no}: expected 'filename<TAB>caption', got {line[:60]!r}",
                            fix="every caption line names its image file, then a tab, then the text")
        if filename not in index_of:
            raise DataError(f"{path} line {line_no}: image {filename!r} is not in the folder",
                            fix="use a file name from the image folder")
        captions.append(caption)
        caption_image.append(index_of[filename])
    return captions, caption_image
