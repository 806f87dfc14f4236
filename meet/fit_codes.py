"""MEET's codes on a frozen dual encoder: ``python -m meet.fit_codes``.

    python -m meet.fit_codes --backbone NAME_OR_DIR --data FOLDER_OR_KARPATHY [--captions FILE] --out RUN
        [--split train] [--cache-dir DIR] [--device auto] [--n-bits 64] [--codebook-size 256]
        [--distill-steps 600] [--lf-weight 1] [--lq-weight 0.1] [any HashRefitConfig/FitCodesConfig field]

``--backbone`` is a CLIP model (a Hub id such as ``openai/clip-vit-base-patch32``, or a local
folder in that layout) or a MEET checkpoint, whose dense towers then act as the frozen dual
encoder (:mod:`meet.backbones`). ``--data`` is a plain folder of images (with ``--captions``, a
``filename<TAB>caption`` file, or none) or a Karpathy-JSON data set (``--split``).

What it does, and why each step:

1. **Encode once, resumably.** Every image and caption is encoded by the frozen towers into
   an on-disk cache of float32 chunks (:mod:`meet.embedding_cache`, progress bar): the only
   expensive step, and an interrupted run continues where it stopped.
2. **Train only the hash heads** on the cached vectors: ``meet.hash_refit``'s listwise
   distillation of the dense ranking into the binary codes (ITQ start, straight-through
   sign; :func:`meet.hash_refit.distill_hash_heads`), plus Stage I's L_f (the hash-space
   cosine structure of a paired batch against the dense one) and L_q (quantization error
   against the current codebooks and the push towards binary values), the codebooks refit
   by k-means ``codebook_refits`` times as the heads move. The towers never change: with
   a frozen encoder the codes are all that can be learned, and they are what the cascade's
   filters read.
3. **Fit the PQ codebooks** (faiss k-means per sub-space) on the final hash features.
4. **Write an ordinary checkpoint**: the towers' weights (for CLIP, copied into
   ``model.safetensors`` with its config, tokenizer and image processor, so the folder is
   self-contained and works offline and on the Hub like any other), the heads, the
   codebooks, and ``config.json`` with a ``fit_codes`` section saying how it was made and
   ``hash_refit`` the distillation's settings. The cascade starts from
   :data:`meet.config.FIT_CODES_SEARCH` (asymmetric Hamming filter, residual quantization,
   R = 2,000 and q = 300: the README's recommendation for large galleries).

**Image-only folders.** Without captions there are no text embeddings to learn the text
head from. The text head is then trained with image embeddings as pseudo-queries: it maps
an image's embedding to a code that ranks the *other* images as the dense model does (each
pseudo-query's own image is left out of its target, which would otherwise be all of it).
This is sound for a dual encoder like CLIP because its text and image embeddings share one
space, and a text query is scored against the images by the same inner product: the
head's linear map, learned on image-side vectors, applies to text-side vectors, and the
constant offset between the modalities (CLIP's "modality gap") moves every image's score
for a query by a shared amount or a per-image prior the dense score holds too. It is an
approximation: the text head never sees a real caption, so the t2i codes are as good as
the image neighbourhoods are like caption neighbourhoods. The text codebooks are fitted on
the text head's features of the pseudo-queries.

Small galleries: ITQ needs at least ``n_bits`` vectors and k-means ``codebook_size`` per
side; when ``--codebook-size`` is not given it shrinks to the largest power of two the data
allows (said in the output), and a folder too small for ``n_bits`` is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from meet import cli
from meet.config import (FIT_CODES_DISTILL_FIELDS as DISTILL_FIELDS, FIT_CODES_SEARCH,
                         FIT_CODES_SETTING_FIELDS as SETTING_FIELDS, FitCodesConfig, HashRefitConfig, MEETConfig,
                         ModelConfig, validate, validate_fit_codes, validate_hash_refit)
from meet.errors import ConfigError, DataError

if TYPE_CHECKING:
    from meet.backbones import Backbone
    from meet.data.dataset import ImageTextDataset
    from meet.inference import MEETModel

Report = Callable[[str], None]
HEAD_SIZES = ("n_bits", "n_codebooks", "codebook_size")
"""ModelConfig fields a CLIP backbone's heads take from the command line."""


