"""Engine physics: the core's engine phase machine on the simulator's clock.

This plays the engine driver with `capguard.core.engines` (the machine the operator's
simulated driver runs too): it reads an engine's spec (``modelRef``, ``revision``) and
moves its status towards it. What the simulator adds is chance: each load takes its
own time, drawn when it starts, and may fail. Every status change is a write, so it
gets a new resourceVersion: a plan made before the change is stale afterwards.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from capguard.core import engines, specs


@dataclasses.dataclass(frozen=True, kw_only=True)
class Physics:
    """How long things take and how often they go wrong, in virtual seconds."""

    load_seconds: float = engines.LOAD_SECONDS
    # A load takes load_seconds * (1 +- load_jitter), drawn uniformly from the seeded RNG.
    load_jitter: float = 0.1
    drain_seconds: float = 15.0
    # The chance that a load ends in Failed instead of Serving.
    load_failure_rate: float = 0.0
    # A Failed engine comes back Idle after this long (and reloads if still bound).
    repair_seconds: float = 300.0


@dataclasses.dataclass(frozen=True)
class SimEngine:
    """An engine as the API server holds it, plus how long its current load takes."""

    engine: specs.Engine
    load_seconds: float = engines.LOAD_SECONDS

    def timing(self, base: engines.Timing) -> engines.Timing:
        if self.engine.phase is not specs.Phase.LOADING:
            return base  # only a load has a time of its own
        return dataclasses.replace(base, load=self.load_seconds)


def timing_of(physics: Physics) -> engines.Timing:
    """The machine's timing for these physics (a load's own time replaces `load`)."""
    return engines.Timing(
        load=physics.load_seconds, drain=physics.drain_seconds, repair=physics.repair_seconds
    )


def advance(
    current: SimEngine,
    *,
    now: float,
    physics: Physics,
    rng: random.Random,
    stamp: Callable[[], str],
    timing: engines.Timing | None = None,
) -> SimEngine:
    """Every transition due at ``now`` (a drain may end and a load start in one tick).
    ``timing`` is `timing_of(physics)`, passed in by a caller that advances many."""
    if engines.settled(current.engine):
        return current
    base = timing if timing is not None else timing_of(physics)

    def load_fails() -> bool:
        rate = physics.load_failure_rate
        return rate > 0 and rng.random() < rate

    for _ in range(engines.MAX_MOVES_AT_ONCE):  # the bound keeps a bug finite
        move = engines.step(
            current.engine, timing=current.timing(base), now=now, load_fails=load_fails
        ).transition
        if move is None:
            return current
        load = current.load_seconds
        if move.phase is specs.Phase.LOADING:
            load = load_time(physics=physics, rng=rng)  # drawn as the load starts
        engine = engines.moved(current.engine, move, now=now, resource_version=stamp())
        current = SimEngine(engine, load)
    return current


def fail(current: SimEngine, *, now: float, stamp: Callable[[], str]) -> SimEngine:
    """A hardware or process failure: the engine stops serving until repaired."""
    return dataclasses.replace(
        current, engine=engines.fail(current.engine, now=now, resource_version=stamp())
    )


def load_time(*, physics: Physics, rng: random.Random) -> float:
    return physics.load_seconds * (1 + rng.uniform(-physics.load_jitter, physics.load_jitter))
