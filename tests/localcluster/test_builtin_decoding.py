"""Built-in kinds are decoded into their Go types, as kube-apiserver decodes them: a typo
in a Role, a Lease or a CRD is refused under kubectl's default strict validation (and
dropped, with a warning, under the server's default), a field of the wrong type is
refused whatever the validation, and times parse as Go parses them. The embedded server
used to store all three.

With the real kubectl where a person would meet it; over HTTP where the exact answer is
the point. The messages are kube-apiserver 1.32's (sigs.k8s.io/json's strict errors,
encoding/json's UnmarshalTypeError, Go's time.ParseError); no recorded exchange covers a
built-in kind's typo, so they follow the source.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
from typing import Any, Final

import pytest

from capguard.localcluster import LocalCluster, ThreadedCluster, gotypes

from .test_strictness import warnings_of
from .widget_api import MERGE, call

KUBECTL = shutil.which("kubectl")
LEASES: Final = "/apis/coordination.k8s.io/v1/namespaces/default/leases"
CONFIGMAPS: Final = "/api/v1/namespaces/default/configmaps"
STRICT: Final = "?fieldValidation=Strict"
ROLE_WITH_A_TYPO: Final = """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader, namespace: default}
rule:
  - apiGroups: [""]
    resources: [configmaps]
    verbs: [get]
