"""capguard as users run it: the Deployment of deploy/ in the cluster, from its image, with
its ServiceAccount, RBAC, probes, read-only root and two replicas (hack/kind-up.sh, then
hack/e2e-kind.sh). The embedded API server runs no Pods: there these tests skip.

The engines' agents run on this machine (`capguard engine`, as tests/e2e/test_agents.py
starts them): the deployed operator drives engines through their agents and reads only
what they report, wherever they run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import harness
from .conftest import DEPLOYED_OPERATOR, Target
from .test_agents import Agents, running_agents

SELECTOR = "--selector=app.kubernetes.io/name=capguard,app.kubernetes.io/component=operator"


@pytest.fixture
def system(target: Target) -> harness.Kubectl:
    """kubectl in capguard-system, where the operator is deployed."""
    if not target.deployed:
        pytest.skip("needs capguard deployed in the cluster under test (hack/kind-up.sh, then "
                    "hack/e2e-kind.sh); the embedded API server runs no Pods")
    return target.kubectl.in_namespace(harness.OPERATOR_NAMESPACE)


@pytest.fixture
def host_agents(target: Target, kube: harness.Kubectl, tmp_path: Path,
                request: pytest.FixtureRequest) -> Iterator[Agents]:
    with running_agents(target, kube, tmp_path, request) as started:
        yield started


def _declared_replicas() -> int:
    deployment = yaml.safe_load((harness.DEPLOY / "manager" / "deployment.yaml").read_text())
    replicas: int = deployment["spec"]["replicas"]
    return replicas


def _running_pods(system: harness.Kubectl) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = system.json("get", "pods", SELECTOR)["items"]
    return [p for p in pods
            if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"]]


def _lease_holder(system: harness.Kubectl) -> str:
    return system.run("get", "lease", harness.LEASE_NAME,
                      "--output=jsonpath={.spec.holderIdentity}").stdout.strip()


def _wait_rolled_out(system: harness.Kubectl) -> None:
    system.run("rollout", "status", DEPLOYED_OPERATOR, "--timeout=180s", timeout=200)


def test_the_declared_replicas_are_available_and_one_holds_the_lease(
    system: harness.Kubectl,
) -> None:
    _wait_rolled_out(system)
    deployment = system.get("deployment", "capguard-operator")
    declared = _declared_replicas()
    assert declared == 2, "deploy/ runs a leader and a standby"
    assert deployment["spec"]["replicas"] == declared, "the suite must not scale the operator"
    assert deployment["status"].get("availableReplicas") == declared, deployment["status"]
    available = harness.condition(deployment, "Available") or {}
    assert available.get("status") == "True", available
    names = {p["metadata"]["name"] for p in _running_pods(system)}
    assert len(names) == declared
    holder = harness.wait_until(lambda: _lease_holder(system), timeout=30,
                                what="a holder of the Lease")
    assert holder in names, f"the Lease is held by {holder!r}, not a replica: {names}"


def test_the_pods_run_as_deployed_read_only_and_ready(system: harness.Kubectl) -> None:
    """Ready means /readyz answered 200 through the probes: the pod logged in with its
    ServiceAccount's token and listed the cluster with the RBAC deploy/ grants."""
    _wait_rolled_out(system)
    image = system.get("deployment", "capguard-operator")["spec"]["template"]["spec"][
        "containers"][0]["image"]
    for pod in _running_pods(system):
        spec, status = pod["spec"], pod["status"]
        name = pod["metadata"]["name"]
        assert spec["serviceAccountName"] == "capguard-operator", name
        (container,) = spec["containers"]
        assert container["image"] == image, name
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        assert {"startupProbe", "readinessProbe", "livenessProbe"} <= container.keys(), name
        (container_status,) = status["containerStatuses"]
        assert container_status["ready"] is True, (name, container_status)
        assert container_status["restartCount"] == 0, (name, container_status)


def test_deleting_the_leader_pod_hands_over_and_engines_are_still_assigned(
    system: harness.Kubectl, kube: harness.Kubectl, host_agents: Agents,
) -> None:
    _wait_rolled_out(system)
    kube.apply(*harness.engines("ie", 3), harness.model("chat", replicas=1, min_available=0))
    for name in ("ie-0", "ie-1", "ie-2"):
        host_agents.start(name)
    harness.wait_serving(kube, {"chat": 1}, timeout=60)

    replicas = {p["metadata"]["name"] for p in _running_pods(system)}
    leader = _lease_holder(system)
    assert leader in replicas
    system.run("delete", "pod", leader, "--wait=false")
    # The leader gives the Lease up on SIGTERM: the standby holds it before the Pod that
    # replaces the deleted one is even ready.
    successor = harness.wait_until(
        lambda: (holder := _lease_holder(system)) != leader and holder, timeout=60,
        what=f"a replica other than {leader} to hold the Lease")
    assert successor in replicas - {leader}, f"{successor} is not the standby"
    kube.run("scale", "mc/chat", "--replicas=2")
    harness.wait_serving(kube, {"chat": 2}, timeout=60)
    bound = [e["metadata"]["name"] for e in kube.items("ie") if e["spec"].get("modelRef")]
    assert len(bound) == 2, bound
    _wait_rolled_out(system)  # the replacement Pod is up again for what comes next
