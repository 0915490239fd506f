"""When the simulated manager steps: on the tick, and in between whenever the world
changes or the core said a step is due, as the operator's passes follow its watches and
`StepResult.next_due`. The timeline still samples on the tick."""

from __future__ import annotations

import itertools

from capguard.sim import scenarios

from .runs import timeline


def test_the_release_re_plans_at_once_and_samples_stay_on_the_tick() -> None:
    run = timeline("march-4", "guarded", 0)
    tick = scenarios.MARCH_4.tick_seconds
    assert all(s.at % tick == 0 for s in run.samples)
    after = [e for e in run.executed if e.at >= scenarios.MARCH_4.release_at]
    # The release step refuses the backlog and plans nothing; the probes run in the
    # step due at the same instant, not a tick later.
    assert after[0].at == scenarios.MARCH_4.release_at


def test_takes_run_when_a_replacement_serves_or_a_token_comes_not_on_the_next_tick() -> None:
    run = timeline("march-4", "guarded", 0)
    tick = scenarios.MARCH_4.tick_seconds
    takes = [e.at for e in run.executed if e.from_model is not None]
    # The first takes wait for the probes' loads, which end between ticks.
    assert takes[0] % tick != 0
    # And a take held for its token runs when the token comes: between ticks, a whole
    # token period (30 s at 2 a minute) after the take before it.
    period = 60.0 / scenarios.MARCH_4.global_rate.per_minute
    paced = [b for a, b in itertools.pairwise(takes)
             if b % tick != 0 and abs(b - a - period) < 1e-6]
    assert paced


def test_convergence_at_the_step_is_the_end_of_the_last_drain_and_within_a_tick() -> None:
    run = timeline("march-4", "guarded", 0)
    scenario = scenarios.MARCH_4
    sampled, stepped = run.converge_seconds(), run.converge_step_seconds()
    assert sampled is not None and stepped is not None
    assert sampled - scenario.tick_seconds < stepped <= sampled
    # The last action is a drain: the fleet converges the moment it ends, between ticks.
    last = run.executed[-1]
    assert last.kind == "Drain"
    assert stepped == round(last.at + scenario.physics.drain_seconds - scenario.release_at, 3)
