"""deploy/: renders, is accepted by an API server or a schema, and is wired together.

Kinds the embedded API server serves (Namespace, CRDs, ...) go to it with a server-side
dry run; every built-in kind is validated against the Kubernetes 1.32 OpenAPI schemas
that kubernetes-validate ships in its wheel (strict: unknown fields fail). The Prometheus
Operator's kinds have no schema here, so their shape is checked by hand below.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import dockerfile
from .manifests import (
    ROOT,
    by_kind,
    operator_container,
    require_tool,
    security_context,
    single,
    writable_mounts,
)

NAMESPACE = "capguard-system"
KUBERNETES_VERSION = "1.32"
PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}


def _flag(container: dict[str, Any], name: str) -> str:
    for arg in container["args"]:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"--{name}= is not among the args {container['args']}")


# --- it renders --------------------------------------------------------------------------

def test_deploy_renders_the_operator_and_its_crds(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted({o["kind"] for o in rendered})
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                     "Deployment", "Namespace", "PodDisruptionBudget", "Role", "RoleBinding",
                     "Service", "ServiceAccount"]
    crds = {o["metadata"]["name"] for o in by_kind(rendered, "CustomResourceDefinition")}
    assert crds == {"inferenceengines.capguard.dev", "modelcapacities.capguard.dev",
                    "circuitbreakers.capguard.dev"}


def test_the_prometheus_component_adds_only_its_two_objects(
    rendered: list[dict[str, Any]], rendered_with_prometheus: list[dict[str, Any]],
) -> None:
    added = [o for o in rendered_with_prometheus if o not in rendered]
    assert sorted(o["kind"] for o in added) == ["PrometheusRule", "ServiceMonitor"]


def test_every_namespaced_object_lands_in_capguard_system(
    rendered_with_prometheus: list[dict[str, Any]],
) -> None:
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole",
                      "ClusterRoleBinding"}
    for obj in rendered_with_prometheus:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]


# --- accepted by a schema or an API server --------------------------------------------------

def test_builtin_kinds_match_the_kubernetes_schemas(
    rendered_with_prometheus: list[dict[str, Any]],
) -> None:
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate; "
                    "hack/install-tools.sh does it)")
    import kubernetes_validate

    for obj in rendered_with_prometheus:
        if obj["kind"] in PROMETHEUS_OPERATOR_KINDS:
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_catches_a_typo(rendered: list[dict[str, Any]]) -> None:
    """The validator is strict: it must not pass what a cluster would reject."""
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.skip("kubernetes-validate is not installed")
    import copy

    import kubernetes_validate

    deployment = copy.deepcopy(single(rendered, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFileSystem"] = True  # the real field is readOnlyRootFilesystem
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.fixture(scope="module")
def embedded_kubeconfig() -> Iterator[Path]:
    """A throwaway embedded API server with no CRDs preloaded; its kubeconfig."""
    if importlib.util.find_spec("capguard.localcluster.__main__") is None:
        pytest.skip("the embedded API server (python -m capguard.localcluster) is not there yet")
    require_tool("kubectl", install="kubectl >= 1.28")
    with tempfile.TemporaryDirectory() as scratch:
        kubeconfig = Path(scratch) / "kubeconfig"
        server = subprocess.Popen(
            [sys.executable, "-m", "capguard.localcluster", "--port", "0",
             "--kubeconfig", str(kubeconfig)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 20
            while not kubeconfig.exists() or not kubeconfig.stat().st_size:
                if server.poll() is not None or time.monotonic() > deadline:
                    output = server.stdout.read() if server.stdout else ""
                    pytest.fail(f"the embedded API server did not start:\n{output}")
                time.sleep(0.1)
            yield kubeconfig
        finally:
            server.terminate()
            server.wait(timeout=10)


def _kubectl(kubeconfig: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", f"--kubeconfig={kubeconfig}", *args], input=stdin,
                          capture_output=True, text=True, check=False, timeout=60)


def _served_kinds(kubeconfig: Path) -> set[tuple[str, str]]:
    """(apiVersion, kind) pairs the server's discovery lists."""
    done = _kubectl(kubeconfig, "api-resources", "--no-headers")
    assert done.returncode == 0, done.stderr
    served = set()
    for line in done.stdout.splitlines():
        columns = line.split()
        served.add((columns[-3], columns[-1]))
    return served


def test_the_embedded_server_accepts_every_kind_it_serves(
    rendered: list[dict[str, Any]], embedded_kubeconfig: Path,
) -> None:
    served = _served_kinds(embedded_kubeconfig)
    accepted = [o for o in rendered if (o["apiVersion"], o["kind"]) in served]
    assert {"Namespace", "CustomResourceDefinition"} <= {o["kind"] for o in accepted}
    # Namespaced objects need their namespace to exist, as on a real server: create the
    # namespace for real, then dry-run everything else.
    for namespace in by_kind(accepted, "Namespace"):
        done = _kubectl(embedded_kubeconfig, "create", "--validate=strict", "-f", "-",
                        stdin=yaml.safe_dump(namespace))
        assert done.returncode == 0, done.stderr
    for obj in accepted:
        if obj["kind"] == "Namespace":
            continue
        done = _kubectl(embedded_kubeconfig, "create", "--dry-run=server", "--validate=strict",
                        "-f", "-", stdin=yaml.safe_dump(obj))
        assert done.returncode == 0, f"{obj['kind']}/{obj['metadata']['name']}: {done.stderr}"
        assert "(server dry run)" in done.stdout


# --- the operator's Deployment ------------------------------------------------------------

