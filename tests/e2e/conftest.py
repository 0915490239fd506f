"""The cluster, namespaces and operators of the end-to-end suite.

The suite runs against an existing cluster only when asked explicitly with
`CAPGUARD_E2E_KUBECONFIG=FILE`; `KUBECONFIG` is never read. Otherwise one embedded API
server (`python -m capguard.localcluster`) serves the whole session. Each test gets
its own namespace, deleted afterwards, and every operator it started is stopped, also
when the test fails (its log is printed then).

On a cluster where capguard is deployed (hack/kind-up.sh, then hack/e2e-kind.sh), the
operator under test is the deployed one, running in the cluster from its image: the
suite never scales it, tests/e2e/test_in_cluster.py exercises it, and the tests that
start operators of their own on this machine skip (theirs would race it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import pytest
from kubernetes import client

from . import harness, kube_client

EXTERNAL_KUBECONFIG: Final = "CAPGUARD_E2E_KUBECONFIG"
DEPLOYED_OPERATOR: Final = "deployment/capguard-operator"


@dataclasses.dataclass(frozen=True)
class Target:
    """The cluster under test."""

    kubectl: harness.Kubectl  # cluster-scoped
    embedded: bool
    # capguard's Deployment runs in the cluster (with replicas), acting on every namespace.
    deployed: bool = False

    @property
    def kubeconfig(self) -> Path:
        return self.kubectl.kubeconfig


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end: kubectl and `capguard run` on a cluster")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Iterator[None]:
    report: pytest.TestReport = yield
    item.stash.setdefault(_FAILED, False)
    if report.failed:
        item.stash[_FAILED] = True
    return report


_FAILED: Final = pytest.StashKey[bool]()


def _kubectl_binary() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed: the end-to-end suite drives the cluster with it")
    return found


@contextlib.contextmanager
def embedded_cluster(directory: Path, *, crds: Path | None = harness.CRDS,
                     binary: str = "kubectl", rbac: bool = False,
                     ) -> Iterator[tuple[harness.Kubectl, Path]]:
    """An embedded API server in a subprocess, CRDs applied with kubectl as a user would
    (none with `crds=None`, for tests of installing them); with `rbac`, over HTTPS and
    authorizing every request by the RBAC objects applied to it, as a cluster does (the
    kubectl yielded is the admin's).

    Yields a cluster-scoped kubectl and the server's audit log (complete once the
    server has stopped: a watch is recorded when it ends).
    """
    kubeconfig, audit_log = directory / "kubeconfig", directory / "audit.jsonl"
    security: list[str] = []
    if rbac:
        from ship import container

        _, security = container.security(directory, address="127.0.0.1")
    server = subprocess.Popen(
        [sys.executable, "-m", "capguard.localcluster", "--port=0",
         f"--kubeconfig={kubeconfig}", f"--audit-log={audit_log}", *security],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=harness.clean_env())
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert "serving at" in first, f"the embedded API server did not start: {first}"
        kubectl = harness.Kubectl(kubeconfig=kubeconfig, binary=binary)
        if crds is not None:
            kubectl.run("apply", f"--filename={crds}")
            kubectl.run("wait", "--for=condition=Established", "--timeout=30s",
                        "customresourcedefinitions", "--all")
        kubectl.run("create", "namespace", harness.OPERATOR_NAMESPACE)
        yield kubectl, audit_log
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    binary = _kubectl_binary()
    external = os.environ.get(EXTERNAL_KUBECONFIG)
    if external:
        path = Path(external)
        if not path.is_file():
            pytest.fail(f"{EXTERNAL_KUBECONFIG}={external} is not a file", pytrace=False)
        kubectl = harness.Kubectl(kubeconfig=path.resolve(), binary=binary)
        kubectl.run("apply", f"--filename={harness.CRDS}")
        kubectl.run("wait", "--for=condition=Established", "--timeout=60s",
                    *(f"customresourcedefinitions/{p}.capguard.dev"
                      for p in ("inferenceengines", "modelcapacities", "circuitbreakers")))
        if not kubectl.exists("namespace", harness.OPERATOR_NAMESPACE):
            kubectl.run("create", "namespace", harness.OPERATOR_NAMESPACE)
        yield Target(kubectl=kubectl, embedded=False, deployed=_operator_deployed(kubectl))
        return
    with embedded_cluster(tmp_path_factory.mktemp("cluster"), binary=binary) as (kubectl, _):
        yield Target(kubectl=kubectl, embedded=True)


def _operator_deployed(kubectl: harness.Kubectl) -> bool:
    """Whether capguard's Deployment (deploy/) has replicas: read, never changed. Pausing it
    for the session would test something other than what users run, and a killed run
    would leave it at 0. An API server without Deployments (a bare one, or the embedded
    server run as the cluster under test) has none deployed."""
    system = kubectl.in_namespace(harness.OPERATOR_NAMESPACE)
    done = system.run("get", DEPLOYED_OPERATOR, "--ignore-not-found",
                      "--output=jsonpath={.spec.replicas}", check=False)
    if done.returncode != 0:
        if 'the server doesn\'t have a resource type "deployment"' in done.stderr:
            return False
        raise harness.KubectlError(args=("get", DEPLOYED_OPERATOR), code=done.returncode,
                                   stderr=done.stderr)
    found = done.stdout.strip()
    return bool(found) and found != "0"


def _namespace_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower().removeprefix("test_")).strip("-")
    return f"e2e-{slug[:40].strip('-')}-{secrets.token_hex(2)}"


@pytest.fixture
def kube(target: Target, request: pytest.FixtureRequest) -> Iterator[harness.Kubectl]:
    """kubectl in a fresh namespace of this test's own; everything in it goes afterwards."""
    namespace = _namespace_name(request.node.name)
    target.kubectl.run("create", "namespace", namespace)
    kubectl = target.kubectl.in_namespace(namespace)
    try:
        yield kubectl
    finally:
        _delete_namespace(kubectl, namespace)


