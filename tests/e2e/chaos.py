"""Chaos tools: a fault-injecting proxy per replica, and an independent watcher.

`FaultProxy` stands between one operator replica and the API server and answers a share
of the requests with what a real control plane produces on a bad day: 409 Conflict,
429 Too Many Requests with Retry-After, 500, requests that hang until the client gives
up, watches cut short, 410 Gone for an old resourceVersion, added latency, and full
outages (503 for everything). It records every request, so a verdict can say which
replica wrote what, and when.

`Watcher` is the referee: its own list+watch of the engines, the models and the Lease,
straight to the API server (no proxy, not the operator's metrics), recording every
version with its arrival time. The verdicts are pure functions of those recordings.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import random
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web

from capguard.core import fleet, specs

from . import harness

GROUP_PATH: Final = "/apis/capguard.dev/v1alpha1"
ENGINES: Final = "inferenceengines"
MODELS: Final = "modelcapacities"
BREAKERS: Final = "circuitbreakers"
LEASES_PATH: Final = "/apis/coordination.k8s.io/v1"
_WRITES: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclasses.dataclass(frozen=True)
class Faults:
    """Shares (0..1) of the requests that meet each fault, and the global ones."""

    conflict: float = 0.0  # writes answered 409 Conflict
    throttle: float = 0.0  # requests answered 429 with Retry-After
    error: float = 0.0  # requests answered 500
    timeout: float = 0.0  # requests held unanswered for `hang` seconds, then dropped
    cut_watch: float = 0.0  # watches cut after a moment
    end_watch: float = 0.0  # watches answered 200 and ended at once, with no event
    gone: float = 0.0  # watches and lists from a resourceVersion other than 0: 410 Expired
    outage: bool = False  # every request answered 503
    latency: float = 0.0  # seconds added before forwarding
    action_latency: float = 0.0  # seconds added to action writes only (writes queue up)
    retry_after: int = 1  # what a 429 asks for
    hang: float = 60.0  # how long a timed-out request is held before its connection drops

    @classmethod
    def each(cls, rate: float) -> Faults:
        return cls(conflict=rate, throttle=rate, error=rate, timeout=rate, cut_watch=rate,
                   gone=rate)


@dataclasses.dataclass(frozen=True)
class Request:
    """One request the proxy received."""

    monotonic: float
    wall: float
    method: str
    path: str
    query: str
    fault: str  # "" when forwarded
    status: int  # what the replica got (0: no answer)
    body: Mapping[str, Any] | None  # a write's JSON body

    @property
    def watch(self) -> bool:
        return "watch=" in self.query

    @property
    def write(self) -> bool:
        return self.method in _WRITES

    @property
    def action(self) -> bool:
        """A binding write: a PATCH of an engine itself (not its /status)."""
        parts = self.path.split("/")
        return self.method == "PATCH" and ENGINES in parts and parts[-2] == ENGINES

    @property
    def action_id(self) -> str | None:
        metadata = (self.body or {}).get("metadata") or {}
        found = (metadata.get("annotations") or {}).get(harness.ACTION_ID)
        return str(found) if found else None


def _status_body(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    """A `kind: Status` failure, field for field as kube-apiserver writes one."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
    if details:
        body["details"] = details
    return body


def _status(code: int, reason: str, message: str, **details: Any) -> web.Response:
    return web.json_response(_status_body(code, reason, message, **details), status=code)


def _conflict(path: str) -> web.Response:
    """409 as the API server words it (shared/k8s-reference 030, 034, 101): the object's
    resource, group and name in the message and in details."""
    # /apis/GROUP/VERSION[/namespaces/NS]/RESOURCE/NAME[/status]; /api/v1/... has no group
    parts = path.strip("/").split("/")
    group = parts[1] if parts[0] == "apis" else ""
    rest = parts[3:] if group else parts[2:]
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    resource, name = [*rest, "", ""][:2]
    qualified = f"{resource}.{group}" if group else resource
    return _status(409, "Conflict", f'Operation cannot be fulfilled on {qualified} "{name}": '
                   "the object has been modified; please apply your changes to the latest "
                   "version and try again", name=name, group=group, kind=resource)


def _versioned(request: web.Request) -> bool:
    """A read from a resourceVersion the server could have compacted away ("0" never is:
    it means any version, served from the cache; nor is none: it means now)."""
    return request.query.get("resourceVersion", "") not in ("", "0")


