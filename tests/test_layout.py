"""The package's import graph has no cycle, counting imports inside functions too.

A cycle hidden behind a function-level import still ties two modules into one idea: neither can be read, tested or
moved alone, and the import order decides which half is half-initialised.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "recbase"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The ``recbase`` modules a module imports anywhere in its body (``from a import b`` counts ``a.b`` when ``b``
    is a module, else ``a``)."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:   # `import recbase.a.b` of a missing name: its package
                target = target.rpartition(".")[0]
            if target and (target == PACKAGE or target.startswith(PACKAGE + ".")) and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted((ROOT / PACKAGE).rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imported_modules(ast.parse(f.read_text(encoding="utf-8"), str(f)), module_name(f),
                                             f.name == "__init__.py", modules)
            for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or None; depth-first with three colours."""
    state: dict[str, int] = {}   # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_names_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_function_level_and_relative_imports_count(tmp_path):
    source = "def f():\n    from recbase.data import shards\n    from .evalsets import X\n"
    modules = {"recbase", "recbase.data", "recbase.data.shards", "recbase.data.evalsets", "recbase.data.codes"}
    found = imported_modules(ast.parse(source), "recbase.data.codes", False, modules)
    assert found == {"recbase.data.shards", "recbase.data.evalsets"}


def test_recbase_has_no_import_cycle():
    graph = import_graph()
    assert "recbase.data.shards" in graph and graph["recbase.data.loader"], "the graph missed the package's modules"
    cycle = find_cycle(graph)
    if cycle:
        pytest.fail("import cycle in recbase/: " + " -> ".join(cycle))
