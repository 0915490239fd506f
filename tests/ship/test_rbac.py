"""RBAC: sufficient and minimal, checked against requests rather than eyeballed.

The checker itself is tested on hand-made logs; then the rendered rules are checked
against the requests the operator is known to make (recorded in an end-to-end run on
the embedded server, and read from the source), and against CAPGUARD_AUDIT_LOG.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from . import rbac
from .manifests import by_kind

OPERATOR_NS = "capguard-system"
ROLE = rbac.Rule(source="ClusterRole/r", api_groups=("capguard.dev",),
                 resources=("inferenceengines", "inferenceengines/status"),
                 verbs=("list", "watch", "patch"))
LEASE_RULE = rbac.Rule(source="Role/l", api_groups=("coordination.k8s.io",),
                       resources=("leases",), verbs=("get", "update"),
                       resource_names=("capguard-leader",), namespace=OPERATOR_NS)


# --- the checker, on hand-made logs ---------------------------------------------------

@pytest.mark.parametrize(("method", "path", "expected"), [
    ("GET", "/apis/capguard.dev/v1alpha1/inferenceengines?watch=true&resourceVersion=5",
     rbac.Request("watch", "capguard.dev", "inferenceengines")),
    ("GET", "/apis/capguard.dev/v1alpha1/inferenceengines?limit=500",
     rbac.Request("list", "capguard.dev", "inferenceengines")),
    ("PATCH", "/apis/capguard.dev/v1alpha1/namespaces/prod/inferenceengines/e-1/status",
     rbac.Request("patch", "capguard.dev", "inferenceengines", "status", "prod", "e-1")),
    ("POST", "/api/v1/namespaces/prod/events",
     rbac.Request("create", "", "events", "", "prod")),
    ("PUT", "/apis/coordination.k8s.io/v1/namespaces/capguard-system/leases/capguard-leader",
     rbac.Request("update", "coordination.k8s.io", "leases", "", OPERATOR_NS, "capguard-leader")),
    ("GET", "/api/v1/namespaces/prod", rbac.Request("get", "", "namespaces", "", "prod", "prod")),
    ("GET", "/api/v1/namespaces/prod/configmaps/c?watch=true",
     rbac.Request("get", "", "configmaps", "", "prod", "c")),
    ("GET", "/api/v1/watch/namespaces/prod/configmaps/c",
     rbac.Request("watch", "", "configmaps", "", "prod", "c")),
    ("GET", "/api/v1/watch/namespaces/prod/configmaps",
     rbac.Request("watch", "", "configmaps", "", "prod")),
    ("PUT", "/api/v1/namespaces/prod/finalize",
     rbac.Request("update", "", "namespaces", "finalize", "prod", "prod")),
    ("GET", "/api/v1/namespaces/prod/status",
     rbac.Request("get", "", "namespaces", "status", "prod", "prod")),
    ("DELETE", "/api/v1/namespaces/prod/events", rbac.Request("deletecollection", "", "events",
                                                                "", "prod")),
    # One object by name: resourceNames may allow it (RequestInfo reads the selector).
    ("GET", "/apis/capguard.dev/v1alpha1/namespaces/prod/inferenceengines?watch=true"
            "&fieldSelector=metadata.name%3De-1",
     rbac.Request("watch", "capguard.dev", "inferenceengines", "", "prod", "e-1")),
    ("GET", "/apis/capguard.dev/v1alpha1/namespaces/prod/inferenceengines"
            "?fieldSelector=metadata.name%21%3De-1",
     rbac.Request("list", "capguard.dev", "inferenceengines", "", "prod")),
    ("GET", "/apis", None),
    ("GET", "/apis/capguard.dev/v1alpha1", None),
    ("GET", "/version", None),
])
def test_request_lines_resolve_as_the_api_server_resolves_them(
    method: str, path: str, expected: rbac.Request | None,
) -> None:
    assert rbac.parse_path(method=method, path=path) == expected


def test_a_kubernetes_audit_event_is_read_from_its_object_ref() -> None:
    event = {"kind": "Event", "verb": "patch", "user": {"username": "someone"},
             "objectRef": {"apiGroup": "capguard.dev", "resource": "modelcapacities",
                           "subresource": "status", "namespace": "prod", "name": "llama"}}
    assert rbac.parse_record(event) == rbac.Request(
        "patch", "capguard.dev", "modelcapacities", "status", "prod", "llama")


def test_the_embedded_servers_audit_records_are_read() -> None:
    record = {"method": "GET", "path": "/apis/capguard.dev/v1alpha1/modelcapacities",
              "query": "watch=true&resourceVersion=7", "user_agent": "kopf/1.45.2",
              "verb": "watch", "apiGroup": "capguard.dev", "resource": "modelcapacities",
              "subresource": None, "namespace": None, "name": None, "code": 200}
    assert list(rbac.operator_requests([record])) == [
        rbac.Request("watch", "capguard.dev", "modelcapacities")]


def test_only_the_operators_requests_count() -> None:
    records = [
        {"method": "GET", "path": "/api/v1/pods", "userAgent": "kubectl/v1.32.4"},
        {"method": "GET", "path": "/api/v1/pods", "userAgent": "kopf/1.45.2"},
        {"method": "POST", "path": "/api/v1/namespaces/a/events", "user-agent": "capguard"},
        {"verb": "list", "objectRef": {"resource": "secrets"},
         "user": {"username": "system:serviceaccount:capguard-system:capguard-operator"}},
        {"method": "GET", "path": "/apis", "userAgent": "kopf/1.45.2"},
    ]
    assert [str(r) for r in rbac.operator_requests(records)] == [
        "list core/pods (cluster-wide)",
        "create core/events in a",
        "list core/secrets (cluster-wide)",
    ]


def test_a_request_no_rule_allows_is_denied() -> None:
    requests = [
        rbac.Request("list", "capguard.dev", "inferenceengines"),
        rbac.Request("update", "capguard.dev", "inferenceengines", "", "prod", "e-1"),
        rbac.Request("patch", "capguard.dev", "inferenceengines", "scale", "prod", "e-1"),
    ]
    report = rbac.check(rules=[ROLE], requests=requests)
    assert [str(r) for r in report.denied] == [
        "update capguard.dev/inferenceengines in prod",
        "patch capguard.dev/inferenceengines/scale in prod",
    ]


def test_a_permission_no_request_used_is_reported() -> None:
    requests = [rbac.Request("list", "capguard.dev", "inferenceengines"),
                rbac.Request("watch", "capguard.dev", "inferenceengines"),
                rbac.Request("patch", "capguard.dev", "inferenceengines", "status", "p", "e")]
    report = rbac.check(rules=[ROLE], requests=requests)
    assert not report.denied
    assert [str(u) for u in report.unused] == [
        "patch capguard.dev/inferenceengines  (ClusterRole/r)",
        "list capguard.dev/inferenceengines/status  (ClusterRole/r)",
        "watch capguard.dev/inferenceengines/status  (ClusterRole/r)",
    ]


def test_a_role_allows_only_in_its_namespace_and_for_its_names() -> None:
    mine = rbac.Request("get", "coordination.k8s.io", "leases", "", OPERATOR_NS, "capguard-leader")
    elsewhere = rbac.Request("get", "coordination.k8s.io", "leases", "", "prod", "capguard-leader")
    other_name = rbac.Request("get", "coordination.k8s.io", "leases", "", OPERATOR_NS, "x")
    cluster_wide = rbac.Request("list", "coordination.k8s.io", "leases")
    assert LEASE_RULE.allows(mine)
    for request in (elsewhere, other_name, cluster_wide):
        assert not LEASE_RULE.allows(request)


def test_rules_are_scoped_by_their_bindings() -> None:
    objects: list[dict[str, Any]] = [
        {"kind": "ClusterRole", "metadata": {"name": "c"},
         "rules": [{"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}]},
        {"kind": "Role", "metadata": {"name": "r", "namespace": "ns"},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]},
        {"kind": "ClusterRoleBinding", "metadata": {"name": "c"},
         "roleRef": {"kind": "ClusterRole", "name": "c"},
         "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}]},
        {"kind": "RoleBinding", "metadata": {"name": "r", "namespace": "ns"},
         "roleRef": {"kind": "Role", "name": "r"},
         "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}]},
        {"kind": "RoleBinding", "metadata": {"name": "someone-else", "namespace": "ns"},
         "roleRef": {"kind": "ClusterRole", "name": "c"},
         "subjects": [{"kind": "ServiceAccount", "name": "other", "namespace": "ns"}]},
    ]
    rules = rbac.rules_for(objects, service_account=("ns", "sa"))
    assert [(r.source, r.namespace) for r in rules] == [("ClusterRole/c", ""), ("Role/r", "ns")]


# --- capguard's rendered RBAC ---------------------------------------------------------

def test_no_rule_uses_a_wildcard(rendered: list[dict[str, Any]]) -> None:
    for role in by_kind(rendered, "ClusterRole") + by_kind(rendered, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), f"{role['kind']}/{role['metadata']['name']}"
            assert "nonResourceURLs" not in rule, "discovery comes from system:discovery"


def test_the_operator_may_never_read_secrets_or_escalate(rendered: list[dict[str, Any]]) -> None:
    forbidden_resources = {"secrets", "pods/exec", "serviceaccounts/token", "clusterroles",
                           "roles", "clusterrolebindings", "rolebindings"}
    forbidden_verbs = {"escalate", "bind", "impersonate", "delete", "deletecollection"}
    for rule in rbac.rules_for(rendered):
        assert not forbidden_resources & set(rule.resources), str(rule)
        assert not forbidden_verbs & set(rule.verbs), str(rule)


def _requests_the_operator_makes() -> list[rbac.Request]:
    """What `capguard run` sends, as an end-to-end run on the embedded server recorded it.

    The reconciler's own list+watch per kind, cluster-wide (Kopf watches nothing: its
    live discovery of CRDs and namespaces is off). capguard (capguard/kube): the
    executor's merge patch on an engine, status patches on all three kinds (the
    simulated driver's phases included), core/v1 Events, the engines' heartbeat Leases
    (list+watch, with agents), and the leader Lease: GET, POST the first time, PUT to
    renew and to release.
    """
    requests = [rbac.Request("patch", "capguard.dev", "inferenceengines", "", "prod", "e-1")]
    for kind, name in (("inferenceengines", "e-1"), ("modelcapacities", "llama"),
                       ("circuitbreakers", "gpu-maint")):
        requests += [
            rbac.Request("list", "capguard.dev", kind),
            rbac.Request("watch", "capguard.dev", kind),
            rbac.Request("patch", "capguard.dev", kind, "status", "prod", name),
        ]
    requests += [
        rbac.Request("list", "coordination.k8s.io", "leases"),  # engines' heartbeats
        rbac.Request("watch", "coordination.k8s.io", "leases"),
        rbac.Request("create", "", "events", "", "prod"),
        rbac.Request("get", "coordination.k8s.io", "leases", "", OPERATOR_NS, "capguard-leader"),
        rbac.Request("create", "coordination.k8s.io", "leases", "", OPERATOR_NS),
        rbac.Request("update", "coordination.k8s.io", "leases", "", OPERATOR_NS,
                     "capguard-leader"),
    ]
    return requests


def test_rbac_matches_the_requests_the_operator_is_known_to_make(
    rendered: list[dict[str, Any]],
) -> None:
    report = rbac.check(rules=rbac.rules_for(rendered), requests=_requests_the_operator_makes())
    assert report.ok, str(report)


def test_rbac_matches_the_requests_of_the_end_to_end_run(rendered: list[dict[str, Any]]) -> None:
    """The proof: every request the operator made in the e2e run, against the rules."""
    audit_log = os.environ.get("CAPGUARD_AUDIT_LOG")
    if not audit_log:
        pytest.skip("CAPGUARD_AUDIT_LOG is not set: no end-to-end audit log to check against")
    path = Path(audit_log)
    if not path.is_file() or path.stat().st_size == 0:
        pytest.skip(f"CAPGUARD_AUDIT_LOG={audit_log} is missing or empty")
    requests = list(rbac.operator_requests(rbac.read_audit_log(path)))
    assert requests, f"no request from the operator (kopf/capguard user agents) in {audit_log}"
    report = rbac.check(rules=rbac.rules_for(rendered), requests=requests)
    assert report.ok, str(report)
