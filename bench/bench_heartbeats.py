"""What agents' heartbeats cost the operator at fleet scale: on the engine's status, or on a Lease.

An agent renews its heartbeat every 10 s, so 10,000 engines make 1,000 heartbeats a
second. Before the Lease (`capguard.kube.heartbeats`) each was a /status merge patch on
the engine: a resourceVersion bump, a full engine in a watch event to the operator (and
every gateway), parsed and indexed. Now each is a merge patch of a Lease's
`spec.renewTime`: the operator's Lease watch keeps only the renew time.

For each way of beating ("none", "status", "lease"), over a handled fleet (every engine
Serving, heard at the start) on the embedded API server: `capguard run --driver agent
--heartbeat-timeout 40s`, a beater process renewing every engine's heartbeat in turn at
`--rate` a second, and, while it beats, the operator's and the server's CPU (in % of one
core, from /proc) and the idle event-to-status latency (`bench_operator.latency`: a
model's spec.replicas changed, until its status shows it). Three processes on this
machine's cores; the figures compare the modes, run after run on the same machine.

    python bench/bench_heartbeats.py [--engines 10000] [--models 1000] [--rate 1000]
                                     [--seconds 20] [--modes none,status,lease]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Final

import aiohttp

import bench_operator as bo  # a sibling script, not a package
from bench_scrape import cpu_seconds
from capguard.core import clock
from capguard.kube import heartbeats

MODES: Final = ("none", "status", "lease")
BEATERS: Final = 16  # concurrent writes of the beater
LEASES: Final = "/apis/coordination.k8s.io/v1/namespaces/" + bo.NAMESPACE + "/leases"
ENGINES: Final = f"{bo.API}/namespaces/{bo.NAMESPACE}/inferenceengines"


async def create_leases(url: str, engines: int) -> None:
    """One Lease per engine, as each agent creates at its start."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=BEATERS)) as session:
        names = iter(range(engines))

        async def creator() -> None:
            for e in names:
                async with session.get(f"{url}{ENGINES}/e{e}") as r:
                    engine = await r.json()
                body = heartbeats.lease(engine, holder=f"bench-{e}", interval=10.0,
                                        now=time.time())
                async with session.post(f"{url}{LEASES}", json=body) as r:
                    r.raise_for_status()

        await asyncio.gather(*(creator() for _ in range(BEATERS)))


async def beat(url: str, mode: str, engines: int, rate: float, stop: asyncio.Event) -> int:
    """Renew every engine's heartbeat in turn at `rate` a second until `stop`; how many."""
    done = 0
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=BEATERS)) as session:

        async def one(e: int) -> None:
            now = time.time()
            if mode == "status":
                path = f"{url}{ENGINES}/e{e}/status"
                patch = {"status": {"lastHeartbeatTime": clock.precise_timestamp(now)}}
            else:
                path = f"{url}{LEASES}/e{e}"
                patch = heartbeats.renewal(holder=f"bench-{e}", interval=10.0, now=now)
            async with session.patch(path, data=json.dumps(patch), headers=bo.MERGE) as r:
                r.raise_for_status()

        async def beater(offset: int) -> None:
            nonlocal done
            n = offset
            while not stop.is_set():
                # Paced: the n-th beat (of all beaters) is due at n / rate.
                wait = started + n / rate - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                await one(n % engines)
                done += 1
                n += BEATERS

        await asyncio.gather(*(beater(i) for i in range(BEATERS)))
    return done


def beater_main(url: str, mode: str, engines: int, rate: float) -> None:
    """The beater process: beats until SIGTERM, then prints how many and how fast."""

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        started = time.perf_counter()
        done = await beat(url, mode, engines, rate, stop)
        print(json.dumps({"beats": done, "seconds": time.perf_counter() - started}),
              flush=True)

    asyncio.run(run())


