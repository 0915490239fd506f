"""RBAC served as a cluster serves it: Roles, ClusterRoles and bindings are objects that
`kubectl apply` writes and authorization follows as they change; `kubectl auth can-i`
(with and without `--as`) is answered from the same rules; a user cannot grant what it
does not hold; the four kinds are admitted as kube-apiserver's rbac validation admits
them. Over HTTPS with the real kubectl where a person would use it, over HTTP where the
exact Status is the point.
"""
from __future__ import annotations

import json
import pathlib
import re
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, Final

import pytest
import yaml

from capguard.localcluster import LocalCluster, ThreadedCluster, authz, rbac

from .test_authz import ENGINE, ENGINE_TOKEN, TOKENS, _self_signed

KUBECTL = shutil.which("kubectl")
OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(KUBECTL is None or OPENSSL is None,
                                reason="needs kubectl and openssl")
RBAC: Final = "/apis/rbac.authorization.k8s.io/v1"
ROLES: Final = f"{RBAC}/namespaces/demo/roles"
BINDINGS: Final = f"{RBAC}/namespaces/demo/rolebindings"
LEASE_READER: Final = """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: lease-reader, namespace: demo}
rules:
  - apiGroups: [coordination.k8s.io]
    resources: [leases]
    verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: lease-reader, namespace: demo}
roleRef: {kind: Role, name: lease-reader}
subjects: [{kind: ServiceAccount, name: capguard-engine}]
"""
# May write Roles and RoleBindings in demo, and read Leases: what it may grant.
RBAC_EDITOR: Final = {
    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
    "metadata": {"name": "rbac-editor", "namespace": "demo"},
    "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"],
               "verbs": ["create", "get", "patch", "update"]},
              {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
               "verbs": ["get", "list"]}]}


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[ThreadedCluster]:
    """RBAC enforced, nothing granted yet but by the bootstrap policy."""
    with LocalCluster.start_in_thread(
            kubeconfig_path=tmp_path / "kubeconfig", tokens=authz.read_tokens(TOKENS),
            rbac=authz.Policy(), tls=_self_signed(tmp_path)) as running:
        yield running


def _kubectl(cluster: ThreadedCluster, *args: str, stdin: str | None = None
             ) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None
    cache = cluster.kubeconfig_path.parent / "cache"
    return subprocess.run([KUBECTL, f"--kubeconfig={cluster.kubeconfig_path}",
                           f"--cache-dir={cache}", *args], input=stdin,
                          capture_output=True, text=True, check=False, timeout=60)


def _ok(cluster: ThreadedCluster, *args: str, stdin: str | None = None) -> str:
    done = _kubectl(cluster, *args, stdin=stdin)
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


def _call(cluster: ThreadedCluster, method: str, path: str, *, token: str | None = None,
          body: Any = None, content_type: str = "application/json") -> tuple[int, Any]:
    """One request as `token` (the admin's by default) over the cluster's HTTPS."""
    config = yaml.safe_load(cluster.kubeconfig_path.read_text())
    token = token or config["users"][0]["user"]["token"]
    assert cluster.cluster.tls is not None
    context = ssl.create_default_context(cafile=str(cluster.cluster.tls[0]))
    request = urllib.request.Request(
        cluster.url + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), json.loads(error.read())


def test_rbac_objects_applied_with_kubectl_authorize_from_then_on(
        cluster: ThreadedCluster) -> None:
    _ok(cluster, "create", "namespace", "demo")
    as_engine = ("--token", ENGINE_TOKEN, "get", "leases", "-n", "demo")
    assert "Forbidden" in _kubectl(cluster, *as_engine).stderr
    applied = _ok(cluster, "apply", "-f", "-", stdin=LEASE_READER)
    assert applied.splitlines() == [
        "role.rbac.authorization.k8s.io/lease-reader created",
        "rolebinding.rbac.authorization.k8s.io/lease-reader created"]
    assert "No resources found in demo namespace." in _kubectl(cluster, *as_engine).stderr
    assert _kubectl(cluster, *as_engine).returncode == 0
    # defaulted as the real server defaults them: roleRef.apiGroup; no apiGroup on an account
    binding = json.loads(_ok(cluster, "get", "rolebinding", "lease-reader", "-n", "demo",
                             "-o", "json"))
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "lease-reader"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "capguard-engine"}]
    (header, row) = _ok(cluster, "get", "rolebindings", "-n", "demo").splitlines()
    assert header.split() == ["NAME", "ROLE", "AGE"]
    assert row.split()[:2] == ["lease-reader", "Role/lease-reader"]
    # as RBAC's printer shows them: when it was made, not an age
    (header, row) = _ok(cluster, "get", "roles", "-n", "demo").splitlines()
    assert header.split() == ["NAME", "CREATED", "AT"]
    assert row.split()[0] == "lease-reader"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row.split()[1]), row
    _ok(cluster, "delete", "rolebinding", "lease-reader", "-n", "demo")
    refused = _kubectl(cluster, *as_engine)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f'Error from server (Forbidden): leases.coordination.k8s.io is forbidden: User '
        f'"{ENGINE}" cannot list resource "leases" in API group "coordination.k8s.io" in the '
        f'namespace "demo"')


