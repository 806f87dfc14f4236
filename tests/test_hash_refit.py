"""Refitting the hash heads alone: encoders untouched, loss falls, checkpoint loads."""

from __future__ import annotations

import torch

import meet
from meet.config import HashRefitConfig
from meet.hash_refit import main, refit_hash_heads


def test_refit_lowers_the_loss_and_keeps_the_encoders(tiny_run, tiny_shapes, tmp_path, capsys):
    out = tmp_path / "refit"
    assert main(["--checkpoint", str(tiny_run), "--data", str(tiny_shapes), "--out", str(out),
                 "--epochs", "3", "--batch-size", "64", "--device", "cpu"]) == 0
    assert "refit loss" in capsys.readouterr().out
    before, after = meet.load(tiny_run, device="cpu"), meet.load(out, device="cpu")
    old, new = before.model.state_dict(), after.model.state_dict()
    for key in old:
        if key.startswith(("image_encoder.", "text_encoder.")):
            assert torch.equal(old[key], new[key]), key
    assert not torch.equal(old["text_hash.linear.weight"], new["text_hash.linear.weight"])
    assert after.model.image_pq.is_fitted and after.model.text_pq.is_fitted
    texts = after.encode_texts(["a red circle"])
    assert torch.equal(torch.from_numpy(texts.dense), torch.from_numpy(before.encode_texts(["a red circle"]).dense))
    assert main(["--checkpoint", str(tiny_run), "--data", str(tiny_shapes), "--out", str(out)]) == 2


def test_refit_loss_decreases():
    from meet.model import HashHead

    torch.manual_seed(0)
    image_head, text_head = HashHead(16, 8), HashHead(16, 8)
    images = torch.nn.functional.normalize(torch.randn(50, 16), dim=1)
    texts = torch.nn.functional.normalize(images.repeat_interleave(2, 0) + 0.1 * torch.randn(100, 16), dim=1)
    losses = refit_hash_heads(image_head, text_head, images, texts, torch.arange(100) // 2,
                              HashRefitConfig(epochs=30, batch_size=32, lr=1e-2))
    assert losses[-1] < 0.5 * losses[0]
