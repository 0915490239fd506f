"""`capguard run`: the operator, wired — Kopf with explicit settings and registry, the
reconcile loop, the leader elector, the Event recorder and the metrics endpoint.

Importing this module starts nothing; `serve` runs one operator until stopped, so tests
run the real thing in-process against the embedded API server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import kopf
from aiohttp import web
from kopf._core.engines import peering

from capguard import defaults
from capguard import metrics as metrics_
from capguard.core import backoff, engines
from capguard.handlers import driver, reconcile, registration
from capguard.kube import client, events, leases

logger = logging.getLogger(__name__)

# What Kopf accepts as a stop/ready flag (its own alias is private).
StopFlag = (asyncio.Event | asyncio.Future[Any] | threading.Event
            | concurrent.futures.Future[Any])
SERVICE_ACCOUNT_NAMESPACE: Final = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# /livez fails when the reconcile loop stood still this long (or 10 intervals, if longer).
LIVENESS_MIN_SECONDS: Final = 60.0
ACCESS_LOGGER: Final = "aiohttp.access"


@dataclasses.dataclass(frozen=True)
class Options:
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    kubeconfig: str | None = None  # else KUBECONFIG, ~/.kube/config or the service account
    metrics_host: str = defaults.METRICS_HOST
    metrics_port: int = defaults.METRICS_PORT  # 0 picks a free port (tests)
    engine_driver: str = defaults.DRIVER
    heartbeat_timeout: float = defaults.HEARTBEAT_TIMEOUT
    load_time: float = defaults.LOAD_TIME
    drain_time: float | None = None
    failure_rate: float = 0.0
    seed: int | None = None
    leader_election: bool = True
    lease_namespace: str | None = None
    lease_duration: float = leases.DEFAULT_DURATION
    lease_renew: float = leases.DEFAULT_RENEW
    identity: str = dataclasses.field(default_factory=lambda: default_identity())
    naive: bool = False
    reconcile_interval: float = defaults.RECONCILE_INTERVAL
    max_write_delay: float = defaults.MAX_WRITE_DELAY
    liveness: str | None = None  # e.g. http://0.0.0.0:8081/healthz (Kopf's probe server)
    connection_limit: int = client.DEFAULT_CONNECTION_LIMIT


def default_identity() -> str:
    """The Pod's name (POD_NAME, from the downward API), else hostname-pid.

    Never the user's name: the image runs as a numeric uid with no passwd entry, where
    `getpass.getuser()` (Kopf's own default) raises.
    """
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def lease_namespace(options: Options) -> str:
    """Where the Lease lives: as told, else the pod's namespace, else the first watched one."""
    if options.lease_namespace:
        return options.lease_namespace
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    with contextlib.suppress(OSError), open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as f:
        return f.read().strip()
    return options.namespaces[0] if options.namespaces else "default"


def make_settings(options: Options) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # One replica acts by the Lease; Kopf's own peering would only pause the standbys' watches.
    settings.peering.standalone = True
    # No handler here stores progress, but if one ever does, it writes capguard's keys.
    settings.persistence.finalizer = "capguard.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="capguard.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="capguard.dev", key="last-handled-configuration")
    # capguard posts its own Events with stable reasons; Kopf posts only its warnings.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "capguard"
    settings.posting.reporting_instance = options.identity
    settings.posting.event_name_prefix = "capguard-"
    # Watches end server-side every few minutes and resume from the last resourceVersion.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    # An API outage of any length is waited out: Kopf's requests and watches retry on the
    # capped backoff schedule forever (its default gives up after ~54 s, and the operator
    # exits), and a server's Retry-After is honoured.
    settings.networking.error_backoffs = backoff.Schedule(jitter=random.random)
    settings.networking.enforce_retry_after = True
    # Idle per-object workers go away quickly: 10,000 engines, mostly quiet.
    settings.queueing.idle_timeout = 2.0
    # Kopf watches no resource of ours (the reconciler has its own streams), so it needs
    # no live discovery of CRDs and namespaces either: their watches were pure cost, and
    # Kopf re-opens a stream a proxy ends at once with no pause (27,000 a second seen).
    settings.scanning.disabled = True
    return settings


