"""The demo's child processes: the embedded API server and the operator.

Each runs in its own session (process group), so a Ctrl-C in the terminal reaches only
the demo, which then stops them in order (operator first, then the server) and waits
for them: nothing is left behind, also when the demo itself fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pathlib
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from typing import IO, Any, Final

SERVING_PREFIX: Final = "capguard localcluster serving at "
STOP_GRACE: Final = 5.0  # seconds between SIGTERM and SIGKILL


@dataclasses.dataclass(frozen=True, kw_only=True)
class OperatorFlags:
    """What `capguard run` is started with (see `capguard run --help`)."""

    kubeconfig: pathlib.Path
    namespace: str
    metrics_port: int
    load_time: float  # real seconds
    drain_time: float
    reconcile_interval: float
    seed: int
    naive: bool
    # simulated: the operator plays the engines; agent: real agents do (with heartbeats)
    driver: str = "simulated"
    heartbeat_timeout: float = 5.0

    def argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", "capguard.cli", "run",
            "--kubeconfig", str(self.kubeconfig),
            "--namespace", self.namespace,
            "--metrics-host", "127.0.0.1",
            "--metrics-port", str(self.metrics_port),
            "--driver", self.driver,
            "--heartbeat-timeout", f"{self.heartbeat_timeout:g}s",
            "--load-time", f"{self.load_time:.3f}s",
            "--drain-time", f"{self.drain_time:.3f}s",
            "--reconcile-interval", f"{self.reconcile_interval:.3f}s",
            "--seed", str(self.seed),
            # One replica: the Lease would only delay its first action by a renew period.
            "--no-leader-election",
        ]
        return [*argv, "--naive"] if self.naive else argv


def free_port() -> int:
    """A port nobody listens on now (the operator binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def embedded_server(
    *, kubeconfig: pathlib.Path, crds: pathlib.Path, log: pathlib.Path
) -> AsyncIterator[str]:
    """`capguard localcluster` in a child process; yields its URL once it serves."""
    argv = [sys.executable, "-m", "capguard.localcluster", "--port", "0",
            "--kubeconfig", str(kubeconfig), "--crds", str(crds)]
    async with child(argv, log=None) as process:
        url = await _read_url(process, log=log)
        assert process.stdout is not None
        # Keep draining its output into the log so the pipe never fills up.
        drain_ = asyncio.create_task(drain(process.stdout, log=log))
        try:
            yield url
        finally:
            await until_stopped(process, drain_)


async def first_line_url(process: asyncio.subprocess.Process, *, log: pathlib.Path,
                         what: str) -> str:
    """The URL a capguard server names at the end of its first line (`... listening at
    URL`): that line is its interface."""
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
    if not line.strip():
        raise RuntimeError(f"{what} exited early; see {log}")
    return line.split()[-1]


async def _read_url(process: asyncio.subprocess.Process, *, log: pathlib.Path) -> str:
    assert process.stdout is not None
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
        if not line:
            raise RuntimeError(f"the embedded API server exited early; see {log}")
        if line.startswith(SERVING_PREFIX):
            return line.removeprefix(SERVING_PREFIX).strip()


async def drain(stream: asyncio.StreamReader, *, log: pathlib.Path) -> None:
    with log.open("ab") as sink:
        while chunk := await stream.read(65536):
            sink.write(chunk)


@contextlib.asynccontextmanager
async def operator(flags: OperatorFlags, *, log: pathlib.Path) -> AsyncIterator[int]:
    """`capguard run` in a child process, its output in ``log``; yields its pid."""
    async with child(flags.argv(), log=log) as process:
        yield process.pid


@contextlib.asynccontextmanager
async def child(
    argv: Sequence[str], *, log: pathlib.Path | None, stderr: IO[bytes] | None = None,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child process in its own session, stopped (TERM, then KILL) and reaped on exit.
    Without ``log`` its stdout is a pipe for the caller (stderr too, or ``stderr``)."""
    sink = log.open("ab") if log is not None else None
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=sink if sink is not None else asyncio.subprocess.PIPE,
            stderr=sink if sink is not None else (stderr or asyncio.subprocess.STDOUT),
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            yield process
        finally:
            await asyncio.shield(stop(process))
    finally:
        if sink is not None:
            sink.close()


async def until_stopped(process: asyncio.subprocess.Process, reader: asyncio.Task[Any]) -> None:
    """Stop a child whose piped output ``reader`` reads, then the reader. In this order: a
    pipe nobody reads fills its buffer, asyncio stops reading it, never sees its end, and
    `Process.wait()` (which waits for the pipes to close) never returns."""
    try:
        await asyncio.shield(stop(process))
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout=STOP_GRACE)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
