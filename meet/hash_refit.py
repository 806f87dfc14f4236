"""Refit the hash heads of a trained model: ``python -m meet.hash_refit``.

    python -m meet.hash_refit --checkpoint RUN --data DIR --out CHECKPOINT
        [--method distill|structure|itq] [--distill-steps 600] [--i2t-weight 0.3] [--epochs 20]
        [--weight 10] [any other HashRefitConfig field]

Why: the cascade's Hamming filter is only as good as the codes' agreement with the dense
ranking. With ``detach_hash`` (the default) the hash heads never train the encoders, so
they can be retrained alone, cheaply, on the dense embeddings the encoders already give:
the training split is encoded once, then only two ``Linear + tanh`` heads train on the
cached vectors (minutes on a CPU). Three methods (:class:`~meet.config.HashRefitConfig`):

* ``distill`` (default): ITQ, each modality centred on its own mean, then listwise
  distillation of the dense ranking into the binary codes (straight-through sign);
* ``structure``: a loss that matches the cosine structure of the hash space to the dense
  space across *and* within the modalities, plus a push towards binary values;
* ``itq``: no training; both heads become faiss's ITQ transform (PCA + the rotation that
  minimises the binarisation error) fitted on the images and captions together.

Measured on the 100k-image Shapes gallery with the shapes-demo encoders (300 queries per
direction; share of each query's exact dense top-10 inside its Hamming top 5,000, i.e. 5%
of the images for t2i and 1% of the 500k captions for i2t): demo heads t2i 0.81 / i2t
0.52; ``structure`` 0.77 / 0.89; ``itq`` 0.84 / 0.99; ``distill`` 0.95 / 1.00 (0.96 / 0.99
with ``--i2t-weight 0``). On the 1,000-image test split ``distill`` also gives the best
hash-only rSum (188.6 -> 360.0; ``structure`` 288.6), but at the paper's fractional rates
the cascade's i2t mAP@R falls from 0.554 to 0.217 (``structure`` 0.519): it learns the
top of the dense ranking, not where every relevant caption falls (README, hash_refit).
The PQ codebooks are then refit by faiss k-means on the new hash features, and the result
is saved as a new checkpoint; the encoders, the vocabulary and the rest of the config are
unchanged, and the config's ``hash_refit`` section records the settings used.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from meet import cli
from meet.config import HashRefitConfig, validate_hash_refit
from meet.errors import ConfigError
from meet.inference import MEETModel


def structure_loss(hash_a: torch.Tensor, hash_b: torch.Tensor, dense_a: torch.Tensor,
                   dense_b: torch.Tensor) -> torch.Tensor:
    """MSE between the cosine matrix of two hash batches and that of their dense vectors."""
    hash_sims = F.normalize(hash_a, dim=1) @ F.normalize(hash_b, dim=1).T
    return F.mse_loss(hash_sims, dense_a @ dense_b.T)


def refit_hash_heads(image_head: nn.Module, text_head: nn.Module, image_dense: torch.Tensor,
                     text_dense: torch.Tensor, caption_image: torch.Tensor, cfg: HashRefitConfig,
                     progress: bool = False) -> list[float]:
    """Train two hash heads in place on cached dense embeddings; mean loss per epoch.

    ``image_dense`` (n_images, d) and ``text_dense`` (n_captions, d) are L2-normalised;
    ``caption_image`` (n_captions,) pairs each caption with its image in a batch.
    """
    from tqdm.auto import tqdm

    heads = [image_head, text_head]
    for head in heads:
        head.train()
    params = [p for head in heads for p in head.parameters()]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    n_captions = text_dense.shape[0]
    history = []
    for _ in tqdm(range(cfg.epochs), desc="refit hash heads", disable=not progress):
        order = torch.randperm(n_captions, generator=generator)
        total, batches = 0.0, 0
        for start in range(0, n_captions, cfg.batch_size):
            rows = order[start:start + cfg.batch_size]
            dense_txt, dense_img = text_dense[rows], image_dense[caption_image[rows]]
            h_img, h_txt = heads[0](dense_img), heads[1](dense_txt)
            structure = (structure_loss(h_img, h_txt, dense_img, dense_txt)
                         + structure_loss(h_img, h_img, dense_img, dense_img)
                         + structure_loss(h_txt, h_txt, dense_txt, dense_txt))
            binary = (h_img.abs() - 1).pow(2).mean() + (h_txt.abs() - 1).pow(2).mean()
            loss = cfg.weight * structure + cfg.binary_weight * binary
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1
        history.append(total / max(batches, 1))
    for head in heads:
        head.eval()
    return history


@torch.no_grad()
def itq_hash_heads(image_head: nn.Module, text_head: nn.Module, image_dense: torch.Tensor,
                   text_dense: torch.Tensor, cfg: HashRefitConfig) -> None:
    """Set both heads to one ITQ transform (faiss) fitted on up to ``cfg.itq_items`` images
    and as many captions: ``h = tanh(scale * (W x + b))`` with ``sign(h)`` equal to faiss's
    ITQ codes, the same map for both sides, so a caption and an image with close dense
    vectors get close codes."""
    import faiss

    generator = np.random.default_rng(cfg.seed)

    def sample(x: torch.Tensor) -> np.ndarray:
        rows = generator.choice(x.shape[0], size=min(cfg.itq_items, x.shape[0]), replace=False)
        return x[torch.from_numpy(np.sort(rows))].float().cpu().numpy()

    fit = np.ascontiguousarray(np.concatenate([sample(image_dense), sample(text_dense)]))
    dim, n_bits = fit.shape[1], image_head.linear.out_features
    if fit.shape[0] < n_bits:
        raise ConfigError(f"ITQ needs at least n_bits={n_bits} training vectors, got {fit.shape[0]}")
    itq = faiss.ITQTransform(dim, n_bits, True)
    itq.train(fit)
    # faiss's ITQ maps x to A (x - mean) / ||x - mean||: PCA + rotation in A, after centring
    # and an L2 norm. The norm is positive, so A (x - mean) has the same signs (the same
    # codes); the head keeps that affine part, so h stays linear in x under the tanh.
    chain = itq.pca_then_itq
    weight = faiss.vector_to_array(chain.A).reshape(chain.d_out, chain.d_in)  # (n_bits, dim)
    bias = -weight @ faiss.vector_to_array(itq.mean)
    if chain.have_bias:
        bias = bias + faiss.vector_to_array(chain.b)
    projected = fit @ weight.T + bias
    scale = cfg.itq_scale / float(np.sqrt(np.mean(projected ** 2)))
    for head in (image_head, text_head):
        head.linear.weight.copy_(torch.from_numpy(scale * weight).to(head.linear.weight))
        head.linear.bias.copy_(torch.from_numpy(scale * bias).to(head.linear.bias))


def _straight_through_codes(head: nn.Module, dense: torch.Tensor) -> torch.Tensor:
    """``sign(h)`` in the forward pass, the gradient of ``h = tanh(...)`` in the backward."""
    relaxed = head(dense)
    return relaxed + (torch.where(relaxed >= 0, 1.0, -1.0) - relaxed).detach()


def listwise_distillation(query_head: nn.Module, gallery_head: nn.Module, query_dense: torch.Tensor,
                          gallery_dense: torch.Tensor, cfg: HashRefitConfig,
                          exclude: torch.Tensor | None = None) -> torch.Tensor:
    """KL(dense ranking || code ranking) of each query over the whole gallery batch.

    Both rankings are softmax distributions over the gallery: the target from the dense
    cosine, sharp enough (``teacher_temperature``) to weigh the top few items most, and
    the student from the binary codes' inner product (``n_bits - 2 * Hamming``), so the
    loss asks exactly for what the Hamming filter needs: the dense top stays on top.
    ``exclude`` (n_queries, n_gallery) bool drops pairs from both rankings (a pseudo-query's
    own item, see :func:`distill_hash_heads`).
    """
    logits = query_dense @ gallery_dense.T / cfg.teacher_temperature
    q_codes = _straight_through_codes(query_head, query_dense)
    g_codes = _straight_through_codes(gallery_head, gallery_dense)
    student_logits = q_codes @ g_codes.T / q_codes.shape[1] / cfg.student_temperature
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
        student_logits = student_logits.masked_fill(exclude, float("-inf"))
    target = F.softmax(logits, dim=1)
    student = F.log_softmax(student_logits, dim=1)
    kept = target > 0  # excluded pairs: 0 * (-inf) would be nan
    return torch.where(kept, target * (torch.log(target + 1e-12) - student), 0.0).sum(dim=1).mean()


def distill_hash_heads(image_head: nn.Module, text_head: nn.Module, image_dense: torch.Tensor,
                       text_dense: torch.Tensor | None, cfg: HashRefitConfig, progress: bool = False,
                       extra_loss: Callable[[int], torch.Tensor] | None = None) -> list[float]:
    """ITQ start (:func:`itq_hash_heads`, then each side centred on its own mean: images
    and captions have different means, and one joint centre wastes bits on the modality
    gap), then ``cfg.distill_steps`` Adam steps of :func:`listwise_distillation`; returns
    the loss of every step. Works on cached, L2-normalised dense vectors.

    ``text_dense=None``: no captions; the image embeddings stand in for the text queries
    (and for the caption gallery of the image-query term), each pseudo-query's own image
    left out of its ranking, which would otherwise be a one-hot target that teaches
    nothing (``meet.fit_codes`` explains when this is sound). ``extra_loss(step)``: a term
    added at every step (``meet.fit_codes``'s L_f and L_q)."""
    from tqdm.auto import tqdm

    pseudo = text_dense is None
    text_side = image_dense if pseudo else text_dense
    itq_hash_heads(image_head, text_head, image_dense, text_side, cfg)
    with torch.no_grad():
        for head, dense in ((image_head, image_dense), (text_head, text_side)):
            head.linear.bias.copy_(-head.linear.weight @ dense.float().mean(dim=0))
    generator = torch.Generator().manual_seed(cfg.seed)

    def sample(n: int, size: int) -> torch.Tensor:
        return torch.randperm(n, generator=generator)[:min(size, n)]

    def own(query_rows: torch.Tensor, gallery_rows: torch.Tensor) -> torch.Tensor | None:
        return (query_rows[:, None] == gallery_rows[None, :]).to(image_dense.device) if pseudo else None

    gallery_rows = sample(image_dense.shape[0], cfg.distill_gallery)
    images = image_dense[gallery_rows]
    heads = (image_head, text_head)
    for head in heads:
        head.train()
    params = [p for head in heads for p in head.parameters()]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.distill_steps)
    history = []
    for step in tqdm(range(cfg.distill_steps), desc="distil hash heads", disable=not progress):
        query_rows = sample(text_side.shape[0], cfg.distill_batch)
        loss = listwise_distillation(text_head, image_head, text_side[query_rows], images, cfg,
                                     own(query_rows, gallery_rows))
        if cfg.i2t_weight > 0:
            caption_rows = sample(text_side.shape[0], cfg.distill_gallery)
            image_rows = sample(image_dense.shape[0], cfg.distill_batch)
            loss = loss + cfg.i2t_weight * listwise_distillation(
                image_head, text_head, image_dense[image_rows], text_side[caption_rows], cfg,
                own(image_rows, caption_rows))
        if extra_loss is not None:
            loss = loss + extra_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        history.append(float(loss.detach()))
    for head in heads:
        head.eval()
    return history