Health = Callable[[], str | None]  # None: healthy; else why not, in one line


@contextlib.asynccontextmanager
async def metrics_server(
    metrics: metrics_.Metrics, *, host: str, port: int,
    ready: Health = lambda: None, live: Health = lambda: None,
) -> AsyncIterator[int]:
    """Serve /metrics (prometheus-client's exposition), /readyz and /livez on every
    replica; yields the port."""

    async def render(_: web.Request) -> web.Response:
        body = await metrics.render_aside()
        return _closing(web.Response(body=body, headers={"Content-Type": metrics_.CONTENT_TYPE}))

    def probe(check: Health) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def answer(_: web.Request) -> web.Response:
            problem = check()
            return _closing(web.Response(status=503 if problem else 200,
                                         text=(problem or "ok") + "\n"))
        return answer

    app = web.Application()
    app.router.add_get("/metrics", render)
    app.router.add_get("/readyz", probe(ready))
    app.router.add_get("/livez", probe(live))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple):
            bound = int(address[1])
    try:
        yield bound
    finally:
        await runner.cleanup()


def _closing(response: web.Response) -> web.Response:
    """Close the connection after this response. A connection kept alive (Prometheus keeps
    one between scrapes) is a task Kopf does not know, and on SIGTERM Kopf waits 5 s for
    such tasks before it cancels them: every stop took 5 s longer while anyone scraped.
    A scrape every few seconds costs one loopback or pod-network connect more."""
    response.force_close()
    return response


@dataclasses.dataclass
class Running:
    """Handles on a running operator (tests look inside)."""

    reconciler: reconcile.Reconciler
    elector: leases.LeaderElector | None
    recorder: events.Recorder
    metrics: metrics_.Metrics
    metrics_port: int = 0
    started_at: float = dataclasses.field(default_factory=time.monotonic)

    def ready(self) -> str | None:
        """Ready: logged in, and the first full LIST of every kind is in the index."""
        if not self.reconciler.api.connected:
            return "not logged in to the API server"
        if not self.reconciler.view_complete.is_set():
            return "the first LIST of the cluster is not done"
        return None

    def live(self, *, stalled_after: float) -> str | None:
        """Live: the reconcile loop moved within `stalled_after` seconds (a loop waiting out
        an API outage moves; a wedged one does not, and the kubelet restarts it)."""
        quiet = time.monotonic() - self.reconciler.progress_at
        if quiet > stalled_after:
            return f"the reconcile loop has not moved for {quiet:.0f}s"
        return None

    async def hand_over(self) -> None:
        """On SIGTERM, first: give up the Lease so a standby takes over at once."""
        if self.elector is not None and self.elector.leading:
            await self.elector.release()
            logger.info("Released the lease %s for a standby to take over.",
                        self.elector.config.name)