def test_the_operator_runs_locked_down(rendered: list[dict[str, Any]]) -> None:
    pod = single(rendered, "Deployment")["spec"]["template"]["spec"]
    container = operator_container(rendered)
    security = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert isinstance(pod["securityContext"]["runAsUser"], int)
    assert pod["securityContext"]["runAsUser"] != 0
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod and "hostPID" not in pod
    assert pod.get("automountServiceAccountToken", True), "the operator needs its token"
    # A read-only root and one writable place, /tmp (HOME and MPLCONFIGDIR point there);
    # test_image_runtime runs the wheel under exactly these conditions.
    assert writable_mounts(pod) == ["/tmp"]


def test_the_image_user_matches_the_pod_user(rendered: list[dict[str, Any]]) -> None:
    security = security_context(rendered)
    assert (security["runAsUser"], security["runAsGroup"]) == dockerfile.final_user()


def test_resources_are_bounded(rendered: list[dict[str, Any]]) -> None:
    resources = operator_container(rendered)["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]


def test_probes_hit_the_health_endpoints_the_operator_serves(
    rendered: list[dict[str, Any]],
) -> None:
    """/readyz and /livez are served on the metrics port (`operator.metrics_server`)."""
    container = operator_container(rendered)
    metrics_port = int(_flag(container, "metrics-port"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    wanted = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/livez"}
    for probe, path in wanted.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert ports[get["port"]] == metrics_port, probe


def test_the_metrics_service_reaches_the_metrics_port(
    rendered_with_prometheus: list[dict[str, Any]],
) -> None:
    rendered = rendered_with_prometheus
    container = operator_container(rendered)
    pod_labels = single(rendered, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = single(rendered, "Service")
    metrics_port = int(_flag(container, "metrics-port"))
    (port,) = service["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container_ports[port["targetPort"]] == metrics_port
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = single(rendered, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items())
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["honorLabels"] is True, "capguard's `namespace` label must survive"


def test_every_replica_is_scraped_not_a_virtual_ip(
    rendered_with_prometheus: list[dict[str, Any]],
) -> None:
    """A ClusterIP would alternate between the leader and the standby; a headless Service's
    endpoints are every ready replica (the standby is ready: /readyz says so)."""
    service = single(rendered_with_prometheus, "Service")
    assert service["spec"]["clusterIP"] == "None"


def test_kube_prometheus_stack_selects_the_monitor_and_the_rules(
    rendered: list[dict[str, Any]], rendered_with_prometheus: list[dict[str, Any]],
) -> None:
    """Its Prometheus selects by `release`; the component's patch sets it (docs/deploy.md)."""
    for kind in PROMETHEUS_OPERATOR_KINDS:
        assert single(rendered_with_prometheus, kind)["metadata"]["labels"]["release"]
    assert all("release" not in (o["metadata"].get("labels") or {}) for o in rendered)


def test_leader_election_is_wired(rendered: list[dict[str, Any]]) -> None:
    container = operator_container(rendered)
    assert "--leader-election" in container["args"]
    assert _flag(container, "lease-namespace") == "$(POD_NAMESPACE)"
    assert _flag(container, "identity") == "$(POD_NAME)"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}


def test_a_disruption_budget_exactly_when_there_are_replicas_to_spare(
    rendered: list[dict[str, Any]],
) -> None:
    deployment = single(rendered, "Deployment")
    budgets = by_kind(rendered, "PodDisruptionBudget")
    if deployment["spec"]["replicas"] > 1:
        (budget,) = budgets
        assert budget["spec"]["minAvailable"] == 1
        assert budget["spec"]["selector"]["matchLabels"].items() <= (
            deployment["spec"]["template"]["metadata"]["labels"].items())
    else:
        assert not budgets, "a PDB on one replica would block node drains"


def test_the_deployment_runs_as_the_bound_service_account(
    rendered: list[dict[str, Any]],
) -> None:
    account = single(rendered, "ServiceAccount")["metadata"]["name"]
    pod = single(rendered, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account
    for binding in by_kind(rendered, "ClusterRoleBinding") + by_kind(rendered, "RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]


def test_the_image_is_the_one_kind_up_builds(rendered: list[dict[str, Any]]) -> None:
    image = operator_container(rendered)["image"]
    kind_lib = (ROOT / "hack" / "kind-lib.sh").read_text()
    built = re.search(r"^DEFAULT_IMAGE=(\S+)$", kind_lib, flags=re.MULTILINE)
    assert built, "hack/kind-lib.sh sets DEFAULT_IMAGE=capguard:TAG"
    assert 'IMAGE="${IMAGE:-$DEFAULT_IMAGE}"' in kind_lib
    assert image == built.group(1)
    assert not image.endswith(":latest") and ":" in image, "a fixed tag, so kind's copy is used"


def test_the_deployment_args_are_flags_capguard_run_accepts(
    rendered: list[dict[str, Any]],
) -> None:
    done = subprocess.run([sys.executable, "-m", "capguard.cli", "run", "--help"],
                          capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        pytest.skip(f"`capguard run` is not there yet: {done.stderr.strip()[-200:]}")
    container = operator_container(rendered)
    assert container["args"][0] == "run"
    for arg in container["args"][1:]:
        flag = arg.split("=", 1)[0]
        assert re.search(rf"(^|[\s,/]){re.escape(flag)}([\s=,/]|$)", done.stdout,
                         flags=re.MULTILINE), f"`capguard run --help` does not list {flag}"


# --- the Prometheus Operator's objects (no schema available offline) -------------------

def test_the_prometheus_operator_objects_have_their_shape(
    rendered_with_prometheus: list[dict[str, Any]],
) -> None:
    monitor = single(rendered_with_prometheus, "ServiceMonitor")
    rule = single(rendered_with_prometheus, "PrometheusRule")
    for obj in (monitor, rule):
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        for alert in group["rules"]:
            assert set(alert) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            assert isinstance(alert["expr"], str)
