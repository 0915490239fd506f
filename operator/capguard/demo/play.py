"""One demo run: cluster up, fleet in, operator started, the incident played, measured.

The order matters for cleanup: every resource is entered as an async context, so a
failure or a Ctrl-C at any point unwinds exactly what was started (the operator first,
then the demo's namespace on an existing cluster, then the embedded server).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import os
import pathlib
import random
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Final

from rich import console as rich_console
from rich import live as rich_live

from capguard.demo import connection as connection_
from capguard.demo import display, fleet, processes, record, script
from capguard.demo import mirror as mirror_
from capguard.demo import serving as serving_
from capguard.kube import client
from capguard.sim import measures, scenarios

WRITE_CONCURRENCY: Final = 16
ENGINES: Final = ("real", "simulated")  # who serves: agents and model servers, or the operator
ENGINES_READY_TIMEOUT: Final = 120.0  # real seconds for every bound engine to serve
READY_TIMEOUT: Final = 60.0  # real seconds for the operator's first complete reconcile
SETTLE: Final = 120.0  # virtual seconds a converged fleet must hold before the demo ends
METRICS_EVERY: Final = 0.2  # real seconds between scrapes of the operator's /metrics
PROGRESS_EVERY: Final = 300.0  # virtual seconds between progress lines off a terminal


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    naive: bool = False
    seed: int = 0
    speed: float = 60.0  # virtual seconds per real second
    kubeconfig: pathlib.Path | None = None  # None: the embedded API server
    namespace: str = "capguard-demo"
    crds: pathlib.Path
    plot: pathlib.Path | None = None
    keep: bool = False
    scenario: scenarios.Scenario = scenarios.MARCH_4
    engines: str = ENGINES[0]

    @property
    def mode(self) -> str:
        return "naive" if self.naive else "guarded"

    @property
    def real(self) -> bool:
        return self.engines == "real"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One run, as measured: the simulator's timeline, and with real engines the requests."""

    timeline: measures.Timeline
    traffic: serving_.Traffic | None = None
    zero: float = 0.0  # the wall clock (epoch) of the incident's second 0
    speed: float = 1.0
    refused_at: tuple[float, ...] = ()  # incident seconds a batch was refused

    def summary(self) -> dict[str, object]:
        """The simulator's report, plus the request measures when engines really served."""
        report = self.timeline.summary()
        if self.traffic is not None:
            report |= self.traffic.summary(zero=self.zero, speed=self.speed,
                                           models=self.timeline.scenario.model_names)
        return report

    def success_by_minute(self, model: str | None = None) -> list[tuple[int, float]]:
        if self.traffic is None:
            return []
        return self.traffic.success_by_minute(zero=self.zero, speed=self.speed, model=model)

    def worst_model_by_minute(self) -> dict[int, float]:
        """The lowest success rate among the models, minute by minute."""
        worst: dict[int, float] = {}
        for name in self.timeline.scenario.model_names:
            for minute, rate in self.success_by_minute(name):
                worst[minute] = min(rate, worst.get(minute, 1.0))
        return worst


