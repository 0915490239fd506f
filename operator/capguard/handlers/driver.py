"""The simulated engine driver: runs the core's engine phase machine, writing /status.

`capguard.core.engines` decides every move (the simulator and the property tests run
the same machine); this module only says how a move is written: a /status merge patch
carrying the resourceVersion the move was decided from, and a seeded die for loads
that fail.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Final

from capguard import defaults
from capguard.core import clock, engines, specs
from capguard.core import fleet as fleet_
from capguard.handlers import records, writer
from capguard.handlers import status as status_
from capguard.kube import heartbeats

DRIVERS: Final = defaults.DRIVERS
AGENT, SIMULATED = DRIVERS


@dataclasses.dataclass(frozen=True)
class DriverConfig:
    timing: engines.Timing = dataclasses.field(default_factory=engines.Timing)
    failure_rate: float = 0.0


def transition(
    engine: specs.Engine, *, config: DriverConfig, now: float, roll: Callable[[], float]
) -> engines.Step:
    """The machine's next move for ``engine``; a finished load fails on a roll under the rate."""
    return engines.step(engine, timing=config.timing, now=now,
                        load_fails=lambda: roll() < config.failure_rate)


def status_patch(
    step: engines.Transition, *, engine: specs.Engine, generation: int,
    existing_conditions: object, now: float,
) -> dict[str, Any]:
    """The /status merge patch for a transition (with the engine's resourceVersion)."""
    serving = step.phase is specs.Phase.SERVING
    ready = status_.Condition(
        "Ready", status_.TRUE if serving else status_.FALSE, step.phase.value, step.message)
    return {
        "metadata": {"resourceVersion": engine.resource_version},
        "status": {
            "phase": step.phase.value,
            "model": step.model,
            "revision": step.revision,
            "since": status_.precise_timestamp(now),
            "message": step.message,
            "observedGeneration": generation,
            "conditions": status_.merge_conditions(
                existing_conditions, [ready], generation=generation, now=now),
        },
    }


Patch = tuple[str, dict[str, Any]]  # engine name, /status merge patch


@dataclasses.dataclass(frozen=True)
class Writes:
    """One pass's engine status writes."""

    recording: tuple[Patch, ...]  # this pass's actions (with a phase move, if one is due)
    others: tuple[Patch, ...]  # phase moves, then first-seen engines and generation notes
    next_due: float | None  # the earliest end of a timed phase


def writes(
    fleet: fleet_.Fleet, *, found: Iterable[records.EngineRecord],
    executed: Mapping[str, writer.Executed], config: DriverConfig | None, now: float,
    roll: Callable[[], float], assigning: Collection[str] = (),
) -> Writes:
    """Move engines one phase on (with ``config``: the simulated driver), recording this
    pass's actions in the same status write; with no driver, only the actions.

    An engine never written to is said to be Idle, unless the plan binds it
    (``assigning``): recording that assign says Loading soon after, and in an unhandled
    start of 10,000 engines those notes were a quarter of all writes."""
    by_name = {r.meta.name: r for r in found} if config is not None else {}
    recording: list[Patch] = []
    moves: list[Patch] = []
    notes: list[Patch] = []
    next_due: float | None = None
    for name, engine in fleet.engines.items() if config is not None else ():
        record = by_name.get(name)
        if record is None:
            continue
        assert config is not None
        step = transition(engine, config=config, now=now, roll=roll)
        if step.due is not None:
            next_due = min(step.due, next_due or step.due)
        if step.transition is None:
            if record.status.get("observedGeneration") not in (None, record.meta.generation):
                # A spec change with no phase change (a cordon, say): say it was seen.
                notes.append((name, {"status": {"observedGeneration": record.meta.generation}}))
            continue
        done = executed.get(name)
        patch = status_patch(
            step.transition, engine=engine,
            generation=done.generation if done else record.meta.generation,
            existing_conditions=record.status.get("conditions"), now=now)
        if done is not None:
            patch["status"]["lastAction"] = done.last_action
            recording.append((name, patch))
        elif engine.since is None:
            if name not in assigning:  # first seen: Idle whether we say so or not
                notes.append((name, patch))
        else:
            moves.append((name, patch))
    recorded = {name for name, _ in recording}
    for name, done in executed.items():
        if name not in recorded:  # no phase change now: record the action on its own
            recording.append((name, {"status": {"lastAction": done.last_action}}))
    return Writes(tuple(recording), tuple(moves + notes), next_due)


def silence_notes(
    fleet: fleet_.Fleet, *, found: Iterable[records.EngineRecord], now: float,
) -> tuple[Patch, ...]:
    """With agents: say on each silent engine that nobody vouches for it (Ready Unknown,
    as the node controller marks a Node whose lease expired), once. Its phase stays what
    its agent last said; the agent, back, writes Ready again."""
    notes = []
    for record in found:
        engine = fleet.engines.get(record.meta.name)
        if engine is None or not engine.silent:
            continue
        ready = status_.condition_of(record.status, "Ready")
        if ready is not None and ready.get("reason") == heartbeats.EXPIRED:
            continue
        heard = (f"since {clock.timestamp(engine.heartbeat)}" if engine.heartbeat is not None
                 else "ever")
        silent = status_.Condition("Ready", status_.UNKNOWN, heartbeats.EXPIRED,
                                   f"no heartbeat from its agent {heard}: out of service, "
                                   "given no new model; its binding is kept")
        notes.append((record.meta.name, {"status": {"conditions": status_.merge_conditions(
            record.status.get("conditions"), [silent], generation=record.meta.generation,
            now=now)}}))
    return tuple(notes)


def make_roll(seed: int | None) -> Callable[[], float]:
    return random.Random(seed).random
