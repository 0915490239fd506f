"""The demo's engines that really serve: one `capguard engine` agent per engine, each
running a `capguard model-server`, the `capguard gateway` in front, and `capguard load`
sending each model's demand through it. All real processes on loopback ports.

Request latency, concurrency and the heartbeat are real time (a request takes what it
takes); the incident's durations the agents read (a model's load, a drain) are
compressed like everything else the operator reads.

The demand is a share of each model's desired capacity (`Serving.utilization`): a model
at its desired units answers practically everything, one below its floor visibly less,
one with no engine serving it nothing (the gateway's 503). The per-minute success rate
is measured on the incident's clock, from the load's own per-second counts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final

from capguard.demo import processes

STOP_GRACE: Final = 10.0  # seconds for every agent to drain its server and exit
REQUEST_TIMEOUT: Final = 5.0  # real seconds a request may take before it counts failed
# How long the end waits for the load's last seconds: a starved machine (64 servers
# restarting at once on two cores) can leave the load's reports this far behind.
CATCH_UP: Final = 30.0
ERROR_MINUTE: Final = 0.99  # a minute below this success rate is an error minute


@dataclasses.dataclass(frozen=True, kw_only=True)
class Serving:
    """How the real engines behave, in real seconds (the agents', the servers' flags)."""

    load_time: float  # a model's load, compressed
    drain_grace: float  # what a draining server may finish, compressed but never cut short
    latency: float = 0.2  # per request, real
    concurrency_per_unit: int = 4
    utilization: float = 0.4  # demand as a share of a model's desired capacity
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 5.0

    def rate(self, desired_units: int) -> float:
        """Requests per second a model's demand is: a share of what its units answer."""
        return round(self.utilization * desired_units * self.concurrency_per_unit
                     / self.latency, 3)

    def serve_command(self) -> str:
        grace = max(0.05, self.drain_grace * 0.9)  # exits before the agent's SIGKILL
        return (f"{sys.executable} -m capguard.serving.modelserver --model {{model}} "
                "--revision {revision} --port {port} --units {units} --name {engine} "
                f"--load-time {self.load_time:.3f}s --latency {self.latency:g}s "
                f"--concurrency-per-unit {self.concurrency_per_unit} --grace {grace:.3f}s")


@dataclasses.dataclass
class Agents:
    """The agent processes, by engine name."""

    processes: dict[str, asyncio.subprocess.Process] = dataclasses.field(default_factory=dict)

    def servers(self, names: Sequence[str] | None = None) -> list[int]:
        """The model-server processes the agents (of ``names``, or all) run: their children."""
        found = []
        for name in self.processes if names is None else names:
            pid = self.processes[name].pid
            with contextlib.suppress(OSError):
                children = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text()
                found += [int(child) for child in children.split()]
        return found


@contextlib.asynccontextmanager
async def agents(*, kubeconfig: pathlib.Path, namespace: str, engines: Sequence[str],
                 serving: Serving, log: pathlib.Path) -> AsyncIterator[Agents]:
    """One agent per engine, started together and stopped together (each drains its
    server); a straggler is killed, with its server."""
    started = Agents()
    sink = log.open("ab")
    try:
        for name in engines:
            started.processes[name] = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "capguard.cli", "engine", "--name", name,
                "--namespace", namespace, "--kubeconfig", str(kubeconfig),
                "--serve-command", serving.serve_command(),
                "--heartbeat-interval", f"{serving.heartbeat_interval:g}s",
                "--drain-grace", f"{serving.drain_grace:.3f}s", "--retry-after", "1s",
                stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink,
                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        yield started
    finally:
        await asyncio.shield(_stop_all(started))
        sink.close()


async def _stop_all(started: Agents) -> None:
    servers = started.servers()
    alive = [p for p in started.processes.values() if p.returncode is None]
    for process in alive:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    done = asyncio.gather(*(p.wait() for p in alive))
    try:
        await asyncio.wait_for(done, timeout=STOP_GRACE)
    except TimeoutError:
        for process in alive:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await asyncio.gather(*(p.wait() for p in alive))
    for pid in servers:  # orphaned only if its agent was killed: never left behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def gateway(*, kubeconfig: pathlib.Path, namespace: str, serving: Serving,
                  log: pathlib.Path) -> AsyncIterator[str]:
    """`capguard gateway` for the namespace; yields its URL."""
    argv = [sys.executable, "-m", "capguard.cli", "gateway", "--namespace", namespace,
            "--kubeconfig", str(kubeconfig), "--port", "0",
            "--heartbeat-timeout", f"{serving.heartbeat_timeout:g}s"]
    async with processes.child(argv, log=None) as process:
        url = await processes.first_line_url(process, log=log, what="the gateway")
        assert process.stdout is not None
        drain = asyncio.create_task(processes.drain(process.stdout, log=log))
        try:
            yield url
        finally:
            await processes.until_stopped(process, drain)


