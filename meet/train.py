"""Stage I training: ``python -m meet.train --data DIR --out RUN [--preset NAME] ...``.

Every config field is a flag (``--n-bits 32``, ``--beta1 0.5``, ``--filter-negatives
false``); a flag overrides the preset, nothing overwrites a flag after parsing, and
unknown flags are rejected. Each epoch: train, refit the PQ codebooks by faiss k-means on
re-encoded training hash features, evaluate on the val split, save a checkpoint
atomically, append to ``RUN/metrics.jsonl``. The best epoch (``select_metric`` on val,
never test) and the last one are named in ``RUN/checkpoint.json``; ``--resume``
continues from the last. Run under ``torchrun --nproc_per_node N`` for data parallel.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from meet.cli import atomic_write_text
from meet.checkpoint import (POINTER, load_optimizer_state, load_tensors, read_config,
                             read_pointer, save_checkpoint, write_json_atomic)
from meet import cli
from meet.config import SECTIONS, MEETConfig, TrainConfig, field_index, preset, validate
from meet.data.batches import PairBatches, epoch_pairs
from meet.data.vocab import Vocabulary
from meet.errors import CheckpointError, ConfigError, DataError, MEETError
from meet.evaluate import evaluate
from meet.inference import MEETModel, select_device
from meet.losses import MEETLoss
from meet.model import MEET, build_model

RESUMABLE_FLAGS = {"epochs", "device", "num_workers", "eval_batch_size"}


def build_parser() -> argparse.ArgumentParser:
    """The CLI: run flags plus one flag per config field (defaults from the preset)."""
    parser = argparse.ArgumentParser(
        prog="python -m meet.train", description=__doc__.split("\n\n")[0],
        usage="%(prog)s --data DIR --out RUN [--preset NAME] [--resume] [--FIELD VALUE ...] (all flags: --help)")
    parser.add_argument("--data", type=Path, required=True, help="data set folder (Karpathy JSON or precomp)")
    parser.add_argument("--out", type=Path, required=True, help="run folder (created)")
    parser.add_argument("--preset", default="shapes-demo", help="shapes-demo (default), official or full")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--image-dir", type=Path, default=None, help="raw images, if not under --data")
    parser.add_argument("--val-split", default="val")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (the summary line still prints)")
    for section, klass in SECTIONS.items():
        cli.add_config_flags(parser.add_argument_group(f"{section} (preset value unless given)"), klass,
                             section=section)
    return parser


def config_from_args(args: argparse.Namespace) -> tuple[MEETConfig, dict[str, Any]]:
    """The preset with the given flags applied, validated; and the overrides alone."""
    overrides = {name: getattr(args, name) for name in field_index() if hasattr(args, name)}
    return validate(preset(args.preset).override(**overrides)), overrides


class Trainer:
    """One training run: data, model, optimiser, and the per-epoch cycle."""

    def __init__(self, cfg: MEETConfig, data: Path, out: Path, image_dir: Path | None = None,
                 val_split: str = "val", resume: bool = False, progress: bool = True):
        from meet.data.loading import load_split

        self.cfg, self.out, self.progress = cfg, out, progress
        self.rank, self.world = _init_distributed(cfg.train.device)
        self.device = select_device(cfg.train.device) if self.world == 1 else _ddp_device(cfg.train.device)
        self.main_process = self.rank == 0
        self.train_ds = load_split(data, "train", cfg.model, image_dir=image_dir)
        if cfg.train.max_train_images:
            self.train_ds = self.train_ds.subset(range(min(cfg.train.max_train_images, self.train_ds.n_images)))
        self.val_ds = load_split(data, val_split, cfg.model, image_dir=image_dir)
        for name, ds in (("training", self.train_ds), ("validation", self.val_ds)):
            if ds.n_images == 0 or ds.n_captions == 0:
                raise DataError(f"the {name} split of {data} has {ds.n_images} images and {ds.n_captions} "
                                "captions; training needs both",
                                fix="use a Karpathy-JSON data set (dataset.json with splits) or precomp "
                                    "features; a plain image folder is a search gallery, not training data")
        for ds in (self.train_ds, self.val_ds):
            if ds.kind == "raw":
                ds.preload(progress=self.main_process and progress)
        self.start_epoch, self.history = 0, []
        self.best = {"epoch": -1, "score": -float("inf")}
        vocab = None
        if cfg.model.text_encoder == "bigru":
            vocab = (Vocabulary.load(self._last_folder() / "vocab.json") if resume
                     else Vocabulary.build(self.train_ds.captions))
        torch.manual_seed(cfg.train.seed)
        self.model: MEET = build_model(cfg.model, vocab=vocab).to(self.device)
        self.optimizer = torch.optim.Adam([
            {"params": self.model.encoder_parameters(), "lr": cfg.train.lr, "base_lr": cfg.train.lr},
            {"params": self.model.hash_parameters(), "lr": cfg.train.hash_lr, "base_lr": cfg.train.hash_lr}])
        if resume:
            self._restore()
        self.net: nn.Module = self.model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(self.model, find_unused_parameters=True)
        self.loss = MEETLoss(cfg.loss)
        self.batches = PairBatches(self.train_ds, self.model.text_encoder.tokenize)

    def _last_folder(self) -> Path:
        pointer = read_pointer(self.out)
        if "last" not in pointer:
            raise ConfigError(f"nothing to resume in {self.out}: no complete checkpoint",
                              fix="start a new run without --resume")
        return self.out / pointer["last"]

    def _restore(self) -> None:
        folder = self._last_folder()
        state = load_tensors(folder / "model.safetensors")
        state.update(load_tensors(folder / "codebooks.safetensors"))
        self.model.load_state_dict(state, strict=True)
        load_optimizer_state(folder, self.optimizer)
        try:
            trainer = json.loads((folder / "trainer.json").read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{folder / 'trainer.json'} is unreadable: {exc}",
                                  fix="the checkpoint is damaged; delete it from checkpoint.json's "
                                      "'last' or start a new run") from exc
        self.start_epoch = trainer["epoch"] + 1
        self.history, self.best = trainer["history"], trainer["best"]

    def run(self) -> dict[str, Any]:
        for epoch in range(self.start_epoch, self.cfg.train.epochs):
            start = time.perf_counter()
            record = {"epoch": epoch, **self.train_epoch(epoch)}
            record["train_seconds"] = time.perf_counter() - start
            self.refit_codebooks(epoch)
            if self.main_process:
                record.update(self.validate())
                record["epoch_seconds"] = time.perf_counter() - start
                self.history.append(record)
                self.save(epoch, record)
            if self.world > 1:
                torch.distributed.barrier()
        if self.cfg.train.hash_distill and self.main_process:
            self.distill_best()
        return self.best

    def distill_best(self) -> None:
        """The final ``hash_distill`` phase: the best epoch's heads distilled and its
        codebooks refit, saved as ``checkpoints/distilled``, which the pointer then calls
        best. Skipped when the run's best already is that checkpoint (a finished run resumed)."""
        from meet.config import HashRefitConfig
        from meet.hash_refit import refit_hash_codes
        from meet.inference import load

        pointer = read_pointer(self.out)
        if pointer["best"] == DISTILLED:
            return
        start = time.perf_counter()
        model = load(self.out / pointer["best"], device=str(self.device))
        summary = refit_hash_codes(model, self.train_ds, HashRefitConfig(seed=self.cfg.train.seed),
                                   progress=self.progress)
        save_checkpoint(model.model, model.cfg, self.out / DISTILLED)
        write_json_atomic(self.out / POINTER, {**pointer, "best": DISTILLED,
                                               "distilled_from": pointer["best"]})
        if self.progress:
            print(f"hash_distill: {summary} in {time.perf_counter() - start:.0f} s", file=sys.stderr)

    def _set_learning_rates(self, epoch: int, fraction: float) -> None:
        """Learning rates for the batch ``fraction`` of the way through ``epoch``."""
        factor = learning_rate_factor(self.cfg.train, epoch + fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over this epoch's (image, caption) pairs; returns mean terms + stats."""
        from tqdm.auto import tqdm

        cfg = self.cfg.train
        torch.manual_seed(cfg.seed * 1000 + epoch)
        pairs = epoch_pairs(self.train_ds, epoch, cfg.seed, cfg.caption_sampling, cfg.family_weights)
        pairs = pairs[self.rank::self.world]
        loader = self.batches.loader(pairs, cfg.batch_size, cfg.num_workers)
        self.net.train()
        sums: dict[str, float] = {}
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (self.main_process and self.progress))
        n_batches = max(len(loader), 1)
        for step, (images, text_batch, batch_pairs) in enumerate(bar):
            self._set_learning_rates(epoch, step / n_batches)  # constant within an epoch for "step"
            out = self.net(images.to(self.device), {k: v.to(self.device) for k, v in text_batch.items()})
            terms, stats = self.loss(out, _to(batch_pairs, self.device), epoch,
                                     self.model.image_pq, self.model.text_pq)
            self.optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            if cfg.grad_clip:
                clip_gradients(self.model, cfg.grad_clip)
            self.optimizer.step()
            for key, value in {**{k: float(v.detach()) for k, v in terms.items()}, **stats}.items():
                sums[key] = sums.get(key, 0.0) + value
            sums["batches"] = sums.get("batches", 0.0) + 1
            bar.set_postfix(loss=f"{float(terms['loss'].detach()):.3f}")
        return _epoch_summary(sums)

    @torch.no_grad()
    def refit_codebooks(self, epoch: int) -> None:
        """Faiss k-means per sub-space on re-encoded training hash features (METHOD.md)."""
        cfg = self.cfg.train
        rng = np.random.default_rng([cfg.seed, epoch, 7])
        n = min(cfg.kmeans_sample, self.train_ds.n_images)
        image_idx = np.sort(rng.choice(self.train_ds.n_images, size=n, replace=False))
        caption_idx = [int(rng.choice(self.train_ds.captions_of(int(i)))) for i in image_idx]
        encoder = MEETModel(self.model, self.cfg, self.device)
        size = cfg.eval_batch_size
        batches = (self.train_ds.images(image_idx[s:s + size]) for s in range(0, n, size))
        h_img = encoder.encode_image_batches(batches, n, size).hash
        h_txt = encoder.encode_texts([self.train_ds.captions[c] for c in caption_idx], batch_size=size).hash
        self.model.image_pq.fit(torch.from_numpy(h_img), cfg.kmeans_iters, seed=cfg.seed + epoch)
        self.model.text_pq.fit(torch.from_numpy(h_txt), cfg.kmeans_iters, seed=cfg.seed + epoch)

    def validate(self) -> dict[str, float]:
        results = evaluate(MEETModel(self.model, self.cfg, self.device), self.val_ds, ("dense", "hash", "pq"))
        self.model.train()
        keep = ("rsum", "i2t_r1", "t2i_r1", "t2i_p@10", "t2i_map@r", "i2t_map@r", "t2i_single_object_p@10")
        return {f"val_{mode}_{k}": v for mode, values in results.items() for k, v in values.items() if k in keep}

    def save(self, epoch: int, record: dict[str, Any]) -> None:
        mode, metric = self.cfg.train.select_metric.split("/")
        score = record.get(f"val_{mode}_{metric}")
        if score is None:
            raise ConfigError(f"select_metric {self.cfg.train.select_metric!r} was not measured",
                              fix="use e.g. dense/rsum or dense/t2i_map@r (Shapes only)")
        if score > self.best["score"]:
            self.best = {"epoch": epoch, "score": score}
        name = f"checkpoints/epoch-{epoch:03d}"
        trainer_state = {"epoch": epoch, "history": self.history, "best": self.best}
        save_checkpoint(self.model, self.cfg, self.out / name, trainer_state, self.optimizer)
        best = f"checkpoints/epoch-{self.best['epoch']:03d}"
        write_json_atomic(self.out / POINTER, {"best": best, "last": name, "best_epoch": self.best["epoch"],
                                               "best_score": self.best["score"], "select_metric":
                                               self.cfg.train.select_metric})
        _write_metrics(self.out / "metrics.jsonl", self.history)
        for folder in (self.out / "checkpoints").iterdir():
            if f"checkpoints/{folder.name}" not in (best, name, DISTILLED):
                shutil.rmtree(folder, ignore_errors=True)


