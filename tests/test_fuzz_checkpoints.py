"""Fuzzed checkpoints through ``meet.load`` (``meet.checkpoint``).

Starting from the tiny run's checkpoint: safetensors files cut anywhere or with header
bytes changed, pickles (one that would leave a marker file if it were ever unpickled)
renamed ``.safetensors``, the two weight files swapped, any config field set to any JSON
value or to another valid size, config/vocab files cut or not UTF-8, files missing, the
run pointer edited. Each ends in a model that loads and encodes exactly like the original
(the mutation changed nothing the model uses) or a clear ``MEETError``; the folder is
never written to and no pickle is ever executed.
"""

from __future__ import annotations

import json
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzzing
import meet
from meet.errors import MEETError

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PROBE = ["a red circle", "something purple", ""]
FILES = ["model.safetensors", "codebooks.safetensors", "config.json", "vocab.json"]


@pytest.fixture(scope="module", autouse=True)
def _tally(tmp_path_factory):
    yield from fuzzing.one_thread()
    fuzzing.flush(tmp_path_factory)


@pytest.fixture(scope="module")
def original(tiny_run):
    """(run folder, best checkpoint folder, reference text encodings)."""
    model = meet.load(tiny_run, device="cpu")
    return tiny_run, model.folder, model.encode_texts(PROBE).dense


