"""Refit the hash heads of a trained model: ``python -m meet.hash_refit``.

    python -m meet.hash_refit --checkpoint RUN --data DIR --out CHECKPOINT [--epochs 20] [--weight 10]

Why: the cascade's Hamming filter is only as good as the codes' agreement with the dense
ranking. With ``detach_hash`` (the default) the hash heads never train the encoders, so
they can be retrained alone, cheaply, on the dense embeddings the encoders already give:
the training split is encoded once, then only two ``Linear + tanh`` heads train on the
cached vectors (seconds per epoch on a CPU). The loss (:class:`~meet.config.HashRefitConfig`)
matches the cosine structure of the hash space to the dense space across *and* within the
modalities, plus a push towards binary values. The PQ codebooks are then refit by faiss
k-means on the new hash features, and the result is saved as a new checkpoint; the
encoders, the vocabulary and the rest of the config are unchanged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from meet.config import HashRefitConfig
from meet.errors import ConfigError, MEETError
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
def refit_codebooks(model: MEETModel, image_dense: torch.Tensor, text_dense: torch.Tensor,
                    n_iter: int, seed: int) -> None:
    """Faiss k-means per sub-space on the refit heads' hash features of the cached set."""
    net = model.model
    net.image_pq.fit(net.image_hash(image_dense), n_iter=n_iter, seed=seed)
    net.text_pq.fit(net.text_hash(text_dense), n_iter=n_iter, seed=seed)


def build_parser() -> argparse.ArgumentParser:
    defaults = HashRefitConfig()
    parser = argparse.ArgumentParser(prog="python -m meet.hash_refit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint or run folder")
    parser.add_argument("--data", required=True, type=Path, help="the data set it was trained on")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True, type=Path, help="new checkpoint folder")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--weight", type=float, default=defaults.weight)
    parser.add_argument("--binary-weight", type=float, default=defaults.binary_weight)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default="auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from meet.checkpoint import save_checkpoint
        from meet.data.loading import load_split
        from meet.evaluate import encode_dataset
        from meet.inference import load

        cfg = HashRefitConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                              weight=args.weight, binary_weight=args.binary_weight, seed=args.seed)
        if cfg.epochs < 1 or cfg.batch_size < 2 or cfg.lr <= 0 or cfg.weight < 0 or cfg.binary_weight < 0:
            raise ConfigError("--epochs >= 1, --batch-size >= 2, --lr > 0 and non-negative weights, please")
        if args.out.exists() and any(args.out.iterdir()):
            raise ConfigError(f"--out {args.out} exists and is not empty", fix="choose a new folder")
        model = load(args.checkpoint, device=args.device)
        if not model.cfg.model.detach_hash:
            raise ConfigError("this checkpoint trained its encoders through the hash heads "
                              "(detach_hash=false); refitting the heads alone would break that coupling",
                              fix="retrain with the hash losses instead")
        ds = load_split(args.data, args.split, model.cfg.model)
        if ds.kind == "raw":
            ds.preload(progress=True)
        images, texts = encode_dataset(model, ds, batch_size=model.cfg.train.eval_batch_size, progress=True)
        device = model.device
        image_dense = torch.from_numpy(images.dense).to(device)
        text_dense = torch.from_numpy(texts.dense).to(device)
        caption_image = torch.as_tensor(ds.caption_image, dtype=torch.long)
        losses = refit_hash_heads(model.model.image_hash, model.model.text_hash, image_dense,
                                  text_dense, caption_image, cfg, progress=True)
        refit_codebooks(model, image_dense, text_dense, model.cfg.train.kmeans_iters, cfg.seed)
        save_checkpoint(model.model, model.cfg, args.out)
    except MEETError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"refit loss {losses[0]:.4f} -> {losses[-1]:.4f} over {cfg.epochs} epochs; saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
