"""Benchmark the embedded Kubernetes API server against what a real one does.

Starts `python -m capguard.localcluster` in a subprocess (so its memory is its own and
the client's work does not share its interpreter), then drives it over HTTP with one
aiohttp session, the way Kopf does, and prints a table of measured values next to the
goals from issue 3 (a real kube-apiserver with etcd on the same kind of machine, with a
Python aiohttp client, did: create 2.0 ms, get 1.0 ms, patch 2.0 ms median; 428
sequential and 1,206 16-way creates/s; 822 watch events/s with 16 writers; 10,000
objects listed in 1.0 s from etcd, 0.26 s from its watch cache).

    python bench/bench_localcluster.py [--requests 2000] [--objects 10000] [--rbac]

`--rbac` runs the server as a cluster's does, authorizing each request: a bearer token
(static token file) of a user whom a ClusterRoleBinding grants what the bench does,
`--authorization-mode=RBAC` (plain HTTP: the client sends its token anyway), so the rows
show what authentication and RBAC cost a request.

The objects are InferenceEngines, capguard's most numerous kind, validated by the real
CRD schema (and its CEL rules) from crds/.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import aiohttp

REPO: Final = pathlib.Path(__file__).resolve().parents[1]
GROUP_VERSION: Final = "capguard.dev/v1alpha1"
RESOURCE: Final = "inferenceengines"
NAMESPACE: Final = "bench"
MERGE: Final = {"Content-Type": "application/merge-patch+json"}
WRITERS: Final = 16
TOKEN: Final = "bench-token"
# What the bench does, granted to its user by RBAC (--rbac), not by system:masters.
RBAC: Final = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: bench}
rules:
  - apiGroups: [""]
    resources: [namespaces]
    verbs: [create]
  - apiGroups: [capguard.dev]
    resources: [inferenceengines]
    verbs: [create, get, list, watch, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: bench}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: bench}
subjects: [{kind: User, name: bench-user}]
"""
# Runs the server's own entry point under cProfile, dumping the stats when it stops.
PROFILED_SERVER: Final = """
import cProfile, sys
from capguard.localcluster import command
profiler = cProfile.Profile()
profiler.enable()
try:
    command.main(sys.argv[2:])
finally:
    profiler.disable()
    profiler.dump_stats(sys.argv[1])
"""


@dataclasses.dataclass(frozen=True)
class Row:
    metric: str
    measured: float
    unit: str
    goal: float | None = None
    higher_is_better: bool = False

    @property
    def verdict(self) -> str:
        if self.goal is None:
            return ""
        met = self.measured >= self.goal if self.higher_is_better else self.measured < self.goal
        return "ok" if met else "MISSED"

    def cells(self) -> tuple[str, str, str, str]:
        goal = "" if self.goal is None else (
            (">= " if self.higher_is_better else "< ") + _number(self.goal))
        return self.metric, f"{_number(self.measured)} {self.unit}", goal, self.verdict


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


# ---- the server under test ----------------------------------------------------------------------

class ServerProcess:
    """`python -m capguard.localcluster` on a free port, with the CRDs of crds/."""

    def __init__(self, workdir: pathlib.Path, *, profile: pathlib.Path | None = None,
                 rbac: bool = False) -> None:
        entry = ["-m", "capguard.localcluster"] if profile is None else [
            "-c", PROFILED_SERVER, str(profile)]
        self.headers: dict[str, str] = {}
        security: list[str] = []
        if rbac:
            (workdir / "tokens.csv").write_text(f"{TOKEN},bench-user,bench\n")
            (workdir / "rbac.yaml").write_text(RBAC)
            security = [f"--token-auth-file={workdir / 'tokens.csv'}",
                        f"--rbac={workdir / 'rbac.yaml'}"]
            self.headers = {"Authorization": f"Bearer {TOKEN}"}
        self.process = subprocess.Popen(
            [sys.executable, *entry, "--port", "0",
             "--kubeconfig", str(workdir / "kubeconfig"), "--crds", str(REPO / "crds"),
             *security],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO / "operator")})
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        found = re.search(r"serving at (http://\S+)", line)
        if found is None:
            self.stop()
            raise RuntimeError(f"the server did not start: {line!r} "
                               f"{self.process.stderr.read() if self.process.stderr else ''}")
        self.url = found.group(1)

    def rss_mib(self) -> float:
        status = pathlib.Path(f"/proc/{self.process.pid}/status").read_text()
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert found is not None
        return int(found.group(1)) / 1024

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# ---- the client -----------------------------------------------------------------------------

