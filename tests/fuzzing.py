"""Shared by the fuzz tests: case counts per category and outcome (for the README's
reliability figures), the check that an error is a clear one, and folder snapshots for
"nothing half-written is left on disk".

Each ``tests/test_fuzz_*.py`` case calls :func:`record` with its category and how it
ended (``ok`` for a correct result, else the ``MEETError`` subclass or the CLI exit
code). A module-scoped fixture in each fuzz file calls :func:`flush`, which writes the
running totals to ``<pytest basetemp>/fuzz-tally.json`` and, when ``MEET_FUZZ_TALLY``
names a file, there too::

    MEET_FUZZ_TALLY=/tmp/tally.json python -m pytest -q tests/test_fuzz_*.py

Hypothesis re-runs a failing example while shrinking; those runs are counted too, so a
green run's totals are exactly the cases tried.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from meet.errors import MEETError

TALLY: Counter[tuple[str, str]] = Counter()


def record(category: str, outcome: str) -> None:
    TALLY[(category, outcome)] += 1


def outcome_of(exc: BaseException | None) -> str:
    """``ok`` or the exception's class name."""
    return "ok" if exc is None else type(exc).__name__


def as_dict() -> dict[str, dict[str, int]]:
    """``{category: {outcome: count}}``, sorted."""
    table: dict[str, dict[str, int]] = {}
    for (category, outcome), count in sorted(TALLY.items()):
        table.setdefault(category, {})[outcome] = count
    return table


def flush(tmp_path_factory) -> Path:
    """Write the totals so far (all fuzz files of this session) and return the path."""
    text = json.dumps({"total": sum(TALLY.values()), "categories": as_dict()}, indent=1)
    path = tmp_path_factory.getbasetemp() / "fuzz-tally.json"
    path.write_text(text)
    if os.environ.get("MEET_FUZZ_TALLY"):
        Path(os.environ["MEET_FUZZ_TALLY"]).write_text(text)
    return path


def assert_clear_error(exc: BaseException, *names: object) -> None:
    """``exc`` is a :class:`MEETError` with a message, a fix, and every one of ``names``
    (the file, flag or item that was wrong) in its text."""
    assert isinstance(exc, MEETError), f"{type(exc).__name__} is not a MEETError: {exc}"
    assert exc.message.strip(), "empty error message"
    assert exc.fix and exc.fix.strip(), f"no fix in: {exc}"
    for name in names:
        assert str(name) in str(exc), f"{name!r} not named in: {exc}"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and mtime: equal snapshots mean nothing
    was added, removed or rewritten."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def one_thread():
    """Generator for a module fixture: tiny models run one item at a time here, and two
    intra-op threads on a busy 2-core machine make each call ~10x slower, not faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
