"""The seed incident, replayed: naive reproduces it, guarded prevents it, for every seed."""

from __future__ import annotations

import pytest

from capguard.sim import measures, scenarios

from .runs import SEEDS, summary, timeline


@pytest.mark.parametrize("seed", SEEDS)
def test_naive_reproduces_the_incident(seed: int) -> None:
    naive = summary("march-4", "naive", seed)
    assert naive["min_serving_ratio"] < 0.6
    # Many engines out at once: far more than the guard would ever allow.
    assert naive["max_engines_out_of_service"] > 4 * naive["disruption_budget"]
    assert naive["floor_breaking_actions"] > 0
    assert naive["backlog_at_release"] > naive["disruption_budget"]


@pytest.mark.parametrize("seed", SEEDS)
def test_guarded_keeps_every_model_at_or_above_its_floor(seed: int) -> None:
    guarded = summary("march-4", "guarded", seed)
    assert guarded["floor_ratio"] == 0.9
    assert guarded["min_serving_ratio"] >= guarded["floor_ratio"]
    assert guarded["minutes_below_floor"] == 0
    assert guarded["stale_actions_executed"] == 0
    assert guarded["floor_breaking_actions"] == 0
    assert guarded["max_engines_out_of_service"] <= guarded["disruption_budget"]


@pytest.mark.parametrize("seed", SEEDS)
def test_guarded_refuses_the_post_pause_backlog_as_one_batch(seed: int) -> None:
    guarded = summary("march-4", "guarded", seed)
    scenario = scenarios.MARCH_4
    # The backlog the pause left is larger than the breaker lets through after a long
    # pause, so the release meets the post-pause guard (invariant 3), not the fleet.
    assert guarded["backlog_at_release"] > scenario.max_batch_after_pause
    assert guarded["refused_batches"] == 1


@pytest.mark.parametrize("seed", SEEDS)
def test_guarded_converges_within_1_06x_what_the_rate_limits_allow(seed: int) -> None:
    run = timeline("march-4", "guarded", seed)
    converged = run.converge_seconds()
    # Every model got a new revision during the pause: 7 engines each must leave once.
    assert sum(run.needed_after_release.values()) == 8 * 7
    assert converged is not None
    # 1.038-1.053 measured (bench/bench_release.py); the bound leaves out the HalfOpen
    # probes, which alone cost about one more load (about 1.03).
    assert run.converge_lower_bound() <= converged <= 1.06 * run.converge_lower_bound()


def test_the_lower_bound_is_the_make_before_break_lead_plus_tokens_plus_a_drain() -> None:
    scenario = scenarios.MARCH_4  # breaker bucket 2/min, burst 2; load 120 s +-10%; drain 15 s
    run = measures.Timeline(
        scenario=scenario, mode="guarded", seed=0, disruption_budget=8,
        needed_after_release={"a": 10, "b": 6},
    )  # fmt: skip
    # 16 actions, 2 from the burst, 14 more at one per 30 s; after the shortest load (108 s).
    assert run.converge_lower_bound() == pytest.approx(108 + 14 * 30 + 15)


def test_a_per_model_bucket_can_be_the_slowest() -> None:
    scenario = scenarios.Scenario(
        name="t", summary="", model_rate=scenarios.Rate(per_minute=0.5, burst=1)
    )
    run = measures.Timeline(
        scenario=scenario, mode="guarded", seed=0, disruption_budget=8,
        needed_after_release={"a": 5, "b": 1},
    )  # fmt: skip
    # Model a: 4 tokens after its burst at one per 120 s beats the breaker's 4 at 30 s.
    assert run.converge_lower_bound() == pytest.approx(108 + 4 * 120 + 15)


def test_nothing_needed_means_converged_at_once() -> None:
    run = measures.Timeline(scenario=scenarios.MARCH_4, mode="guarded", seed=0, disruption_budget=8)
    assert run.converge_lower_bound() == 0.0