@pytest.fixture(scope="session")
def kube_api(target: Target) -> Iterator[client.ApiClient]:
    """The official `kubernetes` client on the same cluster, a second client next to kubectl."""
    with kube_client.connect(target.kubeconfig) as api:
        yield api


@pytest.fixture
def custom(kube_api: client.ApiClient, kube: harness.Kubectl) -> kube_client.Custom:
    """capguard's objects in this test's namespace, through the `kubernetes` client."""
    assert kube.namespace is not None
    return kube_client.Custom(api=kube_api, namespace=kube.namespace)


def _delete_namespace(kubectl: harness.Kubectl, namespace: str) -> None:
    kinds = "inferenceengines,modelcapacities,circuitbreakers"
    # Foreign finalizers a test left (on failure) would keep the namespace Terminating.
    for name in kubectl.run("get", kinds, "--output=name", check=False).stdout.split():
        kubectl.run("patch", name, "--type=merge", "--patch",
                    json.dumps({"metadata": {"finalizers": None}}), check=False)
    kubectl.run("delete", kinds, "--all", "--wait=false", check=False)
    kubectl.in_namespace(None).run("delete", "namespace", namespace, "--wait=false",
                                   check=False)


class Operators:
    """`capguard run` subprocesses of one test, stopped when the test ends."""

    def __init__(self, *, target: Target, namespace: str, log_dir: Path) -> None:
        self.target = target
        self.namespace = namespace
        self.log_dir = log_dir
        self.started: list[harness.OperatorProcess] = []

    def start(self, *, identity: str = "", leader_election: bool = False,
              cluster_wide: bool = False, flags: Sequence[str] = (),
              kubeconfig: Path | None = None) -> harness.OperatorProcess:
        identity = identity or f"{self.namespace}-{len(self.started)}"
        command = harness.operator_command(
            kubeconfig=kubeconfig or self.target.kubeconfig,
            namespaces=() if cluster_wide else (self.namespace,), identity=identity,
            leader_election=leader_election, flags=flags)
        process = harness.start_operator(command, identity=identity,
                                         log_path=self.log_dir / f"{identity}.log")
        self.started.append(process)
        process.port()
        return process

    def stop_all(self, *, show_logs: bool) -> None:
        for process in self.started:
            process.stop()
        if show_logs:
            for process in self.started:
                print(f"----- operator {process.identity} (exit {process.process.returncode})"
                      f" -----\n{process.log()[-6000:]}")


@pytest.fixture
def operators(target: Target, kube: harness.Kubectl, tmp_path: Path,
              request: pytest.FixtureRequest) -> Iterator[Operators]:
    if target.deployed:
        pytest.skip(f"{DEPLOYED_OPERATOR} runs in the cluster and acts on every namespace: "
                    "an operator started here would race it (test_in_cluster.py tests it)")
    assert kube.namespace is not None
    started = Operators(target=target, namespace=kube.namespace, log_dir=tmp_path)
    try:
        yield started
    finally:
        started.stop_all(show_logs=request.node.stash.get(_FAILED, False))