@torch.no_grad()
def refit_codebooks(model: MEETModel, image_dense: torch.Tensor, text_dense: torch.Tensor,
                    n_iter: int, seed: int) -> None:
    """Faiss k-means per sub-space on the refit heads' hash features of the cached set."""
    net = model.model
    net.image_pq.fit(net.image_hash(image_dense), n_iter=n_iter, seed=seed)
    net.text_pq.fit(net.text_hash(text_dense), n_iter=n_iter, seed=seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m meet.hash_refit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint or run folder")
    parser.add_argument("--data", required=True, type=Path, help="the data set it was trained on")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True, type=Path, help="new checkpoint folder (new or empty)")
    parser.add_argument("--device", default="auto")
    cli.add_config_flags(parser.add_argument_group("refit settings"), HashRefitConfig, defaults="dataclass")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(lambda: _main(args))


def require_detached_hash(model: MEETModel) -> None:
    """Refuse a model whose encoders trained through its hash heads: refitting the heads
    alone would break that coupling."""
    if not model.cfg.model.detach_hash:
        raise ConfigError("this checkpoint trained its encoders through the hash heads "
                          "(detach_hash=false); refitting the heads alone would break that coupling",
                          fix="retrain with the hash losses instead")


def refit_hash_codes(model: MEETModel, ds, cfg: HashRefitConfig, progress: bool = True) -> str:
    """Refit ``model``'s hash heads by ``cfg.method`` on ``ds`` (its training split), then
    its PQ codebooks, in place; records ``cfg`` in the model's config and returns a
    one-line summary. What ``python -m meet.hash_refit`` and ``meet.train``'s final
    ``hash_distill`` phase both run."""
    require_detached_hash(model)
    if ds.kind == "raw":
        ds.preload(progress=progress)
    images, texts = model.encode_dataset(ds, batch_size=model.cfg.train.eval_batch_size, progress=progress)
    device = model.device
    image_dense = torch.from_numpy(images.dense).to(device)
    text_dense = torch.from_numpy(texts.dense).to(device)
    caption_image = torch.as_tensor(ds.caption_image, dtype=torch.long)
    if cfg.method == "distill":
        losses = distill_hash_heads(model.model.image_hash, model.model.text_hash, image_dense,
                                    text_dense, cfg, progress=progress)
        summary = f"distillation loss {losses[0]:.4f} -> {losses[-1]:.4f} over {cfg.distill_steps} steps"
    elif cfg.method == "itq":
        itq_hash_heads(model.model.image_hash, model.model.text_hash, image_dense, text_dense, cfg)
        summary = f"ITQ on {min(cfg.itq_items, len(images))} images + {min(cfg.itq_items, len(texts))} captions"
    else:
        losses = refit_hash_heads(model.model.image_hash, model.model.text_hash, image_dense,
                                  text_dense, caption_image, cfg, progress=progress)
        summary = f"refit loss {losses[0]:.4f} -> {losses[-1]:.4f} over {cfg.epochs} epochs"
    refit_codebooks(model, image_dense, text_dense, model.cfg.train.kmeans_iters, cfg.seed)
    model.cfg.hash_refit = cfg
    return summary


def _main(args: argparse.Namespace) -> None:
    from meet.checkpoint import save_checkpoint
    from meet.data.loading import load_split
    from meet.inference import load

    cfg = validate_hash_refit(HashRefitConfig(**cli.given_flags(
        args, [f.name for f in dataclasses.fields(HashRefitConfig)])))
    with cli.output_folder(args.out):
        model = load(args.checkpoint, device=args.device)
        require_detached_hash(model)
        ds = load_split(args.data, args.split, model.cfg.model)
        summary = refit_hash_codes(model, ds, cfg)
        save_checkpoint(model.model, model.cfg, args.out)
    print(f"{summary}; saved {args.out}")


if __name__ == "__main__":
    sys.exit(main())
