"""The incident replay: a deterministic fleet simulator driving the real core.

``replay`` runs a scenario in one or both modes; ``scenario_named`` turns what a person
typed into a scenario, or raises ``InputError`` saying what to type instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Final

from capguard.sim import manager, measures, run, scenarios

MAX_SEED: Final = 2**32 - 1
MODES: Final = {
    "naive": (manager.Mode.NAIVE,),
    "guarded": (manager.Mode.GUARDED,),
    "both": (manager.Mode.NAIVE, manager.Mode.GUARDED),
}
LOAD_SECONDS: Final = (1.0, 3600.0)


class InputError(ValueError):
    """Input a person can fix; the message says what to change."""


def scenario_named(name: str, *, load_seconds: float | None = None) -> scenarios.Scenario:
    found = scenarios.SCENARIOS.get(name)
    if found is None:
        known = ", ".join(scenarios.SCENARIOS)
        raise InputError(f"unknown scenario {name!r}; use one of: {known}")
    if load_seconds is None:
        return found
    low, high = LOAD_SECONDS
    if not low <= load_seconds <= high:
        raise InputError(f"load time {load_seconds:g}s is out of range; use {low:g} to {high:g}")
    return dataclasses.replace(
        found, physics=dataclasses.replace(found.physics, load_seconds=load_seconds)
    )


def modes_named(name: str) -> tuple[manager.Mode, ...]:
    found = MODES.get(name)
    if found is None:
        raise InputError(f"unknown mode {name!r}; use one of: {', '.join(MODES)}")
    return found


def replay(
    scenario: scenarios.Scenario, *, modes: Sequence[manager.Mode], seed: int
) -> list[measures.Timeline]:
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed {seed} is out of range; use 0 to {MAX_SEED}")
    return [run.simulate(scenario, mode=mode, seed=seed) for mode in modes]


__all__ = ["MODES", "InputError", "modes_named", "replay", "scenario_named"]
