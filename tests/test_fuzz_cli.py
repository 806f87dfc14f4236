"""Fuzzed command lines of ``meet.train``, ``meet.evaluate``, ``meet.build_index`` and
``meet.data.shapes``, through their ``main(argv)``.

Each case holds at least one bad argument: a zero or negative size, NaN/inf, a
malformed number, an unknown flag, a path that does not exist, a file where a folder
belongs, or a folder nobody can create (``/proc/...``; the tests run as root, so
permission bits would not stop a write). Every case must exit non-zero, with an
``error:`` line last on stderr, no traceback and nothing created on disk. A few cases
also run as real ``python -m`` processes to see their whole stderr.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzzing
from conftest import TINY_FLAGS

FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

POSITIVE_INT = ["--epochs", "--embed-dim", "--n-bits", "--n-codebooks", "--precomp-dim", "--cnn-width",
                "--word-dim", "--gru-layers", "--max-text-len", "--kmeans-iters", "--kmeans-sample",
                "--eval-batch-size", "--lr-decay-epochs"]
"""Train flags that must be at least 1 (0 and below are bad)."""
AT_LEAST_TWO = ["--batch-size", "--codebook-size"]
NON_NEGATIVE_INT = ["--num-workers", "--max-train-images", "--seed", "--top-z-i2t", "--top-z-t2i",
                    "--reciprocal-k", "--sum-violation-epochs", "--filter-start-epoch"]
POSITIVE_FLOAT = ["--lr", "--hash-lr", "--temperature", "--reweight-temperature", "--consistency-temperature",
                  "--hamming-rate-i2t", "--hamming-rate-t2i", "--pq-rate-i2t", "--pq-rate-t2i"]
ANY_FLOAT = ["--margin", "--beta1", "--beta2", "--binary-weight", "--alpha", "--beta", "--grad-clip",
             "--filter-threshold", "--reweight-strength", "--hash-ranking-weight", "--lr-decay"]
"""Float flags: NaN and inf are bad for all of them."""


@pytest.fixture(scope="module", autouse=True)
def _tally(tmp_path_factory):
    yield
    fuzzing.flush(tmp_path_factory)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A folder the cases may point into; it holds one plain file, ``a-file``."""
    folder = tmp_path_factory.mktemp("fuzz-cli")
    (folder / "a-file").write_text("not a folder")
    return folder


def test_flag_lists_match_the_parser():
    from meet.train import build_parser

    known = {s for action in build_parser()._actions for s in action.option_strings}
    listed = POSITIVE_INT + AT_LEAST_TWO + NON_NEGATIVE_INT + POSITIVE_FLOAT + ANY_FLOAT
    assert set(listed) <= known, set(listed) - known


def _run(category: str, main, argv: list[str], scratch: Path, must_not_exist: list[Path]) -> str:
    """Run ``main(argv)``: it must fail cleanly and leave ``scratch`` as it was."""
    before = fuzzing.snapshot(scratch)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: usage line + one error line
            code = exc.code
    stderr = err.getvalue()
    fuzzing.record(category, f"exit {code}")
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert code not in (0, None), f"{argv} succeeded"
    assert "Traceback" not in stderr
    assert lines and "error:" in lines[-1], f"no error line for {argv}: {stderr!r}"
    assert sum("error:" in line for line in lines) == 1, stderr
    assert fuzzing.snapshot(scratch) == before, f"{argv} left files behind"
    for path in must_not_exist:
        assert not path.exists(), f"{argv} created {path}"
    return lines[-1]


def _value(kind: str):
    return {
        "zero-or-negative": st.integers(-10**12, 0).map(str),
        "below-two": st.integers(-10**6, 1).map(str),
        "negative": st.integers(-10**12, -1).map(str),
        "not-positive-float": st.sampled_from(["0", "-1", "-0.5", "nan", "inf", "-inf", "NaN"]),
        "not-finite": st.sampled_from(["nan", "inf", "-inf", "NaN", "Infinity"]),
        "malformed": st.sampled_from(["", "abc", "1e", "--", "1,5", "0x10", "½", "12abc"]),
    }[kind]


