"""The one reconcile loop: current state in, core decisions out, results written back.

Each pass reads the index (kept current by Kopf from the watch streams), builds one
frozen `Fleet` per namespace, and asks the core what to do: the breaker machines
observe, the planner plans, the queue coalesces, the gate triages. Then, and only on the
leader, the pass writes: status, actions (a merge-patch carrying the resourceVersion the
action was planned from), the simulated driver's phase changes, Events. Nothing is a
replay of events: a pass after a restart is the same as any other pass.

Between full passes (at most `interval` apart, at least `plan_gap` apart while things
change), a watch event wakes the loop for the fast path: the status of just the models
whose spec or engines changed, each computed from its own engines (a model's counts
depend on nothing else). So a change shows in status in milliseconds even at 10,000
engines, and a steady fleet costs neither planning nor writes. A full pass also runs the
fast path just before and after planning, and then leaves the models it refreshed alone
(their status is newer than the pass's snapshot).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import gc
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import aiohttp

from capguard import metrics as metrics_
from capguard.core import breaker, drift, gate, planner, queue, specs
from capguard.core import fleet as fleet_
from capguard.handlers import driver, index, records
from capguard.handlers import status as status_
from capguard.kube import actions, client, events

logger = logging.getLogger(__name__)

API_VERSION: Final = "capguard.dev/v1alpha1"
BREAKER_STATUS_REFRESH: Final = 30.0  # secondsInState is refreshed at most this often alone
_BREAKER_HOLDS: Final = (gate.Reason.BREAKER_OPEN, gate.Reason.HALF_OPEN_PROBE_LIMIT)
_WRITE_ERRORS: Final = (client.ApiError, aiohttp.ClientError, OSError, TimeoutError)

@dataclasses.dataclass(frozen=True)
class Config:
    engine_driver: str = driver.SIMULATED
    driver_config: driver.DriverConfig = dataclasses.field(default_factory=driver.DriverConfig)
    guarded: bool = True
    interval: float = 1.0
    debounce: float = 0.002  # let a burst of watch events arrive before looking
    # While the cluster changes, a full pass follows the last one after this, and after as
    # long again as that one took: at 10,000 engines the fast path gets half the loop.
    plan_gap: float = 0.02
    write_concurrency: int = 16
    seed: int | None = None
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    resync_interval: float = 300.0  # a full LIST now and then drops what a watch missed
    # Assigns beyond this wait in the queue for the next pass, so a cold start of 10,000
    # idle engines still updates status and metrics every pass instead of after the storm.
    max_assigns_per_pass: int = 1000
    # Engine status writes beyond recording this pass's actions (phase moves, an unhandled
    # engine's first Idle) wait for the next pass beyond this, for the same reason.
    max_engine_writes_per_pass: int = 1000


@dataclasses.dataclass
class View:
    """One namespace as the index shows it now."""

    engines: list[records.EngineRecord] = dataclasses.field(default_factory=list)
    models: list[records.ModelRecord] = dataclasses.field(default_factory=list)
    breakers: list[records.BreakerRecord] = dataclasses.field(default_factory=list)

    @functools.cached_property
    def _metas(self) -> dict[tuple[str, str], records.Meta]:
        kinds = (("InferenceEngine", self.engines), ("ModelCapacity", self.models),
                 ("CircuitBreaker", self.breakers))
        return {(kind, r.meta.name): r.meta for kind, found in kinds for r in found}

    def meta(self, kind: str, namespace: str, name: str) -> records.Meta:
        """An object's metadata, uid included: `kubectl describe` finds Events by uid."""
        return self._metas.get((kind, name)) or records.Meta(namespace, name, "", 0)


def snapshot(found: index.Index) -> dict[str, View]:
    views: dict[str, View] = collections.defaultdict(View)
    for namespace, engines in found.engines.by_namespace().items():
        views[namespace].engines = engines
    for namespace, models in found.models.by_namespace().items():
        views[namespace].models = models
    for namespace, breakers in found.breakers.by_namespace().items():
        views[namespace].breakers = breakers
    return dict(views)


def build_fleet(view: View) -> fleet_.Fleet:
    """The core's snapshot. A model whose spec is invalid is kept by name: its engines stay
    in the fleet (they count fleet-wide) and nothing moves them, so a typo drains nothing."""
    return fleet_.Fleet.of(
        engines=[r.value for r in view.engines if r.value is not None],
        models=[r.value for r in view.models if r.value is not None],
        breakers=[r.value for r in view.breakers if r.value is not None],
        unreadable_models=[r.meta.name for r in view.models if r.value is None],
    )