class FaultProxy(harness.ReverseProxy):
    """One replica's way to the API server, with faults at the rates it is `set` to."""

    def __init__(self, kubectl: harness.Kubectl, *, directory: Path, name: str,
                 seed: int = 0) -> None:
        self._faults = Faults()
        self._rng = random.Random(seed)
        self._requests: list[Request] = []
        super().__init__(kubectl, directory=directory, name=name)

    def set(self, faults: Faults) -> None:
        with self._lock:
            self._faults = faults
        if faults.outage:
            self.cut_all()  # the watches in flight end too: nothing gets through

    def requests(self, *, since: float = 0.0, until: float = float("inf")) -> list[Request]:
        """What arrived between two `time.monotonic()` moments."""
        with self._lock:
            return [r for r in self._requests if since <= r.monotonic < until]

    def writes(self, *, since: float = 0.0, until: float = float("inf")) -> list[Request]:
        return [r for r in self.requests(since=since, until=until) if r.write]

    def actions(self) -> list[Request]:
        return [r for r in self.requests() if r.action]

    def _draw(self, request: web.Request) -> str:
        with self._lock:
            faults, roll = self._faults, self._rng.random
            if faults.outage:
                return "outage"
            write = request.method in _WRITES
            watch = "watch" in request.query
            versioned = request.method == "GET" and _versioned(request)
            for name, rate, applies in (
                ("conflict", faults.conflict, write),
                ("throttle", faults.throttle, True),
                ("error", faults.error, not watch),
                ("timeout", faults.timeout, not watch),
                ("gone", faults.gone, versioned),
                ("cut_watch", faults.cut_watch, watch),
                ("end_watch", faults.end_watch, watch),
            ):
                if applies and rate and roll() < rate:
                    return name
        return ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        arrived, wall = time.monotonic(), time.time()
        body = await request.read()
        fault = self._draw(request)
        parsed = None
        if body and request.method in ("PATCH", "PUT", "POST"):
            with contextlib.suppress(ValueError):
                parsed = json.loads(body)
        status = [0]
        record = Request(arrived, wall, request.method, request.path, request.query_string,
                         fault, 0, parsed)
        with self._lock:  # recorded on arrival: a request held forever is still seen
            place = len(self._requests)
            self._requests.append(record)
        try:
            delay = self._faults.latency + (self._faults.action_latency if record.action else 0)
            if delay:
                await asyncio.sleep(delay)
            return await self._answer(request, body, fault=fault, status=status)
        finally:
            with self._lock:
                self._requests[place] = dataclasses.replace(record, status=status[0])

    async def _answer(self, request: web.Request, body: bytes, *, fault: str,
                      status: list[int]) -> web.StreamResponse:
        """The injected answer, or the API server's."""
        def seen(code: int) -> None:
            status[0] = code

        if fault == "outage":
            status[0] = 503
            return _status(503, "ServiceUnavailable", "the API server is unavailable (outage)")
        if fault == "conflict":
            status[0] = 409
            return _conflict(request.path)
        if fault == "throttle":
            status[0] = 429
            response = _status(429, "TooManyRequests", "Too many requests, please try again "
                               "later.", retryAfterSeconds=self._faults.retry_after)
            response.headers["Retry-After"] = str(self._faults.retry_after)
            return response
        if fault == "error":
            status[0] = 500
            return _status(500, "InternalError", "Internal error occurred: injected",
                           causes=[{"message": "injected"}])
        if fault == "timeout":
            await asyncio.sleep(self._faults.hang)
            if request.transport is not None:
                request.transport.close()  # no answer at all: the client sees the drop
            return web.StreamResponse()
        if fault == "gone":
            return await self._gone(request, status=status)
        if fault == "end_watch":  # a proxy that does not hold streams open
            status[0] = 200
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            await response.prepare(request)
            await response.write_eof()
            return response
        # A cut watch ends after a moment, as a load balancer or an apiserver restart ends
        # one: the client sees the stream close and must watch again.
        cut = 0.5 + self._rng.random() if fault == "cut_watch" else None
        return await self.forward(request, body, seen=seen, cut_after=cut)

    async def _gone(self, request: web.Request, *, status: list[int]) -> web.StreamResponse:
        """A compacted resourceVersion (shared/k8s-reference 081): a watch is answered 200
        with one ERROR event carrying the 410 Expired Status, then ends; a list gets the
        Status itself with HTTP 410."""
        version = request.query["resourceVersion"]
        expired = _status_body(410, "Expired", f"too old resource version: {version} "
                               f"({int(version) + 1 if version.isdigit() else version})")
        if "watch" not in request.query:
            status[0] = 410
            return web.json_response(expired, status=410)
        status[0] = 200
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(json.dumps({"type": "ERROR", "object": expired}).encode() + b"\n")
        await response.write_eof()
        return response


