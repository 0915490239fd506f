"""Every other scenario attacks another invariant; guarded still never runs a stale or
floor-breaking action."""

from __future__ import annotations

import dataclasses
import random

import pytest

from capguard.sim import scenarios

from .runs import SEEDS, summary

OTHERS = [name for name in scenarios.SCENARIOS if name != "march-4"]


def test_the_registry_has_the_incident_and_at_least_two_more() -> None:
    assert "march-4" in scenarios.SCENARIOS
    assert len(OTHERS) >= 2


@pytest.mark.parametrize("name", OTHERS)
@pytest.mark.parametrize("seed", SEEDS)
def test_guarded_runs_nothing_stale_and_breaks_no_floor(name: str, seed: int) -> None:
    guarded = summary(name, "guarded", seed)
    assert guarded["stale_actions_executed"] == 0
    assert guarded["floor_breaking_actions"] == 0


@pytest.mark.parametrize("name", OTHERS)
def test_naive_does_worse_than_guarded_somewhere(name: str) -> None:
    naive = [summary(name, "naive", seed) for seed in range(5)]
    guarded = [summary(name, "guarded", seed) for seed in range(5)]
    assert sum(int(s["stale_actions_executed"]) for s in naive) > 0
    assert max(s["max_engines_out_of_service"] for s in naive) > max(
        s["max_engines_out_of_service"] for s in guarded
    )


def test_march_4_is_the_incident_as_described() -> None:
    s = scenarios.MARCH_4
    assert (s.models, s.engine_count, s.physics.load_seconds, s.floor_ratio) == (8, 64, 120.0, 0.9)
    (pause,) = s.pauses
    assert pause.closes_at - pause.opens_at == 20 * 60
    events = s.timeline(random.Random(0))
    # Desired capacity constant, no failures: only routine refreshes during the pause.
    assert not [e for e in events if isinstance(e, scenarios.Demand | scenarios.Failures)]
    refreshes = [e for e in events if isinstance(e, scenarios.Refresh)]
    assert len(refreshes) == 8 and all(pause.opens_at <= e.at < pause.closes_at for e in refreshes)


@pytest.mark.parametrize("scenario", scenarios.SCENARIOS.values(), ids=lambda s: s.name)
def test_scenarios_are_frozen_and_their_pauses_fit_the_run(scenario: scenarios.Scenario) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        scenario.models = 1  # type: ignore[misc]
    assert scenario.summary
    assert all(0 < p.opens_at < p.closes_at < scenario.duration for p in scenario.pauses)


def test_the_seed_decides_the_moments() -> None:
    s = scenarios.FAILURES_DURING_PAUSE
    assert s.timeline(random.Random(1)) == s.timeline(random.Random(1))
    assert s.timeline(random.Random(1)) != s.timeline(random.Random(2))