def restore_machine(
    record: records.BreakerRecord, spec: specs.BreakerSpec, *, now: float
) -> breaker.BreakerMachine:
    """A breaker machine as its status left it: a restart keeps the pause and its length."""
    saved = record.status
    try:
        state = breaker.BreakerState(saved.get("state"))
    except ValueError:
        return breaker.BreakerMachine(spec, now=now)
    reason = None
    with contextlib.suppress(ValueError):
        reason = breaker.TripReason(saved.get("reason"))
    # A status written before `pausedSince` existed: the Paused condition flipped with it.
    opened_at = (status_.parse_timestamp(saved.get("pausedSince"))
                 or status_.condition_since(saved, "Paused"))
    return breaker.BreakerMachine.restore(
        spec, now=now, state=state, since=status_.parse_timestamp(saved.get("since")) or now,
        reason=reason, opened_at=opened_at, seconds_in_state=status_.seconds_in_state(saved),
        reported_at=status_.parse_timestamp(saved.get("secondsInStateAt")),
        probes_succeeded=int(saved.get("probesSucceeded") or 0),
        refused=int(saved.get("refusedActions") or 0))


def available_models(view: View, *, known: set[str]) -> list[str]:
    """Models not yet known to have been available whose status says they were (a restart)."""
    return [r.meta.name for r in view.models if r.meta.name not in known
            and status_.condition_since(r.status, "Available") is not None]


@dataclasses.dataclass(frozen=True)
class Executed:
    """An action the API server accepted: the engine as written, for the rest of the pass."""

    engine: specs.Engine
    generation: int
    last_action: dict[str, Any]


@dataclasses.dataclass
class Probe:
    """An action executed in HalfOpen, waiting for its engine to show the outcome."""

    model: str | None
    breakers: tuple[str, ...]


@dataclasses.dataclass
class Namespace:
    """What a namespace's pipeline remembers between passes (all of it rebuildable)."""

    queue: queue.ActionQueue
    gate: gate.Gate
    machines: dict[str, breaker.BreakerMachine] = dataclasses.field(default_factory=dict)
    probes: dict[str, Probe] = dataclasses.field(default_factory=dict)
    seen_batches: dict[str, str] = dataclasses.field(default_factory=dict)
    held_by_breakers: int = 0  # after the last triage
    # The index's planning version the queue was last planned from; None: plan next pass.
    planned_version: int | None = None
    planned_from: fleet_.Fleet | None = None  # the view the queue was last planned from
    # With --naive, the incident's view, and whether a breaker held it cached last pass.
    cached: planner.CachedView = dataclasses.field(default_factory=planner.CachedView)
    paused: bool = False
    held_by: dict[str, str] = dataclasses.field(default_factory=dict)  # model -> why held
    # model -> (record, drift, failed, held) last found needing no write: skip rebuilding it
    status_checked: dict[str, tuple[records.ModelRecord, drift.ModelDrift, int, str | None]] = (
        dataclasses.field(default_factory=dict))
    signals: drift.SignalTracker = dataclasses.field(default_factory=drift.SignalTracker)
    breaker_written_at: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PassResult:
    """Counts from one pass, for logs and tests."""

    executed: int = 0
    conflicts: int = 0
    refused: int = 0
    held: int = 0
    transitions: int = 0
    status_writes: int = 0
    next_due: float | None = None


