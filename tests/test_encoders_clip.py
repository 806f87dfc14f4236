"""The ``clip`` encoder family on a tiny CLIP model the test builds (nothing downloaded):
its towers give exactly ``CLIPModel.get_image_features`` / ``get_text_features``, normalised
(the slow, obvious reference), they never train, a checkpoint rebuilds them from its own
files, gallery images are read through CLIP's own processor, and bad folders are refused
clearly (no config, another model, weights only as a pickle, a wrong embed_dim)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clip_fixtures as cf
from meet.config import MEETConfig, ModelConfig, validate
from meet.encoders import build_image_encoder, build_text_encoder
from meet.errors import ConfigError

transformers = pytest.importorskip("transformers")
CAPTIONS = ["a red circle", "A BLUE SQUARE left of a red circle!", "", "ünïcödé \ud800 text " * 20]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return cf.tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def _cfg(folder, **changes) -> ModelConfig:
    values = dict(image_encoder="clip", text_encoder="clip", clip_backbone=str(folder), embed_dim=16,
                  image_size=32, max_text_len=77)
    values.update(changes)
    return ModelConfig(**values)


def _features(output):  # transformers 4 returns a tensor, 5 a model output with the projection in pooler_output
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def test_towers_equal_clip_get_features_normalised(clip_dir):
    image, text = build_image_encoder(_cfg(clip_dir)), build_text_encoder(_cfg(clip_dir))
    reference = transformers.CLIPModel.from_pretrained(str(clip_dir)).eval()
    pictures = [cf.shape_image("red", "circle"), cf.shape_image("blue", "square", (70, 30)),
                cf.shape_image("green", "circle", (20, 90))]
    pixels = image.preprocess(pictures)
    assert pixels.shape == (3, 3, 32, 32)
    batch = text.tokenize(CAPTIONS)
    with torch.no_grad():
        want_images = F.normalize(_features(reference.get_image_features(pixel_values=pixels)), dim=-1)
        want_texts = F.normalize(_features(reference.get_text_features(**batch)), dim=-1)
        torch.testing.assert_close(image(pixels), want_images, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(text(**batch), want_texts, atol=1e-6, rtol=1e-5)
        alone = torch.cat([text(**text.tokenize([c])) for c in CAPTIONS])  # padding changes nothing
        torch.testing.assert_close(alone, want_texts, atol=1e-5, rtol=1e-4)
    assert batch["input_ids"].shape[1] <= 77  # cut at CLIP's context, the end token kept
    assert int(batch["input_ids"][3, -1]) == text.tokenizer.eos_token_id


def test_uint8_input_at_native_size_matches_the_processor(clip_dir):
    image = build_image_encoder(_cfg(clip_dir))
    pictures = [cf.shape_image("red", "circle", (32, 32), seed=s) for s in range(2)]
    uint8 = torch.stack([torch.from_numpy(np.array(p)).permute(2, 0, 1) for p in pictures])
    with torch.no_grad():
        torch.testing.assert_close(image(uint8), image(image.preprocess(pictures)), atol=2e-3, rtol=1e-3)
    with pytest.raises(Exception, match="takes 32 px"):
        image(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_the_towers_are_frozen_and_stay_in_eval_mode(clip_dir):
    image, text = build_image_encoder(_cfg(clip_dir)), build_text_encoder(_cfg(clip_dir))
    for tower in (image, text):
        tower.train()
        assert not tower.backbone.training
        assert not any(p.requires_grad for p in tower.parameters())
    out = image(image.preprocess([cf.shape_image("red", "circle")]))
    assert not out.requires_grad
    with pytest.raises(ConfigError, match="no attention-pooling weights"):
        image(image.preprocess([cf.shape_image("red", "circle")]), return_weights=True)


def test_a_checkpoint_rebuilds_the_towers_from_its_own_files(clip_dir, tmp_path):
    image, text = build_image_encoder(_cfg(clip_dir)), build_text_encoder(_cfg(clip_dir))
    image.save_extra(tmp_path)
    text.save_extra(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"clip_config.json", "clip_image_processor", "clip_tokenizer"}
    gone = _cfg(tmp_path / "no-such-clip")
    image2, text2 = build_image_encoder(gone, saved_dir=tmp_path), build_text_encoder(gone, saved_dir=tmp_path)
    image2.load_state_dict(image.state_dict())
    text2.load_state_dict(text.state_dict())
    pictures = [cf.shape_image("yellow", "square", (50, 44))]
    torch.testing.assert_close(image2.preprocess(pictures), image.preprocess(pictures))
    batch = text.tokenize(CAPTIONS)
    assert torch.equal(text2.tokenize(CAPTIONS)["input_ids"], batch["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(text2(**batch), text(**batch))
        torch.testing.assert_close(image2(image.preprocess(pictures)), image(image.preprocess(pictures)))


def test_a_folder_without_image_processor_uses_clip_defaults(tmp_path):
    folder = cf.tiny_clip(tmp_path / "clip", processor=False)
    image = build_image_encoder(_cfg(folder))
    assert image.processor.crop_size == {"height": 32, "width": 32}
    assert np.allclose(image.processor.image_mean, [0.48145466, 0.4578275, 0.40821073])


def test_bad_folders_and_settings_are_refused_clearly(clip_dir, tmp_path):
    with pytest.raises(ConfigError, match="not a local folder"):
        build_image_encoder(_cfg("org/some-clip"))
    with pytest.raises(ConfigError, match="need clip_backbone"):
        build_text_encoder(_cfg(""))
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="not a CLIP model folder"):
        build_image_encoder(_cfg(other))
    pickled = tmp_path / "pickled"
    shutil.copytree(clip_dir, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="only as a pickle"):
        build_image_encoder(_cfg(pickled))
    with pytest.raises(ConfigError, match="--embed-dim 16"):
        build_text_encoder(_cfg(clip_dir, embed_dim=32))
    cfg = MEETConfig()
    cfg.model = _cfg(clip_dir, text_encoder="bert")
    with pytest.raises(ConfigError, match="clip on both sides"):
        validate(cfg)
