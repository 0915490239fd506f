"""The capacity manager, as the operator runs it: the core's pipeline, one step at a time.

`capguard.core.pipeline` decides everything (the operator runs the same step); this
module executes what a step returns against the simulated world and records the
timeline. What it adds is the incident's flaw, in both modes alike: while the breaker
is open it does not re-read the cluster. It keeps planning from its cached view, and
like any controller that tracks "expectations" it assumes what it queued has happened,
so every step plans the next on top of steps that never ran (`planner.CachedView`,
which the operator's `--naive` mode plans from as well).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable

from capguard.core import breaker as breaker_
from capguard.core import fleet as fleet_
from capguard.core import gate as gate_
from capguard.core import pipeline as pipeline_
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


class CapacityManager:
    def __init__(self, *, world: world_.World, mode: Mode, timeline: measures.Timeline) -> None:
        self.world = world
        self.mode = mode
        self.timeline = timeline
        guarded = mode is Mode.GUARDED
        self.pipeline = pipeline_.Pipeline(
            pipeline_.Config(
                gate=gate_.GateConfig(guarded=guarded),
                max_plan_age=world.scenario.max_plan_age,
                cached_view_while_paused=True,
            )
        )
        self._planned: dict[str, _Planned] = {}
        self._batches: set[str] = set()

    @property
    def queue(self) -> queue_.ActionQueue:
        return self.pipeline.queue

    @property
    def breaker(self) -> breaker_.BreakerMachine:
        return self.pipeline.machines[self.world.breaker.name]

    def step(self, now: float) -> float | None:
        """One step at ``now``; when the next is due with nothing else changed."""
        live = self.world.fleet()
        backlog = len(self.queue)
        result = self.pipeline.step(pipeline_.Observed(live), now)
        if any(
            t.before is breaker_.BreakerState.OPEN and t.after is not breaker_.BreakerState.OPEN
            for t in result.transitions
        ):
            self.timeline.backlog_at_release = backlog
            self.timeline.needed_after_release = needed_disruptions(live)
        for action in result.enqueued:
            self._planned[action.id] = _snapshot(action.intent, fleet=result.view)
        self._count(result.decisions)
        for execution in result.executions:
            self._execute(execution, now=now)
        self._planned = {a.id: self._planned[a.id] for a in self.queue.pending()}
        return result.next_due

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

    def _execute(self, execution: pipeline_.Execution, *, now: float) -> None:
        action = execution.action
        intent = action.intent
        before = self.world.fleet()
        planned = self._planned.get(action.id)
        stale = planned is None or planned.stale_against(_snapshot(intent, fleet=before))
        written = self.world.bind(
            engine=intent.engine,
            model=intent.model,
            action_id=action.id,
            expect_version=(
                action.planned_from.engine_resource_version if execution.precondition else None
            ),
        )
        done = written is world_.Write.DONE
        self.pipeline.written(action.id, engine=intent.engine, ok=done)
        if not done:
            self.timeline.conflicts += 1  # the world changed first: the next step re-plans
            return
        self.world.advance(now=now, only=[intent.engine])  # the driver reacts at once
        self.timeline.executed.append(
            measures.Executed(
                at=now,
                engine=intent.engine,
                kind=intent.kind.value,
                model=intent.model,
                from_model=intent.from_model,
                stale=stale,
                broke_floor=_broken_floors(before, self.world.fleet(), engine=intent.engine),
                surplus_before_floors=(
                    _surplus_before_floors(before, intent=intent)
                    if self.world.scenario.floor_measures else ()
                ),
            )
        )


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
    """Models the engine served before the write that are below their floor after it.

    One exception, the max-min sharing of floors the supply cannot all cover: a model
    already below its floor may give an engine to another model below its floor as long
    as it keeps its own share (``Fleet.protected_units``); that moves a floor, it breaks
    none.
    """
    was = before.engines[engine]
    served = [
        m for m in (was.model,) if m and was.serves(m) and not after.engines[engine].serves(m)
    ]
    to = after.engines[engine].spec.model_ref
    sharing = to is not None and before.serving_units(to) < before.floor_units(to)
    return tuple(
        m for m in served
        if after.serving_units(m) < after.floor_units(m)
        and not (sharing and before.serving_units(m) < before.floor_units(m)
                 and after.serving_units(m) >= before.protected_units(m))
    )


def _surplus_before_floors(before: fleet_.Fleet, *, intent: planner.Intent) -> tuple[str, ...]:
    """Models that hold fewer engines than the covered part of their floor when this action
    takes a serving engine for a model that already holds its floor: a rate-limit token
    and a disruption spent on surplus while a floor waits."""
    was = before.engines[intent.engine]
    takes = intent.from_model is not None and was.serves(intent.from_model)
    if not takes or intent.model is None:
        return ()
    held = _held_units(before)
    if held.get(intent.model, 0) < before.floor_units(intent.model):
        return ()
    return tuple(m for m in sorted(before.models)
                 if held.get(m, 0) < min(before.floor_units(m), before.allocation.covered(m)))


def _held_units(fleet: fleet_.Fleet) -> dict[str, int]:
    """Units bound to each model by ``spec.modelRef``, serving or on their way, not failed."""
    held: dict[str, int] = {}
    for engine in fleet.engines.values():
        model = engine.spec.model_ref
        if model is not None and engine.phase is not specs.Phase.FAILED:
            held[model] = held.get(model, 0) + engine.units
    return held
