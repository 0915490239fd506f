"""What the end-to-end tests drive: `kubectl`, `capguard run` as a subprocess, /metrics,
and a kubectl watch over the engines that sees every state the fleet passes through.

Everything here talks to the cluster the way a user's tools do. Nothing reads
`KUBECONFIG` from the environment: every kubectl call and every operator gets the
chosen kubeconfig explicitly, so the suite can never touch a cluster by accident.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final, Self, TypeVar

import aiohttp
import yaml
from aiohttp import web
from prometheus_client import parser as prometheus_parser

ROOT: Final = Path(__file__).resolve().parents[2]
CRDS: Final = ROOT / "crds"
SAMPLES: Final = ROOT / "deploy" / "samples"
INVALID_SAMPLES: Final = SAMPLES / "invalid"
DEPLOY: Final = ROOT / "deploy"
# The deployed operator's namespace (deploy/): leases live there, as in a real install.
OPERATOR_NAMESPACE: Final = "capguard-system"
LEASE_NAME: Final = "capguard-leader"
ACTION_ID: Final = "capguard.dev/action-id"
FOREIGN_FINALIZER: Final = "e2e.capguard.dev/hold"
# Environment variables that could point a subprocess at some other cluster.
_SCRUBBED: Final = ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT",
                    "POD_NAMESPACE")

T = TypeVar("T")
Body = dict[str, Any]


def clean_env() -> dict[str, str]:
    """This process's environment without anything that selects a cluster."""
    return {k: v for k, v in os.environ.items() if k not in _SCRUBBED}


