"""One pass of the safety core, composed once: observe, plan, enqueue, triage, settle.

The operator, the simulator and the property tests' world all run this step; they
differ only in where the fleet comes from and how the writes are made. In order:

1. settle what earlier steps executed: each action's outcome, once its engine shows it,
   goes to the breakers that governed it (a probe's decides a HalfOpen breaker);
2. the breakers observe their specs and the auto-trip signals (drift, floor breach);
3. the planner plans (from the live fleet, or with ``cached_view_while_paused`` from the
   incident's cached view) and the queue coalesces; a step that releases a breaker
   plans nothing, so the gate meets the backlog as the pause left it;
4. release plans are published for Open breakers, and the gate triages the queue;
5. what the triage means for the breakers (probe slots, refused counts, a
   refused batch) is applied, and executed and refused actions leave the queue.

``Pipeline.step`` returns everything the outside world needs as a value; the caller
executes ``StepResult.executions`` and reports back with ``Pipeline.written``.
Nothing here does I/O or reads a clock: ``now`` is passed in.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

from capguard.core import backoff, drift, planner, specs
from capguard.core import breaker as breaker_
from capguard.core import fleet as fleet_
from capguard.core import gate as gate_
from capguard.core import queue as queue_

BREAKER_HOLDS: Final = (gate_.Reason.BREAKER_OPEN, gate_.Reason.HALF_OPEN_PROBE_LIMIT)
_NO_QUEUE: Final = queue_.ActionQueue()


@dataclasses.dataclass(frozen=True)
class Config:
    gate: gate_.GateConfig = dataclasses.field(default_factory=gate_.GateConfig)
    max_plan_age: float = queue_.DEFAULT_MAX_AGE
    # Plan from `planner.CachedView` while a breaker is Open: the incident's manager.
    cached_view_while_paused: bool = False
    # Assigns over this wait in the queue for the next step (None: no limit), so a cold
    # start of 10,000 idle engines still reports every step instead of after the storm.
    max_assigns_per_step: int | None = None


@dataclasses.dataclass(frozen=True)
class Observed:
    """What the outside world shows one step."""

    fleet: fleet_.Fleet
    # Each breaker's status as last written (`breaker.saved_status`): a machine this
    # pipeline has not met yet is restored from it, so a restart continues the pause.
    saved_breakers: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    # Breakers whose spec cannot be read: one might be someone's manual trip, so the
    # step acts on nothing while there is one.
    unreadable_breakers: frozenset[str] = frozenset()
    # Models said to have been available before (`Available=True` in status): a floor
    # breach counts for them at once after a restart.
    available_models: frozenset[str] = frozenset()
    plan: bool = True  # False: triage what is queued, plan nothing (the property tests)
    view: fleet_.Fleet | None = None  # plan from this view instead (the property tests)
    # Takes this step may execute at most: a shard's grant from a budget shared with other
    # shards (`capguard.sim.shards`); None: no cap.
    granted: int | None = None
    # Assigns this step may execute at most, when below the config's limit: the operator's
    # slow start (`handlers.reconcile.slow_start`); None: the config's limit.
    max_assigns: int | None = None

    def assign_limit(self, configured: int | None) -> int | None:
        """The assigns this step may execute: the lower of the config's and this step's."""
        if self.max_assigns is None:
            return configured
        return self.max_assigns if configured is None else min(configured, self.max_assigns)


@dataclasses.dataclass(frozen=True)
class BreakerTransition:
    breaker: str
    before: breaker_.BreakerState
    after: breaker_.BreakerState
    reason: breaker_.TripReason | None
    pause_seconds: float  # the pause a release ended

    @property
    def message(self) -> str:
        why = self.reason.value if self.reason else "probes succeeded"
        text = f"{self.before.value} -> {self.after.value} ({why})"
        if self.after is breaker_.BreakerState.HALF_OPEN:
            text += f" after a pause of {self.pause_seconds:.0f}s"
        return text


@dataclasses.dataclass(frozen=True)
class Execution:
    """An action to write now, and what the write must carry."""

    action: queue_.Action
    revision: str | None  # the target model's revision, written with the binding
    precondition: bool  # carry the engine's planned resourceVersion (guarded mode)
    probes: tuple[str, ...]  # HalfOpen breakers whose probe slot it holds


@dataclasses.dataclass(frozen=True)
class QueueGauges:
    held: int  # held by a breaker
    pending: int  # waiting on budgets, rates or a floor
    oldest_plan_age: float


@dataclasses.dataclass(frozen=True)
class StepResult:
    now: float
    fleet: fleet_.Fleet
    view: fleet_.Fleet  # what the planner planned from
    enqueued: tuple[queue_.Action, ...]
    # Engines this step's plan binds, queued or left for a later step (see _first_assigns).
    assigning: frozenset[str]
    report: drift.DriftReport  # the fleet's drift, with the queue as this step left it
    transitions: tuple[BreakerTransition, ...]
    judged_by: Mapping[str, breaker_.Snapshot]  # the breakers as the gate saw them
    decisions: tuple[gate_.Decision, ...]
    executions: tuple[Execution, ...]
    refused_batches: Mapping[str, gate_.RefusedBatch]  # refused in this step
    last_refused_batches: Mapping[str, gate_.RefusedBatch]  # each breaker's latest
    release_plans: Mapping[str, gate_.ReleasePlan]  # for every Open breaker
    held_by: Mapping[str, str]  # model -> why a breaker holds its actions
    breakers: Mapping[str, breaker_.Snapshot]  # after the step
    queue: QueueGauges
    next_due: float | None  # when a step is due even if nothing changes

    @property
    def refusals(self) -> tuple[gate_.Decision, ...]:
        return tuple(d for d in self.decisions if d.verdict is gate_.Verdict.REFUSE)

    @property
    def holds(self) -> tuple[gate_.Decision, ...]:
        return tuple(d for d in self.decisions if d.verdict is gate_.Verdict.HOLD)

    @property
    def floor_holds(self) -> tuple[gate_.Decision, ...]:
        return tuple(d for d in self.holds if d.reason is gate_.Reason.FLOOR)


@dataclasses.dataclass(frozen=True)
class _InFlight:
    action: queue_.Action
    breakers: tuple[str, ...]
    probes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _Backoff:
    """An engine whose last writes failed: its actions wait until ``until``."""

    failures: int
    until: float


class Pipeline:
    """The core's memory between steps: queue, gate, breaker machines, actions in flight.

    All of it can be rebuilt from the cluster: a new pipeline restores its breakers from
    their status and re-plans; an action already written is recognised by its id.
    """

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.queue = queue_.ActionQueue(max_age=self.config.max_plan_age)
        self.gate = gate_.Gate(self.config.gate)
        self.machines: dict[str, breaker_.BreakerMachine] = {}
        self.signals = drift.SignalTracker()
        self.cached = planner.CachedView()
        self.last_refused_batches: dict[str, gate_.RefusedBatch] = {}
        self._in_flight: dict[str, _InFlight] = {}
        self._backoff: dict[str, _Backoff] = {}  # engine -> when its writes may go again
        self._plan: tuple[fleet_.Fleet | None, list[planner.Intent]] = (None, [])
        self._enqueued_from: fleet_.Fleet | None = None  # None: enqueue again
        self._measured: tuple[fleet_.Fleet | None, Mapping[str, drift.ModelDrift]] = (None, {})

    def probes_in_flight(self, breaker: str) -> int:
        """Executed probes of ``breaker`` whose outcome is not known yet."""
        return sum(1 for f in self._in_flight.values() if breaker in f.probes)

    def step(self, observed: Observed, now: float) -> StepResult:
        fleet = observed.fleet
        limit = observed.assign_limit(self.config.max_assigns_per_step)
        models = self._model_drift(fleet, now=now)
        self.signals.observe(
            _report(models, self.queue, fleet=fleet, now=now),
            now=now,
            available=observed.available_models,
        )
        transitions = self._settle_outcomes(fleet, now=now)
        stepped, released = self._step_breakers(fleet, saved=observed.saved_breakers, now=now)
        transitions += stepped
        view, intents, enqueued = self._plan_and_enqueue(observed, released=released,
                                                         limit=limit, now=now)
        plans = {
            name: self.gate.release_plan(self.queue, fleet, machine, now)
            for name, machine in sorted(self.machines.items())
            if machine.state is breaker_.BreakerState.OPEN
        }
        judged_by = {name: m.snapshot(now) for name, m in self.machines.items()}
        waiting, ready = self._backing_off(fleet, now=now)
        if observed.unreadable_breakers:
            triage = gate_.Triage((), {}, {})
        else:
            triage = self.gate.triage(ready, fleet, self.machines, now, observed.granted)
        decisions = _spread_assigns(triage.decisions, limit=limit)
        decisions += waiting
        executions, taken_over = self._apply(triage, decisions=decisions, fleet=fleet, now=now)
        transitions += taken_over
        held_by = held_by_open_breakers(fleet, machines=self.machines)
        held_by.update(_held_by_breakers(decisions))
        held = sum(1 for d in decisions if d.reason in BREAKER_HOLDS)
        return StepResult(
            now=now,
            fleet=fleet,
            view=view,
            enqueued=tuple(enqueued),
            assigning=frozenset(i.engine for i in intents if not i.disruptive),
            report=_report(models, self.queue, fleet=fleet, now=now),
            transitions=tuple(transitions),
            judged_by=judged_by,
            decisions=decisions,
            executions=executions,
            refused_batches=dict(triage.refused_batches),
            last_refused_batches=dict(self.last_refused_batches),
            release_plans=plans,
            held_by=held_by,
            breakers={name: m.snapshot(now) for name, m in sorted(self.machines.items())},
            queue=QueueGauges(held, max(0, len(self.queue) - held), self.queue.oldest_age(now)),
            next_due=self._next_due(now, decisions=decisions, released=released),
        )

    def written(
        self, action_id: str, *, engine: str, ok: bool, now: float = 0.0,
        transient: bool = False, retry_after: float | None = None,
    ) -> None:
        """The outcome of an execution's write. A write that did not happen (409, an
        error, no longer leading, too late) gives back the probe slots it held; one that
        failed on an unwell API (``transient``: 5xx, 429, a timeout) also holds the
        engine's next actions back, on the backoff schedule or the server's Retry-After."""
        if ok:
            self._backoff.pop(engine, None)
            return
        if transient:
            failures = self._backoff[engine].failures + 1 if engine in self._backoff else 1
            wait = backoff.delay(failures, jitter=backoff.jitter_of(f"{engine}/{failures}"))
            if retry_after is not None:
                wait = max(wait, retry_after)
            self._backoff[engine] = _Backoff(failures, now + wait)
        flight = self._in_flight.get(engine)
        if flight is None or flight.action.id != action_id:
            return
        del self._in_flight[engine]
        for name in flight.probes:
            machine = self.machines.get(name)
            if machine is not None:
                machine.cancel_probe()

    # -- the parts of a step, in order ------------------------------------------------

    def _model_drift(self, fleet: fleet_.Fleet, *, now: float) -> Mapping[str, drift.ModelDrift]:
        """The models' drift depends on the fleet only: a steady fleet's step reuses it."""
        seen, models = self._measured
        if seen is not fleet:
            models = drift.measure(fleet, _NO_QUEUE, now).models
            self._measured = (fleet, models)
        return models

    def _settle_outcomes(
        self, fleet: fleet_.Fleet, *, now: float
    ) -> list[BreakerTransition]:
        transitions = []
        for engine, flight in list(self._in_flight.items()):
            ended = outcome(fleet.engines.get(engine), action=flight.action)
            if ended is not None:
                del self._in_flight[engine]
                transitions += self._record(flight, success=ended, now=now)
        return transitions

    def _record(self, flight: _InFlight, *, success: bool, now: float) -> list[BreakerTransition]:
        transitions = []
        for name in flight.breakers:
            machine = self.machines.get(name)
            if machine is None:
                continue
            before = machine.state
            if name in flight.probes:
                machine.record_probe(success, now)
            else:
                machine.record_outcome(success, now)
            transitions += _transition(machine, before=before)
        return transitions

    def _step_breakers(
        self, fleet: fleet_.Fleet, *, saved: Mapping[str, Mapping[str, Any]], now: float
    ) -> tuple[list[BreakerTransition], bool]:
        """Every breaker observes its spec and signals; True when one was released."""
        transitions, released = [], False
        for name, spec in sorted(fleet.breakers.items()):
            machine = self.machines.get(name)
            if machine is None:
                status = saved.get(name) or {}
                machine = self.machines[name] = breaker_.restore(spec, status, now=now)
                before = breaker_.saved_state(status) or breaker_.BreakerState.CLOSED
            else:
                before = machine.state
            governed = [m for m, model in fleet.models.items() if spec.governs(model)]
            machine.observe(spec, self.signals.signals(breaker=spec, models=governed, now=now), now)
            released = released or (
                before is breaker_.BreakerState.OPEN
                and machine.state is not breaker_.BreakerState.OPEN
            )
            transitions += _transition(machine, before=before)
        for gone in set(self.machines) - set(fleet.breakers):
            del self.machines[gone]  # a breaker created again under its name starts afresh
            self._in_flight = {
                e: dataclasses.replace(f, probes=tuple(p for p in f.probes if p != gone))
                for e, f in self._in_flight.items()
            }
        return transitions, released

    def _plan_and_enqueue(
        self, observed: Observed, *, released: bool, limit: int | None, now: float
    ) -> tuple[fleet_.Fleet, list[planner.Intent], list[queue_.Action]]:
        """(the view planned from, its plan, the actions it added to the queue)."""
        paused = any(m.state is breaker_.BreakerState.OPEN for m in self.machines.values())
        view = observed.view or observed.fleet
        if observed.view is None and self.config.cached_view_while_paused:
            view = self.cached.current(observed.fleet, paused=paused)
        if not observed.plan:
            return view, [], []
        # On the release step the gate meets the backlog as the pause left it; re-planning
        # starts next step. (Fresh plans coalesced over the backlog first would hide it
        # from the post-pause guard: no refused batch for anyone to see.)
        intents = [] if released else self._intents(view)
        if self.config.cached_view_while_paused:
            self.cached.assume(view, intents, paused=paused)  # the incident: plans on plans
        if released or view is self._enqueued_from:
            # An unchanged view's plan is in the queue already (whatever the queue
            # dropped since re-opens enqueueing: see _apply).
            return view, intents, []
        self._enqueued_from = view
        return view, intents, self.queue.enqueue(
            _first_assigns(intents, limit=limit), view, now)

    def _backing_off(
        self, fleet: fleet_.Fleet, *, now: float
    ) -> tuple[tuple[gate_.Decision, ...], list[queue_.Action]]:
        """(holds for the actions whose engine waits out a failed write, the rest)."""
        self._backoff = {e: b for e, b in self._backoff.items() if e in fleet.engines}
        waiting, ready = [], []
        for action in self.queue.pending():
            wait = self._backoff.get(action.intent.engine)
            if wait is None or wait.until <= now:
                ready.append(action)
                continue
            message = (f"{wait.failures} writes failed; next try in {wait.until - now:.0f}s")
            waiting.append(gate_.Decision(action, gate_.Verdict.HOLD, gate_.Reason.BACKOFF,
                                          message))
        return tuple(waiting), ready

    def _intents(self, view: fleet_.Fleet) -> list[planner.Intent]:
        """The planner is a pure function of the view: one view is planned once."""
        seen, intents = self._plan
        if seen is not view:
            intents = planner.plan(view)
            self._plan = (view, intents)
        return intents

    def _apply(
        self,
        triage: gate_.Triage,
        *,
        decisions: tuple[gate_.Decision, ...],
        fleet: fleet_.Fleet,
        now: float,
    ) -> tuple[tuple[Execution, ...], list[BreakerTransition]]:
        """What the triage means for the breakers and the queue; the writes to make."""
        for name, machine in self.machines.items():
            machine.count_refused(triage.refused.get(name, 0))
        self.last_refused_batches.update(triage.refused_batches)
        executions, transitions = [], []
        for decision in decisions:
            if decision.verdict is not gate_.Verdict.EXECUTE:
                continue
            action = decision.action
            for name in decision.probes:
                self.machines[name].start_probe()
            taken_over = self._in_flight.pop(action.intent.engine, None)
            if taken_over is not None:
                # A newer action takes the engine over: the older one did its write (what
                # `outcome` says once the engine shows the newer id); settled now, so its
                # probe slot is not lost with it.
                transitions += self._record(taken_over, success=True, now=now)
            self._in_flight[action.intent.engine] = _InFlight(
                action, decision.breakers, decision.probes
            )
            target = fleet.models.get(action.intent.model) if action.intent.model else None
            executions.append(
                Execution(
                    action,
                    revision=target.revision if target else None,
                    precondition=self.config.gate.guarded,
                    probes=decision.probes,
                )
            )
        queued = len(self.queue)
        gate_.settle(self.queue, decisions)
        if len(self.queue) != queued:
            self._enqueued_from = None  # executed or refused: re-plan from what is left
        return tuple(executions), transitions

    def _next_due(
        self, now: float, *, decisions: Iterable[gate_.Decision], released: bool
    ) -> float | None:
        """The first moment a step decides differently with nothing else changed: at once
        after a release (that step planned nothing, the re-plan is due), when a rate limit
        holds a token for a held action, when an automatic trip cools down, or a queued
        plan expires."""
        if released:
            return now
        due = [d.retry_at for d in decisions if d.retry_at is not None]
        due += [
            m.since + m.spec.auto_trip.window
            for m in self.machines.values()
            if m.state is breaker_.BreakerState.OPEN
            and m.reason is not breaker_.TripReason.MANUAL
            and m.spec.auto_trip is not None
        ]
        due += [a.planned_at + a.max_age for a in self.queue.pending()]
        due += [b.until for b in self._backoff.values()]
        future = [t for t in due if now < t < math.inf]  # a rate of 0 never refills
        return min(future, default=None)


def outcome(engine: specs.Engine | None, *, action: queue_.Action) -> bool | None:
    """True once the engine got where the action sent it, False if it failed or went,
    None while it is still on its way."""
    if engine is None:
        return False
    if engine.last_action_id != action.id:
        return True  # a newer action took over the engine: this one did its write
    if engine.phase is specs.Phase.FAILED:
        return False
    target = action.intent.model
    if target is None:
        return engine.phase is specs.Phase.IDLE or None
    return engine.serves(target) or None


def _report(
    models: Mapping[str, drift.ModelDrift],
    queue: queue_.ActionQueue,
    *,
    fleet: fleet_.Fleet,
    now: float,
) -> drift.DriftReport:
    queued = drift.measure(fleet_.Fleet(engines=fleet.engines), queue, now)
    return dataclasses.replace(queued, models=dict(models))


def _transition(
    machine: breaker_.BreakerMachine, *, before: breaker_.BreakerState
) -> list[BreakerTransition]:
    if machine.state is before:
        return []
    return [
        BreakerTransition(
            machine.name, before, machine.state, machine.reason, machine.last_pause_seconds
        )
    ]


def _first_assigns(intents: list[planner.Intent], *, limit: int | None
                   ) -> list[planner.Intent]:
    """Every disruptive intent, and at most twice the step's limit of assigns (None: all).

    An unhandled fleet of 10,000 engines plans 10,000 assigns; stamping, queueing and
    triaging them all delays the first thousand a step writes. The rest are planned again
    by the next step (an assign takes no token, so none is owed a place in the queue);
    twice the limit leaves room for assigns the gate holds."""
    if limit is None:
        return intents
    kept, assigns = [], 0
    for intent in intents:
        if not intent.disruptive:
            assigns += 1
            if assigns > 2 * limit:
                continue
        kept.append(intent)
    return kept


def _spread_assigns(
    decisions: Iterable[gate_.Decision], *, limit: int | None
) -> tuple[gate_.Decision, ...]:
    """Leave assigns over the limit out of this step (they stay queued, still valid).

    Only an assign may wait: it takes no token and no capacity, and it is not a probe;
    everything the gate counted against a budget runs in the step that decided it."""
    kept, assigns = [], 0
    for d in decisions:
        if (
            limit is not None
            and d.verdict is gate_.Verdict.EXECUTE
            and not d.action.intent.disruptive
            and not d.probe
        ):
            assigns += 1
            if assigns > limit:
                continue
        kept.append(d)
    return tuple(kept)


def held_by_open_breakers(
    fleet: fleet_.Fleet, *, machines: Mapping[str, breaker_.BreakerMachine]
) -> dict[str, str]:
    """Model -> why, for every model an Open breaker governs.

    Level-triggered on the breaker's state rather than on this step's decisions: while a
    breaker is Open, an action refused as stale is re-planned and held again a step later,
    and the model's Progressing condition must not flap to Converging in between.
    """
    held: dict[str, str] = {}
    for model in fleet.models:
        for spec in fleet.breakers_for(model):
            machine = machines.get(spec.name)
            if machine is not None and machine.state is breaker_.BreakerState.OPEN:
                held[model] = f"breaker {spec.name} is Open"
                break
    return held


def _held_by_breakers(decisions: Iterable[gate_.Decision]) -> dict[str, str]:
    """Model -> why a breaker holds its actions (the first hold's message)."""
    held_by: dict[str, str] = {}
    for d in decisions:
        if d.verdict is gate_.Verdict.HOLD and d.reason in BREAKER_HOLDS:
            for name in (d.action.intent.model, d.action.intent.from_model):
                if name:
                    held_by.setdefault(name, d.message)
    return held_by