"""


def lease(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name}, "spec": spec}


def kubectl(cluster: ThreadedCluster, *args: str, stdin: str = ""
            ) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None
    return subprocess.run([KUBECTL, "--kubeconfig", str(cluster.kubeconfig_path), *args],
                          input=stdin, capture_output=True, text=True, timeout=60, check=False)


def crd(version_fields: dict[str, Any], spec_schema: dict[str, Any]) -> str:
    return json.dumps({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.t.example.dev"},
        "spec": {"group": "t.example.dev", "scope": "Namespaced",
                 "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
                 "versions": [{"name": "v1", "served": True, "storage": True, **version_fields,
                               "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                   "spec": spec_schema}}}}]}})


@pytest.mark.skipif(KUBECTL is None, reason="needs kubectl")
def test_kubectl_apply_refuses_a_typo_in_a_role_and_validate_false_drops_it(
        threaded_local_cluster: ThreadedCluster) -> None:
    refused = kubectl(threaded_local_cluster, "apply", "-f", "-", stdin=ROLE_WITH_A_TYPO)
    assert refused.returncode == 1
    assert ('Role in version "v1" cannot be handled as a Role: strict decoding error: '
            'unknown field "rule"') in refused.stderr
    assert kubectl(threaded_local_cluster, "get", "role", "reader").returncode == 1

    # --validate=false sends fieldValidation=Ignore: created, the unknown field gone.
    created = kubectl(threaded_local_cluster, "apply", "--validate=false", "-f", "-",
                      stdin=ROLE_WITH_A_TYPO)
    assert created.returncode == 0, created.stderr
    stored = json.loads(kubectl(threaded_local_cluster, "get", "role", "reader",
                                "-o", "json").stdout)
    assert "rule" not in stored and "rules" not in stored


@pytest.mark.skipif(KUBECTL is None, reason="needs kubectl")
def test_a_crd_with_typos_is_refused_but_one_inside_items_is_silently_dropped(
        threaded_local_cluster: ThreadedCluster, tmp_path: pathlib.Path) -> None:
    typos = crd({"subresource": {"status": {}}}, {
        "type": "object", "typo": 1,
        "properties": {"size": {"type": "string", "maxLenght": 3}}})
    refused = kubectl(threaded_local_cluster, "apply", "-f", "-", stdin=typos)
    assert refused.returncode == 1
    # kubectl sends the object's keys sorted; the errors come in the order of the body.
    assert ('CustomResourceDefinition in version "v1" cannot be handled as a '
            'CustomResourceDefinition: strict decoding error: unknown field '
            '"spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.size.'
            'maxLenght", unknown field "spec.versions[0].schema.openAPIV3Schema.properties.'
            'spec.typo", unknown field "spec.versions[0].subresource"') in refused.stderr

    # `items` decodes itself, non-strictly: a typo there is dropped without a word, as a
    # real server drops it (kubernetes/kubernetes#128033).
    inside_items = crd({}, {"type": "object", "properties": {"tags": {
        "type": "array", "items": {"type": "string", "maxLenght": 3}}}})
    created = kubectl(threaded_local_cluster, "apply", "-f", "-", stdin=inside_items)
    assert created.returncode == 0 and not created.stderr, created.stderr
    stored = json.loads(kubectl(threaded_local_cluster, "get", "crd", "gadgets.t.example.dev",
                                "-o", "json").stdout)
    tags = stored["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["tags"]
    assert tags == {"type": "array", "items": {"type": "string"}}


async def test_a_field_of_the_wrong_type_is_refused_whatever_the_validation(
        local_cluster: LocalCluster) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"a": "1", "b": 2}, "immutable": "yes"}
    for query in ("", "?fieldValidation=Ignore"):
        status, answer, _ = await call(local_cluster, "POST", CONFIGMAPS + query, body)
        # the first that does not fit, in the body's order; the field path has no map key
        assert (status, answer["reason"], answer["message"]) == (
            400, "BadRequest", 'ConfigMap in version "v1" cannot be handled as a ConfigMap: '
            "json: cannot unmarshal number into Go struct field ConfigMap.data of type string")
    # A number that does not fit an int32 is named by its value.
    status, answer, _ = await call(local_cluster, "POST", LEASES,
                                   lease("l", leaseDurationSeconds=2**31))
    assert status == 400 and answer["message"].endswith(
        "json: cannot unmarshal number 2147483648 into Go struct field "
        "LeaseSpec.spec.leaseDurationSeconds of type int32")

    # A patch that leaves a field of the wrong type: 422 on `patch`, with the patched object.
    assert (await call(local_cluster, "POST", LEASES, lease("l", holderIdentity="a")))[0] == 201
    status, answer, _ = await call(local_cluster, "PATCH", LEASES + "/l",
                                   {"spec": {"leaseTransitions": "2"}}, headers=MERGE)
    assert status == 422 and answer["details"]["causes"][0]["field"] == "patch"
    message = answer["details"]["causes"][0]["message"]
    assert message.startswith('Invalid value: "{\\"apiVersion\\":\\"coordination.k8s.io/v1\\"')
    assert message.endswith(": json: cannot unmarshal string into Go struct field "
                            "LeaseSpec.spec.leaseTransitions of type int32")


async def test_unknown_fields_of_a_builtin_kind_warn_by_default_and_are_dropped(
        local_cluster: LocalCluster) -> None:
    body = lease("warned", holderIdentity="a", holder="b")
    body["metadata"]["madeUp"] = 1
    status, created, response = await call(local_cluster, "POST", LEASES, body)
    assert status == 201 and created["spec"] == {"holderIdentity": "a"}
    assert "madeUp" not in created["metadata"]
    assert warnings_of(response) == ['unknown field "metadata.madeUp"',
                                     'unknown field "spec.holder"']

    status, answer, _ = await call(local_cluster, "PATCH", LEASES + "/warned" + STRICT,
                                   {"spec": {"holder": "c"}}, headers=MERGE)
    assert status == 422
    assert answer["details"]["causes"][0]["message"].endswith(
        ': strict decoding error: unknown field "spec.holder"')
    assert '\\"holder\\":\\"c\\"' in answer["details"]["causes"][0]["message"]


async def test_times_parse_as_go_parses_them_and_are_written_back_in_utc(
        local_cluster: LocalCluster) -> None:
    status, answer, _ = await call(local_cluster, "POST", LEASES,
                                   lease("whole", renewTime="2024-01-02T03:04:05Z"))
    assert (status, answer["message"]) == (
        400, 'Lease in version "v1" cannot be handled as a Lease: parsing time '
        '"2024-01-02T03:04:05Z" as "2006-01-02T15:04:05.000000Z07:00": cannot parse "Z" as '
        '".000000"')
    status, created, _ = await call(local_cluster, "POST", LEASES, lease(
        "micro", renewTime="2024-01-02T04:04:05.123456+01:00"))
    assert status == 201 and created["spec"]["renewTime"] == "2024-01-02T03:04:05.123456Z"

    # A metav1.Time takes any fraction, and keeps whole seconds.
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e"},
             "involvedObject": {"kind": "Lease", "name": "micro", "namespace": "default"},
             "reason": "Test", "firstTimestamp": "2024-01-02T03:04:05.9+00:00"}
    status, created, _ = await call(local_cluster, "POST", "/api/v1/namespaces/default/events",
                                    event)
    assert status == 201 and created["firstTimestamp"] == "2024-01-02T03:04:05Z"
    event["metadata"]["name"], event["firstTimestamp"] = "f", 1700000000
    status, answer, _ = await call(local_cluster, "POST", "/api/v1/namespaces/default/events",
                                   event)
    assert status == 400 and answer["message"].endswith(
        "json: cannot unmarshal number into Go struct field Event.firstTimestamp of type "
        "string")


@pytest.mark.parametrize(("layout", "text", "error"), [
    (gotypes.RFC3339, "2024-13-02T03:04:05Z", 'parsing time "2024-13-02T03:04:05Z": month out '
                                              "of range"),
    (gotypes.RFC3339, "2024-02-30T03:04:05Z", 'parsing time "2024-02-30T03:04:05Z": day out of '
                                              "range"),
    (gotypes.RFC3339, "2024-01-02 03:04:05Z", 'parsing time "2024-01-02 03:04:05Z" as '
                                              '"2006-01-02T15:04:05Z07:00": cannot parse '
                                              '" 03:04:05Z" as "T"'),
    (gotypes.RFC3339, "2024-01-02T03:04:05Zabc", 'parsing time "2024-01-02T03:04:05Zabc": '
                                                 'extra text: "abc"'),
    (gotypes.RFC3339_MICRO, "2024-01-02T03:04:05.12345Z",
     'parsing time "2024-01-02T03:04:05.12345Z" as "2006-01-02T15:04:05.000000Z07:00": '
     'cannot parse ".12345Z" as ".000000"'),
    (gotypes.RFC3339_MICRO, "2024-01-02T03:04:05.1234567Z",
     'parsing time "2024-01-02T03:04:05.1234567Z" as "2006-01-02T15:04:05.000000Z07:00": '
     'cannot parse "7Z" as "Z07:00"'),
])
def test_go_time_parse_errors(layout: str, text: str, error: str) -> None:
    with pytest.raises(ValueError) as raised:
        gotypes.parse_go_time(layout, text)
    assert str(raised.value) == error


def test_go_time_parse_accepts_what_go_accepts() -> None:
    assert gotypes.parse_go_time(gotypes.RFC3339, "2024-01-02T3:04:05.5-02:30").isoformat() == (
        "2024-01-02T05:34:05.500000+00:00")
    assert gotypes.parse_go_time(gotypes.RFC3339_MICRO,
                                 "2024-02-29T23:59:59,000001Z").microsecond == 1


def test_localcluster_refuses_a_crd_with_a_typo_in_one_line(tmp_path: pathlib.Path) -> None:
    """`--crds` loads as `kubectl apply` has a real server load: strictly."""
    (tmp_path / "gadgets.yaml").write_text(crd({"subresource": {"status": {}}},
                                               {"type": "object"}))
    done = subprocess.run([sys.executable, "-m", "capguard.localcluster", "--port", "0",
                           "--crds", str(tmp_path)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"capguard localcluster: --crds: {tmp_path / 'gadgets.yaml'}: CustomResourceDefinition "
        'in version "v1" cannot be handled as a CustomResourceDefinition: strict decoding '
        'error: unknown field "spec.versions[0].subresource"\n')


@pytest.mark.skipif(KUBECTL is None, reason="needs kubectl")
def test_kubectl_explain_reads_the_rbac_kinds_from_the_same_go_types(
        threaded_local_cluster: ThreadedCluster) -> None:
    """The OpenAPI documents type RBAC's kinds and ServiceAccount from `gotypes`, so what
    `kubectl explain` lists is what a body may hold (it failed: no schema was published)."""
    rules = kubectl(threaded_local_cluster, "explain", "role.rules")
    assert rules.returncode == 0, rules.stderr
    listed = {line.split("\t")[0].strip() for line in rules.stdout.splitlines()
              if "\t<" in line}
    assert listed == set(gotypes.ROLE.field_types()["rules"].of.field_types())  # type: ignore[union-attr]
    account = kubectl(threaded_local_cluster, "explain", "serviceaccount.imagePullSecrets")
    assert account.returncode == 0 and "name\t<string>" in account.stdout