# --- the independent watcher ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Seen:
    """One version of one object, as the watcher's own watch delivered it."""

    at: float  # time.time() on arrival
    kind: str  # "engine", "model", "breaker" or "lease"
    event: str  # ADDED, MODIFIED, DELETED (a LIST counts as ADDED)
    body: Mapping[str, Any]

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])


class Watcher:
    """List+watch of one namespace's engines, models and breakers and of the Leases in
    `lease_namespace`, in a thread, straight to the API server through a `kubectl proxy`
    of its own."""

    def __init__(self, kubectl: harness.Kubectl, *, directory: Path,
                 lease_namespace: str = harness.OPERATOR_NAMESPACE) -> None:
        assert kubectl.namespace is not None
        self._namespace = kubectl.namespace
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._proxy = harness.ReverseProxy(kubectl, directory=directory, name="watcher")
        self._upstream = self._proxy._upstream
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="watcher",
                                        daemon=True)
        self._thread.start()
        streams = [
            (f"{GROUP_PATH}/namespaces/{self._namespace}/{ENGINES}", "engine"),
            (f"{GROUP_PATH}/namespaces/{self._namespace}/{MODELS}", "model"),
            (f"{GROUP_PATH}/namespaces/{self._namespace}/{BREAKERS}", "breaker"),
            (f"{LEASES_PATH}/namespaces/{lease_namespace}/leases", "lease"),
        ]
        self._ready = threading.Barrier(len(streams) + 1)
        self._tasks: list[asyncio.Task[None]] = []

        async def start() -> None:
            self._tasks = [asyncio.create_task(self._follow(path, kind))
                           for path, kind in streams]

        asyncio.run_coroutine_threadsafe(start(), self._loop).result(timeout=10)
        self._ready.wait(timeout=30)
        self.started = time.time()  # every stream listed: the recording is complete from here

    def seen(self) -> list[Seen]:
        with self._lock:
            return sorted(self._seen, key=lambda s: s.at)

    async def _follow(self, path: str, kind: str) -> None:
        ready = False
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
            while True:
                try:
                    async with session.get(self._upstream + path) as listed:
                        page = await listed.json()
                    now = time.time()
                    with self._lock:
                        self._seen += [Seen(now, kind, "ADDED", item)
                                       for item in page.get("items") or []]
                    version = page["metadata"]["resourceVersion"]
                    if not ready:
                        ready = True
                        await asyncio.get_running_loop().run_in_executor(None, self._ready.wait)
                    query = f"?watch=true&allowWatchBookmarks=false&resourceVersion={version}"
                    async with session.get(self._upstream + path + query) as stream:
                        async for line in stream.content:
                            if not line.strip():
                                continue
                            event = json.loads(line)
                            if event.get("type") == "ERROR":
                                break  # 410 Gone or alike: list again
                            with self._lock:
                                self._seen.append(Seen(time.time(), kind, event["type"],
                                                       event["object"]))
                except (aiohttp.ClientError, ValueError, KeyError):
                    await asyncio.sleep(0.2)

    def stop(self) -> None:
        async def cancel() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._proxy.stop()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


# --- verdicts: pure functions of what was seen ------------------------------------


@dataclasses.dataclass(frozen=True)
class FloorDrop:
    at: float
    model: str
    serving: int
    floor: int
    engine: str  # the engine whose change took the model below its floor


def _replay(seen: Iterable[Seen]) -> Iterator[tuple[Seen, fleet.Fleet, fleet.Fleet]]:
    """(each engine or model version, the fleet before it, the fleet after it)."""
    engines: dict[str, specs.Engine] = {}
    models: dict[str, specs.ModelSpec] = {}
    before = fleet.Fleet.of(engines=[], models=[])
    for s in seen:
        if s.kind == "engine":
            if s.event == "DELETED":
                engines.pop(s.name, None)
            else:
                engines[s.name] = specs.parse_engine(s.body)
        elif s.kind == "model":
            if s.event == "DELETED":
                models.pop(s.name, None)
            else:
                with contextlib.suppress(specs.SpecError):
                    models[s.name] = specs.parse_model(s.body)
        else:
            continue
        after = fleet.Fleet.of(engines=engines.values(), models=models.values())
        yield s, before, after
        before = after


