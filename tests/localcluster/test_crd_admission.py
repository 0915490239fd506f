"""CRD admission rules a real apiextensions (1.30) applies that the recordings (340-372)
do not show: each CRD below is one a real server refuses, answered with the same causes
(reason, field), or one it accepts and serves as it does."""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from capguard.localcluster import LocalCluster

from .widget_api import MERGE, call

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
Spec = dict[str, Any]


def gadget_crd(**spec: Any) -> dict[str, Any]:
    version = {"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
        "type": "object", "properties": {"spec": {"type": "object", "properties": {
            "size": {"type": "string"}, "count": {"type": "number"}}}}}}}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "gadgets.example.dev"},
            "spec": {"group": "example.dev", "scope": "Namespaced",
                     "names": {"plural": "gadgets", "kind": "Gadget"},
                     "versions": [version], **spec}}


def _second_version(crd: dict[str, Any], **changes: Any) -> None:
    crd["spec"]["versions"].append({**copy.deepcopy(crd["spec"]["versions"][0]),
                                    "name": "v2", "storage": False, **changes})


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(crd: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = crd
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[last] = value
    return change


REFUSED: list[tuple[str, Callable[[dict[str, Any]], None], set[tuple[str, str]]]] = [
    ("duplicate version names", lambda crd: _second_version(crd, name="v1"),
     {("FieldValueInvalid", "spec.versions")}),
    ("version name not a DNS-1035 label", _set("spec.versions.0.name", "V1"),
     {("FieldValueInvalid", "spec.versions[0].name")}),
    ("short name with upper case", _set("spec.names.shortNames", ["gd", "GD"]),
     {("FieldValueInvalid", "spec.names.shortNames[1]")}),
    ("category with a dot", _set("spec.names.categories", ["all.things"]),
     {("FieldValueInvalid", "spec.names.categories[0]")}),
    ("kind with a dot", _set("spec.names.kind", "Gad.get"),
     {("FieldValueInvalid", "spec.names.kind"), ("FieldValueInvalid", "spec.names.listKind"),
      ("FieldValueInvalid", "spec.names.singular")}),
    ("group not a DNS subdomain", lambda crd: (_set("spec.group", "Example.dev")(crd),
                                               _set("metadata.name", "gadgets.Example.dev")(crd)),
     {("FieldValueInvalid", "spec.group"), ("FieldValueInvalid", "metadata.name")}),
    ("conversion strategy unknown", _set("spec.conversion", {"strategy": "Magic"}),
     {("FieldValueNotSupported", "spec.conversion.strategy")}),
    ("webhook conversion without its webhook", _set("spec.conversion", {"strategy": "Webhook"}),
     {("FieldValueRequired", "spec.conversion.webhookClientConfig"),
      ("FieldValueRequired", "spec.conversion.conversionReviewVersions")}),
    ("webhook conversion over http", _set("spec.conversion", {
        "strategy": "Webhook", "webhook": {"clientConfig": {"url": "http://conv.example/x"},
                                           "conversionReviewVersions": ["v1"]}}),
     {("FieldValueInvalid", "spec.conversion.webhookClientConfig.url")}),
    ("a webhook with strategy None", _set("spec.conversion", {
        "strategy": "None", "webhook": {"clientConfig": {"url": "https://conv.example"},
                                        "conversionReviewVersions": ["v1"]}}),
     {("FieldValueForbidden", "spec.conversion.webhookClientConfig"),
      ("FieldValueForbidden", "spec.conversion.conversionReviewVersions")}),
    ("printer column path without a leading dot, unknown format",
     _set("spec.versions.0.additionalPrinterColumns",
          [{"name": "Size", "type": "string", "format": "huge", "jsonPath": "spec.size"}]),
     {("FieldValueInvalid", "spec.additionalPrinterColumns[0].JSONPath"),
      ("FieldValueInvalid", "spec.additionalPrinterColumns[0].format")}),
    ("printer column of one version only: reported on that version",
     lambda crd: _second_version(crd, additionalPrinterColumns=[
         {"name": "Size", "type": "text", "jsonPath": ".spec.size"}]),
     {("FieldValueInvalid", "spec.versions[1].additionalPrinterColumns[0].type")}),
    ("scale without statusReplicasPath",
     _set("spec.versions.0.subresources", {"scale": {"specReplicasPath": ".spec.count"}}),
     {("FieldValueRequired", "spec.subresources.scale.statusReplicasPath")}),
    ("selectable field in metadata, and one of type number",
     _set("spec.versions.0.selectableFields", [{"jsonPath": ".metadata.name"},
                                               {"jsonPath": ".spec.count"}]),
     {("FieldValueInvalid", "spec.selectableFields[0].jsonPath"),
      ("FieldValueInvalid", "spec.selectableFields[1].jsonPath")}),
    ("deprecationWarning on a version that is not deprecated",
     _set("spec.versions.0.deprecationWarning", "going away"),
     {("FieldValueInvalid", "spec.versions[0].deprecationWarning")}),
    ("preserveUnknownFields true", _set("spec.preserveUnknownFields", True),
     {("FieldValueInvalid", "spec.preserveUnknownFields")}),
    ("a protected group without api approval",
     lambda crd: (_set("spec.group", "gadgets.k8s.io")(crd),
                  _set("metadata.name", "gadgets.gadgets.k8s.io")(crd)),
     {("FieldValueRequired", "metadata.annotations[api-approved.kubernetes.io]")}),
]


@pytest.mark.parametrize("change,causes", [(change, causes) for _, change, causes in REFUSED],
                         ids=[title for title, _, _ in REFUSED])
async def test_a_crd_a_real_server_refuses_is_refused_with_its_causes(
        local_cluster: LocalCluster, change: Callable[[dict[str, Any]], None],
        causes: set[tuple[str, str]]) -> None:
    crd = gadget_crd()
    change(crd)
    status, body, _ = await call(local_cluster, "POST", CRDS, crd)
    assert (status, body["reason"]) == (422, "Invalid"), body
    assert {(c["reason"], c["field"]) for c in body["details"]["causes"]} == causes, body


async def test_the_unique_names_message_prints_the_versions_as_go_does(
        local_cluster: LocalCluster) -> None:
    crd = gadget_crd()
    _second_version(crd, name="v1")
    _, body, _ = await call(local_cluster, "POST", CRDS, crd)
    assert body["details"]["causes"][0]["message"] == (
        "Invalid value: []apiextensions.CustomResourceDefinitionVersion{"
        + ", ".join(
            f'apiextensions.CustomResourceDefinitionVersion{{Name:"v1", Served:true, '
            f"Storage:{storage}, Deprecated:false, DeprecationWarning:(*string)(nil), "
            "Schema:(*apiextensions.CustomResourceValidation)(nil), "
            "Subresources:(*apiextensions.CustomResourceSubresources)(nil), "
            "AdditionalPrinterColumns:[]apiextensions.CustomResourceColumnDefinition(nil), "
            "SelectableFields:[]apiextensions.SelectableField(nil)}"
            for storage in ("true", "false"))
        + "}: must contain unique version names")


async def test_accepted_variants_a_real_server_accepts(local_cluster: LocalCluster) -> None:
    crd = gadget_crd(group="gadgets.k8s.io")
    crd["metadata"] = {"name": "gadgets.gadgets.k8s.io",
                       "annotations": {"api-approved.kubernetes.io": "unapproved, testing"}}
    crd["spec"]["versions"][0]["selectableFields"] = [{"jsonPath": ".spec.size"}]
    crd["spec"]["versions"][0]["additionalPrinterColumns"] = [
        {"name": "Items", "type": "string", "jsonPath": ".spec.items["}]   # as 350
    status, body, _ = await call(local_cluster, "POST", CRDS, crd)
    assert status == 201, body
    assert body["spec"]["names"] == {"plural": "gadgets", "singular": "gadget",
                                     "kind": "Gadget", "listKind": "GadgetList"}
    assert body["spec"]["conversion"] == {"strategy": "None"}


async def test_a_version_without_served_is_not_served(local_cluster: LocalCluster) -> None:
    crd = gadget_crd()
    del crd["spec"]["versions"][0]["served"]
    _second_version(crd, served=True)
    status, body, _ = await call(local_cluster, "POST", CRDS, crd)
    assert status == 201, body
    assert [v["served"] for v in body["spec"]["versions"]] == [False, True]
    v1, _, _ = await call(local_cluster, "GET", "/apis/example.dev/v1/namespaces/default/gadgets")
    v2, listed, _ = await call(local_cluster, "GET",
                               "/apis/example.dev/v2/namespaces/default/gadgets")
    assert (v1, v2, listed["kind"]) == (404, 200, "GadgetList")


async def test_an_established_crd_keeps_its_kind_plural_and_scope(
        local_cluster: LocalCluster) -> None:
    status, _, _ = await call(local_cluster, "POST", CRDS, gadget_crd())
    assert status == 201
    path = f"{CRDS}/gadgets.example.dev"
    for change, field in (({"names": {"kind": "Gizmo"}}, "spec.names.kind"),
                          ({"names": {"plural": "gizmos"}}, "spec.names.plural"),
                          ({"scope": "Cluster"}, "spec.scope")):
        status, body, _ = await call(local_cluster, "PATCH", path, {"spec": change},
                                     headers=MERGE)
        assert status == 422, body
        assert field in {c["field"] for c in body["details"]["causes"]}, body
        assert any(c["message"].endswith("field is immutable")
                   for c in body["details"]["causes"]), body


async def test_a_new_storage_version_is_recorded_and_the_old_one_must_stay(
        local_cluster: LocalCluster) -> None:
    crd = gadget_crd()
    await call(local_cluster, "POST", CRDS, crd)
    _, current, _ = await call(local_cluster, "GET", f"{CRDS}/gadgets.example.dev")
    _second_version(current)
    current["spec"]["versions"][0]["storage"] = False
    current["spec"]["versions"][1]["storage"] = True
    status, body, _ = await call(local_cluster, "PUT", f"{CRDS}/gadgets.example.dev", current)
    assert status == 200, body
    assert body["status"]["storedVersions"] == ["v1", "v2"]
    del current["spec"]["versions"][0]
    current["metadata"]["resourceVersion"] = body["metadata"]["resourceVersion"]
    status, body, _ = await call(local_cluster, "PUT", f"{CRDS}/gadgets.example.dev", current)
    assert status == 422, body
    assert [c["field"] for c in body["details"]["causes"]] == ["status.storedVersions[0]"]


async def test_scale_of_an_object_without_spec_replicas_is_an_internal_error(
        local_cluster: LocalCluster) -> None:
    crd = gadget_crd()
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["replicas"] = {"type": "integer"}
    crd["spec"]["versions"][0]["subresources"] = {
        "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.n"}}
    await call(local_cluster, "POST", CRDS, crd)
    base = "/apis/example.dev/v1/namespaces/default/gadgets"
    for name, spec in (("none", {}), ("three", {"replicas": 3})):
        await call(local_cluster, "POST", base, {"apiVersion": "example.dev/v1",
                                                 "kind": "Gadget", "metadata": {"name": name},
                                                 "spec": spec})
    status, body, _ = await call(local_cluster, "GET", f"{base}/none/scale")
    assert (status, body["reason"], body["message"]) == (
        500, "InternalError",
        'Internal error occurred: the spec replicas field ".spec.replicas" does not exist')
    status, body, _ = await call(local_cluster, "GET", f"{base}/three/scale")
    assert (status, body["spec"], body["status"]) == (200, {"replicas": 3}, {"replicas": 0})


