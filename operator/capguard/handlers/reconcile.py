"""The reconcile loop: the operator's I/O shell around the core's pipeline step.

Each full pass reads the index (kept current by Kopf from the watch streams), builds
one frozen `Fleet` per namespace and hands it to that namespace's
`capguard.core.pipeline.Pipeline`, which decides everything. Then, and only on the
leader, the pass writes what the step returned: model statuses, the actions (a merge
patch carrying the resourceVersion the action was planned from), the simulated
driver's phase moves, breaker statuses; the narrator tells it as Events and metrics. A
standby exports the breaker states the leader wrote, and no model or pool gauge (a
second copy would make every alert on them fire twice).
Nothing is a replay of events: a pass after a restart is the same as any other pass.

Between full passes (at most `interval` apart, at least `plan_gap` apart while things
change), a watch event wakes the loop for the fast path: the status of just the models
whose spec or engines changed, each computed from its own engines (a model's counts
depend on nothing else). So a change shows in status in milliseconds even at 10,000
engines, and a steady fleet costs neither planning nor writes. A full pass lets the
fast path run just before and just after its step, and then leaves the models it refreshed alone
(their status is newer than the pass's snapshot).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import gc
import logging
import math
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final, TypeVar

from capguard import defaults
from capguard import metrics as metrics_
from capguard.core import backoff, drift, engines, gate, pipeline, specs
from capguard.core import fleet as fleet_
from capguard.handlers import driver, index, narrator, statuses, writer
from capguard.handlers import status as status_
from capguard.handlers import view as view_
from capguard.kube import client, events, heartbeats

logger = logging.getLogger(__name__)

RESYNC_RETRY_CAP: Final = 5.0  # seconds between LIST tries while the API is down, at most

_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class Config:
    engine_driver: str = defaults.DRIVER
    driver_config: driver.DriverConfig = dataclasses.field(default_factory=driver.DriverConfig)
    guarded: bool = True
    interval: float = defaults.RECONCILE_INTERVAL
    debounce: float = 0.002  # let a burst of watch events arrive before looking
    # While the cluster changes, a full pass follows the last one after this, and after as
    # long again as that one took: at 10,000 engines the fast path gets half the loop.
    plan_gap: float = 0.02
    write_concurrency: int = 16
    # A model's status progress is rewritten at most this often while its engines keep
    # changing: the first change is written at once, those after it together when the
    # interval is up (`Reconciler._throttled`). An unhandled start of 10,000 engines
    # otherwise wrote every model's status ~20 times (as many writes as the engines' own).
    # While full passes take longer than this (a catch-up), the interval is as long as the
    # last pass took: a model's progress is written about once a pass.
    model_status_interval: float = 1.0
    max_write_delay: float = defaults.MAX_WRITE_DELAY  # an older triage is not written
    seed: int | None = None
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    resync_interval: float = 300.0  # a full LIST now and then drops what a watch missed
    # Assigns beyond this wait in the queue for the next pass, so a cold start of 10,000
    # idle engines still updates status and metrics every pass instead of after the storm.
    # A backlog starts at `first_assigns_per_pass` and doubles each pass whose assigns were
    # all written, up to `max_assigns_per_pass`, and halves after a failed or late one
    # (`slow_start`, as client-go's slowStartBatch creates a ReplicaSet's pods): the first
    # pass, which every model status waits for, stays short, and a server that fails
    # writes, or cannot take a pass's assigns within `max_write_delay` of their triage, is
    # not sent the next thousands. A pass that wrote its whole limit is followed at once.
    # The most is high: what holds a pass's assigns down is `max_write_delay`, which a
    # server too slow for them trips (halving the next), not a fixed number. Every pass
    # reads the whole fleet, so a fixed 4,000 made a 50,000-engine catch-up passes x fleet:
    # 396 s to every model serving, 156-169 s at 16,000 (with the server's CEL memo).
    first_assigns_per_pass: int = 1000
    max_assigns_per_pass: int = 16000
    # Engine status writes beyond recording this pass's actions (phase moves, an unhandled
    # engine's first Idle) wait for the next pass beyond this, for the same reason.
    max_engine_writes_per_pass: int = 16000
    # With engine agents: an engine whose agent has not said it is alive for this long
    # counts as out of service (`core.engines.heard`). The simulated driver vouches for
    # the engines itself.
    heartbeat_timeout: float = defaults.HEARTBEAT_TIMEOUT

    @property
    def heard_within(self) -> float | None:
        """The heartbeat bound that applies: agents' engines only, and 0 turns it off
        (agents that send no heartbeat: their status is believed as it is)."""
        if self.engine_driver != driver.AGENT or self.heartbeat_timeout <= 0:
            return None
        return self.heartbeat_timeout

    def pipeline(self) -> pipeline.Config:
        return pipeline.Config(
            gate=gate.GateConfig(guarded=self.guarded),
            cached_view_while_paused=not self.guarded,  # --naive: the incident's manager
            max_assigns_per_step=self.max_assigns_per_pass,
        )


def slow_start(limit: int, *, executed: int, failed: int, config: Config) -> int:
    """The next pass's assign limit in a namespace after a pass that had ``limit``: twice
    it (up to `max_assigns_per_pass`) when the pass used it all and every assign was
    written; half of it (not below `first_assigns_per_pass`) when a write failed or went
    out too late (a server that cannot take this many within `max_write_delay`); the
    first again once a backlog is drained."""
    if failed:
        return max(config.first_assigns_per_pass, limit // 2)
    if executed < limit:
        return config.first_assigns_per_pass
    return min(2 * limit, config.max_assigns_per_pass)


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

    def due(self, at: float | None) -> None:
        if at is not None:
            self.next_due = min(at, self.next_due if self.next_due is not None else at)

    def __str__(self) -> str:
        return (f"{self.executed} actions executed, {self.refused} refused, {self.held} held, "
                f"{self.conflicts} conflicts, {self.status_writes} statuses written, "
                f"{self.transitions} engine statuses written")


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """What a pass's thread found for one namespace (`Reconciler._prepare`)."""

    fleet: fleet_.Fleet
    falls_silent: float | None  # when the next heard engine falls silent, if it stays quiet
    step: pipeline.StepResult
    changed: Mapping[str, drift.ModelDrift]  # models whose numbers moved since the last pass
    failed: Mapping[str, int]  # failed engines per model
    invalid: list[statuses.Invalid]
    assign_limit: int  # the assigns the step was allowed (`slow_start`)


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
        self.metrics = metrics
        self.config = config
        self.is_leader = is_leader
        self.clock = clock
        self.index = index.Index()
        self.view_complete = asyncio.Event()
        self.pipelines: dict[str, pipeline.Pipeline] = {}
        self.passes = 0
        self.last_result = PassResult()
        self.writer = writer.Writer(api=api, index=self.index, is_leader=is_leader,
                                    concurrency=config.write_concurrency,
                                    max_write_delay=config.max_write_delay)
        self.narrator = narrator.Narrator(recorder=recorder, metrics=metrics, leading=False)
        metrics.measure_workqueue(
            name="models", depth=lambda: len(self.index.dirty_models) + len(self._deferred))
        self.statuses = statuses.StatusBook()
        self._driver = (config.driver_config if config.engine_driver == driver.SIMULATED
                        else None)
        self._wake = asyncio.Event()
        # The step and the status rendering of a full pass run here, off the event loop:
        # at 30,000 engines a pass is hundreds of ms that no watch event should wait for.
        self._worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="capguard-pass")
        # Models whose status the fast path wrote during the current full pass: newer than
        # the pass's snapshot, so the pass leaves them to the fast path.
        self._refreshed: set[index.Key] = set()
        # Models whose status the fast path last wrote (monotonic time), and those that
        # changed again within `model_status_interval` of it: when to look again.
        self._status_written: dict[index.Key, float] = {}
        self._deferred: dict[index.Key, float] = {}
        self._deferred_wake: asyncio.TimerHandle | None = None
        # namespace -> model -> why a breaker holds it, as the last step said (fast path)
        self._held_by: dict[str, Mapping[str, str]] = {}
        # (namespace, model) -> (generation, drift) of the last full pass: the allocation
        # needs the whole namespace, so the fast path, which sees one model, reuses it. A
        # pass writes it from its thread, one key at a time, while the fast path reads it.
        self._shares: dict[index.Key, tuple[int, drift.ModelDrift]] = {}
        self._assign_limits: dict[str, int] = {}  # namespace -> its next pass's (slow_start)
        self._roll = driver.make_roll(config.seed)
        self._jitter = random.Random(config.seed).random
        self._was_leader = False
        self._resync_due = False
        self._listed_at = -math.inf  # monotonic end of the last successful LIST
        self._lists = 0  # successful LISTs of everything so far
        # (kind, namespace) -> the resourceVersion of its last LIST: where its watch starts
        self._list_versions: dict[tuple[str, str | None], str] = {}
        self.progress_at = time.monotonic()  # the loop's last sign of life (liveness)
        self._quiet_until = 0.0
        self._pass_took = 0.0  # seconds the last full pass took
        # namespace -> (planning version, which engines are silent, fleet)
        self._fleets: dict[str, tuple[int, engines.Hearing, fleet_.Fleet]] = {}
        # namespace -> (fleet, failed engines per model)
        self._failed_by_fleet: dict[str, tuple[fleet_.Fleet, dict[str, int]]] = {}

    def wake(self) -> None:
        """Something changed in the cluster: run a pass soon (a burst makes one pass)."""
        self._wake.set()

    def feeds(self) -> list[tuple[str, Coroutine[None, None, None]]]:
        """The watch streams that keep the index current, to run beside `run` (each waits
        for the first LIST): (name, coroutine) per kind and namespace. The caller makes
        them tasks before Kopf starts, which waits on tasks made after it as hung."""
        return [(f"capguard watch {resource.plural}",
                 self._follow(store, resource, namespace, selector=selector))
                for store, resource, selector in self._kinds()
                for namespace in self._namespaces()]

    def streams(self) -> int:
        """How many watches `feeds` holds open at once: one connection each, for minutes."""
        return len(self._kinds()) * len(self._namespaces())

    async def run(self) -> None:
        # Startup waits for a full LIST of every kind: no action on a partial view.
        await self._resync_until_done()
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
            self.progress_at = time.monotonic()
            if self.writer.troubled:
                # The API failed writes: once it answers again, LIST before acting (what the
                # watches missed meanwhile), and keep the view until then.
                self.writer.troubled = False
                self._resync_due = True
            if self._resync_due or self.clock() - synced_at >= self.config.resync_interval:
                await self._resync_until_done()
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
                    self._pass_took = took
                    self.passes += 1
                    if self.passes == 1:
                        logger.info("First reconcile pass done: %s", self.last_result)
            except Exception:
                # Our bug, not the user's: log it with its traceback, try again next pass,
                # from fleets built afresh (the changes this pass took from the index are
                # in no fleet).
                logger.exception("Reconcile pass failed.")
                self._fleets.clear()
                self.metrics.reconcile_errors_total.inc()
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
        dirty = self.index.take_dirty_models() | self._due_deferred()
        leading = self.is_leader()
        self.narrator.lead(leading)
        if not dirty or not leading:
            return 0  # a standby exports no model gauge and writes nothing
        now = self.clock()
        writes = []
        keys = []
        self._refreshed |= dirty
        for key in dirty:
            if key in self._deferred:
                continue  # looked at again when its interval is up, with what holds then
            namespace, name = key
            record = self.index.models.records.get(key)
            if record is None or record.value is None:
                continue  # gone or invalid: the full pass reports it
            heard = self._hearing(namespace, now)
            held = [heard(r.value) for r in self.index.engines_of(namespace, name)
                    if r.value is not None]
            own = fleet_.Fleet.of(engines=held, models=[record.value])
            found = self._with_share(key, record.value.generation, drift.counts(own, name))
            self.narrator.model(key, found)
            held_by = self._held_by.get(namespace)
            if held_by is None:
                continue
            inputs = (found, status_.failed_engines(own).get(name, 0), held_by.get(name))
            wanted = statuses.model_status(record, inputs=inputs, now=now)
            if status_.changed(record.status, wanted):
                if self._throttled(key, record.status, wanted):
                    continue
                keys.append(key)
                writes.append(self.writer.status(client.MODELS, record.meta, wanted))
        written = await asyncio.gather(*writes)
        at = time.monotonic()
        self._status_written.update((key, at) for key, ok in zip(keys, written, strict=True)
                                    if ok)
        if len(self._status_written) > 2 * len(self.index.models) + 64:
            self._status_written = {k: t for k, t in self._status_written.items()
                                    if at - t < self._status_interval()}
        return sum(written)

    def _throttled(self, key: index.Key, current: Mapping[str, Any],
                   wanted: Mapping[str, Any]) -> bool:
        """Whether a model's status write waits: only progress (counts, messages) within
        `model_status_interval` of the fast path's last write of it. A condition that
        flips or changes its reason, or a new generation, is written at once."""
        return status_.progress_only(current, wanted) and self._defer(key)

    def _defer(self, key: index.Key) -> bool:
        """Whether the model's status was written less than `model_status_interval` ago;
        if so, look at it again when the interval is up (and wake the loop then)."""
        last = self._status_written.get(key)
        if last is None:
            return False
        due = last + self._status_interval()
        now = time.monotonic()
        if due <= now:
            return False
        self._deferred[key] = due
        self._wake_for_deferred()
        return True

    def _status_interval(self) -> float:
        """How long a model's progress waits after its last write: `model_status_interval`,
        or as long as the last full pass took when that was longer. In a catch-up every
        pass moves engines of most models; a write a second each was a third of the
        server's writes at 10,000 engines, and at 50,000 the fast path's writes held each
        pass for ~4 s."""
        return max(self.config.model_status_interval, self._pass_took)

    def _wake_for_deferred(self) -> None:
        """Wake the loop when the earliest deferred model is due (one timer at a time)."""
        if not self._deferred:
            return
        loop = asyncio.get_running_loop()
        at = loop.time() + max(0.0, min(self._deferred.values()) - time.monotonic())
        handle = self._deferred_wake
        if handle is not None and handle.when() <= at:
            return
        if handle is not None:
            handle.cancel()
        self._deferred_wake = loop.call_at(at, self._woken)

    def _woken(self) -> None:
        self._deferred_wake = None
        self.wake()

    def _due_deferred(self) -> set[index.Key]:
        """The deferred models whose interval is up (the rest stay deferred, and the loop is
        woken again for the earliest of them)."""
        if not self._deferred:
            return set()
        now = time.monotonic()
        due = {k for k, at in self._deferred.items() if at <= now}
        for key in due:
            del self._deferred[key]
        self._wake_for_deferred()
        return due

    async def _resync_until_done(self) -> None:
        """LIST until a LIST succeeds, waiting out an unwell API on the backoff schedule
        (one log line per try, the loop alive all along)."""
        failures = 0
        while True:
            self.progress_at = time.monotonic()
            try:
                await self.resync()
            except writer.ERRORS as error:
                failures += 1
                # A LIST is how the loop learns the API is back: tried more often than
                # writes (capped lower), so it resumes within seconds of the API's return.
                wait = backoff.delay(failures, jitter=self._jitter(), cap=RESYNC_RETRY_CAP)
                server = error.retry_after if isinstance(error, client.ApiError) else None
                wait = max(wait, server or 0.0)
                logger.warning("Cannot list from the API server (%s); trying again in %.1fs.",
                               writer.one_line(error), wait)
                await asyncio.sleep(wait)
                continue
            if failures:
                logger.info("The API server answers again: listed after %d failed tries.",
                            failures)
            self._resync_due = False
            self._listed_at = time.monotonic()
            self.writer.recovered()
            return

    def _kinds(self) -> tuple[tuple[index.Store[Any], client.Resource, str | None], ...]:
        """Each kind the index keeps: its store, its resource and its label selector. The
        engines' Leases only where heartbeats count (agents, a timeout)."""
        kinds: tuple[tuple[index.Store[Any], client.Resource, str | None], ...] = (
            (self.index.engines, client.ENGINES, None), (self.index.models, client.MODELS, None),
            (self.index.breakers, client.BREAKERS, None))
        if self.config.heard_within is not None:
            kinds += ((self.index.leases, client.LEASES, heartbeats.SELECTOR),)
        return kinds

    def _namespaces(self) -> tuple[str | None, ...]:
        return self.config.namespaces or (None,)

    async def resync(self) -> None:
        """LIST every kind (paginated) into the index; drop what the LIST no longer has."""
        for store, resource, selector in self._kinds():
            for namespace in self._namespaces():
                listed: set[index.Key] = set()
                version = ""
                async for page in self.api.pages(resource, namespace=namespace,
                                                 label_selector=selector):
                    version = version or str((page.get("metadata") or {}).get(
                        "resourceVersion") or "")
                    listed |= store.listed(page.get("items") or [])
                store.forget_unlisted(listed, list_version=version, namespace=namespace)
                self._list_versions[(resource.plural, namespace)] = version
        self._lists += 1
        self.wake()

    async def _follow(self, store: index.Store[Any], resource: client.Resource,
                      namespace: str | None, *, selector: str | None = None) -> None:
        """One kind's watch events into the index, from its last LIST's resourceVersion,
        for as long as the loop runs: a stream the server ends is resumed from the last
        version seen, a version too old to resume from (410) is a LIST again, and an API
        that fails is retried on the backoff schedule, its outage waited out.

        The operator's own stream rather than Kopf's: Kopf's per-event machinery (causes,
        diff-base, per-object state) cost about 1 ms an event, the largest part of the
        operator's CPU at 10,000 engines, for an event the index takes in microseconds.
        A Lease's renewal wakes the loop only when it is a planning change (`Index.silent`)."""
        await self.view_complete.wait()
        version = self._list_versions[(resource.plural, namespace)]
        failures = 0
        while True:
            try:
                async for event in self.api.watch(resource, namespace=namespace,
                                                  resource_version=version,
                                                  label_selector=selector):
                    failures = 0
                    body = event.get("object") or {}
                    version = str((body.get("metadata") or {}).get("resourceVersion")
                                  or version)
                    if event.get("type") == "DELETED":
                        store.delete(body)
                    elif event.get("type") in ("ADDED", "MODIFIED"):
                        store.apply(body)
                    else:
                        continue  # a BOOKMARK: only the version to resume from
                    if store is not self.index.leases or self.index.planning_inputs_changed:
                        self.wake()
            except client.Expired:
                logger.info("The watch of %s is too old to resume; listing again.",
                            resource.plural)
                lists = self._lists
                self._resync_due = True
                self.wake()
                while self._lists == lists:
                    await asyncio.sleep(0.1)
                version = self._list_versions[(resource.plural, namespace)]
            except client.Unauthorized as error:
                failures += 1
                if not self.api.log_in_again():
                    await self._watch_failed(resource, error, failures)
            except (client.EmptyWatch, *writer.ERRORS) as error:
                failures += 1
                await self._watch_failed(resource, error, failures)

    async def _watch_failed(self, resource: client.Resource, error: BaseException,
                            failures: int) -> None:
        wait = backoff.delay(failures, jitter=self._jitter(), cap=RESYNC_RETRY_CAP)
        if failures == 1 or failures % 10 == 0:
            logger.warning("The watch of %s failed (%s); watching again in %.1fs.",
                           resource.plural, writer.one_line(error), wait)
        await asyncio.sleep(wait)

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
            self.pipelines.clear()
            self._held_by.clear()
            self._shares.clear()  # and narrates every model afresh
            self._assign_limits.clear()
            self._was_leader = leading
            if leading and time.monotonic() - self._listed_at > 2 * self.config.interval:
                self._resync_due = True  # and LISTs before its first act
                self.wake()
                return PassResult(next_due=now)
        self.narrator.lead(leading)
        self.metrics.leader.set(1 if leading else 0)
        result = PassResult()
        views = view_.snapshot(self.index)
        self._fleets = {ns: f for ns, f in self._fleets.items() if ns in views}
        self._refreshed = set()
        versions = dict(self.index.planning_versions)  # of this view, whatever comes during
        gauges: list[pipeline.QueueGauges] = []
        stale_view = 0
        for namespace, view in sorted(views.items()):
            version = versions.get(namespace, 0)
            if leading:
                step = await self._act(namespace, view=view, version=version, now=now,
                                       result=result)
                gauges.append(step.queue)
                stale_view += step.report.stale_view_engines
            else:
                _, falls_silent = await self._off_loop(self._fleet, namespace, view, version,
                                                       now)
                result.due(falls_silent)
                self.narrator.observed_breakers(namespace, view.breakers, now=now)
        kept = {(ns, r.meta.name) for ns, v in views.items() for r in v.models if r.value}
        self.narrator.forget_except(kept, ((ns, r.meta.name) for ns, v in views.items()
                                           for r in v.breakers))
        if len(self._shares) != len(kept):
            self._shares = {k: v for k, v in self._shares.items() if k in kept}
        self.metrics.set_queue(held=sum(g.held for g in gauges),
                               pending=sum(g.pending for g in gauges),
                               oldest_plan_age=max((g.oldest_plan_age for g in gauges),
                                                   default=0.0))
        self.metrics.planner_view_stale_engines.set(stale_view)
        if result.executed or result.refused or result.conflicts or result.transitions:
            logger.debug("Pass: %s", result)
        return result

    def _hearing(self, namespace: str, now: float) -> Callable[[specs.Engine], specs.Engine]:
        """The namespace's engines as every count must see them now (`engines.heard`),
        its Lease renewals looked up once."""
        timeout = self.config.heard_within
        renewals = self.index.renewals.get(namespace) or {}
        return lambda e: engines.heard(e, now=now, timeout=timeout,
                                       renewed=renewals.get(e.name))

    def _fleet(self, namespace: str, view: view_.View, version: int,
               now: float) -> tuple[fleet_.Fleet, float | None]:
        """The namespace's fleet, made again only when something the core reads changed
        (an object, or which engines are silent): a steady fleet's pass reuses it and what
        it already computed, and a change is applied to the last fleet (`Fleet.derive`),
        so it costs in proportion to what it touches. With agents, also when the next
        engine falls silent."""
        cached = self._fleets.get(namespace)
        if cached is not None and view.rebuild:
            cached = None
        found: engines.Hearing = (frozenset(), None)
        timeout = self.config.heard_within
        if timeout is not None:
            found = self._heard(namespace, view, now, timeout,
                                last=cached[1] if cached is not None else None)
            self.index.silent[namespace] = found[0]
        silent, falls_silent = found
        if cached is None:
            fleet = view_.build_fleet(view, heard=self._hearing(namespace, now))
        elif cached[0] != version or cached[1][0] != silent:
            hearing = cached[1][0] ^ silent  # fell silent, or spoke again
            records = {r.meta.name: r for r in view.engines if r.meta.name in hearing
                       } if hearing else {}
            fleet = view_.derive_fleet(cached[2], view, heard=self._hearing(namespace, now),
                                       also={n: records.get(n) for n in hearing})
        else:
            fleet = cached[2]
        self._fleets[namespace] = (version, found, fleet)
        return fleet, falls_silent

    def _heard(self, namespace: str, view: view_.View, now: float, timeout: float, *,
               last: engines.Hearing | None) -> engines.Hearing:
        """Which engines are silent now: from the last pass's answer and the engines that
        changed since (`engines.hearing_again`), a look at every engine only when that
        cannot say (the first engine heard may have fallen silent since)."""
        renewed = self.index.renewals.get(namespace)
        if last is not None:
            changed = {name: r.value if r is not None else None
                       for name, r in view.changed_engines.items()}
            again = engines.hearing_again(last, changed, now=now, timeout=timeout,
                                          renewed=renewed)
            if again is not None:
                return again
        return engines.hearing((r.value for r in view.engines if r.value is not None),
                               now=now, timeout=timeout, renewed=renewed)

    def _failed(self, namespace: str, fleet: fleet_.Fleet) -> dict[str, int]:
        """Failed engines per model, reused while the fleet stands still."""
        cached = self._failed_by_fleet.get(namespace)
        if cached is None or cached[0] is not fleet:
            cached = self._failed_by_fleet[namespace] = (fleet, status_.failed_engines(fleet))
        return cached[1]

    def _prepare(self, namespace: str, view: view_.View, version: int, now: float,
                 core: pipeline.Pipeline) -> _Prepared:
        """A leader's pass over one namespace, up to its writes: everything that reads the
        whole fleet, run in the pass thread (see `_off_loop`)."""
        fleet, falls_silent = self._fleet(namespace, view, version, now)
        limit = self._assign_limits.get(namespace, self.config.first_assigns_per_pass)
        observed = view.observed(fleet, established=core.signals.established)
        step = core.step(dataclasses.replace(observed, max_assigns=limit), now)
        # The models whose numbers moved since the last pass: the only ones to narrate and
        # to remember for the fast path (at 5,000 models, the rest cost only a compare).
        changed = {}
        for name, found in step.report.models.items():
            remembered = (fleet.models[name].generation, found)
            if self._shares.get((namespace, name)) != remembered:
                self._shares[(namespace, name)] = remembered
                changed[name] = found
        return _Prepared(
            fleet=fleet, falls_silent=falls_silent, step=step, changed=changed,
            failed=self._failed(namespace, fleet),
            invalid=statuses.invalid(view.engines, view.models, view.breakers, now=now),
            assign_limit=limit)

    def _with_share(self, key: index.Key, generation: int,
                    found: drift.ModelDrift) -> drift.ModelDrift:
        """One model's drift with the last full pass's allocation, while its spec is the
        one that pass saw; after a spec change, none until the next pass (not a guess)."""
        last = self._shares.get(key)
        if last is None or last[0] != generation:
            return dataclasses.replace(found, allocated=None, covered=None, pools=None)
        return dataclasses.replace(found, allocated=last[1].allocated, covered=last[1].covered,
                                   pools=last[1].pools)

    async def _act(self, namespace: str, *, view: view_.View, version: int, now: float,
                   result: PassResult) -> pipeline.StepResult:
        """The leader's pass over one namespace: the step, then its writes: the actions,
        the model statuses (which describe the fleet the decisions were made on), the engine
        phases, the breakers."""
        core = self.pipelines.get(namespace)
        if core is None:
            core = self.pipelines[namespace] = pipeline.Pipeline(self.config.pipeline())
        await self._let_events_in()
        prepared = await self._off_loop(self._prepare, namespace, view, version, now, core)
        fleet, step = prepared.fleet, prepared.step
        result.due(prepared.falls_silent)  # a heard engine that stays quiet: look again then
        triaged_at = time.monotonic()
        self._held_by[namespace] = step.held_by
        metas = view.metas(namespace)
        drifts, failed = step.report.models, prepared.failed
        # The actions first: each must be written within `max_write_delay` of its triage,
        # and a cold start's thousand assigns are what every model waits for. Then what
        # came during the step (the fast path's status writes), then this pass's statuses.
        written = await asyncio.gather(*(
            self.writer.action(namespace, e, engine=fleet.engines[e.action.intent.engine],
                               now=now, triaged_at=triaged_at) for e in step.executions))
        await self._let_events_in()
        fresh = [r for r in view.models if (namespace, r.meta.name) not in self._refreshed]
        if len(fresh) != len(view.models):
            # Refreshed during this pass: newer than this pass's view, so not rewritten from
            # it; the fast path looks again right after, with what this pass holds.
            self.index.mark_dirty((namespace, r.meta.name) for r in view.models
                                  if (namespace, r.meta.name) in self._refreshed)
            self.wake()
        writes = await self._off_loop(functools.partial(
            self.statuses.models, namespace, fresh, drifts=drifts, failed=failed,
            held_by=step.held_by, now=now))
        current = {r.meta.name: r.status for r in fresh}
        writes = [w for w in writes if not self._throttled(
            (namespace, w.meta.name), current[w.meta.name], w.status)]
        result.status_writes += await self._write_statuses(writes)
        executed = {}
        for w in written:
            action = w.execution.action
            core.written(action.id, engine=action.intent.engine, ok=w.done is not None,
                         now=now, transient=w.transient, retry_after=w.retry_after)
            if w.done is not None:
                executed[action.intent.engine] = w.done
        result.executed += len(executed)
        assigns = [w for w in written if not w.execution.action.intent.disruptive]
        limit = prepared.assign_limit
        unwritten = sum(1 for w in assigns if w.done is None)
        if len(assigns) >= limit and not unwritten:
            # A backlog left for the next pass: it comes at once, as for moves. Not after
            # a failed or late write: a struggling API server gets the quiet gap.
            result.due(now)
        self._assign_limits[namespace] = slow_start(
            limit, executed=len(assigns), failed=unwritten, config=self.config)
        result.conflicts += sum(1 for w in written if w.outcome is writer.Outcome.CONFLICT)
        result.refused += len(step.refusals)
        result.held += len(step.holds)
        result.due(step.next_due)
        self.narrator.step(step, metas=metas, changed=prepared.changed)
        self.narrator.models(namespace, prepared.changed)
        self.narrator.pools(namespace, fleet.allocation.pools)
        self.narrator.writes(written, metas=metas)
        fleet = fleet.with_engines(done.engine for done in executed.values())
        await self._drive(namespace, view=view, fleet=fleet, executed=executed,
                          assigning=step.assigning, now=now, result=result)
        writes = self.statuses.breakers(namespace, view.breakers, result=step)
        for bad in prepared.invalid:
            self.narrator.invalid(bad.meta, bad.kind, bad.error)
            writes += [bad.write] if bad.write is not None else []
        result.status_writes += await self._write_statuses(writes)
        return step

    async def _drive(self, namespace: str, *, view: view_.View, fleet: fleet_.Fleet,
                     executed: Mapping[str, writer.Executed], assigning: frozenset[str],
                     now: float, result: PassResult) -> None:
        """The engine status writes: this pass's actions recorded (never waiting), then at
        most `max_engine_writes_per_pass` phase moves and first-seen notes; the next pass
        comes at once for the rest. No first-seen note on an engine the plan binds."""
        planned = driver.writes(fleet, found=view.engines, executed=executed,
                                config=self._driver, now=now, roll=self._roll,
                                assigning=assigning)
        result.due(planned.next_due)
        budget = self.config.max_engine_writes_per_pass
        if len(planned.others) > budget:
            result.due(now)
        writes = [self.writer.record_action(namespace, name, patch)
                  for name, patch in planned.recording]
        writes += [self.writer.engine_status(namespace, name, patch)
                   for name, patch in planned.others[:budget]]
        # The silent engines, as this pass's fleet was built (not a walk over every engine).
        silent = (self.index.engines.records.get((namespace, name))
                  for name in self._fleets[namespace][1][0])
        writes += [self.writer.engine_status(namespace, name, patch) for name, patch
                   in driver.silence_notes(fleet, found=[r for r in silent if r], now=now)]
        result.transitions += sum(1 for w in await asyncio.gather(*writes) if w is not None)

    async def _write_statuses(self, writes: list[statuses.StatusWrite]) -> int:
        done = await asyncio.gather(*(self.writer.status(w.resource, w.meta, w.status)
                                      for w in writes))
        return sum(done)

    async def _off_loop(self, work: Callable[..., _T], *args: object) -> _T:
        """Run a pass's CPU-bound work in the pass thread; meanwhile the loop keeps taking
        watch events and the fast path keeps model statuses current. The work reads only
        frozen values built before it started (the fleet, the records of the view) and the
        pipeline, which nothing else touches while a pass runs."""
        running = asyncio.get_running_loop().run_in_executor(self._worker, work, *args)
        woken = False
        while not running.done():
            waking = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait((running, waking), return_when=asyncio.FIRST_COMPLETED)
            waking.cancel()
            if self._wake.is_set() and not running.done():
                woken = True
                self._wake.clear()
                await asyncio.sleep(self.config.debounce)
                await self.refresh_statuses()
        if woken:
            self._wake.set()  # the loop's own sleep still sees what woke it meanwhile
        return running.result()

    async def _let_events_in(self) -> None:
        """Before a step (tens of ms at 10,000 engines), let the watch events that arrived
        into the index and rewrite the status of the models they touch, rather than have
        them wait for the rest of the pass."""
        await asyncio.sleep(self.config.debounce)
        await self.refresh_statuses()
