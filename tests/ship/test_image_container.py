"""The real image in Docker, each Pod of deploy/ and deploy/demo/ as the kubelet would run
it (`container.Kubelet`): the operator's two replicas logging in with their service
account over TLS, electing a leader and reconciling the samples; the demo's eight engines
serving the models the operator binds them to, the gateway routing the load Job's
requests to them; and the standby taking over when the leader is killed.

The API server is the embedded one, on this machine's address on the test's Docker
network, behind TLS. Skips without a Docker daemon or without the image the manifests
name (`make image-test` builds both the image and, where no registry answers, a base).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from . import container
from .manifests import ROOT, by_kind, eventually, kustomize, require_tool, single

pytestmark = pytest.mark.slow

LEASE: Final = "capguard-leader"
SAMPLES: Final = "samples"
CAPGUARD_KINDS: Final = frozenset({"InferenceEngine", "ModelCapacity", "CircuitBreaker"})


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


class Cluster:
    """The embedded API server and the Kubelet that runs Pods against it."""

    def __init__(self, kubelet: container.Kubelet, kubeconfig: Path,
                 front: container.TlsFront) -> None:
        self.kubelet, self.kubeconfig, self.front = kubelet, kubeconfig, front

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        kubectl = require_tool("kubectl", install="kubectl >= 1.28")
        done = subprocess.run([kubectl, f"--kubeconfig={self.kubeconfig}", *args],
                              input=stdin, capture_output=True, text=True, check=False,
                              timeout=30)
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done.stdout

    def apply(self, objects: list[dict[str, Any]], namespace: str) -> None:
        self.kubectl("apply", "-n", namespace, "-f", "-",
                     stdin=yaml.safe_dump_all(objects, sort_keys=False))

    def alive(self, name: str) -> None:
        """Fail at once, with its log, if the container stopped or was OOM-killed."""
        state = self.kubelet.state(name)
        if not state.get("Running") or state.get("OOMKilled"):
            pytest.fail(f"{name} stopped ({state}):\n{self.kubelet.logs(name)[-3000:]}",
                        pytrace=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    binary = container.docker()
    operator = single(kustomize(ROOT / "deploy"), "Deployment")
    (spec,) = operator["spec"]["template"]["spec"]["containers"]
    container.require_image(binary, spec["image"])
    folder = tmp_path_factory.mktemp("cluster")
    prefix = f"capguard-test-{os.getpid()}"
    with container.network(binary, prefix) as network:
        kubeconfig = folder / "kubeconfig"
        server = subprocess.Popen(
            [sys.executable, "-m", "capguard.localcluster", f"--host={network.gateway}",
             "--port=0", f"--crds={ROOT / 'crds'}", f"--kubeconfig={kubeconfig}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert server.stdout is not None
            first = server.stdout.readline()
            assert "serving at" in first, f"the embedded API server did not start: {first}"
            port = int(first.strip().rsplit(":", 1)[1].rstrip("/"))
            ca, cert, key = container.certificates(folder, address=network.gateway)
            with container.TlsFront(host=network.gateway, upstream=(network.gateway, port),
                                    cert=cert, key=key) as front:
                kubelet = container.Kubelet(
                    binary=binary, network=network, prefix=prefix,
                    api=(network.gateway, front.port), ca=ca, secrets=folder / "secrets")
                try:
                    yield Cluster(kubelet, kubeconfig, front)
                finally:
                    kubelet.stop()
        finally:
            server.terminate()
            server.wait(timeout=10)


@pytest.fixture(scope="module")
def operators(cluster: Cluster) -> dict[str, str]:
    """The Deployment's replicas, running: Pod name -> address."""
    deployment = single(kustomize(ROOT / "deploy"), "Deployment")
    namespace = deployment["metadata"]["namespace"]
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("create", "namespace", SAMPLES)
    cluster.kubectl("apply", "-k", str(ROOT / "deploy" / "samples"), "-n", SAMPLES)
    pods = {}
    for replica in range(deployment["spec"]["replicas"]):
        name = f"{deployment['metadata']['name']}-5d8f7c9b4-{'abcdefgh'[replica]}2k4q"
        ip = cluster.kubelet.network.address(replica)
        cluster.kubelet.start(deployment["spec"]["template"], name=name,
                              namespace=namespace, ip=ip)
        pods[name] = ip
    return pods


def _leader(cluster: Cluster, namespace: str) -> str:
    return cluster.kubectl("get", "lease", LEASE, "-n", namespace, "--ignore-not-found",
                           "-o", "jsonpath={.spec.holderIdentity}")


