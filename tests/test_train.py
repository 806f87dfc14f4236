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
                "train_weight_std"):
        assert key in records[-1], key
    assert records[1]["filtered_per_batch"] > 0  # filtering starts at epoch 1 in the demo preset
    best = max(records, key=lambda r: r["val_dense_rsum"])
    assert pointer["best_epoch"] == best["epoch"]
    assert not list((tiny_run / "checkpoints").glob(".tmp-*"))


def test_resume_reproduces_an_uninterrupted_run(tiny_shapes, tiny_run, tmp_path):
    run = tmp_path / "resumed"
    flags = [f for f in TINY_FLAGS]
    flags[flags.index("--epochs") + 1] = "1"
    assert main(["--data", str(tiny_shapes), "--out", str(run), *flags]) == 0
    assert len(_lines(run / "metrics.jsonl")) == 1
    flags[flags.index("--epochs") + 1] = "2"
    assert main(["--data", str(tiny_shapes), "--out", str(run), "--resume", *flags]) == 0
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


def test_quiet_training_shows_no_progress_bars(tiny_shapes, tmp_path, capsys):
    assert main(["--data", str(tiny_shapes), "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet",
                 *TINY_FLAGS]) == 0
    captured = capsys.readouterr()
    assert "epoch 1/1" not in captured.err and "it/s" not in captured.err
    assert "best epoch 1" in captured.out  # the summary still prints
