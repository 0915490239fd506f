"""Bad specs, restarts and two replicas: the operator never crash-loops, never repeats an
executed action, and only one replica acts."""

from __future__ import annotations

import asyncio
from typing import Any

from operator_harness import Kube, StartOperator, condition, eventually, metric

from capguard.kube import client

CRDS = client.Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")


def _without_cel(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_cel(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    if isinstance(node, list):
        return [_without_cel(v) for v in node]
    return node


async def test_a_bad_spec_is_a_condition_and_one_event_not_a_crash(
    kube: Kube, start_operator: StartOperator
) -> None:
    # A cluster without CEL (Kubernetes before 1.25) admits a floor above the desired count.
    crd = await kube.api.get(CRDS, namespace=None, name="modelcapacities.capguard.dev")
    await kube.api.replace(CRDS, namespace=None, name="modelcapacities.capguard.dev",
                           body=_without_cel(crd))
    await kube.engines("e0", "e1")
    await kube.model("broken", 2, minAvailable=5)
    await kube.model("fine", 1, minAvailable=0)
    # An engine already bound to the broken model must not be drained as an orphan.
    await kube.engines("bound", modelRef="broken")
    started = await start_operator()

    async def invalid() -> dict[str, Any] | None:
        found = await kube.get(client.MODELS, "broken")
        return found if condition(found, "Valid").get("status") == "False" else None

    broken = await eventually(invalid)
    assert condition(broken, "Valid")["reason"] == "InvalidSpec"
    assert "minAvailable" in condition(broken, "Valid")["message"]
    unavailable = condition(broken, "Available")
    assert (unavailable["status"], unavailable["reason"]) == ("False", "InvalidSpec")
    await eventually(lambda: _serving(kube, "fine", 1))
    passes = started.handles.reconciler.passes
    await eventually(lambda: _at_least(started.handles.reconciler.passes, passes + 5))
    assert len(await kube.events("InvalidSpec")) == 1  # one Event, not one per pass
    assert (await kube.get(client.ENGINES, "bound"))["spec"]["modelRef"] == "broken"
    assert started.thread.is_alive()


async def _serving(kube: Kube, name: str, units: int) -> bool:
    found = await kube.get(client.MODELS, name)
    return bool((found.get("status") or {}).get("serving") == units)


async def _at_least(value: int, wanted: int) -> bool:
    await asyncio.sleep(0)
    return value >= wanted


async def test_a_restart_repeats_nothing_and_keeps_the_pause(
    kube: Kube, start_operator: StartOperator
) -> None:
    await kube.engines("e0", "e1", "e2")
    await kube.model("chat", 2, minAvailable=0)
    first = await start_operator()
    await eventually(lambda: _serving(kube, "chat", 2))
    ids = {e["metadata"]["name"]: (e["metadata"].get("annotations") or {}).get(
        "capguard.dev/action-id") for e in await kube.items(client.ENGINES)}
    await kube.breaker("pause", open=True, pauseThreshold="1h")
    opened = await eventually(lambda: _breaker(kube, "Open"))
    await first.halt()

    await kube.patch(client.MODELS, "chat", {"spec": {"replicas": 3}})
    second = await start_operator(identity="second")
    held = await eventually(lambda: _held(kube, 1))
    assert held["status"]["since"] == opened["status"]["since"]  # the pause survived
    text = await second.metrics()
    assert metric(text, "capguard_actions_total", type="assign", result="executed") == 0
    again = {e["metadata"]["name"]: (e["metadata"].get("annotations") or {}).get(
        "capguard.dev/action-id") for e in await kube.items(client.ENGINES)}
    assert again == ids  # nothing executed twice, nothing executed while paused
    assert len(await kube.events("BreakerOpened")) == 1  # not announced again on restart


async def _breaker(kube: Kube, state: str) -> dict[str, Any] | None:
    found = await kube.get(client.BREAKERS, "pause")
    return found if (found.get("status") or {}).get("state") == state else None


async def _held(kube: Kube, count: int) -> dict[str, Any] | None:
    found = await kube.get(client.BREAKERS, "pause")
    return found if (found.get("status") or {}).get("heldActions") == count else None


LEASE = dict(leader_election=True, lease_duration=1.5, lease_renew=0.3)


async def test_two_replicas_exactly_one_acts_and_the_standby_takes_over(
    kube: Kube, start_operator: StartOperator
) -> None:
    await kube.engines("e0", "e1", "e2")
    await kube.model("chat", 1, minAvailable=0)
    one = await start_operator(identity="one", **LEASE)
    two = await start_operator(identity="two", **LEASE)
    await eventually(lambda: _serving(kube, "chat", 1))
    replicas = {"one": one, "two": two}
    leaders = [n for n, r in replicas.items() if metric(await r.metrics(), "capguard_leader")]
    assert len(leaders) == 1
    standby_name = ({"one", "two"} - set(leaders)).pop()
    leader, standby = replicas[leaders[0]], replicas[standby_name]
    for name, replica in (("leader", leader), ("standby", standby)):
        executed = metric(await replica.metrics(), "capguard_actions_total",
                          type="assign", result="executed")
        assert executed == (1 if name == "leader" else 0)
    # The standby observes but never writes, and exports no model or pool gauge: a second
    # copy would make every alert on them fire twice.
    assert metric(await leader.metrics(), "capguard_model_serving_units", model="chat") == 1
    assert _model_and_pool_series(await standby.metrics()) == []

    await leader.halt()  # a graceful stop releases the Lease
    await eventually(lambda: _leads(standby), timeout=5)
    await eventually(lambda: _exports_chat(standby), timeout=5)
    await kube.patch(client.MODELS, "chat", {"spec": {"replicas": 2}})
    await eventually(lambda: _serving(kube, "chat", 2))
    changes = [e for e in await kube.items(client.EVENTS) if e["reason"] == "LeaderChanged"]
    assert any("became the leader" in e["message"] for e in changes)
    lease = await kube.api.get(client.LEASES, namespace="default", name="capguard-leader")
    assert lease["spec"]["holderIdentity"] == standby_name
    # `kubectl describe lease capguard-leader` selects its Events by the Lease's uid.
    assert {e["involvedObject"].get("uid") for e in changes} == {lease["metadata"]["uid"]}


async def _leads(replica: Any) -> bool:
    return metric(await replica.metrics(), "capguard_leader") == 1


async def _exports_chat(replica: Any) -> bool:
    found = metric(await replica.metrics(), "capguard_model_serving_units", model="chat")
    return found is not None


def _model_and_pool_series(text: str) -> list[str]:
    return [line for line in text.splitlines()
            if line.startswith(("capguard_model_", "capguard_pool_"))]
