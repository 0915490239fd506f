"""Deletion: capguard puts no finalizer of its own on anything (it keeps no per-object
state to clean up), so its objects go at once; an object someone else holds with a
finalizer keeps working while it waits, and the operator copes when it finally goes."""

from __future__ import annotations

import json

import pytest

from . import harness
from .conftest import Operators

KINDS = "inferenceengines,modelcapacities,circuitbreakers"


def _finalizers(kube: harness.Kubectl) -> dict[str, list[str]]:
    found = kube.json("get", KINDS)["items"]
    return {f"{b['kind']}/{b['metadata']['name']}": b["metadata"].get("finalizers", [])
            for b in found if b["metadata"].get("finalizers")}


def _release_finalizer(kube: harness.Kubectl, kind: str, name: str) -> None:
    kube.run("patch", kind, name, "--type=json", "--patch",
             json.dumps([{"op": "remove", "path": "/metadata/finalizers"}]))


def _terminating(kube: harness.Kubectl, kind: str, name: str) -> bool:
    return bool(kube.get(kind, name)["metadata"].get("deletionTimestamp"))


@pytest.mark.slow
def test_a_deleted_model_breaker_and_engine_go_at_once_and_the_model_is_drained(
    kube: harness.Kubectl, operators: Operators,
) -> None:
    kube.apply(*harness.engines("e", 3), harness.model("chat", replicas=2),
               harness.breaker("maint"))
    operator = operators.start()
    harness.wait_serving(kube, {"chat": 2})
    assert _finalizers(kube) == {}, "the operator added finalizers"

    kube.run("delete", "mc", "chat", "--timeout=15s")
    assert not kube.exists("mc", "chat")

    def drained() -> bool:
        return all(not b["spec"].get("modelRef") and b["status"]["phase"] == "Idle"
                   for b in kube.items("ie"))

    # Two drains of 0.25s, one at a time (the fleet budget): seconds at most.
    harness.wait_until(drained, timeout=10, what="the deleted model's engines drained to Idle")
    kube.run("delete", "cb", "maint", "--timeout=15s")
    kube.run("delete", "ie", "e-0", "--timeout=15s")
    assert [b["metadata"]["name"] for b in kube.items("ie")] == ["e-1", "e-2"]
    assert kube.items("cb") == [] and kube.items("mc") == []
    assert operator.alive
    metrics = operator.metrics()
    assert not metrics.has("capguard_model_serving_units", model="chat"), "a deleted model's series"
    assert metrics.total("capguard_actions_total", type="drain", result="executed") == 2


def test_a_breaker_held_by_a_foreign_finalizer_keeps_holding_until_it_goes(
    kube: harness.Kubectl, operators: Operators,
) -> None:
    kube.apply(*harness.engines("e", 3), harness.model("chat", replicas=1),
               harness.breaker("maint", pause_threshold="10m",
                               finalizers=[harness.FOREIGN_FINALIZER]))
    operators.start()
    harness.wait_serving(kube, {"chat": 1})
    kube.patch("cb", "maint", {"spec": {"open": True}})
    kube.run("delete", "cb", "maint", "--wait=false")
    assert _terminating(kube, "cb", "maint")
    kube.run("scale", "mc/chat", "--replicas=2")
    harness.wait_until(lambda: kube.get("cb", "maint")["status"].get("heldActions", 0) >= 1,
                       timeout=10, what="the terminating breaker to hold the scale-up")
    assert harness.serving(kube, "chat") == 1
    assert sum(1 for b in kube.items("ie") if b["spec"].get("modelRef")) == 1
    assert _terminating(kube, "cb", "maint"), "the foreign finalizer was not respected"

    _release_finalizer(kube, "cb", "maint")
    harness.wait_until(lambda: not kube.exists("cb", "maint"), timeout=10,
                       what="the breaker gone once its finalizer was removed")
    harness.wait_serving(kube, {"chat": 2})


def test_an_engine_held_by_a_foreign_finalizer_waits_and_is_replaced_when_it_goes(
    kube: harness.Kubectl, operators: Operators,
) -> None:
    kube.apply(harness.engine("held", finalizers=[harness.FOREIGN_FINALIZER]),
               harness.model("chat", replicas=1))
    operator = operators.start()
    harness.wait_serving(kube, {"chat": 1})
    kube.run("delete", "ie", "held", "--wait=false")
    assert _terminating(kube, "ie", "held")
    kube.apply(*harness.engines("spare", 2))
    harness.wait_until(
        lambda: all(kube.get("ie", f"spare-{i}").get("status", {}).get("phase") == "Idle"
                    for i in range(2)),
        timeout=10, what="the spare engines registered Idle")
    assert _terminating(kube, "ie", "held") and operator.alive

    _release_finalizer(kube, "ie", "held")
    harness.wait_until(lambda: not kube.exists("ie", "held"), timeout=10,
                       what="the engine gone once its finalizer was removed")
    harness.wait_serving(kube, {"chat": 1})
    assert sum(1 for b in kube.items("ie") if b["spec"].get("modelRef") == "chat") == 1

    # A terminating engine is on its way out: it should get no new model. Ask for more
    # than the healthy engines can give while another held engine is terminating.
    kube.apply(harness.engine("leaving", finalizers=[harness.FOREIGN_FINALIZER]))
    harness.wait_until(lambda: kube.get("ie", "leaving").get("status", {}).get("phase") == "Idle",
                       timeout=10, what="engine leaving registered Idle")
    kube.run("delete", "ie", "leaving", "--wait=false")
    kube.run("scale", "mc/chat", "--replicas=3")
    harness.wait_until(
        lambda: all(kube.get("ie", f"spare-{i}")["status"]["phase"] == "Serving"
                    for i in range(2)),
        timeout=15, what="both healthy engines serving chat")
    try:  # the fleet budget moves one engine at a time: the next pass would take it
        harness.wait_until(lambda: kube.get("ie", "leaving")["spec"].get("modelRef"),
                           timeout=3, what="the terminating engine to be assigned")
    except AssertionError:
        assigned = None
    else:
        assigned = kube.get("ie", "leaving")["spec"]["modelRef"]
    _release_finalizer(kube, "ie", "leaving")
    assert assigned is None, f"an engine being deleted was assigned model {assigned!r}"