class _Exploit:
    """Unpickling this creates the marker file: proof that a pickle was executed."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _load_copy(folder: Path, category: str, reference: np.ndarray | None) -> MEETError | None:
    """meet.load on ``folder``: a clear error naming it, or a model whose encodings equal
    ``reference`` (None: a setting changed behaviour, so only check they are sound)."""
    before = fuzzing.snapshot(folder)
    try:
        model = meet.load(folder, device="cpu")
    except MEETError as exc:
        fuzzing.record(category, fuzzing.outcome_of(exc))
        fuzzing.assert_clear_error(exc)
        assert folder.name in str(exc), f"error does not name the checkpoint: {exc}"
        error = exc
    else:
        fuzzing.record(category, "ok (loads and encodes)")
        dense = model.encode_texts(PROBE).dense
        assert np.isfinite(dense).all()
        if reference is not None:
            np.testing.assert_allclose(dense, reference, atol=1e-6)
        error = None
    assert fuzzing.snapshot(folder) == before, "loading changed the checkpoint folder"
    return error


@settings(FUZZ, max_examples=120)
@given(name=st.sampled_from(FILES[:2]), how=st.sampled_from(["cut", "header byte", "pickle", "swap", "empty",
                                                            "directory", "missing"]),
       at=st.floats(0, 1, exclude_max=True), byte=st.integers(0, 255),
       payload=st.sampled_from(["exploit", "dict", "tensor-like", "text"]))
def test_damaged_weight_files(original, name, how, at, byte, payload):
    _, source, reference = original
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ckpt"
        shutil.copytree(source, folder)
        path = folder / name
        data = path.read_bytes()
        marker = Path(tmp) / "pwned"
        if how == "cut":
            path.write_bytes(data[:int(len(data) * at)])
        elif how == "header byte":  # inside the 8-byte length or the JSON header
            header_end = 8 + int.from_bytes(data[:8], "little")
            position = int(header_end * at)
            path.write_bytes(data[:position] + bytes([byte]) + data[position + 1:])
        elif how == "pickle":
            obj = {"exploit": _Exploit(str(marker)), "dict": {"weight": [1.0, 2.0]},
                   "tensor-like": np.zeros((2, 2), np.float32), "text": "hello"}[payload]
            path.write_bytes(pickle.dumps(obj))
        elif how == "swap":
            other = folder / FILES[1 - FILES.index(name)]
            path.write_bytes(other.read_bytes())
        elif how == "empty":
            path.write_bytes(b"")
        elif how == "directory":
            path.unlink()
            path.mkdir()
        else:
            path.unlink()
        error = _load_copy(folder, "checkpoint: damaged weight file", reference)
        assert not marker.exists(), "a pickle was executed"
        if how != "header byte":  # a changed header byte may be harmless (padding, metadata)
            assert error is not None, f"{how} {name} was not detected"


json_values = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                        st.text(max_size=6), st.lists(st.integers(), max_size=2),
                        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@pytest.fixture(scope="module")
def config_fields(original):
    _, source, _ = original
    config = json.loads((source / "config.json").read_text())
    return config, [(section, key) for section, values in config.items() if isinstance(values, dict)
                    for key in values]


@settings(FUZZ, max_examples=200)
@given(pick=st.integers(0, 10**6), value=st.one_of(json_values, st.sampled_from([0, 1, 8, 16, 24, 32, 64, -8])),
       extra=st.sampled_from([None, None, "unknown key", "unknown section", "not an object", "cut",
                              "not utf-8", "delete key"]))
def test_config_json_edits(original, config_fields, pick, value, extra):
    _, source, reference = original
    config, fields = config_fields
    config = json.loads(json.dumps(config))
    section, key = fields[pick % len(fields)]
    config[section][key] = value
    text = json.dumps(config)
    if extra == "unknown key":
        config[section]["surprise"] = 1
        text = json.dumps(config)
    elif extra == "unknown section":
        config["extras"] = {}
        text = json.dumps(config)
    elif extra == "not an object":
        text = json.dumps([config])
    elif extra == "cut":
        text = text[:pick % max(len(text), 1)]
    elif extra == "delete key":
        del config[section][key]  # missing keys take their defaults
        text = json.dumps(config)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ckpt"
        shutil.copytree(source, folder)
        data = text.encode("utf-8") if extra != "not utf-8" else b"\xff\xfe" + text.encode("utf-16-le")
        (folder / "config.json").write_bytes(data)
        # max_text_len truncates captions: a legal change of behaviour, not of weights
        _load_copy(folder, "checkpoint: config.json edited", None if key == "max_text_len" else reference)


@settings(FUZZ, max_examples=100)
@given(target=st.sampled_from(["vocab.json", "checkpoint.json", "missing codebooks", "missing config",
                               "missing vocab", "pointer names nothing"]),
       value=st.one_of(json_values, st.sampled_from(["checkpoints/epoch-000", "../..", "/etc", "x"]),
                       st.just({"format": "meet-vocab", "words": ["<pad>", "<unk>", "a"]}),
                       st.just({"format": "meet-vocab", "words": ["<pad>", "<pad>"]})),
       cut=st.one_of(st.none(), st.floats(0, 1, exclude_max=True)))
def test_vocab_pointer_and_missing_files(original, target, value, cut):
    run, source, reference = original
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run, copy)
        folder = copy / source.relative_to(run)
        load_from = folder
        if target == "vocab.json":
            text = json.dumps(value) if cut is None else (folder / "vocab.json").read_text()[:int(9999 * cut) % 500]
            (folder / "vocab.json").write_text(text)
        elif target == "checkpoint.json":
            pointer = json.loads((copy / "checkpoint.json").read_text())
            pointer["best"] = value
            (copy / "checkpoint.json").write_text(json.dumps(pointer) if cut is None else "{\"best\": ")
            load_from = copy
        elif target == "pointer names nothing":
            (copy / "checkpoint.json").write_text(json.dumps({"last": "checkpoints/epoch-000"}))
            load_from = copy
        else:
            (folder / {"missing codebooks": "codebooks.safetensors", "missing config": "config.json",
                       "missing vocab": "vocab.json"}[target]).unlink()
        before = fuzzing.snapshot(copy)
        try:
            model = meet.load(load_from, device="cpu")
        except MEETError as exc:
            fuzzing.record("checkpoint: vocab, pointer, missing files", fuzzing.outcome_of(exc))
            fuzzing.assert_clear_error(exc)
        else:
            fuzzing.record("checkpoint: vocab, pointer, missing files", "ok (loads and encodes)")
            assert target in ("vocab.json", "checkpoint.json"), f"{target} was not detected"
            if target == "checkpoint.json":  # the pointer may name the run's other checkpoint
                reference = meet.load(run / value, device="cpu").encode_texts(PROBE).dense
            np.testing.assert_allclose(model.encode_texts(PROBE).dense, reference, atol=1e-6)
        assert fuzzing.snapshot(copy) == before
