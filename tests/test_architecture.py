"""The import contract (ARCHITECTURE.md), held by reading every module's imports.

Function-level imports count: a lazy import is still a dependency. The layers, outermost
first: cli -> session -> engine -> core. core imports only the standard library and core;
adapters (everything else) never import the engine, the session or the command line; no
import cycles; no module over ~400 lines.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "reconciler"
MAX_LINES = 400
LAYERS = ("reconciler.cli", "reconciler.session", "reconciler.engine", "reconciler.core")


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


def test_core_imports_only_the_standard_library_and_core() -> None:
    bad = []
    for m in MODULES:
        if _layer(m) != LAYERS.index("reconciler.core"):
            continue
        bad += [f"{m}:{line} imports {name}" for name, line in EXTERNAL[m] if name not in sys.stdlib_module_names and name != "__future__"]
        bad += [f"{m} imports {t}" for t in GRAPH[m] if _layer(t) != LAYERS.index("reconciler.core")]
    assert not bad, bad


def test_layers_import_inwards_only() -> None:
    """cli -> session -> engine -> core; adapters (no layer) never import cli, session or engine."""
    bad = []
    for m, targets in GRAPH.items():
        mine = _layer(m)
        for t in targets:
            theirs = _layer(t)
            if theirs is None or theirs == LAYERS.index("reconciler.core"):
                continue  # anyone may use an adapter or the core (core itself is checked above)
            if mine is None or theirs < mine:
                bad.append(f"{m} imports {t}")
    assert not bad, bad


def test_no_import_cycles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
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
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_no_module_over_the_size_limit() -> None:
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not big, f"one job per module, ~{MAX_LINES} lines at most: {big}"


def test_the_contract_sees_a_violation() -> None:
    """The checks above read real imports: a made-up core module importing pydantic is caught."""
    fake = PKG / "core" / "model.py"
    imports = _imports("reconciler.core.model", fake)
    assert any(name == "reconciler.core.states" for name, _ in imports)
    assert GRAPH["reconciler.engine"] >= {"reconciler.core.planner", "reconciler.ledger"}
    assert ("pydantic", 0) not in EXTERNAL["reconciler.core.model"]
    assert any(name == "pydantic" for name, _ in EXTERNAL["reconciler.spec.models"])
