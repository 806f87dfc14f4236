"""``--backbone`` / a CLIP ``--checkpoint`` by Hub id, end to end against ``tests/fake_hub.py``
(huggingface_hub's real code, a local server): a CLIP repo is told apart from a MEET one by
its ``config.json`` alone, then downloaded with CLIP's own file list only (no pickle, no
Flax/TF/open_clip copies), fitted, and found again offline from the cache; a CLIP repo whose
weights are only a pickle is refused without fetching it; local folders win over Hub ids."""

from __future__ import annotations

import socket

import pytest
from huggingface_hub import constants

import clip_fixtures as cf
from fake_hub import FakeHub
from meet.backbones import is_clip_spec, resolve_backbone
from meet.errors import CheckpointError, ConfigError

JUNK = {"pytorch_model.bin": b"\x80\x04 a pickle", "flax_model.msgpack": b"x", "tf_model.h5": b"x",
        "open_clip_model.safetensors": b"not needed", "model.fp16.safetensors": b"not needed"}


@pytest.fixture(autouse=True)
def local_network_only(monkeypatch):
    real = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise OSError(f"test_backbones: no network here (tried to resolve {host!r})")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


@pytest.fixture(scope="module")
def fake_hub(tmp_path_factory):
    server = FakeHub().start()
    clip = cf.tiny_clip(tmp_path_factory.mktemp("hub-src") / "clip", projection_dim=64)
    files = FakeHub.folder_files(clip)
    server.commit("openai/clip-tiny", {**files, **JUNK})
    pickled = {name: data for name, data in files.items() if name != "model.safetensors"}
    server.commit("org/clip-pickled", {**pickled, "pytorch_model.bin": b"\x80\x04 a pickle"})
    server.commit("org/bert", {"config.json": b'{"model_type": "bert"}', "model.safetensors": b"x"})
    yield server
    server.stop()


@pytest.fixture
def hub(fake_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for name in ("TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    fake_hub.log.clear()
    return fake_hub


def test_a_clip_repo_is_fetched_with_its_own_files_only_and_works_offline(hub, tmp_path, monkeypatch, capsys):
    from meet.fit_codes import main

    assert is_clip_spec("openai/clip-tiny")
    assert hub.downloads() == ["config.json"]  # told apart by its config alone
    backbone = resolve_backbone("openai/clip-tiny")
    assert backbone.kind == "clip" and backbone.spec == "openai/clip-tiny"
    fetched = set(hub.downloads())
    assert fetched == {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json",
                       "tokenizer_config.json", "preprocessor_config.json"}
    assert not fetched & set(JUNK)
    photos, captions = cf.photo_folder(tmp_path / "photos", n_images=40)
    args = ["--backbone", "openai/clip-tiny", "--data", str(photos), "--captions", str(captions), "--cache-dir",
            str(tmp_path / "cache"), "--distill-steps", "10", "--quiet"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # downloaded once: the fit needs no network
    hub.log.clear()
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    assert hub.log == []
    import meet

    assert meet.load(tmp_path / "run").cfg.model.clip_backbone == "openai/clip-tiny"


def test_bad_hub_backbones_are_refused_clearly(hub):
    with pytest.raises(CheckpointError, match=r"whose weights are only pickles \(pytorch_model.bin\)"):
        resolve_backbone("org/clip-pickled")
    assert not [p for p in hub.downloads() if p.endswith(".bin")]
    with pytest.raises(CheckpointError, match="is a transformers 'bert' model, not a MEET checkpoint"):
        resolve_backbone("org/bert")
    with pytest.raises(CheckpointError, match="not found"):
        resolve_backbone("org/nothing-here")
    with pytest.raises(ConfigError, match="not a Hub repo id"):
        resolve_backbone("no-such-folder")
    assert not is_clip_spec("org/nothing-here") and not is_clip_spec("org/bert")


def test_a_local_folder_wins_over_a_hub_id(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cf.tiny_clip(tmp_path / "openai" / "clip-tiny", projection_dim=64)
    backbone = resolve_backbone("openai/clip-tiny")
    assert backbone.folder.resolve() == (tmp_path / "openai" / "clip-tiny").resolve() and hub.log == []
