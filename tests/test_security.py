"""Nothing in the shipped code loads a pickle.

Scans the Python sources of ``meet/``, ``app/``, ``app.py``, ``benchmarks/`` and the code
cells of ``notebooks/*.ipynb`` (by syntax tree, following import aliases such as
``import numpy as np`` or ``from torch import load``) for calls that can execute a
pickle:

- ``torch.load(...)`` without ``weights_only=True``;
- ``pickle.load``/``loads``/``Unpickler`` (and ``_pickle``, ``dill``, ``cloudpickle``),
  ``joblib.load``, ``pandas.read_pickle``, ``shelve.open``;
- ``numpy.load(...)`` with ``allow_pickle`` set to anything but ``False``.

A finding fails the test naming ``file:line``. The app-side checks (upload limits, file
serving) live with the app's tests.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ["meet", "app", "app.py", "benchmarks", "notebooks"]

NEVER = {"pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads",
         "_pickle.Unpickler", "dill.load", "dill.loads", "cloudpickle.load", "cloudpickle.loads",
         "joblib.load", "pandas.read_pickle", "shelve.open"}
"""Calls that unpickle whatever they are given."""


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted origin, e.g. ``np`` -> ``numpy``, ``tload`` -> ``torch.load``."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value
               for k in call.keywords)


def find_pickle_loads(source: str, label: str) -> list[str]:
    """``label:line: what`` for every call in ``source`` that may unpickle."""
    tree = ast.parse(source)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases) or ""
        if name == "torch.load" and not _keyword_is(node, "weights_only", True):
            found.append(f"{label}:{node.lineno}: torch.load without weights_only=True")
        elif name in NEVER:
            found.append(f"{label}:{node.lineno}: {name}")
        elif name in ("numpy.load", "numpy.lib.format.read_array") and any(
                k.arg == "allow_pickle" for k in node.keywords) and not _keyword_is(node, "allow_pickle", False):
            found.append(f"{label}:{node.lineno}: {name} with allow_pickle not False")
        elif name in ("numpy.load",) and any(k.arg is None for k in node.keywords):
            found.append(f"{label}:{node.lineno}: numpy.load(**kwargs) may pass allow_pickle=True")
    return found


def _notebook_code(path: Path) -> list[tuple[str, str]]:
    """(label, source) per code cell; IPython magics and shell lines are blanked."""
    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    out = []
    for k, cell in enumerate(cells):
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell.get("source", []))
        source = re.sub(r"(?m)^\s*[%!].*$", "", source)
        out.append((f"{path.relative_to(ROOT)} cell {k}", source))
    return out


def sources() -> list[tuple[str, str]]:
    found = []
    for entry in SCANNED:
        base = ROOT / entry
        paths = [base] if base.is_file() else sorted(base.rglob("*.py")) + sorted(base.rglob("*.ipynb"))
        for path in paths:
            if ".ipynb_checkpoints" in path.parts:
                continue
            if path.suffix == ".ipynb":
                found.extend(_notebook_code(path))
            else:
                found.append((str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")))
    return found


def test_the_scanner_finds_every_pattern():
    bad = """
import torch, pickle, joblib
import numpy as np
from torch import load as tload
from pickle import loads
import pandas as pd
torch.load("x.pt")
torch.load("x.pt", weights_only=False)
tload("x.pt")
pickle.load(open("f", "rb"))
loads(b"")
np.load("x.npy", allow_pickle=True)
np.load("x.npy", **options)
joblib.load("m.joblib")
pd.read_pickle("x.pkl")
"""
    good = """
import torch
import numpy as np
torch.load("x.pt", weights_only=True)
np.load("x.npy")
np.load("x.npy", allow_pickle=False, mmap_mode="r")
pickle_like = {"load": 1}
"""
    lines = sorted(int(f.split(":")[1]) for f in find_pickle_loads(bad, "bad.py"))
    assert lines == list(range(7, 16))
    assert find_pickle_loads(good, "good.py") == []


def test_no_source_loads_a_pickle():
    scanned = sources()
    assert any(label.startswith("meet/") for label, _ in scanned)  # the scan saw the package
    findings, unparsable = [], []
    for label, source in scanned:
        try:
            findings.extend(find_pickle_loads(source, label))
        except SyntaxError as exc:
            unparsable.append(f"{label}:{exc.lineno}: cannot parse ({exc.msg})")
    assert not unparsable, "\n".join(unparsable)
    assert not findings, "calls that can execute a pickle:\n" + "\n".join(findings)


@pytest.mark.parametrize("entry", SCANNED)
def test_scanned_paths_are_current(entry):
    """A renamed folder must not silently drop out of the scan (notebooks/ and app/ may
    still be empty of code, but they exist)."""
    assert (ROOT / entry).exists(), entry
