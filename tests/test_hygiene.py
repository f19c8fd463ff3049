"""Library hygiene (STYLE.md), checked on the source.

The import chain of DESIGN.md holds: every circuitfind module imports only from its own level or below.

    cli → serve / sweep → discover → report → evaluate / prune / inspect → methods → engine
        → graph / task / metrics → models → types / errors

Imports inside functions count too: a lazy import still ties a lower layer to a higher one.
And the library prints nothing: only the command line and the demo write to stdout (the rest logs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import circuitfind

ROOT = Path(circuitfind.__file__).parent

# level of each top-level module or package of circuitfind (0 is the top of the chain)
LEVELS = {
    "__init__": 0, "cli": 0, "demo": 0,
    "sweep": 1, "serve": 1,  # (the explorer: over inspect and report's drawing; reads sweep stores)
    "discover": 2,
    "report": 3, "interop": 3,
    "evaluate": 4, "prune": 4, "inspect": 4, "uncertainty": 4, "plan": 4,  # (bootstrap intervals: evaluate and discover read them)
    "methods": 5, "arguments": 5,  # the public calls' argument rules: beside methods, which score_edges lives in
    "engine": 6,
    "graph": 7, "task": 7, "metrics": 7, "circuit": 7, "tasks": 7, "spans": 7, "files": 7, "mib_tasks": 7,
    "models": 8, "zoo_models": 8,
    "types": 9, "errors": 9,
}

# (importer, imported) pairs that go up the chain on purpose, each with its reason
ALLOWED_UP = {
    ("models", "graph"): "CircuitModel.graph, the public `model.graph`, and the zoo's edge counts build a Graph "
                         "from the config, lazily",
}


def _imports(path: Path) -> set[str]:
    """Top-level circuitfind units a module imports (at any depth of its code)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "circuitfind"]
        for name in names:
            parts = name.split(".")
            if parts[0] == "circuitfind":
                found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


def _unit(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def test_every_module_has_a_level():
    units = {_unit(p) for p in ROOT.rglob("*.py")}
    assert units <= set(LEVELS), f"add these to LEVELS (and to DESIGN.md's chain): {sorted(units - set(LEVELS))}"


def test_no_module_imports_up_the_chain():
    up = []
    for path in sorted(ROOT.rglob("*.py")):
        unit = _unit(path)
        for other in _imports(path) - {unit}:
            if LEVELS[other] < LEVELS[unit] and (unit, other) not in ALLOWED_UP:
                up.append(f"{path.relative_to(ROOT.parent)} imports circuitfind.{other}")
    assert not up, "imports up the chain of DESIGN.md:\n" + "\n".join(up)


def test_the_check_sees_an_import_up_the_chain(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from circuitfind.engine.walk import Walk\n    import circuitfind.sweep\n")
    assert _imports(module) == {"engine", "sweep"}


PRINTERS = {"cli", "demo"}  # the programs (the command line is a package); everything else is library


def _prints(path: Path) -> list[int]:
    return [node.lineno for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]


def test_the_library_prints_nothing():
    found = [f"{path.relative_to(ROOT.parent)}:{line}" for path in sorted(ROOT.rglob("*.py"))
             if _unit(path) not in PRINTERS for line in _prints(path)]
    assert not found, "print in the library (log instead):\n" + "\n".join(found)
