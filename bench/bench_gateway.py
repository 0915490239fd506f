"""Benchmark `capguard gateway`: requests per second and the latency it adds.

Starts the embedded API server (in this process), one stand-in model server answering
with no latency (`python -m capguard.serving.modelserver --latency 0s`), one
InferenceEngine whose status points at it as an agent would write it, and the gateway
(`python -m capguard.serving.gateway`) as processes. Then, with one aiohttp client:

- latency: requests one at a time, straight to the model server and through the
  gateway; the added latency is the difference of the two at p50 and p99;
- throughput: `--concurrency` requests in flight for `--seconds`, both ways.

    python bench/bench_gateway.py [--requests 2000] [--concurrency 32] [--seconds 5]

The client shares the machine with both servers, so throughput is a floor, not a
ceiling; on two cores, all three compete.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator

import aiohttp

from capguard.kube import client
from capguard.localcluster import LocalCluster

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL = "bench-model"
BODY = {"model": MODEL, "prompt": "hello", "max_tokens": 16}


@contextlib.asynccontextmanager
async def process(module: str, *args: str) -> AsyncIterator[str]:
    """`python -m module args`; yields the URL its first line announces."""
    started = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        assert started.stdout is not None
        first = (await asyncio.wait_for(started.stdout.readline(), 30)).decode()
        assert "listening at" in first, f"{module} did not start: {first!r}"
        yield first.split()[-1]
    finally:
        started.terminate()
        await started.wait()


async def engine(api: client.Api, *, endpoint: str) -> None:
    await api.create(client.ENGINES, namespace="default", body={
        "apiVersion": client.ENGINES.api_version, "kind": "InferenceEngine",
        "metadata": {"name": "bench-engine"},
        "spec": {"pool": "bench", "capacityUnits": 1, "modelRef": MODEL}})
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    await api.merge_patch(client.ENGINES, namespace="default", name="bench-engine", patch={
        "status": {"phase": "Serving", "model": MODEL, "endpoint": endpoint,
                   "lastHeartbeatTime": now}}, subresource="status")


async def one(session: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    async with session.post(url + "/v1/completions", json=BODY) as answer:
        await answer.read()
        assert answer.status == 200, answer.status
    return time.perf_counter() - started


async def latencies(session: aiohttp.ClientSession, url: str, *, requests: int) -> list[float]:
    for _ in range(50):  # warm the connections
        await one(session, url)
    return sorted([await one(session, url) for _ in range(requests)])


async def throughput(session: aiohttp.ClientSession, url: str, *, concurrency: int,
                     seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await one(session, url)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


def quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(*, requests: int, concurrency: int, seconds: float) -> None:
    directory = pathlib.Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    async with (LocalCluster(crds_dir=REPO / "crds",
                             kubeconfig_path=directory / "kubeconfig") as cluster,
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
                process("capguard.serving.modelserver", f"--model={MODEL}", "--port=0",
                        "--load-time=0s", "--latency=0s",
                        "--concurrency-per-unit=100000") as upstream):
        api = client.Api()
        api.connect(session=session, server=cluster.url)
        await engine(api, endpoint=upstream)
        async with process("capguard.serving.gateway", f"--kubeconfig={cluster.kubeconfig_path}",
                           "--namespace=default", "--port=0") as gateway:
            while True:  # until the gateway has seen the engine
                async with session.get(gateway + "/v1/models") as answer:
                    if (await answer.json())["data"]:
                        break
                await asyncio.sleep(0.05)
            direct = await latencies(session, upstream, requests=requests)
            routed = await latencies(session, gateway, requests=requests)
            direct_rps = await throughput(session, upstream, concurrency=concurrency,
                                          seconds=seconds)
            routed_rps = await throughput(session, gateway, concurrency=concurrency,
                                          seconds=seconds)
    ms = 1000.0
    print(f"sequential requests: {requests} each way (upstream latency 0)")
    print(f"{'':<22}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
    for name, found in (("direct to upstream", direct), ("through the gateway", routed)):
        print(f"{name:<22}{quantile(found, 0.5) * ms:>9.2f}{quantile(found, 0.99) * ms:>9.2f}"
              f"{statistics.fmean(found) * ms:>9.2f}")
    print(f"{'added by the gateway':<22}"
          f"{(quantile(routed, 0.5) - quantile(direct, 0.5)) * ms:>9.2f}"
          f"{(quantile(routed, 0.99) - quantile(direct, 0.99)) * ms:>9.2f}"
          f"{(statistics.fmean(routed) - statistics.fmean(direct)) * ms:>9.2f}")
    print(f"throughput, {concurrency} in flight for {seconds:g}s: "
          f"direct {direct_rps:,.0f} req/s, through the gateway {routed_rps:,.0f} req/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    options = parser.parse_args()
    asyncio.run(main(requests=options.requests, concurrency=options.concurrency,
                     seconds=options.seconds))
