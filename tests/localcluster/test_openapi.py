"""OpenAPI documents: the shapes of the recorded 1.24 documents and what kubectl 1.32 reads."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from capguard.localcluster import openapi

WIDGET_CRD: dict[str, Any] = yaml.safe_load("""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.widgets.example.dev}
spec:
  group: widgets.example.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}, scale: {specReplicasPath: .spec.replicas,
                                       statusReplicasPath: .status.replicas}}
    schema:
      openAPIV3Schema:
        type: object
        description: A Widget is a toy resource used to record reference API behaviour.
        required: [spec]
        properties:
          spec:
            type: object
            description: Desired state of the Widget.
            properties:
              replicas: {type: integer, description: Desired number of replicas., default: 1,
                         minimum: 0}
              port: {x-kubernetes-int-or-string: true, description: A port number or name.}
              config: {type: object, description: Free-form settings, stored as sent.,
                       x-kubernetes-preserve-unknown-fields: true}
              default: {type: string, description: a property named like a keyword}
  - name: v2
    served: false
    storage: false
    schema: {openAPIV3Schema: {type: object}}
""")
WIDGET = "dev.example.widgets.v1.Widget"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


@pytest.fixture(scope="module")
def v3() -> dict[str, Any]:
    document = openapi.openapi_v3_group_version([WIDGET_CRD], "widgets.example.dev", "v1")
    assert document is not None
    return document


def test_root_lists_every_served_group_version_with_a_hash() -> None:
    paths = openapi.openapi_v3_root([WIDGET_CRD])["paths"]
    assert "apis/widgets.example.dev/v1" in paths
    assert "apis/widgets.example.dev/v2" not in paths  # not served
    assert "api/v1" in paths
    url = paths["apis/widgets.example.dev/v1"]["serverRelativeURL"]
    assert url.startswith("/openapi/v3/apis/widgets.example.dev/v1?hash=")


def test_hash_changes_when_the_crd_changes() -> None:
    changed = yaml.safe_load(yaml.safe_dump(WIDGET_CRD))
    changed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] = "new"
    key = "apis/widgets.example.dev/v1"
    before = openapi.openapi_v3_root([WIDGET_CRD])["paths"][key]
    assert openapi.openapi_v3_root([changed])["paths"][key] != before


def test_unknown_group_version_is_none() -> None:
    assert openapi.openapi_v3_group_version([WIDGET_CRD], "nope.dev", "v1") is None
    assert openapi.openapi_v3_group_version([WIDGET_CRD], "widgets.example.dev", "v2") is None


def test_kind_schema_as_recorded(v3: dict[str, Any]) -> None:  # 111
    widget = v3["components"]["schemas"][WIDGET]
    assert widget["x-kubernetes-group-version-kind"] == [
        {"group": "widgets.example.dev", "kind": "Widget", "version": "v1"}]
    assert widget["properties"]["metadata"]["allOf"] == [
        {"$ref": f"#/components/schemas/{OBJECT_META}"}]
    spec = widget["properties"]["spec"]["properties"]
    assert spec["replicas"]["default"] == 1
    assert spec["port"]["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert spec["config"]["type"] == "object"
    assert spec["default"]["description"] == "a property named like a keyword"


def test_every_reference_resolves_inside_the_document(v3: dict[str, Any]) -> None:
    schemas = v3["components"]["schemas"]
    for ref in _refs(v3):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def test_patch_operations_offer_field_validation(v3: dict[str, Any]) -> None:
    # kubectl's queryParamVerifierV3: a PATCH tagged with the GVK lists fieldValidation.
    patches = [item["patch"] for item in v3["paths"].values() if "patch" in item]
    widget_patches = [p for p in patches if p["x-kubernetes-group-version-kind"] == {
        "group": "widgets.example.dev", "kind": "Widget", "version": "v1"}]
    assert len(widget_patches) == 2  # the object and its status
    for patch in widget_patches:
        assert {"name": "fieldValidation", "in": "query"}.items() <= next(
            p for p in patch["parameters"] if p["name"] == "fieldValidation").items()


def test_paths_cover_collection_item_and_subresources(v3: dict[str, Any]) -> None:
    base = "/apis/widgets.example.dev/v1"
    assert set(v3["paths"]) == {f"{base}/namespaces/{{namespace}}/widgets",
                                f"{base}/namespaces/{{namespace}}/widgets/{{name}}",
                                f"{base}/namespaces/{{namespace}}/widgets/{{name}}/status",
                                f"{base}/namespaces/{{namespace}}/widgets/{{name}}/scale",
                                f"{base}/widgets"}


def test_builtin_kinds_have_documents() -> None:
    core = openapi.openapi_v3_group_version([], "", "v1")
    assert core is not None
    kinds = {gvk["kind"] for schema in core["components"]["schemas"].values()
             for gvk in schema.get("x-kubernetes-group-version-kind", [])}
    assert {"ConfigMap", "Namespace", "Event"} <= kinds
    assert openapi.openapi_v3_group_version([], "coordination.k8s.io", "v1") is not None


def test_v2_drops_what_the_recorded_v2_drops() -> None:  # 112
    definitions = openapi.openapi_v2([WIDGET_CRD])["definitions"]
    widget = definitions[WIDGET]
    spec = widget["properties"]["spec"]["properties"]
    assert "default" not in spec["replicas"]
    assert spec["port"] == {"x-kubernetes-int-or-string": True,
                            "description": "A port number or name."}
    assert "type" not in spec["config"]
    assert "default" in spec  # the property called "default" is a property, kept
    assert widget["properties"]["metadata"]["$ref"] == f"#/definitions/{OBJECT_META}"
    for ref in _refs(definitions):
        assert ref.removeprefix("#/definitions/") in definitions, ref


def test_crd_garbage_does_not_break_documents() -> None:
    broken: list[dict[str, Any]] = [{}, {"spec": None}, {"spec": {"versions": [None, {}]}}]
    assert openapi.openapi_v3_root(broken)["paths"]
    assert openapi.openapi_v2(broken)["swagger"] == "2.0"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []
