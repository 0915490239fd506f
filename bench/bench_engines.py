"""Benchmark engines that serve: `capguard engine` (the agent) with its stand-in model
server, against the embedded API server, on this machine.

    python bench/bench_engines.py [--starts 10] [--sizes 8,16,32,64] [--idle 10]

Everything runs as the demo runs it, as processes: `capguard localcluster`, one agent
per engine (`--heartbeat-interval 1s`, the demo's), each starting
`python -m capguard.serving.modelserver --load-time 0s` for the model its engine is
already bound to (spec.modelRef set), and, for the fleets, `capguard run --driver agent
--heartbeat-timeout 5s` over a ModelCapacity that wants exactly the bound engines.

- start: agent spawn -> its engine's status.phase Serving (seen on a watch), engines
  started one after the other;
- memory: VmRSS of an agent and of its server, idle and after a few seconds of requests
  straight to the server at its concurrency limit;
- fleets of N engines started at once: time until all are Serving, then the CPU the idle
  fleet burns over `--idle` seconds (utime+stime from /proc, in % of one core) for the
  agents, their servers, the embedded API server and the operator, and their RSS.

Two cores are shared with whatever else runs; numbers are what this machine did.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Final

import aiohttp
import yaml

from capguard.kube import client

REPO: Final = pathlib.Path(__file__).resolve().parents[1]
MODEL: Final = "bench-model"
TICKS: Final = os.sysconf("SC_CLK_TCK")
SERVE: Final = (f"{sys.executable} -m capguard.serving.modelserver --model {{model}} "
                "--port {port} --load-time 0s")
CAPGUARD: Final = (sys.executable, "-m", "capguard.cli")


# -- processes ------------------------------------------------------------------------

def memory_mb(pid: int, *, field: str) -> float:
    """A kB figure of /proc/PID: VmRSS (status), or Pss (smaps_rollup: shared pages, the
    interpreter and libraries, split among the processes sharing them, so that a fleet's
    sum is the memory it really takes); 0 once the process is gone."""
    source = "status" if field.startswith("Vm") else "smaps_rollup"
    try:
        with open(f"/proc/{pid}/{source}") as found:
            line = next(line for line in found if line.startswith(f"{field}:"))
    except (FileNotFoundError, StopIteration):
        return 0.0
    return int(line.split()[1]) / 1024


def rss_mb(pid: int) -> float:
    return memory_mb(pid, field="VmRSS")


def pss_mb(pid: int) -> float:
    return memory_mb(pid, field="Pss")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process so far."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as found:
            return [int(child) for child in found.read().split()]
    except FileNotFoundError:
        return []


async def spawn(*argv: str, log: pathlib.Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=out,
                                                    stdin=asyncio.subprocess.DEVNULL)


async def stop(processes: Iterable[asyncio.subprocess.Process]) -> None:
    """SIGTERM (an agent drains and stops its server), SIGKILL after 15 s."""
    running = [p for p in processes if p.returncode is None]
    for process in running:
        process.terminate()
    try:
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), 15)
    except TimeoutError:
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await asyncio.gather(*(p.wait() for p in running))


@contextlib.asynccontextmanager
async def embedded_server(directory: pathlib.Path) -> AsyncIterator[
        tuple[asyncio.subprocess.Process, str, pathlib.Path]]:
    """`capguard localcluster` as a process (its CPU is its own); its URL and kubeconfig."""
    kubeconfig = directory / "kubeconfig"
    process = await asyncio.create_subprocess_exec(
        *CAPGUARD, "localcluster", "--port=0", f"--kubeconfig={kubeconfig}",
        f"--crds={REPO / 'crds'}", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        first = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        assert "serving at" in first, f"capguard localcluster did not start: {first!r}"
        yield process, first.split()[-1], kubeconfig
    finally:
        await stop([process])


def kubectl_apply(kubeconfig: pathlib.Path, objects: Sequence[dict[str, Any]]) -> None:
    subprocess.run(["kubectl", f"--kubeconfig={kubeconfig}", "apply",
                    "-f", "-"], input=yaml.safe_dump_all(objects), text=True, check=True,
                   capture_output=True)


def fleet(namespace: str, *, engines: Sequence[str], model_capacity: bool) -> list[
        dict[str, Any]]:
    """A namespace and engines bound to MODEL (and the ModelCapacity wanting them all)."""
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}]
    if model_capacity:
        objects.append({"apiVersion": client.MODELS.api_version, "kind": "ModelCapacity",
                        "metadata": {"name": MODEL, "namespace": namespace},
                        "spec": {"replicas": len(engines), "minAvailable": 0}})
    objects += [{"apiVersion": client.ENGINES.api_version, "kind": "InferenceEngine",
                 "metadata": {"name": name, "namespace": namespace,
                              "labels": {"capguard.dev/pool": "bench"}},
                 "spec": {"pool": "bench", "capacityUnits": 1, "modelRef": MODEL}}
                for name in engines]
    return objects


# -- the API side ---------------------------------------------------------------------

@dataclasses.dataclass
class Serving:
    """When each engine of a namespace first reported Serving, from one watch."""

    since: dict[str, float] = dataclasses.field(default_factory=dict)
    endpoint: dict[str, str] = dataclasses.field(default_factory=dict)
    changed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    async def watch(self, api: client.Api, *, namespace: str) -> None:
        async for page in api.pages(client.ENGINES, namespace=namespace):
            version = str(page["metadata"]["resourceVersion"])  # the whole list's
            break
        while True:
            async for event in api.watch(client.ENGINES, namespace=namespace,
                                         resource_version=version):
                body = event.get("object") or {}
                version = str(body.get("metadata", {}).get("resourceVersion") or version)
                status = body.get("status") or {}
                name = body.get("metadata", {}).get("name")
                if status.get("phase") == "Serving" and name and name not in self.since:
                    self.since[name] = time.monotonic()
                    self.endpoint[name] = str(status.get("endpoint"))
                    self.changed.set()

    async def wait(self, names: Iterable[str], *, timeout: float) -> bool:
        """Whether all `names` are Serving within `timeout` seconds."""
        wanted, deadline = set(names), time.monotonic() + timeout
        while not wanted <= self.since.keys():
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(),
                                       max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                return wanted <= self.since.keys()
        return True


@contextlib.asynccontextmanager
async def watching(api: client.Api, namespace: str) -> AsyncIterator[Serving]:
    serving = Serving()
    task = asyncio.create_task(serving.watch(api, namespace=namespace))
    try:
        yield serving
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def agent_argv(name: str, *, namespace: str, kubeconfig: pathlib.Path) -> list[str]:
    return [*CAPGUARD, "engine", f"--name={name}", f"--namespace={namespace}",
            f"--kubeconfig={kubeconfig}", f"--serve-command={SERVE}",
            "--heartbeat-interval=1s", "--drain-grace=1s"]


# -- the measures ---------------------------------------------------------------------

def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


@dataclasses.dataclass(frozen=True)
class Start:
    seconds: float
    agent_mb: float
    server_mb: float


async def start_one(api: client.Api, *, kubeconfig: pathlib.Path, namespace: str,
                    name: str, logs: pathlib.Path) -> tuple[Start, asyncio.subprocess.Process,
                                                            str]:
    """Spawn one bound engine's agent; seconds until Serving, RSS then, its endpoint."""
    kubectl_apply(kubeconfig, fleet(namespace, engines=[name], model_capacity=False))
    async with watching(api, namespace) as serving:
        await asyncio.sleep(0.2)  # the watch is open
        started = time.monotonic()
        agent = await spawn(*agent_argv(name, namespace=namespace, kubeconfig=kubeconfig),
                            log=logs / f"{name}.log")
        assert await serving.wait([name], timeout=60), f"{name} not Serving within 60s"
    [server] = children(agent.pid)
    return (Start(serving.since[name] - started, rss_mb(agent.pid), rss_mb(server)), agent,
            serving.endpoint[name])