def wait_until(
    probe: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.1
) -> T:
    """Poll `probe` until it returns something truthy; fail saying what never happened."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            found = probe()
        except (KubectlError, AssertionError, OSError, ValueError) as error:
            found, last = None, error
        else:
            last = found
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} "
                                 f"(last seen: {last!r})")
        time.sleep(interval)


# --- kubectl ---------------------------------------------------------------------------


class KubectlError(Exception):
    def __init__(self, *, args: Sequence[str], code: int, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} exited {code}: {stderr.strip()}")
        self.stderr = stderr


@dataclasses.dataclass(frozen=True)
class Kubectl:
    """kubectl with an explicit kubeconfig, and a namespace unless cluster-scoped."""

    kubeconfig: Path
    namespace: str | None = None
    binary: str = "kubectl"

    def in_namespace(self, namespace: str | None) -> Kubectl:
        return dataclasses.replace(self, namespace=namespace)

    def command(self, *args: str) -> list[str]:
        base = [self.binary, f"--kubeconfig={self.kubeconfig}"]
        if self.namespace is not None:
            base.append(f"--namespace={self.namespace}")
        return [*base, *args]

    def run(self, *args: str, stdin: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self.command(*args), input=stdin, capture_output=True, text=True,
                              env=clean_env(), timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise KubectlError(args=args, code=done.returncode, stderr=done.stderr)
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--output=json").stdout)

    def apply(self, *objects: Body) -> str:
        # A stream of documents, not a v1 List: kubectl validates a List against
        # /openapi/v2 in protobuf, which the embedded server does not serve (NOTES.md).
        stream = yaml.safe_dump_all(objects, sort_keys=False)
        return self.run("apply", "--filename=-", stdin=stream).stdout

    def get(self, kind: str, name: str) -> Body:
        found: Body = self.json("get", kind, name)
        return found

    def items(self, kind: str) -> list[Body]:
        found: list[Body] = self.json("get", kind)["items"]
        return found

    def exists(self, kind: str, name: str) -> bool:
        done = self.run("get", kind, name, "--ignore-not-found", "--output=name")
        return bool(done.stdout.strip())

    def patch(self, kind: str, name: str, patch: Mapping[str, Any], *,
              subresource: str | None = None) -> Body:
        extra = [f"--subresource={subresource}"] if subresource else []
        patched: Body = self.json("patch", kind, name, "--type=merge",
                                  f"--patch={json.dumps(patch)}", *extra)
        return patched

    def events(self, *, reason: str | None = None, name: str | None = None) -> list[Body]:
        """Events in this namespace (core/v1, as `kubectl get events` lists them)."""
        return [e for e in self.items("events")
                if (reason is None or e.get("reason") == reason)
                and (name is None or (e.get("involvedObject") or {}).get("name") == name)]


# --- objects -------------------------------------------------------------------------

API_VERSION: Final = "capguard.dev/v1alpha1"


def engine(name: str, *, pool: str = "pool-a", units: int = 1,
           labels: Mapping[str, str] | None = None,
           finalizers: Sequence[str] = ()) -> Body:
    metadata: Body = {"name": name, "labels": {"capguard.dev/pool": pool, **(labels or {})}}
    if finalizers:
        metadata["finalizers"] = list(finalizers)
    return {"apiVersion": API_VERSION, "kind": "InferenceEngine", "metadata": metadata,
            "spec": {"pool": pool, "capacityUnits": units}}


def engines(prefix: str, count: int, **kwargs: Any) -> list[Body]:
    return [engine(f"{prefix}-{i}", **kwargs) for i in range(count)]


def model(name: str, *, replicas: int, min_available: int | str | None = None,
          max_unavailable: int | str | None = None, labels: Mapping[str, str] | None = None,
          extra: Mapping[str, Any] | None = None) -> Body:
    spec: Body = {"replicas": replicas, **(extra or {})}
    if min_available is not None:
        spec["minAvailable"] = min_available
    if max_unavailable is not None:
        spec["maxUnavailable"] = max_unavailable
    return {"apiVersion": API_VERSION, "kind": "ModelCapacity",
            "metadata": {"name": name, "labels": dict(labels or {})}, "spec": spec}


def breaker(name: str, *, open_: bool = False, pause_threshold: str = "2s",
            max_batch_after_pause: int = 1, half_open_probes: int = 1,
            finalizers: Sequence[str] = (), extra: Mapping[str, Any] | None = None) -> Body:
    """A breaker over every model of its namespace, with compressed times."""
    metadata: Body = {"name": name}
    if finalizers:
        metadata["finalizers"] = list(finalizers)
    return {"apiVersion": API_VERSION, "kind": "CircuitBreaker", "metadata": metadata,
            "spec": {"open": open_, "pauseThreshold": pause_threshold,
                     "maxBatchAfterPause": max_batch_after_pause,
                     "halfOpenProbes": half_open_probes, "maxPlanAge": "10m", **(extra or {})}}


def serving(kubectl: Kubectl, model_name: str) -> int | None:
    """`status.serving` of a model, as `kubectl get mc` shows it (None before the first)."""
    value = kubectl.get("mc", model_name).get("status", {}).get("serving")
    return None if value is None else int(value)


def wait_serving(kubectl: Kubectl, wanted: Mapping[str, int], *, timeout: float = 20) -> None:
    """Every named model serves exactly its number of units, as status and engines agree."""

    def converged() -> bool:
        models = {m["metadata"]["name"]: m for m in kubectl.items("mc")}
        units = serving_units(kubectl.items("ie"))
        return all(models[name].get("status", {}).get("serving") == count
                   and units.get(name, 0) == count for name, count in wanted.items())

    wait_until(converged, timeout=timeout, what=f"models serving {dict(wanted)}", interval=0.2)


def serving_units(bodies: Iterable[Body]) -> dict[str, int]:
    """Units per model from the engines themselves: Serving it and still bound to it."""
    units: collections.Counter[str] = collections.Counter()
    for body in bodies:
        status, spec = body.get("status") or {}, body.get("spec") or {}
        bound = spec.get("modelRef")
        if status.get("phase") == "Serving" and bound and status.get("model") == bound:
            units[bound] += int(spec.get("capacityUnits") or 1)
    return dict(units)


def condition(body: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for found in (body.get("status") or {}).get("conditions") or []:
        if found.get("type") == kind:
            return dict(found)
    return None


# --- metrics -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MetricsPage:
    """One scrape of /metrics: every sample with its labels."""

    samples: tuple[tuple[str, Mapping[str, str], float], ...]

    @classmethod
    def parse(cls, text: str) -> MetricsPage:
        samples = tuple(
            (s.name, dict(s.labels), float(s.value))
            for family in prometheus_parser.text_string_to_metric_families(text)
            for s in family.samples)
        return cls(samples)

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        return sum(value for found, have, value in self.samples
                   if found == name and all(have.get(k) == v for k, v in labels.items()))

    def has(self, name: str, **labels: str) -> bool:
        return any(found == name and all(have.get(k) == v for k, v in labels.items())
                   for found, have, _ in self.samples)


# --- the operator --------------------------------------------------------------------

_METRICS_PORT: Final = re.compile(r"Serving /metrics on port (\d+)")


@dataclasses.dataclass
class OperatorProcess:
    """`capguard run` in a subprocess, its log in a file."""

    identity: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _port: int | None = None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def port(self, *, timeout: float = 30) -> int:
        if self._port is None:
            def announced() -> int | None:
                assert self.alive, f"operator {self.identity} exited:\n{self.log()[-3000:]}"
                found = _METRICS_PORT.search(self.log())
                return int(found.group(1)) if found else None
            self._port = wait_until(announced, timeout=timeout,
                                    what=f"operator {self.identity} to serve /metrics")
        return self._port

    def metrics(self) -> MetricsPage:
        url = f"http://127.0.0.1:{self.port()}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return MetricsPage.parse(response.read().decode())

    def leading(self) -> bool:
        return self.metrics().total("capguard_leader") == 1

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.alive:
            self.process.send_signal(sig)
        if sig is signal.SIGKILL:
            self.process.wait(timeout=10)

    def stop(self, *, grace: float = 5) -> None:
        """SIGTERM (the operator releases its Lease), SIGKILL if it lingers."""
        if not self.alive:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()


def operator_command(*, kubeconfig: Path, namespaces: Sequence[str], identity: str,
                     leader_election: bool, flags: Sequence[str] = ()) -> list[str]:
    """`capguard run` with the suite's compressed times; `flags` override or add."""
    command = [sys.executable, "-m", "capguard.cli", "run", f"--kubeconfig={kubeconfig}",
               *(f"--namespace={ns}" for ns in namespaces),
               "--metrics-host=127.0.0.1", "--metrics-port=0", f"--identity={identity}",
               "--driver=simulated", "--load-time=1s", "--drain-time=0.25s",
               "--reconcile-interval=0.3s", "--seed=1"]
    if leader_election:
        command += ["--leader-election", f"--lease-namespace={OPERATOR_NAMESPACE}",
                    "--lease-duration=3s", "--lease-renew=1s"]
    else:
        command.append("--no-leader-election")
    return [*command, *flags]


