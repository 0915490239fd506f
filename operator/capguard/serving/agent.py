"""The engine agent: the process that owns one InferenceEngine and makes its status true.

    capguard engine --name h100-a-0 --serve-command "vllm serve {model} --port {port}"

It plays the kubelet's part for one engine. It watches its engine's spec (what the
operator bound it to) and converges a real model-server process on it, writing what is
really happening to the engine's status:

    Idle -> Loading (server started, not yet healthy) -> Serving (health answers 200)
    Serving -> Draining (SIGTERM: the server stops taking requests and finishes the
               ones in flight within --drain-grace) -> Idle -> Loading the next model
    Loading -> Failed (the server exited or was not healthy within --load-timeout),
               and after --retry-after back to Idle (the operator has released it meanwhile)

and renews its engine's Lease every --heartbeat-interval, so the operator knows an engine
whose agent died (docs/engines.md; `capguard.kube.heartbeats`). The server is a command
template, so in production it is vLLM or any OpenAI-compatible server, and in demos and
tests the stand-in `capguard model-server`.

Level-triggered: every tick compares the spec with the server the agent runs, so a
restarted agent (its old server gone with it) reports Idle and loads again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import shlex
import signal
import socket
import time
from collections.abc import Mapping
from typing import Any, Final

import click

import capguard
from capguard import commandline
from capguard.commandline import OneLineCommand, OneLineUsage
from capguard.core import backoff, clock, specs
from capguard.kube import heartbeats

logger = logging.getLogger("capguard.engine")

TICK: Final = 0.1  # seconds between looks while something is under way
QUIET_TICK: Final = 1.0  # between looks while nothing is (the watch wakes it sooner)
HEARTBEAT_INTERVAL: Final = 10.0
PLACEHOLDERS: Final = ("model", "revision", "port", "units", "engine", "host")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    name: str
    namespace: str = "default"
    kubeconfig: str | None = None
    serve_command: str
    health_path: str = "/health"
    host: str = "127.0.0.1"  # where the server listens and the endpoint points
    port: int = 0  # 0: a free port for each server
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    drain_grace: float = 30.0
    load_timeout: float = 600.0
    retry_after: float = 30.0
    create_pool: str | None = None  # create the engine if missing, in this pool
    create_units: int = 1
    create_labels: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Wanted:
    """What the engine's spec asks for."""

    model: str | None
    revision: str | None
    units: int
    generation: int

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Wanted:
        spec = body.get("spec") or {}
        return cls(model=spec.get("modelRef") or None, revision=spec.get("revision") or None,
                   units=int(spec.get("capacityUnits") or 1),
                   generation=int((body.get("metadata") or {}).get("generation") or 0))


@dataclasses.dataclass
class Server:
    """One model-server process the agent started."""

    model: str
    revision: str | None
    endpoint: str
    process: asyncio.subprocess.Process
    started: float
    stderr_tail: list[str] = dataclasses.field(default_factory=list)

    def exit_reason(self) -> str:
        last = f": {self.stderr_tail[-1]}" if self.stderr_tail else ""
        return f"model server exited with code {self.process.returncode}{last}"


def render(template: str, *, values: Mapping[str, str]) -> list[str]:
    """The serve command for one model: the template's {placeholders} filled, split as a
    shell would (no shell runs it)."""
    try:
        return [part.format(**values) for part in shlex.split(template)]
    except (KeyError, IndexError) as error:
        raise ValueError(f"--serve-command has an unknown placeholder {error}; use "
                         f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)}") from None


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _resource_version(body: Mapping[str, Any]) -> str | None:
    """An object's metadata.resourceVersion as the API server answered it (None if none)."""
    version = (body.get("metadata") or {}).get("resourceVersion")
    return str(version) if version else None