async def under_load(endpoint: str, *, seconds: float, in_flight: int) -> tuple[int, int]:
    """`in_flight` clients posting completions for `seconds`: (answered, refused 429)."""
    counts = {200: 0, 429: 0}
    deadline = time.monotonic() + seconds
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 16}
    async with aiohttp.ClientSession() as session:
        async def worker() -> None:
            while time.monotonic() < deadline:
                async with session.post(endpoint + "/v1/completions", json=body) as answer:
                    await answer.read()
                    counts[answer.status] = counts.get(answer.status, 0) + 1
        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return counts[200], counts[429]


async def starts(api: client.Api, *, kubeconfig: pathlib.Path, count: int,
                 logs: pathlib.Path) -> None:
    measured: list[Start] = []
    agent, endpoint = None, ""
    for i in range(count):
        if agent is not None:
            await stop([agent])
        start, agent, endpoint = await start_one(
            api, kubeconfig=kubeconfig, namespace="starts", name=f"engine-{i}", logs=logs)
        measured.append(start)
    assert agent is not None
    [server] = children(agent.pid)
    idle = (rss_mb(agent.pid), rss_mb(server))
    answered, refused = await under_load(endpoint, seconds=3.0, in_flight=8)
    busy = (rss_mb(agent.pid), rss_mb(server))
    await stop([agent])
    seconds = [s.seconds for s in measured]
    print(f"agent + server start, {count} bound engines one after the other: "
          f"p50 {percentile(seconds, 0.5):.2f}s  p95 {percentile(seconds, 0.95):.2f}s  "
          f"max {max(seconds):.2f}s")
    print(f"RSS at Serving (median): agent {statistics.median(s.agent_mb for s in measured):.1f}"
          f" MB, server {statistics.median(s.server_mb for s in measured):.1f} MB")
    print(f"RSS idle -> after 3s at 8 in flight ({answered} answered, {refused} 429): "
          f"agent {idle[0]:.1f} -> {busy[0]:.1f} MB, server {idle[1]:.1f} -> {busy[1]:.1f} MB")


