"""Engine physics: how an engine moves through its phases on the simulator's clock.

This plays the engine driver: it reads an engine's spec (``modelRef``, ``revision``)
and moves its status towards it, Idle -> Loading -> Serving, and Serving -> Draining ->
Idle when the spec asks for something else. Every status change is a write, so it
gets a new resourceVersion: a plan made before the change is stale afterwards.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from typing import Final

from capguard.core import specs

NEVER: Final = math.inf


@dataclasses.dataclass(frozen=True, kw_only=True)
class Physics:
    """How long things take and how often they go wrong, in virtual seconds."""

    load_seconds: float = 120.0
    # A load takes load_seconds * (1 +- load_jitter), drawn uniformly from the seeded RNG.
    load_jitter: float = 0.1
    drain_seconds: float = 15.0
    # The chance that a load ends in Failed instead of Serving.
    load_failure_rate: float = 0.0
    # A Failed engine comes back Idle after this long (and reloads if still bound).
    repair_seconds: float = 300.0


@dataclasses.dataclass(frozen=True)
class SimEngine:
    """An engine as the API server holds it, plus when its current phase ends."""

    engine: specs.Engine
    phase_ends_at: float = NEVER


@dataclasses.dataclass(frozen=True)
class _Move:
    phase: specs.Phase
    model: str | None
    revision: str | None
    ends_at: float


def advance(
    current: SimEngine,
    *,
    now: float,
    physics: Physics,
    rng: random.Random,
    stamp: Callable[[], str],
) -> SimEngine:
    """Every transition due at ``now`` (a drain may end and a load start in one tick)."""
    for _ in range(4):  # at most Draining -> Idle -> Loading; the bound keeps a bug finite
        move = _next_move(current, now=now, physics=physics, rng=rng)
        if move is None:
            return current
        current = _apply(current, move=move, now=now, stamp=stamp)
    return current


def fail(
    current: SimEngine, *, now: float, physics: Physics, stamp: Callable[[], str]
) -> SimEngine:
    """A hardware or process failure: the engine stops serving until repaired."""
    e = current.engine
    move = _Move(specs.Phase.FAILED, e.model, e.revision, now + physics.repair_seconds)
    return _apply(current, move=move, now=now, stamp=stamp)


def load_time(*, physics: Physics, rng: random.Random) -> float:
    return physics.load_seconds * (1 + rng.uniform(-physics.load_jitter, physics.load_jitter))


def _next_move(
    current: SimEngine, *, now: float, physics: Physics, rng: random.Random
) -> _Move | None:
    e = current.engine
    wanted = (e.spec.model_ref, e.spec.revision)
    busy_with_other = (
        e.phase in (specs.Phase.SERVING, specs.Phase.LOADING)
        and (
            e.model,
            e.revision,
        )
        != wanted
    )
    if busy_with_other:
        # The driver reacts to a new binding at once: the old model loses the engine now.
        return _Move(specs.Phase.DRAINING, e.model, e.revision, now + physics.drain_seconds)
    if e.phase is specs.Phase.IDLE:
        if not e.spec.model_ref:
            return None
        ends = now + load_time(physics=physics, rng=rng)
        return _Move(specs.Phase.LOADING, e.spec.model_ref, e.spec.revision, ends)
    if now < current.phase_ends_at:
        return None
    if e.phase in (specs.Phase.DRAINING, specs.Phase.FAILED):
        return _Move(specs.Phase.IDLE, None, None, NEVER)
    if e.phase is specs.Phase.LOADING:
        failed = physics.load_failure_rate > 0 and rng.random() < physics.load_failure_rate
        if failed:
            return _Move(specs.Phase.FAILED, e.model, e.revision, now + physics.repair_seconds)
        return _Move(specs.Phase.SERVING, e.model, e.revision, NEVER)
    return None


def _apply(current: SimEngine, *, move: _Move, now: float, stamp: Callable[[], str]) -> SimEngine:
    engine = dataclasses.replace(
        current.engine,
        phase=move.phase,
        model=move.model,
        revision=move.revision,
        since=now,
        resource_version=stamp(),
    )
    return SimEngine(engine, move.ends_at)