def test_kubectl_auth_can_i_as_itself_and_as_another(cluster: ThreadedCluster) -> None:
    _ok(cluster, "create", "namespace", "demo")
    _ok(cluster, "apply", "-f", "-", stdin=LEASE_READER)
    as_engine = f"--as={ENGINE}"
    assert _ok(cluster, "auth", "can-i", "list", "leases", "-n", "demo", as_engine) == "yes\n"
    denied = _kubectl(cluster, "auth", "can-i", "delete", "leases", "-n", "demo", as_engine)
    assert (denied.returncode, denied.stdout) == (1, "no\n")
    assert _kubectl(cluster, "auth", "can-i", "list", "leases", "-n", "default",
                    as_engine).stdout == "no\n"   # a RoleBinding grants in its namespace
    assert _ok(cluster, "--token", ENGINE_TOKEN, "auth", "can-i", "get", "leases", "-n",
               "demo") == "yes\n"
    listed = _ok(cluster, "--token", ENGINE_TOKEN, "auth", "can-i", "--list", "-n", "demo")
    assert any(line.split()[:1] == ["leases.coordination.k8s.io"] and "[get list]" in line
               for line in listed.splitlines()), listed
    assert _ok(cluster, "auth", "can-i", "delete", "leases", "-n", "demo") == "yes\n"  # admin
    # impersonating is itself a permission the engine does not have
    refused = _kubectl(cluster, "--token", ENGINE_TOKEN, "get", "leases", "-n", "demo",
                       "--as=bob")
    assert refused.stderr.strip() == (
        f'Error from server (Forbidden): users "bob" is forbidden: User "{ENGINE}" cannot '
        f'impersonate resource "users" in API group "" at the cluster scope')
    impersonated = [r for r in cluster.audit if "impersonatedUser" in r]
    assert impersonated and impersonated[0]["user"]["username"] == "kubernetes-admin"
    assert impersonated[0]["impersonatedUser"] == {
        "username": ENGINE, "groups": ["system:serviceaccounts", "system:serviceaccounts:demo",
                                       "system:authenticated"]}
    # the review as a client posts it in JSON: why it was allowed, in RBAC's words
    code, review = _call(cluster, "POST", "/apis/authorization.k8s.io/v1/"
                         "selfsubjectaccessreviews", token=ENGINE_TOKEN, body={
                             "apiVersion": "authorization.k8s.io/v1",
                             "kind": "SelfSubjectAccessReview",
                             "spec": {"resourceAttributes": {
                                 "namespace": "demo", "verb": "get",
                                 "group": "coordination.k8s.io", "resource": "leases"}}})
    assert (code, review["status"]) == (201, {
        "allowed": True, "reason": 'RBAC: allowed by RoleBinding "lease-reader/demo" of Role '
                                   '"lease-reader" to ServiceAccount "capguard-engine/demo"'})
    # asking about someone else needs create on subjectaccessreviews: the admin has it
    asked = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
             "spec": {"user": ENGINE, "groups": ["system:serviceaccounts"],
                      "resourceAttributes": {"namespace": "demo", "verb": "list",
                                             "group": "coordination.k8s.io",
                                             "resource": "leases"}}}
    path = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
    code, review = _call(cluster, "POST", path, body=asked)
    assert (code, review["status"]["allowed"]) == (201, True)
    assert _call(cluster, "POST", path, token=ENGINE_TOKEN, body=asked)[0] == 403


def _role(name: str, *rules: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": "demo"}, "rules": list(rules)}


def _binding(name: str, role: str, *, kind: str = "Role") -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": "demo"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
            "subjects": [{"kind": "User", "name": "bob"}]}


LEASES_READ: Final = {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                      "verbs": ["get", "list"]}
WIDER: Final = ({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                 "verbs": ["get", "delete", "watch"]},
                {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"],
                 "verbs": ["get"]})


