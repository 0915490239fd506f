"""The capacity manager, as the operator runs it: planner -> queue -> gate -> executor.

It drives the core's own planner, queue, gate and breaker; nothing here decides
whether an action may run. What it adds is the incident's flaw, in both modes alike:
while the breaker is open it does not re-read the cluster. It keeps planning from its
cached view, and like any controller that tracks "expectations" it assumes what it
queued has happened, so every tick plans the next step on top of steps that never ran
(`planner.CachedView`, which the operator's `--naive` mode plans from as well).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable

from capguard.core import breaker as breaker_
from capguard.core import fleet as fleet_
from capguard.core import gate as gate_
from capguard.core import planner, specs
from capguard.core import queue as queue_
from capguard.sim import measures
from capguard.sim import world as world_


class Mode(enum.Enum):
    # The incident's manager: only an open breaker holds anything, and its writes carry
    # no resourceVersion precondition, so the backlog runs as planned on release.
    NAIVE = "naive"
    # All of the core: post-pause batch guard, staleness, floor, budgets, rate limits,
    # HalfOpen probes, and every write preconditioned on the planned resourceVersion.
    GUARDED = "guarded"


@dataclasses.dataclass(frozen=True)
class _Planned:
    """What the planner's view held for an action: the simulator's own staleness record.

    An action is stale when, at execution, the ground truth differs from this in a way
    that undoes the plan's premises: the engine is not as the view had it (version or
    content), its source model serves fewer units than the view said (it can no longer
    spare the engine), or its destination serves more (the need it was sent to fill
    is gone). Changes in the other direction only make the plan safer or more needed.
    """

    engine: tuple[str, specs.Phase, str | None, str | None, str | None]
    source: int | None  # serving units of intent.from_model
    target: int | None  # serving units of intent.model, when it is another model

    def stale_against(self, now: _Planned) -> bool:
        if self.engine != now.engine:
            return True
        if self.source is not None and now.source is not None and now.source < self.source:
            return True
        return self.target is not None and now.target is not None and now.target > self.target


@dataclasses.dataclass(frozen=True)
class _InFlight:
    action: queue_.Action
    executed_at: float


class CapacityManager:
    def __init__(self, *, world: world_.World, mode: Mode, timeline: measures.Timeline) -> None:
        self.world = world
        self.mode = mode
        self.timeline = timeline
        self.queue = queue_.ActionQueue(max_age=world.scenario.max_plan_age)
        self.gate = gate_.Gate(gate_.GateConfig(guarded=mode is Mode.GUARDED))
        self.breaker = breaker_.BreakerMachine(world.breaker, now=0.0)
        self.cached = planner.CachedView()
        self._planned: dict[str, _Planned] = {}
        self._in_flight: dict[str, _InFlight] = {}
        self._batches: set[str] = set()
        self._last_plan: tuple[tuple[object, ...], list[planner.Intent]] = ((), [])

    @property
    def breakers(self) -> dict[str, breaker_.BreakerMachine]:
        return {self.breaker.name: self.breaker}

    def tick(self, now: float) -> None:
        self._record_outcomes(now)
        live = self.world.fleet()
        released = self._observe_breaker(live, now=now)
        paused = self.breaker.state is breaker_.BreakerState.OPEN
        view = self.cached.current(live, paused=paused)
        # On the release tick the gate meets the backlog as the pause left it, as the
        # operator's release pass does; re-planning from the cluster starts next tick.
        # (Planning first would coalesce fresh plans over the backlog before the post-pause
        # guard saw it: the same outcome, but no refused batch for anyone to see.)
        intents = [] if released else self._plan(view)
        self.cached.assume(view, intents, paused=paused)  # the incident: plans build on plans
        self._remember(self.queue.enqueue(intents, view, now), view=view)
        decisions = self.gate.triage(self.queue, live, self.breakers, now)
        gate_.settle(self.queue, decisions)
        self._count(decisions)
        for decision in decisions:
            if decision.verdict is gate_.Verdict.EXECUTE:
                self._execute(decision.action, now=now)
        self._planned = {a.id: self._planned[a.id] for a in self.queue.pending()}

    def _observe_breaker(self, live: fleet_.Fleet, *, now: float) -> bool:
        """Step the breaker; True when this tick released it."""
        was_open = self.breaker.state is breaker_.BreakerState.OPEN
        self.breaker.observe(self.world.breaker, breaker_.FleetSignals(), now)
        if not (was_open and self.breaker.state is not breaker_.BreakerState.OPEN):
            return False
        self.timeline.backlog_at_release = len(self.queue)
        self.timeline.needed_after_release = needed_disruptions(live)
        return True

    def _plan(self, view: fleet_.Fleet) -> list[planner.Intent]:
        """The planner's intents; a view it has already planned from is not planned again.

        Only for speed: the planner is a pure function of the view (an unchanged world
        hands back the same snapshot object), so this changes no result.
        """
        key = (view, *view.models.values())
        last_key, last_intents = self._last_plan
        if _same(key, last_key):
            return last_intents
        intents = planner.plan(view)
        self._last_plan = (key, intents)
        return intents

    def _remember(self, added: Iterable[queue_.Action], *, view: fleet_.Fleet) -> None:
        for action in added:
            self._planned[action.id] = _snapshot(action.intent, fleet=view)

    def _count(self, decisions: Iterable[gate_.Decision]) -> None:
        for decision in decisions:
            if decision.verdict is not gate_.Verdict.REFUSE:
                continue
            if decision.reason is gate_.Reason.EXPIRED:
                self.timeline.expired += 1
            else:
                self.timeline.refused += 1
            if decision.batch is not None:
                self._batches.add(decision.batch)
        self.timeline.refused_batches = len(self._batches)

    def _execute(self, action: queue_.Action, *, now: float) -> None:
        intent = action.intent
        before = self.world.fleet()
        planned = self._planned.get(action.id)
        stale = planned is None or planned.stale_against(_snapshot(intent, fleet=before))
        guarded = self.mode is Mode.GUARDED
        written = self.world.bind(
            engine=intent.engine,
            model=intent.model,
            action_id=action.id,
            expect_version=action.planned_from.engine_resource_version if guarded else None,
        )
        if written is not world_.Write.DONE:
            self.timeline.conflicts += 1  # the world changed first: the next tick re-plans
            return
        self.world.advance(now=now, only=[intent.engine])  # the driver reacts at once
        self._in_flight[intent.engine] = _InFlight(action, now)
        self.timeline.executed.append(
            measures.Executed(
                at=now,
                engine=intent.engine,
                kind=intent.kind.value,
                model=intent.model,
                from_model=intent.from_model,
                stale=stale,
                broke_floor=_broken_floors(before, self.world.fleet(), engine=intent.engine),
            )
        )

    def _record_outcomes(self, now: float) -> None:
        """Tell the breaker how executed actions ended: HalfOpen closes on successes."""
        for name, flight in list(self._in_flight.items()):
            outcome = _outcome(self.world.engines[name].engine, action=flight.action)
            if outcome is not None:
                del self._in_flight[name]
                self.breaker.record_probe(outcome, now)


def _same(a: Iterable[object], b: Iterable[object]) -> bool:
    """The same objects in the same order (identity, not equality: cheap and exact)."""
    left, right = list(a), list(b)
    return len(left) == len(right) and all(x is y for x, y in zip(left, right, strict=True))


def needed_disruptions(fleet: fleet_.Fleet) -> dict[str, int]:
    """Capacity-taking actions each model needs to reach desired: every serving engine on
    the wrong revision or pool leaves the model once, and so does every surplus unit."""
    needed = {}
    for name, model in sorted(fleet.models.items()):
        serving = [fleet.engines[e] for e in fleet.serving_engines(name)]
        wrong = sum(1 for e in serving if not fits(e, model))
        right_units = sum(e.units for e in serving if fits(e, model))
        needed[name] = wrong + max(0, right_units - model.replicas)
    return needed


def fits(engine: specs.Engine, model: specs.ModelSpec) -> bool:
    """Serving the model's current revision from a pool its selector picks."""
    revision_ok = model.revision is None or engine.revision == model.revision
    return revision_ok and model.engine_selector.matches(engine.labels)


