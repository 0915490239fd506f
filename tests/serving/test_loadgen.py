"""`capguard load` against a real gateway process, and its schedule and recording.

The load is open-loop: its arrivals are fixed by a seeded schedule before the first
request, so each second's count is compared exactly with the schedule's.
"""

from __future__ import annotations

import asyncio
import json
import math
import pathlib
import sys
import time
from collections.abc import AsyncIterator, Mapping

import pytest

from capguard.serving import loadgen
from e2e import harness

from .test_gateway import World, eventually, started_world


@pytest.fixture
async def world(tmp_path: pathlib.Path) -> AsyncIterator[World]:
    async with started_world(tmp_path) as found:
        yield found


def per_second(arrivals: tuple[float, ...], seconds: int) -> list[int]:
    counts = [0] * seconds
    for moment in arrivals:
        counts[int(moment)] += 1
    return counts


async def test_counts_add_up_and_follow_the_seeded_schedule(world: World) -> None:
    upstream = await world.upstream("u1")
    rates = {"llama": 40.0, "qwen": 15.0}
    seen: list[tuple[int, Mapping[str, loadgen.Second]]] = []
    async with world.gateway() as gateway:
        await world.engines.serving("e1", model="llama", endpoint=upstream.url)
        await eventually(lambda: gateway.routable(world.session, "llama"))
        recording = await loadgen.run(gateway=gateway.url, rate=rates, models=list(rates),
                                      duration=3, seed=7,
                                      on_second=lambda s, by_model: seen.append((s, by_model)))
    plan = loadgen.schedule(rate=rates, models=list(rates), duration=3, seed=7)
    for model in rates:
        assert [s.sent for s in recording.seconds[model]] == per_second(plan[model], 3)
        for second in recording.seconds[model]:
            assert second.sent == second.succeeded + sum(second.failed.values())
    assert recording.failed("llama") == {} and recording.succeeded("qwen") == 0
    assert recording.failed("qwen") == {"503": recording.sent("qwen")}
    assert len(upstream.seen) == recording.succeeded("llama") == len(plan["llama"])
    assert recording.success_rate() == len(plan["llama"]) / recording.sent()
    assert [s for s, _ in seen] == [0, 1, 2]
    assert all(by_model == {m: recording.seconds[m][s] for m in rates} for s, by_model in seen)


async def test_requests_over_the_in_flight_bound_are_counted_as_overload(world: World) -> None:
    slow = await world.upstream("slow", delay=3.0)  # still answering when the run has ended
    async with world.gateway() as gateway:
        await world.engines.serving("e1", model="llama", endpoint=slow.url)
        await eventually(lambda: gateway.routable(world.session, "llama"))
        recording = await loadgen.run(gateway=gateway.url, rate={"llama": 30.0},
                                      models=["llama"], duration=1, seed=3, max_in_flight=1)
    sent = len(loadgen.schedule(rate={"llama": 30.0}, models=["llama"], duration=1, seed=3)
               ["llama"])
    assert (recording.sent(), recording.succeeded()) == (sent, 1)
    assert recording.failed() == {loadgen.OVERLOAD: sent - 1}


async def test_an_unreachable_or_silent_gateway_is_counted_not_waited_for(world: World) -> None:
    silent = await world.upstream("silent", delay=2.5)
    async with world.gateway() as gateway:
        await world.engines.serving("e1", model="llama", endpoint=silent.url)
        await eventually(lambda: gateway.routable(world.session, "llama"))
        timed_out = await loadgen.run(gateway=gateway.url, rate={"llama": 10.0},
                                      models=["llama"], duration=1, seed=1, timeout=0.5)
    unreachable = await loadgen.run(gateway="http://127.0.0.1:1", rate={"llama": 10.0},
                                    models=["llama"], duration=1, seed=1)
    assert timed_out.failed() == {loadgen.TIMEOUT: timed_out.sent()} and timed_out.sent()
    assert unreachable.failed() == {loadgen.CONNECT: unreachable.sent()}


def test_the_schedule_is_seeded_poisson_at_the_rate_of_each_second() -> None:
    def rate(model: str, second: float) -> float:
        return 0.0 if second < 2 else 500.0

    plan = loadgen.schedule(rate=rate, models=["a", "b"], duration=12, seed=5)
    again = loadgen.schedule(rate=rate, models=["b"], duration=12, seed=5)
    other = loadgen.schedule(rate=rate, models=["b"], duration=12, seed=6)
    assert plan["b"] == again["b"] != other["b"]  # a model's arrivals are its own
    assert all(2 <= t < 12 for t in plan["a"]) and list(plan["a"]) == sorted(plan["a"])
    expected = 500 * 10  # a Poisson count: standard deviation sqrt(5000) ~ 71; 6 of them
    assert abs(len(plan["a"]) - expected) < 6 * math.sqrt(expected)


def test_success_rate_per_model_and_per_minute() -> None:
    def second(index: int, *, sent: int, ok: int) -> loadgen.Second:
        return loadgen.Second(second=index, sent=sent, succeeded=ok,
                              failed={"503": sent - ok} if sent > ok else {},
                              latency_p50=None, latency_p99=None)

    seconds = {"llama": tuple(second(i, sent=10, ok=10 if i < 60 else 5) for i in range(90)),
               "qwen": tuple(second(i, sent=0, ok=0) for i in range(90))}
    recording = loadgen.Recording(seconds)
    assert recording.success_rate_by_minute("llama") == (1.0, 0.5)
    assert recording.success_rate_by_minute("qwen") == (None, None)
    assert recording.success_rate() == (600 + 150) / 900
    assert recording.failed() == {"503": 150}
    assert recording.summary()["models"]["qwen"]["success_rate"] is None


async def test_the_load_command_prints_each_second_and_a_summary(world: World) -> None:
    upstream = await world.upstream("u1")
    async with world.gateway() as gateway:
        await world.engines.serving("e1", model="llama", endpoint=upstream.url)
        await eventually(lambda: gateway.routable(world.session, "llama"))
        done = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "capguard.serving.loadgen", f"--gateway={gateway.url}",
            "--rate=llama=20", "--rate=qwen=5", "--duration=2s", "--seed=4", "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=harness.clean_env())
        stdout, stderr = await done.communicate()
    assert done.returncode == 0, stderr.decode()
    lines = [json.loads(line) for line in stdout.decode().splitlines()]
    started, seconds, summary = lines[0]["started"], lines[1:-1], lines[-1]["summary"]
    assert abs(started - time.time()) < 60  # the wall clock its second 0 began at
    assert [(line["second"], line["model"]) for line in seconds] == [
        (0, "llama"), (0, "qwen"), (1, "llama"), (1, "qwen")]
    assert summary["sent"] == sum(line["sent"] for line in seconds)
    assert summary["models"]["llama"]["succeeded"] == len(upstream.seen)
    assert summary["models"]["qwen"]["failed"] == {"503": summary["models"]["qwen"]["sent"]}


async def test_a_bad_rate_is_one_line() -> None:
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "capguard.serving.loadgen", "--gateway=http://127.0.0.1:1",
        "--rate=llama", stderr=asyncio.subprocess.PIPE, env=harness.clean_env())
    _, stderr = await done.communicate()
    lines = stderr.decode().strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "MODEL=RPS" in lines[0], lines