def test_nobody_grants_what_it_does_not_hold(cluster: ThreadedCluster) -> None:
    _ok(cluster, "create", "namespace", "demo")
    assert _call(cluster, "POST", ROLES, body=RBAC_EDITOR)[0] == 201
    editor = _binding("rbac-editor", "rbac-editor")
    editor["subjects"] = [{"kind": "ServiceAccount", "name": "capguard-engine"}]
    assert _call(cluster, "POST", BINDINGS, body=editor)[0] == 201
    # within what it holds: allowed
    assert _call(cluster, "POST", ROLES, token=ENGINE_TOKEN,
                 body=_role("readers", LEASES_READ))[0] == 201
    # more than it holds: refused, naming what is missing, in the real server's words
    code, body = _call(cluster, "POST", ROLES, token=ENGINE_TOKEN, body=_role("wider", *WIDER))
    assert code == 403
    assert body["message"] == (
        f'roles.rbac.authorization.k8s.io "wider" is forbidden: user "{ENGINE}" (groups='
        f'["system:serviceaccounts" "system:serviceaccounts:demo" "system:authenticated"]) is '
        f"attempting to grant RBAC permissions not currently held:\n"
        f'{{APIGroups:[""], Resources:["configmaps"], ResourceNames:["a"], Verbs:["get"]}}\n'
        f'{{APIGroups:["coordination.k8s.io"], Resources:["leases"], Verbs:["delete" "watch"]}}')
    assert body["details"] == {"name": "wider", "group": "rbac.authorization.k8s.io",
                               "kind": "roles"}
    # nor by changing a role it may update
    code, _ = _call(cluster, "PATCH", f"{ROLES}/readers", token=ENGINE_TOKEN,
                    body={"rules": list(WIDER)}, content_type="application/merge-patch+json")
    assert code == 403
    # binding a role that grants more than it holds: refused; a role within: allowed
    assert _call(cluster, "POST", ROLES, body=_role("wider", *WIDER))[0] == 201
    code, body = _call(cluster, "POST", BINDINGS, token=ENGINE_TOKEN,
                       body=_binding("bob-wider", "wider"))
    assert code == 403 and "attempting to grant RBAC permissions" in body["message"]
    assert _call(cluster, "POST", BINDINGS, token=ENGINE_TOKEN,
                 body=_binding("bob-readers", "readers"))[0] == 201
    # `bind` on that one role, and `escalate` on roles, are what let it past
    grant = _role("grants", {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"],
                             "resourceNames": ["wider"], "verbs": ["bind"]},
                  {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"],
                   "verbs": ["escalate"]})
    assert _call(cluster, "POST", ROLES, body=grant)[0] == 201
    granted = _binding("grants", "grants")
    granted["subjects"] = editor["subjects"]
    assert _call(cluster, "POST", BINDINGS, body=granted)[0] == 201
    assert _call(cluster, "POST", BINDINGS, token=ENGINE_TOKEN,
                 body=_binding("bob-wider", "wider"))[0] == 201
    assert _call(cluster, "POST", ROLES, token=ENGINE_TOKEN,
                 body=_role("wider-still", *WIDER))[0] == 201


