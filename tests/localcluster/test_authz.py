"""The embedded server authenticates and authorizes as a kube-apiserver with
`--token-auth-file` and `--authorization-mode=RBAC` does, when asked to: a request no rule
allows is refused 403 with the real server's words, an unknown token 401, and the rules
match as RBAC matches them (resourceNames, a name in a field selector, subresources, a
RoleBinding's namespace). Over HTTP, with the real kubectl where a person would use it.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, Final

import pytest
import yaml

from capguard.localcluster import LocalCluster, ThreadedCluster, authz

ENGINE_TOKEN: Final = "engine-token"
READER_TOKEN: Final = "reader-token"
ENGINE: Final = "system:serviceaccount:demo:capguard-engine"
ROOT: Final = pathlib.Path(__file__).resolve().parents[2]

POLICY: Final = """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: engine, namespace: demo}
rules:
  - apiGroups: [coordination.k8s.io]
    resources: [leases]
    resourceNames: [engine-0]
    verbs: [get, watch, patch]
  - apiGroups: [coordination.k8s.io]
    resources: [leases]
    verbs: [create]
  - apiGroups: [""]
    resources: [configmaps/status, "*/scale"]
    verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: engine, namespace: demo}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: engine}
subjects:
  - {kind: ServiceAccount, name: capguard-engine}   # of the binding's namespace
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: reader}
rules:
  - apiGroups: ["*"]
    resources: ["*"]
    verbs: [get, list]
  - nonResourceURLs: [/metrics, /debug/*]
    verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: reader}
subjects:
  - {kind: Group, name: readers}
"""
TOKENS: Final = (f'{ENGINE_TOKEN},{ENGINE},uid-1\n'
                 f'{READER_TOKEN},alice,uid-2,"readers,auditors"\n')
LEASE: Final = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "engine-0"}, "spec": {"holderIdentity": "engine-0"}}
LEASES: Final = "/apis/coordination.k8s.io/v1/namespaces/demo/leases"


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[ThreadedCluster]:
    with LocalCluster.start_in_thread(
            kubeconfig_path=tmp_path / "kubeconfig", tokens=authz.read_tokens(TOKENS),
            rbac=authz.Policy.of(yaml.safe_load_all(POLICY))) as running:
        yield running


def _call(cluster: ThreadedCluster, method: str, path: str, *, token: str | None,
          body: Any = None, content_type: str = "application/json") -> tuple[int, Any]:
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(cluster.url + path, data=data, method=method,
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw.startswith(b"{") else raw
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, json.loads(raw) if raw.startswith(b"{") else raw


def _admin(cluster: ThreadedCluster) -> str:
    config = yaml.safe_load(cluster.kubeconfig_path.read_text())
    return str(config["users"][0]["user"]["token"])


def test_a_request_no_rule_allows_is_refused_in_the_real_servers_words(
        cluster: ThreadedCluster) -> None:
    # `demo` was made with the policy's objects, which name it
    assert _call(cluster, "GET", "/api/v1/namespaces/demo", token=_admin(cluster))[0] == 200
    code, body = _call(cluster, "GET", LEASES, token=ENGINE_TOKEN)
    assert code == 403
    assert body == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": f'leases.coordination.k8s.io is forbidden: User "{ENGINE}" cannot list '
                   f'resource "leases" in API group "coordination.k8s.io" in the namespace '
                   f'"demo"',
        "reason": "Forbidden", "details": {"group": "coordination.k8s.io", "kind": "leases"},
        "code": 403}
    code, body = _call(cluster, "DELETE", f"{LEASES}/engine-0", token=ENGINE_TOKEN)
    assert (code, body["message"]) == (403, (
        f'leases.coordination.k8s.io "engine-0" is forbidden: User "{ENGINE}" cannot delete '
        f'resource "leases" in API group "coordination.k8s.io" in the namespace "demo"'))
    assert body["details"] == {"name": "engine-0", "group": "coordination.k8s.io",
                               "kind": "leases"}
    code, body = _call(cluster, "GET", "/api/v1/namespaces", token=ENGINE_TOKEN)
    assert (code, body["message"]) == (403, (
        f'namespaces is forbidden: User "{ENGINE}" cannot list resource "namespaces" in API '
        f'group "" at the cluster scope'))
    code, body = _call(cluster, "GET", "/metrics", token=ENGINE_TOKEN)
    assert (code, body["message"], body["details"]) == (
        403, f'forbidden: User "{ENGINE}" cannot get path "/metrics"', {})
    # Refused before routing, as the real filter chain does: 403, not 404.
    code, _ = _call(cluster, "GET", "/apis/no.such/v1/things", token=ENGINE_TOKEN)
    assert code == 403


def test_rules_match_as_rbac_matches_them(cluster: ThreadedCluster) -> None:
    admin = _admin(cluster)
    # create cannot be narrowed to a name; then the name's get, watch and patch
    code, _ = _call(cluster, "POST", LEASES, token=ENGINE_TOKEN, body=LEASE)
    assert code == 201
    assert _call(cluster, "GET", f"{LEASES}/engine-0", token=ENGINE_TOKEN)[0] == 200
    assert _call(cluster, "PATCH", f"{LEASES}/engine-0", token=ENGINE_TOKEN,
                 body={"spec": {"leaseDurationSeconds": 5}},
                 content_type="application/merge-patch+json")[0] == 200
    other = {**LEASE, "metadata": {"name": "engine-1"}}
    assert _call(cluster, "POST", LEASES, token=admin, body=other)[0] == 201
    assert _call(cluster, "GET", f"{LEASES}/engine-1", token=ENGINE_TOKEN)[0] == 403
    # a watch of one object by fieldSelector=metadata.name is a request for that name
    named = "fieldSelector=metadata.name%3Dengine-0&timeoutSeconds=1"
    assert _call(cluster, "GET", f"{LEASES}?watch=true&{named}", token=ENGINE_TOKEN)[0] == 200
    assert _call(cluster, "GET", f"{LEASES}?{named}", token=ENGINE_TOKEN)[0] == 403  # list
    assert _call(cluster, "GET", f"{LEASES}?watch=true&fieldSelector=metadata.name%3Dengine-1"
                 "&timeoutSeconds=1", token=ENGINE_TOKEN)[0] == 403
    # the binding's namespace only
    assert _call(cluster, "GET", "/apis/coordination.k8s.io/v1/namespaces/default/leases/"
                 "engine-0", token=ENGINE_TOKEN)[0] == 403
    # a subresource is its own resource; `*/scale` any resource's scale
    rule = authz.Rule.of({"apiGroups": [""], "resources": ["configmaps/status", "*/scale"],
                          "verbs": ["get"]})
    assert rule.allows(authz.request_info("GET", "/api/v1/namespaces/d/configmaps/c/status"))
    assert not rule.allows(authz.request_info("GET", "/api/v1/namespaces/d/configmaps/c"))
    assert rule.allows(authz.request_info("GET", "/api/v1/namespaces/d/things/t/scale"))
    # groups from the token file; wildcards; non-resource URLs with a trailing *
    assert _call(cluster, "GET", "/api/v1/namespaces", token=READER_TOKEN)[0] == 200
    assert _call(cluster, "GET", LEASES, token=READER_TOKEN)[0] == 200
    assert _call(cluster, "DELETE", f"{LEASES}/engine-0", token=READER_TOKEN)[0] == 403
    assert authz.Policy.of(yaml.safe_load_all(POLICY)).allows(
        authz.read_tokens(TOKENS)[READER_TOKEN],
        authz.request_info("GET", "/debug/pprof/heap"))
    # a RoleBinding grants no non-resource URL, even of a ClusterRole that names it
    granted = authz.Policy.of([*yaml.safe_load_all(POLICY), {
        "kind": "RoleBinding", "metadata": {"name": "m", "namespace": "demo"},
        "roleRef": {"kind": "ClusterRole", "name": "reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "capguard-engine"}]}])
    engine = authz.read_tokens(TOKENS)[ENGINE_TOKEN]
    assert granted.allows(engine, authz.request_info("GET", f"{LEASES}/engine-9"))
    assert not granted.allows(engine, authz.request_info("GET", "/metrics"))


def test_who_is_asking(cluster: ThreadedCluster) -> None:
    code, body = _call(cluster, "GET", "/api/v1/namespaces", token="nobody-has-this")
    assert (code, body) == (401, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                  "status": "Failure", "message": "Unauthorized",
                                  "reason": "Unauthorized", "code": 401})
    # no bearer token: system:anonymous, who may read health and version, nothing else
    assert _call(cluster, "GET", "/version", token=None)[0] == 200
    authorizer = authz.Authorizer(tokens=authz.read_tokens(TOKENS), policy=None)
    for header in (None, "", "Basic dXNlcjpwYXNz", "Bearer ", "Bearer"):
        assert authorizer.authenticate(header).name == "system:anonymous", header
    assert authorizer.authenticate(f"bearer {ENGINE_TOKEN}").name == ENGINE
    assert _call(cluster, "GET", "/readyz", token=None)[0] == 200
    code, body = _call(cluster, "GET", "/api/v1/namespaces", token=None)
    assert code == 403 and 'User "system:anonymous" cannot list' in body["message"]
    # any authenticated user may read discovery (system:discovery)
    assert _call(cluster, "GET", "/apis", token=ENGINE_TOKEN)[0] == 200
    users = [record.get("user", {}).get("username") for record in cluster.audit]
    assert users[-1] == ENGINE
    assert "system:anonymous" in users
    engine = authz.read_tokens(TOKENS)[ENGINE_TOKEN]
    assert engine.groups == ("system:serviceaccounts", "system:serviceaccounts:demo",
                             "system:authenticated")


KUBECTL = shutil.which("kubectl")
OPENSSL = shutil.which("openssl")


def _self_signed(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    assert OPENSSL is not None
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=kube-apiserver",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   capture_output=True, check=True, timeout=60)
    return cert, key


@pytest.mark.skipif(KUBECTL is None or OPENSSL is None, reason="needs kubectl and openssl")
def test_kubectl_as_the_admin_and_as_a_service_account(tmp_path: pathlib.Path) -> None:
    """Over HTTPS: kubectl sends a bearer token only there (over HTTP it sends none)."""
    assert KUBECTL is not None
    with LocalCluster.start_in_thread(
            kubeconfig_path=tmp_path / "kubeconfig", tokens=authz.read_tokens(TOKENS),
            rbac=authz.Policy.of(yaml.safe_load_all(POLICY)),
            tls=_self_signed(tmp_path)) as cluster:
        assert cluster.url.startswith("https://")
        _kubectl_as_the_admin_and_as_a_service_account(cluster, tmp_path)


def _kubectl_as_the_admin_and_as_a_service_account(cluster: ThreadedCluster,
                                                   tmp_path: pathlib.Path) -> None:
    assert KUBECTL is not None
    config = str(cluster.kubeconfig_path)
    cache = f"--cache-dir={tmp_path / 'cache'}"

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([KUBECTL, f"--kubeconfig={config}", cache, *args],
                              capture_output=True, text=True, check=False, timeout=60)

    assert kubectl("create", "namespace", "other").returncode == 0   # kubernetes-admin
    denied = kubectl("--token", ENGINE_TOKEN, "get", "leases", "-n", "demo")
    assert denied.returncode == 1
    assert denied.stderr.strip().endswith(
        f'Error from server (Forbidden): leases.coordination.k8s.io is forbidden: User '
        f'"{ENGINE}" cannot list resource "leases" in API group "coordination.k8s.io" in '
        f'the namespace "demo"'), denied.stderr
    wrong = kubectl("--token", "nobody-has-this", "get", "leases", "-n", "demo")
    assert wrong.returncode == 1
    assert "You must be logged in to the server (Unauthorized)" in wrong.stderr, wrong.stderr
    users = {record.get("user", {}).get("username") for record in cluster.audit
             if record["code"] != 401}
    assert users == {"kubernetes-admin", ENGINE}, users   # nobody came in without a token


@pytest.mark.parametrize(("flag", "text", "says"), [
    ("--rbac", "kind: Role\nmetadata: {name: r}\nrules: []\n",
     "--rbac: Role/r has no metadata.namespace; give each Role and RoleBinding the namespace"),
    ("--rbac", "kind: ConfigMap\nmetadata: {name: c}\n",
     "holds no Role, ClusterRole, RoleBinding or ClusterRoleBinding"),
    ("--rbac", "kind: [\n", "--rbac: "),
    ("--token-auth-file", "just-a-token\n",
     "--token-auth-file: line 1 of the token file: want token,user,uid"),
    ("--tls-cert-file", "not read\n",
     "--tls-cert-file and --tls-private-key-file go together; give both"),
])
def test_a_bad_file_is_one_line_naming_the_flag(tmp_path: pathlib.Path, flag: str, text: str,
                                                says: str) -> None:
    path = tmp_path / "file"
    path.write_text(text)
    done = subprocess.run([sys.executable, "-m", "capguard.localcluster", flag, str(path)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("capguard localcluster: ") and says in done.stderr, (
        done.stderr)
    assert done.stderr.count("\n") == 1, done.stderr


def test_the_command_serves_with_tokens_and_rbac(tmp_path: pathlib.Path) -> None:
    (tmp_path / "tokens.csv").write_text(TOKENS)
    (tmp_path / "rbac.yaml").write_text(POLICY)
    kubeconfig = tmp_path / "kubeconfig"
    with subprocess.Popen(
            [sys.executable, "-m", "capguard.localcluster", "--port=0",
             f"--kubeconfig={kubeconfig}", f"--token-auth-file={tmp_path / 'tokens.csv'}",
             f"--rbac={tmp_path / 'rbac.yaml'}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as server:
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip().rsplit(" ", 1)[1]

            def status(token: str) -> int:
                request = urllib.request.Request(f"{url}/api/v1/namespaces",
                                                 headers={"Authorization": f"Bearer {token}"})
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:
                        return int(response.status)
                except urllib.error.HTTPError as error:
                    return int(error.code)

            admin = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
            assert (status(admin), status(READER_TOKEN), status(ENGINE_TOKEN),
                    status("nobody")) == (200, 200, 403, 401)
            assert kubeconfig.stat().st_mode & 0o077 == 0   # the admin's token is private
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
