"""Training end to end on tiny Shapes: files, metrics, resume, errors, atomic saves."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from conftest import TINY_FLAGS
from meet.checkpoint import POINTER
from meet.train import build_parser, config_from_args, main


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_writes_checkpoints_metrics_and_pointer(tiny_run):
    pointer = json.loads((tiny_run / POINTER).read_text())
    assert set(pointer) >= {"best", "last", "best_epoch", "select_metric"}
    for which in ("best", "last"):
        folder = tiny_run / pointer[which]
        for name in ("model.safetensors", "codebooks.safetensors", "config.json", "vocab.json"):
            assert (folder / name).is_file(), name
    records = _lines(tiny_run / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1]
    for key in ("train_loss", "train_dense_rank", "train_hash_rank", "train_l_f", "train_l_q",
                "val_dense_rsum", "val_hash_rsum", "val_pq_rsum", "val_dense_t2i_map@r",
                "filtered_per_batch", "filtered_truly_relevant_share", "negatives_truly_relevant_share",
                "train_gate_open", "train_seconds", "epoch_seconds"):
        assert key in records[-1], key
    assert 0 <= records[1]["train_gate_open"] <= 1  # the demo preset filters behind the label-free gate
    assert "train_weight_std" not in records[-1]      # and does not reweight pairs
    best = max(records, key=lambda r: r["val_dense_rsum"])
    assert pointer["best_epoch"] == best["epoch"]
    assert not list((tiny_run / "checkpoints").glob(".tmp-*"))


def test_resume_reproduces_an_uninterrupted_run(tiny_shapes, tiny_run, tmp_path, monkeypatch):
    """A run killed after its first epoch and resumed with the same flags ends as the
    uninterrupted run did (the cosine schedule spans the whole run, so the flags must match)."""
    from meet.train import Trainer

    run = tmp_path / "resumed"
    train_epoch = Trainer.train_epoch

    def killed_in_epoch_two(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return train_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", killed_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        main(["--data", str(tiny_shapes), "--out", str(run), *TINY_FLAGS])
    assert len(_lines(run / "metrics.jsonl")) == 1
    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    assert main(["--data", str(tiny_shapes), "--out", str(run), "--resume", *TINY_FLAGS]) == 0
    resumed, straight = _lines(run / "metrics.jsonl"), _lines(tiny_run / "metrics.jsonl")
    assert len(resumed) == 2
    for key in ("train_loss", "val_dense_rsum", "val_pq_rsum"):
        assert math.isclose(resumed[1][key], straight[1][key], rel_tol=1e-5, abs_tol=1e-6), key


def test_resume_refuses_to_change_the_model(tiny_shapes, tiny_run, capsys):
    assert main(["--data", str(tiny_shapes), "--out", str(tiny_run), "--resume", "--n-bits", "32"]) == 2
    assert "cannot change ['n_bits']" in capsys.readouterr().err


def test_flags_override_preset_and_unknown_flags_are_rejected():
    args = build_parser().parse_args(["--data", "d", "--out", "o", "--preset", "official",
                                      "--n-bits", "32", "--filter-negatives", "true"])
    cfg, overrides = config_from_args(args)
    assert cfg.model.n_bits == 32 and cfg.loss.filter_negatives is True
    assert cfg.train.lr == 2e-4 and cfg.preset == "official"
    assert overrides == {"n_bits": 32, "filter_negatives": True}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--data", "d", "--out", "o", "--n-bitz", "3"])


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "1"], "--batch-size"),
    (["--n-bits", "12"], "--n-bits"),
    (["--preset", "nope"], "unknown preset"),
    (["--hash-distill", "true", "--detach-hash", "false"], "--hash-distill"),
    (["--image-encoder", "precomp"], "precomp"),
])
def test_bad_values_fail_clearly_and_leave_nothing(tiny_shapes, tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["--data", str(tiny_shapes), "--out", str(out), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_data_and_existing_run_are_errors(tiny_shapes, tiny_run, tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert main(["--data", str(tiny_shapes), "--out", str(tiny_run)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_crash_while_saving_keeps_the_previous_checkpoint(tiny_run, tmp_path, monkeypatch):
    from meet import cli
    from meet.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    model, cfg, folder = load_checkpoint(run)
    before = (folder / "model.safetensors").read_bytes()

    def explode(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-save")
    monkeypatch.setattr(cli, "_fsync_tree", explode)  # killed after writing, before the swap
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, cfg, folder)
    assert (folder / "model.safetensors").read_bytes() == before
    assert not list(folder.parent.glob(".tmp-*"))


def test_a_plain_image_folder_is_refused_as_training_data(tiny_shapes, tmp_path, capsys):
    folder = tmp_path / "photos"
    shutil.copytree(tiny_shapes / "images", folder)
    assert main(["--data", str(folder), "--out", str(tmp_path / "run"), *TINY_FLAGS]) != 0
    assert "0 captions" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_gradients_are_clipped_per_group():
    """A huge hash-head gradient must not shrink the encoders' step (one global norm did)."""
    import torch

    from meet.config import preset
    from meet.data.vocab import Vocabulary
    from meet.model import build_model
    from meet.train import clip_gradients

    cfg = preset("shapes-demo").model
    cfg.embed_dim, cfg.cnn_width, cfg.word_dim = 16, 4, 8
    model = build_model(cfg, vocab=Vocabulary.build(["a red circle", "two blue squares"]))
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-4)
    before = [p.grad.clone() for p in model.encoder_parameters()]
    for p in model.hash_parameters():
        p.grad = torch.full_like(p, 1e3)   # the hash losses spike
    norms = clip_gradients(model, 2.0)
    assert norms["hash"] > 2.0 and norms["encoders"] < 2.0
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.encoder_parameters()))
    hash_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.hash_parameters()]))
    assert abs(float(hash_norm) - 2.0) < 1e-3