def assemble(
    options: Options, *, api: client.Api | None = None
) -> tuple[Running, kopf.OperatorRegistry]:
    metrics = metrics_.Metrics()
    api = api if api is not None else client.Api()
    recorder = events.Recorder(api=api, instance=options.identity)
    elector: leases.LeaderElector | None = None
    if options.leader_election:
        config = leases.LeaseConfig(namespace=lease_namespace(options), identity=options.identity,
                                    duration=options.lease_duration, renew=options.lease_renew)

        def announce(leading: bool) -> None:
            metrics.leader.set(1 if leading else 0)
            verb = "became the leader" if leading else "stopped leading"
            logger.info("Replica %s %s.", options.identity, verb)
            # With the Lease's uid, `kubectl describe lease capguard-leader` shows the Event.
            ref = events.ObjectRef("coordination.k8s.io/v1", "Lease", config.namespace,
                                   config.name, uid=elector.uid if elector is not None else "")
            recorder.record(events.Event(ref, events.NORMAL, "LeaderChanged",
                                         f"capguard replica {options.identity} {verb}"))

        elector = leases.LeaderElector(api=api, config=config, on_change=announce)
    leader = elector
    handles: list[Running] = []

    async def hand_over() -> None:
        await handles[0].hand_over()
    reconciler = reconcile.Reconciler(
        api=api, recorder=recorder, metrics=metrics,
        config=reconcile.Config(
            engine_driver=options.engine_driver,
            heartbeat_timeout=options.heartbeat_timeout,
            driver_config=driver.DriverConfig(
                engines.Timing(load=options.load_time, drain=options.drain_time),
                failure_rate=options.failure_rate),
            guarded=not options.naive,
            interval=options.reconcile_interval,
            seed=options.seed,
            namespaces=options.namespaces,
            max_write_delay=options.max_write_delay,
        ),
        # Checked right before every write: a lease expired by this replica's own clock
        # stops it at once, and the elector says so (log, Event, capguard_leader 0).
        is_leader=leader.check if leader is not None else (lambda: True),
    )
    registry = registration.build(reconciler, kubeconfig=options.kubeconfig,
                                  connection_limit=options.connection_limit, on_stop=hand_over)
    handles.append(Running(reconciler, elector, recorder, metrics))
    return handles[0], registry


async def serve(
    options: Options,
    *,
    stop_flag: StopFlag | None = None,
    ready_flag: StopFlag | None = None,
    running: list[Running] | None = None,
    api: client.Api | None = None,
) -> None:
    """Run one operator until `stop_flag` is set (or SIGINT/SIGTERM in the main thread).

    `running` receives the handles once started; `api` lets a test put a real concurrent
    writer between the planner and the API server.
    """
    handles, registry = assemble(options, api=api)
    _quiet_access_log()
    if options.naive:
        logger.warning("NAIVE mode, the incident's capacity manager: the guard is off, only an "
                       "Open breaker holds actions; while one is Open plans build on a cached "
                       "view; writes carry no resourceVersion precondition.")
    stalled_after = max(LIVENESS_MIN_SECONDS, 10 * options.reconcile_interval)
    async with metrics_server(
        handles.metrics, host=options.metrics_host, port=options.metrics_port,
        ready=handles.ready, live=lambda: handles.live(stalled_after=stalled_after),
    ) as port:
        handles.metrics_port = port
        if running is not None:
            running.append(handles)
        logger.info("Serving /metrics on port %d.", port)
        background = [
            asyncio.create_task(handles.recorder.run(), name="capguard events"),
            asyncio.create_task(handles.reconciler.run(), name="capguard reconcile"),
            *(asyncio.create_task(feed, name=name) for name, feed in handles.reconciler.feeds()),
        ]
        if handles.elector is not None:
            background.append(asyncio.create_task(handles.elector.run(), name="capguard lease"))
        else:
            handles.metrics.leader.set(1)
        try:
            await kopf.operator(
                registry=registry,
                settings=make_settings(options),
                clusterwide=not options.namespaces,
                namespaces=options.namespaces,
                standalone=True,
                # Kopf's default identity is getpass.getuser(): no passwd entry, no start.
                identity=peering.Identity(options.identity),
                liveness_endpoint=options.liveness,
                stop_flag=stop_flag,
                ready_flag=ready_flag,
            )
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await handles.reconciler.api.close()


def _quiet_access_log() -> None:
    """No line per probe or scrape: Kopf's liveness server logs every request at INFO
    (aiohttp's access log; the metrics server asks for none), and a kubelet probing every
    few seconds makes that thousands of lines a day per pod. Debug logging keeps them."""
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.WARNING)


def run(options: Options) -> None:
    """The blocking entry point for the CLI."""
    asyncio.run(serve(options))
