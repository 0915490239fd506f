"""The operator end to end against the embedded API server: what a person would see."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any

import pytest
from operator_harness import NAMESPACE, Kube, StartOperator, condition, eventually, metric

from capguard import metrics as metrics_
from capguard.core import clock, planner
from capguard.handlers import narrator, reconcile
from capguard.kube import client, events, heartbeats


async def test_engines_are_assigned_and_reach_serving(
    kube: Kube, start_operator: StartOperator
) -> None:
    await kube.engines("e0", "e1", "e2", "e3")
    await kube.model("chat", 3, minAvailable=0)
    started = await start_operator()

    async def serving() -> bool:
        phases = await kube.phases()
        return sorted(phases.values()).count("Serving") == 3

    await eventually(serving)
    model = await eventually(lambda: _model_serving(kube, "chat", 3))
    status = model["status"]
    assert (status["desired"], status["serving"], status["drift"]) == (3, 3, 0)
    assert status["observedGeneration"] == model["metadata"]["generation"]
    assert condition(model, "Available")["status"] == "True"
    assert condition(model, "DriftDetected")["status"] == "False"
    engines = {e["metadata"]["name"]: e for e in await kube.items(client.ENGINES)}
    bound = [e for e in engines.values() if e["spec"].get("modelRef") == "chat"]
    assert len(bound) == 3
    for engine in engines.values():
        # Kopf writes nothing on an engine: no finalizer, no progress or diff-base annotation.
        assert not engine["metadata"].get("finalizers")
        assert set(engine["metadata"].get("annotations") or {}) <= {"capguard.dev/action-id"}
    for engine in bound:
        action = engine["status"]["lastAction"]
        assert engine["metadata"]["annotations"]["capguard.dev/action-id"] == action["id"]
        assert action["type"] == "Assign"
    text = await started.metrics()
    assert metric(text, "capguard_model_serving_units", namespace="default", model="chat") == 3
    assert metric(text, "capguard_model_serving_ratio", namespace="default", model="chat") == 1
    assert metric(text, "capguard_actions_total", type="assign", result="executed") == 3
    assert metric(text, "capguard_leader") == 1
    assert (metric(text, "capguard_reconcile_duration_seconds_count") or 0) > 0


async def test_with_agents_the_operator_binds_records_and_counts_only_what_is_heard(
    kube: Kube, start_operator: StartOperator
) -> None:
    """--driver agent: the operator moves no phase; it counts what agents report, while
    their heartbeats are fresh (an agent played here by hand)."""
    await kube.engines("e0", "e1")
    await kube.model("chat", 1, minAvailable=0)

    async def heartbeat(name: str, **status: str) -> None:
        now = clock.precise_timestamp(time.time())
        await kube.patch(client.ENGINES, name, {"status": {**status, "lastHeartbeatTime": now}},
                         subresource="status")

    for name in ("e0", "e1"):
        await heartbeat(name, phase="Idle")
    await start_operator(engine_driver="agent", heartbeat_timeout=1.5)

    async def recorded() -> list[dict[str, Any]]:
        return [e for e in await kube.items(client.ENGINES)
                if (e.get("status") or {}).get("lastAction")]

    [engine] = await eventually(recorded)
    name = engine["metadata"]["name"]
    assert engine["spec"]["modelRef"] == "chat"
    assert engine["status"]["phase"] == "Idle"  # the agent's to move, not the operator's
    await heartbeat(name, phase="Serving", model="chat", since="2026-01-01T00:00:00Z")
    await eventually(lambda: _model_serving(kube, "chat", 1))
    # The agent falls silent: past the bound its engine serves nothing, whatever it said.
    await eventually(lambda: _model_serving(kube, "chat", 0), timeout=10)


async def test_with_agents_an_engine_is_heard_through_its_lease_alone(
    kube: Kube, start_operator: StartOperator
) -> None:
    """An agent heartbeats on its engine's Lease (played here by hand), never on the
    engine's status: the operator counts the engine while the Lease is renewed, marks it
    unheard once renewals stop, and hears it again at the next renewal. A Lease without
    the heartbeat label says nothing."""
    await kube.engines("e0", "e1")
    await kube.model("chat", 1, minAvailable=0)
    for name in ("e0", "e1"):
        await kube.patch(client.ENGINES, name, {"status": {"phase": "Idle"}},
                         subresource="status")
    e0 = await kube.get(client.ENGINES, "e0")
    await kube.api.create(client.LEASES, namespace=NAMESPACE, body=heartbeats.lease(
        e0, holder="by-hand", interval=0.3, now=time.time()))
    unlabelled = heartbeats.lease(await kube.get(client.ENGINES, "e1"), holder="by-hand",
                                  interval=0.3, now=time.time())
    unlabelled["metadata"]["labels"] = {}
    await kube.api.create(client.LEASES, namespace=NAMESPACE, body=unlabelled)
    renewing = asyncio.Event()

    async def renew() -> None:
        while True:
            await renewing.wait()
            for name in ("e0", "e1"):
                await kube.patch(client.LEASES, name, heartbeats.renewal(
                    holder="by-hand", interval=0.3, now=time.time()))
            await asyncio.sleep(0.3)

    renewing.set()
    renewals = asyncio.create_task(renew())
    try:
        await start_operator(engine_driver="agent", heartbeat_timeout=1.5)
        # Only e0 is heard (e1's Lease lacks the label), so only e0 is given the model.
        bound = await eventually(lambda: _bound(kube, "chat"))
        assert bound == ["e0"]
        await kube.patch(client.ENGINES, "e0", {"status": {
            "phase": "Serving", "model": "chat", "since": "2026-01-01T00:00:00Z"}},
            subresource="status")
        await eventually(lambda: _model_serving(kube, "chat", 1))
        written = (await kube.get(client.ENGINES, "e0"))["metadata"]["resourceVersion"]
        await asyncio.sleep(2.0)  # past the bound, heard through the Lease all along
        assert (await kube.get(client.MODELS, "chat"))["status"]["serving"] == 1
        assert (await kube.get(client.ENGINES, "e0"))["metadata"]["resourceVersion"] == written
        renewing.clear()
        await eventually(lambda: _model_serving(kube, "chat", 0), timeout=10)
        ready = condition(await kube.get(client.ENGINES, "e0"), "Ready")
        assert (ready["status"], ready["reason"]) == ("Unknown", heartbeats.EXPIRED)
        renewing.set()  # the agent is back: heard at its next renewal, nothing else written
        await eventually(lambda: _model_serving(kube, "chat", 1), timeout=10)
        # A Lease deleted vouches no more at once, not when its last renewal runs out.
        renewing.clear()
        await asyncio.sleep(0.35)  # the renewal under way is written
        await kube.patch(client.LEASES, "e0", heartbeats.renewal(
            holder="by-hand", interval=0.3, now=time.time()))
        await kube.api.request("DELETE", client.LEASES.path(namespace=NAMESPACE, name="e0"))
        await eventually(lambda: _model_serving(kube, "chat", 0), timeout=1.0)
    finally:
        renewals.cancel()


async def test_with_agents_an_engine_created_again_is_not_heard_on_the_old_ones_lease(
    kube: Kube, start_operator: StartOperator
) -> None:
    """An engine deleted and created again keeps its name, not its uid. The earlier
    engine's Lease lives on until the garbage collector deletes it, and an agent that
    lives on may renew it meanwhile (played here by hand): it vouches for nothing until
    the new engine's agent takes it over. So the engine with no agent of its own is given
    no model, whether it came back before the operator started or while it runs."""
    await kube.engines("e0", "e1")
    await kube.model("chat", 2, minAvailable=0)
    for name in ("e0", "e1"):
        await kube.patch(client.ENGINES, name, {"status": {"phase": "Idle"}},
                         subresource="status")
    await kube.api.create(client.LEASES, namespace=NAMESPACE, body=heartbeats.lease(
        await kube.get(client.ENGINES, "e1"), holder="by-hand", interval=0.3, now=time.time()))
    await _earlier_engines_lease(kube, "e0")

    async def renew() -> None:
        while True:
            for name in ("e0", "e1"):
                with contextlib.suppress(client.NotFound):  # e0's, while it is gone
                    await kube.patch(client.LEASES, name, heartbeats.renewal(
                        holder="by-hand", interval=0.3, now=time.time()))
            await asyncio.sleep(0.3)

    renewals = asyncio.create_task(renew())
    try:
        await start_operator(engine_driver="agent", heartbeat_timeout=1.5)
        await eventually(lambda: _is(_bound(kube, "chat"), ["e1"]))
        await asyncio.sleep(1.0)  # passes go by, the earlier engine's Lease renewed
        assert await _bound(kube, "chat") == ["e1"]
        await _take_over(kube, "e0")
        await eventually(lambda: _is(_bound(kube, "chat"), ["e0", "e1"]))

        # While the operator runs: deleted (its Lease with it), and back before the
        # garbage collector deleted the earlier engine's Lease.
        await kube.api.request("DELETE", client.ENGINES.path(namespace=NAMESPACE, name="e0"))
        await eventually(lambda: _is(_names(kube, client.LEASES), ["e1"]))
        await _earlier_engines_lease(kube, "e0")
        await kube.engines("e0")
        await kube.patch(client.ENGINES, "e0", {"status": {"phase": "Idle"}},
                         subresource="status")
        await asyncio.sleep(1.0)
        assert await _bound(kube, "chat") == ["e1"]
        await _take_over(kube, "e0")
        await eventually(lambda: _is(_bound(kube, "chat"), ["e0", "e1"]))
    finally:
        renewals.cancel()


async def _earlier_engines_lease(kube: Kube, name: str) -> None:
    """The Lease of an earlier engine of that name (another uid), renewed just now."""
    earlier = {"apiVersion": client.ENGINES.api_version,
               "metadata": {"name": name, "uid": f"earlier-{name}"}}
    await kube.api.create(client.LEASES, namespace=NAMESPACE, body=heartbeats.lease(
        earlier, holder="by-hand", interval=0.3, now=time.time()))


async def _take_over(kube: Kube, name: str) -> None:
    """The engine's agent's first renewal of its Lease, which makes it this engine's."""
    await kube.patch(client.LEASES, name, heartbeats.renewal(
        holder="by-hand", interval=0.3, now=time.time(), acquired=True,
        engine=await kube.get(client.ENGINES, name)))