@dataclasses.dataclass
class Traffic:
    """What the load saw: per model and second of its run, requests sent and answered."""

    started: float | None = None  # the wall clock (epoch) of the load's second 0
    sent: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)
    succeeded: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)
    failed: dict[tuple[str, int], dict[str, int]] = dataclasses.field(default_factory=dict)

    def add(self, line: Mapping[str, Any]) -> None:
        if "started" in line:
            self.started = float(line["started"])
        elif "model" in line:
            key = (str(line["model"]), int(line["second"]))
            self.sent[key] = int(line["sent"])
            self.succeeded[key] = int(line["succeeded"])
            self.failed[key] = {str(k): int(v) for k, v in (line.get("failed") or {}).items()}

    def before(self, moment: float) -> Traffic:
        """A copy holding only the seconds that began before ``moment`` (wall clock)."""
        if self.started is None:
            return Traffic()
        kept = {key for key in self.sent if self.started + key[1] < moment}
        return Traffic(started=self.started, sent={k: self.sent[k] for k in kept},
                       succeeded={k: self.succeeded[k] for k in kept},
                       failed={k: self.failed[k] for k in kept})

    @property
    def last_second(self) -> int:
        return max((second for _, second in self.sent), default=-1)

    def by_minute(self, *, zero: float, speed: float,
                  model: str | None = None) -> dict[int, tuple[float, float]]:
        """Incident minute -> (sent, succeeded); ``zero`` is the wall clock (epoch) of the
        incident's second 0. A real second spans ``speed / 60`` incident minutes: its
        counts are shared among them by the time it spent in each."""
        minutes: dict[int, tuple[float, float]] = {}
        if self.started is None:
            return minutes
        for (name, second), sent in self.sent.items():
            if model is not None and name != model:
                continue
            start = (self.started + second - zero) * speed
            end = start + speed
            for minute in range(max(0, int(start // 60)), math.ceil(end / 60)):
                share = (min(end, 60 * (minute + 1)) - max(start, 60 * minute)) / speed
                if share <= 0:
                    continue
                total, ok = minutes.get(minute, (0.0, 0.0))
                minutes[minute] = (total + share * sent,
                                   ok + share * self.succeeded[(name, second)])
        return minutes

    def success_by_minute(self, *, zero: float, speed: float,
                          model: str | None = None) -> list[tuple[int, float]]:
        return [(minute, ok / sent) for minute, (sent, ok)
                in sorted(self.by_minute(zero=zero, speed=speed, model=model).items()) if sent]

    def summary(self, *, zero: float, speed: float,
                models: Sequence[str]) -> dict[str, object]:
        """The request measures the demo adds to the simulator's report."""
        overall = self.success_by_minute(zero=zero, speed=speed)
        by_model = {m: self.success_by_minute(zero=zero, speed=speed, model=m) for m in models}
        sent = sum(self.sent.values())
        by_code: collections.Counter[str] = collections.Counter()
        for codes in self.failed.values():
            by_code.update(codes)
        return {
            "requests_total": sent,
            "requests_failed": sent - sum(self.succeeded.values()),
            "requests_failed_by_code": dict(sorted(by_code.items())),
            "min_success_rate": _lowest(overall),
            "min_success_rate_by_model": {m: _lowest(found) for m, found in by_model.items()},
            "error_minutes": sum(1 for _, rate in overall if rate < ERROR_MINUTE),
            "success_rate_by_minute": {str(minute): round(rate, 4) for minute, rate in overall},
        }


def _lowest(minutes: list[tuple[int, float]]) -> float | None:
    return round(min(rate for _, rate in minutes), 4) if minutes else None


@contextlib.asynccontextmanager
async def load(*, url: str, rates: Mapping[str, float], duration: float, seed: int,
               log: pathlib.Path) -> AsyncIterator[Traffic]:
    """`capguard load` through the gateway for ``duration`` real seconds (stopped sooner
    when the demo ends); its per-second counts fill the yielded `Traffic` as they come:
    measure it with `through`, which waits for the seconds up to a moment."""
    argv = [sys.executable, "-m", "capguard.cli", "load", "--gateway", url, "--json",
            "--duration", f"{math.ceil(duration)}s", "--timeout", f"{REQUEST_TIMEOUT:g}s",
            "--seed", str(seed),
            *(f"--rate={model}={rate:g}" for model, rate in rates.items())]
    traffic = Traffic()
    sink = log.open("ab")
    try:
        async with processes.child(argv, log=None, stderr=sink) as process:
            reading = asyncio.create_task(_read(process, traffic))
            try:
                yield traffic
            finally:
                await processes.until_stopped(process, reading)
    finally:
        sink.close()


async def through(traffic: Traffic, moment: float, *, timeout: float = CATCH_UP) -> Traffic:
    """The traffic of the seconds that began before ``moment`` (wall clock, epoch), once
    the load has reported them all, or ``timeout`` later with what it has reported.

    A second is reported only once its last request has ended (up to the request timeout
    later, and later still on a starved machine), so the seconds just before a moment
    arrive after it: measured at once, the end of an incident would be missing."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_until_covered(traffic, moment), timeout=timeout)
    return traffic.before(moment)


async def _until_covered(traffic: Traffic, moment: float) -> None:
    """Until the load has reported the second ``moment`` falls in (and all before it)."""
    while traffic.started is None or traffic.started + traffic.last_second + 1 < moment:
        await asyncio.sleep(0.1)


async def _read(process: asyncio.subprocess.Process, traffic: Traffic) -> None:
    assert process.stdout is not None
    async for raw in process.stdout:
        with contextlib.suppress(ValueError):
            traffic.add(json.loads(raw))