class Agent:
    """One engine's agent: converge a server on the spec, report it, heartbeat."""

    def __init__(self, options: Options, *, api: Any) -> None:
        from capguard.kube import client

        self.options = options
        self.api = api
        self.resource = client.ENGINES
        self.wanted: Wanted | None = None
        self.phase = specs.Phase.IDLE
        self.server: Server | None = None
        self.reported: dict[str, Any] = {}
        self.ready: dict[str, Any] = {}  # the Ready condition as last reported
        self.failed_until = 0.0
        self.drain_deadline = 0.0
        self.changed = asyncio.Event()
        self.stopping = False
        self.http: Any = None  # one session for the health polls, opened by `run`
        self.engine: Mapping[str, Any] = {}  # the engine's body as last seen (the Lease's owner)
        self.holder = socket.gethostname()  # the Lease's holderIdentity (in a Pod: its name)
        self.vouch = False  # the operator marked the engine unheard: say Ready again
        self.unreported: str | None = None  # a report's message the API did not take yet
        self.report_failures = 0  # in a row: written again on core.backoff's schedule
        self.report_again_at = 0.0
        # No RBAC for Leases, or the engine's name taken by another component's Lease:
        # heartbeat on the status instead.
        self.lease_unusable = False
        # The Lease's resourceVersion as this agent last read or wrote it: a renewal is
        # preconditioned on it, so it never writes a Lease that changed since.
        self.lease_version: str | None = None
        # The uid of the engine this agent last made the Lease the heartbeat of: another
        # (its engine deleted and created again under its name) takes the Lease over.
        self.lease_owner: str | None = None

    # -- the API side -------------------------------------------------------------

    async def adopt(self) -> dict[str, Any]:
        """The engine's body: read it, or create it (--pool) when it does not exist."""
        from capguard.kube import client

        try:
            body: dict[str, Any] = await self.api.get(
                self.resource, namespace=self.options.namespace, name=self.options.name)
            return body
        except client.NotFound:
            if self.options.create_pool is None:
                raise
        created: dict[str, Any] = await self.api.create(
            self.resource, namespace=self.options.namespace, body={
                "apiVersion": self.resource.api_version, "kind": "InferenceEngine",
                "metadata": {"name": self.options.name, "labels": {
                    "capguard.dev/pool": self.options.create_pool,
                    **self.options.create_labels}},
                "spec": {"pool": self.options.create_pool,
                         "capacityUnits": self.options.create_units}})
        logger.info("Created InferenceEngine %s/%s in pool %s.", self.options.namespace,
                    self.options.name, self.options.create_pool)
        return created

    async def watch_spec(self, body: Mapping[str, Any]) -> None:
        """Keep `self.wanted` current from a watch of the engine (re-read on any break).

        The watch starts from the engine's resourceVersion, as read. A real API server
        keeps a window of each kind's changes, and an engine that has not changed for a
        while (or any object, after the server restarted) is older than that window: the
        watch answers 410 Expired (k8s-reference 081) however often it is asked again from
        there. After a 410 it watches from resourceVersion 0 instead: the server sends the
        engine as it is (a synthetic ADDED, as 081 records), then its changes."""
        import aiohttp

        from capguard.kube import client

        version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        selector = f"metadata.name={self.options.name}"
        while True:
            try:
                async for event in self.api.watch(
                        self.resource, namespace=self.options.namespace,
                        resource_version=version, field_selector=selector):
                    found = event.get("object") or {}
                    version = str((found.get("metadata") or {}).get("resourceVersion")
                                  or version)
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self.learn(found)
                    elif event.get("type") == "DELETED":
                        logger.warning("InferenceEngine %s was deleted; stopping its server.",
                                       self.options.name)
                        self.wanted = Wanted(None, None, 1, 0)
                        self.changed.set()
            except client.Expired:
                logger.info("Watch of %s: its resourceVersion %s has expired; watching from "
                            "the engine as it is now.", self.options.name, version)
                if version == "0":  # a server that expires even "any": not in a tight loop
                    await asyncio.sleep(1.0)
                version = "0"
            except (client.ApiError, client.EmptyWatch, aiohttp.ClientError,
                    TimeoutError) as error:
                logger.info("Watch of %s ended (%s); reading it again.", self.options.name,
                            error)
                await asyncio.sleep(1.0)
                with contextlib.suppress(Exception):
                    fresh = await self.api.get(self.resource, namespace=self.options.namespace,
                                               name=self.options.name)
                    version = str((fresh.get("metadata") or {}).get("resourceVersion") or "")
                    self.learn(fresh)

    def learn(self, body: Mapping[str, Any]) -> None:
        self.engine = body
        wanted = Wanted.of(body)
        if wanted != self.wanted:
            self.wanted = wanted
            self.changed.set()
        conditions = (body.get("status") or {}).get("conditions") or []
        ready = next((c for c in conditions if isinstance(c, Mapping)
                      and c.get("type") == "Ready"), None)
        if self.reported and ready is not None and ready.get("reason") == heartbeats.EXPIRED:
            self.vouch = True  # the operator stopped hearing us: our next look says Ready
            self.changed.set()

    async def report(self, *, message: str, force: bool = False) -> bool:
        """Write the phase (and what goes with it) when it changed, with a heartbeat.

        A write the API server did not take (unreachable, 5xx, a dropped connection) is
        kept in `unreported` and written again on `core.backoff`'s schedule: the phase this
        agent is in goes on, its server is never left or killed over a status write, and
        the engine's status catches up once the API answers. False until it is written."""
        import aiohttp

        from capguard.kube import client

        server = self.server
        status: dict[str, Any] = {
            "phase": self.phase.value,
            "model": server.model if server else None,
            "revision": server.revision if server else None,
            "endpoint": server.endpoint if server else None,
            "message": message,
            "observedGeneration": self.wanted.generation if self.wanted else None,
        }
        if status == self.reported and not force:
            self.unreported = None
            return True
        now = time.time()
        if status != self.reported:
            status["since"] = clock.precise_timestamp(now)
            serving = self.phase is specs.Phase.SERVING
            self.ready = {
                "type": "Ready", "status": "True" if serving else "False",
                "reason": self.phase.value, "message": message,
                "lastTransitionTime": clock.timestamp(now),
                "observedGeneration": self.wanted.generation if self.wanted else 0}
        status["conditions"] = [self.ready]
        status["lastHeartbeatTime"] = clock.precise_timestamp(now)
        try:
            await self.api.merge_patch(self.resource, namespace=self.options.namespace,
                                       name=self.options.name, patch={"status": status},
                                       subresource="status")
        except (client.ApiError, aiohttp.ClientError, OSError, TimeoutError) as error:
            if self.unreported is None:
                logger.warning("Could not report %s %s (%s); trying again while the API "
                               "does not answer.", self.options.name, self.phase.value,
                               error or type(error).__name__)
            self.unreported = message
            self.report_failures += 1
            self.report_again_at = time.monotonic() + backoff.delay(
                self.report_failures, jitter=random.random())
            return False
        self.unreported, self.report_failures = None, 0
        self.reported = {k: status[k] for k in ("phase", "model", "revision", "endpoint",
                                                 "message", "observedGeneration")}
        logger.info("%s %s%s: %s", self.options.name, self.phase.value,
                    f" {server.model}" if server else "", message)
        return True

    async def heartbeat(self) -> None:
        """Renew the engine's Lease at once and every --heartbeat-interval (a failed renewal
        is tried again next time). Without RBAC for Leases (an agent upgraded before its
        Role), renew status.lastHeartbeatTime instead, as agents before the Lease did.

        A renewal with no answer within two intervals (a dead connection) is given up and
        tried again at once, as the kubelet bounds its node Lease's requests: held for the
        client's request timeout, it would leave the engine silent past the heartbeat
        bound (4 intervals by default), and the operator would take it out of service.
        Two, not one: on a slow API server a renewal has time to land."""
        first = True
        interval = self.options.heartbeat_interval
        while True:
            try:
                async with asyncio.timeout(2 * interval):
                    if self.lease_unusable:
                        await self.beat_on_status()
                    else:
                        first = not await self.renew(first=first)
            except TimeoutError:  # two intervals have gone by already
                logger.info("Heartbeat of %s had no answer within %gs; trying again now.",
                            self.options.name, 2 * interval)
                continue
            except Exception as error:  # the API is unwell: next interval
                logger.info("Heartbeat of %s failed (%s); trying again in %gs.",
                            self.options.name, error, interval)
            await asyncio.sleep(interval)

    async def renew(self, *, first: bool) -> bool:
        """Renew the Lease (``first``: this agent's, which also says it holds it, once it
        has read that the Lease is its engine's heartbeat), or create it when it does not
        exist. True once the Lease is known to be the heartbeat this agent writes: renewed
        after that read, or created by this agent. Each renewal carries the resourceVersion
        the agent last read or wrote (`lease_version`). A 409 is not known to be ours: a
        create that met a Lease created meanwhile, or a renewal of a Lease that changed
        since (another writer, or deleted and created again by another component between
        two renewals). Whose it is gets read before the next renewal writes it.

        The first renewal also makes the Lease its engine's heartbeat (its owner), so an
        earlier engine's Lease of the name, awaiting the garbage collector, is taken over;
        and when its engine is created again under its name while this agent runs, the
        next renewal is a first one again."""
        from capguard.kube import client

        now, where = time.time(), {"namespace": self.options.namespace,
                                   "name": self.options.name}
        engine = self.engine
        first = first or heartbeats.uid_of(engine) != self.lease_owner
        try:
            try:
                if first and not await self.lease_is_ours(where, engine=engine):
                    return False
                written = await self.api.merge_patch(
                    client.LEASES, **where, patch=heartbeats.renewal(
                        holder=self.holder, interval=self.options.heartbeat_interval, now=now,
                        acquired=first, resource_version=self.lease_version,
                        engine=engine if first else None))
            except client.NotFound:
                written = await self.api.create(
                    client.LEASES, namespace=self.options.namespace, body=heartbeats.lease(
                        engine, holder=self.holder,
                        interval=self.options.heartbeat_interval, now=now))
            self.lease_version = _resource_version(written)
            self.lease_owner = heartbeats.uid_of(engine)
            return True
        except client.Conflict:
            self.lease_version = None
            return False
        except client.ApiError as error:
            if error.status != 403:
                raise
            self.lease_unusable = True
            logger.warning("Cannot use the Lease of %s (%s): grant this agent create, get "
                           "and patch on coordination.k8s.io leases (deploy/demo/agent-rbac"
                           ".yaml). Heartbeating on the engine's status meanwhile.",
                           self.options.name, error)
            await self.beat_on_status()
            return False

    async def lease_is_ours(self, where: Mapping[str, str], *,
                            engine: Mapping[str, Any]) -> bool:
        """Read the Lease of the engine's name before writing it (NotFound: there is none
        yet). One that is not the heartbeat of an engine of that name
        (`heartbeats.speaks_for`) belongs to another component, a leader election say:
        writing its holder would take the lease from that component's leader. It is left
        alone, and the agent heartbeats on the engine's status, as without RBAC for
        Leases. The heartbeat of an earlier engine of the name is ours to take over."""
        from capguard.kube import client

        self.lease_version = None
        found = await self.api.get(client.LEASES, **where)
        if heartbeats.speaks_for(found, self.options.name):
            self.lease_version = _resource_version(found)
            owner = heartbeats.owner_uid(found)
            if not heartbeats.belongs(owner, uid=heartbeats.uid_of(engine)):
                logger.info("Lease %s/%s is the heartbeat of an earlier InferenceEngine %s "
                            "(uid %s): taking it over for this one (uid %s).",
                            where["namespace"], where["name"], self.options.name, owner,
                            heartbeats.uid_of(engine))
            return True
        self.lease_unusable = True
        logger.error("Lease %s/%s exists and is not the heartbeat of InferenceEngine %s (no "
                     "label %s=%s, or another owner): left alone; heartbeating on the "
                     "engine's status instead. Rename or delete that Lease and restart this "
                     "agent to heartbeat on a Lease.", where["namespace"], where["name"],
                     self.options.name, heartbeats.LABEL, heartbeats.OF_ENGINES)
        await self.beat_on_status()
        return False

    async def vouch_again(self) -> None:
        """The operator marked the engine unheard (Ready Unknown, HeartbeatExpired) while
        this agent lives: write its status again, Ready as it is, so counts and kubectl
        agree with the Lease once more (tried again next look if the write fails)."""
        message = self.unreported or str(self.reported.get("message") or "")
        if await self.report(message=message, force=True):
            self.vouch = False

    async def beat_on_status(self) -> None:
        """Renew status.lastHeartbeatTime, with the Ready condition."""
        beat: dict[str, Any] = {"lastHeartbeatTime": clock.precise_timestamp(time.time())}
        if self.ready:
            beat["conditions"] = [self.ready]
        await self.api.merge_patch(self.resource, namespace=self.options.namespace,
                                   name=self.options.name, patch={"status": beat},
                                   subresource="status")

    # -- the process side ---------------------------------------------------------

    async def start_server(self, wanted: Wanted) -> Server:
        assert wanted.model is not None
        port = self.options.port or free_port(self.options.host)
        argv = render(self.options.serve_command, values={
            "model": wanted.model, "revision": wanted.revision or "", "port": str(port),
            "units": str(wanted.units), "engine": self.options.name,
            "host": self.options.host})
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        server = Server(wanted.model, wanted.revision, f"http://{self.options.host}:{port}",
                        process, time.monotonic())
        asyncio.get_running_loop().create_task(_tail(process, server.stderr_tail))
        return server

    async def healthy(self, server: Server, *, http: Any) -> bool:
        import aiohttp

        try:
            async with http.get(server.endpoint + self.options.health_path,
                                timeout=aiohttp.ClientTimeout(total=2)) as response:
                return bool(response.status == 200)
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    # -- the machine --------------------------------------------------------------

    async def tick(self) -> None:
        """One look: move at most one phase on towards the spec."""
        wanted, server, now = self.wanted, self.server, time.monotonic()
        if wanted is None:
            return
        target = (wanted.model, wanted.revision) if not self.stopping else (None, None)
        if self.phase is specs.Phase.IDLE:
            if target[0] is not None and server is None:
                self.server = await self.start_server(wanted)
                self.phase = specs.Phase.LOADING
                await self.report(message=f"loading {wanted.model}")
            else:
                await self.report(message="no model bound")
            return
        assert server is not None or self.phase is specs.Phase.FAILED
        if self.phase is specs.Phase.FAILED:
            if now >= self.failed_until:
                self.phase = specs.Phase.IDLE
                await self.report(message="ready to load again")
            return
        assert server is not None
        exited = server.process.returncode is not None
        moved = (server.model, server.revision) != target
        if self.phase is specs.Phase.LOADING:
            if moved:
                await self._drain(server, grace=0.0, why=f"load of {server.model} abandoned: "
                                  "rebound")
            elif exited:
                await self._fail(server, server.exit_reason())
            elif now - server.started > self.options.load_timeout:
                await self._kill(server)
                await self._fail(server, f"not healthy within {self.options.load_timeout:g}s")
            elif await self.healthy(server, http=self.http):
                self.phase = specs.Phase.SERVING
                await self.report(message=f"serving {server.model}")
        elif self.phase is specs.Phase.SERVING:
            if moved:
                await self._drain(server, grace=self.options.drain_grace,
                                  why=f"draining {server.model}")
            elif exited:
                await self._fail(server, server.exit_reason())
        elif self.phase is specs.Phase.DRAINING and (exited or now >= self.drain_deadline):
            if not exited:
                await self._kill(server)
            self.server = None
            self.phase = specs.Phase.IDLE
            await self.report(message=f"drained {server.model}")

    async def _drain(self, server: Server, *, grace: float, why: str) -> None:
        """SIGTERM: a graceful server stops taking requests and finishes those in flight."""
        self.phase = specs.Phase.DRAINING
        self.drain_deadline = time.monotonic() + grace
        await self.report(message=why)
        with contextlib.suppress(ProcessLookupError):
            server.process.send_signal(signal.SIGTERM)

    async def _kill(self, server: Server) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)
        await server.process.wait()

    async def _fail(self, server: Server, reason: str) -> None:
        self.phase = specs.Phase.FAILED
        self.failed_until = time.monotonic() + self.options.retry_after
        await self.report(message=f"failed to load {server.model}: {reason}")
        self.server = None

    async def run(self, *, stop: asyncio.Event) -> None:
        import aiohttp

        self.http = aiohttp.ClientSession()
        body = await self.adopt()
        self.learn(body)
        tasks = [asyncio.create_task(self.watch_spec(body)),
                 asyncio.create_task(self.heartbeat())]
        try:
            while not (stop.is_set() and self.server is None):
                if stop.is_set():
                    self.stopping = True
                if self.vouch:
                    await self.vouch_again()
                elif self.unreported is not None and time.monotonic() >= self.report_again_at:
                    await self.report(message=self.unreported)
                before = self.phase
                await self.tick()
                if self.phase is not before:
                    continue  # a phase ended: the next one may start at once
                busy = self.phase in (specs.Phase.LOADING, specs.Phase.DRAINING) or self.stopping
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), TICK if busy else QUIET_TICK)
                self.changed.clear()
            await self.report(message="agent stopped", force=True)
        finally:
            for task in tasks:
                task.cancel()
            if self.server is not None:
                await self._kill(self.server)
            await self.http.close()


