"""Encoders without transformers: the pooling head, precomp, cnn, bigru and the factory.

The transformers-backed encoders (hf, bert) are in ``test_encoders_hf.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meet.config import ModelConfig
from meet.data.images import pil_to_uint8
from meet.data.vocab import UNK_ID, Vocabulary
from meet.encoders import IMAGE_ENCODERS, TEXT_ENCODERS, build_image_encoder, build_text_encoder
from meet.encoders.image_cnn import grid_side
from meet.encoders.pooling import ProjectAndPool
from meet.errors import ConfigError, DataError

CAPTIONS = ["a red circle", "a blue square left of a red circle", "two green triangles",
            "something purple above a small yellow square"]


def _assert_unit_norm(embeddings: torch.Tensor) -> None:
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(len(embeddings)), atol=1e-5)


def _assert_all_trainable_get_gradients(module: torch.nn.Module, loss: torch.Tensor) -> None:
    loss.backward()
    missing = [name for name, p in module.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all()
                                       or p.grad.abs().sum() == 0)]
    assert not missing, f"no gradient for {missing}"


# --- ProjectAndPool -----------------------------------------------------------------

def _reference_pool(head: ProjectAndPool, features: torch.Tensor, mask: torch.Tensor
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One item at a time, only its real positions, softmax and norm written out."""
    outputs, all_weights = [], []
    for item, item_mask in zip(features, mask):
        x = item[item_mask]
        y = head.fc(x)
        y = y + head.mlp[2](torch.relu(head.mlp[0](y)))
        scores = (y @ head.scorer.weight.T).squeeze(-1)
        weights = torch.exp(scores - scores.max())
        weights = weights / weights.sum()
        pooled = (weights[:, None] * y).sum(0)
        outputs.append(pooled / pooled.norm())
        all_weights.append(weights)
    return torch.stack(outputs), all_weights


def test_project_and_pool_matches_per_item_reference():
    torch.manual_seed(0)
    head = ProjectAndPool(6, 8)
    features = torch.randn(3, 5, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    embeddings, weights = head(features, mask, return_weights=True)
    expected, expected_weights = _reference_pool(head, features, mask)
    assert embeddings.shape == (3, 8) and weights.shape == (3, 5)
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=1e-5)
    for row, row_weights in enumerate(expected_weights):
        torch.testing.assert_close(weights[row, mask[row]], row_weights, atol=1e-6, rtol=1e-5)
    assert torch.all(weights[~mask] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    _assert_unit_norm(embeddings)


def test_project_and_pool_ignores_padding_content_and_default_mask():
    torch.manual_seed(0)
    head = ProjectAndPool(4, 6)
    features = torch.randn(2, 3, 4)
    padded = torch.cat([features, 1e3 * torch.randn(2, 4, 4)], dim=1)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[:, :3] = True
    torch.testing.assert_close(head(padded, mask), head(features), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(head(features, torch.ones(2, 3, dtype=torch.bool)), head(features))


def test_project_and_pool_rejects_bad_shapes():
    head = ProjectAndPool(4, 6)
    with pytest.raises(ValueError, match="features"):
        head(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="mask"):
        head(torch.randn(2, 3, 4), torch.ones(2, 4, dtype=torch.bool))


# --- precomp ------------------------------------------------------------------------

def test_precomp_encoder_shapes_norm_and_single_vector_input():
    torch.manual_seed(0)
    encoder = build_image_encoder(ModelConfig(image_encoder="precomp", precomp_dim=12,
                                              embed_dim=16))
    regions = torch.randn(4, 5, 12)
    embeddings, weights = encoder(regions, return_weights=True)
    assert embeddings.shape == (4, 16) and weights.shape == (4, 5)
    _assert_unit_norm(embeddings)
    # one global vector per image = one region
    torch.testing.assert_close(encoder(regions[:, 0]), encoder(regions[:, :1]))
    _assert_all_trainable_get_gradients(encoder, encoder(regions).sum())


def test_precomp_width_mismatch_names_expected_and_actual_shapes():
    encoder = build_image_encoder(ModelConfig(image_encoder="precomp", precomp_dim=12,
                                              embed_dim=16))
    with pytest.raises(ConfigError, match=r"\(36, 2048\).*\(n_regions, 12\)"):
        encoder.preprocess_features([np.zeros((36, 2048), np.float32)])
    with pytest.raises(ConfigError, match="precomp_dim=12"):
        encoder(torch.zeros(2, 36, 10))
    with pytest.raises(ConfigError, match="feature arrays"):
        encoder.preprocess([Image.new("RGB", (8, 8))])


def test_precomp_preprocess_features_stacks_arrays_and_tensors():
    encoder = build_image_encoder(ModelConfig(image_encoder="precomp", precomp_dim=3,
                                              embed_dim=4))
    batch = encoder.preprocess_features([np.ones((2, 3), np.float64), torch.zeros(2, 3)])
    assert batch.shape == (2, 2, 3) and batch.dtype == torch.float32
    assert encoder.preprocess_features([np.ones(3)]).shape == (1, 1, 3)
    with pytest.raises(DataError, match="region counts"):
        encoder.preprocess_features([np.ones((2, 3)), np.ones((4, 3))])


# --- cnn ----------------------------------------------------------------------------

def _cnn_config(**changes) -> ModelConfig:
    values = dict(image_encoder="cnn", cnn_width=8, embed_dim=16, image_size=32)
    values.update(changes)
    return ModelConfig(**values)


def test_grid_side_halves_three_times_rounding_up():
    assert [grid_side(s) for s in (64, 96, 32, 60, 1)] == [8, 12, 4, 8, 1]


def test_cnn_encoder_shapes_norm_weights_over_grid_and_gradients():
    torch.manual_seed(0)
    encoder = build_image_encoder(_cnn_config())
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    embeddings, weights = encoder(images, return_weights=True)
    assert embeddings.shape == (3, 16)
    assert weights.shape == (3, grid_side(32) ** 2) and encoder.grid_side == 4
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))
    _assert_unit_norm(embeddings)
    # float input on the 0-1 scale is the same image
    torch.testing.assert_close(encoder(images.float() / 255), embeddings, atol=1e-5, rtol=1e-5)
    _assert_all_trainable_get_gradients(encoder, encoder(images).sum())
    assert encoder.position.grad is not None


