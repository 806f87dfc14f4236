"""Refitting the hash heads alone: encoders untouched, loss falls, checkpoint loads."""

from __future__ import annotations

import torch

import meet
from meet.config import HashRefitConfig
from meet.hash_refit import main, refit_hash_heads


def test_refit_lowers_the_loss_and_keeps_the_encoders(tiny_run, tiny_shapes, tmp_path, capsys):
    out = tmp_path / "refit"
    assert main(["--checkpoint", str(tiny_run), "--data", str(tiny_shapes), "--out", str(out),
                 "--method", "structure", "--epochs", "3", "--batch-size", "64", "--device", "cpu"]) == 0
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


def test_itq_heads_are_faiss_itq_shared_by_both_sides():
    import faiss
    import numpy as np

    from meet.hash_refit import itq_hash_heads
    from meet.model import HashHead

    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(200, 16), dim=1)
    texts = torch.nn.functional.normalize(images.repeat_interleave(2, 0) + 0.1 * torch.randn(400, 16), dim=1)
    image_head, text_head = HashHead(16, 8), HashHead(16, 8)
    cfg = HashRefitConfig(method="itq", itq_items=1000)
    itq_hash_heads(image_head, text_head, images, texts, cfg)
    assert torch.equal(image_head.linear.weight, text_head.linear.weight)
    reference = faiss.ITQTransform(16, 8, True)
    reference.train(np.concatenate([images.numpy(), texts.numpy()]))
    with torch.no_grad():
        ours = image_head(texts).numpy()
    projected = reference.apply(texts.numpy())  # A (x - mean) / ||x - mean||
    assert np.array_equal(ours >= 0, projected >= 0)  # the same binary codes
    assert np.abs(ours).max() < 1  # the tanh is not saturated
    centred = np.linalg.norm(texts.numpy() - faiss.vector_to_array(reference.mean), axis=1, keepdims=True)
    assert np.corrcoef((np.arctanh(ours) / centred).ravel(), projected.ravel())[0, 1] > 0.999


def test_itq_cli_keeps_the_encoders(tiny_run, tiny_shapes, tmp_path, capsys):
    out = tmp_path / "itq"
    assert main(["--checkpoint", str(tiny_run), "--data", str(tiny_shapes), "--out", str(out),
                 "--method", "itq", "--device", "cpu"]) == 0
    assert "ITQ on" in capsys.readouterr().out
    before, after = meet.load(tiny_run, device="cpu"), meet.load(out, device="cpu")
    old, new = before.model.state_dict(), after.model.state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old if k.startswith(("image_encoder.", "text_encoder.")))
    assert torch.equal(new["image_hash.linear.weight"], new["text_hash.linear.weight"])
    assert after.model.image_pq.is_fitted and after.model.text_pq.is_fitted


def test_distillation_lowers_the_held_out_ranking_loss_of_the_binary_codes():
    """The distilled heads' *binary* codes rank held-out caption queries closer to the dense
    ranking (lower listwise KL, hard signs) than the ITQ start does. (Recall on the 100k
    gallery is measured in benchmarks/scale_recall.py; random data has too little
    structure for a recall test.)"""
    from meet.hash_refit import distill_hash_heads, itq_hash_heads, listwise_distillation
    from meet.model import HashHead

    torch.manual_seed(0)
    basis = torch.randn(8, 32) * torch.linspace(3, 0.5, 8)[:, None]  # low-rank, anisotropic
    images = torch.nn.functional.normalize(torch.randn(400, 8) @ basis + 0.3 * torch.randn(400, 32), dim=1)
    texts = torch.nn.functional.normalize(images.repeat_interleave(2, 0) + 0.3 * torch.randn(800, 32)
                                          + 0.5, dim=1)  # a modality gap, as real encoders have
    cfg = HashRefitConfig(method="distill", distill_steps=150, distill_batch=64, lr=3e-3, itq_items=1000)
    held_out, train = texts[600:], texts[:600]
    start = (HashHead(32, 16), HashHead(32, 16))
    itq_hash_heads(*start, images, train, cfg)
    distilled = (HashHead(32, 16), HashHead(32, 16))
    losses = distill_hash_heads(*distilled, images, train, cfg)
    assert losses[-1] < losses[0]
    with torch.no_grad():
        before = listwise_distillation(start[1], start[0], held_out, images, cfg)
        after = listwise_distillation(distilled[1], distilled[0], held_out, images, cfg)
    assert after < 0.92 * before  # 4.97 -> 4.31 when written


def test_distill_cli(tiny_run, tiny_shapes, tmp_path, capsys):
    out = tmp_path / "distill"
    assert main(["--checkpoint", str(tiny_run), "--data", str(tiny_shapes), "--out", str(out),
                 "--method", "distill", "--distill-steps", "5", "--i2t-weight", "0.5", "--device", "cpu"]) == 0
    assert "distillation loss" in capsys.readouterr().out
    refit = meet.load(out, device="cpu")
    assert refit.model.text_pq.is_fitted
    # the settings are saved with the checkpoint (every field, as given or defaulted)
    assert refit.cfg.hash_refit.method == "distill" and refit.cfg.hash_refit.distill_steps == 5
    assert refit.cfg.hash_refit.i2t_weight == 0.5 and refit.cfg.hash_refit.seed == 0
    assert main(["--checkpoint", str(tiny_run), "--data", str(tiny_shapes), "--out", str(tmp_path / "bad"),
                 "--method", "distill", "--distill-steps", "0"]) == 2