async def _tail(process: asyncio.subprocess.Process, lines: list[str]) -> None:
    """Keep the last lines the server wrote to stderr (a failure's reason), and log them."""
    assert process.stderr is not None
    async for raw in process.stderr:
        line = raw.decode(errors="replace").rstrip()
        if line:
            lines[:] = [*lines[-4:], line]
            logger.debug("server: %s", line)


async def serve(options: Options, *, stop: asyncio.Event) -> None:
    import kopf

    from capguard.kube import client, credentials

    def login() -> Any:
        return credentials.login(options.kubeconfig, settings=kopf.OperatorSettings())

    info = login()
    if info is None:
        raise OneLineUsage("no kubeconfig found and not in a cluster; pass --kubeconfig FILE")
    api = client.Api(user_agent=f"{client.USER_AGENT}-engine/{capguard.__version__}")
    api.login(info, connection_limit=4, relogin=login)  # a rotated token: log in again
    try:
        await Agent(options, api=api).run(stop=stop)
    finally:
        await api.close()


def _labels(_: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for value in values:
        key, sep, label = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param=param)
        found[key] = label
    return found


@click.command("engine", cls=OneLineCommand)
@click.option("--name", required=True, help="The InferenceEngine this agent owns.")
@click.option("-n", "--namespace", default=lambda: os.environ.get("POD_NAMESPACE", "default"),
              show_default="POD_NAMESPACE, else default", help="The engine's namespace.")
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Kubeconfig file. Default: KUBECONFIG, ~/.kube/config, or in-cluster.")
@commandline.context_option
@click.option("--serve-command", required=True,
              help="The model server to run, with {model}, {revision}, {port}, {units}, "
              "{engine}, {host} filled in; e.g. \"vllm serve {model} --port {port}\".")