def _held(cluster: Cluster, namespace: str) -> str:
    """The Lease's holder, once it has one."""
    return str(eventually(lambda: _leader(cluster, namespace), timeout=60,
                          what=f"the Lease {LEASE} has a holder"))


def _operator_namespace() -> str:
    return str(single(kustomize(ROOT / "deploy"), "Deployment")["metadata"]["namespace"])


def _metrics_port() -> int:
    (spec,) = single(kustomize(ROOT / "deploy"), "Deployment")["spec"]["template"]["spec"][
        "containers"]
    (port,) = [p["containerPort"] for p in spec["ports"] if p["name"] == "metrics"]
    return int(port)


def test_the_operator_image_runs_as_deployed_and_logs_in_as_its_service_account(
    cluster: Cluster, operators: dict[str, str],
) -> None:
    port = _metrics_port()

    def ready() -> bool:
        for name in operators:
            cluster.alive(f"{cluster.kubelet.prefix}-{name}")
        return all(_status(f"http://{ip}:{port}/readyz") == 200 for ip in operators.values())

    eventually(ready, timeout=60, what="both replicas answer /readyz 200", logs=lambda: [
        cluster.kubelet.logs(f"{cluster.kubelet.prefix}-{name}") for name in operators])
    namespace = _operator_namespace()
    leader = _held(cluster, namespace)
    assert leader in operators, leader

    def reconciled() -> bool:
        listed = cluster.kubectl(
            "get", "modelcapacities", "-n", SAMPLES, "-o",
            "jsonpath={range .items[*]}{.metadata.generation}={.status.observedGeneration} "
            "{end}")
        pairs = [pair.split("=") for pair in listed.split()]
        return bool(pairs) and all(seen == generation for generation, seen in pairs)

    eventually(reconciled, timeout=30,
                what="every sample ModelCapacity has status.observedGeneration")
    with urllib.request.urlopen(f"http://{operators[leader]}:{port}/metrics",
                                timeout=5) as response:
        text = response.read().decode()
    assert re.search(r"^capguard_leader 1\.0$", text, flags=re.MULTILINE), text[:2000]
    assert cluster.front.accepted > 0 and cluster.front.refused == 0, (
        "every connection carried the mounted service-account token over TLS")
    for name in operators:
        log = cluster.kubelet.logs(f"{cluster.kubelet.prefix}-{name}")
        assert "Traceback" not in log, log[-3000:]


def test_the_demo_engines_serve_the_load_through_the_gateway(
    cluster: Cluster, operators: dict[str, str],
) -> None:
    demo = kustomize(ROOT / "deploy" / "demo")
    (namespace_object,) = by_kind(demo, "Namespace")
    namespace = namespace_object["metadata"]["name"]
    cluster.kubectl("create", "namespace", namespace)
    cluster.apply([o for o in demo if o["kind"] in CAPGUARD_KINDS], namespace)
    engines = single(demo, "StatefulSet")
    first = len(operators)
    names = []
    for ordinal in range(engines["spec"]["replicas"]):
        name = f"{engines['metadata']['name']}-{ordinal}"
        names.append(cluster.kubelet.start(
            engines["spec"]["template"], name=name, namespace=namespace,
            ip=cluster.kubelet.network.address(first + ordinal)))
    gateway = single(demo, "Deployment")
    service = single(demo, "Service")["metadata"]["name"]
    names.append(cluster.kubelet.start(
        gateway["spec"]["template"], name=f"{gateway['metadata']['name']}-7c9d5b8f6-q8x2m",
        namespace=namespace, ip=cluster.kubelet.network.address(first + 20),
        aliases=[service]))
    models = {m["metadata"]["name"]: m["spec"]["replicas"] for m in by_kind(demo, "ModelCapacity")}

    def serving() -> bool:
        for name in names:
            cluster.alive(name)
        listed = cluster.kubectl("get", "modelcapacities", "-n", namespace, "-o",
                                 "jsonpath={range .items[*]}{.metadata.name}={.status.serving} "
                                 "{end}")
        found = dict(pair.split("=") for pair in listed.split())
        return all(found.get(model) == str(replicas) for model, replicas in models.items())

    eventually(serving, timeout=240, what=f"every model serving its replicas: {models}")
    load = single(demo, "Job")
    (spec,) = load["spec"]["template"]["spec"]["containers"]
    args = [re.sub(r"^--duration=.*$", "--duration=10s", arg) for arg in spec["args"]]
    job = cluster.kubelet.start(load["spec"]["template"], name="capguard-load-x7k2p",
                                namespace=namespace,
                                ip=cluster.kubelet.network.address(first + 21), args=args)
    eventually(lambda: not cluster.kubelet.state(job).get("Running"), timeout=90,
                what="the load Job's container finishes")
    state = cluster.kubelet.state(job)
    output = cluster.kubelet.logs(job)
    assert state.get("ExitCode") == 0, output[-3000:]
    (summary,) = [json.loads(line)["summary"] for line in output.splitlines()
                  if line.startswith('{"summary"')]
    assert summary["sent"] > 0, summary
    assert summary["success_rate"] >= 0.97, output  # Erlang: 99.5 % (load.yaml)
    assert set(summary["models"]) == set(models), summary
    for name in names:
        cluster.alive(name)
        assert "Traceback" not in cluster.kubelet.logs(name), cluster.kubelet.logs(name)[-3000:]


