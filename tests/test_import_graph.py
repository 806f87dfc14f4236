"""The package's import graph: ``meet`` never imports ``app``, and its imports have no
cycle, not even through a lazy import inside a function (imports under ``if
TYPE_CHECKING:`` are annotations only and do not count). ``python
tests/test_import_graph.py`` prints the graph."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool) -> set[str]:
    """Names of the ``meet``/``app`` modules a file imports (``from a.b import c`` counts
    ``a.b.c`` when that is a module, else ``a.b``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(_walk_runtime(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                where = ROOT / Path(*candidate.split("."))
                is_module = where.with_suffix(".py").exists() or (where / "__init__.py").exists()
                found.add(candidate if is_module else node.module)
    return {name for name in found if name.split(".")[0] in ("meet", "app")}


def _walk_runtime(node: ast.AST):
    """``ast.walk`` without the bodies of ``if TYPE_CHECKING:`` blocks."""
    yield node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
            continue
        yield from _walk_runtime(child)


def graph(package: str, top_level_only: bool = True) -> dict[str, set[str]]:
    return {module_name(path): imports(path, top_level_only) for path in sorted((ROOT / package).rglob("*.py"))}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by depth-first search (each reported once per entry point)."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_meet_never_imports_app():
    offenders = {module: sorted(t for t in targets if t.split(".")[0] == "app")
                 for module, targets in graph("meet", top_level_only=False).items()}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_meet_has_no_import_cycle():
    assert cycles(graph("meet")) == []
    assert cycles(graph("meet", top_level_only=False)) == []  # lazy imports included


def test_stage_two_lives_in_one_package():
    """The search stages import each other only inside ``meet.search``, and nothing outside
    it reaches for the old flat modules."""
    edges = graph("meet", top_level_only=False)
    old = {"meet.filters", "meet.retrieval", "meet.index", "meet.index_store", "meet.reciprocal",
           "meet.traces", "meet.reweighting", "meet.dense_pq"}
    assert not old & set(edges)
    assert not any(old & targets for targets in edges.values())


if __name__ == "__main__":
    for module, targets in graph(sys.argv[1] if len(sys.argv) > 1 else "meet").items():
        print(f"{module} -> {', '.join(sorted(targets)) or '-'}")
