"""Service-account tokens as a cluster issues them (TokenRequest, `kubectl create token`),
and `kubectl auth whoami`: a token authenticates as its account, RBAC applies to it, and it
stops working when it expires or its account is deleted (even if one of the same name is
made again). With the real kubectl over HTTPS.
"""
from __future__ import annotations

import pathlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from capguard.localcluster import LocalCluster, ThreadedCluster, authz, objects, resources, store
from capguard.localcluster import tokens as issued

from .test_authz import _self_signed
from .test_rbac_served import LEASE_READER

KUBECTL = shutil.which("kubectl")
ENGINE = "system:serviceaccount:demo:capguard-engine"


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[ThreadedCluster]:
    if KUBECTL is None or shutil.which("openssl") is None:
        pytest.skip("needs kubectl and openssl")
    with LocalCluster.start_in_thread(kubeconfig_path=tmp_path / "kubeconfig",
                                      rbac=authz.Policy(), tls=_self_signed(tmp_path)) as running:
        yield running


def _kubectl(cluster: ThreadedCluster, *args: str, stdin: str | None = None
             ) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None
    return subprocess.run([KUBECTL, f"--kubeconfig={cluster.kubeconfig_path}",
                           f"--cache-dir={cluster.kubeconfig_path.parent / 'cache'}", *args],
                          input=stdin, capture_output=True, text=True, check=False, timeout=60)


def _ok(cluster: ThreadedCluster, *args: str, stdin: str | None = None) -> str:
    done = _kubectl(cluster, *args, stdin=stdin)
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


def test_kubectl_create_token_logs_in_as_the_service_account(cluster: ThreadedCluster) -> None:
    _ok(cluster, "create", "namespace", "demo")
    _ok(cluster, "create", "serviceaccount", "capguard-engine", "-n", "demo")
    listed = _ok(cluster, "get", "serviceaccounts", "-n", "demo").splitlines()
    assert listed[0].split() == ["NAME", "SECRETS", "AGE"]
    assert sorted(line.split()[:2] for line in listed[1:]) == [
        ["capguard-engine", "0"], ["default", "0"]]   # default: made with the namespace
    token = _ok(cluster, "create", "token", "capguard-engine", "-n", "demo").strip()
    whoami = _ok(cluster, "--token", token, "auth", "whoami").splitlines()
    assert whoami[1].split() == ["Username", ENGINE]
    assert whoami[2].split(None, 1) == [
        "Groups", "[system:serviceaccounts system:serviceaccounts:demo system:authenticated]"]
    assert _ok(cluster, "auth", "whoami").splitlines()[1].split() == [
        "Username", "kubernetes-admin"]
    # RBAC applies to the account the token is of
    assert "Forbidden" in _kubectl(cluster, "--token", token, "get", "leases", "-n",
                                   "demo").stderr
    _ok(cluster, "apply", "-f", "-", stdin=LEASE_READER)
    assert _kubectl(cluster, "--token", token, "get", "leases", "-n", "demo").returncode == 0
    # refused as the real server refuses: no such account, too short a life
    missing = _kubectl(cluster, "create", "token", "nobody", "-n", "demo")
    assert missing.stderr.strip() == ('error: failed to create token: serviceaccounts "nobody" '
                                      'not found')
    short = _kubectl(cluster, "create", "token", "capguard-engine", "-n", "demo",
                     "--duration=5m")
    assert short.stderr.strip() == (
        'error: failed to create token: TokenRequest.authentication.k8s.io "capguard-engine" '
        'is invalid: spec.expirationSeconds: Invalid value: 300: may not specify a duration '
        'less than 10 minutes')
    # a token is bound to its account: deleted (and made again) it is no longer valid
    _ok(cluster, "delete", "serviceaccount", "capguard-engine", "-n", "demo")
    _ok(cluster, "create", "serviceaccount", "capguard-engine", "-n", "demo")
    gone = _kubectl(cluster, "--token", token, "get", "leases", "-n", "demo")
    assert gone.returncode == 1
    assert "You must be logged in to the server (Unauthorized)" in gone.stderr, gone.stderr


def test_a_token_expires_on_the_issuers_clock() -> None:
    now = [1_000_000.0]
    registry = resources.Registry()
    for rt in resources.BUILTINS:
        registry.add(rt)
    api = objects.Objects(registry=registry, db=store.Store())
    for rt, body in ((resources.NAMESPACES, {"metadata": {"name": "demo"}}),
                     (resources.SERVICE_ACCOUNTS, {"metadata": {"name": "sa"}})):
        api.create(rt, {"apiVersion": "v1", "kind": rt.kind, **body},
                   namespace="demo" if rt.namespaced else "", options=objects.WriteOptions())
    issuer = issued.Issuer(api, clock=lambda: now[0])
    answer = issuer.request(namespace="demo", name="sa",
                            body={"spec": {"expirationSeconds": 600}})
    assert answer["status"]["expirationTimestamp"] == "1970-01-12T13:56:40Z"
    token = answer["status"]["token"]
    assert issuer.user(token) == authz.service_account("demo", "sa")
    now[0] += 599
    assert issuer.user(token) is not None
    now[0] += 1
    assert issuer.user(token) is None
    assert issuer.user("not-a-token") is None


def test_every_namespace_gets_its_default_service_account() -> None:
    """As kube-controller-manager's service account controller: made with the Namespace,
    made again if deleted; a bare apiserver (no controllers) makes none."""
    with LocalCluster.start_in_thread() as cluster:
        cluster.call(cluster.cluster.apply, resources.NAMESPACES,
                     {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})

        def default() -> store.Entry | None:
            found: store.Entry | None = cluster.call(
                cluster.cluster.db.get, resources.SERVICE_ACCOUNTS.storage_key,
                ("demo", "default"))
            return found

        first = _eventually(default)
        cluster.call(lambda: cluster.cluster.api.delete(
            resources.SERVICE_ACCOUNTS, namespace="demo", name="default",
            options=objects.DeleteOptions()))
        again = _eventually(default)
        assert again.obj["metadata"]["uid"] != first.obj["metadata"]["uid"]
        assert cluster.call(cluster.cluster.db.get, resources.SERVICE_ACCOUNTS.storage_key,
                            ("kube-system", "default")) is not None
    with LocalCluster.start_in_thread(namespace_controller=False) as bare:
        assert bare.call(bare.cluster.db.count, resources.SERVICE_ACCOUNTS.storage_key) == 0


def _eventually(find: Callable[[], store.Entry | None]) -> store.Entry:
    deadline = time.monotonic() + 5
    while (found := find()) is None:
        assert time.monotonic() < deadline, "no default ServiceAccount within 5 s"
        time.sleep(0.01)
    return found
