"""meet.cli: the error exit, flags from the config dataclasses, output folders, atomic writes."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from meet import cli
from meet.config import CascadeConfig, HashRefitConfig, PQSpace, choices
from meet.errors import ConfigError, DataError


def test_run_turns_a_meet_error_into_one_line_and_exit_2(capsys):
    def fails() -> None:
        raise DataError("the gallery is empty", fix="add images")
    assert cli.run(fails) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "the gallery is empty" in err and "add images" in err
    assert cli.run(lambda: None) == 0 and cli.run(lambda: 3) == 3
    with pytest.raises(ZeroDivisionError):  # a bug is not a user error: it keeps its traceback
        cli.run(lambda: 1 / 0)


def test_config_flags_follow_the_dataclass_types_docs_and_choices():
    parser = argparse.ArgumentParser()
    names = cli.add_config_flags(parser, CascadeConfig, section="cascade")
    assert names == [f.name for f in dataclasses.fields(CascadeConfig)]
    args = parser.parse_args(["--pq-space", "residual", "--fusion", "false", "--top-z-t2i", "7"])
    assert cli.given_flags(args, names) == {"pq_space": "residual", "fusion": False, "top_z_t2i": 7}
    assert cli.given_flags(parser.parse_args([]), names) == {}  # absent flags keep the base config
    action = next(a for a in parser._actions if a.dest == "pq_space")
    assert action.choices == list(choices(PQSpace))  # the Literal is the one list of choices
    assert action.help.startswith("cascade.pq_space: What an index built with this config quantizes")
    with pytest.raises(SystemExit):
        parser.parse_args(["--pq-space", "additive"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--fusion", "maybe"])
    defaults = argparse.ArgumentParser()
    cli.add_config_flags(defaults, HashRefitConfig, only=["method", "lr"], defaults="dataclass")
    assert vars(defaults.parse_args([])) == {"method": "distill", "lr": 1e-3}
    assert cli.parse_weights('{"count": 0.5}') == {"count": 0.5}
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_weights("[1, 2]")


def test_output_folder_is_new_or_empty_and_goes_away_when_the_command_fails(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DataError):
        with cli.output_folder(out):
            assert out.is_dir()
            (out / "half.txt").write_text("half-written")
            raise DataError("failed midway")
    assert not out.exists()
    with cli.output_folder(out):
        (out / "done.txt").write_text("ok")
    with pytest.raises(ConfigError, match="--out .* exists and is not empty"):
        with cli.output_folder(out):
            pass
    assert (out / "done.txt").read_text() == "ok"  # a folder it did not create is never removed
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError):
        with cli.output_folder(empty):
            raise DataError("failed")
    assert empty.is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot create"):
        with cli.output_folder(tmp_path / "file" / "below"):
            pass


def test_atomic_writes_leave_the_old_or_the_new_never_a_mix(tmp_path):
    path = tmp_path / "results.json"
    cli.atomic_write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    folder = tmp_path / "index"
    with cli.atomic_folder(folder) as tmp:
        (tmp / "x.npy").write_text("old")
    with pytest.raises(RuntimeError):
        with cli.atomic_folder(folder) as tmp:
            (tmp / "x.npy").write_text("new")
            raise RuntimeError("crash")
    assert (folder / "x.npy").read_text() == "old"
    with cli.atomic_folder(folder) as tmp:
        (tmp / "y.npy").write_text("new")
    assert sorted(p.name for p in folder.iterdir()) == ["y.npy"]
    with pytest.raises(ConfigError, match="filled by another process"):
        with cli.atomic_folder(folder, replace=False):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "results.json"]  # no temporaries