async def _names(kube: Kube, resource: client.Resource) -> list[str]:
    return sorted(found["metadata"]["name"] for found in await kube.items(resource))


async def _bound(kube: Kube, model: str) -> list[str] | None:
    names = sorted(e["metadata"]["name"] for e in await kube.items(client.ENGINES)
                   if (e.get("spec") or {}).get("modelRef") == model)
    return names or None


async def _model_serving(kube: Kube, name: str, serving: int) -> dict[str, Any] | None:
    model = await kube.get(client.MODELS, name)
    return model if (model.get("status") or {}).get("serving") == serving else None


async def test_a_model_status_progress_is_written_at_most_once_a_second(
    kube: Kube, start_operator: StartOperator
) -> None:
    """Four engines start serving 50 ms apart (agents played by hand): the model's status
    is written for the first at once; the next two are progress within the second and
    wait; the fourth changes the model's conditions (Converged), so it is written at
    once, with all four. Not one write per engine."""
    names = ("e0", "e1", "e2", "e3")
    await kube.engines(*names)
    await kube.model("chat", 4, minAvailable=0)
    for name in names:
        await kube.patch(client.ENGINES, name, {"status": {"phase": "Idle"}},
                         subresource="status")
    await start_operator(engine_driver="agent", heartbeat_timeout=0)

    async def bound() -> bool:
        engines = await kube.items(client.ENGINES)
        return sum(1 for e in engines if (e.get("status") or {}).get("lastAction")) == 4

    await eventually(bound)
    await eventually(lambda: _model_serving(kube, "chat", 0))
    await asyncio.sleep(1.1)  # the writes of the binding are behind us
    since = (await kube.get(client.MODELS, "chat"))["metadata"]["resourceVersion"]
    writes: list[tuple[float, int]] = []  # (when, serving) of each status write

    async def follow() -> None:
        async for event in kube.api.watch(client.MODELS, namespace=NAMESPACE,
                                          resource_version=since):
            if event["type"] == "MODIFIED":
                writes.append((time.monotonic(), event["object"]["status"]["serving"]))

    watching = asyncio.create_task(follow())
    try:
        for name in names:
            await kube.patch(client.ENGINES, name, {"status": {
                "phase": "Serving", "model": "chat", "since": "2026-01-01T00:00:00Z"}},
                subresource="status")
            await asyncio.sleep(0.05)
        await eventually(lambda: _model_serving(kube, "chat", 4), timeout=5)
        await asyncio.sleep(0.3)  # nothing more comes
    finally:
        watching.cancel()
    assert [serving for _, serving in writes] == [1, 4], writes


