"""`capguard gateway`: an OpenAI-compatible front door that routes by model.

It follows the InferenceEngines of one namespace (a LIST, then a WATCH from the list's
resourceVersion, listed again on 410 Expired) and, when it checks liveness, their
heartbeat Leases the same way (`capguard.kube.heartbeats`); it sends each request to an
engine that serves the body's `model`. What makes an engine routable is the agent's
contract (docs/engines.md) and is decided in one place, `Engine.routable_for`. The gateway
answers 503 when a model has no routable engine, passes an upstream's answer through
otherwise, and tries the next engine once each when one answers 429/503 or cannot be
reached; when every engine of the model is saturated the client gets the 429.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import random
import signal
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import click

import capguard
from capguard import commandline
from capguard.core import clock, engines
from capguard.kube import heartbeats

if TYPE_CHECKING:  # imported where they run: `capguard --help` loads none of them
    import aiohttp
    import kopf
    from aiohttp import web

    from capguard.kube import client

logger = logging.getLogger("capguard.gateway")

ROUTES: Final = ("/v1/completions", "/v1/chat/completions")
SERVING: Final = "Serving"
UNKNOWN_MODEL: Final = "_unknown"  # the label of every model no engine names
# An engine that answers these is busy or leaving: the next engine may still serve.
RETRYABLE: Final = frozenset({429, 503})
DEFAULT_HEARTBEAT_TIMEOUT: Final = 40.0
DEFAULT_REQUEST_TIMEOUT: Final = 60.0
WATCH_SECONDS: Final = 300  # the server ends each watch after this; the gateway resumes it
MAX_BACKOFF: Final = 30.0
_HOP_BY_HOP: Final = frozenset({"connection", "keep-alive", "transfer-encoding",
                                 "content-length", "content-encoding", "date", "server"})


@dataclasses.dataclass(frozen=True)
class Engine:
    """What the gateway needs of one InferenceEngine."""

    name: str
    uid: str  # which engine of that name: its Lease must be this one's (`Leases.renewed`)
    phase: str
    model: str  # status.model: what the server has loaded
    model_ref: str  # spec.modelRef: what the operator has bound it to
    endpoint: str
    heartbeat: float | None  # status.lastHeartbeatTime, in epoch seconds
    units: int

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Engine:
        spec, status = body.get("spec") or {}, body.get("status") or {}
        units = spec.get("capacityUnits")
        return cls(name=str((body.get("metadata") or {}).get("name") or ""),
                   uid=heartbeats.uid_of(body), phase=str(status.get("phase") or ""),
                   model=str(status.get("model") or ""),
                   model_ref=str(spec.get("modelRef") or ""),
                   endpoint=str(status.get("endpoint") or "").rstrip("/"),
                   heartbeat=clock.parse_timestamp(status.get("lastHeartbeatTime")),
                   units=units if isinstance(units, int) and units > 0 else 1)

    def routable_for(self, model: str, *, now: float, renewed: float | None,
                     heartbeat_timeout: float) -> bool:
        """Serving this model, staying on it, reachable, and its agent alive: heard within
        the timeout, at the later of ``renewed`` (its Lease's renewTime) and its status's
        lastHeartbeatTime.

        A heartbeat timeout of 0 turns the liveness check off (engines whose status no
        agent writes, the simulated driver's); otherwise an engine that never reported a
        heartbeat is as silent as one whose heartbeat is old.
        """
        if not (self.phase == SERVING and self.model == model == self.model_ref
                and self.endpoint):
            return False
        if heartbeat_timeout <= 0:
            return True
        return not engines.unheard(engines.latest(renewed, self.heartbeat), now=now,
                                   timeout=heartbeat_timeout)


class Leases:
    """The engines' Leases as last listed or watched: when each was last renewed, and for
    which engine object, by the name of its engine. A deleted Lease, or one without a
    readable renewTime, says nothing."""

    def __init__(self) -> None:
        self._beats: dict[str, heartbeats.Heartbeat] = {}
        self.listed = asyncio.Event()  # set once the first LIST has arrived

    def replace(self, bodies: Iterable[Mapping[str, Any]]) -> None:
        self._beats.clear()
        for body in bodies:
            self.apply("ADDED", body)
        self.listed.set()

    def apply(self, kind: str, body: Mapping[str, Any]) -> None:
        name = str((body.get("metadata") or {}).get("name") or "")
        beat = heartbeats.read(body) if kind != "DELETED" else None
        if beat is None:
            self._beats.pop(name, None)
        else:
            self._beats[name] = beat

    def renewed(self, engine: Engine) -> float | None:
        """The engine's last renewal, if its Lease is this engine's heartbeat, not that of
        an earlier engine of its name awaiting the garbage collector."""
        beat = self._beats.get(engine.name)
        if beat is None or not heartbeats.belongs(beat.owner, uid=engine.uid):
            return None
        return beat.renewed


class Fleet:
    """The namespace's engines as last listed or watched, indexed by the model they have
    loaded, so that routing a request looks only at that model's engines; and their
    Leases, followed apart (a renewal is no change to an engine)."""

    def __init__(self) -> None:
        self._engines: dict[str, Engine] = {}
        self._by_model: dict[str, dict[str, Engine]] = collections.defaultdict(dict)
        self._named: collections.Counter[str] = collections.Counter()  # model -> mentions
        self.listed = asyncio.Event()  # set once the first LIST has arrived
        self.leases = Leases()

    def replace(self, bodies: Iterable[Mapping[str, Any]]) -> None:
        for name in list(self._engines):
            self._forget(name)
        for engine in map(Engine.from_body, bodies):
            self._remember(engine)
        self.listed.set()

    def apply(self, kind: str, body: Mapping[str, Any]) -> None:
        engine = Engine.from_body(body)
        self._forget(engine.name)
        if kind != "DELETED":
            self._remember(engine)

    def _remember(self, engine: Engine) -> None:
        self._engines[engine.name] = engine
        self._by_model[engine.model][engine.name] = engine
        self._named.update(m for m in {engine.model, engine.model_ref} if m)

    def _forget(self, name: str) -> None:
        engine = self._engines.pop(name, None)
        if engine is None:
            return
        del self._by_model[engine.model][name]
        if not self._by_model[engine.model]:
            del self._by_model[engine.model]
        self._named.subtract(m for m in {engine.model, engine.model_ref} if m)
        self._named += collections.Counter()  # drops the models no engine names any more

    def routable(self, model: str, *, heartbeat_timeout: float) -> list[Engine]:
        now = time.time()
        return [e for e in self._by_model.get(model, {}).values()
                if e.routable_for(model, now=now, renewed=self.leases.renewed(e),
                                  heartbeat_timeout=heartbeat_timeout)]

    def names(self, model: str) -> bool:
        """Whether an engine names the model (loaded or bound): such a model is its own
        `model` label value; any other is counted as _unknown, so labels stay bounded."""
        return model in self._named

    def models(self) -> list[str]:
        return sorted(self._named)


# --- following the engines and their Leases -----------------------------------------


class Mirror(Protocol):
    """What a LIST, then a WATCH, of one kind keeps current (the Fleet, its Leases)."""

    def replace(self, bodies: Iterable[Mapping[str, Any]]) -> None: ...

    def apply(self, kind: str, body: Mapping[str, Any]) -> None: ...


def login(kubeconfig: str | None) -> kopf.ConnectionInfo:
    """--kubeconfig, KUBECONFIG, ~/.kube/config, or the Pod's service account."""
    import kopf

    from capguard.kube import credentials

    info = credentials.login(kubeconfig, settings=kopf.OperatorSettings())
    if info is None:
        raise click.UsageError("no kubeconfig found and not in a cluster; pass --kubeconfig FILE")
    return info


async def follow(api: client.Api, *, resource: client.Resource, namespace: str,
                 label_selector: str | None = None, into: Mirror) -> None:
    """List and watch a kind for ever: again after 410 Expired, with backoff after errors
    (the Api logs in again on a 401)."""
    import aiohttp

    from capguard.kube import client

    backoff = 1.0
    while True:
        try:
            version = await relist(api, resource=resource, namespace=namespace,
                                   label_selector=label_selector, into=into)
            backoff = 1.0
            while True:
                version = await watch(api, resource=resource, namespace=namespace,
                                      label_selector=label_selector, into=into, version=version)
        except client.Expired:
            logger.info("the %s' watch expired; listing again", resource.plural)
        except (TimeoutError, aiohttp.ClientError, client.ApiError, client.EmptyWatch,
                ValueError) as error:
            logger.warning("following the %s failed (%s); again in %.0fs", resource.plural,
                           error or type(error).__name__, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)


async def relist(api: client.Api, *, resource: client.Resource, namespace: str,
                 label_selector: str | None, into: Mirror) -> str:
    """Replace the mirror's contents with a fresh LIST; the list's resourceVersion."""
    bodies: list[client.Body] = []
    version = ""
    async for page in api.pages(resource, namespace=namespace, label_selector=label_selector):
        version = version or str((page.get("metadata") or {}).get("resourceVersion") or "")
        bodies.extend(page.get("items") or [])
    into.replace(bodies)
    return version


async def watch(api: client.Api, *, resource: client.Resource, namespace: str,
                label_selector: str | None, into: Mirror, version: str) -> str:
    """One WATCH from `version` until the server ends it; the last version seen. A stream
    that ends at once with no event raises `client.EmptyWatch` (backed off by `follow`)."""
    async for event in api.watch(resource, namespace=namespace, resource_version=version,
                                 label_selector=label_selector, timeout_seconds=WATCH_SECONDS):
        kind, body = event.get("type"), event.get("object") or {}
        if kind in {"ADDED", "MODIFIED", "DELETED"}:
            into.apply(kind, body)
        version = str((body.get("metadata") or {}).get("resourceVersion") or version)
    return version


# --- serving requests ---------------------------------------------------------------


def error(status: int, *, message: str, type_: str, code: str) -> web.Response:
    """An error in the OpenAI shape clients already parse."""
    from aiohttp import web

    return web.json_response({"error": {"message": message, "type": type_, "code": code}},
                             status=status)


@dataclasses.dataclass(frozen=True)
class Upstream:
    """An engine's answer that the gateway did not relay: try the next engine."""

    status: int
    body: bytes
    headers: Mapping[str, str]


class Gateway:
    """Routes each request to the least-loaded routable engine of its model."""

    def __init__(self, *, fleet: Fleet, heartbeat_timeout: float,
                 request_timeout: float) -> None:
        self.fleet = fleet
        self.heartbeat_timeout = heartbeat_timeout
        self.request_timeout = request_timeout
        from capguard import metrics

        self.metrics = metrics.GatewayMetrics()
        self.in_flight: collections.Counter[str] = collections.Counter()
        self._session: aiohttp.ClientSession | None = None

    @property
    def reads_leases(self) -> bool:
        """Only the liveness check reads the engines' Leases: without it, the gateway
        follows none (and needs no RBAC for them)."""
        return self.heartbeat_timeout > 0

    def app(self) -> web.Application:
        from aiohttp import web

        app = web.Application()
        app.router.add_routes([*(web.post(path, self.route) for path in ROUTES),
                               web.get("/v1/models", self.models),
                               web.get("/metrics", self.scrape),
                               web.get("/healthz", self.healthz),
                               web.get("/readyz", self.readyz)])
        app.cleanup_ctx.append(self._upstream_session)
        return app

    async def _upstream_session(self, app: web.Application) -> Any:
        import aiohttp

        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),  # open-loop clients: never queue here
            timeout=aiohttp.ClientTimeout(total=self.request_timeout))
        yield
        await self._session.close()

    async def route(self, request: web.Request) -> web.StreamResponse:
        started = asyncio.get_running_loop().time()
        model, response = await self._answer(request)
        label = model if self.fleet.names(model) else UNKNOWN_MODEL
        self.metrics.requests.labels(label, str(response.status)).inc()
        self.metrics.duration.labels(label).observe(asyncio.get_running_loop().time() - started)
        return response

    async def _answer(self, request: web.Request) -> tuple[str, web.StreamResponse]:
        raw = await request.read()
        model = _model_of(raw)
        if model is None:
            return "", error(400, message="the body must be a JSON object with a string "
                             "'model'", type_="invalid_request_error", code="invalid_body")
        engines = self.fleet.routable(model, heartbeat_timeout=self.heartbeat_timeout)
        if not engines:
            return model, error(503, message=f"model {model} has no serving capacity",
                                type_="service_unavailable", code="no_capacity")
        return model, await self._forward(request, raw=raw, engines=self._order(engines))

    def _order(self, engines: list[Engine]) -> list[Engine]:
        """Least in flight per capacity unit first; ties in random order, so that equal
        engines share the load."""
        return sorted(engines, key=lambda e: (self.in_flight[e.name] / e.units, random.random()))

    async def _forward(self, request: web.Request, *, raw: bytes,
                       engines: list[Engine]) -> web.StreamResponse:
        import aiohttp
        from aiohttp import web

        declined: list[Upstream] = []
        for attempt, engine in enumerate(engines):
            if attempt:
                self.metrics.retries.inc()
            self.in_flight[engine.name] += 1
            try:
                relayed = await self._send(request, raw=raw, engine=engine)
            except TimeoutError:
                return error(504, message=f"engine {engine.name} did not answer within "
                             f"{self.request_timeout:g}s", type_="timeout",
                             code="upstream_timeout")
            except aiohttp.ClientConnectionError as failure:
                logger.info("engine %s at %s is unreachable: %s", engine.name,
                            engine.endpoint, failure)
                continue
            finally:
                self.in_flight[engine.name] -= 1
                if not self.in_flight[engine.name]:
                    del self.in_flight[engine.name]
            if isinstance(relayed, Upstream):
                declined.append(relayed)
                continue
            return relayed
        if declined:  # a saturated engine's 429 says more than a leaving one's 503
            chosen = min(declined, key=lambda d: d.status != 429)
            return web.Response(status=chosen.status, body=chosen.body, headers=chosen.headers)
        return error(502, message=f"no engine of {engines[0].model} could be reached",
                     type_="bad_gateway", code="upstream_unreachable")

    async def _send(self, request: web.Request, *, raw: bytes,
                    engine: Engine) -> web.StreamResponse | Upstream:
        from aiohttp import web

        assert self._session is not None
        async with self._session.post(engine.endpoint + request.path, data=raw,
                                      headers={"Content-Type": "application/json"}) as upstream:
            headers = _end_to_end(upstream.headers)
            if upstream.status in RETRYABLE:
                return Upstream(upstream.status, await upstream.read(), headers)
            if not headers.get("Content-Type", "").startswith("text/event-stream"):
                return web.Response(status=upstream.status, body=await upstream.read(),
                                    headers=headers)
            streamed = web.StreamResponse(status=upstream.status, headers=headers)
            await streamed.prepare(request)
            async for chunk in upstream.content.iter_any():
                await streamed.write(chunk)
            await streamed.write_eof()
            return streamed

    async def models(self, request: web.Request) -> web.Response:
        from aiohttp import web

        served = [m for m in self.fleet.models()
                  if self.fleet.routable(m, heartbeat_timeout=self.heartbeat_timeout)]
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "owned_by": "capguard"} for m in served]})

    async def scrape(self, request: web.Request) -> web.Response:
        from aiohttp import web

        from capguard import metrics

        self.metrics.routable.clear()
        for model in self.fleet.models():
            found = self.fleet.routable(model, heartbeat_timeout=self.heartbeat_timeout)
            self.metrics.routable.labels(model).set(len(found))
        return web.Response(body=self.metrics.render(),
                            headers={"Content-Type": metrics.CONTENT_TYPE})

    async def healthz(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.Response(text="ok")

    async def readyz(self, request: web.Request) -> web.Response:
        from aiohttp import web

        leases_listed = self.fleet.leases.listed.is_set() or not self.reads_leases
        if self.fleet.listed.is_set() and leases_listed:
            return web.Response(text="ok")
        return web.Response(status=503, text="the engines (or their Leases) have not been "
                            "listed yet")


def _end_to_end(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream's headers a client should see (Retry-After, the engine that served),
    without those of the upstream connection or the encoding aiohttp already undid."""
    return {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}


def _model_of(raw: bytes) -> str | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) and model else None


# --- the command --------------------------------------------------------------------


async def serve(*, kubeconfig: str | None, namespace: str, host: str, port: int,
                heartbeat_timeout: float, request_timeout: float,
                info: kopf.ConnectionInfo) -> None:
    """Follow the engines (and their Leases) and serve until SIGTERM or SIGINT."""
    import kopf
    from aiohttp import web

    from capguard.kube import client, credentials

    fleet = Fleet()
    gateway = Gateway(fleet=fleet, heartbeat_timeout=heartbeat_timeout,
                      request_timeout=request_timeout)
    runner = web.AppRunner(gateway.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    click.echo(f"capguard gateway listening at http://{bound_host}:{bound_port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    api = client.Api(user_agent=f"{client.USER_AGENT}-gateway/{capguard.__version__}")
    api.login(info, connection_limit=4,
              relogin=lambda: credentials.login(kubeconfig, settings=kopf.OperatorSettings()))
    following = [asyncio.create_task(follow(api, resource=client.ENGINES,
                                            namespace=namespace, into=fleet))]
    if gateway.reads_leases:
        following.append(asyncio.create_task(follow(
            api, resource=client.LEASES, namespace=namespace,
            label_selector=heartbeats.SELECTOR, into=fleet.leases)))
    try:
        await stop.wait()
    finally:
        for task in following:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runner.cleanup()
        await api.close()


@click.command("gateway", cls=commandline.OneLineCommand)
@click.option("-n", "--namespace", default="default", show_default=True,
              help="The namespace whose InferenceEngines serve.")
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Kubeconfig file. Default: KUBECONFIG, ~/.kube/config, or in-cluster.")
@commandline.context_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on; 0 picks a free one (the first line says which).")
@click.option("--heartbeat-timeout", default="40s", show_default=True,
              callback=commandline.duration,
              help="An engine whose agent has not renewed its heartbeat for this long (its "
                   "Lease's renewTime or its status.lastHeartbeatTime, whichever is later) "
                   "gets no requests; 0 turns the check off (engines without an agent) and "
                   "reads no Leases.")
@click.option("--request-timeout", default="60s", show_default=True,
              callback=commandline.duration,
              help="How long an engine may take to answer before the client gets a 504.")
def command(*, namespace: str, kubeconfig: str | None, context: str | None, host: str,
            port: int, heartbeat_timeout: float, request_timeout: float) -> None:
    """Route OpenAI-compatible requests by model to the engines that serve it."""
    if context is not None:
        kubeconfig = commandline.with_context(kubeconfig, context)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    info = login(kubeconfig)
    asyncio.run(serve(kubeconfig=kubeconfig, namespace=namespace, host=host, port=port,
                      heartbeat_timeout=heartbeat_timeout, request_timeout=request_timeout,
                      info=info))


if __name__ == "__main__":
    command(prog_name="gateway")  # errors read "capguard gateway: ...", as registered
