"""Same scenario, mode and seed: the same report, byte for byte."""

from __future__ import annotations

import json

import pytest

from capguard.sim import manager, run, scenarios


@pytest.mark.parametrize("name", scenarios.SCENARIOS)
def test_a_seed_replays_exactly(name: str) -> None:
    scenario = scenarios.SCENARIOS[name]
    for mode in manager.Mode:
        first = run.simulate(scenario, mode=mode, seed=11)
        again = run.simulate(scenario, mode=mode, seed=11)
        assert json.dumps(first.summary()) == json.dumps(again.summary())
        assert first.samples == again.samples and first.executed == again.executed


def test_different_seeds_differ() -> None:
    one = run.simulate(scenarios.MARCH_4, mode=manager.Mode.GUARDED, seed=1)
    two = run.simulate(scenarios.MARCH_4, mode=manager.Mode.GUARDED, seed=2)
    assert one.executed != two.executed