# apiserver types a map's keys with its shared StringType, which has no MaxElements, so
# cel-go sizes a key as 0 characters: `k.matches(re)` costs ceil(0.1 * (0 + 1)) *
# ceil(0.25 * len(re)), 29 for this 115-character label-key regex, and an iteration of
# all() 4 more (2 for the loop condition, 1 each for the accumulator and `k`): 33.
# Priced as an unbounded string, as a key once was here, the rule would be over budget
# by more than 100x even with maxProperties.
LABEL_KEY_RULE = ("self.all(k, k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*"
                  "[a-z0-9])?)*/)?([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$'))")


def _labels_crd(**bounds: int) -> dict[str, Any]:
    crd = gadget_crd()
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["labels"] = {
        "type": "object", "additionalProperties": {"type": "string"}, **bounds,
        "x-kubernetes-validations": [{"rule": LABEL_KEY_RULE, "message": "label keys."}]}
    return crd


async def test_a_rule_on_map_keys_is_priced_as_cel_go_prices_a_key(
        local_cluster: LocalCluster) -> None:
    status, body, _ = await call(local_cluster, "POST", CRDS, _labels_crd(maxProperties=32))
    assert status == 201, body   # 2 + 32 * 33 = 1,058
    await call(local_cluster, "DELETE", CRDS + "/gadgets.example.dev")
    # Without maxProperties a map holds up to (3 MiB - 2) / (2 + 6) = 393,215 keys:
    # 2 + 393,215 * 33 = 12,976,097 against the 10,000,000 of one rule.
    status, body, _ = await call(local_cluster, "POST", CRDS, _labels_crd())
    assert status == 422, body
    messages = [cause["message"] for cause in body["details"]["causes"]]
    assert messages[0].startswith(
        "Forbidden: estimated rule cost exceeds budget by factor of 1.297610x"), messages
