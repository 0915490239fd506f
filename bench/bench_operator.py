"""Benchmark `capguard run` at 10,000 engines across 1,000 models on the embedded server.

The embedded API server runs in one subprocess (seeded in-process before it listens, so
seeding costs no HTTP and is not measured), the operator in another (`capguard run`, so
its RSS is its own), and this script drives both over HTTP and prints measured values
next to the goals of issue 4:

- cold start to first complete reconcile < 8 s: from spawning `capguard run` until every
  ModelCapacity's status carries its current `observedGeneration` (seen on a watch) and
  the first reconcile pass after the full LIST has finished
  (`capguard_reconcile_duration_seconds_count` >= 1);
- operator RSS < 200 MB (VmHWM, the peak, and VmRSS at the end), for a restart over a
  handled fleet and for a start with all 10,000 engines unhandled (no status, unbound);
- event-to-status latency p99 < 30 ms idle and < 500 ms while 1,000 engines change
  phase per minute: `spec.replicas` of an untouched model is changed and the time until
  a watch shows its status with the new `observedGeneration` and `desired` (samples
  `SAMPLE_GAP` apart, so one sample's full pass does not delay the next);
- >= 400 engine status events handled per second: a burst of /status writes (engines of
  200 models set Loading, then Serving again) and the time until every affected model's
  status counts show it.

Phases are driven by this script (`--driver none`) wherever engines must stay still or
churn on our terms; the unhandled start uses the simulated driver with a short load time.
The server and the operator share this machine's cores: on 2 cores they compete, and the
server's write path (a few hundred writes/s) bounds everything that needs writes.

For issue 14 (scale to 50,000 engines), the unhandled start also shows when the first
assignment is written, when every engine's assign is recorded and when every engine
serves (seen on a watch of InferenceEngines), the operator's CPU-seconds and full garbage
collections by then (its own `/metrics`), and how every model serving
compares with the least time the writes and the load allow (`rate_limit_minimum`: the
server's write rate is measured in the same run, before the operator starts);
`--scrape-interval` has /metrics scraped while idle latency is measured, as Prometheus
would; `--json` ends the output with the rows as one JSON object (`bench_scale.py`).

    python bench/bench_operator.py [--engines 10000] [--models 1000] [--skip-unhandled]
                                   [--idle-latency-only] [--scrape-interval SECONDS] [--json]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import aiohttp

from capguard.handlers import reconcile

REPO: Final = pathlib.Path(__file__).resolve().parents[1]
NAMESPACE: Final = "bench"
API: Final = "/apis/capguard.dev/v1alpha1"
MERGE: Final = {"Content-Type": "application/merge-patch+json"}
WRITERS: Final = 32
LOAD_TIME: Final = 5.0  # the simulated driver's, in the unhandled start
# Writes every unhandled engine needs before it serves: its assign (spec.modelRef), the
# status that records it and starts the load (Loading), and Serving when the load ends.
WRITES_PER_ENGINE: Final = 3
PROBE_WRITES: Final = 2000  # the burst that measures the server's write rate
# Between latency samples: the operator's full pass after a change (planning 10,000
# engines) is over by then, so each sample meets an operator that is idle, or churning.
SAMPLE_GAP: Final = 0.25
# The server, seeded from its own thread before it listens: argv = kubeconfig, crds,
# engines, models, state ("serving": bound and Serving; "unhandled": no status, unbound).
SEEDED_SERVER: Final = """
import asyncio, datetime, sys
from capguard.localcluster import LocalCluster
from capguard.localcluster import objects, resources

kubeconfig, crds, engines, models, state = sys.argv[1:6]
engines, models = int(engines), int(models)