async def measure(mode: str, args: argparse.Namespace, workdir: pathlib.Path) -> dict[str, float]:
    setup = bo.Setup(args.engines, args.models)
    server = bo.Server(workdir, engines=setup.engines, models=setup.models, state="serving")
    beater = None
    try:
        if mode == "lease":
            await create_leases(server.url, setup.engines)
        if mode != "none":
            beater = subprocess.Popen(
                [sys.executable, __file__, "--beat", mode, "--url", server.url,
                 "--engines", str(setup.engines), "--rate", str(args.rate)],
                stdout=subprocess.PIPE, text=True, env=bo.env())
        async with aiohttp.ClientSession() as session, bo.following(session, server.url) as models:
            await bo.scale(session, server.url, f"m{setup.models - 1}", setup.per_model + 1)
            # With no beats, heartbeats are not counted at all (else every engine falls
            # silent 40 s after the seed): the cost of the operator without them.
            operator = bo.Operator(server, driver="agent",
                                   heartbeat_timeout="0" if mode == "none" else "40s")
            await models.until(models.all_current, timeout=setup.timeout(120))
            await asyncio.sleep(3)  # past the first pass's writes, into the steady beat
            cpu = (cpu_seconds(operator.process.pid), cpu_seconds(server.process.pid))
            started = time.perf_counter()
            taken = await bo.latency(session, server.url, models,
                                     candidates=list(range(setup.models // 2)),
                                     samples=args.samples)
            left = args.seconds - (time.perf_counter() - started)
            if left > 0:
                await asyncio.sleep(left)
            elapsed = time.perf_counter() - started
            used = (cpu_seconds(operator.process.pid) - cpu[0],
                    cpu_seconds(server.process.pid) - cpu[1])
            operator.stop()
            async with session.get(f"{server.url}{ENGINES}") as r:
                listed = (await r.json())["items"]
            unheard = sum(1 for e in listed if any(
                c.get("reason") == heartbeats.EXPIRED
                for c in (e.get("status") or {}).get("conditions") or []))
        beats = 0.0
        if beater is not None:
            beater.send_signal(signal.SIGTERM)
            out, _ = beater.communicate(timeout=30)
            report = json.loads(out.strip().splitlines()[-1])
            beats = report["beats"] / report["seconds"]
            beater = None
        return {"heartbeats/s": beats,
                "operator CPU %": used[0] / elapsed * 100,
                "server CPU %": used[1] / elapsed * 100,
                "event-to-status p50 ms": statistics.median(taken),
                "event-to-status p99 ms": bo.percentile(taken, 99),
                "engines marked unheard": unheard}
    finally:
        if beater is not None:
            beater.kill()
        server.stop()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines", type=int, default=10_000)
    parser.add_argument("--models", type=int, default=1_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="heartbeats a second")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured, at least")
    parser.add_argument("--samples", type=int, default=60, help="latency samples")
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="capguard-bench-") as workdir:
        for mode in args.modes.split(","):
            results[mode] = await measure(mode, args, pathlib.Path(workdir))
            print(mode, json.dumps(results[mode]), flush=True)
    print(f"\ncapguard run --driver agent --heartbeat-timeout 40s, {args.engines:,} engines / "
          f"{args.models:,} models, heartbeats at {args.rate:g}/s, {os.cpu_count()} CPUs")
    names = list(next(iter(results.values())))
    print("  ".join(["heartbeat on".ljust(12), *(n.rjust(len(n)) for n in names)]))
    for mode, found in results.items():
        print("  ".join([mode.ljust(12), *(f"{found[n]:,.1f}".rjust(len(n)) for n in names)]))
    return 0


if __name__ == "__main__":
    if "--beat" in sys.argv:
        flags = argparse.ArgumentParser()
        flags.add_argument("--beat", choices=("status", "lease"))
        flags.add_argument("--url")
        flags.add_argument("--engines", type=int)
        flags.add_argument("--rate", type=float)
        beater_flags = flags.parse_args()
        beater_main(beater_flags.url, beater_flags.beat, beater_flags.engines,
                    beater_flags.rate)
    else:
        with contextlib.suppress(KeyboardInterrupt):
            sys.exit(asyncio.run(main()))
