"""deploy/demo/: engines as Pods with their agents, the gateway and the load (issue 12).

What can be proven without a cluster is proven here: the overlay renders, its built-in
kinds match the Kubernetes schemas, every container's arguments are flags its
subcommand accepts (the model server's template too), every Pod runs locked down, and
the agents' and the gateway's RBAC is exactly what their real processes asked of a real
HTTP API server (the embedded one, with its audit log), each logged in as its service
account while that server enforced the RBAC: sufficient (nothing refused) and minimal.
hack/kind-demo.sh runs it on kind.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from capguard.localcluster import authz
from capguard.localcluster import cluster as cluster_
from e2e.harness import wait_until

from . import container as kubelet_container
from . import rbac
from .manifests import ROOT, by_kind, kustomize

DEMO = ROOT / "deploy" / "demo"
NAMESPACE = "capguard-demo"
OWN_KINDS = {"Namespace", "InferenceEngine", "ModelCapacity", "CircuitBreaker"}


@pytest.fixture(scope="module")
def demo() -> list[dict[str, Any]]:
    return kustomize(DEMO)


def _containers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for o in objects if o["kind"] in ("StatefulSet", "Deployment", "Job")
            for c in o["spec"]["template"]["spec"]["containers"]]


def _pods(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["spec"]["template"]["spec"] for o in objects
            if o["kind"] in ("StatefulSet", "Deployment", "Job")]


def _help(*command: str) -> str:
    done = subprocess.run([sys.executable, "-m", "capguard.cli", *command, "--help"],
                          capture_output=True, text=True, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _assert_flags_listed(args: list[str], help_text: str, *, command: str) -> None:
    for arg in args:
        if not arg.startswith("-"):
            continue
        flag = arg.split("=", 1)[0]
        assert re.search(rf"(^|[\s,/]){re.escape(flag)}([\s=,/]|$)", help_text,
                         flags=re.MULTILINE), f"`capguard {command} --help` lacks {flag}"


def test_the_demo_renders_in_its_namespace_with_engines_named_as_their_pods(
    demo: list[dict[str, Any]],
) -> None:
    namespaced = [o for o in demo if o["kind"] != "Namespace"]
    assert {o["metadata"].get("namespace") for o in namespaced} == {NAMESPACE}
    [engines] = by_kind(demo, "StatefulSet")
    pods = {f"{engines['metadata']['name']}-{i}" for i in range(engines["spec"]["replicas"])}
    assert {o["metadata"]["name"] for o in by_kind(demo, "InferenceEngine")} == pods
    [role] = [r for r in by_kind(demo, "Role") if r["metadata"]["name"] == "capguard-engine"]
    for rule in role["rules"]:
        if rule["verbs"] == ["create"]:  # a create cannot be narrowed to a name
            assert rule["resources"] == ["leases"], rule
            continue
        assert set(rule["resourceNames"]) == pods, "an agent may touch only the demo's engines"


def test_every_container_argument_is_a_flag_its_command_accepts(
    demo: list[dict[str, Any]],
) -> None:
    for container in _containers(demo):
        command, *args = container["args"]
        _assert_flags_listed(args, _help(command), command=command)
        for arg in args:
            if arg.startswith("--serve-command="):
                served = shlex.split(arg.split("=", 1)[1])
                assert served[:2] == ["capguard", "model-server"]
                _assert_flags_listed(served[2:], _help("model-server"), command="model-server")


def test_every_pod_runs_locked_down(demo: list[dict[str, Any]]) -> None:
    for pod in _pods(demo):
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["limits"]


def test_builtin_kinds_match_the_kubernetes_schemas(demo: list[dict[str, Any]]) -> None:
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.skip("kubernetes-validate is not installed (hack/install-tools.sh does it)")
    import kubernetes_validate

    for obj in demo:
        if obj["kind"] not in OWN_KINDS:
            kubernetes_validate.validate(obj, "1.32", strict=True)


def _start(*command: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "capguard.cli", *command],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def test_the_agents_and_the_gateways_rbac_is_what_they_really_ask(
    demo: list[dict[str, Any]], tmp_path: Path,
) -> None:
    """Run an agent (through a load and a move) and the gateway (through a request), each
    logged in as its own service account (a token requested as a kubelet requests it),
    against an API server over HTTPS that enforces the demo's RBAC, applied with kubectl,
    and records every request: nothing may be refused, and what was asked is checked
    against the demo's Roles (sufficient and minimal)."""
    import urllib.request

    own = [o for o in demo if o["kind"] in OWN_KINDS | kubelet_container.ACCESS_KINDS]
    ca, cert, key = kubelet_container.certificates(tmp_path, address="127.0.0.1")
    chain = tmp_path / "chain.crt"  # the kubeconfig the server writes trusts what it serves
    chain.write_bytes(cert.read_bytes() + ca.read_bytes())
    with cluster_.LocalCluster.start_in_thread(
            crds_dir=ROOT / "crds", kubeconfig_path=tmp_path / "kubeconfig",
            rbac=authz.Policy(), tls=(chain, key)) as cluster:
        admin = cluster.kubeconfig_path

        def kubectl(*args: str, stdin: str = "") -> str:
            done = subprocess.run(["kubectl", f"--kubeconfig={admin}", "-n", NAMESPACE,
                                   *args], input=stdin, capture_output=True, text=True,
                                  check=False, timeout=60)
            assert done.returncode == 0, done.stderr
            return done.stdout

        kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(own))
        serve = (f"{sys.executable} -m capguard.serving.modelserver --model {{model}} "
                 "--port {port} --load-time 0.2s")
        as_engine, as_gateway = (kubelet_container.kubeconfig_as(admin, NAMESPACE, account)
                                 for account in ("capguard-engine", "capguard-gateway"))
        agent = _start("engine", "--name=engine-0", f"--namespace={NAMESPACE}",
                       f"--kubeconfig={as_engine}",
                       f"--serve-command={serve}", "--heartbeat-interval=0.5s",
                       "--drain-grace=1s", log=tmp_path / "agent")
        gateway = _start("gateway", f"--namespace={NAMESPACE}",
                         f"--kubeconfig={as_gateway}", "--port=0",
                         log=tmp_path / "gateway")
        try:
            for model in ("chat", "code"):  # the operator's part, played by kubectl
                kubectl("patch", "ie", "engine-0", "--type=merge",
                        "-p", f'{{"spec": {{"modelRef": "{model}"}}}}')
                wait_until(lambda m=model: kubectl(  # type: ignore[misc]
                    "get", "ie", "engine-0", "-o",
                    "jsonpath={.status.phase}/{.status.model}") == f"Serving/{m}",
                    timeout=30, what=f"engine-0 serving {model}")
            url = wait_until(lambda: re.search(r"listening at (\S+)",
                                           (tmp_path / "gateway").read_text()),
                         timeout=30, what="the gateway's address").group(1)
            request = urllib.request.Request(
                f"{url}/v1/completions", data=b'{"model": "code", "prompt": "hi"}',
                headers={"Content-Type": "application/json"})
            answered = wait_until(lambda: _answered(request), timeout=30,
                                  what="a completion via the gateway")
            assert answered == 200
        finally:
            for process in (agent, gateway):
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
        records = list(cluster.audit)

    assert kubelet_container.refused(records) == [], (
        "the demo's RBAC did not allow what its processes did")
    for account, agents in ((("capguard-demo", "capguard-engine"), "^capguard-engine/"),
                            (("capguard-demo", "capguard-gateway"), "^capguard-gateway/")):
        requests = list(rbac.operator_requests(records, agents=re.compile(agents),
                                               service_account=account))
        assert requests, f"no request from {agents} recorded"
        report = rbac.check(rules=rbac.rules_for(demo, service_account=account),
                            requests=requests)
        assert report.ok, f"{account[1]}:\n{report}"


def _answered(request: Any) -> int | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return None if error.code == 503 else int(error.code)