@dataclasses.dataclass
class Client:
    session: aiohttp.ClientSession
    url: str

    def path(self, name: str = "") -> str:
        base = f"{self.url}/apis/{GROUP_VERSION}/namespaces/{NAMESPACE}/{RESOURCE}"
        return f"{base}/{name}" if name else base

    async def call(self, method: str, url: str, *, body: Any = None,
                   headers: dict[str, str] | None = None, expect: int = 200) -> Any:
        async with self.session.request(method, url, data=json.dumps(body) if body else None,
                                        headers=headers or {"Content-Type": "application/json"}
                                        ) as response:
            payload = await response.read()
            if response.status != expect:
                raise RuntimeError(f"{method} {url}: {response.status} {payload[:300]!r}")
            return payload

    async def create(self, name: str) -> None:
        await self.call("POST", self.path(), body=engine(name), expect=201)

    async def get(self, name: str) -> None:
        await self.call("GET", self.path(name))

    async def patch(self, name: str, units: int) -> None:
        await self.call("PATCH", self.path(name), body={"spec": {"capacityUnits": units}},
                        headers=MERGE)


def engine(name: str) -> dict[str, Any]:
    return {"apiVersion": GROUP_VERSION, "kind": "InferenceEngine",
            "metadata": {"name": name, "labels": {"capguard.dev/pool": "bench"}},
            "spec": {"pool": "bench", "accelerator": "nvidia-h100", "capacityUnits": 1}}


