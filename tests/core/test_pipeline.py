"""The composed step by example: what one `Pipeline.step` returns, and the probe life cycle.

The property tests (test_invariants.py) attack the same step through the world; these
pin the cases that once went wrong in a copy of it.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from capguard.core import breaker, engines, fleet, gate, pipeline, specs

from .core_fleets import breaker as breaker_spec
from .core_fleets import serving_fleet

TIMING = engines.Timing(load=60.0, drain=10.0)
S = breaker.BreakerState


def drive(found: fleet.Fleet, *, now: float) -> fleet.Fleet:
    """Every engine as far as the phase machine takes it at ``now``."""
    for engine in list(found.engines.values()):
        for _ in range(engines.MAX_MOVES_AT_ONCE):
            move = engines.step(engine, timing=TIMING, now=now).transition
            if move is None:
                break
            engine = engines.moved(engine, move, now=now, resource_version=f"{now:g}")
        found = found.with_engine(engine)
    return found


def execute(found: fleet.Fleet, result: pipeline.StepResult) -> fleet.Fleet:
    for execution in result.executions:
        action = execution.action
        found = found.bind(
            action.intent.engine,
            model=action.intent.model,
            action_id=action.id,
            resource_version=f"w{result.now:g}",
        )
    return found


def settled(found: fleet.Fleet, *, now: float) -> fleet.Fleet:
    return dataclasses.replace(
        found, engines={n: dataclasses.replace(e, since=now) for n, e in found.engines.items()}
    )


def with_breaker(found: fleet.Fleet, **spec: object) -> fleet.Fleet:
    return found.with_breaker(breaker_spec("cb", **spec))


def without_model(found: fleet.Fleet, name: str) -> fleet.Fleet:
    models = {n: m for n, m in found.models.items() if n != name}
    return dataclasses.replace(found, models=models)


def test_an_orphan_drain_under_half_open_is_a_probe_and_the_breaker_closes() -> None:
    """A breaker that selects every model governs the drain of a deleted model's engines:
    the drain takes the probe slot, its outcome is settled, and the breaker closes.
    (A second copy of the governing rule once said "nobody" here: the slot stayed taken
    and, with one probe, the breaker held everything it governs for good.)"""
    found = settled(serving_fleet({"chat": 2, "code": 1}), now=0.0)
    found = with_breaker(found, open=True, halfOpenProbes=1, pauseThreshold="1h")
    core = pipeline.Pipeline()
    core.step(pipeline.Observed(found), 0.0)
    found = without_model(found, "code")  # its engine code-000 is an orphan now
    held = core.step(pipeline.Observed(found), 10.0)
    assert [d.reason for d in held.decisions] == [gate.Reason.BREAKER_OPEN]
    found = with_breaker(found, open=False, halfOpenProbes=1, pauseThreshold="1h")
    release = core.step(pipeline.Observed(found), 20.0)
    assert [(t.before, t.after) for t in release.transitions] == [(S.OPEN, S.HALF_OPEN)]
    (probe,) = release.executions
    assert probe.action.intent == dataclasses.replace(probe.action.intent, model=None)
    assert probe.probes == ("cb",) and release.breakers["cb"].probes_in_flight == 1
    found = execute(found, release)
    now, closed = 20.0, None
    while closed is None and now < 100.0:
        now += 5.0
        found = drive(found, now=now)
        result = core.step(pipeline.Observed(found), now)
        closed = next((t for t in result.transitions if t.after is S.CLOSED), None)
    assert closed is not None, "the breaker never closed after its orphan-drain probe"
    assert closed.before is S.HALF_OPEN and result.breakers["cb"].probes_in_flight == 0


def test_a_probe_whose_write_failed_gives_its_slot_back() -> None:
    found = settled(serving_fleet({"chat": 1}, spares=2), now=0.0)
    found = found.with_model(dataclasses.replace(found.models["chat"], replicas=3))
    found = with_breaker(found, open=True, halfOpenProbes=1, pauseThreshold="1h")
    core = pipeline.Pipeline()
    core.step(pipeline.Observed(found), 0.0)
    found = with_breaker(found, open=False, halfOpenProbes=1, pauseThreshold="1h")
    release = core.step(pipeline.Observed(found), 10.0)
    (probe,) = release.executions  # one slot: the other assign waits
    assert [d.reason for d in release.holds] == [gate.Reason.HALF_OPEN_PROBE_LIMIT]
    core.written(probe.action.id, engine=probe.action.intent.engine, ok=False)  # a 409
    assert core.machines["cb"].probes_in_flight == core.probes_in_flight("cb") == 0
    retry = core.step(pipeline.Observed(found), 11.0)
    assert len(retry.executions) == 1  # the slot is free again


def test_the_release_step_meets_the_backlog_as_the_pause_left_it() -> None:
    """No fresh plan is coalesced over the backlog before the post-pause guard sees it."""
    found = settled(serving_fleet({"chat": 4, "code": 4}, spares=8, maxUnavailable=4), now=0.0)
    found = with_breaker(found, open=True, maxBatchAfterPause=1, pauseThreshold="60s")
    core = pipeline.Pipeline()
    core.step(pipeline.Observed(found), 0.0)
    for name in ("chat", "code"):
        found = found.with_model(dataclasses.replace(found.models[name], revision="v2"))
    paused = core.step(pipeline.Observed(found), 100.0)
    assert len(paused.enqueued) == 8 and paused.release_plans["cb"].size == 8
    found = with_breaker(found, open=False, maxBatchAfterPause=1, pauseThreshold="60s")
    release = core.step(pipeline.Observed(found), 600.0)
    assert release.enqueued == () and release.executions == ()
    (batch,) = release.refused_batches.values()
    assert batch.size == 8 and batch.batch == paused.release_plans["cb"].batch
    assert {d.reason for d in release.decisions} == {gate.Reason.POST_PAUSE_BATCH}
    assert release.next_due == 600.0  # it planned nothing: the re-plan is due at once
    after = core.step(pipeline.Observed(found), 600.0)  # re-planned from the cluster
    assert len(after.enqueued) == 8 and after.last_refused_batches["cb"] == batch
    assert after.next_due != 600.0  # only the release step asks for another at once


def test_a_step_is_due_when_a_held_take_gets_its_token() -> None:
    """The rate limit's next token is a moment the step decides differently: it is in
    next_due, so a caller that steps then (the operator, the simulator) loses no pass."""
    found = settled(serving_fleet({"chat": 6}, minAvailable=1, maxUnavailable=6), now=0.0)
    found = found.with_model(dataclasses.replace(found.models["chat"], replicas=2))
    found = with_breaker(found, rateLimit={"actionsPerMinute": 4, "burst": 1})
    uncapped = gate.GateConfig(fleet_max_unavailable_percent=100)
    core = pipeline.Pipeline(pipeline.Config(gate=uncapped))
    first = core.step(pipeline.Observed(found), 0.0)
    assert len(first.executions) == 1
    assert first.next_due == pytest.approx(15.0)  # 4 a minute: the next token in 15 s
    assert core.step(pipeline.Observed(found), 14.0).executions == ()
    assert len(core.step(pipeline.Observed(found), 15.0).executions) == 1


def test_a_restarted_pipeline_continues_the_pause_from_status() -> None:
    found = settled(serving_fleet({"chat": 2}), now=0.0)
    found = with_breaker(found, open=True)
    first = pipeline.Pipeline()
    first.step(pipeline.Observed(found), 0.0)
    result = first.step(pipeline.Observed(found), 500.0)
    status = breaker.saved_status(result.breakers["cb"], now=500.0)
    found = with_breaker(found, open=False)
    second = pipeline.Pipeline()  # the operator died; a new one reads the status
    release = second.step(pipeline.Observed(found, saved_breakers={"cb": status}), 900.0)
    (transition,) = release.transitions
    assert (transition.before, transition.after) == (S.OPEN, S.HALF_OPEN)
    assert transition.pause_seconds == 900.0
    assert "after a pause of 900s" in transition.message


def test_an_unreadable_breaker_stops_every_action() -> None:
    found = settled(serving_fleet({"chat": 1}, spares=1), now=0.0)
    found = found.with_model(dataclasses.replace(found.models["chat"], replicas=2))
    observed = pipeline.Observed(found, unreadable_breakers=frozenset({"typo"}))
    result = pipeline.Pipeline().step(observed, 0.0)
    assert result.decisions == () and result.executions == ()
    assert len(result.enqueued) == 1  # planned, and waits for the breaker to be readable


def test_an_outcome_reaches_every_breaker_that_governed_the_action() -> None:
    """Closed breakers learn failures too: `maxActionFailureRate` is measured on them."""
    found = settled(serving_fleet({"chat": 1}, spares=1), now=0.0)
    found = found.with_model(dataclasses.replace(found.models["chat"], replicas=2))
    core = pipeline.Pipeline()
    found = with_breaker(found)
    result = core.step(pipeline.Observed(found), 0.0)
    (assign,) = result.executions
    found = execute(found, result)
    engine = found.engines[assign.action.intent.engine]
    found = found.with_engine(engines.fail(engine, now=1.0, resource_version="f"))
    core.step(pipeline.Observed(found), 2.0)
    assert core.machines["cb"].failure_rate() == 0.0  # one outcome: below the minimum
    assert list(core.machines["cb"]._outcomes) == [(2.0, False)]
    assert specs.Phase.FAILED is found.engines[engine.name].phase


def test_a_write_that_failed_on_an_unwell_api_holds_its_engine_on_the_backoff() -> None:
    """Failed writes are retried on the capped exponential schedule, not every step; a
    Retry-After longer than the step is honoured; a success clears the engine."""
    found = settled(serving_fleet({"chat": 1}, spares=1), now=0.0)
    found = found.with_model(dataclasses.replace(found.models["chat"], replicas=2))
    core = pipeline.Pipeline()
    sent = []
    now = 0.0
    for _ in range(40):  # a minute of one-second passes against an API answering 503
        result = core.step(pipeline.Observed(found), now)
        for execution in result.executions:
            sent.append(now)
            core.written(execution.action.id, engine=execution.action.intent.engine,
                         ok=False, now=now, transient=True)
        now += 1.0
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert len(sent) <= 7 and gaps == sorted(gaps), sent  # 1-ish, 2-ish, 4-ish, ... apart
    waiting = core.step(pipeline.Observed(found), now)
    assert [d.reason for d in waiting.decisions] == [gate.Reason.BACKOFF]
    assert waiting.next_due is not None and waiting.next_due > now
    # The server asks for 30 s: the engine waits that long, whatever the schedule says.
    core = pipeline.Pipeline()
    (first,) = core.step(pipeline.Observed(found), 0.0).executions
    core.written(first.action.id, engine="spare-000", ok=False, now=0.0, transient=True,
                 retry_after=30.0)
    assert core.step(pipeline.Observed(found), 29.0).executions == ()
    (retry,) = core.step(pipeline.Observed(found), 30.0).executions
    core.written(retry.action.id, engine="spare-000", ok=True, now=30.0)
    assert core._backoff == {}


def test_a_conflict_is_re_planned_at_once_not_backed_off() -> None:
    found = settled(serving_fleet({"chat": 1}, spares=1), now=0.0)
    found = found.with_model(dataclasses.replace(found.models["chat"], replicas=2))
    core = pipeline.Pipeline()
    (first,) = core.step(pipeline.Observed(found), 0.0).executions
    core.written(first.action.id, engine="spare-000", ok=False, now=0.0)  # a 409
    assert len(core.step(pipeline.Observed(found), 1.0).executions) == 1


def test_an_unhandled_fleet_queues_at_most_twice_the_step_limit_of_assigns() -> None:
    """A cold start's 10,000 assigns are not all stamped and triaged in one step: the
    step executes its limit, queues at most twice that, and the next plans the rest."""
    from .core_fleets import engine, model

    idle = [engine(f"e{i:03d}", pool="a") for i in range(120)]
    found = fleet.Fleet.of(engines=idle, models=[model(f"m{m}", replicas=12) for m in range(10)])
    core = pipeline.Pipeline(pipeline.Config(max_assigns_per_step=10))
    step = core.step(pipeline.Observed(found), now=0.0)
    assert len(step.executions) == 10
    assert len(step.enqueued) == 20
    assert all(not e.action.intent.disruptive for e in step.executions)
    unlimited = pipeline.Pipeline(pipeline.Config()).step(pipeline.Observed(found), now=0.0)
    assert len(unlimited.enqueued) == 120


def test_a_step_may_lower_the_assign_limit_but_never_raise_it() -> None:
    """`Observed.max_assigns` (the operator's slow start) applies when below the config's."""
    from .core_fleets import engine, model

    idle = [engine(f"e{i:03d}", pool="a") for i in range(120)]
    found = fleet.Fleet.of(engines=idle, models=[model(f"m{m}", replicas=12) for m in range(10)])
    for configured, asked, executed, enqueued in ((10, 3, 3, 6), (10, 50, 10, 20),
                                                  (None, 5, 5, 10), (None, None, 120, 120)):
        core = pipeline.Pipeline(pipeline.Config(max_assigns_per_step=configured))
        step = core.step(pipeline.Observed(found, max_assigns=asked), now=0.0)
        assert (len(step.executions), len(step.enqueued)) == (executed, enqueued)