async def test_a_steady_fleet_costs_no_writes(kube: Kube, start_operator: StartOperator) -> None:
    await kube.engines("e0", "e1")
    await kube.model("chat", 2, minAvailable=0)
    await kube.breaker("pause")
    started = await start_operator()
    await eventually(lambda: _model_serving(kube, "chat", 2))
    await eventually(lambda: _all_converged(kube))
    before = started.handles.reconciler.passes
    versions = {e["metadata"]["name"]: e["metadata"]["resourceVersion"]
                for e in await kube.items(client.ENGINES)}
    model_version = (await kube.get(client.MODELS, "chat"))["metadata"]["resourceVersion"]
    await eventually(lambda: _passes_since(started, before, 5))
    after = {e["metadata"]["name"]: e["metadata"]["resourceVersion"]
             for e in await kube.items(client.ENGINES)}
    assert after == versions
    assert (await kube.get(client.MODELS, "chat"))["metadata"]["resourceVersion"] == model_version


async def _all_converged(kube: Kube) -> bool:
    model = await kube.get(client.MODELS, "chat")
    return condition(model, "Progressing").get("reason") == "Converged"


async def _passes_since(started: Any, before: int, count: int) -> bool:
    return bool(started.handles.reconciler.passes >= before + count)


class RacingApi(client.Api):
    """The API as the operator sees it, with a real concurrent writer: right before the
    first action's PATCH, another request relabels the engine (a new resourceVersion)."""

    def __init__(self) -> None:
        super().__init__()
        self.raced: list[str] = []

    async def merge_patch(self, resource: client.Resource, *, namespace: str | None, name: str,
                          patch: Any, subresource: str | None = None) -> client.Body:
        is_action = (resource is client.ENGINES and subresource is None
                     and "resourceVersion" in (patch.get("metadata") or {}))
        if is_action and not self.raced:
            self.raced.append(name)
            await super().merge_patch(client.ENGINES, namespace=namespace, name=name,
                                      patch={"metadata": {"labels": {"x": "y"}}})
        return await super().merge_patch(resource, namespace=namespace, name=name, patch=patch,
                                         subresource=subresource)


