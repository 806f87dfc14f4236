"""The config: presets, strict round trips, validation, one home for defaults."""

import json

import pytest

from meet.config import MEETConfig, PRESETS, field_index, preset, validate
from meet.errors import ConfigError


def test_defaults_follow_method_md():
    cfg = MEETConfig()
    assert (cfg.model.embed_dim, cfg.model.n_bits, cfg.model.n_codebooks, cfg.model.codebook_size) == (1024, 64, 8, 256)
    assert cfg.model.detach_hash is True
    assert (cfg.loss.margin, cfg.loss.max_violation) == (0.2, True)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.hash_lr) == (12, 128, 2e-4, 2e-2)
    assert (cfg.train.lr_decay_epochs, cfg.train.lr_decay, cfg.train.grad_clip) == (15, 0.1, 2.0)


def test_official_preset_is_the_released_behaviour():
    cfg = preset("official")
    assert cfg.loss.ranking == "hinge" and cfg.loss.beta1 == 0 and cfg.loss.beta2 == 0
    assert not cfg.loss.filter_negatives and not cfg.loss.reweight_pairs


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_and_validate(name):
    cfg = validate(preset(name))
    again = MEETConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg and again.preset == name


def test_from_dict_is_strict():
    data = MEETConfig().to_dict()
    data["model"]["n_bitz"] = 3
    with pytest.raises(ConfigError, match="n_bitz"):
        MEETConfig.from_dict(data)
    with pytest.raises(ConfigError, match="section"):
        MEETConfig.from_dict({"modle": {}})


def test_override_by_unique_field_name():
    cfg = MEETConfig().override(n_bits=32, beta1=0.5, epochs=3)
    assert (cfg.model.n_bits, cfg.loss.beta1, cfg.train.epochs) == (32, 0.5, 3)
    assert MEETConfig().model.n_bits == 64  # no shared mutable state
    with pytest.raises(ConfigError, match="unknown config field"):
        MEETConfig().override(nbits=3)
    assert len(field_index()) == len(set(field_index()))


@pytest.mark.parametrize("change", [{"n_bits": 12}, {"n_codebooks": 7}, {"epochs": 0},
                                    {"ranking": "cosine"}, {"caption_sampling": "some"},
                                    {"device": "tpu"}, {"reweight_strength": 2.0}])
def test_validate_rejects_unusable_values(change):
    with pytest.raises(ConfigError):
        validate(MEETConfig().override(**change))