def test_the_four_kinds_are_admitted_as_the_real_server_admits_them(
        cluster: ThreadedCluster) -> None:
    _ok(cluster, "create", "namespace", "demo")
    code, body = _call(cluster, "POST", ROLES, body=_role("r", {"apiGroups": [""],
                                                                  "resources": ["pods"]}))
    assert (code, body["message"]) == (422, (
        'Role.rbac.authorization.k8s.io "r" is invalid: rules[0].verbs: Required value: verbs '
        'must contain at least one value'))
    code, body = _call(cluster, "POST", ROLES, body=_role("r", {"nonResourceURLs": ["/x"],
                                                                  "verbs": ["get"]}))
    assert (code, body["message"]) == (422, (
        'Role.rbac.authorization.k8s.io "r" is invalid: rules[0].nonResourceURLs: Invalid '
        'value: []string{"/x"}: namespaced rules cannot apply to non-resource URLs'))
    # RBAC's names are path segments: colons are fine, a '%' is not
    clusterroles = f"{RBAC}/clusterroles"
    named = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": "system:capguard:reader"}, "rules": [LEASES_READ]}
    assert _call(cluster, "POST", clusterroles, body=named)[0] == 201
    code, body = _call(cluster, "POST", clusterroles,
                       body={**named, "metadata": {"name": "50%"}})
    assert (code, body["details"]["causes"][0]["message"]) == (
        422, "Invalid value: \"50%\": may not contain '%'")
    # a binding's role cannot change: it is deleted and made again
    assert _call(cluster, "POST", BINDINGS, body=_binding("b", "r1"))[0] == 201
    code, body = _call(cluster, "PATCH", f"{BINDINGS}/b", body={"roleRef": {"name": "r2"}},
                       content_type="application/merge-patch+json")
    assert (code, body["message"]) == (422, (
        'RoleBinding.rbac.authorization.k8s.io "b" is invalid: roleRef: Invalid value: '
        'rbac.RoleRef{APIGroup:"rbac.authorization.k8s.io", Kind:"Role", Name:"r2"}: cannot '
        'change roleRef'))
    code, body = _call(cluster, "POST", f"{RBAC}/clusterrolebindings", body={
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "c"}, "roleRef": {"kind": "Role", "name": "r"},
        "subjects": [{"kind": "ServiceAccount", "name": "sa"}, {"kind": "Robot", "name": "x"}]})
    assert code == 422
    assert [(c["field"], c["message"]) for c in body["details"]["causes"]] == [
        ("roleRef.kind", 'Unsupported value: "Role": supported values: "ClusterRole"'),
        ("subjects[0].namespace", "Required value"),
        ("subjects[1].kind",
         'Unsupported value: "Robot": supported values: "Group", "ServiceAccount", "User"')]
    user = _call(cluster, "GET", f"{BINDINGS}/b")[1]["subjects"][0]
    assert user == {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bob"}
    # a field of the wrong type is refused as decoding refuses it, and stored nowhere
    code, body = _call(cluster, "POST", ROLES, body=_role("r", {
        "apiGroups": [""], "resources": ["pods"], "verbs": "get"}))
    assert (code, body["message"]) == (400, (
        'Role in version "v1" cannot be handled as a Role: json: cannot unmarshal string into '
        'Go struct field PolicyRule.rules.verbs of type []string'))
    code, body = _call(cluster, "POST", BINDINGS, body={**_binding("s", "r1"),
                                                        "subjects": ["bob"]})
    assert (code, body["message"]) == (400, (
        'RoleBinding in version "v1" cannot be handled as a RoleBinding: json: cannot '
        'unmarshal string into Go struct field RoleBinding.subjects of type v1.Subject'))
    assert _call(cluster, "GET", f"{RBAC}/namespaces/demo/roles")[0] == 200


def test_coverage_is_rbacs() -> None:
    held = [authz.Rule.of({"apiGroups": ["*"], "resources": ["*/scale"], "verbs": ["get"]}),
            authz.Rule.of({"apiGroups": ["apps"], "resources": ["deployments"],
                           "resourceNames": ["web"], "verbs": ["*"]}),
            authz.Rule.of({"nonResourceURLs": ["/debug/*"], "verbs": ["get"]})]
    assert rbac.uncovered(held, [
        {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["web"],
         "verbs": ["delete", "patch"]},
        {"nonResourceURLs": ["/debug/pprof"], "verbs": ["get"]}]) == []
    assert rbac.uncovered(held, [
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list"]},
        {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["update"]},
        {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
        {"apiGroups": ["*"], "resources": ["*/scale"], "verbs": ["get"]}]) == [
        '{APIGroups:["apps"], Resources:["deployments"], Verbs:["get" "list"]}',
        '{APIGroups:["apps"], Resources:["deployments/scale"], Verbs:["update"]}',
        '{NonResourceURLs:["/metrics"], Verbs:["get"]}']


def test_the_command_enforces_what_is_applied_and_seeds_its_file(tmp_path: pathlib.Path
                                                                 ) -> None:
    """`--authorization-mode=RBAC` alone enforces from nothing; `--rbac F` makes F's objects
    and their namespaces; an object of F the server refuses is one line, exit 2."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: ClusterRole\napiVersion: rbac.authorization.k8s.io/v1\n"
                   "metadata: {name: r}\nrules: [{apiGroups: [''], resources: [pods]}]\n")
    done = subprocess.run([sys.executable, "-m", "capguard.localcluster", f"--rbac={bad}"],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 2
    assert done.stderr == (
        'capguard localcluster: --rbac: ClusterRole/r: ClusterRole.rbac.authorization.k8s.io '
        '"r" is invalid: rules[0].verbs: Required value: verbs must contain at least one '
        'value\n')
    both = subprocess.run([sys.executable, "-m", "capguard.localcluster", f"--rbac={bad}",
                           "--authorization-mode=AlwaysAllow"],
                          capture_output=True, text=True, check=False, timeout=60)
    assert both.returncode == 2 and both.stderr.count("\n") == 1
    assert "--rbac authorizes by RBAC" in both.stderr