@st.composite
def train_faults(draw):
    kind = draw(st.sampled_from(["size", "size", "two", "negative", "float", "nan", "malformed",
                                 "unknown flag", "data", "out", "resume", "preset", "choice"]))
    if kind == "size":
        return [draw(st.sampled_from(POSITIVE_INT)), draw(_value("zero-or-negative"))]
    if kind == "two":
        return [draw(st.sampled_from(AT_LEAST_TWO)), draw(_value("below-two"))]
    if kind == "negative":
        return [draw(st.sampled_from(NON_NEGATIVE_INT)), draw(_value("negative"))]
    if kind == "float":
        return [draw(st.sampled_from(POSITIVE_FLOAT)), draw(_value("not-positive-float"))]
    if kind == "nan":
        return [draw(st.sampled_from(ANY_FLOAT + POSITIVE_FLOAT)), draw(_value("not-finite"))]
    if kind == "malformed":
        return [draw(st.sampled_from(POSITIVE_INT + NON_NEGATIVE_INT + POSITIVE_FLOAT)), draw(_value("malformed"))]
    if kind == "unknown flag":
        name = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12))
        return [f"--zz-{name}", "1"]
    if kind == "data":
        return ["--data", draw(st.sampled_from(["<scratch>/missing", "<scratch>/a-file", "/proc/nope"]))]
    if kind == "out":
        return ["--out", draw(st.sampled_from(["<scratch>/a-file/run", "/proc/meet-run", "/proc/self/nope/run"]))]
    if kind == "resume":
        return ["--resume", "--out", draw(st.sampled_from(["<scratch>/never-ran", "<scratch>"]))]
    if kind == "preset":
        return ["--preset", draw(st.sampled_from(["", "nope", "SHAPES-DEMO", "../official"]))]
    flag = draw(st.sampled_from(["--image-encoder", "--text-encoder", "--ranking", "--caption-sampling",
                                 "--device", "--select-metric"]))
    return [flag, draw(st.sampled_from(["", "nope", "cuda:x", "gpu", "dense", "a/b/c"]))]


@settings(FUZZ, max_examples=200)
@given(fault=train_faults(), more=st.lists(train_faults(), max_size=1))
def test_train_cli(tiny_shapes, scratch, fault, more):
    from meet.train import main

    out = scratch / "new-run"
    argv = ["--data", str(tiny_shapes), "--out", str(out), *TINY_FLAGS, *fault, *[a for f in more for a in f]]
    argv = [a.replace("<scratch>", str(scratch)) for a in argv]
    _run("cli: python -m meet.train", main, argv, scratch, [out, Path("/proc/meet-run")])


@st.composite
def evaluate_faults(draw):
    kind = draw(st.sampled_from(["checkpoint", "data", "split", "modes", "protocol", "device", "json", "flag"]))
    if kind == "checkpoint":
        return ["--checkpoint", draw(st.sampled_from(["<scratch>/missing", "<scratch>/a-file", "<scratch>", "/"]))]
    if kind == "data":
        return ["--data", draw(st.sampled_from(["<scratch>/missing", "<scratch>/a-file", "<scratch>"]))]
    if kind == "split":
        return ["--split", draw(st.sampled_from(["nope", "", "TEST", "../test", "testall"]))]
    if kind == "modes":
        return ["--modes", draw(st.sampled_from(["", ",", "dense,nope", "DENSE", "hash;pq"]))]
    if kind == "protocol":
        return ["--protocol", draw(st.sampled_from(["", "10k", "FULL", "1K"]))]
    if kind == "device":
        return ["--device", draw(st.sampled_from(["", "tpu", "cuda:x", "cuda:-1", "gpu0"]))]
    if kind == "json":
        return ["--json", draw(st.sampled_from(["<scratch>/a-file/out.json", "<scratch>", "/proc/meet.json"]))]
    return [f"--{draw(st.sampled_from(['top-k', 'checkpoints', 'jsonl', 'x']))}", "1"]


@settings(FUZZ, max_examples=70)
@given(fault=evaluate_faults())
def test_evaluate_cli(tiny_run, tiny_shapes, scratch, fault):
    from meet.evaluate import main

    argv = ["--checkpoint", str(tiny_run), "--data", str(tiny_shapes), "--modes", "dense", *fault]
    argv = [a.replace("<scratch>", str(scratch)) for a in argv]
    _run("cli: python -m meet.evaluate", main, argv, scratch, [Path("/proc/meet.json")])