async def main():
    local = LocalCluster(port=0, crds_dir=crds, kubeconfig_path=kubeconfig, audit_buffer=0)
    async with local:
        local.apply(resources.NAMESPACES, {"apiVersion": "v1", "kind": "Namespace",
                                           "metadata": {"name": "bench"}})
        group = ("capguard.dev", "v1alpha1")
        ie = local.api.registry.get(*group, "inferenceengines")
        mc = local.api.registry.get(*group, "modelcapacities")
        cb = local.api.registry.get(*group, "circuitbreakers")
        local.apply(cb, {"apiVersion": "capguard.dev/v1alpha1", "kind": "CircuitBreaker",
                         "metadata": {"name": "fleet", "namespace": "bench"}, "spec": {}})
        per_model = engines // models
        for m in range(models):
            local.apply(mc, {"apiVersion": "capguard.dev/v1alpha1", "kind": "ModelCapacity",
                             "metadata": {"name": f"m{m}", "namespace": "bench",
                                          "labels": {"app": "bench"}},
                             "spec": {"replicas": per_model}})
        since = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for e in range(engines):
            model = f"m{e // per_model}"
            spec = {"pool": f"pool-{e % 10}", "capacityUnits": 1}
            if state == "serving":
                spec["modelRef"] = model
            local.apply(ie, {"apiVersion": "capguard.dev/v1alpha1", "kind": "InferenceEngine",
                             "metadata": {"name": f"e{e}", "namespace": "bench"}, "spec": spec})
            if state == "serving":
                local.api.patch(ie, {"status": {
                    "phase": "Serving", "model": model, "since": since, "observedGeneration": 1,
                    "message": "seeded", "lastHeartbeatTime": since}},
                    content_type="application/merge-patch+json",
                    namespace="bench", name=f"e{e}", subresource="status",
                    options=objects.WriteOptions())
        print(f"capguard localcluster serving at {local.url}", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@dataclasses.dataclass(frozen=True)
class Row:
    metric: str
    measured: float | None
    unit: str
    goal: str = ""
    met: bool | None = None

    @property
    def key(self) -> str:
        """The row's name with its unit, as `--json` writes it."""
        return f"{self.metric} [{self.unit}]" if self.unit else self.metric

    def cells(self) -> tuple[str, str, str, str]:
        shown = "n/a" if self.measured is None else f"{_number(self.measured)} {self.unit}"
        verdict = "" if self.met is None else ("ok" if self.met else "MISSED")
        return self.metric, shown, self.goal, verdict


def below(metric: str, measured: float | None, unit: str, goal: float) -> Row:
    met = None if measured is None else measured < goal
    return Row(metric, measured, unit, f"< {_number(goal)}", met)


def at_least(metric: str, measured: float | None, unit: str, goal: float) -> Row:
    met = None if measured is None else measured >= goal
    return Row(metric, measured, unit, f">= {_number(goal)}", met)


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "operator")}


def stop_process(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---- the two processes ----------------------------------------------------------------------

class Server:
    """The embedded API server, seeded before it listens."""

    def __init__(self, workdir: pathlib.Path, *, engines: int, models: int, state: str) -> None:
        self.kubeconfig = workdir / f"kubeconfig-{state}"
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-c", SEEDED_SERVER, str(self.kubeconfig), str(REPO / "crds"),
             str(engines), str(models), state],
            stdout=subprocess.PIPE, text=True, env=env())
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        found = re.search(r"serving at (http://\S+)", line)
        if found is None:
            stop_process(self.process)
            raise RuntimeError(f"the seeded server did not start: {line!r}")
        self.url = found.group(1)
        self.seeded_in = time.perf_counter() - started

    def stop(self) -> None:
        stop_process(self.process)


