"""Checkpoints on the Hub, end to end, with no network: ``huggingface_hub`` talks to
:class:`tests.fake_hub.FakeHub`, a local server speaking the Hub's HTTP API, found through
``HF_ENDPOINT``. Nothing of ours is mocked; a guard refuses every host but 127.0.0.1, so
a test that would reach the real Hub fails instead.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from fake_hub import FakeHub
from huggingface_hub import constants

import meet
from meet import hub as meet_hub
from meet.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from meet.errors import CheckpointError

HUB_VARIABLES = ("HF_ENDPOINT", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_HOME", "HF_TOKEN")
BEFORE = ({name: os.environ.get(name) for name in HUB_VARIABLES},
          constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE, constants.HF_TOKEN_PATH)
"""The process's Hub settings when this file was imported: no test may leave them changed."""
REPO = Path(__file__).resolve().parent.parent
WRITE_TOKEN = "hf_test_write"
PROBE = ["a red circle", "two blue squares left of a green triangle", "zzz"]
PICKLES = (".bin", ".pt", ".pth", ".pkl")


@pytest.fixture(autouse=True)
def local_network_only(monkeypatch):
    """Resolve only local names: a request meant for huggingface.co fails at once. One such
    request is the library's own: huggingface_hub 2.5 fetches ``/api/agent-harnesses``
    from the endpoint it read at import (for its User-Agent) once per process; blocked
    here, it falls back to an empty list, as it does offline."""
    real = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise OSError(f"test_hub: no network here (tried to resolve {host!r})")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


@pytest.fixture(scope="module")
def fake_hub():
    server = FakeHub(tokens={WRITE_TOKEN: {"org", "me"}}).start()
    yield server
    server.stop()