def test_the_standby_takes_over_when_the_leader_is_killed(
    cluster: Cluster, operators: dict[str, str],
) -> None:
    namespace = _operator_namespace()
    leader = _held(cluster, namespace)
    subprocess.run([cluster.kubelet.binary, "kill", "--signal=KILL",
                    f"{cluster.kubelet.prefix}-{leader}"], capture_output=True, check=True)
    (standby,) = set(operators) - {leader}
    eventually(lambda: _leader(cluster, namespace) == standby, timeout=60,
                what=f"{standby} holds the Lease after {leader} was killed")
    cluster.alive(f"{cluster.kubelet.prefix}-{standby}")


def _stop(cluster: Cluster, name: str, template: dict[str, Any]) -> tuple[float, int]:
    """`docker stop` as the kubelet stops a Pod: SIGTERM, then SIGKILL after the template's
    terminationGracePeriodSeconds. How long it took, and the exit code (137: killed)."""
    grace = int(template["spec"].get("terminationGracePeriodSeconds", 30))
    started = time.monotonic()
    subprocess.run([cluster.kubelet.binary, "stop", f"--time={grace}", name],
                   capture_output=True, check=True, timeout=grace + 30)
    return time.monotonic() - started, int(cluster.kubelet.state(name)["ExitCode"])


def test_a_stopped_engine_drains_and_exits_within_its_grace_period(
    cluster: Cluster, operators: dict[str, str],
) -> None:
    """capguard is PID 1 in its container: SIGTERM must reach the agent's handler (PID 1
    has no default one), the agent drains its model server and exits 0, not SIGKILLed."""
    demo = kustomize(ROOT / "deploy" / "demo")
    namespace = single(demo, "Namespace")["metadata"]["name"]
    listed = cluster.kubectl("get", "inferenceengines", "-n", namespace, "-o",
                             "jsonpath={range .items[*]}{.metadata.name}={.status.phase} {end}")
    serving = sorted(name for name, phase in (p.split("=") for p in listed.split())
                     if phase == "Serving")
    assert serving, listed
    engines = single(demo, "StatefulSet")
    took, code = _stop(cluster, f"{cluster.kubelet.prefix}-{serving[0]}",
                       engines["spec"]["template"])
    log = cluster.kubelet.logs(f"{cluster.kubelet.prefix}-{serving[0]}")
    assert code == 0, f"exit {code} after {took:.1f}s:\n{log[-3000:]}"
    assert "Traceback" not in log, log[-3000:]
    phase = cluster.kubectl("get", "inferenceengine", serving[0], "-n", namespace, "-o",
                            "jsonpath={.status.phase}")
    assert phase != "Serving", f"{serving[0]} still says Serving after its agent stopped"


def test_a_stopped_leader_exits_at_once_and_gives_its_lease_up(
    cluster: Cluster, operators: dict[str, str],
) -> None:
    namespace = _operator_namespace()
    leader = _held(cluster, namespace)
    deployment = single(kustomize(ROOT / "deploy"), "Deployment")
    took, code = _stop(cluster, f"{cluster.kubelet.prefix}-{leader}",
                       deployment["spec"]["template"])
    log = cluster.kubelet.logs(f"{cluster.kubelet.prefix}-{leader}")
    assert code == 0, f"exit {code} after {took:.1f}s:\n{log[-3000:]}"
    assert took < 15, f"{took:.1f}s to stop:\n{log[-3000:]}"
    assert _leader(cluster, namespace) == "", "the Lease is given up, not left to expire"
