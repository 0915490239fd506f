"""The layering contract of STYLE.md, checked: arrows point down, never up.

    cli -> handlers -> kube/core,  sim -> core,  localcluster -> (nothing of capguard)
    cli -> serving -> kube/core

A module may import only the wings its row allows. The check reads the source with
`ast`, so it also catches imports inside functions (the lazy ones cli.py uses).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "operator" / "capguard"

# wing -> the other capguard wings it may import
ALLOWED: dict[str, set[str]] = {
    "core": {"durations"},  # a leaf: the one duration format
    "defaults": {"core"},
    "sim": {"core"},
    "localcluster": set(),
    "kube": {"core", "defaults", "metrics"},
    "metrics": set(),
    "handlers": {"core", "defaults", "kube", "metrics"},
    "operator": {"core", "defaults", "kube", "handlers", "metrics"},
    "demo": {"core", "defaults", "sim", "kube", "localcluster", "metrics"},
    "status": {"core", "kube"},
    "durations": set(),
    "commandline": {"durations"},
    # The engines' side: agents, model servers, the gateway and the load run next to
    # engines, not in the operator: never its handlers, the simulator or the demo.
    "serving": {"core", "defaults", "kube", "commandline", "durations", "metrics"},
}


def _wing(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _capguard_imports(tree: ast.AST) -> set[str]:
    wings: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "capguard":
                names = [f"capguard.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "capguard" and len(parts) > 1:
                wings.add(parts[1])
    return wings


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if _wing(p) in ALLOWED)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    wing = _wing(path)
    imported = _capguard_imports(ast.parse(path.read_text(), filename=str(path)))
    upward = imported - ALLOWED[wing] - {wing}
    assert not upward, f"capguard.{wing} must not import {sorted(upward)} (see STYLE.md)"


def _top_level_imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


IO_MODULES = {"asyncio", "aiohttp", "kopf", "time", "socket", "threading", "http", "urllib"}


@pytest.mark.parametrize(
    "path", sorted((PACKAGE / "core").rglob("*.py")), ids=lambda p: p.name
)
def test_core_has_no_io_or_wall_clock(path: Path) -> None:
    imported = _top_level_imports(ast.parse(path.read_text(), filename=str(path)))
    assert not imported & IO_MODULES, (
        f"core/{path.name} imports {sorted(imported & IO_MODULES)}: "
        "the core takes an injected clock and does no I/O"
    )


def test_the_contract_checker_catches_an_upward_import() -> None:
    tree = ast.parse("from capguard.handlers import engines\nimport capguard.kube.api\n")
    assert _capguard_imports(tree) == {"handlers", "kube"}


# -- one pipeline: the composition, the phase machine and the governing rule live in core

# Calls that compose a pass or decide for a breaker: only `capguard.core` makes them.
COMPOSING_CALLS = {
    "triage", "enqueue", "release_plan", "settle", "record_probe", "record_outcome",
    "start_probe", "cancel_probe", "governs", "breakers_for",
}
# Modules that drive the core from outside: the operator, the simulator, the test world.
DRIVERS = [p for p in PACKAGE.rglob("*.py") if _wing(p) not in {"core", "localcluster"}]
DRIVERS.append(PACKAGE.parents[1] / "tests" / "core" / "world.py")


def _composing_calls(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            owner = node.func.value
            if name in COMPOSING_CALLS:
                found.add(name)
            elif name == "plan" and isinstance(owner, ast.Name) and owner.id == "planner":
                found.add("planner.plan")
            elif name in {"step", "Transition"} and isinstance(owner, ast.Name) and (
                owner.id == "engines"
            ):
                found.add(f"engines.{name}")
    return found


@pytest.mark.parametrize("path", sorted(DRIVERS), ids=lambda p: p.name)
def test_only_the_core_composes_a_pass(path: Path) -> None:
    """The pass (`pipeline.Pipeline.step`) and the governing rule (`BreakerSpec.governs`)
    are the core's; a driver of the core runs them and never re-composes them."""
    calls = _composing_calls(ast.parse(path.read_text(), filename=str(path)))
    calls -= {"engines.step"}  # running the phase machine is what drivers do
    assert not calls, f"{path.name} composes what capguard.core.pipeline composes: {calls}"


def test_the_phase_machine_is_run_not_rewritten() -> None:
    """Every driver of engines moves them with `capguard.core.engines.step`."""
    for relative in ("handlers/driver.py", "sim/physics.py", "../../tests/core/world.py"):
        path = (PACKAGE / relative).resolve()
        calls = _composing_calls(ast.parse(path.read_text(), filename=str(path)))
        assert "engines.step" in calls, path.name
        assert "engines.Transition" not in calls, f"{path.name} builds its own transitions"


def test_the_composition_checker_catches_a_second_copy() -> None:
    tree = ast.parse("decisions = self.gate.triage(q, fleet, machines, now)\n"
                     "intents = planner.plan(view)\nm.record_probe(True, now)\n")
    assert _composing_calls(tree) == {"triage", "planner.plan", "record_probe"}
