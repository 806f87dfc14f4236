"""Transformers-backed encoders (bert text, hf vision) on tiny models built in tmp folders.

Nothing here may reach the network: the models are created locally and loaded from
their folders, and the hub is switched to offline mode before transformers is imported.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers/huggingface_hub read it
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from meet.config import ModelConfig  # noqa: E402
from meet.data.images import pil_to_uint8  # noqa: E402
from meet.encoders import build_image_encoder, build_text_encoder  # noqa: E402
from meet.errors import ConfigError  # noqa: E402

transformers = pytest.importorskip("transformers")
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

CAPTIONS = ["a red circle", "a blue square left of a red circle", "two green triangles", ""]
WORDS = ["a", "red", "circle", "blue", "square", "left", "of", "two", "green", "triangles"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=5 + len(WORDS), hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder)
    transformers.BertTokenizer(str(vocab_file)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32,
                                    num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64)
    transformers.ViTModel(config).save_pretrained(folder)
    processor_class = getattr(transformers, "ViTImageProcessorPil", None) or \
        transformers.ViTImageProcessor
    processor_class(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory):
    """A CNN-like backbone ((B, C, H, W) features) with no image processor saved."""
    folder = tmp_path_factory.mktemp("tiny-resnet")
    torch.manual_seed(0)
    config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16],
                                       depths=[1, 1], layer_type="basic")
    transformers.ResNetModel(config).save_pretrained(folder)
    return folder


def _bert_cfg(bert_dir, **changes) -> ModelConfig:
    values = dict(text_encoder="bert", bert_path=str(bert_dir), embed_dim=16, max_text_len=12)
    values.update(changes)
    return ModelConfig(**values)


def _vision_cfg(folder, **changes) -> ModelConfig:
    values = dict(image_encoder="hf", vision_backbone=str(folder), embed_dim=16, image_size=32)
    values.update(changes)
    return ModelConfig(**values)


def _random_pil_images(sizes) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def _trainable_without_gradient(module: torch.nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters()
            if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]


# --- bert ---------------------------------------------------------------------------

def test_bert_shapes_norm_and_padding_invariance(bert_dir):
    torch.manual_seed(0)
    encoder = build_text_encoder(_bert_cfg(bert_dir)).eval()
    batch = encoder.tokenize(CAPTIONS)
    assert set(batch) == {"input_ids", "attention_mask"}
    with torch.no_grad():
        together, weights = encoder(**batch, return_weights=True)
        alone = torch.cat([encoder(**encoder.tokenize([c])) for c in CAPTIONS])
    assert together.shape == (4, 16)
    torch.testing.assert_close(together.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    padding = batch["attention_mask"] == 0
    assert padding.any() and torch.all(weights[padding] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4))


def test_bert_truncates_at_max_text_len(bert_dir):
    encoder = build_text_encoder(_bert_cfg(bert_dir, max_text_len=5))
    batch = encoder.tokenize([" ".join(WORDS * 3), "a"])
    assert batch["input_ids"].shape == (2, 5)


def test_bert_gradients_reach_every_trainable_parameter(bert_dir):
    encoder = build_text_encoder(_bert_cfg(bert_dir))
    encoder(**encoder.tokenize(CAPTIONS)).sum().backward()
    assert not _trainable_without_gradient(encoder)
    assert all(p.requires_grad for p in encoder.backbone.parameters())


def test_bert_freeze_backbone_trains_only_the_head(bert_dir):
    encoder = build_text_encoder(_bert_cfg(bert_dir, freeze_backbone=True)).train()
    assert not any(p.requires_grad for p in encoder.backbone.parameters())
    assert all(p.requires_grad for p in encoder.head.parameters())
    assert not encoder.backbone.training and encoder.head.training
    encoder(**encoder.tokenize(CAPTIONS)).sum().backward()
    assert not _trainable_without_gradient(encoder)
    assert all(p.grad is None for p in encoder.backbone.parameters())


def test_bert_rebuilds_from_saved_dir_without_bert_path(bert_dir, tmp_path):
    torch.manual_seed(0)
    encoder = build_text_encoder(_bert_cfg(bert_dir)).eval()
    encoder.save_extra(tmp_path)
    assert (tmp_path / "bert_config.json").is_file() and (tmp_path / "tokenizer").is_dir()
    gone = _bert_cfg(tmp_path / "no-such-bert")
    rebuilt = build_text_encoder(gone, saved_dir=tmp_path).eval()
    rebuilt.load_state_dict(encoder.state_dict())
    batch = encoder.tokenize(CAPTIONS)
    rebuilt_batch = rebuilt.tokenize(CAPTIONS)
    assert torch.equal(batch["input_ids"], rebuilt_batch["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(**rebuilt_batch), encoder(**batch))


def test_bert_missing_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="bert_path"):
        build_text_encoder(_bert_cfg(tmp_path / "missing"))


# --- hf vision: ViT-like ------------------------------------------------------------

def test_vit_preprocess_and_forward(vit_dir):
    torch.manual_seed(0)
    encoder = build_image_encoder(_vision_cfg(vit_dir)).eval()
    pixel_values = encoder.preprocess(_random_pil_images([(40, 50), (32, 32), (20, 70)]))
    assert pixel_values.shape == (3, 3, 32, 32) and pixel_values.is_floating_point()
    with torch.no_grad():
        embeddings, weights = encoder(pixel_values, return_weights=True)
    assert embeddings.shape == (3, 16)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(3))
    assert weights.shape == (3, 1 + (32 // 8) ** 2)  # CLS + 4x4 patches
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))


def test_vit_uint8_input_matches_processor_at_native_size(vit_dir):
    encoder = build_image_encoder(_vision_cfg(vit_dir)).eval()
    images = _random_pil_images([(32, 32), (32, 32)])
    uint8 = torch.stack([pil_to_uint8(img, 32) for img in images])
    with torch.no_grad():
        torch.testing.assert_close(encoder(uint8), encoder(encoder.preprocess(images)),
                                   atol=1e-5, rtol=1e-4)


def test_vit_rebuilds_from_saved_dir_and_has_no_unused_parameters(vit_dir, tmp_path):
    torch.manual_seed(0)
    encoder = build_image_encoder(_vision_cfg(vit_dir))
    pixel_values = encoder.preprocess(_random_pil_images([(32, 32), (48, 40)]))
    encoder(pixel_values).sum().backward()
    assert not _trainable_without_gradient(encoder)  # pooler left out
    encoder.eval()
    encoder.save_extra(tmp_path)
    assert (tmp_path / "vision_config.json").is_file()
    assert (tmp_path / "image_processor").is_dir()
    rebuilt = build_image_encoder(_vision_cfg(tmp_path / "gone"), saved_dir=tmp_path).eval()
    rebuilt.load_state_dict(encoder.state_dict())
    images = _random_pil_images([(30, 60)])
    torch.testing.assert_close(rebuilt.preprocess(images), encoder.preprocess(images))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(pixel_values), encoder(pixel_values))


# --- hf vision: CNN-like ------------------------------------------------------------

def test_resnet_feature_map_is_flattened_and_fallback_preprocess_is_imagenet(resnet_dir):
    torch.manual_seed(0)
    encoder = build_image_encoder(_vision_cfg(resnet_dir)).eval()
    assert encoder.processor is None
    images = _random_pil_images([(40, 50), (32, 32)])
    pixel_values = encoder.preprocess(images)
    expected = (torch.stack([pil_to_uint8(img, 32) for img in images]).float() / 255
                - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(pixel_values, expected)
    with torch.no_grad():
        embeddings, weights = encoder(pixel_values, return_weights=True)
        grid = encoder.backbone(pixel_values=pixel_values).last_hidden_state
    assert grid.dim() == 4 and weights.shape == (2, grid.shape[2] * grid.shape[3])
    assert embeddings.shape == (2, 16)


def test_resnet_frozen_backbone_keeps_batchnorm_statistics(resnet_dir, tmp_path):
    encoder = build_image_encoder(_vision_cfg(resnet_dir, freeze_backbone=True)).train()
    before = {k: v.clone() for k, v in encoder.backbone.state_dict().items()}
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    encoder(images).sum().backward()
    after = encoder.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not _trainable_without_gradient(encoder)
    assert all(p.grad is None for p in encoder.backbone.parameters())
    encoder.save_extra(tmp_path)
    assert not (tmp_path / "image_processor").exists()
    rebuilt = build_image_encoder(_vision_cfg(resnet_dir), saved_dir=tmp_path).eval()
    rebuilt.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images), encoder.eval()(images))


def test_hf_errors_name_the_field(tmp_path, bert_dir):
    with pytest.raises(ConfigError, match="vision_backbone"):
        build_image_encoder(ModelConfig(image_encoder="hf", vision_backbone=""))
    with pytest.raises(ConfigError, match="vision_backbone"):
        build_image_encoder(_vision_cfg(tmp_path / "missing"))


def test_a_vit_with_another_image_size_is_a_clear_config_error(vit_dir):
    from meet.encoders import build_image_encoder
    from meet.errors import ConfigError

    with pytest.raises(ConfigError, match="--image-size 32"):
        build_image_encoder(_vision_cfg(vit_dir, image_size=64))