@st.composite
def build_index_faults(draw):
    kind = draw(st.sampled_from(["reciprocal", "batch", "out", "checkpoint", "data", "split", "device"]))
    if kind == "reciprocal":
        return ["--reciprocal-k", draw(_value("negative") | _value("malformed"))]
    if kind == "batch":
        return ["--batch-size", draw(_value("zero-or-negative") | _value("malformed"))]
    if kind == "out":
        return ["--out", draw(st.sampled_from(["<scratch>/a-file/index", "/proc/meet-index", "<scratch>"]))]
    if kind == "checkpoint":
        return ["--checkpoint", draw(st.sampled_from(["<scratch>/missing", "<scratch>/a-file"]))]
    if kind == "data":
        return ["--data", draw(st.sampled_from(["<scratch>/missing", "<scratch>/a-file"]))]
    if kind == "split":
        return ["--split", draw(st.sampled_from(["nope", "", "../test"]))]
    return ["--device", draw(st.sampled_from(["tpu", "cuda:x", ""]))]


@settings(FUZZ, max_examples=70)
@given(fault=build_index_faults())
def test_build_index_cli(tiny_run, tiny_shapes, scratch, fault):
    from meet.build_index import main

    out = scratch / "new-index"
    argv = ["--checkpoint", str(tiny_run), "--data", str(tiny_shapes), "--out", str(out), *fault]
    argv = [a.replace("<scratch>", str(scratch)) for a in argv]
    _run("cli: python -m meet.build_index", main, argv, scratch, [out, Path("/proc/meet-index")])


@settings(FUZZ, max_examples=70)
@given(flag=st.sampled_from(["--n-train", "--n-val", "--n-test", "--seed", "--image-size", "--workers",
                             "--zz-unknown"]),
       value=st.one_of(st.integers(-10**9, -1).map(str), _value("malformed"), st.sampled_from(["0", "8", "5000"])))
def test_shapes_cli(scratch, flag, value):
    from meet.data.shapes import main

    if value in ("0", "8", "5000") and flag not in ("--image-size", "--workers", "--zz-unknown"):
        value = "-1"  # 0 images of one split, or seed 8, are valid: keep the case bad
    if flag == "--workers" and value in ("8", "5000"):
        value = "0"
    out = scratch / "new-shapes"
    argv = ["--out", str(out), "--n-train", "2", "--n-val", "1", "--n-test", "1", "--quiet", flag, value]
    _run("cli: python -m meet.data.shapes", main, argv, scratch, [out])


@pytest.mark.parametrize("where", ["<scratch>/a-file/shapes", "/proc/meet-shapes"])
def test_shapes_cli_unwritable_out(scratch, where):
    from meet.data.shapes import main

    out = where.replace("<scratch>", str(scratch))
    _run("cli: python -m meet.data.shapes (unwritable --out)", main,
         ["--out", out, "--n-train", "2", "--n-val", "1", "--n-test", "1", "--quiet"], scratch, [Path(out)])


def test_real_processes_print_one_error_line_and_no_traceback(tiny_shapes, scratch):
    """The same, as a user sees it: three ``python -m`` processes, run side by side."""
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    commands = {
        "train": ["meet.train", "--data", str(tiny_shapes), "--out", "/proc/meet-run", *TINY_FLAGS],
        "evaluate": ["meet.evaluate", "--checkpoint", str(scratch / "missing"), "--data", str(tiny_shapes)],
        "shapes": ["meet.data.shapes", "--out", str(scratch / "s"), "--n-train", "-3"],
    }
    procs = {name: subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env)
             for name, argv in commands.items()}
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=120)
        lines = [line for line in stderr.splitlines() if line.strip()]
        fuzzing.record("cli: real python -m processes", f"exit {proc.returncode}")
        assert proc.returncode == 2, (name, stderr)
        assert "Traceback" not in stderr and "error:" in lines[-1], (name, stderr)
        assert sum("error:" in line for line in lines) == 1, (name, stderr)
        assert all(line.startswith(("usage:", " ")) for line in lines[:-1]), (name, stderr)  # argparse's usage
    assert not (scratch / "s").exists() and not Path("/proc/meet-run").exists()
