"""An engine's agent vouches for it with heartbeats (issue 12): a silent engine counts as
out of service for every count, as a Node whose lease expired."""

from __future__ import annotations

import dataclasses

from capguard.core import drift, engines, fleet, queue, specs

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


def test_a_silent_engine_serves_nothing_and_is_released_from_its_model() -> None:
    model = specs.ModelSpec("chat", replicas=2, min_available=specs.IntOrPercent(1))
    heard = [engine("a", heartbeat=100.0), engine("b", heartbeat=50.0),
             engine("c", heartbeat=100.0, model=None)]
    seen = fleet.Fleet.of(engines=[engines.heard(e, now=100.0, timeout=TIMEOUT) for e in heard],
                          models=[model])
    found = drift.measure(seen, queue.ActionQueue(), 100.0).models["chat"]
    assert found.serving == 1  # b's agent has been silent for 50 s
    assert seen.engines["b"].phase is specs.Phase.FAILED
    assert dataclasses.replace(seen.engines["b"], phase=specs.Phase.SERVING) == heard[1]


def test_the_next_look_is_when_the_first_heard_engine_would_fall_silent() -> None:
    found = [engine("a", heartbeat=100.0), engine("b", heartbeat=90.0),
             engine("c", heartbeat=10.0), engine("d", heartbeat=None)]
    assert engines.heartbeat_expiry(found, now=100.0, timeout=TIMEOUT) == 130.0
