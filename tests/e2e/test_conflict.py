"""No stale action: a write planned from a resourceVersion that no longer holds loses
with 409, is counted, and the engine is re-planned from what the cluster shows."""

from __future__ import annotations

from . import harness
from .conftest import Operators


def test_a_stale_action_loses_with_409_and_is_replanned(
    kube: harness.Kubectl, operators: Operators,
) -> None:
    kube.apply(harness.engine("e-0"), harness.model("chat", replicas=0))
    operator = operators.start()
    harness.wait_until(lambda: kube.get("ie", "e-0").get("status", {}).get("phase") == "Idle",
                       timeout=10, what="engine e-0 Idle")
    with harness.FleetWatch(kube) as watch, harness.Toucher(kube, engine_name="e-0") as toucher:
        harness.wait_until(lambda: toucher.writes >= 10, timeout=10, what="the toucher writing")
        kube.run("scale", "mc/chat", "--replicas=1")
        harness.wait_until(
            lambda: operator.metrics().total("capguard_actions_total", result="conflict") >= 1,
            timeout=15, what="an action to lose with 409 (capguard_actions_total conflict)")
        toucher.stop()
        harness.wait_serving(kube, {"chat": 1})
        assert harness.planned_from_elsewhere(watch) == []
    conflicts = kube.events(reason="ActionConflict", name="e-0")
    assert conflicts and "resourceVersion" in conflicts[0]["message"], conflicts
    body = kube.get("ie", "e-0")
    assert body["spec"]["modelRef"] == "chat" and body["status"]["phase"] == "Serving"
    assert body["metadata"]["annotations"][harness.ACTION_ID] == body["status"]["lastAction"]["id"]
    metrics = operator.metrics()
    assert metrics.total("capguard_actions_total", type="assign", result="executed") == 1
