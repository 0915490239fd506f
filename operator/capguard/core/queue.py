"""The action queue: one pending action per engine, each stamped with what it was planned from.

Coalescing is the queue's invariant (DESIGN.md #5): ``enqueue`` replaces an engine's
older action instead of queueing behind it, so a long pause cannot pile up a history
of plans for one engine.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable

from capguard.core import fleet as fleet_
from capguard.core import planner

DEFAULT_MAX_AGE = 600.0


@dataclasses.dataclass(frozen=True)
class PlannedFrom:
    """The observed state an action depends on; if it no longer holds, the action is stale."""

    engine_resource_version: str
    # Serving units of the model the action depends on: the one it takes capacity from
    # (DRAIN, REASSIGN) or, for an ASSIGN, the one it adds capacity to.
    model_serving_units: int
    # For a REASSIGN to another model: that model's serving units, the need the move was
    # planned to fill (if it has grown since, the move is no longer needed). Else None.
    target_serving_units: int | None = None


@dataclasses.dataclass(frozen=True)
class Action:
    id: str
    intent: planner.Intent
    planned_at: float
    planned_from: PlannedFrom
    max_age: float = DEFAULT_MAX_AGE

    def age(self, now: float) -> float:
        return now - self.planned_at

    def expired(self, now: float) -> bool:
        return now - self.planned_at > self.max_age


def action_id(intent: planner.Intent, *, planned_from: PlannedFrom) -> str:
    """A stable id: the same intent planned from the same state is the same action.

    Stability is what makes restarts safe: a re-planned action carries the id that the
    executor wrote on the engine, so the gate can tell it already ran.
    """
    text = "|".join(
        (
            intent.kind.value,
            intent.engine,
            intent.model or "",
            intent.from_model or "",
            planned_from.engine_resource_version,
            str(planned_from.model_serving_units),
            *(
                ()
                if planned_from.target_serving_units is None
                else (str(planned_from.target_serving_units),)
            ),
        )
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def planned_from(intent: planner.Intent, *, fleet: fleet_.Fleet) -> PlannedFrom:
    engine = fleet.engines.get(intent.engine)
    model = intent.from_model if intent.disruptive else intent.model
    moves_to_another = intent.disruptive and intent.model not in (None, intent.from_model)
    return PlannedFrom(
        engine_resource_version=engine.resource_version if engine else "",
        model_serving_units=fleet.serving_units(model) if model else 0,
        target_serving_units=(
            fleet.serving_units(intent.model) if moves_to_another and intent.model else None
        ),
    )


class ActionQueue:
    """Pending actions, at most one per engine; the newest plan wins."""

    def __init__(self, *, max_age: float = DEFAULT_MAX_AGE) -> None:
        self.max_age = max_age
        self._by_engine: dict[str, Action] = {}

    def __len__(self) -> int:
        return len(self._by_engine)

    def enqueue(
        self, intents: Iterable[planner.Intent], fleet: fleet_.Fleet, now: float
    ) -> list[Action]:
        """Stamp and add intents, replacing any older action for the same engine."""
        added = []
        for intent in intents:
            stamp = planned_from(intent, fleet=fleet)
            new_id = action_id(intent, planned_from=stamp)
            old = self._by_engine.get(intent.engine)
            if old is not None and old.id == new_id:
                continue  # the same plan again: keep its original age, it is no fresher
            action = Action(new_id, intent, now, stamp, self._max_age(intent, fleet=fleet))
            self._by_engine[intent.engine] = action
            added.append(action)
        return added

    def pending(self) -> list[Action]:
        return list(self._by_engine.values())

    def get(self, engine: str) -> Action | None:
        return self._by_engine.get(engine)

    def remove(self, ids: Iterable[str]) -> None:
        gone = set(ids)
        self._by_engine = {e: a for e, a in self._by_engine.items() if a.id not in gone}

    def oldest_age(self, now: float) -> float:
        return max((a.age(now) for a in self._by_engine.values()), default=0.0)

    def _max_age(self, intent: planner.Intent, *, fleet: fleet_.Fleet) -> float:
        # The strictest breaker governing either side of the move sets the age limit.
        models = {m for m in (intent.model, intent.from_model) if m}
        ages = [b.max_plan_age for m in models for b in fleet.breakers_for(m)]
        return min(ages, default=self.max_age)
