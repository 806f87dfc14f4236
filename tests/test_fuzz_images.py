"""Fuzzed images through ``meet.data.images`` and ``MEETModel.encode_images``.

Every PIL mode a user can upload (1, L, LA, P with and without transparency, RGB, RGBA,
CMYK, YCbCr/LAB, 16-bit, 32-bit int and float), sizes from 1x1, PNG/JPEG/GIF (animated
too)/BMP/TIFF/WEBP/PPM, handed over as bytes, a path, a lazily opened PIL image or a numpy
array; the same files truncated anywhere; bytes that are no image; decompression bombs
(headers declaring billions of pixels). Each ends in a correct RGB image and a finite
encoding, or an ``ImageError`` with a fix.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import fuzzing
from meet.data.images import MAX_IMAGE_PIXELS, load_image_tensor, open_image
from meet.errors import DataError, ImageError, MEETError
from meet.quantization import pack_codes

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

MODE_FORMATS = [("RGB", "PNG"), ("RGB", "JPEG"), ("RGB", "BMP"), ("RGB", "TIFF"), ("RGB", "WEBP"),
                ("RGB", "PPM"), ("RGB", "GIF"), ("L", "PNG"), ("L", "JPEG"), ("LA", "PNG"),
                ("RGBA", "PNG"), ("RGBA", "WEBP"), ("RGBA", "TIFF"), ("P", "PNG"), ("P", "GIF"),
                ("1", "PNG"), ("1", "BMP"), ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("YCbCr", "JPEG"),
                ("LAB", "TIFF"), ("I;16", "PNG"), ("I;16", "TIFF"), ("I", "TIFF"), ("F", "TIFF")]
"""(mode, format) pairs Pillow writes and reads back."""
LOSSLESS_RGB = {"PNG", "BMP", "TIFF", "PPM"}

pytestmark = pytest.mark.filterwarnings(  # Pillow's notes on the corrupt files made here on purpose
    "ignore:Corrupt EXIF data:UserWarning", "ignore:Truncated File Read:UserWarning",
    "ignore:.*(EXIF|exif|truncated|Metadata).*:UserWarning")


@pytest.fixture(scope="module", autouse=True)
def _tally(tmp_path_factory):
    yield from fuzzing.one_thread()
    fuzzing.flush(tmp_path_factory)


@pytest.fixture(scope="module")
def model(tiny_run):
    import meet

    return meet.load(tiny_run, device="cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-images")


def _pixels(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I", "F"):
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        return Image.fromarray(rng.integers(0, 65535, (height, width)).astype(dtype))
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    if mode == "RGBA":
        alpha = rng.integers(0, 256, (height, width), dtype=np.uint8)
        return Image.merge("RGBA", (*rgb.split(), Image.fromarray(alpha, "L")))
    if mode == "LA":
        return rgb.convert("LA")
    return rgb.convert(mode)


@st.composite
def image_files(draw) -> tuple[str, str, Image.Image, bytes]:
    """(mode, format, the PIL image written, its file bytes)."""
    mode, fmt = draw(st.sampled_from(MODE_FORMATS))
    width, height = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    img = _pixels(mode, width, height, draw(st.integers(0, 2**16)))
    buffer = io.BytesIO()
    options = {}
    if fmt == "GIF" and draw(st.booleans()):  # animated
        frames = [_pixels("P", width, height, k).convert("P") for k in range(draw(st.integers(2, 4)))]
        img = frames[0]
        options = {"save_all": True, "append_images": frames[1:], "duration": 50, "loop": 0}
    if mode == "P" and fmt == "PNG" and draw(st.booleans()):
        options["transparency"] = 0
    if fmt == "JPEG":
        options["quality"] = draw(st.integers(5, 95))
    img.save(buffer, fmt, **options)
    return mode, fmt, img, buffer.getvalue()


def _deliver(kind: str, data: bytes, folder: Path, name: str):
    if kind == "bytes":
        return data
    if kind == "path":
        path = folder / name
        path.write_bytes(data)
        return path
    return Image.open(io.BytesIO(data))  # lazy: decoding happens inside meet


def _check_encoding(model, source) -> None:
    out = model.encode_images([source])
    m = model.cfg.model
    assert out.dense.shape == (1, m.embed_dim) and np.isfinite(out.dense).all()
    np.testing.assert_allclose(np.linalg.norm(out.dense, axis=1), 1.0, atol=1e-4)
    assert np.array_equal(out.codes, pack_codes(out.hash))


@settings(FUZZ, max_examples=300)
@given(case=image_files(), kind=st.sampled_from(["bytes", "path", "pil", "array"]),
       cut=st.one_of(st.none(), st.floats(0, 1, exclude_max=True)))
def test_any_image_file_decodes_or_fails_clearly(model, folder, case, kind, cut):
    mode, fmt, written, data = case
    category = f"image: {'truncated' if cut is not None else 'valid'} files"
    if cut is not None:
        data = data[:int(len(data) * cut)]
    if kind == "array":
        opened = Image.open(io.BytesIO(data)) if cut is None else None
        if opened is None or opened.mode in ("CMYK", "YCbCr", "LAB", "P", "1"):
            kind = "bytes"  # an array of these modes loses its meaning; tested as a file instead
        else:
            source = np.asarray(opened)
    name = f"case.{fmt.lower()}"
    if kind != "array":
        try:
            source = _deliver(kind, data, folder, name)
        except Exception as exc:  # PIL refuses to even open a cut file: meet never sees it
            assert cut is not None, exc
            fuzzing.record(category, "rejected by Image.open (before meet)")
            return
    try:
        rgb = open_image(source)
        tensor = load_image_tensor(source, 32)
    except ImageError as exc:
        fuzzing.record(category, fuzzing.outcome_of(exc))
        assert cut is not None, f"an intact {mode} {fmt} was rejected: {exc}"
        fuzzing.assert_clear_error(exc, *([name] if kind == "path" else []))
        with pytest.raises(ImageError):
            model.encode_images([source])
        return
    fuzzing.record(category, "ok")
    assert rgb.mode == "RGB" and rgb.size == written.size
    assert tensor.shape == (3, 32, 32) and str(tensor.dtype) == "torch.uint8"
    if cut is None and mode == "RGB" and fmt in LOSSLESS_RGB:
        assert np.array_equal(np.asarray(rgb), np.asarray(written))  # pixels unchanged
    _check_encoding(model, source)


MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBP",
         b"%PDF-1.4", b"PK\x03\x04"]


@settings(FUZZ, max_examples=150)
@given(prefix=st.sampled_from(MAGIC), body=st.binary(max_size=300), kind=st.sampled_from(["bytes", "path"]))
def test_bytes_that_are_no_image(model, folder, prefix, body, kind):
    data = prefix + body
    source = data if kind == "bytes" else folder / "upload.png"
    if kind == "path":
        source.write_bytes(data)
    try:
        rgb = open_image(source)
    except ImageError as exc:
        fuzzing.record("image: non-image bytes (incl. zero bytes)", fuzzing.outcome_of(exc))
        fuzzing.assert_clear_error(exc, *(["upload.png"] if kind == "path" else []))
        return
    fuzzing.record("image: non-image bytes (incl. zero bytes)", "ok")  # a real image by chance
    assert rgb.mode == "RGB" and rgb.width >= 1 and rgb.height >= 1


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _bomb(fmt: str, width: int, height: int) -> bytes:
    """A tiny file whose header declares ``width`` x ``height`` pixels."""
    if fmt == "PNG":
        header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                + _chunk(b"IEND", b""))
    if fmt == "GIF":
        return (b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
                + b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00\x3b")
    if fmt == "BMP":
        info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
        return b"BM" + struct.pack("<IHHI", 54 + 64, 0, 0, 54) + info + b"\x00" * 64
    # JPEG: SOI, a baseline SOF0 frame header, then EOI
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"


@settings(FUZZ, max_examples=100)
@given(fmt=st.sampled_from(["PNG", "GIF", "BMP", "JPEG"]), width=st.integers(1, 2**31 - 1),
       height=st.integers(1, 2**31 - 1), kind=st.sampled_from(["bytes", "path", "pil"]),
       limit=st.sampled_from([None, 1, 1000, 10**6]))
def test_decompression_bombs_are_refused_before_decoding(folder, fmt, width, height, kind, limit):
    limit_16 = 65535 if fmt in ("GIF", "JPEG") else 2**31 - 1  # what the header can hold
    width, height = min(width, limit_16), min(height, limit_16)
    pixels_allowed = MAX_IMAGE_PIXELS if limit is None else min(limit, MAX_IMAGE_PIXELS)
    if width * height <= pixels_allowed:
        width = height = limit_16 if fmt in ("GIF", "JPEG") else 70_000  # make it a bomb
    try:
        source = _deliver(kind, _bomb(fmt, width, height), folder, f"bomb.{fmt.lower()}")
    except Exception as exc:  # Pillow's own guard refuses it at Image.open
        assert isinstance(exc, (Image.DecompressionBombError, OSError, ValueError, SyntaxError)), exc
        fuzzing.record("image: decompression bomb", "rejected by Image.open (before meet)")
        return
    kwargs = {} if limit is None else {"max_pixels": limit}
    with pytest.raises(ImageError) as info:
        open_image(source, **kwargs)
    fuzzing.record("image: decompression bomb", fuzzing.outcome_of(info.value))
    fuzzing.assert_clear_error(info.value)
    assert "too large" in str(info.value) or "cannot decode" in str(info.value)


NOT_IMAGES = st.one_of(st.none(), st.integers(), st.floats(), st.lists(st.integers(), max_size=3),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                       st.builds(lambda s: np.zeros(s, dtype=np.float64),
                                 st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)),
                       st.builds(lambda s: np.zeros(s, dtype=np.complex64), st.just((4, 4))),
                       st.just(np.array(["a", "b"])), st.just(Image.new("RGB", (0, 0))),
                       st.just(Image.new("RGB", (5, 0))))


@settings(FUZZ, max_examples=80)
@given(item=NOT_IMAGES, wrap=st.booleans())
def test_things_that_are_not_images(model, item, wrap):
    """Arrays are accepted when they form an image; everything else is a clear error."""
    try:
        out = model.encode_images([item] if wrap else item)
    except MEETError as exc:
        fuzzing.record("image: not an image object", fuzzing.outcome_of(exc))
        assert isinstance(exc, (ImageError, DataError))
        fuzzing.assert_clear_error(exc)
        return
    fuzzing.record("image: not an image object", "ok")
    n = 1 if wrap else len(item)
    assert out.dense.shape == (n, model.cfg.model.embed_dim) and np.isfinite(out.dense).all()