def start_operator(command: Sequence[str], *, identity: str, log_path: Path) -> OperatorProcess:
    log: IO[bytes] = log_path.open("ab")
    try:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env=clean_env(), cwd=ROOT)
    finally:
        log.close()  # the child holds its own descriptor
    return OperatorProcess(identity=identity, process=process, log_path=log_path)


# --- a write between planning and execution -------------------------------------

_PROXY_ADDRESS: Final = re.compile(r"Starting to serve on ([0-9.]+:[0-9]+)")
_HOP_BY_HOP: Final = frozenset({"host", "content-length", "transfer-encoding", "connection",
                                "keep-alive", "upgrade"})


@dataclasses.dataclass(frozen=True)
class Interception:
    """One action write the Interposer held while another writer moved the engine."""

    action_id: str
    planned_from: str  # the resourceVersion the held write carried as its precondition
    touched_to: str  # the engine's resourceVersion after the other write
    status: int  # what the API server answered the action


class ReverseProxy:
    """A reverse proxy in its own thread in front of `kubectl proxy` (which holds the real
    credentials, so it works with any cluster); `kubeconfig` points a client at it.
    Subclasses answer each request in `handle` (`forward` sends it on unchanged)."""

    def __init__(self, kubectl: Kubectl, *, directory: Path, name: str) -> None:
        self._proxy = subprocess.Popen(
            kubectl.in_namespace(None).command("proxy", "--port=0", "--address=127.0.0.1"),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env())
        assert self._proxy.stdout is not None
        announced = _PROXY_ADDRESS.search(self._proxy.stdout.readline())
        assert announced, "kubectl proxy did not start"
        self._upstream = f"http://{announced.group(1)}"
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._open: dict[int, web.Request] = {}  # answers being streamed, by id
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=10)
        port = self._listener.getsockname()[1]
        self.kubeconfig = directory / f"{name}.kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": name,
            "clusters": [{"name": name, "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": name, "user": {}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        }))

    async def _serve(self) -> None:
        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
        await self._runner.setup()
        await web.SockSite(self._runner, self._listener).start()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        return await self.forward(request, await request.read())

    async def forward(self, request: web.Request, body: bytes, *,
                      seen: Callable[[int], None] = lambda status: None,
                      cut_after: float | None = None) -> web.StreamResponse:
        """Send the request on; `seen` gets the upstream status before the body streams.
        With `cut_after`, the connection is dropped that many seconds into the answer."""
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._session.request(request.method, self._upstream + request.path_qs,
                                         headers=headers, data=body or None,
                                         allow_redirects=False) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                          headers={k: v for k, v in upstream.headers.items()
                                                   if k.lower() not in _HOP_BY_HOP})
            seen(upstream.status)
            await response.prepare(request)
            self._open[id(request)] = request
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(cut_after):
                        async for chunk in upstream.content.iter_any():
                            await response.write(chunk)
                        await response.write_eof()
                        return response
            finally:
                self._open.pop(id(request), None)
            if request.transport is not None:
                request.transport.close()  # cut: the client sees the stream end mid-way
            return response

    def cut_all(self) -> None:
        """Drop every connection that is streaming an answer (watches), as a dying API
        server or load balancer does."""
        def cut() -> None:
            for request in list(self._open.values()):
                if request.transport is not None:
                    request.transport.close()
        self._loop.call_soon_threadsafe(cut)

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pending:  # a request held on purpose, say: end it here, not at exit
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def stop(self) -> None:
        if self._proxy.poll() is None:
            self._proxy.terminate()  # ends the watches in flight first
            self._proxy.wait(timeout=5)
        with contextlib.suppress(TimeoutError):
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class Interposer(ReverseProxy):
    """A proxy between an operator and the API server that puts another writer's write
    between an action's planning and its arrival, by construction.

    The operator talks to the cluster through `kubeconfig` (a `kubectl proxy` behind it
    holds the real credentials, so it works with any cluster). The first `holds` writes
    of one kind to `engine_name` are held while the Interposer patches a label on that
    engine, then forwarded: they arrive carrying a version that no longer holds. With
    `hold="action"`, an action (a PATCH of the object itself carrying
    `metadata.resourceVersion`, the version it was planned from); with `hold="record"`,
    the /status write that records an executed action (`status.lastAction`). Everything
    else, watches included, passes through unchanged.

    A concurrent writer racing the operator cannot do this reliably: the operator drops
    an action whose engine changed in its own view (the gate's Stale), so only a write
    landing inside the few milliseconds between its look and its PATCH reaches the 409.
    """

    def __init__(self, kubectl: Kubectl, *, engine_name: str, directory: Path,
                 hold: str = "action", holds: int = 1) -> None:
        assert kubectl.namespace is not None
        assert hold in ("action", "record"), hold
        self._hold = hold
        self._engine_path = (f"/apis/capguard.dev/v1alpha1/namespaces/{kubectl.namespace}/"
                             f"inferenceengines/{engine_name}")
        self._holds = holds
        self._intercepted: list[Interception] = []
        super().__init__(kubectl, directory=directory, name="interposed")

    @property
    def intercepted(self) -> list[Interception]:
        with self._lock:
            return list(self._intercepted)

    def _is_held(self, request: web.Request, body: bytes) -> bool:
        record = self._hold == "record"
        path = self._engine_path + ("/status" if record else "")
        if request.method != "PATCH" or request.path != path:
            return False
        try:
            patch = json.loads(body)
        except ValueError:
            return False
        if record:
            return "lastAction" in (patch.get("status") or {})
        return bool((patch.get("metadata") or {}).get("resourceVersion"))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        with self._lock:
            hold = self._holds > 0 and self._is_held(request, body)
            if hold:
                self._holds -= 1
        touched = await self._touch() if hold else ""
        if not hold:
            return await self.forward(request, body)

        def record(status: int) -> None:
            patch = json.loads(body)
            metadata = patch.get("metadata") or {}
            if self._hold == "record":
                action_id = ((patch.get("status") or {}).get("lastAction") or {}).get("id")
            else:
                action_id = (metadata.get("annotations") or {}).get(ACTION_ID)
            with self._lock:
                self._intercepted.append(Interception(
                    action_id=str(action_id), planned_from=str(metadata.get("resourceVersion")
                                                               or ""),
                    touched_to=touched, status=status))

        return await self.forward(request, body, seen=record)

    async def _touch(self) -> str:
        """Another writer: a label patch, no precondition, so it always lands."""
        assert self._session is not None
        patch = {"metadata": {"labels": {"e2e-touch": str(len(self._intercepted) + 1)}}}
        async with self._session.patch(
                self._upstream + self._engine_path, data=json.dumps(patch),
                headers={"Content-Type": "application/merge-patch+json"}) as answer:
            written = await answer.json(content_type=None)
            assert answer.status == 200, f"the other writer failed: {written}"
        return str(written["metadata"]["resourceVersion"])


