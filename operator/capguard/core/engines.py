"""The engine phase machine: how an engine moves towards what its spec asks, in time.

    Idle -> Loading(model) -> Serving -> Draining -> Idle,   Loading -> Failed -> Idle

One machine for every driver of engines: the operator's simulated driver writes what
it returns to /status, the simulator and the property tests' world apply it to their
values. It is level-triggered and since-based: an engine's spec, its phase and the time
already spent in that phase (`status.since`) say everything, so a restarted driver
picks up a half-finished load where it was. `step` is pure; randomness (a load that
fails) comes in as a function the caller owns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from capguard.core import specs

LOAD_SECONDS: Final = 120.0  # the one default load time (the operator's flag and the sim's)
# How long an engine agent's silence is tolerated before its engine counts as out of
# service: four missed heartbeats at the agent's default 10 s, as a Node's 40 s grace.
HEARTBEAT_TIMEOUT: Final = 40.0
# Draining -> Idle -> Loading is the longest run of moves one moment allows.
MAX_MOVES_AT_ONCE: Final = 4


@dataclasses.dataclass(frozen=True)
class Timing:
    """How long the timed phases last, in seconds."""

    load: float = LOAD_SECONDS
    drain: float | None = None  # default: a quarter of the load time
    repair: float | None = None  # a Failed engine is back to Idle after this; default: load

    @property
    def draining(self) -> float:
        return self.drain if self.drain is not None else self.load / 4

    @property
    def repairing(self) -> float:
        return self.repair if self.repair is not None else self.load


@dataclasses.dataclass(frozen=True)
class Transition:
    phase: specs.Phase
    model: str | None
    revision: str | None
    message: str


@dataclasses.dataclass(frozen=True)
class Step:
    """What happens to one engine now: a transition, and/or when to look again."""

    transition: Transition | None
    due: float | None  # absolute time the current phase ends; None when it waits on spec


def never_fails() -> bool:
    return False


def settled(engine: specs.Engine) -> bool:
    """No move is ever due without a spec change: serving what it is bound to, or idle
    and unbound (a driver of thousands of engines skips these cheaply)."""
    if engine.since is None:
        return False
    if engine.phase is specs.Phase.SERVING:
        return engine.spec.model_ref == engine.model and engine.spec.revision == engine.revision
    return engine.phase is specs.Phase.IDLE and not engine.spec.model_ref


def step(
    engine: specs.Engine,
    *,
    timing: Timing,
    now: float,
    load_fails: Callable[[], bool] = never_fails,
) -> Step:
    """The next move of ``engine`` at ``now``; ``load_fails`` is asked once per finished load."""
    if settled(engine):
        return Step(None, None)
    bound = engine.spec.model_ref
    phase = engine.phase
    since = engine.since
    if since is None:
        phase = specs.Phase.IDLE  # never driven: whatever a half-written status says
    if phase is specs.Phase.IDLE:
        if bound:
            return Step(
                Transition(specs.Phase.LOADING, bound, engine.spec.revision, f"loading {bound}"),
                None,
            )
        if since is None:
            return Step(Transition(specs.Phase.IDLE, None, None, "engine registered"), None)
        return Step(None, None)
    assert since is not None  # an undriven engine was handled as Idle above
    rebound = bound != engine.model or engine.spec.revision != engine.revision
    if phase is specs.Phase.LOADING:
        if rebound:
            # The model it was loading loses the engine now.
            message = f"load of {engine.model} abandoned: rebound"
            return Step(
                Transition(specs.Phase.DRAINING, engine.model, engine.revision, message), None
            )
        due = since + timing.load
        if now < due:
            return Step(None, due)
        if load_fails():
            message = f"failed to load {engine.model}"
            failed = Transition(specs.Phase.FAILED, engine.model, engine.revision, message)
            return Step(failed, None)
        message = f"serving {engine.model}"
        return Step(Transition(specs.Phase.SERVING, engine.model, engine.revision, message), None)
    if phase is specs.Phase.SERVING:
        if rebound:
            message = f"draining {engine.model}"
            return Step(
                Transition(specs.Phase.DRAINING, engine.model, engine.revision, message), None
            )
        return Step(None, None)
    if phase is specs.Phase.DRAINING:
        due = since + timing.draining
        if now < due:
            return Step(None, due)
        return Step(Transition(specs.Phase.IDLE, None, None, f"drained {engine.model}"), None)
    # FAILED: repaired after a while, then loads again if it is still bound.
    due = since + timing.repairing
    if now < due:
        return Step(None, due)
    return Step(Transition(specs.Phase.IDLE, None, None, "repaired"), None)


def moved(
    engine: specs.Engine, transition: Transition, *, now: float, resource_version: str
) -> specs.Engine:
    """The engine after ``transition`` was written at ``now``."""
    return dataclasses.replace(
        engine,
        phase=transition.phase,
        model=transition.model,
        revision=transition.revision,
        since=now,
        resource_version=resource_version,
    )


def fail(engine: specs.Engine, *, now: float, resource_version: str) -> specs.Engine:
    """A hardware or process failure: the engine stops serving until repaired."""
    failure = Transition(specs.Phase.FAILED, engine.model, engine.revision, "engine failed")
    return moved(engine, failure, now=now, resource_version=resource_version)


def latest(*beats: float | None) -> float | None:
    """The latest of some heartbeats (epoch seconds), None if there is none."""
    known = [b for b in beats if b is not None]
    return max(known) if known else None


def last_heard(engine: specs.Engine, renewed: float | None = None) -> float | None:
    """When the engine's agent last said it is alive: the later of its status's heartbeat
    and ``renewed`` (its Lease's renewal, `capguard.kube.heartbeats`), None if never."""
    return latest(engine.heartbeat, renewed)


def unheard(beat: float | None, *, now: float, timeout: float) -> bool:
    """No heartbeat (``beat``, epoch seconds, None if never) for longer than ``timeout``."""
    return beat is None or now - beat > timeout


def silent(engine: specs.Engine, *, now: float, timeout: float,
           renewed: float | None = None) -> bool:
    """No heartbeat from the engine's agent for longer than ``timeout`` (or never): whatever
    its status says, nobody vouches for it."""
    return unheard(last_heard(engine, renewed), now=now, timeout=timeout)


def heard(engine: specs.Engine, *, now: float, timeout: float | None,
          renewed: float | None = None) -> specs.Engine:
    """The engine as every count must see it. With agents (``timeout`` set), a silent
    engine is Failed: out of service for the floor, the budgets and drift, and given no
    new model, as a Node whose lease expired is NotReady; its model's units are placed
    on engines that are heard. Unlike a Failed engine it keeps its binding: many silent
    agents at once are more likely cut off from the API server than dead, and releasing
    their engines would drain servers that still serve (the mass action after a blind
    spell this project exists to prevent). Its agent, back, reports the truth again, and
    the surplus goes back through the gate."""
    if timeout is None or not silent(engine, now=now, timeout=timeout, renewed=renewed):
        return engine
    return dataclasses.replace(engine, phase=specs.Phase.FAILED, silent=True,
                               heartbeat=last_heard(engine, renewed))


Hearing = tuple[frozenset[str], float | None]  # the silent engines, the next expiry


def hearing(
    engines: Iterable[specs.Engine], *, now: float, timeout: float,
    renewed: Mapping[str, float] | None = None,
) -> Hearing:
    """In one look: the engines silent now, and when the next one heard now falls silent
    if it does not speak before (``renewed``: Lease renewals by engine name)."""
    return _hear(set(), None, engines, now=now, timeout=timeout, renewed=renewed or {})


def hearing_again(
    last: Hearing, changed: Mapping[str, specs.Engine | None], *, now: float, timeout: float,
    renewed: Mapping[str, float] | None = None,
) -> Hearing | None:
    """`hearing`'s answer from the ``last`` one, looking again only at the engines
    ``changed`` since (None: gone), or None while that cannot be known without a look at
    every engine: once ``now`` reaches the last expiry. Valid for every other engine
    because time aside only its own changes or a newer heartbeat move it, so a heartbeat
    that moves back, or a Lease that goes, must come in ``changed``. The expiry given is
    the earliest any engine heard can fall silent (an engine heard again since the last
    full look may fall silent later): a pass looks no later than it must."""
    silent, expiry = last
    if expiry is not None and now >= expiry:
        return None
    quiet = set(silent).difference(changed)
    present = (e for e in changed.values() if e is not None)
    return _hear(quiet, expiry, present, now=now, timeout=timeout, renewed=renewed or {})


def renewal_changes_hearing(before: float | None, after: float | None, *,
                            silent: bool) -> bool:
    """Whether a Lease's renewal going from ``before`` to ``after`` (None: no Lease) must
    be looked at as a change of its engine for `hearing_again`: the Lease went or moved
    back, or it speaks for an engine that was silent. A renewal of an engine heard only
    puts its expiry later. No renewal before or after (a Lease that speaks for no engine
    indexed, renewed again) changes nothing."""
    if before is None and after is None:
        return False
    return after is None or silent or (before is not None and after < before)


def _hear(quiet: set[str], expiry: float | None, engines: Iterable[specs.Engine], *,
          now: float, timeout: float, renewed: Mapping[str, float]) -> Hearing:
    for engine in engines:
        beat = last_heard(engine, renewed.get(engine.name))
        if beat is None or unheard(beat, now=now, timeout=timeout):
            quiet.add(engine.name)
        else:
            ends = beat + timeout
            expiry = ends if expiry is None else min(expiry, ends)
    return frozenset(quiet), expiry
