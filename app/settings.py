"""The app's settings: one dataclass, filled from defaults, then environment variables, then
command-line flags (later wins). Spaces set environment variables; people type flags.

Every default the app uses lives here (the model's and the cascade's own defaults live in
:mod:`meet.config` and come with the checkpoint).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path

from meet.config import HammingIndex, choices
from meet.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class AppSettings:
    """How the app starts and what it accepts."""

    checkpoint: str = str(REPO_ROOT / "assets" / "shapes-demo")
    """Checkpoint folder (or a training run folder: its best checkpoint), a MEET release
    checkpoint file (converted once into the cache, see meet.convert), or a Hugging Face
    Hub repo id ``org/name[@revision]`` (downloaded into the Hub cache; see meet.hub)."""
    bert: str = ""
    """With a release file of the BERT variant: the bert-base-uncased folder (config, vocab)."""
    vocab: str = ""
    """With a release file of the BiGRU variant: its vocabulary JSON."""
    reranker: str = ""
    """With a release file: the ESA checkpoint whose embeddings become the dense scores."""
    data: str = ""
    """Gallery: a Karpathy-JSON data set, a plain folder of images, or (for a model that
    reads region features) a precomputed-feature folder. Empty: the Shapes test split
    (1,000 images, 5,000 captions), generated from its seed into the cache."""
    images: str = ""
    """With a precomputed-feature gallery: the raw Flickr30K / COCO images, for thumbnails."""
    image_ids: str = ""
    """With ``images``: the split's SCAN/HREM id file (``test_ids.txt``) mapping rows to images."""
    captions: str = ""
    """With a plain image folder: a UTF-8 file of ``filename<TAB>caption`` lines."""
    split: str = "test"
    """Split of a Karpathy-JSON data set to serve (a plain folder is always ``all``)."""
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    """A public gradio.live link; off unless asked for."""
    device: str = "auto"
    """``auto`` (the GPU when there is one, else the CPU), ``cpu`` or ``cuda``."""
    cache_dir: str = str(Path.home() / ".cache" / "meet-studio")
    """Generated default gallery and saved gallery indexes (keyed by checkpoint and data)."""
    hamming_index: str = ""
    """The Hamming filter: ``flat`` (every code) or ``ivf`` (inverted lists, built with the
    cached index: see meet.search.inverted). Empty: the checkpoint's ``cascade.hamming_index``."""
    shapes_seed: int = 0
    """Seed of the default Shapes gallery (the bundled model's data seed)."""
    max_upload_mb: int = 10
    """Largest uploaded file the server accepts."""
    max_upload_pixels: int = 16_000_000
    """Largest uploaded image (width x height) the app decodes."""
    max_query_chars: int = 1000
    """Longest text query accepted."""
    max_k: int = 100
    """Most results one search returns."""
    concurrency_limit: int = 2
    """Searches run at once (the CPU has few cores; more only queue up in memory)."""
    queue_size: int = 64
    """Requests waiting beyond which new ones are refused at once ("queue full")."""


_ENV = {
    "checkpoint": ("MEET_CHECKPOINT",), "data": ("MEET_DATA",), "captions": ("MEET_CAPTIONS",),
    "split": ("MEET_SPLIT",), "host": ("MEET_HOST", "GRADIO_SERVER_NAME"),
    "port": ("MEET_PORT", "GRADIO_SERVER_PORT"), "share": ("MEET_SHARE",),
    "device": ("MEET_DEVICE",), "cache_dir": ("MEET_CACHE",), "bert": ("MEET_BERT",),
    "vocab": ("MEET_VOCAB",), "reranker": ("MEET_RERANKER",), "images": ("MEET_IMAGES",),
    "image_ids": ("MEET_IMAGE_IDS",), "hamming_index": ("MEET_HAMMING_INDEX",),
}
"""Environment variables per setting (first set one wins), e.g. for a Hugging Face Space."""