def prepare(backbone: "Backbone", device: str | None = "auto", heads: dict[str, int] | None = None) -> "MEETModel":
    """The model whose dense towers are frozen and whose heads fit_codes trains: a fresh MEET
    model around the CLIP towers (``heads``: n_bits / n_codebooks / codebook_size), or the
    loaded MEET checkpoint (its head sizes stay)."""
    from meet.inference import MEETModel, load, select_device
    from meet.model import build_model

    heads = dict(heads or {})
    if backbone.kind == "meet":
        if heads:
            raise ConfigError(f"--{'/--'.join(k.replace('_', '-') for k in heads)} apply to a CLIP backbone; a MEET "
                              "checkpoint keeps its heads' sizes", fix="leave them out")
        model = load(backbone.folder, device=device)
        if model.cfg.model.reranker:
            raise ConfigError("this checkpoint's dense embedding comes from its reranker, not from the embedding "
                              "its hash heads read", fix="fit codes on a checkpoint without --reranker")
        return model
    from meet.encoders.clip import read_clip_config

    clip = read_clip_config(backbone.folder)
    cfg = MEETConfig(preset="fit-codes")
    cfg.model = ModelConfig(image_encoder="clip", text_encoder="clip", clip_backbone=str(backbone.folder),
                            embed_dim=int(clip.projection_dim), image_size=int(clip.vision_config.image_size),
                            max_text_len=int(clip.text_config.max_position_embeddings), **heads)
    validate(cfg)
    torch.manual_seed(0)  # the heads' initial weights (replaced by ITQ's, but seeded all the same)
    net = build_model(cfg.model)
    cfg.model.clip_backbone = backbone.spec
    return MEETModel(net, cfg, select_device(device))


def _fit_sizes(model: "MEETModel", n_images: int, n_captions: int, explicit: bool, report: Report) -> None:
    """Refuse data too small for ITQ; shrink a default codebook size to what k-means can fit
    (without captions the text side's vectors are the images')."""
    m = model.cfg.model
    n_text_side = n_captions or n_images
    if m.n_bits > m.embed_dim:
        raise ConfigError(f"ITQ projects the {m.embed_dim}-d embeddings onto n_bits={m.n_bits} directions, which "
                          "cannot be more than the embedding has", fix=f"pass --n-bits {m.embed_dim - m.embed_dim % 8}")
    if n_images + n_captions < m.n_bits or n_images < 2:  # distinct vectors (pseudo-queries repeat the images)
        raise DataError(f"{n_images} images and {n_captions} captions are too few to fit {m.n_bits}-bit codes "
                        f"(ITQ needs at least {m.n_bits} vectors)", fix="add images, or pass a smaller --n-bits")
    fit_items = min(n_images, n_text_side)
    if fit_items >= m.codebook_size:
        return
    if explicit:
        raise DataError(f"k-means needs at least --codebook-size {m.codebook_size} items per side, got {fit_items}",
                        fix=f"pass --codebook-size {2 ** int(math.log2(max(fit_items, 2)))} or add images")
    size = 2 ** int(math.log2(max(fit_items, 2)))
    report(f"{fit_items} items per side: codebook size {m.codebook_size} -> {size} (pass --codebook-size to choose)")
    m.codebook_size = size
    net = model.model
    from meet.quantization import ProductQuantizer

    net.image_pq = ProductQuantizer(m.n_bits, m.n_codebooks, size).to(model.device)
    net.text_pq = ProductQuantizer(m.n_bits, m.n_codebooks, size).to(model.device)


def regularizer(model: "MEETModel", image_dense: torch.Tensor, text_dense: torch.Tensor | None,
                caption_image: torch.Tensor | None, settings: FitCodesConfig, steps: int, seed: int,
                kmeans_iters: int) -> Callable[[int], torch.Tensor]:
    """``term(step)``: ``lf_weight * L_f + lq_weight * L_q`` on a random paired batch (a caption
    and its image; an image and itself as the pseudo-query without captions), the codebooks
    L_q reads refit by k-means on the current heads ``codebook_refits`` times, at even steps."""
    from meet.losses import encoding_loss, feature_discrepancy_loss

    net = model.model
    generator = torch.Generator().manual_seed(seed + 1)
    refit_at = {int(i * steps / settings.codebook_refits) for i in range(settings.codebook_refits)}
    pseudo = text_dense is None
    fit_rows = torch.randperm(image_dense.shape[0], generator=generator)[:model.cfg.train.kmeans_sample]

    def refit_codebooks() -> None:
        with torch.no_grad():
            net.image_pq.fit(net.image_hash(image_dense[fit_rows]), n_iter=kmeans_iters, seed=seed)
            texts = image_dense[fit_rows] if pseudo else text_dense[torch.randperm(
                text_dense.shape[0], generator=generator)[:model.cfg.train.kmeans_sample]]
            net.text_pq.fit(net.text_hash(texts), n_iter=kmeans_iters, seed=seed)

    def term(step: int) -> torch.Tensor:
        if step in refit_at and settings.lq_weight > 0:
            refit_codebooks()
        if pseudo:
            rows = torch.randperm(image_dense.shape[0], generator=generator)[:settings.regularizer_batch]
            images, texts = image_dense[rows], image_dense[rows]
        else:
            rows = torch.randperm(text_dense.shape[0], generator=generator)[:settings.regularizer_batch]
            images, texts = image_dense[caption_image[rows]], text_dense[rows]
        h_img, h_txt = net.image_hash(images), net.text_hash(texts)
        loss = image_dense.new_zeros(())
        if settings.lf_weight > 0:
            hash_sims = torch.nn.functional.normalize(h_img, dim=1) @ torch.nn.functional.normalize(h_txt, dim=1).T
            loss = loss + settings.lf_weight * feature_discrepancy_loss(images @ texts.T, hash_sims)
        if settings.lq_weight > 0:
            loss = loss + settings.lq_weight * 0.5 * (encoding_loss(h_img, net.image_pq, settings.lq_binary_weight)
                                                      + encoding_loss(h_txt, net.text_pq, settings.lq_binary_weight))
        return loss
    return term


