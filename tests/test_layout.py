"""The layout the README describes, checked on the source: no import cycles, the packages import
only downwards, and modules stay small.

The import graph is read from the AST of every module under ``src/personavec`` — every
``import``, including those inside functions and under ``TYPE_CHECKING`` (a cycle there is a
cycle in the design even when Python happens to resolve it at runtime).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "personavec"
MAX_LINES = 400
SIZE_EXCEPTIONS: dict[str, str] = {}
"""Modules allowed over ``MAX_LINES`` (path under src/personavec → why); an entry that is no
longer over the limit fails the test, so the list cannot go stale."""
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "runs": ("pipeline", "training", "screening", "studies", "serve", "cli"),
    "screening": ("studies", "cli", "pipeline", "training"),
    "training": ("studies", "cli", "pipeline", "screening"),
    "pipeline": ("studies", "cli", "training", "screening"),
    "studies": ("cli",),
}
"""Package → the packages it must not import (the layers: cli > studies > pipeline, training,
screening > runs > core and the rest)."""


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The personavec module ``name`` refers to (a name inside a module → the module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name) if name.startswith("personavec") else None
            if target is not None:
                yield target


def import_graph() -> dict[str, set[str]]:
    """Module → the personavec modules it imports."""
    return {mod: set(_imports(path)) - {mod} for mod, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_downwards(package: str) -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if _package(module) == package
        for target in targets
        if _package(target) in FORBIDDEN[package]
    )
    assert wrong == []


def test_modules_stay_small() -> None:
    sizes = {
        str(path.relative_to(PACKAGE)): len(path.read_text(encoding="utf-8").splitlines())
        for path in MODULES.values()
    }
    over = {name: n for name, n in sizes.items() if n > MAX_LINES and name not in SIZE_EXCEPTIONS}
    assert over == {}
    assert all(sizes.get(name, 0) > MAX_LINES for name in SIZE_EXCEPTIONS)  # no stale entries
