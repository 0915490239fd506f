"""Start a capguard serving command as a real process and read the first line it prints.

Every serving command (model-server, gateway, engine) says where it listens on its first
stdout line, `capguard <command> listening at http://HOST:PORT`; tests read it rather
than guess a port. stderr is collected as it comes, so a chatty process never blocks
on a full pipe and a failing test can show what it said.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import sys
from collections.abc import AsyncIterator

FIRST_LINE_TIMEOUT = 30.0


@dataclasses.dataclass
class Started:
    process: asyncio.subprocess.Process
    first_line: str
    stderr_lines: list[str]
    _reading: asyncio.Task[None]

    @property
    def url(self) -> str:
        """The address the first line names (its last word)."""
        return self.first_line.split()[-1]

    async def exit_code(self, *, timeout: float = 60.0) -> int:
        code = await asyncio.wait_for(self.process.wait(), timeout)
        await self._reading  # all of stderr, now that the pipe is closed
        return code

    def signal(self, number: int = signal.SIGTERM) -> None:
        self.process.send_signal(number)

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)


async def _collect(stream: asyncio.StreamReader, lines: list[str]) -> None:
    async for line in stream:
        lines.append(line.decode(errors="replace"))


def python_module(module: str) -> list[str]:
    """The argv that runs a module with this interpreter, as the agent would run it."""
    return [sys.executable, "-m", module]


async def start(module: str, *args: str) -> Started:
    """Run `python -m module args...` and wait for its first stdout line."""
    process = await asyncio.create_subprocess_exec(
        *python_module(module), *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    lines: list[str] = []
    reading = asyncio.create_task(_collect(process.stderr, lines))
    first = await asyncio.wait_for(process.stdout.readline(), FIRST_LINE_TIMEOUT)
    if not first:
        await process.wait()
        await reading
        raise AssertionError(f"{module} exited {process.returncode} before its first line: "
                             + "".join(lines))
    return Started(process, first.decode().strip(), lines, reading)


@contextlib.asynccontextmanager
async def running(module: str, *args: str) -> AsyncIterator[Started]:
    """A started process, killed on the way out if the test left it running."""
    started = await start(module, *args)
    try:
        yield started
    finally:
        if started.process.returncode is None:
            started.process.kill()
            await started.process.wait()
        started._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await started._reading
