"""The shape of the code, as the design fixes it: no import cycle, layers apart, cli on top.

Every import counts, at module level or inside a function: an import deferred into a
function still ties the two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

# The package of each top-level folder in the saiki namespace.
LAYERS = ("core", "feature_repo", "batch", "speed", "serving", "simulator", "ops", "cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("saiki", *parts))


def _modules() -> dict[str, Path]:
    found = {}
    for layer in LAYERS:
        for path in (ROOT / layer).rglob("*.py"):
            found[_module_name(path)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The saiki modules a file imports, resolved to the modules that exist."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.startswith("saiki.") and (target := resolve(name)) is not None:
                targets.add(target)
    return targets


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def _layer(module: str) -> str:
    return module.split(".")[1]


def test_there_is_no_import_cycle(graph: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert cycles == []


def test_the_check_finds_a_cycle_when_there_is_one() -> None:
    """The walk above is not vacuous: it sees imports inside functions, and the layers."""
    modules = _modules()
    assert "saiki.speed.flink_sink" in _imports(ROOT / "speed" / "job.py", modules)
    assert len(modules) > 60


def test_batch_speed_and_serving_never_import_each_other(graph: dict[str, set[str]]) -> None:
    runtimes = {"batch", "speed", "serving"}
    crossing = sorted(
        (m, t)
        for m, targets in graph.items()
        for t in targets
        if _layer(m) in runtimes and _layer(t) in runtimes and _layer(m) != _layer(t)
    )
    assert crossing == []


def test_only_cli_imports_ops_and_nothing_imports_cli(graph: dict[str, set[str]]) -> None:
    wrong = sorted(
        (m, t)
        for m, targets in graph.items()
        for t in targets
        if (_layer(t) == "cli" and _layer(m) != "cli")
        or (_layer(t) == "ops" and _layer(m) not in {"ops", "cli"})
    )
    assert wrong == []


def test_shared_packages_never_import_a_layer(graph: dict[str, set[str]]) -> None:
    below = {"core": {"core"}, "feature_repo": {"core", "feature_repo"}}
    wrong = sorted(
        (m, t)
        for m, targets in graph.items()
        for t in targets
        if _layer(m) in below and _layer(t) not in below[_layer(m)]
    )
    assert wrong == []


def test_every_module_imports_through_the_saiki_namespace() -> None:
    bare = []
    for layer in LAYERS:
        for path in (ROOT / layer).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                bare += [(path.name, n) for n in names if n.split(".")[0] in LAYERS]
    assert bare == []
