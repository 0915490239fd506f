"""One run: a scenario, a mode and a seed in, a recorded timeline out. Deterministic."""

from __future__ import annotations

import collections
import random

from capguard.core import clock as clock_
from capguard.core import fleet as fleet_
from capguard.sim import manager as manager_
from capguard.sim import measures, scenarios
from capguard.sim import world as world_


def simulate(scenario: scenarios.Scenario, *, mode: manager_.Mode, seed: int) -> measures.Timeline:
    """Replay ``scenario`` on a virtual clock; the seed fixes every random draw."""
    rng = random.Random(seed)
    events = collections.deque(scenario.timeline(rng))
    world = world_.World(scenario=scenario, rng=rng)
    timeline = measures.Timeline(
        scenario=scenario,
        mode=mode.value,
        seed=seed,
        disruption_budget=disruption_budget(world.fleet()),
    )
    manager = manager_.CapacityManager(world=world, mode=mode, timeline=timeline)
    clock = clock_.FakeClock()
    while clock.now() <= scenario.duration:
        now = clock.now()
        while events and events[0].at <= now:
            world.apply(events.popleft(), now=now)
        world.advance(now=now)
        manager.tick(now)
        timeline.samples.append(_sample(world.fleet(), manager=manager, now=now))
        clock.advance(scenario.tick_seconds)
    return timeline


def disruption_budget(fleet: fleet_.Fleet) -> int:
    """Engines the guard lets be out of service at once, fleet-wide.

    Each model may have ``maxUnavailable`` engines out (loading, draining, failed), so
    the fleet-wide budget is their sum, taken at the start of the run.
    """
    return sum(fleet.max_unavailable_engines(m) for m in sorted(fleet.models))


def _sample(
    fleet: fleet_.Fleet, *, manager: manager_.CapacityManager, now: float
) -> measures.Sample:
    return measures.Sample(
        at=now,
        models=tuple(_model_sample(fleet, name=m) for m in manager.world.scenario.model_names),
        out_of_service=fleet.out_of_service_engines,
        breaker=manager.breaker.state.value,
        backlog=len(manager.queue),
    )


def _model_sample(fleet: fleet_.Fleet, *, name: str) -> measures.ModelSample:
    model = fleet.models[name]
    serving = [fleet.engines[e] for e in fleet.serving_engines(name)]
    settled = not fleet.unavailable_engines(name) and all(manager_.fits(e, model) for e in serving)
    units = fleet.serving_units(name)
    return measures.ModelSample(
        serving=units,
        desired=model.replicas,
        floor=model.floor_units,
        settled=settled and units == model.replicas,
    )