class Run:
    """The state of one run, shared by its concurrent parts (sampling, script, display)."""

    def __init__(self, options: Options, *, console: rich_console.Console,
                 report: Callable[[Outcome], None]) -> None:
        self.options = options
        self.console = console
        self.report = report
        self.plan = fleet.Compressed(scenario=options.scenario, speed=options.speed)
        self.revisions = {name: fleet.FIRST_REVISION for name in options.scenario.model_names}
        self.zero = 0.0  # monotonic time of virtual second 0
        self.metrics_url = ""
        self.kubeconfig = pathlib.Path()
        self.released = False
        self._connection: connection_.Connection | None = None
        self._mirror: mirror_.Mirror | None = None
        self._recorder: record.Recorder | None = None
        self._events_seen = 0
        self.serving = serving_.Serving(
            load_time=self.plan.real(options.scenario.physics.load_seconds),
            # A drain lets requests in flight finish, however compressed the incident.
            drain_grace=max(self.plan.real(options.scenario.physics.drain_seconds), 1.0))
        self._agents: serving_.Agents | None = None
        self._traffic: serving_.Traffic | None = None
        self.zero_epoch = 0.0
        self._refused_at: list[float] = []

    @property
    def connection(self) -> connection_.Connection:
        assert self._connection is not None
        return self._connection

    @property
    def mirror(self) -> mirror_.Mirror:
        assert self._mirror is not None
        return self._mirror

    @property
    def recorder(self) -> record.Recorder:
        assert self._recorder is not None
        return self._recorder

    def now(self) -> float:
        """Virtual seconds since the script's zero."""
        return (time.monotonic() - self.zero) * self.options.speed

    def say(self, line: str) -> None:
        if line:
            self.console.print(f"[dim]{display.clock(self.now())}[/dim]  {line}", soft_wrap=True)

    # -- the run -------------------------------------------------------------------------

    async def play(self) -> None:
        with tempfile.TemporaryDirectory(prefix="capguard-demo-") as scratch:
            async with self._cluster(pathlib.Path(scratch)):
                await self._with_cluster()

    async def _with_cluster(self) -> None:
        async with self._connected(), self._namespace():
            await self._create_fleet()
            async with self._mirrored(), self._engines(), self._operator(), self._load():
                ended = await self._incident()
                traffic = (None if self._traffic is None
                           else await serving_.through(self._traffic, ended))
                self.report(Outcome(self.recorder.timeline, traffic, self.zero_epoch,
                                    self.options.speed, tuple(self._refused_at)))
                if self.options.keep:
                    await self._keep()

    @contextlib.asynccontextmanager
    async def _cluster(self, scratch: pathlib.Path) -> AsyncIterator[None]:
        if self.options.kubeconfig is not None:
            self.kubeconfig = self.options.kubeconfig.resolve()
            yield
            return
        self.kubeconfig = scratch / "kubeconfig"
        log = self._log_path("apiserver")
        async with processes.embedded_server(kubeconfig=self.kubeconfig,
                                             crds=self.options.crds, log=log) as url:
            self.console.print(f"embedded API server at {url} (log: {log})")
            yield

    @contextlib.asynccontextmanager
    async def _connected(self) -> AsyncIterator[None]:
        self._connection = await connection_.connect(self.kubeconfig)
        try:
            created = await connection_.ensure_crds(self.connection, directory=self.options.crds)
            if created:
                self.console.print(f"installed CRDs: {', '.join(created)}")
            await connection_.wait_for_crds(self.connection, names=_crd_names(self.options.crds),
                                            timeout=30)
            yield
        finally:
            await self.connection.aclose()

    @contextlib.asynccontextmanager
    async def _namespace(self) -> AsyncIterator[None]:
        name = self.options.namespace
        existed = await _exists(self.connection, name)
        if existed:
            await self._clear_namespace()
        else:
            await self.connection.api.create(connection_.NAMESPACES, namespace=None,
                                             body=fleet.namespace(name))
        try:
            yield
        finally:
            if self.options.kubeconfig is not None:
                # An existing cluster is someone's: take back what the demo put there.
                await asyncio.shield(self._remove_namespace(existed=existed))

    async def _clear_namespace(self) -> None:
        """A namespace left by an earlier demo: delete its fleet (never anything else)."""
        api, ns = self.connection.api, self.options.namespace
        for resource in (client.ENGINES, client.MODELS, client.BREAKERS):
            async for body in api.list(resource, namespace=ns):
                labels = body["metadata"].get("labels") or {}
                if labels.get(fleet.DEMO_LABEL):
                    await api.request("DELETE", resource.path(
                        namespace=ns, name=body["metadata"]["name"]))

    async def _remove_namespace(self, *, existed: bool) -> None:
        with contextlib.suppress(client.ApiError, OSError, TimeoutError):
            await self._clear_namespace()
            if not existed:
                await self.connection.api.request(
                    "DELETE", connection_.NAMESPACES.path(namespace=None,
                                                          name=self.options.namespace))

    async def _create_fleet(self) -> None:
        api, ns = self.connection.api, self.options.namespace
        for body in fleet.models(self.plan):
            await api.create(client.MODELS, namespace=ns, body=body)
        await api.create(client.BREAKERS, namespace=ns, body=fleet.breaker(self.plan))
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        engines = fleet.engines(self.plan, now=now)
        await _bounded(WRITE_CONCURRENCY, [self._create_engine(e) for e in engines])
        s = self.options.scenario
        self.console.print(
            f"fleet: {s.models} models x {s.units_per_model} units, {s.engine_count} engines "
            f"in pools {', '.join(s.pools)}, breaker {fleet.BREAKER_NAME!r} "
            f"(namespace {ns})")

    async def _create_engine(self, engine: fleet.Engine) -> None:
        api, ns = self.connection.api, self.options.namespace
        name = engine.body["metadata"]["name"]
        await api.create(client.ENGINES, namespace=ns, body=engine.body)
        if self.options.real:
            return  # its agent loads what it is bound to and says so
        # The fleet starts settled, as in the simulator: its engines already serve.
        await api.merge_patch(client.ENGINES, namespace=ns, name=name,
                              patch={"status": engine.status}, subresource="status")

    @contextlib.asynccontextmanager
    async def _mirrored(self) -> AsyncIterator[None]:
        self._mirror = mirror_.Mirror(connection=self.connection, namespace=self.options.namespace)
        self._recorder = record.Recorder(scenario=self.options.scenario, mode=self.options.mode,
                                         seed=self.options.seed, mirror=self.mirror,
                                         clock=self.now)
        task = asyncio.create_task(self.mirror.run(), name="capguard-demo mirror")
        try:
            await asyncio.wait_for(self.mirror.ready(), timeout=30)
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def _engines(self) -> AsyncIterator[None]:
        """With real engines: an agent per engine, and every bound engine serving before
        the operator starts (it must never see a fleet nobody vouches for)."""
        if not self.options.real:
            yield
            return
        names = sorted(self.mirror.engines)
        log = self._log_path("engines")
        async with serving_.agents(kubeconfig=self.kubeconfig, namespace=self.options.namespace,
                                   engines=names, serving=self.serving, log=log) as started:
            self._agents = started
            began = time.monotonic()
            await self._until_engines_serve(log=log)
            self.console.print(
                f"engines: {len(names)} agents (capguard engine), each running a model server "
                f"(capguard model-server, {self.serving.concurrency_per_unit} requests at "
                f"once per unit, {self.serving.latency * 1000:g} ms each); all bound engines "
                f"serving after {time.monotonic() - began:.1f}s (log: {log})")
            yield

    async def _until_engines_serve(self, *, log: pathlib.Path) -> None:
        deadline = time.monotonic() + ENGINES_READY_TIMEOUT
        while time.monotonic() < deadline:
            bodies = list(self.mirror.engines.values())
            bound = [b for b in bodies if (b.get("spec") or {}).get("modelRef")]
            if all((b.get("status") or {}).get("phase") == "Serving" for b in bound):
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"the engines did not all serve within {ENGINES_READY_TIMEOUT:g}s; "
                           f"see {log}")

    @contextlib.asynccontextmanager
    async def _load(self) -> AsyncIterator[None]:
        """With real engines: the gateway, and each model's demand sent through it."""
        if not self.options.real:
            yield
            return
        s = self.options.scenario
        rates = {name: self.serving.rate(s.units_per_model) for name in s.model_names}
        async with serving_.gateway(kubeconfig=self.kubeconfig, namespace=self.options.namespace,
                                    serving=self.serving, log=self._log_path("gateway")) as url, \
                serving_.load(url=url, rates=rates, duration=self.plan.real(s.duration) + 60,
                              seed=self.options.seed, log=self._log_path("load")) as traffic:
            self._traffic = traffic
            self.console.print(
                f"traffic: capguard gateway at {url}; capguard load sends "
                f"{sum(rates.values()):g} requests/s ({self.serving.utilization:.0%} of each "
                "model's desired capacity)")
            yield

    @contextlib.asynccontextmanager
    async def _operator(self) -> AsyncIterator[None]:
        port = processes.free_port()
        self.metrics_url = f"http://127.0.0.1:{port}/metrics"
        flags = processes.OperatorFlags(
            kubeconfig=self.kubeconfig, namespace=self.options.namespace, metrics_port=port,
            load_time=self.plan.real(self.options.scenario.physics.load_seconds),
            drain_time=self.plan.real(self.options.scenario.physics.drain_seconds),
            reconcile_interval=max(0.05, self.plan.real(self.options.scenario.tick_seconds)),
            seed=self.options.seed, naive=self.options.naive,
            driver="agent" if self.options.real else "simulated",
            heartbeat_timeout=self.serving.heartbeat_timeout)
        log = self._log_path("operator")
        async with processes.operator(flags, log=log) as pid:
            self.console.print(f"operator: capguard run{' --naive' if self.options.naive else ''}"
                               f" as pid {pid} (log: {log})")
            await self._until_operator_ready(log=log)
            self._print_commands()
            yield

    async def _until_operator_ready(self, *, log: pathlib.Path) -> None:
        """Until the operator serves metrics and has written every model's status."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, TimeoutError):
                await self.connection.get_text(self.metrics_url)
                statuses = [(m.get("status") or {}) for m in self.mirror.models.values()]
                if statuses and all("desired" in s for s in statuses):
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"the operator did not reconcile within {READY_TIMEOUT:g}s; "
                           f"see {log}")

    def _print_commands(self) -> None:
        port = int(self.metrics_url.rsplit(":", 1)[1].split("/")[0])
        self.console.print("meanwhile, in another terminal:")
        for line in display.kubectl_lines(kubeconfig=str(self.kubeconfig),
                                          namespace=self.options.namespace,
                                          metrics_port=port, breaker=fleet.BREAKER_NAME):
            self.console.print(f"  [bold]{line}[/bold]")

    def _log_path(self, part: str) -> pathlib.Path:
        folder = self.options.plot.parent if self.options.plot else pathlib.Path(".")
        return (folder / f"demo-{part}.log").resolve()

    # -- the incident ---------------------------------------------------------------------

    async def _incident(self) -> float:
        """The incident, from its zero until the fleet has settled; when it ended (epoch)."""
        for line in display.time_note(speed=self.options.speed,
                                      duration=self.options.scenario.duration):
            self.console.print(line)
        self.recorder.start()
        self.zero, self.zero_epoch = time.monotonic(), time.time()
        background = [asyncio.create_task(self._scrape_metrics(), name="capguard-demo metrics")]
        try:
            with self._live() as refresh:
                background.append(asyncio.create_task(self._sample(refresh)))
                await self._script()
                await self._until_settled()
            ended = time.time()
            await self._refresh_counts()
            return ended
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

    async def _script(self) -> None:
        for step in script.steps(self.options.scenario, seed=self.options.seed):
            await asyncio.sleep(max(0.0, self.plan.real(step.event.at) - self._elapsed()))
            if isinstance(step.event, scenarios.Breaker) and not step.event.open:
                await self._refresh_counts()
                self.recorder.released()
                self.released = True
            await self._apply(step.event)
            self.say(step.says)

    async def _until_settled(self) -> None:
        """Until every model is settled with an empty queue for SETTLE, or the scenario ends."""
        duration = self.options.scenario.duration
        while self.now() < duration:
            converged = self.recorder.timeline.converge_seconds()
            release = self.options.scenario.release_at
            if converged is not None and self.now() - (release + converged) >= SETTLE:
                self.say(f"converged {display.clock(converged)} after the release; held "
                         f"for {SETTLE / 60:g} minutes")
                return
            await asyncio.sleep(self.plan.real(self.options.scenario.tick_seconds))
        self.say("the scenario's time is up")

    async def _apply(self, event: scenarios.Event) -> None:
        match event:
            case scenarios.Breaker(open=is_open):
                await self._patch(client.BREAKERS, fleet.BREAKER_NAME, {"open": is_open})
            case scenarios.Refresh(model=model):
                self.revisions[model] = _next_revision(self.revisions[model])
                await self._patch(client.MODELS, model, {"revision": self.revisions[model]})
            case scenarios.Rebalance(model=model, pool=pool):
                selector = {"matchLabels": {scenarios.POOL_LABEL: pool}}
                await self._patch(client.MODELS, model, {"engineSelector": selector})
            case scenarios.Demand(model=model, replicas=replicas):
                await self._patch(client.MODELS, model, {"replicas": replicas})
            case scenarios.Failures(count=count):
                await self._fail(count)

    async def _patch(self, resource: client.Resource, name: str, spec: dict[str, Any]) -> None:
        await self.connection.api.merge_patch(resource, namespace=self.options.namespace,
                                              name=name, patch={"spec": spec})

    async def _fail(self, count: int) -> None:
        """Serving engines break: with real engines their model servers are killed (their
        agents report it), otherwise what the driver would report for a crashed server."""
        serving = sorted(n for n, b in self.mirror.engines.items()
                         if (b.get("status") or {}).get("phase") == "Serving")
        rng = random.Random(self.options.seed)
        if self._agents is not None:
            broken = rng.sample(serving, k=min(count, len(serving)))
            for pid in self._agents.servers(broken):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for name in rng.sample(serving, k=min(count, len(serving))):
            await self.connection.api.merge_patch(
                client.ENGINES, namespace=self.options.namespace, name=name,
                patch={"status": {"phase": "Failed", "since": now, "message": "demo failure"}},
                subresource="status")

    def _elapsed(self) -> float:
        return time.monotonic() - self.zero

    # -- watching -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _live(self) -> Iterator[rich_live.Live | None]:
        """A live panel on a terminal; nothing to refresh elsewhere (progress lines instead)."""
        if not self.console.is_terminal:
            yield None
            return
        with rich_live.Live(display.panel(scenario=self.options.scenario, sample=None,
                                          counts=self.recorder.counts, executed=0,
                                          mode=self.options.mode, revisions=self.revisions),
                            console=self.console, refresh_per_second=8,
                            transient=False) as live:
            yield live

    async def _sample(self, live: rich_live.Live | None) -> None:
        tick = self.plan.real(self.options.scenario.tick_seconds)
        next_progress = 0.0
        while True:
            sample = self.recorder.sample()
            self._narrate_events()
            executed = len(self.recorder.timeline.executed)
            if live is not None:
                live.update(display.panel(scenario=self.options.scenario, sample=sample,
                                          counts=self.recorder.counts, executed=executed,
                                          mode=self.options.mode, revisions=self.revisions))
            elif sample.at >= next_progress:
                next_progress = sample.at + PROGRESS_EVERY
                self.console.print(display.progress_line(sample, counts=self.recorder.counts,
                                                         executed=executed), soft_wrap=True)
            await asyncio.sleep(tick)

    def _narrate_events(self) -> None:
        events = self.mirror.events
        fresh, self._events_seen = events[self._events_seen:], len(events)
        for line in display.event_lines(fresh):
            self.say(line)

    async def _scrape_metrics(self) -> None:
        while True:
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                await self._refresh_counts()
            await asyncio.sleep(METRICS_EVERY)

    async def _refresh_counts(self) -> None:
        text = await self.connection.get_text(self.metrics_url)
        before = self.recorder.counts.refused_batches
        self.recorder.update_counts(record.parse_metrics(text))
        if self.recorder.counts.refused_batches > before:
            self._refused_at.append(self.now())

    async def _keep(self) -> None:
        self.console.print("--keep: the cluster and the operator keep running; Ctrl-C stops them",
                           style="bold")
        await asyncio.Event().wait()


async def play(options: Options, *, console: rich_console.Console,
               report: Callable[[Outcome], None]) -> None:
    """Run the demo and hand the recorded timeline to ``report`` once the incident is over.

    With ``keep`` it returns only when cancelled (Ctrl-C), after cleaning up.
    """
    await Run(options, console=console, report=report).play()


def _next_revision(revision: str) -> str:
    number = int(revision.removeprefix("r")) if revision.removeprefix("r").isdigit() else 1
    return f"r{number + 1}"


def _crd_names(directory: pathlib.Path) -> list[str]:
    return [str(body["metadata"]["name"]) for body in connection_.crd_documents(directory)]


async def _exists(connection: connection_.Connection, name: str) -> bool:
    try:
        await connection.api.get(connection_.NAMESPACES, namespace=None, name=name)
    except client.NotFound:
        return False
    return True


async def _bounded(limit: int, calls: list[Awaitable[None]]) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[None]) -> None:
        async with gate:
            await call

    await asyncio.gather(*(one(c) for c in calls))