def test_cnn_grid_features_carry_the_position_embedding():
    torch.manual_seed(0)
    encoder = build_image_encoder(_cnn_config()).eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        encoder.position.normal_()
        with_position = encoder.grid_features(images)
        position = encoder.position.clone()
        encoder.position.zero_()
        without_position = encoder.grid_features(images)
    # each grid cell gets its own learned offset, so "left of" can be told from "right of"
    torch.testing.assert_close(with_position - without_position, position.expand(2, -1, -1))
    assert position.shape == (1, 16, encoder.feature_dim)


def test_cnn_parameter_count_near_half_a_million_at_demo_width():
    encoder = build_image_encoder(ModelConfig(image_encoder="cnn", cnn_width=32,
                                              embed_dim=256, image_size=64))
    n_parameters = sum(p.numel() for p in encoder.parameters())
    assert 300_000 < n_parameters < 700_000


def test_cnn_preprocess_resizes_pil_images_to_uint8_batch():
    encoder = build_image_encoder(_cnn_config())
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), mode="L")]
    batch = encoder.preprocess(images)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == torch.uint8
    torch.testing.assert_close(batch[0], pil_to_uint8(images[0], 32))


def test_cnn_rejects_wrong_image_size():
    encoder = build_image_encoder(_cnn_config())
    with pytest.raises(DataError, match=r"\(batch, 3, 32, 32\)"):
        encoder(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_cnn_state_dict_round_trip_through_factory(tmp_path):
    torch.manual_seed(0)
    cfg = _cnn_config()
    encoder = build_image_encoder(cfg).eval()
    encoder.save_extra(tmp_path)
    rebuilt = build_image_encoder(cfg, saved_dir=tmp_path).eval()
    rebuilt.load_state_dict(encoder.state_dict())
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(rebuilt(images), encoder(images))


# --- bigru --------------------------------------------------------------------------

@pytest.fixture()
def vocab() -> Vocabulary:
    return Vocabulary.build(CAPTIONS)


def _bigru(vocab: Vocabulary, **changes) -> torch.nn.Module:
    values = dict(text_encoder="bigru", word_dim=8, embed_dim=16, gru_layers=2)
    values.update(changes)
    torch.manual_seed(0)
    return build_text_encoder(ModelConfig(**values), vocab=vocab)


def test_bigru_tokenize_pads_caps_and_never_returns_empty(vocab):
    encoder = _bigru(vocab, max_text_len=5)
    batch = encoder.tokenize(["a red circle", "", "?!", "zebra", CAPTIONS[1]])
    assert batch["input_ids"].dtype == torch.long and batch["lengths"].dtype == torch.long
    assert batch["lengths"].tolist() == [3, 1, 1, 1, 5]
    assert batch["input_ids"].shape == (5, 5)
    assert batch["input_ids"][1].tolist() == [UNK_ID, 0, 0, 0, 0]
    assert batch["input_ids"][0].tolist() == vocab.encode("a red circle") + [0, 0]
    assert batch["input_ids"][4].tolist() == vocab.encode(CAPTIONS[1])[:5]


def test_bigru_padded_batch_equals_items_alone(vocab):
    encoder = _bigru(vocab).eval()
    with torch.no_grad():
        together, weights = encoder(**encoder.tokenize(CAPTIONS), return_weights=True)
        alone = torch.cat([encoder(**encoder.tokenize([c])) for c in CAPTIONS])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    _assert_unit_norm(together)
    lengths = encoder.tokenize(CAPTIONS)["lengths"]
    padding = torch.arange(weights.shape[1])[None, :] >= lengths[:, None]
    assert padding.any() and torch.all(weights[padding] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(len(CAPTIONS)))


def test_bigru_gradients_reach_every_parameter(vocab):
    encoder = _bigru(vocab)
    out = encoder(**encoder.tokenize(CAPTIONS + ["", "zebra"]))
    # padding_idx rows never get gradient by design; everything else must
    out.sum().backward()
    assert encoder.embedding.weight.grad[0].abs().sum() == 0
    missing = [n for n, p in encoder.named_parameters()
               if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_bigru_errors_missing_vocab_and_size_mismatch(vocab):
    with pytest.raises(ConfigError, match="needs a vocabulary"):
        build_text_encoder(ModelConfig(text_encoder="bigru"))
    with pytest.raises(ConfigError, match="vocab_size=3"):
        build_text_encoder(ModelConfig(text_encoder="bigru", vocab_size=3), vocab=vocab)
    encoder = _bigru(vocab, vocab_size=len(vocab))
    with pytest.raises(DataError, match="list of captions"):
        encoder.tokenize("a red circle")


def test_bigru_state_dict_round_trip_through_factory(vocab, tmp_path):
    encoder = _bigru(vocab).eval()
    encoder.save_extra(tmp_path)
    vocab.save(tmp_path / "vocab.json")
    cfg = ModelConfig(text_encoder="bigru", word_dim=8, embed_dim=16, gru_layers=2)
    rebuilt = build_text_encoder(cfg, vocab=Vocabulary.load(tmp_path / "vocab.json"),
                                 saved_dir=tmp_path).eval()
    rebuilt.load_state_dict(encoder.state_dict())
    batch = encoder.tokenize(CAPTIONS)
    torch.testing.assert_close(rebuilt(**batch), encoder(**batch))


# --- factory ------------------------------------------------------------------------

def test_unknown_encoder_names_list_the_choices():
    with pytest.raises(ConfigError, match="precomp, cnn, hf"):
        build_image_encoder(ModelConfig(image_encoder="resnet"))
    with pytest.raises(ConfigError, match="bigru, bert"):
        build_text_encoder(ModelConfig(text_encoder="lstm"))
    assert IMAGE_ENCODERS == ("precomp", "cnn", "hf", "clip", "release_bert", "release_bigru")
    assert TEXT_ENCODERS == ("bigru", "bert", "clip", "release_bert", "release_bigru")


def test_importing_the_factory_does_not_import_transformers():
    code = ("import sys, meet.encoders; "
            "sys.exit(1 if 'transformers' in sys.modules else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=str(Path(__file__).resolve().parents[1]))
    assert result.returncode == 0, result.stderr
