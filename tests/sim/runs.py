"""Runs shared by the simulator tests: each (scenario, mode, seed) is simulated once."""

from __future__ import annotations

import functools

from capguard.sim import manager, measures, run, scenarios

SEEDS = range(20)


@functools.cache
def timeline(scenario: str, mode: str, seed: int) -> measures.Timeline:
    return run.simulate(scenarios.SCENARIOS[scenario], mode=manager.Mode(mode), seed=seed)


@functools.cache
def summary(scenario: str, mode: str, seed: int) -> dict[str, object]:
    return timeline(scenario, mode, seed).summary()