async def test_a_stale_action_loses_with_409_and_is_replanned(
    kube: Kube, start_operator: StartOperator
) -> None:
    await kube.engines("e0")
    await kube.model("chat", 1, minAvailable=0)
    api = RacingApi()
    started = await start_operator(api=lambda: api)
    await eventually(lambda: _model_serving(kube, "chat", 1))
    assert api.raced == ["e0"]
    text = await started.metrics()
    assert metric(text, "capguard_actions_total", type="assign", result="conflict") == 1
    assert metric(text, "capguard_actions_total", type="assign", result="executed") == 1
    conflicts = await eventually(lambda: kube.events("ActionConflict"))
    assert conflicts[0]["involvedObject"]["name"] == "e0"
    engine = await kube.get(client.ENGINES, "e0")
    assert engine["metadata"]["labels"] == {"x": "y"}  # the other writer's change survived


async def test_a_breaker_holds_and_a_long_pause_is_refused_on_release(
    kube: Kube, start_operator: StartOperator
) -> None:
    await kube.breaker("pause", open=True, pauseThreshold="1s", maxBatchAfterPause=1,
                       halfOpenProbes=1)
    await kube.engines("e0", "e1", "e2")
    await kube.model("chat", 3, minAvailable=0, maxUnavailable=3)
    started = await start_operator()

    async def held() -> dict[str, Any] | None:
        found = await kube.get(client.BREAKERS, "pause")
        status = found.get("status") or {}
        ready = status.get("heldActions") == 3 and (status.get("releasePlan") or {}).get("size")
        return found if ready else None

    breaker = await eventually(held)
    assert breaker["status"]["state"] == "Open"
    assert breaker["status"]["releasePlan"]["size"] == 3  # published before anything runs
    assert condition(breaker, "Paused")["status"] == "True"
    assert all(not e["spec"].get("modelRef") for e in await kube.items(client.ENGINES))
    model = await kube.get(client.MODELS, "chat")
    assert condition(model, "Progressing")["reason"] == "Held"
    # A pass writes statuses before it exports the queue's metrics: wait for the pass's end.
    async def held_metric() -> str | None:
        text = await started.metrics()
        return text if metric(text, "capguard_queue_actions", state="held") == 3 else None

    text = await eventually(held_metric)
    assert metric(text, "capguard_breaker_state", namespace="default", breaker="pause",
                  state="Open") == 1
    await asyncio.sleep(1.3)  # longer than pauseThreshold (1s) since it opened (above)

    await kube.patch(client.BREAKERS, "pause", {"spec": {"open": False}})
    refused = await eventually(lambda: kube.events("BatchRefused"))
    assert "3 actions" in refused[0]["message"]
    breaker = await eventually(lambda: _with_refused_batch(kube))
    assert breaker["status"]["lastRefusedBatch"]["size"] == 3
    assert condition(breaker, "BatchRefused")["status"] == "True"
    # `kubectl describe cb pause` finds the Event by the breaker's uid.
    assert refused[0]["involvedObject"]["uid"] == breaker["metadata"]["uid"]
    assert breaker["status"]["lastRefusedBatch"]["oldestPlanAgeSeconds"] >= 1
    text = await started.metrics()
    assert metric(text, "capguard_refused_batches_total", namespace="default",
                  breaker="pause") == 1
    assert metric(text, "capguard_refusals_total", reason="PostPauseBatch") == 3
    # Re-planned from the cluster as it is now: one probe, then Closed, then the rest.
    await eventually(lambda: _model_serving(kube, "chat", 3), timeout=10)
    closed = await eventually(lambda: _breaker_state(kube, "Closed"))
    assert condition(closed, "Paused")["status"] == "False"
    reasons = {e["reason"] for e in await kube.items(client.EVENTS)}
    assert {"BreakerOpened", "BreakerHalfOpen", "BreakerClosed", "BatchRefused"} <= reasons