DISTILLED = "checkpoints/distilled"
"""Where the ``hash_distill`` phase saves the distilled best checkpoint, inside the run."""


def learning_rate_factor(cfg: TrainConfig, progress: float) -> float:
    """The multiplier of the base learning rates after ``progress`` epochs (fractional)."""
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(progress / cfg.epochs, 1.0)))
    return cfg.lr_decay ** (int(progress) // cfg.lr_decay_epochs)


def clip_gradients(model: MEET, max_norm: float) -> dict[str, float]:
    """Clip the encoders' gradient norm and the hash heads' separately (each to
    ``max_norm``); returns both norms before clipping.

    Why apart: with one global norm, a large gradient of the hash losses (L_f, L_q, the hash
    ranking loss) shrinks the encoders' step too, although ``detach_hash`` keeps those
    losses off the encoders: the hash heads would steer the encoders through the clip."""
    return {name: float(nn.utils.clip_grad_norm_(params, max_norm))
            for name, params in (("encoders", model.encoder_parameters()), ("hash", model.hash_parameters()))
            if params}


def _epoch_summary(sums: dict[str, float]) -> dict[str, float]:
    """Mean loss terms per batch, and the filtering / reweighting statistics."""
    batches = max(sums.pop("batches", 1.0), 1.0)
    counts = {k: sums.pop(k) for k in ("negatives", "filtered", "filtered_relevant", "negatives_relevant")
              if k in sums}
    summary = {f"train_{k}": v / batches for k, v in sums.items()}
    if counts:
        summary["filtered_per_batch"] = counts["filtered"] / batches
        summary["filtered_share_of_negatives"] = counts["filtered"] / max(counts["negatives"], 1.0)
    if "filtered_relevant" in counts:
        summary["filtered_truly_relevant_share"] = (counts["filtered_relevant"] / counts["filtered"]
                                                    if counts["filtered"] else float("nan"))
        summary["negatives_truly_relevant_share"] = counts["negatives_relevant"] / max(counts["negatives"], 1.0)
    return summary


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl from the checkpointed history (atomic), so a resumed run
    never has lines from epochs it lost."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in history))


def _to(pairs: Any, device: torch.device) -> Any:
    return dataclasses.replace(pairs, image_index=pairs.image_index.to(device),
                               text_key=pairs.text_key.to(device),
                               relevance=None if pairs.relevance is None else pairs.relevance.to(device))


def _init_distributed(device: str) -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    backend = "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend=backend)
    return torch.distributed.get_rank(), world


def _ddp_device(device: str) -> torch.device:
    if device != "cpu" and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def prepare_run(args: argparse.Namespace, main_process: bool = True) -> MEETConfig:
    """The run's config: fresh (preset + flags, refuse to overwrite) or resumed.

    Under torchrun only rank 0 checks and creates the run folder; the other ranks would
    otherwise see rank 0's fresh folder and refuse it."""
    cfg, overrides = config_from_args(args)
    out: Path = args.out
    if args.resume:
        pointer = read_pointer(out)
        if "last" in pointer:
            saved = read_config(out / pointer["last"])
        elif (out / "config.json").is_file():
            # Killed before its first checkpoint: start over with the config it began with.
            saved = read_config(out)
            if main_process:
                print(f"note: {out} holds no complete checkpoint yet; starting from epoch 1",
                      file=sys.stderr)
        else:
            raise ConfigError(f"nothing to resume in {out}", fix="run without --resume to start")
        index = field_index()
        changed = {name for name, value in overrides.items() if name not in RESUMABLE_FLAGS
                   and getattr(getattr(saved, index[name]), name) != value}
        if changed:
            raise ConfigError(f"--resume keeps the run's config; cannot change {sorted(changed)}",
                              fix=f"only {sorted(RESUMABLE_FLAGS)} may change when resuming")
        return validate(saved.override(**overrides))
    if main_process and out.exists() and any(out.iterdir()):
        raise ConfigError(f"run folder {out} exists and is not empty",
                          fix="pass --resume to continue it, or choose another --out")
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    main_process = int(os.environ.get("RANK", "0")) == 0
    created = False
    try:
        cfg = prepare_run(args, main_process)
        if not args.data.exists():
            raise ConfigError(f"--data {args.data} does not exist", fix="generate Shapes with "
                              "python -m meet.data.shapes --out DIR, or point to your data set")
        if main_process:
            created = not args.out.exists()
            try:
                args.out.mkdir(parents=True, exist_ok=True)
                if not os.access(args.out, os.W_OK):
                    raise PermissionError(f"no write permission for {args.out}")
                for stale in args.out.glob("checkpoints/.tmp-*"):
                    shutil.rmtree(stale, ignore_errors=True)
                write_json_atomic(args.out / "config.json", cfg.to_dict())
            except OSError as exc:
                raise ConfigError(f"cannot write the run folder --out {args.out}: {exc}",
                                  fix="choose a writable folder for --out") from exc
        resume = args.resume and "last" in read_pointer(args.out)
        trainer = Trainer(cfg, args.data, args.out, args.image_dir, args.val_split, resume=resume,
                          progress=not args.quiet)
        best = trainer.run()
    except MEETError:
        if created and not (args.out / POINTER).exists():  # nothing half-written: a run that saved nothing goes
            shutil.rmtree(args.out, ignore_errors=True)
        raise
    if trainer.main_process:
        print(f"best epoch {best['epoch'] + 1} ({cfg.train.select_metric} = {best['score']:.2f}); "
              f"checkpoint: {args.out / read_pointer(args.out)['best']}")
    if trainer.world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