def fit(model: "MEETModel", dataset: "ImageTextDataset", out: str | Path, settings: FitCodesConfig,
        refit: HashRefitConfig, cache_dir: str | Path, *, explicit_codebook_size: bool = False,
        cascade_changes: dict[str, Any] | None = None, encoder_identity: str = "",
        progress: bool | Callable[[int, int], None] = True, report: Report = print) -> Path:
    """Encode ``dataset`` (cached), train the heads, fit the codebooks, save to ``out``.
    ``progress``: bars (True), none (False) or ``progress(done, total)`` for the encoding.
    ``settings`` carries the record fields the caller filled (backbone, data, split,
    captions); counts and times are filled here."""
    from meet.checkpoint import save_checkpoint
    from meet.embedding_cache import cache_folder, cached_dense
    from meet.hash_refit import distill_hash_heads, refit_codebooks

    if not model.cfg.model.detach_hash:
        raise ConfigError("this checkpoint trained its encoders through the hash heads (detach_hash=false); "
                          "fitting the heads alone would break that coupling", fix="retrain it instead")
    settings = validate_fit_codes(dataclasses.replace(settings))
    refit = validate_hash_refit(dataclasses.replace(refit, method="distill"))
    n_images, n_captions = dataset.n_images, dataset.n_captions
    _fit_sizes(model, n_images, n_captions, explicit_codebook_size, report)  # before hours of encoding
    folder = cache_folder(cache_dir, encoder_identity or repr(model.cfg.model), dataset, settings.chunk_size)
    report(f"encoding {n_images:,} images and {n_captions:,} captions (cache: {folder})")
    cached = cached_dense(model, dataset, folder, settings.chunk_size, settings.encode_batch, progress=progress,
                          meta={"encoder": settings.backbone, "data": settings.data})
    started = time.perf_counter()
    device = model.device
    image_dense = torch.from_numpy(cached.image_dense).to(device)
    text_dense = torch.from_numpy(cached.text_dense).to(device) if n_captions else None
    caption_image = torch.as_tensor(dataset.caption_image, dtype=torch.long, device=device) if n_captions else None
    if text_dense is None:
        report("no captions: the text head learns from image embeddings as pseudo-queries")
    net = model.model
    term = regularizer(model, image_dense, text_dense, caption_image, settings, refit.distill_steps, refit.seed,
                       model.cfg.train.kmeans_iters)
    losses = distill_hash_heads(net.image_hash, net.text_hash, image_dense, text_dense, refit, progress=bool(progress),
                                extra_loss=term if settings.lf_weight or settings.lq_weight else None)
    refit_codebooks(model, image_dense, image_dense if text_dense is None else text_dense,
                    model.cfg.train.kmeans_iters, refit.seed)
    cfg = model.cfg
    cfg.cascade = dataclasses.replace(cfg.cascade, **{**FIT_CODES_SEARCH, **(cascade_changes or {})})
    cfg.hash_refit = refit
    cfg.fit_codes = dataclasses.replace(settings, n_images=n_images, n_captions=n_captions,
                                        pseudo_queries=not n_captions, encode_seconds=round(cached.seconds, 3),
                                        fit_seconds=round(time.perf_counter() - started, 3))
    validate(cfg)
    save_checkpoint(net, cfg, Path(out))
    report(f"encoded {cached.encoded:,} items in {cached.seconds:.1f} s ({n_images + n_captions - cached.encoded:,} "
           f"from the cache); heads and codebooks fitted in {cfg.fit_codes.fit_seconds:.1f} s (loss "
           f"{losses[0]:.4f} -> {losses[-1]:.4f}); saved {out}")
    return Path(out)


FIT_CACHE_FORMAT = 1
"""Bumped when what :func:`cached_fit` writes changes, so older fits are redone."""