# --- watching the fleet --------------------------------------------------------------

_FIELDS: Final = (
    "{.type}", "{.object.metadata.name}", "{.object.metadata.resourceVersion}",
    "{.object.spec.modelRef}", "{.object.status.phase}", "{.object.status.model}",
    "{.object.spec.capacityUnits}", "{.object.metadata.annotations.capguard\\.dev/action-id}",
    "{.object.status.lastAction.id}", "{.object.status.lastAction.plannedFromResourceVersion}",
)


@dataclasses.dataclass(frozen=True)
class EngineState:
    """One engine as one watch event showed it."""

    seen_at: float
    event: str
    name: str
    resource_version: str
    model_ref: str
    phase: str
    model: str
    units: int
    action_id: str
    last_action_id: str
    last_action_planned_from: str

    @property
    def serving_model(self) -> str:
        return self.model if self.phase == "Serving" and self.model == self.model_ref else ""


@dataclasses.dataclass(frozen=True)
class FleetState:
    """The whole fleet after one watch event (the watch orders every change)."""

    seen_at: float
    serving: Mapping[str, int]


class FleetWatch:
    """`kubectl get ie --watch`: every engine change in order, and serving after each one.

    Sampling would miss a dip that lasts less than a poll; a watch sees every state the
    API server stored, in resourceVersion order, so "never below the floor" is checked
    on each of them.
    """

    def __init__(self, kubectl: Kubectl) -> None:
        template = "|".join(_FIELDS) + "{\"\\n\"}"
        self._process = subprocess.Popen(
            kubectl.command("get", "inferenceengines", "--watch", "--output-watch-events",
                            f"--output=jsonpath={template}"),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=clean_env())
        self._lock = threading.Lock()
        self._engines: dict[str, EngineState] = {}
        self.changes: list[EngineState] = []
        self.timeline: list[FleetState] = []
        self._thread = threading.Thread(target=self._read, name="fleet-watch", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            parts = line.rstrip("\n").split("|")
            if len(parts) != len(_FIELDS):
                continue
            event, name, rv, ref, phase, model_, units, action, last, planned = parts
            state = EngineState(time.monotonic(), event, name, rv, ref, phase, model_,
                                int(units or 1), action, last, planned)
            with self._lock:
                if event == "DELETED":
                    self._engines.pop(name, None)
                else:
                    self._engines[name] = state
                self.changes.append(state)
                totals: collections.Counter[str] = collections.Counter()
                for engine_ in self._engines.values():
                    if engine_.serving_model:
                        totals[engine_.serving_model] += engine_.units
                self.timeline.append(FleetState(state.seen_at, dict(totals)))

    def engines(self) -> dict[str, EngineState]:
        with self._lock:
            return dict(self._engines)

    def lowest_serving(self, model_name: str, *, since: float) -> int:
        """The fewest units `model_name` served in any state seen since `since`."""
        with self._lock:
            states = [s for s in self.timeline if s.seen_at >= since]
            before = [s for s in self.timeline if s.seen_at < since][-1:]
        return min(s.serving.get(model_name, 0) for s in before + states)

    def history(self, name: str) -> list[EngineState]:
        with self._lock:
            return [c for c in self.changes if c.name == name]

    def names(self) -> set[str]:
        with self._lock:
            return {c.name for c in self.changes}

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        self._thread.join(timeout=5)

    def __enter__(self) -> FleetWatch:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def actions(history: Iterable[EngineState]) -> Iterator[tuple[EngineState, EngineState]]:
    """(before, after) for each action executed on one engine: each change of its
    `capguard.dev/action-id` annotation, which the executor writes with the binding."""
    previous: EngineState | None = None
    for state in history:
        if previous is not None and state.action_id != previous.action_id:
            yield previous, state
        previous = state


def planned_from_elsewhere(watch: FleetWatch) -> list[str]:
    """Actions whose write did not start from the version they were planned from.

    For each action seen (a new `capguard.dev/action-id`), the engine's version just
    before it must be the `lastAction.plannedFromResourceVersion` the operator recorded:
    anything else would be a write planned from a state that no longer held.
    """
    problems = []
    for name in sorted(watch.names()):
        history = watch.history(name)
        recorded = {s.last_action_id: s.last_action_planned_from for s in history
                    if s.last_action_id}
        for before, after in actions(history):
            planned = recorded.get(after.action_id)
            if planned is not None and planned != before.resource_version:
                problems.append(f"{name}: action {after.action_id} planned from "
                                f"{planned}, written over {before.resource_version}")
    return problems
