"""Decoding images safely: one place that turns a file or a PIL image into a tensor.

Every path that reads a user's image (data sets, the public API, the app) goes through
:func:`open_image`, so the decompression-bomb guard, the size limit and the error text
are the same everywhere.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from meet.errors import ImageError

MAX_IMAGE_PIXELS = 40_000_000
"""Largest decoded size accepted (about 6300 x 6300); PIL raises above 2x its own
limit and warns above it, and we turn both into :class:`ImageError`."""


def open_image(source: str | Path | bytes | Image.Image | np.ndarray,
               max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open and fully decode an image as RGB, or raise :class:`ImageError`.

    ``source`` is a path, raw bytes, a PIL image or an ``(H, W[, 3|4])`` array.
    Decoding happens here (not lazily later), so a truncated or corrupt file fails at
    the place that names it.
    ``max_pixels``: a stricter size limit (the app's uploads), checked from the header
    before any pixel is decoded.
    """
    if isinstance(source, (bytearray, memoryview)):
        source = bytes(source)
    elif isinstance(source, np.ndarray):
        source = _from_array(source)
    elif not isinstance(source, (str, Path, bytes, Image.Image)):
        raise ImageError(f"cannot read an image from a {type(source).__name__}",
                         fix="pass a file path, the file's bytes, a PIL image or a uint8 array")
    name = "<bytes>" if isinstance(source, bytes) else str(getattr(source, "filename", "") or source)
    if isinstance(source, Image.Image):
        img = source
    else:
        if not isinstance(source, bytes):
            path = Path(source)
            if not path.is_file():
                raise ImageError(f"image file not found: {path}", fix="check the path")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
                if img.width * img.height > min(max_pixels, MAX_IMAGE_PIXELS):
                    raise ImageError(
                        f"image too large: {name} is {img.width}x{img.height} "
                        f"({img.width * img.height / 1e6:.1f} megapixels)",
                        fix=f"use an image under {min(max_pixels, MAX_IMAGE_PIXELS):,} pixels")
                img.load()
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(f"image too large: {name} ({exc})",
                             fix=f"use an image under {MAX_IMAGE_PIXELS:,} pixels") from exc
        except Exception as exc:  # PIL raises many types for corrupt data
            raise ImageError(f"cannot decode image {name}: {exc}",
                             fix="the file is not a readable PNG/JPEG/... image") from exc
    try:
        if img.width == 0 or img.height == 0:
            raise ImageError(f"image {name} has no pixels ({img.width}x{img.height})",
                             fix="pass an image at least 1x1 pixels large")
        if img.width * img.height > min(max_pixels, MAX_IMAGE_PIXELS):
            raise ImageError(f"image too large: {name} is {img.width}x{img.height}",
                             fix=f"use an image under {min(max_pixels, MAX_IMAGE_PIXELS):,} pixels")
        return _to_rgb(img)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"cannot convert image {name} to RGB: {exc}",
                         fix="the image is truncated or in a mode PIL cannot convert; re-save it "
                             "as PNG or JPEG") from exc


def _from_array(array: np.ndarray) -> Image.Image:
    """A PIL image from an ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` array (what Gradio
    and numpy pipelines hand over), or :class:`ImageError`."""
    try:
        return Image.fromarray(np.ascontiguousarray(array))
    except Exception as exc:  # PIL raises TypeError/ValueError/KeyError for odd arrays
        raise ImageError(f"cannot read an image from an array of shape {array.shape} and dtype "
                         f"{array.dtype} ({exc})",
                         fix="pass an (H, W) or (H, W, 3|4) uint8 array") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB for every mode: 16-bit and float grayscale are rescaled, alpha is composited
    on white (a transparent background should not read as black)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(arr)  # a NaN/inf pixel (float TIFF) must not poison min/max
        lo, hi = (float(arr[finite].min()), float(arr[finite].max())) if finite.any() else (0.0, 0.0)
        arr = np.where(finite, arr, lo)
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def pil_to_uint8(img: Image.Image, size: int) -> torch.Tensor:
    """Resize an RGB image to ``size`` x ``size`` and return a (3, size, size) uint8 tensor.

    Bilinear resize of the whole image (no crop): Shapes scenes put objects near the
    border, and a crop would change which captions are true.
    """
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def load_image_tensor(source: str | Path | bytes | Image.Image, size: int) -> torch.Tensor:
    """:func:`open_image` then :func:`pil_to_uint8`."""
    return pil_to_uint8(open_image(source), size)
