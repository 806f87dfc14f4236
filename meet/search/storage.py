"""On-disk layout of a gallery index: ``.npy`` arrays + ``index.json`` with a manifest.

::

    FOLDER/index.json        format, side, ids, fingerprint, cascade, quantizer (space,
                             settings), meta, and per array: file, shape, dtype, bytes, sha256
    FOLDER/dense.npy         (n, dim) float16
    FOLDER/codes.npy         (n, n_bits / 8) uint8
    FOLDER/pq_codes.npy      (n, n_codebooks) uint8 (uint16 above 256 codewords)
    FOLDER/codebooks.npy     the quantizer's codebooks, float32
    FOLDER/rotation.npy      (dim, dim) float32, OPQ (pq_space "dense") only
    FOLDER/hash.npy          (n, n_bits) float32 hash features, only when kept
    FOLDER/reciprocal.npy    (n, k) float16, only when present

Arrays are written with ``np.save(allow_pickle=False)`` and read back with
``allow_pickle=False`` (memory-mapped on request). The folder is written under a
temporary name, flushed and renamed into place, so a crash leaves either the old index or
the new one, never a mix. Loading checks each file's size and (by default) its sha256, naming the
file that does not match.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from meet.cli import atomic_folder
from meet.errors import DataError

FORMAT = "meet-gallery-index-1"
HEADER = "index.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed in ``chunk``-byte reads."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_index_folder(folder: Path, arrays: dict[str, np.ndarray], header: dict[str, Any]) -> Path:
    """Write ``arrays`` (name -> array) and ``header`` to ``folder`` atomically
    (:func:`meet.cli.atomic_folder`: a crash leaves the old index or the new one)."""
    folder = Path(folder)
    if folder.exists() and not (folder / HEADER).is_file() and any(folder.iterdir()):
        raise DataError(f"refusing to overwrite {folder}: it exists and is not a gallery index",
                        fix="save the index to a new or empty folder")
    with atomic_folder(folder) as tmp:
        manifest = {}
        for name, array in arrays.items():
            path = tmp / f"{name}.npy"
            with open(path, "wb") as f:
                np.save(f, np.asarray(array), allow_pickle=False)
            manifest[name] = {"file": path.name, "shape": list(array.shape), "dtype": str(array.dtype),
                              "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        (tmp / HEADER).write_text(json.dumps(dict(header, format=FORMAT, arrays=manifest), indent=1,
                                             sort_keys=True))
    return folder


def read_header(folder: Path) -> dict[str, Any]:
    """``index.json`` of an index folder, checked for the format tag."""
    path = Path(folder) / HEADER
    if not path.is_file():
        raise DataError(f"{path} not found: {folder} is not a saved gallery index",
                        fix="build one with meet.search.build_pair(...) and save(folder)")
    try:
        header = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc})", fix="rebuild the index") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DataError(f"{path} is not a {FORMAT} header (format={header.get('format')!r})"
                        if isinstance(header, dict) else f"{path} is not a JSON object",
                        fix="rebuild the index with this version of meet")
    if not isinstance(header.get("ids", []), list) or not isinstance(header.get("arrays"), dict):
        raise DataError(f"{path}: 'ids' or the 'arrays' manifest is malformed", fix="rebuild the index")
    return header


def read_arrays(folder: Path, header: dict[str, Any], mmap: bool = True,
                verify: bool = True) -> dict[str, np.ndarray]:
    """Load every array the manifest lists; a missing, truncated or changed file is a
    :class:`DataError` naming it. ``verify`` also compares sha256 checksums (reads every
    byte once); sizes, shapes and dtypes are always checked."""
    folder = Path(folder)
    arrays = {}
    for name, entry in header.get("arrays", {}).items():
        # Only the layout write_index_folder makes: no file names from elsewhere (``../``).
        if not (isinstance(entry, dict) and entry.get("file") == f"{name}.npy"
                and isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)
                and isinstance(entry.get("shape"), list) and isinstance(entry.get("dtype"), str)):
            raise DataError(f"{folder / HEADER}: manifest entry {name!r} is malformed ({entry!r:.80})",
                            fix="rebuild the index")
        path = folder / entry["file"]
        if not path.is_file():
            raise DataError(f"index file {path} is missing", fix="the index folder is incomplete; rebuild it")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise DataError(f"index file {path} has {size} bytes, the manifest says {entry['bytes']} "
                            "(truncated or changed)", fix="rebuild the index")
        if verify and sha256_file(path) != entry["sha256"]:
            raise DataError(f"index file {path} does not match its checksum (changed or corrupted)",
                            fix="rebuild the index")
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"index file {path} is not a readable .npy array ({exc})",
                            fix="rebuild the index") from exc
        if list(array.shape) != entry["shape"] or str(array.dtype) != entry["dtype"]:
            raise DataError(f"index file {path} holds {array.dtype}{list(array.shape)}, the manifest "
                            f"says {entry['dtype']}{entry['shape']}", fix="rebuild the index")
        arrays[name] = array
    return arrays