def test_the_label_free_gate_holds_filtering_and_reweighting_until_the_text_space_resolves():
    import torch

    from meet.config import LossConfig
    from meet.losses import BatchPairs, MEETLoss

    torch.manual_seed(0)
    n = 8
    out = {"image_dense": torch.nn.functional.normalize(torch.randn(n, 6), dim=1),
           "image_hash": torch.tanh(torch.randn(n, 8)), "text_hash": torch.tanh(torch.randn(n, 8)),
           "hash_detached": True}
    pairs = BatchPairs(image_index=torch.arange(n), text_key=torch.arange(n))
    blurred = torch.nn.functional.normalize(torch.ones(n, 6) + 0.01 * torch.randn(n, 6), dim=1)  # all alike
    sharp = torch.nn.functional.normalize(torch.eye(n, 6) + 0.01, dim=1)                          # all apart
    cfg = LossConfig(filter_negatives=True, filter_threshold=0.9, filter_start_epoch=0, reweight_pairs=True,
                     filter_max_share=0.05)
    _, closed = MEETLoss(cfg)({**out, "text_dense": blurred}, pairs, epoch=0)
    assert closed["gate_open"] == 0.0 and closed["filtered"] == 0.0 and "weight_std" not in closed
    _, opened = MEETLoss(cfg)({**out, "text_dense": sharp}, pairs, epoch=0)
    assert opened["gate_open"] == 1.0 and "weight_std" in opened
    _, always = MEETLoss(LossConfig(**{**cfg.__dict__, "filter_max_share": 1.0}))(
        {**out, "text_dense": blurred}, pairs, epoch=0)
    assert always["filtered"] == n * (n - 1)  # without the gate the blurred space flags every negative


def test_cosine_schedule_decays_to_zero_and_step_keeps_the_released_drops():
    from meet.config import TrainConfig
    from meet.train import learning_rate_factor

    cosine = TrainConfig(epochs=10, lr_schedule="cosine")
    factors = [learning_rate_factor(cosine, p) for p in (0, 2.5, 5, 7.5, 10)]
    assert factors[0] == 1.0 and factors[2] == pytest.approx(0.5) and factors[-1] == pytest.approx(0.0)
    assert all(a > b for a, b in zip(factors, factors[1:]))
    step = TrainConfig(epochs=10, lr_decay_epochs=4, lr_decay=0.1)
    assert [learning_rate_factor(step, p) for p in (0, 3.9, 4, 8.5)] == pytest.approx([1, 1, 0.1, 0.01])


def test_a_cosine_run_ends_near_a_zero_learning_rate(tiny_shapes, tmp_path):
    """The rate is set at every batch: the last batch of the run steps at a few % of it."""
    from meet.checkpoint import read_pointer

    out = tmp_path / "run"
    assert main(["--data", str(tiny_shapes), "--out", str(out), "--quiet", *TINY_FLAGS, "--lr-schedule", "cosine"]) == 0
    groups = json.loads((out / read_pointer(out)["last"] / "optimizer.json").read_text())["param_groups"]
    assert all(0 < g["lr"] < 0.05 * g["base_lr"] for g in groups)


def test_hash_distill_ends_the_run_with_distilled_codes_on_the_same_encoders(tiny_shapes, tmp_path):
    """--hash-distill: the run's best becomes the best epoch with distilled hash heads and
    refit codebooks; every encoder weight is the epoch's own."""
    from meet.checkpoint import load_tensors, read_config, read_pointer
    from meet.train import DISTILLED

    out = tmp_path / "run"
    assert main(["--data", str(tiny_shapes), "--out", str(out), "--quiet", *TINY_FLAGS, "--hash-distill", "true"]) == 0
    pointer = read_pointer(out)
    assert pointer["best"] == DISTILLED and pointer["distilled_from"].startswith("checkpoints/epoch-")
    distilled, epoch = load_tensors(out / DISTILLED / "model.safetensors"), load_tensors(
        out / pointer["distilled_from"] / "model.safetensors")
    assert distilled.keys() == epoch.keys()
    heads = [k for k in distilled if k.startswith(("image_hash.", "text_hash."))]
    assert heads and all(not torch_equal(distilled[k], epoch[k]) for k in heads if k.endswith("weight"))
    assert all(torch_equal(distilled[k], epoch[k]) for k in distilled if k not in heads)
    assert read_config(out / DISTILLED).hash_refit.method == "distill"
    assert read_config(out / pointer["distilled_from"]).hash_refit is None


def torch_equal(a, b) -> bool:
    import torch
    return bool(torch.equal(a, b))


def test_quiet_training_shows_no_progress_bars(tiny_shapes, tmp_path, capsys):
    assert main(["--data", str(tiny_shapes), "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet",
                 *TINY_FLAGS]) == 0
    captured = capsys.readouterr()
    assert "epoch 1/1" not in captured.err and "it/s" not in captured.err
    assert "best epoch " in captured.out  # the summary still prints