def floor_drops(seen: Sequence[Seen]) -> list[FloorDrop]:
    """Every engine change that took units from a model and left it below its floor
    (`ModelSpec.floor_units`: minAvailable, 90 % of replicas rounded up by default). A model
    scaled up beyond what serves is below its floor with nothing dropped: not counted,
    but a unit lost while it is there is."""
    drops = []
    for s, before, after in _replay(seen):
        if s.kind != "engine":
            continue
        for name in after.models:
            was, now = before.serving_units(name), after.serving_units(name)
            floor = after.floor_units(name)
            if now < was and now < floor:
                drops.append(FloorDrop(s.at, name, now, floor, s.name))
    return drops


def duplicate_actions(seen: Sequence[Seen]) -> dict[str, int]:
    """Action ids that more than one binding write carried: a binding write changes an
    engine's (spec.modelRef, action-id annotation); the same id twice is an action run
    twice."""
    last: dict[str, tuple[object, object]] = {}
    counts: dict[str, int] = {}
    for s in seen:
        if s.kind != "engine" or s.event == "DELETED":
            continue
        annotations = s.body["metadata"].get("annotations") or {}
        action = annotations.get(harness.ACTION_ID)
        binding = ((s.body.get("spec") or {}).get("modelRef"), action)
        previous = last.get(s.name)
        last[s.name] = binding
        if previous is None or previous == binding or not action:
            continue  # the first sight of an engine, or no binding change
        counts[str(action)] = counts.get(str(action), 0) + 1
    return {a: n for a, n in counts.items() if n > 1}


@dataclasses.dataclass(frozen=True)
class LeaseVersion:
    at: float  # arrival
    holder: str
    renewed: float  # spec.renewTime, as wall time
    duration: float


def lease_history(seen: Sequence[Seen], *, name: str = harness.LEASE_NAME) -> list[LeaseVersion]:
    versions = []
    for s in seen:
        if s.kind != "lease" or s.name != name or s.event == "DELETED":
            continue
        spec = s.body.get("spec") or {}
        renewed = spec.get("renewTime")
        versions.append(LeaseVersion(
            s.at, str(spec.get("holderIdentity") or ""),
            _wall(renewed) if renewed else 0.0, float(spec.get("leaseDurationSeconds") or 0)))
    return versions


def _wall(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def writes_without_the_lease(requests: Sequence[Request], leases: Sequence[LeaseVersion], *,
                             identity: str, since: float = 0.0) -> list[Request]:
    """The action writes that reached a replica's proxy (at or after wall time `since`,
    when the recording of the Lease began) while the newest Lease version renewed before
    them said another replica held it, or its term had run out."""
    bad = []
    for request in requests:
        if not request.action or request.wall < since:
            continue
        renewed = [v for v in leases if v.renewed <= request.wall]
        if not renewed:
            bad.append(request)
            continue
        current = max(renewed, key=lambda v: v.renewed)
        expired = current.renewed + current.duration <= request.wall
        if current.holder != identity or expired:
            bad.append(request)
    return bad


def converged(seen: Sequence[Seen], wanted: Mapping[str, int] | None = None) -> float | None:
    """When the fleet last became exactly `wanted` (serving units per model; by default
    every model its own spec.replicas as recorded then) and stayed so to the end of the
    recording; None if it is not so at the end."""
    since = None
    for s, _, after in _replay(seen):
        goal = wanted if wanted is not None else {m: after.desired_units(m) for m in after.models}
        if all(after.serving_units(m) == n for m, n in goal.items()):
            since = s.at if since is None else since
        else:
            since = None
    return since


def time_to_converge(seen: Sequence[Seen], *, after: float,
                     wanted: Mapping[str, int] | None = None) -> float | None:
    """Seconds from wall time `after` (faults stopped, say) to `converged`; 0 if the fleet
    was already so, None if it is not so at the end."""
    since = converged(seen, wanted)
    return None if since is None else max(0.0, since - after)