class Reconciler:
    def __init__(
        self,
        *,
        api: client.Api,
        recorder: events.Recorder,
        metrics: metrics_.Metrics,
        config: Config,
        is_leader: Callable[[], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.recorder = recorder
        self.metrics = metrics
        self.config = config
        self.is_leader = is_leader
        self.clock = clock
        self.index = index.Index()
        self.view_complete = asyncio.Event()
        self.namespaces: dict[str, Namespace] = {}
        self.passes = 0
        self.last_result = PassResult()
        self._wake = asyncio.Event()
        # Models whose status the fast path wrote during the current full pass: newer than
        # the pass's snapshot, so the pass leaves them to the fast path.
        self._refreshed: set[index.Key] = set()
        self._roll = driver.make_roll(config.seed)
        self._writes = asyncio.Semaphore(config.write_concurrency)
        self._was_leader = False
        self._quiet_until = 0.0
        self._exported: dict[metrics_.ModelKey, drift.ModelDrift] = {}
        self._fleets: dict[str, tuple[int, fleet_.Fleet]] = {}  # namespace -> (version, fleet)
        # namespace -> (fleet, its models' drift, its failed engines per model)
        self._measured: dict[str, tuple[fleet_.Fleet, Mapping[str, drift.ModelDrift],
                                        dict[str, int]]] = {}

    def wake(self) -> None:
        """Something changed in the cluster: run a pass soon (a burst makes one pass)."""
        self._wake.set()

    async def run(self) -> None:
        # Startup waits for a full LIST of every kind: no action on a partial view.
        await self.resync()
        # The index as listed lives as long as the process: leave it out of every later
        # collection, or each full one walks 10,000 records while an event waits.
        gc.collect()
        gc.freeze()
        self.view_complete.set()
        logger.info("The view of the cluster is complete (%d engines, %d models, %d breakers); "
                    "reconciling.", len(self.index.engines), len(self.index.models),
                    len(self.index.breakers))
        synced_at = self.clock()
        planned_at = -math.inf
        while True:
            if self.clock() - synced_at >= self.config.resync_interval:
                with contextlib.suppress(*_WRITE_ERRORS):
                    await self.resync()
                synced_at = self.clock()
            try:
                await self.refresh_statuses()
                due = self._full_pass_due(planned_at)
                if due <= self.clock():
                    planned_at = self.clock()
                    started = time.perf_counter()
                    self.index.planning_inputs_changed = False
                    self.last_result = await self.reconcile_once()
                    took = time.perf_counter() - started
                    self.metrics.reconcile_duration_seconds.observe(took)
                    self._quiet_until = self.clock() + took
                    self.passes += 1
                    if self.passes == 1:
                        logger.info("First reconcile pass done: %s", self.last_result)
            except Exception:
                # Our bug, not the user's: log it with its traceback, try again next pass.
                logger.exception("Reconcile pass failed.")
                self.last_result = PassResult()
            await self._sleep(self._full_pass_due(planned_at))

    def _full_pass_due(self, planned_at: float) -> float:
        """When the next full pass is due: `interval` after the last one, sooner when
        something the planner reads changed or a phase ends."""
        due = planned_at + self.config.interval
        if self.index.planning_inputs_changed:
            due = min(due, max(planned_at + self.config.plan_gap, self._quiet_until))
        if self.last_result.next_due is not None:
            due = min(due, self.last_result.next_due)
        return due

    async def refresh_statuses(self) -> int:
        """The fast path: export and rewrite the status of the models whose spec or engines
        changed since the last look, each from a fleet of its own engines. Writes are the
        leader's, after its first full pass (which sets up what the breakers hold)."""
        dirty = self.index.take_dirty_models()
        if not dirty:
            return 0
        leading = self.is_leader()
        now = self.clock()
        writes = []
        self._refreshed |= dirty
        for key in dirty:
            namespace, name = key
            record = self.index.models.records.get(key)
            if record is None or record.value is None:
                continue  # gone or invalid: the full pass reports it
            engines = [r.value for r in self.index.engines_of(namespace, name)
                       if r.value is not None]
            own = fleet_.Fleet.of(engines=engines, models=[record.value])
            view = drift.measure(own, queue.ActionQueue(), now).models[name]
            self._export_model(key, view)
            state = self.namespaces.get(namespace)
            if not leading or state is None:
                continue
            wanted = status_.model_status(
                model=record.value, view=view, failed=status_.failed_engines(own).get(name, 0),
                existing=record.status, held_reason=state.held_by.get(name), now=now)
            if status_.changed(record.status, wanted):
                writes.append(self._write_status(client.MODELS, record.meta, wanted))
        return sum(await asyncio.gather(*writes))

    async def resync(self) -> None:
        """LIST every kind (paginated) into the index; drop what the LIST no longer has."""
        kinds = ((self.index.engines, client.ENGINES), (self.index.models, client.MODELS),
                 (self.index.breakers, client.BREAKERS))
        namespaces: tuple[str | None, ...] = self.config.namespaces or (None,)
        for store, resource in kinds:
            for namespace in namespaces:
                listed: set[index.Key] = set()
                version = ""
                async for page in self.api.pages(resource, namespace=namespace):
                    version = version or str((page.get("metadata") or {}).get(
                        "resourceVersion") or "")
                    listed |= store.listed(page.get("items") or [])
                store.forget_unlisted(listed, list_version=version, namespace=namespace)
        self.wake()

    async def _sleep(self, due: float) -> None:
        timeout = max(0.0, min(self.config.interval, due - self.clock()))
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            await asyncio.sleep(self.config.debounce)
        except TimeoutError:
            pass
        self._wake.clear()

    async def reconcile_once(self) -> PassResult:
        now = self.clock()
        leading = self.is_leader()
        if leading != self._was_leader:
            # A new leader starts from the cluster, never from a queue planned by someone else.
            self.namespaces.clear()
            self._was_leader = leading
        self.metrics.leader.set(1 if leading else 0)
        result = PassResult()
        views = snapshot(self.index)
        self._refreshed = set()
        versions = dict(self.index.planning_versions)  # of this view, whatever comes during
        held = pending = 0
        oldest = 0.0
        stale_view = 0
        for namespace, view in sorted(views.items()):
            version = versions.get(namespace, 0)
            fleet = self._fleet(namespace, view, version=version)
            if leading:
                state = self.namespaces.setdefault(
                    namespace, Namespace(queue.ActionQueue(),
                                         gate.Gate(gate.GateConfig(guarded=self.config.guarded))))
                report, executed = await self._act(namespace, view=view, fleet=fleet,
                                                   version=version, state=state, now=now,
                                                   result=result)
                for done in executed.values():
                    fleet = fleet.with_engine(done.engine)
                await self._drive(namespace, view=view, fleet=fleet, executed=executed, now=now,
                                  result=result)
                held_here, pending_here = _queue_states(state)
                held += held_here
                pending += pending_here
                oldest = max(oldest, report.oldest_plan_age)
                stale_view += report.stale_view_engines
            else:
                report, _ = self._measure(namespace, fleet, queue.ActionQueue(), now=now)
                self._observe_breakers(namespace, view=view, now=now)
            self._export_models(namespace, report)
        present = {(ns, r.meta.name) for ns, v in views.items() for r in v.models if r.value}
        self.metrics.forget_models_except(present)
        self._exported = {k: v for k, v in self._exported.items() if k in present}
        self.metrics.forget_breakers_except(
            (ns, r.meta.name) for ns, v in views.items() for r in v.breakers)
        self.metrics.set_queue(held=held, pending=pending, oldest_plan_age=oldest)
        self.metrics.planner_view_stale_engines.set(stale_view)
        if result.executed or result.refused or result.conflicts or result.transitions:
            logger.debug("Pass: %s", result)
        return result

    def _fleet(self, namespace: str, view: View, *, version: int) -> fleet_.Fleet:
        """The namespace's fleet, rebuilt only when something the core reads changed: a
        steady fleet's pass reuses it and the counts it already computed."""
        cached = self._fleets.get(namespace)
        if cached is None or cached[0] != version:
            cached = self._fleets[namespace] = (version, build_fleet(view))
        return cached[1]

    def _measure(
        self, namespace: str, fleet: fleet_.Fleet, pending: queue.ActionQueue, *, now: float
    ) -> tuple[drift.DriftReport, dict[str, int]]:
        """The drift report and the failed engines per model. The models' part depends on
        the fleet only, so a steady fleet's pass reuses it; the queue's is measured anew
        (a fleet without models measures just that)."""
        cached = self._measured.get(namespace)
        if cached is None or cached[0] is not fleet:
            models = drift.measure(fleet, queue.ActionQueue(), now).models
            cached = self._measured[namespace] = (fleet, models, status_.failed_engines(fleet))
        queued = drift.measure(fleet_.Fleet(engines=fleet.engines), pending, now)
        return dataclasses.replace(queued, models=cached[1]), cached[2]

    async def _let_events_in(self) -> None:
        """Around the planner (tens of ms at 10,000 engines), let the watch events that
        arrived into the index and rewrite the status of the models they touch, rather
        than have them wait for the rest of the pass."""
        await asyncio.sleep(self.config.debounce)
        await self.refresh_statuses()

    # -- the leader's pass over one namespace ------------------------------------------

    async def _act(
        self, namespace: str, *, view: View, fleet: fleet_.Fleet, version: int,
        state: Namespace, now: float, result: PassResult,
    ) -> tuple[drift.DriftReport, dict[str, Executed]]:
        """`version` is the planning version `fleet` was built from: what came in during
        the pass (another namespace's writes let events in) is planned next pass."""
        report, failed = self._measure(namespace, fleet, state.queue, now=now)
        state.signals.observe(report, now=now,
                              available=available_models(view, known=state.signals.established))
        self._step_breakers(namespace, view=view, fleet=fleet, state=state, report=report, now=now)
        self._settle_probes(namespace, view=view, fleet=fleet, state=state, now=now)
        await self._plan(fleet=fleet, version=version, state=state, now=now)
        invalid_breakers = [r for r in view.breakers if r.value is None]
        # Publish what a release would run before anything can run (a dry run).
        plans = {name: state.gate.release_plan(state.queue, fleet, machine, now)
                 for name, machine in state.machines.items()
                 if machine.state is breaker.BreakerState.OPEN}
        if invalid_breakers:
            # A breaker we cannot read might be someone's manual trip: act on nothing here.
            decisions: list[gate.Decision] = []
        else:
            decisions = state.gate.triage(state.queue, fleet, state.machines, now)
            decisions = _spread_assigns(decisions, limit=self.config.max_assigns_per_pass)
        state.held_by = _held_by_open_breakers(fleet, machines=state.machines)
        state.held_by.update(_held_by_breakers(decisions))
        # Status first: it describes the fleet the decisions were made on, and a cold start's
        # thousand actions should not keep a thousand models' status waiting.
        await self._write_model_statuses(namespace, view=view, report=report, failed=failed,
                                         state=state, now=now, result=result)
        executed = await self._execute(namespace, view=view, decisions=decisions, fleet=fleet,
                                       state=state, now=now, result=result)
        self._report_decisions(namespace, view=view, decisions=decisions, fleet=fleet,
                               state=state)
        result.refused += sum(1 for d in decisions if d.verdict is gate.Verdict.REFUSE)
        result.held += sum(1 for d in decisions if d.verdict is gate.Verdict.HOLD)
        queued = len(state.queue)
        gate.settle(state.queue, decisions)
        if len(state.queue) != queued:
            state.planned_version = None  # executed or refused: re-plan from what is left
        state.held_by_breakers = sum(1 for d in decisions if d.reason in _BREAKER_HOLDS)
        report, _ = self._measure(namespace, fleet, state.queue, now=now)  # the settled queue
        await self._write_breaker_statuses(namespace, view=view, state=state, plans=plans,
                                           now=now, result=result)
        await self._report_invalid(namespace, view=view, now=now, result=result)
        for name, machine in state.machines.items():
            self.metrics.set_breaker(key=(namespace, name), state=machine.state.value,
                                     seconds_in_state=now - machine.since)
        return report, executed

    async def _plan(
        self, *, fleet: fleet_.Fleet, version: int, state: Namespace, now: float,
    ) -> None:
        """Queue the planner's intents: from the live fleet, or with `--naive` from the
        incident's view (`planner.CachedView`: cached while a breaker is Open, with what
        was queued assumed done, so plans build on plans that never ran)."""
        naive = not self.config.guarded
        paused = naive and any(m.state is breaker.BreakerState.OPEN
                               for m in state.machines.values())
        released, state.paused = state.paused and not paused, paused
        if released:
            # As the incident's manager did: the release meets the backlog as the pause left
            # it (fresh plans coalesced over it first would hide the flush); re-plan next pass.
            state.planned_version = None
            return
        # Guarded plans from the live, watch-fed view, always: the guard's point is that it
        # never needs a stale view. Nothing queued runs unless the gate finds its premises
        # still hold, and the write carries the planned resourceVersion.
        view = state.cached.current(fleet, paused=paused) if naive else fleet
        if state.planned_version == version and view is state.planned_from:
            # The planner is a pure function of the view: an unchanged view has its plan in
            # the queue already (anything the last triage dropped re-opens planning).
            return
        await self._let_events_in()
        intents = planner.plan(view)
        state.queue.enqueue(intents, view, now)
        state.cached.assume(view, intents, paused=paused)
        state.planned_version, state.planned_from = version, view
        await self._let_events_in()

    def _step_breakers(
        self, namespace: str, *, view: View, fleet: fleet_.Fleet, state: Namespace,
        report: drift.DriftReport, now: float,
    ) -> None:
        present = set()
        for record in view.breakers:
            spec = record.value
            if spec is None:
                continue
            present.add(spec.name)
            machine = state.machines.get(spec.name)
            if machine is None:
                machine = state.machines[spec.name] = restore_machine(record, spec, now=now)
                before = _saved_state(record)  # what `kubectl get cb` showed until now
            else:
                before = machine.state
            governed = [m.name for m in fleet.models.values() if spec.governs(m)]
            machine.observe(spec, state.signals.signals(breaker=spec, models=governed, now=now),
                            now)
            self._announce_breaker(record.meta, machine=machine, before=before)
        for gone in set(state.machines) - present:
            del state.machines[gone]

    def _announce_breaker(
        self, meta: records.Meta, *, machine: breaker.BreakerMachine,
        before: breaker.BreakerState,
    ) -> None:
        if machine.state is before:
            return
        reason, kind = {
            breaker.BreakerState.OPEN: ("BreakerOpened", events.WARNING),
            breaker.BreakerState.HALF_OPEN: ("BreakerHalfOpen", events.NORMAL),
            breaker.BreakerState.CLOSED: ("BreakerClosed", events.NORMAL),
        }[machine.state]
        why = machine.reason.value if machine.reason else "probes succeeded"
        message = f"{before.value} -> {machine.state.value} ({why})"
        if machine.state is breaker.BreakerState.HALF_OPEN:
            message += f" after a pause of {machine.last_pause_seconds:.0f}s"
        self._event(meta, "CircuitBreaker", kind, reason, message)

    def _settle_probes(
        self, namespace: str, *, view: View, fleet: fleet_.Fleet, state: Namespace, now: float
    ) -> None:
        """A HalfOpen probe succeeds when its engine serves (or idles, for a drain)."""
        metas = {r.meta.name: r.meta for r in view.breakers}
        for name, probe in list(state.probes.items()):
            engine = fleet.engines.get(name)
            if engine is None or engine.phase is specs.Phase.FAILED:
                outcome: bool | None = False
            elif probe.model is None:
                outcome = True if engine.phase is specs.Phase.IDLE else None
            else:
                outcome = True if engine.serves(probe.model) else None
            if outcome is None:
                continue
            del state.probes[name]
            for breaker_name in probe.breakers:
                machine = state.machines.get(breaker_name)
                meta = metas.get(breaker_name)
                if machine is None or meta is None:
                    continue
                before = machine.state
                machine.record_probe(outcome, now)
                self._announce_breaker(meta, machine=machine, before=before)

    async def _execute(
        self, namespace: str, *, view: View, decisions: list[gate.Decision],
        fleet: fleet_.Fleet,
        state: Namespace, now: float, result: PassResult,
    ) -> dict[str, Executed]:
        chosen = [d for d in decisions if d.verdict is gate.Verdict.EXECUTE]
        outcomes = await asyncio.gather(*(
            self._write_action(namespace, d.action, fleet=fleet, now=now) for d in chosen))
        executed: dict[str, Executed] = {}
        for decision, (outcome, done) in zip(chosen, outcomes, strict=True):
            action = decision.action
            kind = action.intent.kind.value.lower()
            self.metrics.count_action(kind=kind, result=outcome)
            governing = tuple(name for name, m in state.machines.items()
                              if m.state is breaker.BreakerState.HALF_OPEN
                              and _governs(m, action.intent, fleet))
            if done is not None:
                result.executed += 1
                executed[action.intent.engine] = done
                if decision.probe:
                    state.probes[action.intent.engine] = Probe(action.intent.model, governing)
                continue
            if decision.probe:
                for name in governing:  # the probe never ran: give its slot back
                    state.machines[name].cancel_probe()
            if outcome == "conflict":
                result.conflicts += 1
                self._event(view.meta("InferenceEngine", namespace, action.intent.engine),
                            "InferenceEngine", events.NORMAL, "ActionConflict",
                            f"action {action.id} ({action.intent.kind.value}) lost to a newer "
                            f"write (planned from resourceVersion "
                            f"{action.planned_from.engine_resource_version}); re-planning")
        return executed

    async def _write_action(
        self, namespace: str, action: queue.Action, *, fleet: fleet_.Fleet, now: float
    ) -> tuple[str, Executed | None]:
        """Execute one action: the binding, as a patch that fails if the engine changed."""
        if not self.is_leader():
            return "failed", None
        intent = action.intent
        target = fleet.models.get(intent.model) if intent.model else None
        patch = actions.binding_patch(action, revision=target.revision if target else None,
                                      precondition=self.config.guarded)
        async with self._writes:
            try:
                body = await self.api.merge_patch(
                    client.ENGINES, namespace=namespace, name=intent.engine, patch=patch)
            except client.Conflict:
                return "conflict", None
            except _WRITE_ERRORS as error:
                logger.warning("Action %s on %s failed: %s", action.id, intent.engine, error)
                return "failed", None
        self._remember(client.ENGINES, body)
        last_action = actions.last_action(action, time=status_.timestamp(now))
        try:
            engine = specs.parse_engine(body)
        except specs.SpecError:
            engine = fleet.engines[intent.engine]
        generation = int((body.get("metadata") or {}).get("generation") or 0)
        return "executed", Executed(engine, generation, last_action)

    def _report_decisions(
        self, namespace: str, *, view: View, decisions: list[gate.Decision],
        fleet: fleet_.Fleet, state: Namespace,
    ) -> None:
        refusals: collections.Counter[str] = collections.Counter()
        for decision in decisions:
            intent = decision.action.intent
            if decision.verdict is gate.Verdict.REFUSE:
                refusals[decision.reason.value] += 1
                expired = decision.reason is gate.Reason.EXPIRED
                self.metrics.count_action(kind=intent.kind.value.lower(),
                                          result="expired" if expired else "refused")
                if expired:
                    self._event(view.meta("InferenceEngine", namespace, intent.engine),
                                "InferenceEngine", events.WARNING, "ActionExpired",
                                f"action {decision.action.id} ({intent.kind.value}) "
                                f"expired: {decision.message}")
            elif decision.verdict is gate.Verdict.HOLD and decision.reason is gate.Reason.FLOOR:
                model = intent.from_model or ""
                if model in fleet.models:
                    self._event(view.meta("ModelCapacity", namespace, model),
                                "ModelCapacity", events.NORMAL, "FloorProtected",
                                decision.message)
        self.metrics.count_refusals(refusals)
        for name, batch in state.gate.last_refused_batches.items():
            key = f"{batch.batch}@{batch.time}"
            if state.seen_batches.get(name) == key:
                continue
            state.seen_batches[name] = key
            self.metrics.refused_batches_total.labels(namespace, name).inc()
            self._event(view.meta("CircuitBreaker", namespace, name), "CircuitBreaker",
                        events.WARNING, "BatchRefused",
                        f"refused post-pause batch {batch.batch}: {batch.size} actions, oldest "
                        f"planned {batch.oldest_plan_age:.0f}s ago; re-planning from the cluster")

    # -- status ---------------------------------------------------------------------------

    async def _write_model_statuses(
        self, namespace: str, *, view: View, report: drift.DriftReport,
        failed: Mapping[str, int], state: Namespace, now: float, result: PassResult,
    ) -> None:
        writes = []
        checked: dict[str, tuple[records.ModelRecord, drift.ModelDrift, int, str | None]] = {}
        refreshed = [(namespace, r.meta.name) for r in view.models
                     if (namespace, r.meta.name) in self._refreshed]
        if refreshed:
            # Refreshed during this pass: newer than this pass's view, so not rewritten from
            # it; the fast path looks again right after, with what this pass holds.
            self.index.mark_dirty(refreshed)
            self.wake()
        for record in view.models:
            model = record.value
            if model is None or (namespace, record.meta.name) in self._refreshed:
                continue
            inputs = (report.models[model.name], failed.get(model.name, 0),
                      state.held_by.get(model.name))
            before = state.status_checked.get(model.name)
            if before is not None and before[0] is record and before[1:] == inputs:
                checked[model.name] = before  # same object, same numbers: still no write
                continue
            wanted = status_.model_status(
                model=model, view=inputs[0], failed=inputs[1], existing=record.status,
                held_reason=inputs[2], now=now)
            if status_.changed(record.status, wanted):
                writes.append(self._write_status(client.MODELS, record.meta, wanted))
            else:
                checked[model.name] = (record, *inputs)
        state.status_checked = checked
        result.status_writes += sum(await asyncio.gather(*writes))

    async def _write_breaker_statuses(
        self, namespace: str, *, view: View, state: Namespace,
        plans: Mapping[str, gate.ReleasePlan], now: float, result: PassResult,
    ) -> None:
        writes = []
        for record in view.breakers:
            machine = state.machines.get(record.meta.name)
            if machine is None:
                continue
            wanted = status_.breaker_status(
                record=record, machine=machine, plan=plans.get(machine.name),
                refused=state.gate.last_refused_batches.get(machine.name), now=now)
            last = state.breaker_written_at.get(machine.name, 0.0)
            stale = now - last >= BREAKER_STATUS_REFRESH
            if status_.changed(record.status, wanted) or stale:
                state.breaker_written_at[machine.name] = now
                writes.append(self._write_status(client.BREAKERS, record.meta, wanted))
        result.status_writes += sum(await asyncio.gather(*writes))

    async def _report_invalid(
        self, namespace: str, *, view: View, now: float, result: PassResult
    ) -> None:
        """A bad spec: a False condition and one Event, never a retry storm."""
        bad: list[tuple[client.Resource, str, records.Meta, specs.SpecError,
                        Mapping[str, Any]]] = []
        bad += [(client.ENGINES, "InferenceEngine", r.meta, r.error, r.status)
                for r in view.engines if r.error]
        bad += [(client.MODELS, "ModelCapacity", r.meta, r.error, r.status)
                for r in view.models if r.error]
        bad += [(client.BREAKERS, "CircuitBreaker", r.meta, r.error, r.status)
                for r in view.breakers if r.error]
        writes = []
        for resource, kind, meta, error, existing in bad:
            builder = (status_.invalid_model_status if resource is client.MODELS
                       else status_.invalid_status)
            wanted = builder(error=error, existing=existing, generation=meta.generation, now=now)
            self._event(meta, kind, events.WARNING, status_.INVALID_SPEC, str(error))
            if status_.changed(existing, wanted):
                writes.append(self._write_status(resource, meta, wanted))
        result.status_writes += sum(await asyncio.gather(*writes))

    async def _write_status(
        self, resource: client.Resource, meta: records.Meta, status: Mapping[str, Any]
    ) -> bool:
        if not self.is_leader():
            return False
        async with self._writes:
            try:
                body = await self.api.merge_patch(
                    resource, namespace=meta.namespace, name=meta.name,
                    patch={"status": dict(status)}, subresource="status")
            except client.NotFound:
                return False  # deleted meanwhile
            except _WRITE_ERRORS as error:
                logger.warning("Status of %s/%s not written: %s", resource.plural, meta.name, error)
                return False
        self._remember(resource, body)
        return True

    def _remember(self, resource: client.Resource, body: Mapping[str, Any]) -> None:
        """What the server answered is the object now: into the index at once, so the next
        look does not write the same status again before the watch brings it back."""
        stores: dict[str, index.Store[Any]] = {
            client.ENGINES.plural: self.index.engines, client.MODELS.plural: self.index.models,
            client.BREAKERS.plural: self.index.breakers}
        store = stores.get(resource.plural)
        if store is not None and (body.get("metadata") or {}).get("resourceVersion"):
            store.apply(body)

    # -- the simulated driver -------------------------------------------------------------

    async def _drive(
        self, namespace: str, *, view: View, fleet: fleet_.Fleet,
        executed: Mapping[str, Executed], now: float, result: PassResult,
    ) -> None:
        """Move engines one phase on (simulated driver), recording this pass's actions in
        the same status write; with no driver, only the actions are recorded.

        Recording an action never waits; other writes beyond `max_engine_writes_per_pass`
        do (phase moves first, then an unhandled engine's first Idle and generation-only
        notes), and the next pass comes at once for them."""
        simulated = self.config.engine_driver == driver.SIMULATED
        records_by_name = {r.meta.name: r for r in view.engines} if simulated else {}
        recording: list[tuple[str, dict[str, Any]]] = []
        moves: list[tuple[str, dict[str, Any]]] = []
        notes: list[tuple[str, dict[str, Any]]] = []
        for name, engine in fleet.engines.items() if simulated else ():
            record = records_by_name.get(name)
            if record is None:
                continue
            step = driver.transition(engine, config=self.config.driver_config, now=now,
                                     roll=self._roll)
            if step.due is not None:
                result.next_due = min(step.due, result.next_due or step.due)
            if step.transition is None:
                if record.status.get("observedGeneration") not in (None, record.meta.generation):
                    # A spec change with no phase change (a cordon, say): say it was seen.
                    notes.append((name, {
                        "status": {"observedGeneration": record.meta.generation}}))
                continue
            done = executed.get(name)
            patch = driver.status_patch(
                step.transition, engine=engine,
                generation=done.generation if done else record.meta.generation,
                existing_conditions=record.status.get("conditions"), now=now)
            if done is not None:
                patch["status"]["lastAction"] = done.last_action
                recording.append((name, patch))
            elif engine.since is None:
                notes.append((name, patch))  # first seen: it is Idle whether we say so or not
            else:
                moves.append((name, patch))
        recorded = {name for name, _ in recording}
        for name, done in executed.items():
            if name not in recorded:  # no phase change now: record the action on its own
                recording.append((name, {"status": {"lastAction": done.last_action}}))
        others = moves + notes
        budget = self.config.max_engine_writes_per_pass
        if len(others) > budget:
            result.next_due = now
        writes = [self._record_action(namespace, name, patch) for name, patch in recording]
        writes += [self._write_engine_status(namespace, name, patch)
                   for name, patch in others[:budget]]
        for written in await asyncio.gather(*writes):
            if written is not None:
                result.transitions += 1

    async def _record_action(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> specs.Engine | None:
        """Record an executed action on its engine, even if the engine changed meanwhile.

        The phase move in `patch` carries the engine's resourceVersion and may lose to
        another write (it is re-derived next pass); the record of what ran may not be
        lost, and it overwrites nothing but itself, so it is retried without a precondition.
        """
        written = await self._write_engine_status(namespace, name, patch)
        if written is None and "metadata" in patch:
            record = {"status": {"lastAction": patch["status"]["lastAction"]}}
            written = await self._write_engine_status(namespace, name, record)
        return written

    async def _write_engine_status(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> specs.Engine | None:
        if not self.is_leader():
            return None
        async with self._writes:
            try:
                body = await self.api.merge_patch(client.ENGINES, namespace=namespace, name=name,
                                                  patch=patch, subresource="status")
            except (client.Conflict, client.NotFound):
                return None  # the engine changed or went: the next pass sees it as it is
            except _WRITE_ERRORS as error:
                logger.warning("Engine %s status not written: %s", name, error)
                return None
        self._remember(client.ENGINES, body)
        try:
            return specs.parse_engine(body)
        except specs.SpecError:
            return None

    # -- observing (non-leader) and exporting ---------------------------------------------

    def _observe_breakers(self, namespace: str, *, view: View, now: float) -> None:
        for record in view.breakers:
            saved = record.status.get("state")
            if saved in metrics_.BREAKER_STATES:
                since = status_.parse_timestamp(record.status.get("since")) or now
                self.metrics.set_breaker(key=(namespace, record.meta.name), state=str(saved),
                                         seconds_in_state=max(0.0, now - since))

    def _export_models(self, namespace: str, report: drift.DriftReport) -> None:
        for name, model in report.models.items():
            self._export_model((namespace, name), model)

    def _export_model(self, key: metrics_.ModelKey, model: drift.ModelDrift) -> None:
        if self._exported.get(key) == model:
            return  # a thousand models' gauges cost more than comparing them
        self._exported[key] = model
        self.metrics.set_model(key=key, desired=model.desired, serving=model.serving,
                               floor=model.floor)

    # -- events ---------------------------------------------------------------------------

    def _event(self, meta: records.Meta, kind: str, type_: str, reason: str,
               message: str) -> None:
        if not self.is_leader():
            return
        ref = events.ObjectRef(API_VERSION, kind, meta.namespace, meta.name, meta.uid)
        self.recorder.record(events.Event(ref, type_, reason, message))


def _spread_assigns(decisions: list[gate.Decision], *, limit: int) -> list[gate.Decision]:
    """Leave assigns over the limit out of this pass (they stay queued, still valid).

    Only an assign may wait: it takes no token and no capacity, and it is not a probe;
    everything the gate counted against a budget runs in the pass that decided it."""
    kept, assigns = [], 0
    for d in decisions:
        if d.verdict is gate.Verdict.EXECUTE and not d.action.intent.disruptive and not d.probe:
            assigns += 1
            if assigns > limit:
                continue
        kept.append(d)
    return kept


def _held_by_open_breakers(
    fleet: fleet_.Fleet, *, machines: Mapping[str, breaker.BreakerMachine]
) -> dict[str, str]:
    """Model -> why, for every model an Open breaker governs.

    Level-triggered on the breaker's state rather than on this pass's decisions: while a
    breaker is Open, an action refused as stale is re-planned and held again a pass later,
    and the model's Progressing condition must not flap to Converging in between.
    """
    held: dict[str, str] = {}
    for model in fleet.models:
        for spec in fleet.breakers_for(model):
            machine = machines.get(spec.name)
            if machine is not None and machine.state is breaker.BreakerState.OPEN:
                held[model] = f"breaker {spec.name} is Open"
                break
    return held


def _held_by_breakers(decisions: list[gate.Decision]) -> dict[str, str]:
    """Model -> why a breaker holds its actions (the first hold's message)."""
    held_by: dict[str, str] = {}
    for d in decisions:
        if d.verdict is gate.Verdict.HOLD and d.reason in _BREAKER_HOLDS:
            for name in (d.action.intent.model, d.action.intent.from_model):
                if name:
                    held_by.setdefault(name, d.message)
    return held_by


def _saved_state(record: records.BreakerRecord) -> breaker.BreakerState:
    try:
        return breaker.BreakerState(record.status.get("state"))
    except ValueError:
        return breaker.BreakerState.CLOSED


def _governs(machine: breaker.BreakerMachine, intent: planner.Intent,
             fleet: fleet_.Fleet) -> bool:
    models = [fleet.models.get(m) for m in (intent.model, intent.from_model) if m]
    return any(m is not None and machine.spec.governs(m) for m in models)


def _queue_states(state: Namespace) -> tuple[int, int]:
    """(held by a breaker, pending on budgets/rates/floor) after this pass's triage."""
    held = state.held_by_breakers
    return held, max(0, len(state.queue) - held)
