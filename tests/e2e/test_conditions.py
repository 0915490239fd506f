"""`kubectl wait --for=condition=Ready` on a ModelCapacity, as a user (or a CD pipeline)
waits for a scale: it returns once the desired units serve, not at the floor (issue 13).
Reconciling and Stalled, the conditions kstatus reads, say the same in its words."""

from __future__ import annotations

from . import harness
from .conftest import Operators


def summary(kube: harness.Kubectl, name: str) -> dict[str, tuple[str, str]]:
    body = kube.get("mc", name)
    return {kind: (str(found.get("status")), str(found.get("reason")))
            for kind in ("Ready", "Reconciling", "Stalled")
            if (found := harness.condition(body, kind)) is not None}


def test_kubectl_wait_for_ready_returns_only_after_a_scale_up_is_complete(
    kube: harness.Kubectl, operators: Operators,
) -> None:
    kube.apply(*harness.engines("ie", 6), harness.model("chat", replicas=2, min_available=1))
    operators.start()
    harness.wait_serving(kube, {"chat": 2})
    kube.run("wait", "--for=condition=Ready", "mc/chat", "--timeout=20s")
    # Available (the floor, 1 unit) is True all along: it cannot tell a scale from a hold.
    kube.run("scale", "mc/chat", "--replicas=5")
    kube.run("wait", "--for=condition=Ready", "mc/chat", "--timeout=40s", timeout=60)
    body = kube.get("mc", "chat")
    assert body["status"]["serving"] == 5, body["status"]
    assert harness.serving_units(kube.items("ie")).get("chat") == 5
    assert body["status"]["observedGeneration"] == body["metadata"]["generation"]
    ready = harness.condition(body, "Ready")
    assert ready is not None and ready["reason"] == "DesiredServing", ready
    assert ready["observedGeneration"] == body["metadata"]["generation"]
    assert summary(kube, "chat") == {"Ready": ("True", "DesiredServing"),
                                     "Reconciling": ("False", "DesiredServing"),
                                     "Stalled": ("False", "Progressing")}


def test_a_floor_the_engines_cannot_cover_is_stalled_not_reconciling_forever(
    kube: harness.Kubectl, operators: Operators,
) -> None:
    kube.apply(*harness.engines("ie", 2), harness.model("big", replicas=4, min_available=4))
    operators.start()
    kube.run("wait", "--for=condition=Stalled", "mc/big", "--timeout=20s")
    assert summary(kube, "big") == {"Ready": ("False", "InsufficientCapacity"),
                                    "Reconciling": ("False", "InsufficientCapacity"),
                                    "Stalled": ("True", "InsufficientCapacity")}
    # Engines added, the supply covers it: no longer stalled, and Ready once it serves.
    kube.apply(*harness.engines("more", 2))
    kube.run("wait", "--for=condition=Ready", "mc/big", "--timeout=30s", timeout=45)
    assert harness.serving_units(kube.items("ie")).get("big") == 4
    assert summary(kube, "big")["Stalled"] == ("False", "Progressing")
