"""The import direction of docs/design.md ("Layers"): every import points down, none goes round.

Reads every module's imports with ``ast`` (function-level ones included: a lazy import is still a
dependency), so the check needs nothing importable and cannot be fooled by import order.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

# Lowest first; a module may import its own layer and the ones before it. Modules of one layer
# named in PEERS may not import each other.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "tte_recsys.artifacts",
            "tte_recsys.config",
            "tte_recsys.distributed",
            "tte_recsys.progress",
            "tte_recsys.vectors",
            "tte_recsys.retrieval",
        ),
    ),
    ("data", ("tte_recsys.data", "tte_recsys.runs")),
    ("losses", ("tte_recsys.losses",)),
    ("tte", ("tte_recsys.tte",)),
    ("models", ("tte_recsys.models",)),
    ("training", ("tte_recsys.training",)),
    ("evaluation | serving", ("tte_recsys.evaluation", "tte_recsys.serving")),
    ("reasoner_training", ("tte_recsys.reasoner_training",)),
    ("experiment", ("tte_recsys.experiment",)),
    ("pipelines", ("pipelines",)),
]
PEERS = ("tte_recsys.evaluation", "tte_recsys.serving")


def _modules() -> dict[str, Path]:
    out = {}
    for top in ("tte_recsys", "pipelines"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _owner(name: str, prefixes: tuple[str, ...]) -> str | None:
    return next((p for p in prefixes if name == p or name.startswith(p + ".")), None)


def _layer(name: str) -> tuple[int, str]:
    if name == "tte_recsys":  # the top package (its version)
        return 0, name
    for rank, (_, prefixes) in enumerate(LAYERS):
        if (p := _owner(name, prefixes)) is not None:
            return rank, p
    raise AssertionError(f"{name}: in no layer of tests/test_layers.py (and docs/design.md); place it")


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from pkg import mod`` resolves to ``pkg.mod``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m in known and m != name}


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that point up, between peers, or from one pipeline to another."""
    bad = []
    for name, deps in graph.items():
        rank, owner = _layer(name)
        for dep in deps:
            dep_rank, dep_owner = _layer(dep)
            if dep_rank > rank:
                bad.append(f"{name} ({LAYERS[rank][0]}) imports {dep} ({LAYERS[dep_rank][0]})")
            elif dep_rank == rank and owner in PEERS and dep_owner in PEERS and owner != dep_owner:
                bad.append(f"{name} imports its peer {dep}")
            elif owner == "pipelines" and dep_owner == "pipelines" and dep != "pipelines":
                bad.append(f"pipeline {name} imports pipeline {dep}")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Module-level import cycles (a module reaching its own package's ``__init__`` aside)."""
    state: dict[str, int] = {}
    found: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if node.startswith(dep + "."):
                continue
            if state.get(dep) == 1:
                found.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def test_every_module_is_in_a_layer(graph: dict[str, set[str]]) -> None:
    for name in graph:
        _layer(name)


def test_every_import_points_down(graph: dict[str, set[str]]) -> None:
    assert not (bad := violations(graph)), "\n".join(bad)


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    assert not (found := cycles(graph)), "\n".join(" -> ".join(c) for c in found)


def test_the_checks_find_what_they_look_for() -> None:
    """An upward import, a peer import, a pipeline importing a pipeline and a cycle are each found."""
    g = {
        "tte_recsys.data.x": {"tte_recsys.serving.y"},
        "tte_recsys.serving.y": {"tte_recsys.evaluation.z", "tte_recsys.data.x"},
        "tte_recsys.evaluation.z": set(),
        "pipelines.a": {"pipelines.b"},
        "pipelines.b": set(),
    }
    assert violations(g) == [
        "pipeline pipelines.a imports pipeline pipelines.b",
        "tte_recsys.data.x (data) imports tte_recsys.serving.y (evaluation | serving)",
        "tte_recsys.serving.y imports its peer tte_recsys.evaluation.z",
    ]
    assert cycles(g) == [["tte_recsys.data.x", "tte_recsys.serving.y", "tte_recsys.data.x"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
