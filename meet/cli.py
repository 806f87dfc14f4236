"""What every command-line entry point shares: the error exit, flags derived from the
config dataclasses, new-or-empty output folders, and atomic file and folder writes.

* :func:`run` turns a :class:`~meet.errors.MEETError` into one ``error:`` line on stderr and
  exit code 2 (never a traceback): the user's mistake is named, with what to do.
* :func:`add_config_flags` / :func:`given_flags`: one ``--flag`` per dataclass field, typed
  from its annotation (a ``Literal`` becomes argparse ``choices``, a bool takes
  ``true/false``, a dict takes JSON) and documented by the field's own docstring, so a
  default or a list of choices is never repeated in a parser.
* :func:`output_folder`: a new or empty folder for a command's results, created before
  the long work starts (so an unwritable path fails at once) and removed again if the
  command fails, so nothing half-written is left behind.
* :func:`atomic_write_text`, :func:`atomic_write_json`, :func:`atomic_folder`: write under
  a temporary sibling name and rename into place, so a crash leaves the old file or
  folder or the new one, never a mix.

Only the standard library is imported here: every CLI and the checkpoint writer use it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import os
import shutil
import sys
import textwrap
import typing
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from meet.errors import ConfigError, MEETError

# ------------------------------------------------------------------ the error exit


def run(body: Callable[[], int | None]) -> int:
    """Run a CLI's work; returns its exit code (0 when ``body`` returns None).

    A :class:`MEETError` prints ``error: <message> (<fix>)`` to stderr and returns 2, the
    one failure convention of every ``python -m meet.*`` command. Other exceptions are
    bugs and propagate with their traceback.
    """
    try:
        code = body()
    except MEETError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if code is None else int(code)


# ------------------------------------------------------------------ flags from dataclasses


def parse_bool(text: str) -> bool:
    """``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case)."""
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def parse_weights(text: str) -> dict[str, float]:
    """A JSON object of numbers, e.g. ``{"count": 0.5}``."""
    try:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise TypeError("not an object")
        return {str(k): float(v) for k, v in value.items()}
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f'expected a JSON object like {{"count": 0.5}}, got {text!r}') from exc


def flag_name(field_name: str) -> str:
    """``pq_space`` -> ``--pq-space``."""
    return "--" + field_name.replace("_", "-")


def field_docs(klass: type) -> dict[str, str]:
    """Each dataclass field's attribute docstring (the string literal right below it),
    first sentence only, for ``--help``. Empty where a field has none or the source is
    unavailable (a frozen app)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
    except (OSError, TypeError, SyntaxError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            text = " ".join(following.value.value.replace("``", "").split())
            docs[node.target.id] = text.split(". ")[0].rstrip(".")
    return docs


def _flag_type(annotation: Any) -> dict[str, Any]:
    """argparse ``type``/``choices`` for a field annotation."""
    if typing.get_origin(annotation) is typing.Literal:
        values = typing.get_args(annotation)
        return {"type": type(values[0]), "choices": list(values)}
    if annotation is bool:
        return {"type": parse_bool, "metavar": "true|false"}
    if annotation in (int, float, str):
        return {"type": annotation}
    if typing.get_origin(annotation) is dict or annotation is dict:
        return {"type": parse_weights, "metavar": "JSON"}
    raise TypeError(f"no command-line type for annotation {annotation!r}")


def add_config_flags(parser: argparse.ArgumentParser | Any, klass: type, *,
                     only: Iterable[str] | None = None, exclude: Iterable[str] = (),
                     defaults: str = "suppress", section: str = "") -> list[str]:
    """Add one ``--flag`` per field of dataclass ``klass``; returns the field names added.

    ``defaults="suppress"``: a flag not given is absent from the namespace (the caller's
    base config keeps its value: a preset, a checkpoint's config); ``"dataclass"``: the
    field's default. ``only``/``exclude`` pick fields; ``section`` prefixes the help
    (``cascade.pq_space``).
    """
    hints = typing.get_type_hints(klass)
    docs = field_docs(klass)
    chosen = [f for f in dataclasses.fields(klass)
              if (only is None or f.name in set(only)) and f.name not in set(exclude)]
    instance = klass()
    for f in chosen:
        default = argparse.SUPPRESS if defaults == "suppress" else getattr(instance, f.name)
        where = f"{section}.{f.name}" if section else f.name
        shown = "" if defaults == "suppress" else " (default: %(default)s)"
        parser.add_argument(flag_name(f.name), dest=f.name, default=default,
                            help=f"{where}: {docs.get(f.name, '')}{shown}".rstrip(": "),
                            **_flag_type(hints[f.name]))
    return [f.name for f in chosen]


def given_flags(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The fields among ``names`` that were given on the command line (with
    ``defaults="suppress"``, absent flags are not in ``args``)."""
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


# ------------------------------------------------------------------ output folders


def _non_empty(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


@contextmanager
def output_folder(path: str | Path, flag: str = "--out") -> Iterator[Path]:
    """A new or empty folder for a command's results.

    Refuses an existing non-empty folder (or a file) up front, creates the folder at once
    (an unwritable place fails before hours of work), and, if the ``with`` body raises,
    removes the folder again when this call created it: a failed command leaves nothing.
    """
    path = Path(path)
    if _non_empty(path):
        raise ConfigError(f"{flag} {path} exists and is not empty", fix="choose a new or empty folder")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(f"no write permission for {path}")
    except OSError as exc:
        raise ConfigError(f"cannot create {flag} {path}: {exc}", fix="choose a writable folder") from exc
    try:
        yield path
    except BaseException:
        if created:
            shutil.rmtree(path, ignore_errors=True)
        raise


# ------------------------------------------------------------------ atomic writes


def _temporary_sibling(path: Path, kind: str) -> Path:
    """A hidden sibling ``.{kind}-{name}-{pid}-{random}``: a crash leaves only such names,
    which a later run may sweep (``.tmp-*``)."""
    return path.with_name(f".{kind}-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write`` on a temporary sibling opened for binary writing, flush and fsync
    it, then ``os.replace`` it onto ``path``: readers see the old file or the new one,
    never a part; on any error the sibling is removed."""
    path = Path(path)
    tmp = _temporary_sibling(path, "tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of ``text`` as UTF-8."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    """:func:`atomic_write_text` of ``json.dumps(data, sort_keys=True)``."""
    return atomic_write_text(path, json.dumps(data, indent=indent, sort_keys=True))


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb+") as f:
                os.fsync(f.fileno())


@contextmanager
def atomic_folder(target: str | Path, *, replace: bool = True, fsync: bool = True) -> Iterator[Path]:
    """Build a folder under a temporary sibling name, then swap it into ``target``.

    Yields the temporary folder to write into. On success its files are flushed to disk
    (``fsync``), an existing ``target`` is moved aside, the new folder renamed into place
    and the old one removed (restored if the rename fails). On any exception the
    temporary folder is removed and ``target`` is untouched. ``replace=False`` refuses to
    replace a ``target`` that became non-empty meanwhile (another process finished first).
    """
    target = Path(target)
    tmp = _temporary_sibling(target, "tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}",
                          fix="choose a folder in a writable place") from exc
    try:
        yield tmp
        if fsync:
            _fsync_tree(tmp)
        if not replace and _non_empty(target):
            raise ConfigError(f"{target} was filled by another process while this one was writing it",
                              fix="reuse it, or allow overwriting")
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is moved aside first, restored
    if the rename fails, removed after it succeeds."""
    old = None
    if target.exists() or target.is_symlink():
        old = _temporary_sibling(target, "old")
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
