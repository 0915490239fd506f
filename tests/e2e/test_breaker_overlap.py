"""Breakers that overlap say which of them holds which actions, and a breaker whose
selector matches no model says it pauses nothing (issue 13), through kubectl."""

from __future__ import annotations

from typing import Any

from . import harness
from .conftest import Operators

CHAT = {"selector": {"matchLabels": {"app": "chat"}}}


def holding(kube: harness.Kubectl, name: str) -> tuple[int, list[Any], str, str]:
    """(heldActions, heldModels, Holding's reason, Holding's message) of a breaker."""
    body = kube.get("cb", name)
    status, found = body.get("status") or {}, harness.condition(body, "Holding") or {}
    return (int(status.get("heldActions", -1)), list(status.get("heldModels") or []),
            str(found.get("reason")), str(found.get("message")))


def test_two_overlapping_breakers_each_report_the_actions_they_hold(
    kube: harness.Kubectl, operators: Operators,
) -> None:
    kube.apply(*harness.engines("ie", 6),
               harness.model("chat", replicas=2, labels={"app": "chat"}),
               harness.model("code", replicas=1, labels={"app": "code"}),
               harness.breaker("maint", pause_threshold="10m", extra=CHAT),
               harness.breaker("freeze", pause_threshold="10m"),
               harness.breaker("watch", pause_threshold="10m", extra=CHAT))
    operators.start()
    harness.wait_serving(kube, {"chat": 2, "code": 1})
    for name in ("maint", "freeze"):
        kube.patch("cb", name, {"spec": {"open": True}})
    kube.run("scale", "mc/chat", "--replicas=4")

    def both_hold() -> bool:
        return (holding(kube, "maint")[:2] == (2, [
                    {"model": "chat", "heldActions": 2, "alsoHeldBy": ["freeze"]}])
                and holding(kube, "freeze")[:2] == (2, [
                    {"model": "chat", "heldActions": 2, "alsoHeldBy": ["maint"]}]))

    harness.wait_until(both_hold, timeout=15, what="maint and freeze to hold chat's 2 assigns")
    held, _, reason, message = holding(kube, "maint")
    assert reason == "ActionsHeld" and "chat (2)" in message, message
    assert "breaker freeze also holds those of chat" in message, message
    # The Closed breaker over the same model holds nothing, and says who does.
    held, models, reason, message = holding(kube, "watch")
    assert (held, models, reason) == (0, [], "HeldByOtherBreakers"), message
    assert message == "holds no action; those of chat are held by breaker freeze, maint"
    assert kube.get("cb", "freeze")["status"]["selectedModels"] == 2
    assert harness.serving(kube, "chat") == 2

    # Releasing one of the two releases nothing: freeze alone holds the work now.
    kube.patch("cb", "maint", {"spec": {"open": False}})
    harness.wait_until(
        lambda: holding(kube, "maint")[2] == "HeldByOtherBreakers"
        and holding(kube, "freeze")[:2] == (2, [
            {"model": "chat", "heldActions": 2, "alsoHeldBy": []}]),
        timeout=15, what="freeze to hold chat's assigns alone")
    assert harness.serving(kube, "chat") == 2
    kube.patch("cb", "freeze", {"spec": {"open": False}})
    harness.wait_serving(kube, {"chat": 4, "code": 1}, timeout=30)
    harness.wait_until(lambda: holding(kube, "freeze")[2] == "NothingHeld", timeout=15,
                       what="freeze to hold nothing")


def test_a_breaker_that_selects_nothing_says_so(
    kube: harness.Kubectl, operators: Operators,
) -> None:
    kube.apply(*harness.engines("ie", 2),
               harness.model("chat", replicas=1, labels={"app": "chat"}),
               harness.breaker("typo", open_=True,
                               extra={"selector": {"matchLabels": {"app": "chatt"}}}))
    operators.start()
    harness.wait_serving(kube, {"chat": 1})  # an Open breaker over nothing pauses nothing
    kube.run("wait", "--for=condition=SelectsNothing", "cb/typo", "--timeout=20s")
    body = kube.get("cb", "typo")
    found = harness.condition(body, "SelectsNothing") or {}
    assert found.get("reason") == "NoModelsSelected", found
    assert "spec.selector app=chatt matches no ModelCapacity" in str(found.get("message"))
    assert body["status"]["selectedModels"] == 0
    table = kube.run("get", "cb", "typo").stdout.splitlines()
    assert table[0].split()[:6] == ["NAME", "STATE", "SINCE", "HELD", "REFUSED", "MODELS"]
    assert table[1].split()[5] == "0", table
    told = kube.events(reason="NoModelsSelected", name="typo")
    assert [e["type"] for e in told] == ["Warning"], told
    # Labelled to match, it selects the model again, and says that once too.
    kube.run("label", "--overwrite", "mc", "chat", "app=chatt")
    kube.run("wait", "--for=condition=SelectsNothing=false", "cb/typo", "--timeout=20s")
    assert kube.get("cb", "typo")["status"]["selectedModels"] == 1
    assert [e["type"] for e in kube.events(reason="ModelsSelected", name="typo")] == ["Normal"]
    assert len(kube.events(reason="NoModelsSelected", name="typo")) == 1