def cached_fit(spec: str, load_dataset: Callable[["MEETModel"], "ImageTextDataset"], cache_dir: str | Path, *,
               device: str | None = "auto", data_label: str = "", report: Report = print,
               progress: bool | Callable[[int, int], None] = False, refit: HashRefitConfig | None = None,
               settings: FitCodesConfig | None = None) -> Path:
    """The checkpoint of codes fitted on a dataset with the backbone ``spec``, from
    ``cache_dir/fitted/<key>`` when it is there, else fitted now with the default settings
    and saved there (what the app does for ``--checkpoint openai/clip-vit-base-patch32``).
    The key covers the backbone's identity, the items' identity (ids, captions, file sizes
    and times) and the settings, so an edited folder or another model gets its own fit.
    ``load_dataset(model)``: the items, given the prepared model (their image size);
    ``refit`` / ``settings``: the distillation and fit settings (default: the defaults)."""
    import hashlib
    import json

    from meet.backbones import describe, resolve_backbone
    from meet.checkpoint import is_meet_checkpoint
    from meet.search.cache import dataset_identity

    backbone = resolve_backbone(spec)
    report(describe(backbone))
    model = prepare(backbone, device)
    dataset = load_dataset(model)
    settings = validate_fit_codes(settings or FitCodesConfig())
    refit = validate_hash_refit(dataclasses.replace(refit or HashRefitConfig(), method="distill"))
    identity = backbone.identity()
    key = hashlib.sha256(json.dumps({"format": FIT_CACHE_FORMAT, "backbone": identity,
                                     "items": dataset_identity(dataset), "settings": dataclasses.asdict(settings),
                                     "refit": dataclasses.asdict(refit)}, sort_keys=True).encode()).hexdigest()[:24]
    folder = Path(cache_dir) / "fitted" / key
    if is_meet_checkpoint(folder):
        report(f"codes already fitted for this backbone and gallery: {folder}")
        return folder
    report(f"fitting MEET's codes on {dataset.n_images:,} images and {dataset.n_captions:,} captions (once; "
           f"cached in {folder})")
    settings = dataclasses.replace(settings, backbone=backbone.spec, data=data_label or dataset.name,
                                   split=dataset.split)
    return fit(model, dataset, folder, settings, refit, cache_dir, encoder_identity=identity, progress=progress,
               report=report)


def load_data(model: "MEETModel", data: str | Path, split: str, captions: str | Path | None) -> "ImageTextDataset":
    """A plain image folder (with an optional captions file) or a data set split, in the form
    the model's towers read."""
    from meet.data.karpathy import load_image_folder
    from meet.data.loading import detect_format, load_split

    root = Path(data)
    if detect_format(root) == "folder":
        return load_image_folder(root, model.cfg.model.image_size, captions_file=captions or None)
    if captions:
        raise ConfigError("--captions goes with a plain image folder; this data set has its own captions",
                          fix="leave --captions out")
    return load_split(root, split, model.cfg.model)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m meet.fit_codes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", required=True, help="CLIP Hub id or folder, or a MEET checkpoint folder")
    parser.add_argument("--data", required=True, type=Path, help="image folder or Karpathy-JSON data set")
    parser.add_argument("--captions", default=None, type=Path, help="filename<TAB>caption file (image folder)")
    parser.add_argument("--split", default="train", help="split of a Karpathy-JSON data set (default train)")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint folder (new or empty)")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "meet-studio",
                        help="where the embedding chunks are kept (default ~/.cache/meet-studio)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    cli.add_config_flags(parser.add_argument_group("heads (CLIP backbones)"), ModelConfig, only=HEAD_SIZES,
                         section="model")
    cli.add_config_flags(parser.add_argument_group("distillation"), HashRefitConfig, only=DISTILL_FIELDS,
                         defaults="dataclass", section="hash_refit")
    cli.add_config_flags(parser.add_argument_group("fit_codes"), FitCodesConfig, only=SETTING_FIELDS,
                         defaults="dataclass", section="fit_codes")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    from meet.backbones import describe, resolve_backbone

    settings = validate_fit_codes(FitCodesConfig(**cli.given_flags(args, SETTING_FIELDS)))
    refit = validate_hash_refit(HashRefitConfig(method="distill", **cli.given_flags(args, DISTILL_FIELDS)))
    heads = cli.given_flags(args, HEAD_SIZES)
    with cli.output_folder(args.out):
        backbone = resolve_backbone(args.backbone)
        print(describe(backbone), flush=True)
        model = prepare(backbone, args.device, heads)
        dataset = load_data(model, args.data, args.split, args.captions)
        settings = dataclasses.replace(settings, backbone=backbone.spec, data=str(args.data),
                                       split=dataset.split, captions=str(args.captions or ""))
        fit(model, dataset, args.out, settings, refit, args.cache_dir, progress=not args.quiet,
            explicit_codebook_size="codebook_size" in heads, encoder_identity=backbone.identity(),
            report=lambda line: print(line, flush=True))


if __name__ == "__main__":
    sys.exit(main())