def _snapshot(intent: planner.Intent, *, fleet: fleet_.Fleet) -> _Planned:
    """The engine and the serving units of the action's source and destination in ``fleet``."""
    e = fleet.engines[intent.engine]
    target = intent.model if intent.model != intent.from_model else None
    return _Planned(
        engine=(
            e.resource_version.removesuffix(planner.EXPECTED),
            e.phase,
            e.model,
            e.spec.model_ref,
            e.revision,
        ),
        source=fleet.serving_units(intent.from_model) if intent.from_model else None,
        target=fleet.serving_units(target) if target else None,
    )


def _broken_floors(before: fleet_.Fleet, after: fleet_.Fleet, *, engine: str) -> tuple[str, ...]:
    """Models the engine served before the write that are below their floor after it."""
    was = before.engines[engine]
    served = [
        m for m in (was.model,) if m and was.serves(m) and not after.engines[engine].serves(m)
    ]
    return tuple(m for m in served if after.serving_units(m) < after.floor_units(m))


def _outcome(engine: specs.Engine, *, action: queue_.Action) -> bool | None:
    """True once the engine got where the action sent it, False if it failed, else None."""
    if engine.last_action_id != action.id:
        return True  # a newer action took over the engine; this one did its write
    if engine.phase is specs.Phase.FAILED:
        return False
    target = action.intent.model
    if target is None:
        return engine.phase is specs.Phase.IDLE or None
    return engine.serves(target) or None
