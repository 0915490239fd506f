"""The writer's checks, right before each request, against the embedded API server:
fencing on the Lease, freshness of the decision, and backoff after an unwell API."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import aiohttp
import pytest
from operator_harness import NAMESPACE, Kube

from capguard import metrics as metrics_
from capguard.core import fleet as fleet_
from capguard.core import pipeline, specs
from capguard.handlers import index, narrator, writer
from capguard.kube import client, events, leases


async def _engine(kube: Kube, name: str) -> specs.Engine:
    await kube.create(client.ENGINES, {"kind": "InferenceEngine", "metadata": {"name": name},
                                       "spec": {"pool": "p"}})
    return specs.parse_engine(await kube.get(client.ENGINES, name))


def _assign(engine: specs.Engine) -> pipeline.Execution:
    found = fleet_.Fleet.of(engines=[engine], models=[specs.ModelSpec("chat", replicas=1)])
    (result,) = [pipeline.Pipeline().step(pipeline.Observed(found), 0.0)]
    (execution,) = result.executions
    return execution


def _writer(api: client.Api, is_leader: leases.LeaderElector | None = None,
            **kwargs: object) -> writer.Writer:
    check = is_leader.check if is_leader is not None else (lambda: True)
    return writer.Writer(api=api, index=index.Index(), is_leader=check, concurrency=1,
                         **kwargs)  # type: ignore[arg-type]


async def test_a_leader_frozen_past_its_lease_writes_nothing_when_it_thaws(kube: Kube) -> None:
    """The lease check is made after the wait for a slot, by the replica's own clock."""
    clock = [0.0]
    changes: list[bool] = []
    config = leases.LeaseConfig(namespace=NAMESPACE, identity="a", duration=15, renew=5)
    elector = leases.LeaderElector(api=kube.api, config=config, clock=lambda: clock[0],
                                   on_change=changes.append)
    assert await elector.try_acquire_or_renew() and elector.check()
    engine = await _engine(kube, "e1")
    execution = _assign(engine)
    write = _writer(kube.api, elector, monotonic=lambda: clock[0])
    async with write._slots:  # the one slot is busy: the write queues behind it ...
        pending = asyncio.ensure_future(write.action(NAMESPACE, execution, engine=engine,
                                                     now=0.0, triaged_at=clock[0]))
        await asyncio.sleep(0.05)
        clock[0] += 11  # ... and the process freezes past its renew deadline (10 s)
    done = await pending
    assert done.outcome is writer.Outcome.NOT_LEADING and write.sent == 0
    assert changes == [True, False]  # it said so: the elector's on_change (log, Event, 0)
    after = specs.parse_engine(await kube.get(client.ENGINES, "e1"))
    assert after.spec.model_ref is None and after.resource_version == engine.resource_version


async def test_an_action_decided_too_long_ago_is_not_written(kube: Kube) -> None:
    engine = await _engine(kube, "e1")
    write = _writer(kube.api, max_write_delay=2.0)
    late = await write.action(NAMESPACE, _assign(engine), engine=engine, now=0.0,
                              triaged_at=time.monotonic() - 3.0)
    assert late.outcome is writer.Outcome.LATE and write.sent == 0
    fresh = await write.action(NAMESPACE, _assign(engine), engine=engine, now=0.0,
                               triaged_at=time.monotonic())
    assert fresh.outcome is writer.Outcome.EXECUTED and fresh.done is not None
    assert fresh.done.engine.spec.model_ref == "chat"


async def test_after_a_failed_write_the_writer_waits_out_the_backoff() -> None:
    """A refused connection (the API server is down) is transient: the next writes wait,
    unsent, until the backoff has passed; a write after it goes out again."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens here once the socket closes
    clock = [100.0]
    async with aiohttp.ClientSession() as session:
        api = client.Api(request_timeout=2.0)
        api.connect(session=session, server=f"http://127.0.0.1:{port}")
        write = _writer(api, monotonic=lambda: clock[0], jitter=lambda: 0.0)
        engine = specs.Engine("e1", specs.EngineSpec(pool="p"), resource_version="1")
        first = await write.action(NAMESPACE, _assign(engine), engine=engine, now=0.0,
                                   triaged_at=clock[0])
        assert first.outcome is writer.Outcome.FAILED and first.transient
        assert write.sent == 1 and write.troubled
        held = [await write.status(client.MODELS, _meta(), {"desired": 1}) for _ in range(5)]
        assert held == [False] * 5 and write.sent == 1  # nothing sent while backing off
        again = await write.action(NAMESPACE, _assign(engine), engine=engine, now=0.0,
                                   triaged_at=clock[0])
        assert again.transient and again.retry_after == 0.5  # half of the first 1 s step
        clock[0] += 0.6
        await write.status(client.MODELS, _meta(), {"desired": 1})
        assert write.sent == 2  # tried again after the wait (and failed: still down)


def _meta() -> writer.records.Meta:
    return writer.records.Meta(NAMESPACE, "chat", "", 1)


def test_actions_decided_too_long_ago_are_told_in_one_line(
        caplog: pytest.LogCaptureFixture) -> None:
    # A pass of thousands of assigns that the server cannot take in time: one line, not
    # one an engine (a 50,000-engine start wrote thousands).
    told = narrator.Narrator(recorder=events.Recorder(api=client.Api(), instance="test"),
                             metrics=metrics_.Metrics(), leading=True)
    engines = [specs.parse_engine({"metadata": {"name": f"e{i}", "resourceVersion": "1"},
                                   "spec": {"pool": "p"}}) for i in range(8)]
    written = [writer.Written(_assign(e), writer.Outcome.LATE, None) for e in engines]
    with caplog.at_level(logging.INFO, logger="capguard"):
        told.writes(written, metas=narrator.Metas(NAMESPACE, lambda: ()))
    assert [r.getMessage() for r in caplog.records] == [
        f"8 actions in namespace {NAMESPACE} not written: decided too long ago; re-planning "
        "(engines e0, e1, e2, e3, e4, and more)."]