async def _with_refused_batch(kube: Kube) -> dict[str, Any] | None:
    found = await kube.get(client.BREAKERS, "pause")
    return found if (found.get("status") or {}).get("lastRefusedBatch") else None


async def _breaker_state(kube: Kube, state: str) -> dict[str, Any] | None:
    found = await kube.get(client.BREAKERS, "pause")
    return found if (found.get("status") or {}).get("state") == state else None


async def test_deleting_a_model_drains_its_engines_and_drops_its_series(
    kube: Kube, start_operator: StartOperator
) -> None:
    await kube.engines("e0", "e1")
    await kube.model("chat", 2, minAvailable=0, maxUnavailable=2)
    started = await start_operator()
    await eventually(lambda: _model_serving(kube, "chat", 2))
    await kube.api.request("DELETE", client.MODELS.path(namespace="default", name="chat"))

    async def drained() -> bool:
        engines = await kube.items(client.ENGINES)
        return all(not e["spec"].get("modelRef") and e["status"]["phase"] == "Idle"
                   for e in engines)

    await eventually(drained, timeout=5)
    text = await started.metrics()
    assert metric(text, "capguard_model_desired_units", model="chat") is None
    assert metric(text, "capguard_actions_total", type="drain", result="executed") == 2


async def test_a_cordoned_engine_given_up_is_drained_not_refused_as_a_reassign(
    kube: Kube, start_operator: StartOperator
) -> None:
    """`new` is allocated x, which k gives up only once its cordoned replacement y
    serves; `closed`, cordoned, is given up by `old`. Handing `closed` to `new` in x's
    place is a write the CRD's rule refuses (422), pass after pass: the operator drains
    it instead, and no action fails. Agents are played here by hand; 17 cordoned idle
    engines make the fleet-wide cap (10 %) two engines out."""
    await kube.model("k", 1, minAvailable=0)
    await kube.model("old", 0, minAvailable=0)
    await kube.model("new", 1, minAvailable=0)
    await kube.engines("x", modelRef="k")
    await kube.engines("y", modelRef="k", cordoned=True)
    await kube.engines("closed", modelRef="old", cordoned=True)
    await kube.engines(*(f"f{i:02d}" for i in range(17)), cordoned=True)

    async def report(name: str, phase: str, model: str | None = None) -> None:
        await kube.patch(client.ENGINES, name, {"status": {
            "phase": phase, "model": model, "since": clock.timestamp(time.time())}},
            subresource="status")

    for name, phase, model in (("x", "Serving", "k"), ("y", "Loading", "k"),
                               ("closed", "Serving", "old")):
        await report(name, phase, model)
    started = await start_operator(engine_driver="agent", heartbeat_timeout=0)

    async def bound(name: str) -> str | None:
        return (await kube.get(client.ENGINES, name))["spec"].get("modelRef")

    await eventually(lambda: _is(bound("closed"), None), timeout=5)
    await report("y", "Serving", "k")  # k's replacement serves: x goes to new
    await eventually(lambda: _is(bound("x"), "new"), timeout=5)

    async def counted() -> str | None:  # the write lands before its answer is counted
        text = await started.metrics()
        done = metric(text, "capguard_actions_total", type="reassign", result="executed")
        return text if done else None

    text = await eventually(counted, timeout=5)
    assert metric(text, "capguard_actions_total", type="drain", result="executed") == 1
    assert metric(text, "capguard_actions_total", type="reassign", result="executed") == 1
    assert (metric(text, "capguard_actions_total", type="reassign", result="failed") or 0) == 0