@contextlib.asynccontextmanager
async def client_for(url: str, headers: dict[str, str]) -> AsyncIterator[Client]:
    connector = aiohttp.TCPConnector(limit=WRITERS * 2)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        client = Client(session=session, url=url)
        await client.call("POST", f"{url}/api/v1/namespaces", expect=201, body={
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        yield client


# ---- measurements -----------------------------------------------------------------------------

async def timed_each(count: int, action: Callable[[int], Awaitable[None]]) -> list[float]:
    """Latency of each of `count` sequential calls, in milliseconds."""
    latencies = []
    for index in range(count):
        started = time.perf_counter()
        await action(index)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def latency_rows(verb: str, latencies: list[float], goal: float) -> list[Row]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return [Row(f"{verb} latency, median", statistics.median(ordered), "ms", goal),
            Row(f"{verb} latency, p99", p99, "ms")]


async def concurrently(count: int, action: Callable[[int], Awaitable[None]]) -> float:
    """Seconds for `count` calls made by WRITERS concurrent workers."""
    async def worker(first: int) -> None:
        for index in range(first, count, WRITERS):
            await action(index)
    started = time.perf_counter()
    await asyncio.gather(*(worker(first) for first in range(WRITERS)))
    return time.perf_counter() - started


async def watch_throughput(client: Client, writes: int) -> float:
    """Events per second one watcher receives while WRITERS writers create objects."""
    listing = json.loads(await client.call("GET", client.path() + "?limit=1"))
    params = {"watch": "true", "resourceVersion": listing["metadata"]["resourceVersion"],
              "timeoutSeconds": "120"}
    received = 0
    async with aiohttp.ClientSession(headers=client.session.headers) as watch_session, \
            watch_session.get(
            client.path(), params=params, timeout=aiohttp.ClientTimeout(total=None)) as stream:
        async def watcher() -> float:
            nonlocal received
            async for line in stream.content:
                if line.strip() and json.loads(line)["type"] == "ADDED":
                    received += 1
                    if received == writes:
                        return time.perf_counter()
            raise RuntimeError(f"the watch ended after {received} of {writes} events")

        started = time.perf_counter()
        watching = asyncio.create_task(watcher())
        await concurrently(writes, lambda i: client.create(f"watched-{i}"))
        finished = await asyncio.wait_for(watching, timeout=60)
    return writes / (finished - started)


async def list_seconds(client: Client, *, limit: int = 0, runs: int = 5) -> float:
    """Median seconds to list every object (following `continue` with a limit)."""
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        token, items = "", 0
        while True:
            query = f"?limit={limit}&continue={token}" if limit else ""
            page = json.loads(await client.call("GET", client.path() + query))
            items += len(page["items"])
            token = page["metadata"].get("continue", "")
            if not token:
                break
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


async def fill_to(client: Client, total: int) -> int:
    listing = json.loads(await client.call("GET", client.path() + "?limit=1"))
    existing = len(listing["items"]) + int(listing["metadata"].get("remainingItemCount", 0))
    missing = max(0, total - existing)
    await concurrently(missing, lambda i: client.create(f"filler-{i}"))
    return existing + missing


async def run(server: ServerProcess, *, requests: int, objects: int) -> list[Row]:
    rows = [Row("server RSS, empty", server.rss_mib(), "MiB")]
    async with client_for(server.url, server.headers) as client:
        for index in range(50):   # warm up: imports, caches, connection
            await client.create(f"warmup-{index}")
        created = await timed_each(requests, lambda i: client.create(f"seq-{i}"))
        rows += latency_rows("create", created, goal=2.0)
        rows.append(Row("sequential creates", requests / (sum(created) / 1000), "/s", 450,
                        higher_is_better=True))
        rows += latency_rows("get", await timed_each(requests, lambda i: client.get(f"seq-{i}")),
                             goal=2.0)
        patched = await timed_each(requests, lambda i: client.patch(f"seq-{i}", 2 + i % 3))
        rows += latency_rows("patch", patched, goal=2.0)
        seconds = await concurrently(requests * 2, lambda i: client.create(f"par-{i}"))
        rows.append(Row(f"{WRITERS}-way concurrent creates", requests * 2 / seconds, "/s", 1250,
                        higher_is_better=True))
        rows.append(Row(f"watch events to 1 watcher, {WRITERS} writers",
                        await watch_throughput(client, requests * 2), "/s", 850,
                        higher_is_better=True))
        count = await fill_to(client, objects)
        goal = 0.25 if count >= 10_000 else None   # the goal is for 10,000 objects
        rows.append(Row(f"list {count:,} objects", await list_seconds(client), "s", goal))
        rows.append(Row(f"list {count:,} objects, limit=500 pages",
                        await list_seconds(client, limit=500), "s", goal))
        rows.append(Row(f"server RSS, {count:,} objects", server.rss_mib(), "MiB"))
    return rows


def print_table(rows: list[Row]) -> None:
    header = ("metric", "measured", "goal", "")
    cells = [header, *(row.cells() for row in rows)]
    widths = [max(len(line[column]) for line in cells) for column in range(len(header))]
    for index, line in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
              .rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000,
                        help="sequential requests per latency measurement (default 2000)")
    parser.add_argument("--objects", type=int, default=10_000,
                        help="objects to list and to measure memory with (default 10000)")
    parser.add_argument("--rbac", action="store_true",
                        help="authenticate a bearer token and authorize every request by RBAC")
    parser.add_argument("--profile", type=pathlib.Path, default=None,
                        help="run the server under cProfile and write its stats here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="capguard-bench-") as workdir:
        server = ServerProcess(pathlib.Path(workdir), profile=args.profile, rbac=args.rbac)
        try:
            rows = asyncio.run(run(server, requests=args.requests, objects=args.objects))
        finally:
            server.stop()
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, load average {load} (client and server share them)\n")
    print_table(rows)
    if args.profile is not None:
        print(f"\nserver profile (cProfile, slower than unprofiled): {args.profile}")
    return 1 if any(row.verdict == "MISSED" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
