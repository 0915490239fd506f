"""An engine's agent vouches for it with heartbeats (issue 12): a silent engine counts as
out of service for every count, as a Node whose lease expired."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from capguard.core import drift, engines, fleet, planner, queue, specs

TIMEOUT = 40.0


def engine(name: str, *, heartbeat: float | None, model: str | None = "chat") -> specs.Engine:
    return specs.Engine(name, specs.EngineSpec(pool="p", model_ref=model),
                        phase=specs.Phase.SERVING if model else specs.Phase.IDLE, model=model,
                        since=0.0, heartbeat=heartbeat)


def test_an_engine_is_heard_until_its_heartbeat_is_older_than_the_timeout() -> None:
    fresh = engine("e", heartbeat=100.0)
    assert engines.heard(fresh, now=140.0, timeout=TIMEOUT) is fresh
    assert engines.heard(fresh, now=140.1, timeout=TIMEOUT).phase is specs.Phase.FAILED


def test_an_engine_no_agent_ever_spoke_for_is_silent_and_the_simulated_driver_needs_none() -> None:
    unheard = engine("e", heartbeat=None, model=None)
    assert engines.heard(unheard, now=0.0, timeout=TIMEOUT).phase is specs.Phase.FAILED
    assert engines.heard(unheard, now=0.0, timeout=None) is unheard


def test_a_silent_engine_serves_nothing_and_its_units_are_placed_elsewhere() -> None:
    model = specs.ModelSpec("chat", replicas=2, min_available=specs.IntOrPercent(1))
    heard = [engine("a", heartbeat=100.0), engine("b", heartbeat=50.0),
             engine("c", heartbeat=100.0, model=None)]
    seen = fleet.Fleet.of(engines=[engines.heard(e, now=100.0, timeout=TIMEOUT) for e in heard],
                          models=[model])
    found = drift.measure(seen, queue.ActionQueue(), 100.0).models["chat"]
    assert found.serving == 1  # b's agent has been silent for 50 s
    assert seen.engines["b"].phase is specs.Phase.FAILED and seen.engines["b"].silent
    assert dataclasses.replace(seen.engines["b"], phase=specs.Phase.SERVING,
                               silent=False) == heard[1]
    # The spare is bound in b's place; b keeps its binding (it may still serve: an agent
    # cut off from the API server is not a dead engine), so nothing drains it.
    assert planner.plan(seen) == [planner.Intent(planner.ActionType.ASSIGN, "c", "chat")]


def test_a_failed_engine_is_released_but_a_silent_one_is_not() -> None:
    model = specs.ModelSpec("chat", replicas=1)
    failed = dataclasses.replace(engine("a", heartbeat=100.0), phase=specs.Phase.FAILED)
    silent = engines.heard(engine("a", heartbeat=0.0), now=100.0, timeout=TIMEOUT)
    drains = [i for e in (failed, silent)
              for i in planner.plan(fleet.Fleet.of(engines=[e], models=[model]))
              if i.kind is planner.ActionType.DRAIN]
    assert drains == [planner.Intent(planner.ActionType.DRAIN, "a", None, "chat")]


def test_the_next_look_is_when_the_first_heard_engine_would_fall_silent() -> None:
    found = [engine("a", heartbeat=100.0), engine("b", heartbeat=90.0),
             engine("c", heartbeat=10.0), engine("d", heartbeat=None)]
    assert engines.hearing(found, now=100.0, timeout=TIMEOUT)[1] == 130.0


@st.composite
def hearing_histories(draw: st.DrawFn) -> tuple[dict[str, specs.Engine], list[Any]]:
    """Engines with status heartbeats, then steps: time passes, statuses are rewritten
    (heartbeats forward or back), engines come and go, Leases are renewed (forward or
    back), created and deleted."""
    beats = st.one_of(st.none(), st.floats(0, 200, allow_nan=False))
    names = [f"e{i}" for i in range(draw(st.integers(1, 8)))]
    fleet_ = {n: engine(n, heartbeat=draw(beats)) for n in names}
    steps = []
    for _ in range(draw(st.integers(1, 12))):
        steps.append((
            draw(st.floats(0, 30, allow_nan=False)),
            draw(st.dictionaries(st.sampled_from(names), st.one_of(st.none(), beats),
                                 max_size=3)),
            draw(st.dictionaries(st.sampled_from(names), st.one_of(st.none(), beats),
                                 max_size=4)),
        ))
    return fleet_, steps


@settings(max_examples=400, deadline=None)
@given(hearing_histories())
def test_hearing_again_from_the_changes_is_what_a_look_at_every_engine_finds(
    history: tuple[dict[str, specs.Engine], list[Any]],
) -> None:
    # Pass after pass, the engines silent are the same whether every engine is looked at
    # or only those that changed (and the Leases `renewal_changes_hearing` names), and
    # the next look comes no later than the first engine heard can fall silent.
    current, steps = dict(history[0]), history[1]
    leases: dict[str, float] = {}
    now = 100.0
    last = engines.hearing(current.values(), now=now, timeout=TIMEOUT, renewed=leases)
    for elapsed, statuses, renewals in steps:
        now += elapsed
        changed: dict[str, specs.Engine | None] = {}
        for name, beat in statuses.items():  # None: the engine is deleted
            current.pop(name, None)
            if beat is not None:
                current[name] = engine(name, heartbeat=beat)
            changed[name] = current.get(name)
        for name, renewed in renewals.items():  # None: the Lease is deleted
            before = leases.pop(name, None)
            if renewed is not None:
                leases[name] = renewed
            if engines.renewal_changes_hearing(before, renewed, silent=name in last[0]):
                changed[name] = current.get(name)
        full = engines.hearing(current.values(), now=now, timeout=TIMEOUT, renewed=leases)
        again = engines.hearing_again(last, changed, now=now, timeout=TIMEOUT,
                                      renewed=leases)
        if again is None:
            assert last[1] is not None and now >= last[1]
            again = full
        assert again[0] == full[0]
        if full[1] is not None:  # a look no later than needed (maybe sooner)
            assert again[1] is not None and again[1] <= full[1]
        last = again