async def _is(found: Awaitable[object], wanted: object) -> bool:
    return await found == wanted


async def test_every_action_is_one_readable_log_line(
    kube: Kube, start_operator: StartOperator, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="capguard")
    await kube.engines("e0", "e1")
    await kube.model("chat", 2, minAvailable=0)
    await start_operator()

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if "Assign to chat executed (action " in r.getMessage()]

    lines = await eventually(lambda: _async(len(logged()) == 2 and logged()))
    assert sorted(line.split(" (action ")[0] for line in lines) == [
        "Engine default/e0: Assign to chat executed", "Engine default/e1: Assign to chat executed"]
    def first_pass() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.getMessage().startswith("First reconcile pass done")]

    first = await eventually(lambda: _async(first_pass()))
    assert "actions executed" in first[0] and "PassResult(" not in first[0]


def test_intents_read_as_a_person_would_say_them() -> None:
    say = narrator.describe
    assert say(planner.Intent(planner.ActionType.ASSIGN, "e", "m")) == "Assign to m"
    assert say(planner.Intent(planner.ActionType.DRAIN, "e", None, "m")) == "Drain from m"
    assert say(planner.Intent(planner.ActionType.REASSIGN, "e", "b", "a")) == (
        "Reassign from a to b")
    assert say(planner.Intent(planner.ActionType.REASSIGN, "e", "m", "m")) == (
        "Reassign (refresh) m")


async def _async(value: Any) -> Any:
    return value


async def test_while_passes_take_long_a_models_progress_waits_as_long_as_a_pass(
    kube: Kube,
) -> None:
    """In a catch-up, full passes take seconds and every one moves engines of most models:
    progress is written about once a pass, not once a second (a third of the server's
    writes in a 10,000-engine start). Once passes are quick again, once a second."""
    config = reconcile.Config()
    reconciler = reconcile.Reconciler(
        api=kube.api, recorder=events.Recorder(api=kube.api, instance="test"),
        metrics=metrics_.Metrics(), config=config, is_leader=lambda: True)
    key = (NAMESPACE, "chat")
    reconciler._status_written[key] = time.monotonic() - 1.5 * config.model_status_interval
    assert not reconciler._defer(key)  # quick passes: a second is up
    reconciler._pass_took = 3 * config.model_status_interval  # the last pass took longer
    assert reconciler._defer(key)
    assert reconciler._deferred[key] == pytest.approx(
        reconciler._status_written[key] + reconciler._pass_took)
