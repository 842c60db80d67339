"""The import contract (ARCHITECTURE.md), held by reading every module's imports.

Function-level imports count: a lazy import is still a dependency. The layers, outermost
first: cli -> session -> engine -> core. core imports only core and the pure part of the
standard library (no I/O, no clock, no randomness: an allowlist); adapters (everything
else) never import the engine, the session or the command line; no import cycles; no
module over ~400 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "reconciler"
MAX_LINES = 400
LAYERS = ("reconciler.cli", "reconciler.session", "reconciler.engine", "reconciler.core")
CORE_STDLIB = frozenset({"__future__", "collections", "dataclasses", "enum", "fractions", "functools", "itertools", "json", "math", "operator", "re", "typing"})
"""What the pure core may use of the standard library: no os, time, random, subprocess, pathlib..."""


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """(imported name, line) for every import in the module, absolute, wherever it stands."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_pkg else 0)
                base = ".".join(parts[:keep] + ([base] if base else []))
            out.append((base, node.lineno))
            out += [(f"{base}.{a.name}", node.lineno) for a in node.names]
    return out


def _layer(module: str) -> int | None:
    for i, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return i
    return None


GRAPH: dict[str, set[str]] = {}
EXTERNAL: dict[str, set[tuple[str, int]]] = {}
for _m, _p in MODULES.items():
    GRAPH[_m] = set()
    EXTERNAL[_m] = set()
    for _name, _line in _imports(_m, _p):
        if _name.split(".")[0] == "reconciler":
            target = _resolve(_name)
            if target and target not in (_m, "reconciler"):
                GRAPH[_m].add(target)
        else:
            EXTERNAL[_m].add((_name.split(".")[0], _line))


def core_violations(graph: dict[str, set[str]], external: dict[str, set[tuple[str, int]]]) -> list[str]:
    bad = []
    for m in graph:
        if _layer(m) != LAYERS.index("reconciler.core"):
            continue
        bad += [f"{m}:{line} imports {name}" for name, line in external[m] if name not in CORE_STDLIB]
        bad += [f"{m} imports {t}" for t in graph[m] if _layer(t) != LAYERS.index("reconciler.core")]
    return bad


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """cli -> session -> engine -> core; adapters (no layer) never import cli, session or engine."""
    bad = []
    for m, targets in graph.items():
        mine = _layer(m)
        for t in targets:
            theirs = _layer(t)
            if theirs is None or theirs == LAYERS.index("reconciler.core"):
                continue  # anyone may use an adapter or the core (core itself is checked apart)
            if mine is None or theirs < mine:
                bad.append(f"{m} imports {t}")
    return bad


def test_core_imports_only_pure_standard_library_and_core() -> None:
    assert not core_violations(GRAPH, EXTERNAL)


def test_layers_import_inwards_only() -> None:
    assert not layer_violations(GRAPH)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    assert not cycles(GRAPH)


def test_no_module_over_the_size_limit() -> None:
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not big, f"one job per module, ~{MAX_LINES} lines at most: {big}"


def test_the_contract_sees_a_violation() -> None:
    """The checks above catch what they claim to: run on a made-up house with one of each fault."""
    graph = {
        "reconciler.core.planner": {"reconciler.core.model", "reconciler.ledger"},  # core reaching an adapter
        "reconciler.core.model": set(),
        "reconciler.ledger": {"reconciler.engine"},  # an adapter reaching up
        "reconciler.engine": {"reconciler.session"},  # a layer reaching outwards
        "reconciler.session": {"reconciler.engine"},
    }
    external = {m: set() for m in graph} | {"reconciler.core.model": {("time", 3), ("pydantic", 4), ("dataclasses", 5)}}
    assert sorted(core_violations(graph, external)) == [
        "reconciler.core.model:3 imports time",
        "reconciler.core.model:4 imports pydantic",
        "reconciler.core.planner imports reconciler.ledger",
    ]
    assert sorted(layer_violations(graph)) == ["reconciler.engine imports reconciler.session", "reconciler.ledger imports reconciler.engine"]
    assert cycles(graph) == [["reconciler.engine", "reconciler.session"]]
    # and the real graph is read from real imports, function-level ones included
    assert GRAPH["reconciler.engine"] >= {"reconciler.core.planner", "reconciler.engine.observe"}
    assert "reconciler.results.publish" in GRAPH["reconciler.session.passes"]  # imported inside a function
    assert any(name == "pydantic" for name, _ in EXTERNAL["reconciler.spec.models"])