def _coerce(name: str, raw: str) -> object:
    kind = {f.name: f.type for f in fields(AppSettings)}[name]
    if kind == "bool":
        lowered = raw.strip().lower()
        if lowered not in {"1", "0", "true", "false", "yes", "no", ""}:
            raise ConfigError(f"{name}={raw!r} is not a yes/no value", fix="use 1/0, true/false")
        return lowered in {"1", "true", "yes"}
    if kind == "int":
        try:
            return int(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}={raw!r} is not an integer") from exc
    return raw


def from_env(environ: dict[str, str] | None = None) -> AppSettings:
    """Defaults overridden by the ``MEET_*`` (and Gradio's) environment variables."""
    environ = os.environ if environ is None else environ
    values = {}
    for name, keys in _ENV.items():
        raw = next((environ[key] for key in keys if environ.get(key)), None)
        if raw is not None:
            values[name] = _coerce(name, raw)
    return check(AppSettings(**values))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python app.py", description="MEET Studio: search images and captions with MEET and "
        "see where its redundancy goes. Flags override the MEET_* environment variables.")
    parser.add_argument("--checkpoint", help="checkpoint or training run folder, a MEET release "
                        "model_best.pth.tar, or a Hub repo id org/name[@revision] (MEET_CHECKPOINT)")
    parser.add_argument("--bert", help="bert-base-uncased folder, for a BERT-variant release file (MEET_BERT)")
    parser.add_argument("--vocab", help="vocabulary JSON, for a BiGRU-variant release file (MEET_VOCAB)")
    parser.add_argument("--reranker", help="ESA model_best.pth, with a release file (MEET_RERANKER)")
    parser.add_argument("--data", help="Karpathy-JSON data set, image folder or precomputed-feature folder "
                        "(MEET_DATA); default: the Shapes test split")
    parser.add_argument("--images", help="raw images behind a precomputed-feature gallery (MEET_IMAGES)")
    parser.add_argument("--image-ids", help="the split's id file mapping feature rows to --images "
                        "(MEET_IMAGE_IDS), e.g. f30k_precomp/test_ids.txt")
    parser.add_argument("--captions", help="filename<TAB>caption file for an image folder (MEET_CAPTIONS)")
    parser.add_argument("--split", help="split of a Karpathy-JSON data set (MEET_SPLIT; default test)")
    parser.add_argument("--host", help="address to listen on (MEET_HOST; default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (MEET_PORT; default 7860)")
    parser.add_argument("--share", action="store_true", default=None,
                        help="create a public gradio.live link (MEET_SHARE; off by default)")
    parser.add_argument("--device", help="auto, cpu or cuda (MEET_DEVICE)")
    parser.add_argument("--cache-dir", help="cache folder (MEET_CACHE)")
    parser.add_argument("--hamming-index", help="flat or ivf: the Hamming filter over every code or over "
                        "inverted lists, sublinear (MEET_HAMMING_INDEX; default: the checkpoint's)")
    return parser


def from_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> AppSettings:
    """Environment first, then flags; bad values exit with a one-line usage error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = from_env(environ)
        changes = {name: value for name, value in vars(args).items() if value is not None}
        return check(AppSettings(**{**settings.__dict__, **changes}))
    except ConfigError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits


def check(settings: AppSettings) -> AppSettings:
    """Reject values that cannot work, before anything is loaded."""
    if not 0 <= settings.port <= 65535:
        raise ConfigError(f"port {settings.port} is outside 0-65535")
    if settings.device not in {"auto", "cpu", "cuda"} and not settings.device.startswith("cuda:"):
        raise ConfigError(f"device {settings.device!r} is not auto, cpu or cuda")
    if settings.captions and not settings.data:
        raise ConfigError("--captions needs --data (the image folder the captions describe)")
    if settings.hamming_index not in {"", *choices(HammingIndex)}:
        raise ConfigError(f"hamming_index {settings.hamming_index!r} is not {' or '.join(choices(HammingIndex))}")
    if bool(settings.images) != bool(settings.image_ids):
        raise ConfigError("--images and --image-ids go together",
                          fix="pass the raw image folder and the split's id file, or neither")
    return settings