@click.option("--health-path", default="/health", show_default=True,
              help="The server is Serving once GET of this path answers 200.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address the server listens on, and the endpoint's host (a Pod: its IP).")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="The server's port; 0 picks a free one for each server.")
@click.option("--heartbeat-interval", default="10s", show_default=True,
              callback=commandline.duration)
@click.option("--drain-grace", default="30s", show_default=True, callback=commandline.duration,
              help="How long a draining server may finish its requests before SIGKILL.")
@click.option("--load-timeout", default="10m", show_default=True, callback=commandline.duration,
              help="A server not healthy this long after its start is Failed.")
@click.option("--retry-after", default="30s", show_default=True, callback=commandline.duration,
              help="How long a Failed engine waits before it is Idle again.")
@click.option("--pool", "create_pool", default=None,
              help="Create the engine in this pool if it does not exist (engines as Pods).")
@click.option("--units", "create_units", type=click.IntRange(1, 1024), default=1,
              show_default=True, help="With --pool: the created engine's capacityUnits.")
@click.option("--label", "create_labels", multiple=True, callback=_labels, metavar="KEY=VALUE",
              help="With --pool: a label of the created engine (repeatable).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (the server's stderr too).")
def command(verbose: bool, context: str | None, **flags: Any) -> None:
    """Run the agent of one InferenceEngine: converge a model server on its spec and
    report the truth in its status (docs/engines.md)."""
    if context is not None:
        flags["kubeconfig"] = commandline.with_context(flags["kubeconfig"], context)
    try:
        render(flags["serve_command"], values=dict.fromkeys(PLACEHOLDERS, "x"))
    except ValueError as error:
        raise OneLineUsage(str(error)) from None
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = Options(**flags)
    asyncio.run(_main(options))


async def _main(options: Options) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    await serve(options, stop=stop)


if __name__ == "__main__":
    command()