def fleet_timeout(size: int) -> float:
    return max(60.0, 2.0 * size)


@dataclasses.dataclass(frozen=True)
class Fleet:
    size: int
    all_serving: float | None  # seconds, None: not all within the timeout
    serving: int
    cpu: dict[str, float]  # % of one core, idle
    rss_mb: float  # agents + servers
    pss_mb: float


async def run_fleet(api: client.Api, *, kubeconfig: pathlib.Path, size: int, idle: float,
                    embedded: asyncio.subprocess.Process, logs: pathlib.Path) -> Fleet:
    namespace = f"fleet-{size}"
    names = [f"engine-{i}" for i in range(size)]
    kubectl_apply(kubeconfig, fleet(namespace, engines=names, model_capacity=True))
    operator = await spawn(
        *CAPGUARD, "run", f"--kubeconfig={kubeconfig}", f"--namespace={namespace}",
        "--driver=agent", "--heartbeat-timeout=5s", "--no-leader-election",
        "--metrics-port=0", "--metrics-host=127.0.0.1", log=logs / f"operator-{size}.log")
    agents: list[asyncio.subprocess.Process] = []
    try:
        async with watching(api, namespace) as serving:
            await asyncio.sleep(0.2)
            started = time.monotonic()
            agents = [await spawn(*agent_argv(name, namespace=namespace, kubeconfig=kubeconfig),
                                  log=logs / f"{namespace}-{name}.log") for name in names]
            done = await serving.wait(names, timeout=fleet_timeout(size))
            took = max(serving.since.values(), default=started) - started
            await asyncio.sleep(2.0)  # let the last loads settle
            servers = [child for agent in agents for child in children(agent.pid)]
            groups = {"agents": [a.pid for a in agents], "servers": servers,
                      "API server": [embedded.pid], "operator": [operator.pid]}
            before = {group: sum(map(cpu_seconds, pids)) for group, pids in groups.items()}
            await asyncio.sleep(idle)
            cpu = {group: 100.0 * (sum(map(cpu_seconds, pids)) - before[group]) / idle
                   for group, pids in groups.items()}
            fleet_pids = [*groups["agents"], *servers]
            rss, pss = sum(map(rss_mb, fleet_pids)), sum(map(pss_mb, fleet_pids))
        still = sum(1 for e in [item async for item in api.list(client.ENGINES,
                                                                  namespace=namespace)]
                    if (e.get("status") or {}).get("phase") == "Serving"
                    and (e.get("spec") or {}).get("modelRef") == MODEL)
        return Fleet(size, took if done else None, still, cpu, rss, pss)
    finally:
        await stop([*agents, operator])


async def main(options: argparse.Namespace) -> None:
    directory = pathlib.Path(tempfile.mkdtemp(prefix="bench-engines-"))
    async with (embedded_server(directory) as (embedded, url, kubeconfig),
                aiohttp.ClientSession() as session):
        api = client.Api()
        api.connect(session=session, server=url)
        await starts(api, kubeconfig=kubeconfig, count=options.starts, logs=directory)
        print(f"\nfleets started at once (operator --driver agent --heartbeat-timeout 5s, "
              f"agents --heartbeat-interval 1s); CPU idle over {options.idle:g}s, "
              "% of one core")
        print(f"{'engines':>7} {'all Serving':>11} {'agents':>7} {'servers':>8} "
              f"{'API srv':>8} {'operator':>8} {'total':>6} {'RSS':>8} {'PSS':>8} "
              f"{'PSS/engine':>10}")
        for size in options.sizes:
            found = await run_fleet(api, kubeconfig=kubeconfig, size=size, idle=options.idle,
                                    embedded=embedded, logs=directory)
            took = (f"{found.all_serving:10.1f}s" if found.all_serving is not None
                    else f">{fleet_timeout(size):.0f}s")
            print(f"{size:>7} {took:>11} "
                  + " ".join(f"{found.cpu[g]:7.1f}%" for g in ("agents", "servers"))
                  + f" {found.cpu['API server']:7.1f}% {found.cpu['operator']:7.1f}%"
                  + f" {sum(found.cpu.values()):5.0f}% {found.rss_mb:6.0f}MB"
                  + f" {found.pss_mb:6.0f}MB {found.pss_mb / size:8.1f}MB"
                  + ("" if found.serving == size else f"  ({found.serving} Serving at the end)"))
    print(f"\nlogs: {directory}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=10, help="engines started one by one")
    parser.add_argument("--sizes", default="8,16,32,64",
                        type=lambda text: [int(n) for n in text.split(",")],
                        help="fleet sizes started at once, comma-separated")
    parser.add_argument("--idle", type=float, default=10.0,
                        help="seconds over which the idle fleet's CPU is measured")
    asyncio.run(main(parser.parse_args()))
