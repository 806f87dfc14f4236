"""The raw images behind a precomputed-feature split, for showing them (the app's thumbnails).

A precomp split (:mod:`meet.data.precomp`) holds region features, not pictures. The SCAN /
HREM / VSE infinity data packages ship an id file per split, ``{split}_ids.txt``, one image
id per line: one line per image, or one per caption (each image's id five times in a row;
read every fifth). The id names the raw image:

* Flickr30K: ``{id}.jpg`` in the ``flickr30k-images`` folder;
* COCO: an ``id_mapping.json`` (id -> relative path, in the images folder or beside the id
  file) where the package has one, else ``COCO_{val,train}2014_{id:012d}.jpg`` or
  ``{id:012d}.jpg`` in the images folder or its ``val2014`` / ``train2014`` folders.

An image that is not found is ``None``: the caller shows a placeholder naming its id.
"""

from __future__ import annotations

import json
from pathlib import Path

from meet.data.precomp import CAPTIONS_PER_IMAGE
from meet.errors import DataError

MAPPING_FILE = "id_mapping.json"
_SUBFOLDERS = ("", "flickr30k-images", "images", "val2014", "train2014")
_EXTENSIONS = (".jpg", ".jpeg", ".png")


def read_image_ids(path: str | Path, n_images: int) -> list[str]:
    """The image id of each of the split's ``n_images`` rows, from ``{split}_ids.txt`` with
    one line per image or one per caption (``5 * n_images`` lines, each id repeated)."""
    path = Path(path)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the image id file {path}: {exc}",
                        fix="pass the split's {split}_ids.txt from the SCAN/HREM data package") from exc
    if len(lines) == n_images:
        return lines
    if len(lines) == CAPTIONS_PER_IMAGE * n_images:
        per_image = lines[::CAPTIONS_PER_IMAGE]
        blocks = [lines[i:i + CAPTIONS_PER_IMAGE] for i in range(0, len(lines), CAPTIONS_PER_IMAGE)]
        if all(len(set(block)) == 1 for block in blocks):
            return per_image
    raise DataError(f"{path} has {len(lines)} ids for a split of {n_images} images",
                    fix=f"pass the id file of this split: {n_images} lines (one per image) or "
                        f"{CAPTIONS_PER_IMAGE * n_images} (one per caption)")


def _mapping(images_dir: Path, ids_file: Path) -> dict[str, str]:
    for place in (images_dir / MAPPING_FILE, ids_file.parent / MAPPING_FILE):
        if place.is_file():
            try:
                mapping = json.loads(place.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise DataError(f"{place} is not a readable JSON object of id -> image path",
                                fix="fix or remove it") from exc
            if isinstance(mapping, dict):
                return {str(key): str(value) for key, value in mapping.items()}
    return {}


def _candidates(image_id: str) -> list[str]:
    names = [image_id + ext for ext in _EXTENSIONS] + [image_id]
    if image_id.isdigit():
        number = int(image_id)
        names += [f"COCO_val2014_{number:012d}.jpg", f"COCO_train2014_{number:012d}.jpg", f"{number:012d}.jpg"]
    return names


def image_files(ids_file: str | Path, images_dir: str | Path, n_images: int) -> list[Path | None]:
    """The raw image file of each row (``None`` where it is not found), from the split's id
    file and the folder of raw Flickr30K / COCO images."""
    ids_file, images_dir = Path(ids_file), Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"--images {images_dir} is not a folder", fix="pass the folder of the raw images")
    ids = read_image_ids(ids_file, n_images)
    mapping = _mapping(images_dir, ids_file)
    found: list[Path | None] = []
    for image_id in ids:
        names = [mapping[image_id]] if image_id in mapping else _candidates(image_id)
        hit = next((images_dir / sub / name for name in names for sub in _SUBFOLDERS
                    if (images_dir / sub / name).is_file()), None)
        found.append(hit)
    return found
