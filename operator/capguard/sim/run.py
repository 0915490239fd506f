"""One run: a scenario, a mode and a seed in, a recorded timeline out. Deterministic."""

from __future__ import annotations

import collections
import random

from capguard.core import clock as clock_
from capguard.core import fleet as fleet_
from capguard.core import specs
from capguard.sim import manager as manager_
from capguard.sim import measures, scenarios
from capguard.sim import world as world_


def simulate(scenario: scenarios.Scenario, *, mode: manager_.Mode, seed: int) -> measures.Timeline:
    """Replay ``scenario`` on a virtual clock; the seed fixes every random draw.

    The manager steps on the tick and, between ticks, whenever the world changes (a
    scenario event, an engine's load or drain ends) or its last step said it is due (a
    token refills, a release re-plans): what the operator does, whose passes follow its
    watches and `StepResult.next_due`. The timeline samples on the tick only."""
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
    sample_at, again = 0.0, True
    while clock.now() <= scenario.duration:
        now = clock.now()
        while events and events[0].at <= now:
            world.apply(events.popleft(), now=now)
        world.advance(now=now)
        due = manager.step(now)
        converged = _converged(world.fleet(), manager=manager)
        if not converged:
            timeline.converged_step_at = None
        elif timeline.converged_step_at is None:
            timeline.converged_step_at = now
        if now >= sample_at:
            timeline.samples.append(_sample(world.fleet(), manager=manager, now=now))
            sample_at += scenario.tick_seconds
        # A step due at once (after a release) comes once; then time must move on.
        due = due if due is None or due > now or again else None
        changes = (events[0].at if events else None, world.next_change(now=now), due)
        step_at = min([sample_at, *(t for t in changes if t is not None)])
        again = step_at > now
        clock.advance(step_at - now)
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
    scenario = manager.world.scenario
    floors = scenario.floor_measures  # the allocation per sample costs: only when asked
    return measures.Sample(
        at=now,
        models=tuple(_model_sample(fleet, name=m, floors=floors) for m in scenario.model_names),
        out_of_service=fleet.out_of_service_engines,
        breaker=manager.breaker.state.value,
        backlog=len(manager.queue),
        pools=tuple(_pool_sample(fleet, pool=p) for p in scenario.pools) if floors else (),
    )


def _converged(fleet: fleet_.Fleet, *, manager: manager_.CapacityManager) -> bool:
    """What `measures.Timeline.converge_seconds` asks of a sample, at any step."""
    names = manager.world.scenario.model_names
    return not manager.queue and all(
        _model_sample(fleet, name=m, floors=False).settled for m in names)


def _pool_sample(fleet: fleet_.Fleet, *, pool: str) -> measures.PoolSample:
    labels = {scenarios.POOL_LABEL: pool}
    models = [m for m in fleet.models.values() if m.engine_selector.matches(labels)]
    shares = fleet.allocation.models
    return measures.PoolSample(
        pool=pool,
        usable=sum(e.units for e in fleet.engines.values()
                   if e.spec.pool == pool and e.phase is not specs.Phase.FAILED),
        floors=sum(m.floor_units for m in models),
        reported_short=sum(shares[m.name].floor_shortfall for m in models),
    )


def _model_sample(fleet: fleet_.Fleet, *, name: str, floors: bool) -> measures.ModelSample:
    model = fleet.models[name]
    serving = [fleet.engines[e] for e in fleet.serving_engines(name)]
    settled = not fleet.unavailable_engines(name) and all(manager_.fits(e, model) for e in serving)
    units = fleet.serving_units(name)
    return measures.ModelSample(
        serving=units,
        desired=model.replicas,
        floor=model.floor_units,
        settled=settled and units == model.replicas,
        covered=fleet.allocation.covered(name) if floors else None,
    )
