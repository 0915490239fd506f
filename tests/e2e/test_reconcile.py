"""The operator brings a fleet to Serving and follows `kubectl scale` in both directions."""

from __future__ import annotations

from . import harness
from .conftest import Operators

SAMPLE_DESIRED = {"llama-70b-chat": 8, "mistral-7b-instruct": 4, "bge-large-embed": 4}


def test_samples_reach_serving_and_follow_kubectl_scale(
    kube: harness.Kubectl, operators: Operators,
) -> None:
    kube.run("apply", f"--filename={harness.SAMPLES}")
    operator = operators.start()
    harness.wait_serving(kube, SAMPLE_DESIRED)
    for body in kube.items("mc"):
        status = body["status"]
        assert status["desired"] == status["serving"] == body["spec"]["replicas"]
        assert status["drift"] == 0 and status["availablePercent"] == 100
        assert status["observedGeneration"] == body["metadata"]["generation"]
        available = harness.condition(body, "Available")
        assert available is not None and available["status"] == "True"
    for body in kube.items("ie"):
        if body["spec"].get("modelRef"):
            assert body["status"]["phase"] == "Serving"
            assert body["metadata"]["annotations"][harness.ACTION_ID] == (
                body["status"]["lastAction"]["id"])

    # Down: llama gives back two 2-unit engines, one at a time (maxUnavailable 1).
    kube.run("scale", "mc/llama-70b-chat", "--replicas=4")
    # Up: mistral takes the freed capacity (any engine fits it).
    kube.run("scale", "mc/mistral-7b-instruct", "--replicas=6")
    wanted = {**SAMPLE_DESIRED, "llama-70b-chat": 4, "mistral-7b-instruct": 6}
    harness.wait_serving(kube, wanted, timeout=30)
    assert kube.run("get", "mc/mistral-7b-instruct", "--output=jsonpath={.status.serving}"
                    ).stdout == "6"
    metrics = operator.metrics()
    assert metrics.total("capguard_model_serving_units", model="mistral-7b-instruct") == 6
    assert metrics.total("capguard_actions_total", type="drain", result="executed") >= 1
    assert metrics.total("capguard_actions_total", result="failed") == 0
    assert operator.alive


def test_more_watches_than_connections_still_leave_room_to_write(
    kube: harness.Kubectl, operators: Operators,
) -> None:
    """Each watch holds an HTTP connection for minutes: 12 namespaces are 36 watches
    against a pool of 4. The pool is the reads' and writes' limit plus one connection per
    watch, so the watches never take it all and leave every write waiting."""
    assert kube.namespace is not None
    # Created, as a user's would be: what a real server answers a watch of a namespace
    # that does not exist is not on record (k8s-reference), so the test does not rely on it.
    extra = [f"{kube.namespace}-x{n}" for n in range(11)]
    cluster = kube.in_namespace(None)
    for namespace in extra:
        cluster.run("create", "namespace", namespace)
    try:
        kube.apply(*harness.engines("e", 2), harness.model("chat", replicas=2))
        operator = operators.start(flags=(*(f"--namespace={n}" for n in extra),
                                          "--connection-limit=4"))
        harness.wait_serving(kube, {"chat": 2}, timeout=30)
        assert operator.alive and "Traceback" not in operator.log()
    finally:
        cluster.run("delete", "namespace", *extra, "--wait=false", check=False)