class Operator:
    """`capguard run` as a user starts it, plus an RSS sampler."""

    def __init__(self, server: Server, *, driver: str, load_time: str = "5s",
                 heartbeat_timeout: str = "0") -> None:
        self.metrics_port = free_port()
        # A file, not a pipe: nobody reads a pipe meanwhile, and a full one blocks the logger.
        self.log = (server.kubeconfig.parent / f"operator-{self.metrics_port}.log").open("w+")
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "capguard.cli", "run", "--kubeconfig", str(server.kubeconfig),
             "--metrics-host", "127.0.0.1", "--metrics-port", str(self.metrics_port),
             "--no-leader-election", "--driver", driver, "--load-time", load_time,
             # Agents in the bench are played by hand and (but in bench_heartbeats.py)
             # send no heartbeat.
             "--heartbeat-timeout", heartbeat_timeout],
            stdout=subprocess.DEVNULL, stderr=self.log, text=True, env=env())

    def memory_mib(self) -> tuple[float, float]:
        """(VmHWM, VmRSS): the peak resident set so far and the current one."""
        text = pathlib.Path(f"/proc/{self.process.pid}/status").read_text()
        peak = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
        now = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
        assert peak is not None and now is not None
        return int(peak.group(1)) / 1024, int(now.group(1)) / 1024

    async def metric(self, session: aiohttp.ClientSession, name: str) -> float | None:
        return (await self.metrics(session, name))[0]

    async def metrics(self, session: aiohttp.ClientSession, *names: str) -> list[float | None]:
        """The samples of ``names`` (a series' name with its labels) from one scrape."""
        try:
            async with session.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as response:
                text = await response.text()
        except aiohttp.ClientError:
            return [None] * len(names)
        found = (re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE) for name in names)
        return [float(f.group(1)) if f else None for f in found]

    async def wait_metric(self, session: aiohttp.ClientSession, name: str,
                          predicate: Callable[[float], bool], *, timeout: float) -> float:
        """Seconds since spawn at which the metric first satisfied `predicate`."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            value = await self.metric(session, name)
            if value is not None and predicate(value):
                return time.perf_counter() - self.started
            if self.process.poll() is not None:
                raise RuntimeError(f"the operator exited: {self.stderr_tail()}")
            await asyncio.sleep(0.02)
        raise TimeoutError(f"{name} did not get there in {timeout}s")

    def stderr_tail(self) -> str:
        stop_process(self.process)
        self.log.seek(0)
        return self.log.read()[-2000:]

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()


# ---- the cluster as this script sees it ----------------------------------------------------

class Models:
    """A watch on every ModelCapacity: their latest status and who waits for what."""

    def __init__(self) -> None:
        self.bodies: dict[str, dict[str, Any]] = {}
        self.changed = asyncio.Condition()

    async def follow(self, session: aiohttp.ClientSession, url: str) -> None:
        async with session.get(f"{url}{API}/namespaces/{NAMESPACE}/modelcapacities") as r:
            listing = await r.json()
        for item in listing["items"]:
            self.bodies[item["metadata"]["name"]] = item
        version = listing["metadata"]["resourceVersion"]
        while True:
            params = {"watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true"}
            async with session.get(f"{url}{API}/namespaces/{NAMESPACE}/modelcapacities",
                                   params=params, timeout=aiohttp.ClientTimeout(total=None)) as r:
                async for line in r.content:
                    event = json.loads(line)
                    obj = event["object"]
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.bodies[obj["metadata"]["name"]] = obj
                        async with self.changed:
                            self.changed.notify_all()

    def current(self, name: str) -> bool:
        body = self.bodies[name]
        status = body.get("status") or {}
        return bool(status.get("observedGeneration") == body["metadata"]["generation"]
                    and status.get("desired") == body["spec"]["replicas"])

    def all_current(self) -> bool:
        return bool(self.bodies) and all(self.current(name) for name in self.bodies)

    async def until(self, predicate: Callable[[], bool], *, timeout: float) -> float:
        """perf_counter() when `predicate` first held (checked on every watch event)."""
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), timeout)
        return time.perf_counter()


@contextlib.asynccontextmanager
async def following(session: aiohttp.ClientSession, url: str) -> AsyncIterator[Models]:
    models = Models()
    task = asyncio.create_task(models.follow(session, url))
    while not models.bodies:
        await asyncio.sleep(0.01)
    try:
        yield models
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await task


async def set_phase(session: aiohttp.ClientSession, url: str, engine: int, *, phase: str,
                    model: str) -> None:
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    patch = {"status": {"phase": phase, "model": model, "since": since}}
    async with session.patch(f"{url}{API}/namespaces/{NAMESPACE}/inferenceengines/e{engine}/status",
                             data=json.dumps(patch), headers=MERGE) as r:
        r.raise_for_status()


async def scale(session: aiohttp.ClientSession, url: str, model: str, replicas: int) -> None:
    patch = {"spec": {"replicas": replicas}}
    async with session.patch(f"{url}{API}/namespaces/{NAMESPACE}/modelcapacities/{model}",
                             data=json.dumps(patch), headers=MERGE) as r:
        r.raise_for_status()


# ---- measurements ---------------------------------------------------------------------------

@dataclasses.dataclass
class Setup:
    engines: int
    models: int

    scrape_interval: float | None = None

    @property
    def per_model(self) -> int:
        return self.engines // self.models

    def timeout(self, seconds: float) -> float:
        """A timeout set for 10,000 engines, at this size."""
        return seconds * max(1.0, self.engines / 10_000)

    @property
    def idle(self) -> str:
        """How the idle latency rows are named: whether /metrics was scraped meanwhile."""
        if self.scrape_interval is None:
            return "idle"
        return f"idle, scraped every {_number(self.scrape_interval)} s"


async def latency(session: aiohttp.ClientSession, url: str, models: Models, *,
                  candidates: list[int], samples: int) -> list[float]:
    """Scale untouched models one at a time; ms until their status shows it."""
    taken = []
    for i in range(samples):
        name = f"m{candidates[i % len(candidates)]}"
        replicas = models.bodies[name]["spec"]["replicas"]
        wanted = replicas + 1 if replicas % 2 == 0 else replicas - 1
        sent = time.perf_counter()
        await scale(session, url, name, wanted)
        done = await models.until(
            lambda n=name, r=wanted: models.bodies[n]["spec"]["replicas"] == r  # type: ignore[misc]
            and models.current(n), timeout=30)
        taken.append((done - sent) * 1000)
        await asyncio.sleep(SAMPLE_GAP)
    return taken


async def churn(session: aiohttp.ClientSession, url: str, setup: Setup, *, engines: list[int],
                per_minute: float, stop: asyncio.Event) -> int:
    """Flip engines Serving -> Loading and back at `per_minute` phase changes a minute."""
    down: list[int] = []
    flips = 0
    rng = random.Random(1)
    tick = 60.0 / per_minute
    next_at = time.perf_counter()
    while not stop.is_set():
        if len(down) >= 50:
            engine, phase = down.pop(0), "Serving"
        else:
            engine, phase = rng.choice(engines), "Loading"
            if engine in down:
                continue
            down.append(engine)
        await set_phase(session, url, engine, phase=phase, model=f"m{engine // setup.per_model}")
        flips += 1
        next_at += tick
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    for engine in down:
        await set_phase(session, url, engine, phase="Serving",
                        model=f"m{engine // setup.per_model}")
    return flips


async def burst(session: aiohttp.ClientSession, url: str, models: Models, setup: Setup, *,
                model_ids: list[int], phase: str) -> tuple[float, float]:
    """Set every engine of these models to `phase`: (writes/s the server took,
    events/s until every model's status counts show them)."""
    engines = [m * setup.per_model + k for m in model_ids for k in range(setup.per_model)]
    field = "loading" if phase == "Loading" else "serving"
    names = [f"m{m}" for m in model_ids]
    work: asyncio.Queue[int] = asyncio.Queue()
    for engine in engines:
        work.put_nowait(engine)

    async def writer() -> None:
        while not work.empty():
            engine = work.get_nowait()
            await set_phase(session, url, engine, phase=phase,
                            model=f"m{engine // setup.per_model}")

    def shown() -> bool:
        return all((models.bodies[n].get("status") or {}).get(field) == setup.per_model
                   for n in names)

    started = time.perf_counter()
    waiting = asyncio.create_task(models.until(shown, timeout=120))
    await asyncio.gather(*(writer() for _ in range(WRITERS)))
    written = time.perf_counter()
    done = await waiting
    return len(engines) / (written - started), len(engines) / (done - started)


async def scrape_metrics(session: aiohttp.ClientSession, operator: Operator, taken: list[float],
                         *, interval: float, stop: asyncio.Event) -> None:
    """GET the operator's /metrics every `interval` seconds, as Prometheus would: ms each."""
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    while not stop.is_set():
        sent = time.perf_counter()
        async with session.get(url) as response:
            await response.read()
        taken.append((time.perf_counter() - sent) * 1000)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, sent + interval - time.perf_counter()))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def sample_memory(operator: Operator, peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set() and operator.process.poll() is None:
        with contextlib.suppress(OSError):
            peak[0] = max(peak[0], operator.memory_mib()[0])
        await asyncio.sleep(0.1)


async def handled_fleet(workdir: pathlib.Path, setup: Setup, rows: list[Row],
                        samples: int, *, idle_only: bool = False) -> None:
    """A fleet already Serving: first start, restart, latency, churn, burst, memory
    (with `idle_only`: one start, then the idle latency alone)."""
    server = Server(workdir, engines=setup.engines, models=setup.models, state="serving")
    print(f"seeded {setup.engines} serving engines in {server.seeded_in:.1f}s", flush=True)
    connector = aiohttp.TCPConnector(limit=WRITERS + 8)
    try:
        async with aiohttp.ClientSession(connector=connector) as session, \
                following(session, server.url) as models:
            if not idle_only:
                await first_start(session, server, models, rows, setup)
            # Restart over the handled fleet: the cold start a user sees after an upgrade.
            # A spec change made meanwhile tells us when the new operator has looked at all.
            await scale(session, server.url, f"m{setup.models - 1}", setup.per_model + 1)
            operator = Operator(server, driver="agent")
            stop = asyncio.Event()
            peak = [0.0]
            sampler = asyncio.create_task(sample_memory(operator, peak, stop))
            first_pass = await operator.wait_metric(
                session, "capguard_reconcile_duration_seconds_count", lambda v: v >= 1,
                timeout=setup.timeout(120))
            all_current = (await models.until(models.all_current, timeout=setup.timeout(120))
                           - operator.started)
            start = "first start" if idle_only else "restart"
            rows.append(below(f"{start}: first reconcile pass done", first_pass, "s", 8))
            rows.append(below(f"{start}: every model status current", all_current, "s", 8))
            await asyncio.sleep(2)
            count0 = await operator.metric(session, "capguard_reconcile_duration_seconds_count")
            sum0 = await operator.metric(session, "capguard_reconcile_duration_seconds_sum")

            half = setup.models // 2
            scrapes: list[float] = []
            scraped = asyncio.Event()
            scraper = None if setup.scrape_interval is None else asyncio.create_task(
                scrape_metrics(session, operator, scrapes, interval=setup.scrape_interval,
                               stop=scraped))
            idle = await latency(session, server.url, models, candidates=list(range(half)),
                                 samples=samples)
            scraped.set()
            if scraper is not None:
                await scraper
                rows.append(Row(f"{setup.idle}: /metrics scrapes", len(scrapes), ""))
                rows.append(Row(f"{setup.idle}: /metrics scrape max", max(scrapes, default=0),
                                "ms"))
            count1 = await operator.metric(session, "capguard_reconcile_duration_seconds_count")
            sum1 = await operator.metric(session, "capguard_reconcile_duration_seconds_sum")
            if None not in (count0, sum0, count1, sum1) and count1 != count0:
                assert count0 is not None and sum0 is not None
                assert count1 is not None and sum1 is not None
                rows.append(Row(f"{setup.idle}: reconcile pass while scaling (mean)",
                                (sum1 - sum0) / (count1 - count0) * 1000, "ms"))
            rows.append(Row(f"{setup.idle}: event-to-status p50", statistics.median(idle), "ms"))
            rows.append(below(f"{setup.idle}: event-to-status p99", percentile(idle, 99), "ms",
                              30))
            rows.append(Row(f"{setup.idle}: event-to-status max", max(idle), "ms"))
            if idle_only:
                stop.set()
                await sampler
                operator.stop()
                return

            churning = asyncio.Event()
            churned = list(range(half * setup.per_model, setup.engines))
            churner = asyncio.create_task(churn(session, server.url, setup, engines=churned,
                                                per_minute=1000, stop=churning))
            await asyncio.sleep(3)
            busy = await latency(session, server.url, models, candidates=list(range(samples,
                                 2 * samples)), samples=samples)
            churning.set()
            flips = await churner
            rows.append(Row("churn: phase changes written", flips, ""))
            rows.append(Row("churn: event-to-status p50", statistics.median(busy), "ms"))
            rows.append(below("churn: event-to-status p99", percentile(busy, 99), "ms", 500))
            await asyncio.sleep(2)

            chosen = list(range(2 * samples, min(setup.models, 2 * samples + 200)))
            for phase in ("Loading", "Serving"):
                accepted, handled = await burst(session, server.url, models, setup,
                                                model_ids=chosen, phase=phase)
                rows.append(Row(f"burst to {phase}: server accepted", accepted, "writes/s"))
                rows.append(at_least(f"burst to {phase}: events handled", handled, "/s", 400))
            stop.set()
            await sampler
            hwm, rss = operator.memory_mib()
            rows.append(below("handled fleet: operator RSS peak (VmHWM)", max(hwm, peak[0]),
                              "MB", 200))
            rows.append(below("handled fleet: operator RSS at end", rss, "MB", 200))
            operator.stop()
    finally:
        server.stop()


async def first_start(session: aiohttp.ClientSession, server: Server, models: Models,
                      rows: list[Row], setup: Setup) -> None:
    """First start: every model status is written for the first time."""
    operator = Operator(server, driver="agent")
    first_pass = await operator.wait_metric(
        session, "capguard_reconcile_duration_seconds_count", lambda v: v >= 1,
        timeout=setup.timeout(120))
    all_current = (await models.until(models.all_current, timeout=setup.timeout(120))
                   - operator.started)
    rows.append(below("first start: first reconcile pass done", first_pass, "s", 8))
    rows.append(below("first start: every model status current", all_current, "s", 8))
    operator.stop()


@dataclasses.dataclass(frozen=True)
class Minimum:
    """The least time from spawn to every model serving, and how it was bounded."""

    seconds: float
    how: str


def rate_limit_minimum(*, engines: int, write_rate: float, load_time: float) -> Minimum:
    """What bounds an unhandled start from below, the binding bound taken.

    - the server's writes: every engine needs WRITES_PER_ENGINE of them at `write_rate`;
    - the load: the last engine's assign and Loading writes come after 2 of every engine's
      writes at best, and it serves `load_time` later;
    - the operator's own per-pass limits (`reconcile.Config`): so many assigns, and so
      many phase moves, a pass, and passes at least `plan_gap` apart.
    Operator CPU is not a bound here: it is what the ratio to this minimum shows.
    """
    config = reconcile.Config()
    passes = max(assign_passes(engines, config),
                 math.ceil(engines / config.max_engine_writes_per_pass))
    bounds = {
        f"{WRITES_PER_ENGINE} writes x {engines:,} engines at {write_rate:,.0f} writes/s":
            WRITES_PER_ENGINE * engines / write_rate,
        f"2 writes x {engines:,} engines at {write_rate:,.0f} writes/s + load {load_time:g} s":
            2 * engines / write_rate + load_time,
        f"{passes} passes (assigns a pass from {config.first_assigns_per_pass} doubling to "
        f"{config.max_assigns_per_pass}, max_engine_writes_per_pass "
        f"{config.max_engine_writes_per_pass}) "
        f"x plan_gap {config.plan_gap:g} s + load {load_time:g} s":
            passes * config.plan_gap + load_time,
    }
    binding = max(bounds, key=lambda name: bounds[name])
    how = "; ".join(f"{name} = {seconds:.2f} s" for name, seconds in bounds.items())
    return Minimum(bounds[binding], f"{how}; binding: {binding}")


def assign_passes(engines: int, config: reconcile.Config) -> int:
    """Passes that assign ``engines`` idle engines, under the operator's slow start."""
    passes, left, limit = 0, engines, config.first_assigns_per_pass
    while left > 0:
        executed = min(limit, left)
        passes, left = passes + 1, left - executed
        limit = reconcile.slow_start(limit, executed=executed, failed=0, config=config)
    return passes


async def write_rate(session: aiohttp.ClientSession, url: str, setup: Setup) -> float:
    """Writes/s the server takes from WRITERS concurrent merge patches (an annotation on
    engines, which the operator does not read), measured before the operator starts."""
    names = iter(range(min(PROBE_WRITES, setup.engines)))
    patch = json.dumps({"metadata": {"annotations": {"bench/write-rate": "probe"}}})

    async def writer() -> int:
        done = 0
        for engine in names:  # shared: each writer takes the next engine
            async with session.patch(f"{url}{API}/namespaces/{NAMESPACE}/inferenceengines/"
                                     f"e{engine}", data=patch, headers=MERGE) as r:
                r.raise_for_status()
            done += 1
        return done

    started = time.perf_counter()
    written = sum(await asyncio.gather(*(writer() for _ in range(WRITERS))))
    return written / (time.perf_counter() - started)


async def engine_events(session: aiohttp.ClientSession, url: str,
                        marks: tuple[bytes, ...]) -> AsyncIterator[dict[str, Any]]:
    """Watch InferenceEngines from now on (resumed when a stream ends) and yield each
    object whose event line holds one of ``marks``: only those lines are parsed, so
    50,000 engines' other writes cost little."""
    path = f"{url}{API}/namespaces/{NAMESPACE}/inferenceengines"
    async with session.get(path, params={"limit": "1"}) as r:
        version = (await r.json())["metadata"]["resourceVersion"]
    while True:
        params = {"watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true"}
        async with session.get(path, params=params,
                               timeout=aiohttp.ClientTimeout(total=None)) as r:
            async for line in r.content:
                if any(mark in line for mark in marks):
                    obj: dict[str, Any] = json.loads(line)["object"]
                    version = obj["metadata"]["resourceVersion"]
                    yield obj


async def first_assignment(session: aiohttp.ClientSession, url: str,
                           found: asyncio.Future[float]) -> None:
    """Resolve `found` with perf_counter() when an engine first shows spec.modelRef."""
    async with contextlib.aclosing(engine_events(session, url, (b'"modelRef"',))) as events:
        async for obj in events:
            if (obj.get("spec") or {}).get("modelRef"):
                found.set_result(time.perf_counter())
                return


async def every_engine(session: aiohttp.ClientSession, url: str, engines: int,
                       found: dict[str, asyncio.Future[float]]) -> None:
    """Resolve ``found[phase]`` with perf_counter() when every one of ``engines`` has been
    seen in that phase (Loading: its assign recorded; Serving). An unhandled start only
    moves engines forward, so a name seen stays counted."""
    seen: dict[str, set[str]] = {phase: set() for phase in found}
    marks = tuple(f'"{phase}"'.encode() for phase in found)
    async with contextlib.aclosing(engine_events(session, url, marks)) as events:
        async for obj in events:
            phase = (obj.get("status") or {}).get("phase")
            if phase in seen and not found[phase].done():
                seen[phase].add(obj["metadata"]["name"])
                if len(seen[phase]) == engines:
                    found[phase].set_result(time.perf_counter())
            if all(f.done() for f in found.values()):
                return


async def unhandled_fleet(workdir: pathlib.Path, setup: Setup, rows: list[Row]) -> None:
    """Every engine new (no status, unbound): the backlog after a pause or an outage."""
    server = Server(workdir, engines=setup.engines, models=setup.models, state="unhandled")
    print(f"seeded {setup.engines} unhandled engines in {server.seeded_in:.1f}s", flush=True)
    connector = aiohttp.TCPConnector(limit=WRITERS + 8)
    try:
        async with aiohttp.ClientSession(connector=connector) as session, \
                following(session, server.url) as models:
            rate = await write_rate(session, server.url, setup)
            minimum = rate_limit_minimum(engines=setup.engines, write_rate=rate,
                                         load_time=LOAD_TIME)
            assigned: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            watcher = asyncio.create_task(first_assignment(session, server.url, assigned))
            phases = {phase: asyncio.get_running_loop().create_future()
                      for phase in ("Loading", "Serving")}
            phase_watcher = asyncio.create_task(
                every_engine(session, server.url, setup.engines, phases))
            await asyncio.sleep(0.2)  # the watch is open before the operator starts
            operator = Operator(server, driver="simulated", load_time=f"{LOAD_TIME:g}s")
            stop = asyncio.Event()
            peak = [0.0]
            sampler = asyncio.create_task(sample_memory(operator, peak, stop))
            first_pass = await operator.wait_metric(
                session, "capguard_reconcile_duration_seconds_count", lambda v: v >= 1,
                timeout=setup.timeout(300))
            first_assign = await asyncio.wait_for(assigned, setup.timeout(300)) - operator.started
            await watcher
            all_current = (await models.until(models.all_current, timeout=setup.timeout(300))
                           - operator.started)

            def serving() -> bool:
                return all((b.get("status") or {}).get("serving") == setup.per_model
                           for b in models.bodies.values())

            all_serving = (await models.until(serving, timeout=max(600, 3 * minimum.seconds))
                           - operator.started)
            await asyncio.wait_for(phase_watcher, setup.timeout(60))
            every_loading, every_serving = (phases[p].result() - operator.started
                                            for p in ("Loading", "Serving"))
            cpu, full_collections = await operator.metrics(
                session, "process_cpu_seconds_total", 'python_gc_collections_total{generation="2"}')
            stop.set()
            await sampler
            hwm, rss = operator.memory_mib()
            print(f"unhandled: rate-limit minimum {minimum.seconds:.2f} s from {minimum.how}",
                  flush=True)
            rows.append(below("unhandled: first reconcile pass done", first_pass, "s", 8))
            rows.append(below("unhandled: first assignment written", first_assign, "s", 2))
            rows.append(below("unhandled: every model status current", all_current, "s", 8))
            rows.append(Row("unhandled: every engine's assign recorded (Loading)",
                            every_loading, "s"))
            rows.append(Row(f"unhandled: every engine Serving (load {LOAD_TIME:g} s)",
                            every_serving, "s"))
            rows.append(Row(f"unhandled: every model serving (load {LOAD_TIME:g} s)",
                            all_serving, "s"))
            rows.append(Row("unhandled: server write rate (before the start)", rate,
                            "writes/s"))
            rows.append(Row("unhandled: rate-limit minimum to every model serving",
                            minimum.seconds, "s"))
            rows.append(below("unhandled: every model serving / rate-limit minimum",
                              all_serving / minimum.seconds, "x", 1.2))
            rows.append(below("unhandled: operator RSS peak (VmHWM)", max(hwm, peak[0]),
                              "MB", 200))
            rows.append(below("unhandled: operator RSS at end", rss, "MB", 200))
            # The operator's own CPU moves less with a drifting machine than wall time does.
            rows.append(Row("unhandled: operator CPU to every model serving", cpu, "s"))
            rows.append(Row("unhandled: operator full garbage collections (generation 2)",
                            full_collections, ""))
            operator.stop()
    finally:
        server.stop()


def print_table(rows: list[Row], setup: Setup) -> None:
    print(f"\ncapguard run, {setup.engines:,} engines / {setup.models:,} models, "
          f"embedded API server, {os.cpu_count()} CPUs (server and operator share them)")
    widths = [max(len(r.cells()[i]) for r in rows) for i in range(4)]
    header = ("measure", "measured", "goal", "")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    for cells in (header, *(r.cells() for r in rows)):
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines", type=int, default=10_000)
    parser.add_argument("--models", type=int, default=1_000)
    parser.add_argument("--samples", type=int, default=100, help="latency samples per phase")
    parser.add_argument("--skip-handled", action="store_true")
    parser.add_argument("--skip-unhandled", action="store_true")
    parser.add_argument("--idle-latency-only", action="store_true",
                        help="start once over the handled fleet and measure idle latency only")
    parser.add_argument("--scrape-interval", type=float, metavar="SECONDS",
                        help="scrape the operator's /metrics this often while idle latency "
                             "is measured, as Prometheus would")
    parser.add_argument("--json", action="store_true",
                        help="end with the rows as one JSON object, \"measure [unit]\" -> value")
    args = parser.parse_args()
    setup = Setup(args.engines, args.models, scrape_interval=args.scrape_interval)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="capguard-bench-") as workdir:
        if not args.skip_handled:
            await handled_fleet(pathlib.Path(workdir), setup, rows, args.samples,
                                idle_only=args.idle_latency_only)
        if not args.skip_unhandled and not args.idle_latency_only:
            await unhandled_fleet(pathlib.Path(workdir), setup, rows)
    print_table(rows, setup)
    if args.json:
        print(json.dumps({row.key: row.measured for row in rows}))
    return 0 if all(r.met is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
