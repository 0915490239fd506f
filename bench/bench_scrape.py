"""Benchmark what a Prometheus scrape of /metrics costs `capguard run`, and what it delays.

The operator serves /metrics, /readyz and /livez on the event loop that reacts to events.
This script starts the embedded API server (seeded, every engine bound and Serving) and
`capguard run --driver agent --heartbeat-timeout 0 --no-leader-election`, the way
`bench_operator.py` does (its helpers are imported, not copied), and at each size prints:

- the page: bytes, samples, and the bytes of one model's series;
- a scrape: its latency as the scraper sees it, and the operator's CPU per scrape (the
  process's CPU time while scraped, minus the same span unscraped, per scrape);
- the loop's lag seen from outside: /livez is answered on the operator's loop, so its
  latency, probed every `PROBE_GAP`, is how long an event would wait there — without
  scrapes, and while scraped every `--interval` seconds;
- event-to-status latency (a model's spec.replicas changed, until a watch shows its
  status current) without and with scrapes.

Scrape cost is per model (a model's gauges; engines have no series), so each size runs
`--per-model` engines per model to keep the seeding short.

    python bench/bench_scrape.py [--models 1000 5000] [--per-model 2] [--seconds 15]
                                 [--interval 1.0] [--samples 30]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import pathlib
import sys
import tempfile
import time
from typing import Final

import aiohttp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_operator as bench  # a sibling script, not a package

PROBE_GAP: Final = 0.01
TICKS: Final = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Span:
    """One measured stretch: with or without scrapes."""

    livez_ms: list[float]
    scrape_ms: list[float]
    cpu_seconds: float
    seconds: float
    event_ms: list[float]


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


async def timed_get(session: aiohttp.ClientSession, url: str) -> tuple[float, bytes]:
    sent = time.perf_counter()
    async with session.get(url) as response:
        body = await response.read()
        response.raise_for_status()
    return (time.perf_counter() - sent) * 1000, body


async def probe(session: aiohttp.ClientSession, url: str, taken: list[float],
                stop: asyncio.Event) -> None:
    while not stop.is_set():
        taken.append((await timed_get(session, url))[0])
        await asyncio.sleep(PROBE_GAP)


async def scrape(session: aiohttp.ClientSession, url: str, taken: list[float],
                 stop: asyncio.Event, *, interval: float) -> None:
    next_at = time.perf_counter()
    while not stop.is_set():
        taken.append((await timed_get(session, url))[0])
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))


async def span(session: aiohttp.ClientSession, operator: bench.Operator, url: str,
               models: bench.Models, *, seconds: float, interval: float | None,
               candidates: list[int], samples: int) -> Span:
    base = f"http://127.0.0.1:{operator.metrics_port}"
    stop = asyncio.Event()
    livez: list[float] = []
    scrapes: list[float] = []
    cpu0, started = cpu_seconds(operator.process.pid), time.perf_counter()
    tasks = [asyncio.create_task(probe(session, f"{base}/livez", livez, stop))]
    if interval is not None:
        tasks.append(asyncio.create_task(
            scrape(session, f"{base}/metrics", scrapes, stop, interval=interval)))
    events = bench.latency(session, url, models, candidates=candidates, samples=samples)
    event_ms, _ = await asyncio.gather(events, asyncio.sleep(seconds))
    stop.set()
    await asyncio.gather(*tasks)
    return Span(livez, scrapes, cpu_seconds(operator.process.pid) - cpu0,
                time.perf_counter() - started, event_ms)


def page_shape(page: bytes, models: int) -> tuple[int, float]:
    """(samples on the page, bytes of one model's series)."""
    lines = [line for line in page.splitlines() if line and not line.startswith(b"#")]
    per_model = sum(len(line) + 1 for line in lines if line.startswith(b"capguard_model_"))
    return len(lines), per_model / models


def ms(values: list[float], q: float) -> str:
    return f"{bench.percentile(values, q):.1f}" if values else "n/a"


async def one_size(workdir: pathlib.Path, *, models: int, per_model: int, seconds: float,
                   interval: float, samples: int) -> list[tuple[str, str]]:
    server = bench.Server(workdir, engines=models * per_model, models=models, state="serving")
    rows: list[tuple[str, str]] = []
    try:
        connector = aiohttp.TCPConnector(limit=16)
        async with aiohttp.ClientSession(connector=connector) as session, \
                bench.following(session, server.url) as watched:
            operator = bench.Operator(server, driver="agent")
            try:
                await operator.wait_metric(session, "capguard_reconcile_duration_seconds_count",
                                           lambda v: v >= 1, timeout=180)
                await watched.until(watched.all_current, timeout=180)
                await asyncio.sleep(2)
                page_url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
                _, page = await timed_get(session, page_url)
                count, model_bytes = page_shape(page, models)
                half = models // 2
                quiet = await span(session, operator, server.url, watched, seconds=seconds,
                                   interval=None, candidates=list(range(half)), samples=samples)
                busy = await span(session, operator, server.url, watched, seconds=seconds,
                                  interval=interval, candidates=list(range(half, models)),
                                  samples=samples)
            finally:
                operator.stop()
    finally:
        server.stop()
    idle_cpu = quiet.cpu_seconds / quiet.seconds
    per_scrape = (busy.cpu_seconds - idle_cpu * busy.seconds) / max(1, len(busy.scrape_ms))
    rows += [
        ("page size", f"{len(page) / 1024:,.0f} KiB, {count:,} samples"),
        ("one model's series", f"{model_bytes:.0f} B"),
        ("scrape latency p50 / max", f"{ms(busy.scrape_ms, 50)} / {ms(busy.scrape_ms, 100)} ms"),
        ("operator CPU per scrape", f"{per_scrape * 1000:.0f} ms"),
        ("operator CPU per model per scrape", f"{per_scrape * 1e6 / models:.1f} us"),
        ("/livez p50 / p99 / max, no scrapes",
         f"{ms(quiet.livez_ms, 50)} / {ms(quiet.livez_ms, 99)} / {ms(quiet.livez_ms, 100)} ms"),
        (f"/livez p50 / p99 / max, scraped every {interval:g}s",
         f"{ms(busy.livez_ms, 50)} / {ms(busy.livez_ms, 99)} / {ms(busy.livez_ms, 100)} ms"),
        ("event-to-status p50 / p99, no scrapes",
         f"{ms(quiet.event_ms, 50)} / {ms(quiet.event_ms, 99)} ms"),
        (f"event-to-status p50 / p99, scraped every {interval:g}s",
         f"{ms(busy.event_ms, 50)} / {ms(busy.event_ms, 99)} ms"),
    ]
    return rows


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, nargs="+", default=[1_000, 5_000])
    parser.add_argument("--per-model", type=int, default=2, help="engines per model")
    parser.add_argument("--seconds", type=float, default=15.0, help="each span, at least")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes")
    parser.add_argument("--samples", type=int, default=30, help="event samples per span")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="capguard-bench-") as workdir:
        for models in args.models:
            rows = await one_size(pathlib.Path(workdir), models=models, per_model=args.per_model,
                                  seconds=args.seconds, interval=args.interval,
                                  samples=args.samples)
            print(f"\n/metrics of capguard run, {models:,} models / "
                  f"{models * args.per_model:,} engines, {os.cpu_count()} CPUs")
            width = max(len(name) for name, _ in rows)
            for name, value in rows:
                print(f"  {name.ljust(width)}  {value}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main()))