@pytest.fixture
def hub(fake_hub, tmp_path, monkeypatch):
    """The fake Hub as this process's Hub, online, with an empty cache and no token; the
    settings go back when the test ends (monkeypatch)."""
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for name in ("TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest sets offline before the import
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    fake_hub.log.clear()
    return fake_hub


def _perturbed(source: Path, target: Path) -> Path:
    """A second checkpoint: the same model with every weight nudged (seeded)."""
    import torch

    model, cfg, _ = load_checkpoint(source)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return save_checkpoint(model, cfg, target)


@pytest.fixture(scope="module")
def published(fake_hub, tiny_run, tmp_path_factory):
    """Repos on the fake Hub: ``org/tiny`` (tag v1 = the run's best checkpoint as trained,
    with its training state and a pickle beside it; main = a perturbed copy), a
    pickle-only repo and a transformers-style one. Returns the local folders and commits."""
    import torch
    from safetensors.torch import save_file

    first = resolve_checkpoint(tiny_run)
    second = _perturbed(first, tmp_path_factory.mktemp("hub-src") / "second")
    extra = {"pytorch_model.bin": b"\x80\x04 a pickle", "weights/model.pth": b"\x80\x04 another"}
    v1 = fake_hub.commit("org/tiny", {**FakeHub.folder_files(first), **extra})
    fake_hub.tag("org/tiny", "v1", v1)
    main = fake_hub.commit("org/tiny", FakeHub.folder_files(second))
    fake_hub.commit("org/run", FakeHub.folder_files(tiny_run))  # a whole training run
    fake_hub.commit("org/pickled", {"config.json": b'{"model_type": "bert"}', "pytorch_model.bin": b"\x80\x04"})
    clip = tmp_path_factory.mktemp("hub-src") / "clip"
    clip.mkdir(exist_ok=True)
    save_file({"w": torch.zeros(2, 2)}, str(clip / "model.safetensors"))
    (clip / "config.json").write_text(json.dumps({"model_type": "clip", "projection_dim": 8}))
    (clip / "tokenizer.json").write_text("{}")
    fake_hub.commit("org/clip-like", {**FakeHub.folder_files(clip), "flax_model.msgpack": b"x",
                                      "pytorch_model.bin": b"\x80\x04"})
    return {"first": first, "second": second, "v1": v1, "main": main}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _same_encodings(a, b, images) -> bool:
    out = []
    for x, y in ((a.encode_texts(PROBE), b.encode_texts(PROBE)), (a.encode_images(images), b.encode_images(images))):
        out += [np.allclose(x.dense, y.dense, atol=1e-6), np.allclose(x.hash, y.hash, atol=1e-6),
                np.array_equal(x.codes, y.codes), np.array_equal(x.pq_codes, y.pq_codes)]
    return all(out)


@pytest.fixture(scope="module")
def images(tiny_shapes):
    return sorted((tiny_shapes / "images").glob("*.png"))[:4]


def test_parse_spec():
    parse = meet_hub.parse_spec
    assert parse("org/name") == meet_hub.RepoSpec("org/name")
    assert parse("org/name@v1.0") == meet_hub.RepoSpec("org/name", "v1.0")
    assert parse("org/name@refs/pr/1").revision == "refs/pr/1"
    assert str(parse(Path("Org_1/my.model-2@main"))) == "Org_1/my.model-2@main"
    for bad in ("name", "/abs/path", "./org/name", "a/b/c", "org/", "org/na me", "org/name@", "org/name@a b",
                "org/..", "org/na--me", "org/name.git", "C:\\models\\x", "", None, 3):
        assert parse(bad) is None, bad


def test_load_by_repo_id_matches_the_folder(hub, published, images):
    model = meet.load("org/tiny", device="cpu")
    assert _same_encodings(model, meet.load(published["second"], device="cpu"), images)
    cache = Path(os.environ["HF_HUB_CACHE"])
    assert model.folder == cache / "models--org--tiny" / "snapshots" / published["main"]
    fetched = hub.downloads()
    assert sorted(fetched) == ["codebooks.safetensors", "config.json", "model.safetensors", "vocab.json"]
    touched = [path for _, path in hub.log]
    assert not [p for p in touched if p.endswith(PICKLES) or "optimizer" in p or "trainer.json" in p]


def test_load_a_revision(hub, published, images):
    first = meet.load(published["first"], device="cpu")
    for spec in ("org/tiny@v1", f"org/tiny@{published['v1']}"):
        model = meet.load(spec, device="cpu")
        assert model.folder.name == published["v1"]
        assert _same_encodings(model, first, images)
    assert not _same_encodings(meet.load("org/tiny", device="cpu"), first, images)
    touched = [path for _, path in hub.log]
    assert not [p for p in touched if p.endswith(PICKLES)], "a pickle was requested"


def test_a_run_repo_loads_its_best_checkpoint(hub, published, tiny_run, images):
    model = meet.load("org/run", device="cpu")
    snapshot = Path(os.environ["HF_HUB_CACHE"]) / "models--org--run" / "snapshots"
    snapshot = snapshot / next(snapshot.iterdir()).name
    assert model.folder.relative_to(snapshot) == published["first"].relative_to(tiny_run)
    assert _same_encodings(model, meet.load(published["first"], device="cpu"), images)
    fetched = hub.downloads()
    assert "checkpoint.json" in fetched and not [p for p in fetched if "optimizer" in p or "trainer" in p]


@pytest.mark.parametrize("how", ["environment", "library"])
def test_offline_uses_the_cache(hub, published, monkeypatch, how):
    online = meet.load("org/tiny@v1", device="cpu")
    hub.log.clear()
    if how == "environment":  # set after huggingface_hub was imported: meet.hub reads it anyway
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # set before the import: the library's own flag
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = meet.load("org/tiny@v1", device="cpu")
    assert model.folder == online.folder and hub.log == []
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE") as info:
        meet.load("org/tiny", device="cpu")  # main was never downloaded
    assert "checkpoint not found: org/tiny is not a local folder" in str(info.value) and hub.log == []


def test_missing_repo_revision_and_hub(hub, published, monkeypatch):
    with pytest.raises(CheckpointError, match="checkpoint not found: org/nothing is not a local folder"):
        meet.load("org/nothing")
    with pytest.raises(CheckpointError, match="has no revision 'v9'"):
        meet.load("org/tiny@v9")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(CheckpointError, match="cannot be reached"):
        meet.load("org/tiny")


def test_pickle_only_repo_is_refused_without_fetching_the_pickle(hub, published):
    with pytest.raises(CheckpointError, match=r"holds only pickle weights \(pytorch_model.bin\)") as info:
        meet.load("org/pickled")
    assert info.value.fix and "safetensors" in info.value.fix
    assert not [p for _, p in hub.log if p.endswith(PICKLES)]


def test_other_repos_snapshot_and_predicate(hub, published):
    with pytest.raises(CheckpointError, match="is a transformers 'clip' model, not a MEET checkpoint"):
        meet.load("org/clip-like")
    folder = meet_hub.snapshot("org/clip-like")  # what the CLIP work reuses
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert not meet_hub.is_meet_checkpoint(folder)
    assert meet_hub.is_meet_checkpoint(meet_hub.resolve("org/tiny"))
    assert meet_hub.is_meet_checkpoint(published["first"]) and not meet_hub.is_meet_checkpoint(folder.parent)


def test_a_local_path_wins_and_non_ids_are_not_found(hub, published, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(published["first"], tmp_path / "org" / "tiny")
    model = meet.load("org/tiny", device="cpu")
    assert model.folder == Path("org/tiny") and hub.log == []
    for text in ("nowhere", str(tmp_path / "missing"), "a/b/c", "org/with space"):
        with pytest.raises(CheckpointError, match="checkpoint not found"):
            meet.load(text)
    assert hub.log == []


def test_push_sends_the_checkpoint_and_a_model_card(hub, tiny_run, monkeypatch, capsys, images):
    from meet.train import build_parser, config_from_args

    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    assert meet_hub.main(["push", str(tiny_run), "org/pushed"]) == 0
    assert "pushed" in capsys.readouterr().out
    best = resolve_checkpoint(tiny_run)
    files = hub.files("org/pushed")
    expected = {"config.json", "model.safetensors", "codebooks.safetensors", "vocab.json"}
    assert set(files) == expected | {"metrics.jsonl", "README.md", ".gitattributes"}
    for name in expected:
        assert files[name] == (best / name).read_bytes()
    assert files["metrics.jsonl"] == (tiny_run / "metrics.jsonl").read_bytes()
    card = files["README.md"].decode()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "meet" and "image-text-retrieval" in front["tags"]
    for section in ("# org/pushed", "## Use", "## Model", "## Code sizes (per item)", "## Training",
                    "## Validation metrics", "## Configuration", "## Files"):
        assert f"\n{section}\n" in card, section
    assert "| binary code, sign of the hash features | 16 bits | 2 |" in card
    assert "| PQ code | 4 codebooks x 16 codewords = 16 bits | 4 |" in card
    assert "| dense embedding (float32) | 32 dims | 128 |" in card
    assert "| dense |" in card and "| pq |" in card and "epoch " in card
    cfg = meet.load(tiny_run, device="cpu").cfg
    config_text = card.split("## Configuration\n\n```json\n")[1].split("```")[0]
    assert json.loads(config_text) == cfg.to_dict()
    command = card.split("```bash\n")[1].split("\n")[0]  # the card's command rebuilds the config
    argv = [a.replace("DATA", "d").replace("RUN", "r") for a in shlex.split(command)[3:]]
    rebuilt = config_from_args(build_parser().parse_args(argv))[0]
    rebuilt.model.vocab_size = cfg.model.vocab_size  # set from the data's vocabulary, not a flag
    assert rebuilt.to_dict() == cfg.to_dict() and "--epochs 2" in command and "--vocab-size" not in command
    assert _same_encodings(meet.load("org/pushed", device="cpu"), meet.load(tiny_run, device="cpu"), images)


def test_push_to_a_branch_of_a_private_repo_and_download(hub, tiny_run, tmp_path, monkeypatch, images):
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    best = resolve_checkpoint(tiny_run)
    assert meet_hub.main(["push", str(best), "me/private", "--revision", "dev", "--private",
                          "--message", "first"]) == 0
    assert hub.repos["me/private"].private
    assert set(hub.files("me/private", "main")) == {".gitattributes"}
    assert "README.md" in hub.files("me/private", "dev")
    assert hub.repos["me/private"].messages[hub.repos["me/private"].refs["dev"]] == "first"
    out = tmp_path / "copy"
    assert meet_hub.main(["download", "me/private@dev", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "codebooks.safetensors", "config.json",
                                                     "metrics.jsonl", "model.safetensors", "vocab.json"]
    assert not any(p.is_symlink() for p in out.iterdir())
    assert _same_encodings(meet.load(out, device="cpu"), meet.load(best, device="cpu"), images)
    assert meet_hub.main(["download", "me/private@dev", "--out", str(out)]) == 2  # not empty: refused


def test_push_errors_are_clear(hub, tiny_run, tmp_path, monkeypatch, capsys):
    def error(*argv: str) -> str:
        assert meet_hub.main(["push", *argv]) == 2
        return capsys.readouterr().err

    assert "needs a Hugging Face token" in error(str(tiny_run), "org/x")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    assert "did not accept the token" in error(str(tiny_run), "org/x")
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    assert "may not write to someone/x" in error(str(tiny_run), "someone/x")
    (tmp_path / "empty").mkdir()
    assert "holds no model.safetensors" in error(str(tmp_path / "empty"), "org/x")
    assert "is not a Hub repo id" in error(str(tiny_run), "not-an-id")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "offline mode" in error(str(tiny_run), "org/x")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    assert "cannot reach the Hub" in error(str(tiny_run), "org/x")
    assert "org/x" not in hub.repos


@pytest.mark.slow
def test_cli_in_a_fresh_process_reads_the_environment_at_import(hub, published, tmp_path):
    """The usual way: variables set before Python starts, read by huggingface_hub itself."""
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    command = [sys.executable, "-m", "meet.hub", "download", "org/tiny@v1", "--out", str(tmp_path / "out")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=REPO,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == \
        (published["first"] / "model.safetensors").read_bytes()
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there
    done = subprocess.run([*command[:-1], str(tmp_path / "again")], env=offline, capture_output=True,
                          text=True, timeout=120, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr


def test_the_app_loads_a_repo_id(hub, published, tiny_shapes, tmp_path):
    """``python app.py --checkpoint org/name``: the settings take the id, the state loads
    the model through meet.load and serves a (small) gallery with it."""
    from app.settings import from_args
    from app.state import load_state

    settings = from_args(["--checkpoint", "org/tiny@v1", "--data", str(tiny_shapes),
                          "--cache-dir", str(tmp_path / "app")], environ={})
    assert settings.checkpoint == "org/tiny@v1"
    state = load_state(settings, report=lambda line: None)
    assert state.model.folder.name == published["v1"] and state.gallery.images.n_items == 60


def test_hub_settings_do_not_leak_between_tests():
    """Runs after the tests above changed every variable: all are as they were."""
    now = ({name: os.environ.get(name) for name in HUB_VARIABLES},
           constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE, constants.HF_TOKEN_PATH)
    assert now == BEFORE
