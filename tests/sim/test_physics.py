"""Engine physics and the world's writes: phases take time, every write is a new version."""

from __future__ import annotations

import dataclasses
import random

from capguard.core import specs
from capguard.sim import physics, scenarios, world

PHYSICS = physics.Physics(load_seconds=100.0, load_jitter=0.1, drain_seconds=10.0)


class Versions:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return str(self.n)


def idle(*, model_ref: str | None = None) -> physics.SimEngine:
    spec = specs.EngineSpec(pool="p", model_ref=model_ref, revision="r1" if model_ref else None)
    return physics.SimEngine(specs.Engine(name="e", spec=spec, resource_version="0"))


def step(engine: physics.SimEngine, now: float, stamp: Versions) -> physics.SimEngine:
    return physics.advance(engine, now=now, physics=PHYSICS, rng=random.Random(0), stamp=stamp)


def test_a_bound_idle_engine_loads_for_the_load_time_then_serves() -> None:
    stamp = Versions()
    loading = step(idle(model_ref="m"), 0.0, stamp)
    assert (loading.engine.phase, loading.engine.model) == (specs.Phase.LOADING, "m")
    assert 90.0 <= loading.load_seconds <= 110.0
    ends_at = loading.engine.since + loading.load_seconds
    assert step(loading, ends_at - 1, stamp) is loading  # nothing due yet
    serving = step(loading, ends_at, stamp)
    assert serving.engine.serves("m")


def test_rebinding_a_serving_engine_drains_it_first() -> None:
    stamp = Versions()
    serving = step(step(idle(model_ref="m"), 0.0, stamp), 200.0, stamp)
    spec = dataclasses.replace(serving.engine.spec, model_ref="n", revision="r1")
    moved = dataclasses.replace(serving, engine=dataclasses.replace(serving.engine, spec=spec))
    draining = step(moved, 200.0, stamp)
    assert (draining.engine.phase, draining.engine.model) == (specs.Phase.DRAINING, "m")
    reloading = step(draining, 210.0, stamp)  # drained and idle: starts loading n at once
    assert (reloading.engine.phase, reloading.engine.model) == (specs.Phase.LOADING, "n")


def test_every_status_change_is_a_new_resource_version() -> None:
    stamp = Versions()
    seen = set()
    engine = idle(model_ref="m")
    for now in (0.0, 200.0):
        engine = step(engine, now, stamp)
        seen.add(engine.engine.resource_version)
    assert len(seen) == 2


def test_a_failed_engine_is_repaired_idle_and_reloads_if_still_bound() -> None:
    stamp = Versions()
    serving = step(step(idle(model_ref="m"), 0.0, stamp), 200.0, stamp)
    failed = physics.fail(serving, now=300.0, stamp=stamp)
    assert failed.engine.phase is specs.Phase.FAILED
    back = step(failed, 300.0 + PHYSICS.repair_seconds, stamp)
    assert back.engine.phase is specs.Phase.LOADING


def test_a_write_with_an_old_resource_version_loses() -> None:
    w = world.World(scenario=scenarios.MARCH_4, rng=random.Random(0))
    name, engine = next(iter(w.engines.items()))
    version = engine.engine.resource_version
    assert w.bind(engine=name, model=None, action_id="a1", expect_version="stale") is (
        world.Write.CONFLICT
    )
    assert w.bind(engine=name, model=None, action_id="a1", expect_version=version) is (
        world.Write.DONE
    )
    assert w.engines[name].engine.resource_version != version
    assert w.bind(engine=name, model=None, action_id="a1", expect_version=None) is (
        world.Write.DUPLICATE
    )


def test_the_world_starts_settled_with_spares_idle() -> None:
    w = world.World(scenario=scenarios.MARCH_4, rng=random.Random(0))
    fleet = w.fleet()
    assert all(fleet.serving_units(m) == 7 for m in scenarios.MARCH_4.model_names)
    idle_engines = [e for e in fleet.engines.values() if e.spec.model_ref is None]
    assert len(idle_engines) == 8 and fleet.out_of_service_engines == 0


def test_the_world_says_when_an_engine_moves_next() -> None:
    """What a watch would show next: the end of a load, then of a drain; nothing when
    every engine is settled."""
    w = world.World(scenario=scenarios.MARCH_4, rng=random.Random(0))
    assert w.next_change(now=0.0) is None
    spare = next(n for n, e in sorted(w.engines.items()) if e.engine.spec.model_ref is None)
    assert w.bind(engine=spare, model="phi-3", action_id="a1", expect_version=None).name == "DONE"
    w.advance(now=10.0)
    loads_until = 10.0 + w.engines[spare].load_seconds
    assert w.next_change(now=10.0) == loads_until
    w.advance(now=loads_until)
    assert w.engines[spare].engine.serves("phi-3") and w.next_change(now=loads_until) is None
    w.bind(engine=spare, model=None, action_id="a2", expect_version=None)
    w.advance(now=loads_until)
    assert w.next_change(now=loads_until) == loads_until + scenarios.MARCH_4.physics.drain_seconds
