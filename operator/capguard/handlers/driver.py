"""The simulated engine driver: moves engines through their phases by writing /status.

    Idle -> Loading(model) -> Serving -> Draining -> Idle,   Loading -> Failed -> Idle

It is level-triggered like everything else: each pass compares an engine's spec with
its status and the time already spent in the phase (`status.since`, on the object, so a
restarted operator picks up a half-finished load where it was). `transition` is pure;
the reconcile loop writes what it returns, with the engine's resourceVersion.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any, Final

from capguard.core import specs
from capguard.handlers import status as status_

SIMULATED: Final = "simulated"
NONE: Final = "none"
DRIVERS: Final = (SIMULATED, NONE)


@dataclasses.dataclass(frozen=True)
class DriverConfig:
    load_time: float = 120.0
    drain_time: float | None = None  # default: a quarter of the load time
    failure_rate: float = 0.0
    repair_time: float | None = None  # a failed engine is back to Idle after this; default load

    @property
    def draining(self) -> float:
        return self.drain_time if self.drain_time is not None else self.load_time / 4

    @property
    def repairing(self) -> float:
        return self.repair_time if self.repair_time is not None else self.load_time


@dataclasses.dataclass(frozen=True)
class Transition:
    phase: specs.Phase
    model: str | None
    revision: str | None
    message: str


@dataclasses.dataclass(frozen=True)
class Step:
    """What the driver does for one engine now: a transition, and/or when to look again."""

    transition: Transition | None
    due: float | None  # absolute time the current phase ends; None when it waits on spec


def transition(
    engine: specs.Engine, *, config: DriverConfig, now: float, roll: Callable[[], float]
) -> Step:
    bound = engine.spec.model_ref
    phase = engine.phase
    since = engine.since
    if since is None:
        # Never driven: whatever a half-written status says, it starts from Idle.
        phase = specs.Phase.IDLE
    if phase is specs.Phase.IDLE:
        if bound:
            return Step(Transition(specs.Phase.LOADING, bound, engine.spec.revision,
                                   f"loading {bound}"), None)
        if since is None:
            return Step(Transition(specs.Phase.IDLE, None, None, "engine registered"), None)
        return Step(None, None)
    assert since is not None  # an undriven engine was handled as Idle above
    if phase is specs.Phase.LOADING:
        if bound != engine.model or engine.spec.revision != engine.revision:
            # Rebound mid-load: the old model loses the engine now (as the simulator does).
            return Step(Transition(specs.Phase.DRAINING, engine.model, engine.revision,
                                   f"load of {engine.model} abandoned: rebound"), None)
        due = since + config.load_time
        if now < due:
            return Step(None, due)
        if roll() < config.failure_rate:
            return Step(Transition(specs.Phase.FAILED, engine.model, engine.revision,
                                   f"failed to load {engine.model}"), None)
        return Step(Transition(specs.Phase.SERVING, engine.model, engine.revision,
                               f"serving {engine.model}"), None)
    if phase is specs.Phase.SERVING:
        if bound != engine.model or engine.spec.revision != engine.revision:
            return Step(Transition(specs.Phase.DRAINING, engine.model, engine.revision,
                                   f"draining {engine.model}"), None)
        return Step(None, None)
    if phase is specs.Phase.DRAINING:
        due = since + config.draining
        if now < due:
            return Step(None, due)
        return Step(Transition(specs.Phase.IDLE, None, None, f"drained {engine.model}"), None)
    # FAILED: repaired after a while, then loads again if it is still bound.
    due = since + config.repairing
    if now < due:
        return Step(None, due)
    return Step(Transition(specs.Phase.IDLE, None, None, "repaired"), None)


def status_patch(
    step: Transition, *, engine: specs.Engine, generation: int, existing_conditions: object,
    now: float,
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


def make_roll(seed: int | None) -> Callable[[], float]:
    return random.Random(seed).random
