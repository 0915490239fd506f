"""Benchmark `capguard model-server`: how fast it starts, how much memory it holds, how
many requests one process answers; and the same for the aiohttp.web server it could
have been, to show why it is plain asyncio.

    python bench/bench_modelserver.py [--starts 20] [--together 24] [--seconds 5]

Start time is process spawn -> the first 200 from /health with --load-time 0 (the agent
polls the same way). RSS is read from /proc after the server is healthy and again after
the request run. Requests/s: one server with --latency 0, driven by one aiohttp client
process of CONCURRENCY keep-alive connections on the same two cores, so the client's own
cost is in the number (a server is rarely the only thing on the machine in a demo).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Final

import aiohttp

MODEL: Final = "llama-3-8b"
CONCURRENCY: Final = 16
# The alternative measured against: the same first line and routes on aiohttp.web.
AIOHTTP_SERVER: Final = """
import sys, click
from aiohttp import web
async def health(request):
    return web.json_response({"status": "ok", "model": "m", "revision": None})
async def complete(request):
    body = await request.json()
    return web.json_response({"id": "cmpl-1", "object": "text_completion",
                              "model": body["model"], "choices": [{"index": 0, "text": "hi"}]})
async def main():
    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v1/completions", complete)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    click.echo(f"listening at http://{host}:{port}")
    sys.stdout.flush()
    await asyncio.Event().wait()
import asyncio
asyncio.run(main())
"""


@dataclasses.dataclass(frozen=True)
class Server:
    label: str
    argv: tuple[str, ...]


SERVERS: Final = (
    Server("capguard model-server (asyncio)",
           (sys.executable, "-m", "capguard.serving.modelserver", "--model", MODEL,
            "--port", "0", "--load-time", "0", "--latency", "0",
            "--concurrency-per-unit", "100000")),
    Server("aiohttp.web equivalent", (sys.executable, "-c", AIOHTTP_SERVER)),
)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


async def spawn_until_healthy(server: Server,
                              session: aiohttp.ClientSession) -> tuple[
                                  asyncio.subprocess.Process, str, float]:
    """Start one server; the process, its URL and seconds from spawn to /health 200."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *server.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert process.stdout is not None
    url = (await process.stdout.readline()).decode().split()[-1]
    while True:
        try:
            async with session.get(url + "/health") as response:
                if response.status == 200:
                    return process, url, time.perf_counter() - started
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.002)


async def stop(process: asyncio.subprocess.Process) -> None:
    process.terminate()
    await process.wait()


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def starts(server: Server, *, count: int) -> tuple[list[float], list[float]]:
    """Start times and RSS (MB) of `count` servers started one after the other."""
    seconds, rss = [], []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            process, _, took = await spawn_until_healthy(server, session)
            seconds.append(took)
            rss.append(rss_mb(process.pid))
            await stop(process)
    return seconds, rss


async def together(server: Server, *, count: int) -> tuple[float, float]:
    """Seconds until `count` servers started at once are all healthy, and their RSS sum."""
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        ready = await asyncio.gather(*(spawn_until_healthy(server, session)
                                       for _ in range(count)))
        took = time.perf_counter() - started
        total = sum(rss_mb(process.pid) for process, _, _ in ready)
        await asyncio.gather(*(stop(process) for process, _, _ in ready))
    return took, total


async def throughput(server: Server, *, seconds: float) -> tuple[float, float]:
    """Completions per second one server answers, and its RSS after the run."""
    body = {"model": MODEL, "prompt": "say hello"}
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as session:
        process, url, _ = await spawn_until_healthy(server, session)
        deadline = time.perf_counter() + seconds
        answered = 0

        async def client() -> None:
            nonlocal answered
            while time.perf_counter() < deadline:
                async with session.post(url + "/v1/completions", json=body) as response:
                    assert response.status == 200, response.status
                    await response.read()
                answered += 1

        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
        rss = rss_mb(process.pid)
        await stop(process)
    return answered / seconds, rss


async def main(arguments: argparse.Namespace) -> None:
    print(f"{'server':34} {'start p50':>9} {'p95':>7} {'RSS':>8} "
          f"{f'{arguments.together} at once':>13} {'RSS sum':>9} {'req/s':>7} {'RSS after':>9}")
    for server in SERVERS:
        seconds, rss = await starts(server, count=arguments.starts)
        at_once, rss_sum = await together(server, count=arguments.together)
        rate, rss_after = await throughput(server, seconds=arguments.seconds)
        print(f"{server.label:34} {percentile(seconds, 0.5) * 1000:7.0f}ms "
              f"{percentile(seconds, 0.95) * 1000:5.0f}ms {statistics.median(rss):6.1f}MB "
              f"{at_once:12.2f}s {rss_sum:7.0f}MB {rate:7.0f} {rss_after:7.1f}MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=20, help="servers started one by one")
    parser.add_argument("--together", type=int, default=24, help="servers started at once")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the request run")
    asyncio.run(main(parser.parse_args()))
