"""Reading a visitor's uploads for "Your gallery": image files and zip archives, within the
app's limits (:class:`~app.settings.AppSettings`), decoded in memory.

Every image goes through :func:`meet.data.images.open_image` (the header's size is checked
before any pixel is decoded; PIL's decompression-bomb guard becomes a clear error). A zip is
read member by member without ever being extracted to disk, so a member's name cannot point
anywhere (no "zip slip"), and it is refused as a whole, with the member named, when it
holds anything but images (folders and the ``__MACOSX/`` / dot-file metadata that archivers
add are skipped), an encrypted member, more images than the gallery has room for, or more
bytes than the limits allow: ``max_zip_mb`` uncompressed in all, ``max_upload_mb`` per
member, and at most :data:`MAX_COMPRESSION_RATIO` times its compressed size per member (a
zip bomb expands far beyond that; images barely compress). Each member is read with a hard
cap of its declared size, so a header that lies about it changes nothing.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from meet.data.images import open_image
from meet.errors import DataError, ImageError

from app.settings import AppSettings

MAX_COMPRESSION_RATIO = 100
"""Largest uncompressed / compressed size of one zip member. PNG and JPEG data are already
compressed (about 1x); an uncompressed bitmap of flat colour can reach tens; a bomb reaches
thousands."""
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass
class Upload:
    """One decoded image and the name it is shown with."""

    name: str
    image: Image.Image


def _path(item: Any) -> Path:
    """A path, or the path of gradio's file object (``.path``) or of a temporary file (``.name``)."""
    if isinstance(item, (str, Path)):
        return Path(item)
    return Path(getattr(item, "path", None) or item.name)


def _is_zip(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == _ZIP_MAGIC
    except OSError:
        return False


def _metadata(name: str) -> bool:
    """Archive clutter: macOS resource forks and dot files (``.DS_Store``)."""
    parts = Path(name).parts
    return bool(parts) and (parts[0] == "__MACOSX" or parts[-1].startswith("."))


def read_uploads(paths: list[Any], settings: AppSettings, room: int) -> list[Upload]:
    """Decode every uploaded file (a path, or gradio's file object); ``room``: how many more
    images the visitor's gallery takes. All or nothing: any bad file refuses the upload."""
    files = [_path(p) for p in (paths or [])]
    if not files:
        raise DataError("no file was uploaded", fix="choose image files or a zip of images")
    uploads: list[Upload] = []
    for path in files:
        size = path.stat().st_size if path.is_file() else 0
        limit = settings.max_upload_mb * 2**20
        if size > limit:
            raise ImageError(f"{path.name} is {size / 2**20:.1f} MB; the limit is {settings.max_upload_mb} MB",
                             fix="upload smaller files, or several zips")
        if _is_zip(path):
            uploads += read_zip(path, settings, room - len(uploads))
        else:
            uploads.append(Upload(path.name, _decode(path, path.name, settings)))
        if len(uploads) > room:
            raise DataError(f"your gallery has room for {room} more image(s); this upload holds more",
                            fix=f"upload at most {room} (a gallery holds {settings.max_session_images})")
    return uploads


def _decode(source: Path | bytes, name: str, settings: AppSettings) -> Image.Image:
    try:
        return open_image(source, max_pixels=settings.max_upload_pixels)
    except ImageError as exc:
        raise ImageError(f"{name} is not a usable image: {exc.message}",
                         fix="upload PNG, JPEG, GIF, BMP or WEBP images (or a zip of them)") from exc


def read_zip(path: Path, settings: AppSettings, room: int) -> list[Upload]:
    """The images of one zip archive, in its order (see the module docstring for the checks)."""
    label = path.name
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{label} is not a readable zip archive ({exc})", fix="upload images or a valid zip") from exc
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and not _metadata(m.filename)]
        if not members:
            raise DataError(f"{label} holds no files", fix="zip some images")
        if len(members) > room:
            raise DataError(f"{label} holds {len(members)} files; your gallery has room for {room} more",
                            fix=f"upload at most {room} images (a gallery holds {settings.max_session_images})")
        total = sum(m.file_size for m in members)
        if total > settings.max_zip_mb * 2**20:
            raise DataError(f"{label} expands to {total / 2**20:,.0f} MB; the limit is {settings.max_zip_mb} MB",
                            fix="upload fewer or smaller images at a time")
        uploads = []
        per_member = settings.max_upload_mb * 2**20
        for member in members:
            name = f"{label}/{member.filename}"
            if member.flag_bits & 0x1:
                raise DataError(f"{name} is encrypted", fix="zip the images without a password")
            if member.file_size > per_member:
                raise DataError(f"{name} is {member.file_size / 2**20:.1f} MB uncompressed; the limit is "
                                f"{settings.max_upload_mb} MB", fix="upload smaller images")
            if member.file_size > MAX_COMPRESSION_RATIO * max(member.compress_size, 1):
                raise DataError(f"{name} expands {member.file_size / max(member.compress_size, 1):,.0f} times "
                                "(a zip bomb?)", fix="zip the images themselves, which barely compress")
            try:
                with archive.open(member) as f:
                    data = f.read(member.file_size + 1)
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
                raise DataError(f"cannot read {name}: {exc}", fix="re-create the zip") from exc
            if len(data) != member.file_size:
                raise DataError(f"{name} does not hold the {member.file_size} bytes its header declares",
                                fix="re-create the zip")
            uploads.append(Upload(member.filename.rsplit("/", 1)[-1], _decode(data, name, settings)))
        return uploads


def forget(paths: list[Any], upload_root: Path) -> None:
    """Delete the uploaded files (and their now empty folders) once decoded; only files under
    gradio's upload folder (``upload_root``, inside the app's cache) are touched."""
    root = upload_root.resolve()
    for item in paths or []:
        path = _path(item).resolve()
        if root not in path.parents:
            continue
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()
        except OSError:
            pass
