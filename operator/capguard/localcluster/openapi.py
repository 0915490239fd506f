"""OpenAPI documents for the CRDs (and the few built-in kinds) the local cluster serves.

kubectl 1.32 reads `/openapi/v3` first: `kubectl explain` renders the component schema
whose `x-kubernetes-group-version-kind` names the kind, and `kubectl apply` uses
server-side field validation only if some PATCH operation tagged with the kind's GVK
lists a `fieldValidation` query parameter (kubectl's queryParamVerifierV3). Both are
built here; `/openapi/v2` gets the same definitions converted as Kubernetes converts
CRD schemas for v2 (no `default`, no `nullable`, untyped int-or-string and
preserve-unknown-fields nodes: see `k8s-reference/112`).

Shapes follow `k8s-reference/110-112` (recorded from 1.24).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from typing import Any, Final

from capguard.localcluster import gotypes

META: Final = "io.k8s.apimachinery.pkg.apis.meta.v1"
_API_VERSION_DESCRIPTION: Final = (
    "APIVersion defines the versioned schema of this representation of an object. Servers"
    " should convert recognized schemas to the latest internal value, and may reject"
    " unrecognized values. More info:"
    " https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md"
    "#resources")
_KIND_DESCRIPTION: Final = (
    "Kind is a string value representing the REST resource this object represents. Servers"
    " may infer this from the endpoint the client submits requests to. Cannot be updated."
    " In CamelCase. More info:"
    " https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md"
    "#types-kinds")
_METADATA_DESCRIPTION: Final = (
    "Standard object's metadata. More info:"
    " https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md"
    "#metadata")
_LIST_METADATA_DESCRIPTION: Final = (
    "Standard list metadata. More info:"
    " https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md"
    "#types-kinds")
# Custom resources do not take strategic merge patches (415, 036), and their documents
# must not offer one: kubectl apply sends one whenever the OpenAPI lists it (patcher.go).
_CUSTOM_PATCH_TYPES: Final = ("application/json-patch+json", "application/merge-patch+json",
                              "application/apply-patch+yaml")
_PATCH_TYPES: Final = (*_CUSTOM_PATCH_TYPES, "application/strategic-merge-patch+json")


# --- public API ----------------------------------------------------------------------


def openapi_v2(crds: list[dict[str, Any]]) -> dict[str, Any]:
    """The Swagger 2.0 document: every served kind's definitions and paths."""
    definitions = {name: _to_v2(schema) for name, schema in _meta_schemas().items()}
    paths: dict[str, Any] = {}
    for resource in _all_resources(crds):
        definitions.update({name: _to_v2(schema) for name, schema in resource.schemas().items()})
        paths.update(resource.paths(v2=True))
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "paths": paths, "definitions": definitions}


def openapi_v3_root(crds: list[dict[str, Any]]) -> dict[str, Any]:
    """The /openapi/v3 index: one entry per group/version, with a content hash."""
    paths = {}
    for key in sorted({_gv_key(r.group, r.version) for r in _all_resources(crds)}):
        group, version = _split_gv_key(key)
        document = openapi_v3_group_version(crds, group, version)
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={_hash(document)}"}
    return {"paths": paths}


def openapi_v3_group_version(crds: list[dict[str, Any]], group: str,
                             version: str) -> dict[str, Any] | None:
    """The OpenAPI 3.0 document of one group/version (`group` "" is the core API)."""
    resources = [r for r in _all_resources(crds) if (r.group, r.version) == (group, version)]
    if not resources:
        return None
    schemas = _meta_schemas()
    paths: dict[str, Any] = {}
    for resource in resources:
        schemas.update(resource.schemas())
        paths.update(resource.paths(v2=False))
    title = "Kubernetes CRD Swagger" if resources[0].custom else "Kubernetes"
    return {"openapi": "3.0.0", "info": {"title": title, "version": "v0.1.0"},
            "paths": paths, "components": {"schemas": schemas}}


# --- resources -----------------------------------------------------------------------


class _Resource:
    """One served kind in one version, with what its documents need."""

    def __init__(self, *, group: str, version: str, names: dict[str, Any], namespaced: bool,
                 schema: dict[str, Any], subresources: dict[str, Any], custom: bool) -> None:
        self.group = group
        self.version = version
        self.kind = str(names.get("kind", ""))
        self.list_kind = str(names.get("listKind") or f"{self.kind}List")
        self.plural = str(names.get("plural", ""))
        self.namespaced = namespaced
        self.schema = schema
        self.subresources = subresources
        self.custom = custom

    @property
    def prefix(self) -> str:
        """Definition names use the reversed group, as Kubernetes does."""
        if not self.group:
            return f"io.k8s.api.core.{self.version}"
        return f"{'.'.join(reversed(self.group.split('.')))}.{self.version}"

    def gvk(self, kind: str | None = None) -> dict[str, str]:
        return {"group": self.group, "kind": kind or self.kind, "version": self.version}

    def schemas(self) -> dict[str, Any]:
        """The kind's and its list's component schemas (v3 form)."""
        return {f"{self.prefix}.{self.kind}": self._kind_schema(),
                f"{self.prefix}.{self.list_kind}": self._list_schema()}

    def _kind_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = _to_v3(copy.deepcopy(self.schema))
        schema.setdefault("type", "object")
        properties = schema.setdefault("properties", {})
        properties["apiVersion"] = {"description": _API_VERSION_DESCRIPTION, "type": "string"}
        properties["kind"] = {"description": _KIND_DESCRIPTION, "type": "string"}
        properties["metadata"] = {"description": _METADATA_DESCRIPTION,
                                  "allOf": [_ref(f"{META}.ObjectMeta")]}
        schema["x-kubernetes-group-version-kind"] = [self.gvk()]
        return schema

    def _list_schema(self) -> dict[str, Any]:
        return {
            "description": f"{self.list_kind} is a list of {self.kind}",
            "required": ["items"],
            "properties": {
                "apiVersion": {"description": _API_VERSION_DESCRIPTION, "type": "string"},
                "items": {"description": f"List of {self.plural}. More info: https://git.k8s.io"
                                         "/community/contributors/devel/sig-architecture/"
                                         "api-conventions.md",
                          "type": "array",
                          "items": _ref(f"{self.prefix}.{self.kind}")},
                "kind": {"description": _KIND_DESCRIPTION, "type": "string"},
                "metadata": {"description": _LIST_METADATA_DESCRIPTION,
                             "allOf": [_ref(f"{META}.ListMeta")]},
            },
            "x-kubernetes-group-version-kind": [self.gvk(self.list_kind)],
        }

    def paths(self, *, v2: bool) -> dict[str, Any]:
        """Collection, item and subresource paths with their operations."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        scope = f"{base}/namespaces/{{namespace}}/{self.plural}" if self.namespaced else (
            f"{base}/{self.plural}")
        kind_ref = f"{self.prefix}.{self.kind}"
        list_ref = f"{self.prefix}.{self.list_kind}"
        paths = {
            scope: self._collection(kind_ref, list_ref, v2=v2),
            f"{scope}/{{name}}": self._item(kind_ref, action_suffix="", v2=v2),
        }
        if self.namespaced:
            paths[f"{base}/{self.plural}"] = {"get": self._operation(
                "list", list_ref, action="list", v2=v2, all_namespaces=True)}
        if "status" in self.subresources:
            paths[f"{scope}/{{name}}/status"] = self._item(kind_ref, action_suffix="Status",
                                                           v2=v2)
        if "scale" in self.subresources:
            paths[f"{scope}/{{name}}/scale"] = self._item(
                "io.k8s.api.autoscaling.v1.Scale", action_suffix="Scale", v2=v2,
                gvk={"group": "autoscaling", "kind": "Scale", "version": "v1"})
        for path, item in paths.items():
            item["parameters"] = _path_parameters(path, v2=v2)
        return paths

    def _collection(self, kind_ref: str, list_ref: str, *, v2: bool) -> dict[str, Any]:
        return {
            "get": self._operation("list", list_ref, action="list", v2=v2),
            "post": self._operation("create", kind_ref, action="post", v2=v2, body=kind_ref),
            "delete": self._operation("deletecollection", f"{META}.Status",
                                      action="deletecollection", v2=v2),
        }

    def _item(self, ref: str, *, action_suffix: str, v2: bool,
              gvk: dict[str, str] | None = None) -> dict[str, Any]:
        operations = {
            "get": self._operation(f"read{action_suffix}", ref, action="get", v2=v2, gvk=gvk),
            "put": self._operation(f"replace{action_suffix}", ref, action="put", v2=v2,
                                   body=ref, gvk=gvk),
            "patch": self._operation(f"patch{action_suffix}", ref, action="patch", v2=v2,
                                     body=f"{META}.Patch", gvk=gvk),
        }
        if not action_suffix:
            operations["delete"] = self._operation("delete", f"{META}.Status", action="delete",
                                                   v2=v2)
        return operations

    def _operation(self, verb: str, response_ref: str, *, action: str, v2: bool,
                   body: str | None = None, gvk: dict[str, str] | None = None,
                   all_namespaces: bool = False) -> dict[str, Any]:
        scope = "" if not self.namespaced or all_namespaces else "Namespaced"
        suffix = "ForAllNamespaces" if all_namespaces else ""
        operation: dict[str, Any] = {
            "operationId": f"{verb}{scope}{self.kind}{suffix}",
            "description": f"{verb} {self.kind}",
            "tags": [f"{self.group or 'core'}_{self.version}"],
            "parameters": [_query(name, v2=v2) for name in _QUERY_PARAMETERS[action]],
            "responses": _responses(response_ref, created=action == "post", v2=v2),
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk or self.gvk(),
        }
        if body is not None:
            _add_body(operation, body, patch=action == "patch", v2=v2,
                      patch_types=_CUSTOM_PATCH_TYPES if self.custom else _PATCH_TYPES)
        return operation

_QUERY_PARAMETERS: Final[dict[str, tuple[str, ...]]] = {
    "list": ("labelSelector", "fieldSelector", "limit", "continue", "resourceVersion",
             "watch", "allowWatchBookmarks", "timeoutSeconds"),
    "deletecollection": ("labelSelector", "fieldSelector", "dryRun"),
    "get": ("resourceVersion",),
    "post": ("dryRun", "fieldManager", "fieldValidation"),
    "put": ("dryRun", "fieldManager", "fieldValidation"),
    "patch": ("dryRun", "fieldManager", "fieldValidation", "force"),
    "delete": ("dryRun", "gracePeriodSeconds", "propagationPolicy"),
}
_PARAMETER_TYPES: Final = {"limit": "integer", "timeoutSeconds": "integer",
                           "gracePeriodSeconds": "integer", "watch": "boolean",
                           "allowWatchBookmarks": "boolean", "force": "boolean"}
_PARAMETER_DESCRIPTIONS: Final = {
    "fieldValidation": "fieldValidation instructs the server on how to handle objects in the"
                       " request containing unknown or duplicate fields: Ignore, Warn or"
                       " Strict.",
    "dryRun": "When present, indicates that modifications should not be persisted.",
    "fieldManager": "fieldManager is a name associated with the actor or entity that is"
                    " making these changes.",
}


def _path_parameters(path: str, *, v2: bool) -> list[dict[str, Any]]:
    """`{name}` and `{namespace}` of the path, and `pretty`, as Kubernetes lists them."""
    parameters = []
    for name in ("name", "namespace"):
        if f"{{{name}}}" in path:
            parameter: dict[str, Any] = {"name": name, "in": "path", "required": True,
                                         "uniqueItems": True, "description": f"{name} of"
                                         " the resource" if name == "name" else
                                         "object name and auth scope, such as for teams and"
                                         " projects"}
            if v2:
                parameter["type"] = "string"
            else:
                parameter["schema"] = {"type": "string", "uniqueItems": True}
            parameters.append(parameter)
    return [*parameters, _query("pretty", v2=v2)]


def _query(name: str, *, v2: bool) -> dict[str, Any]:
    kind = _PARAMETER_TYPES.get(name, "string")
    parameter: dict[str, Any] = {"name": name, "in": "query", "uniqueItems": True,
                                 "description": _PARAMETER_DESCRIPTIONS.get(name, name)}
    if v2:
        parameter["type"] = kind
    else:
        parameter["schema"] = {"type": kind, "uniqueItems": True}
    return parameter


def _responses(ref: str, *, created: bool, v2: bool) -> dict[str, Any]:
    codes = ("200", "201", "202") if created else ("200",)
    if v2:
        return {code: {"description": "OK", "schema": _ref(ref, v2=True)} for code in codes}
    return {code: {"description": "OK",
                   "content": {"application/json": {"schema": _ref(ref)},
                               "application/yaml": {"schema": _ref(ref)}}}
            for code in codes}


def _add_body(operation: dict[str, Any], ref: str, *, patch: bool, v2: bool,
              patch_types: tuple[str, ...] = _PATCH_TYPES) -> None:
    if v2:
        operation["parameters"].append({"name": "body", "in": "body", "required": True,
                                        "schema": _ref(ref, v2=True)})
        if patch:
            operation["consumes"] = list(patch_types)
        return
    media = patch_types if patch else ("application/json", "application/yaml")
    operation["requestBody"] = {"required": True,
                                "content": {m: {"schema": _ref(ref)} for m in media}}


# --- which resources exist --------------------------------------------------------------


def _all_resources(crds: list[dict[str, Any]]) -> Iterator[_Resource]:
    yield from _BUILTINS
    for crd in crds:
        yield from _crd_resources(crd)


def _crd_resources(crd: dict[str, Any]) -> Iterator[_Resource]:
    spec = crd.get("spec") if isinstance(crd, dict) else None
    if not isinstance(spec, dict):
        return
    for version in spec.get("versions") or []:
        if not isinstance(version, dict) or not version.get("served", True):
            continue
        schema = (version.get("schema") or {}).get("openAPIV3Schema") or {"type": "object"}
        yield _Resource(group=str(spec.get("group", "")), version=str(version.get("name", "")),
                        names=spec.get("names") or {},
                        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                        schema=schema, subresources=version.get("subresources") or {},
                        custom=True)


def _builtin(group: str, version: str, kind: str, plural: str, *, namespaced: bool,
             description: str, properties: dict[str, Any]) -> _Resource:
    schema = {"description": description, "type": "object", "properties": properties}
    return _Resource(group=group, version=version, names={"kind": kind, "plural": plural},
                     namespaced=namespaced, schema=schema, subresources={}, custom=False)


def _string(description: str) -> dict[str, Any]:
    return {"description": description, "type": "string"}


def _free(description: str) -> dict[str, Any]:
    return {"description": description, "type": "object",
            "x-kubernetes-preserve-unknown-fields": True}


def _strings(description: str) -> dict[str, Any]:
    return {"description": description, "type": "array", "items": {"type": "string"}}


_GO_SCALARS: Final[dict[str, dict[str, str]]] = {
    "string": {"type": "string"}, "bool": {"type": "boolean"},
    "int32": {"type": "integer", "format": "int32"},
    "int64": {"type": "integer", "format": "int64"},
    "float64": {"type": "number", "format": "double"},
    "[]uint8": {"type": "string", "format": "byte"},
    "v1.Time": {"type": "string", "format": "date-time"},
    "v1.MicroTime": {"type": "string", "format": "date-time"}}


def _from_go(node: gotypes.Node) -> dict[str, Any]:
    """A Go type's schema as the real documents type it (`gotypes` is the one source of a
    built-in kind's fields; the documents here carry no field descriptions)."""
    if isinstance(node, gotypes.Slice):
        return {"type": "array", "items": _from_go(node.of)}
    if isinstance(node, gotypes.Map):
        return {"type": "object", "additionalProperties": _from_go(node.of)}
    if isinstance(node, gotypes.Struct):
        return {"type": "object", "properties": {
            name: _from_go(field) for name, field in node.field_types().items()
            if name not in ("apiVersion", "kind", "metadata")}}
    return dict(_GO_SCALARS.get(node.go, {}))


def _from_go_kind(group: str, kind: gotypes.Struct, plural: str, *, namespaced: bool,
                  description: str) -> _Resource:
    return _builtin(group, "v1", kind.name, plural, namespaced=namespaced,
                    description=description, properties=_from_go(kind)["properties"])


# The fields of a CRD's spec that `kubectl apply` diffs: its strategic merge patch from
# OpenAPI v3 must find each field it changes, or it warns "unable to find api field".
_CRD_SPEC: Final = {
    "description": "Spec describes how the user wants the resources to appear.",
    "type": "object",
    "properties": {
        "group": _string("group is the API group of the defined custom resource."),
        "scope": _string("scope indicates whether the defined custom resource is cluster- or"
                         " namespace-scoped. Allowed values are `Cluster` and `Namespaced`."),
        "names": {"description": "names specify the resource and kind names for the custom"
                                 " resource.",
                  "type": "object",
                  "properties": {
                      "plural": _string("plural is the plural name of the resource to serve."),
                      "singular": _string("singular is the singular name of the resource."),
                      "kind": _string("kind is the serialized kind of the resource."),
                      "listKind": _string("listKind is the serialized kind of the list for"
                                          " this resource."),
                      "shortNames": _strings("shortNames are short names for the resource."),
                      "categories": _strings("categories is a list of grouped resources this"
                                             " custom resource belongs to.")}},
        "versions": {"description": "versions is the list of all API versions of the defined"
                                    " custom resource.",
                     "type": "array",
                     "items": _free("CustomResourceDefinitionVersion describes a version for"
                                    " CRD.")},
        "conversion": _free("conversion defines conversion settings for the CRD."),
        "preserveUnknownFields": {"description": "preserveUnknownFields indicates that"
                                                 " object fields which are not specified in"
                                                 " the OpenAPI schema should be preserved"
                                                 " when persisting to storage.",
                                  "type": "boolean"},
    },
}


_RBAC: Final = "rbac.authorization.k8s.io"
_BUILTINS: Final = (
    _from_go_kind("", gotypes.SERVICE_ACCOUNT, "serviceaccounts", namespaced=True,
                  description="ServiceAccount binds together: a name, understood by users, "
                              "and perhaps by peripheral systems, for an identity; a principal "
                              "that can be authenticated and authorized; a set of secrets."),
    _from_go_kind(_RBAC, gotypes.ROLE, "roles", namespaced=True,
                  description="Role is a namespaced, logical grouping of PolicyRules that can "
                              "be referenced as a unit by a RoleBinding."),
    _from_go_kind(_RBAC, gotypes.CLUSTER_ROLE, "clusterroles", namespaced=False,
                  description="ClusterRole is a cluster level, logical grouping of PolicyRules "
                              "that can be referenced as a unit by a RoleBinding or "
                              "ClusterRoleBinding."),
    _from_go_kind(_RBAC, gotypes.ROLE_BINDING, "rolebindings", namespaced=True,
                  description="RoleBinding references a role, but does not contain it. It can "
                              "reference a Role in the same namespace or a ClusterRole in the "
                              "global namespace."),
    _from_go_kind(_RBAC, gotypes.CLUSTER_ROLE_BINDING, "clusterrolebindings",
                  namespaced=False,
                  description="ClusterRoleBinding references a ClusterRole, but not contain "
                              "it. It can reference a ClusterRole in the global namespace, "
                              "and adds who information via Subject."),
    _builtin("", "v1", "Namespace", "namespaces", namespaced=False,
             description="Namespace provides a scope for Names.",
             properties={"spec": _free("Spec defines the behavior of the Namespace."),
                         "status": _free("Status describes the current status of a Namespace.")}),
    _builtin("", "v1", "ConfigMap", "configmaps", namespaced=True,
             description="ConfigMap holds configuration data for pods to consume.",
             properties={
                 "data": {"description": "Data contains the configuration data.",
                          "type": "object", "additionalProperties": {"type": "string"}},
                 "binaryData": {"description": "BinaryData contains the binary data.",
                                "type": "object",
                                "additionalProperties": {"type": "string", "format": "byte"}},
                 "immutable": {"description": "Immutable, if set to true, ensures that data"
                                              " stored in the ConfigMap cannot be updated.",
                               "type": "boolean"}}),
    _builtin("", "v1", "Event", "events", namespaced=True,
             description="Event is a report of an event somewhere in the cluster.",
             properties={"involvedObject": _free("The object that this event is about."),
                         "reason": _string("A short, machine understandable status."),
                         "message": _string("A human-readable description of the status."),
                         "type": _string("Type of this event (Normal, Warning).")}),
    _builtin("events.k8s.io", "v1", "Event", "events", namespaced=True,
             description="Event is a report of an event somewhere in the cluster.",
             properties={"regarding": _free("The object this Event is about."),
                         "reason": _string("Why the action was taken."),
                         "note": _string("A human-readable description of the status."),
                         "type": _string("Type of this event (Normal, Warning).")}),
    _builtin("coordination.k8s.io", "v1", "Lease", "leases", namespaced=True,
             description="Lease defines a lease concept.",
             properties={"spec": {
                 "description": "Specification of the Lease.", "type": "object",
                 "properties": {
                     "holderIdentity": _string("The identity of the holder of the lease."),
                     "leaseDurationSeconds": {"description": "Duration that candidates for a"
                                              " lease need to wait to force acquire it.",
                                              "type": "integer", "format": "int32"},
                     "acquireTime": _string("When the current lease was acquired."),
                     "renewTime": _string("When the current holder last updated the lease."),
                     "leaseTransitions": {"description": "The number of transitions of a"
                                          " lease between holders.",
                                          "type": "integer", "format": "int32"}}}}),
    _builtin("apiextensions.k8s.io", "v1", "CustomResourceDefinition",
             "customresourcedefinitions", namespaced=False,
             description="CustomResourceDefinition represents a resource that should be"
                         " exposed on the API server.",
             properties={"spec": _CRD_SPEC,
                         "status": _free("Status indicates the actual state of the"
                                         " CustomResourceDefinition.")}),
)


# --- meta/v1 ---------------------------------------------------------------------------------


def _meta_schemas() -> dict[str, Any]:
    """The meta/v1 subset kubectl resolves: ObjectMeta, ListMeta, Status, Patch, Scale."""
    labels = {"type": "object", "additionalProperties": {"type": "string", "default": ""}}
    return {
        f"{META}.ObjectMeta": {
            "description": "ObjectMeta is metadata that all persisted resources must have,"
                           " which includes all objects users must create.",
            "type": "object",
            "properties": {
                "name": _string("Name must be unique within a namespace."),
                "generateName": _string("GenerateName is an optional prefix, used by the"
                                        " server, to generate a unique name ONLY IF the Name"
                                        " field has not been provided."),
                "namespace": _string("Namespace defines the space within which each name must"
                                     " be unique."),
                "uid": _string("UID is the unique in time and space value for this object."),
                "resourceVersion": _string("An opaque value that represents the internal"
                                           " version of this object."),
                "generation": {"description": "A sequence number representing a specific"
                                              " generation of the desired state.",
                               "type": "integer", "format": "int64"},
                "creationTimestamp": _ref_with(f"{META}.Time", "CreationTimestamp is a"
                                               " timestamp representing the server time when"
                                               " this object was created."),
                "deletionTimestamp": _ref_with(f"{META}.Time", "DeletionTimestamp is RFC 3339"
                                               " date and time at which this resource will be"
                                               " deleted."),
                "labels": {"description": "Map of string keys and values that can be used to"
                                          " organize and categorize objects.", **labels},
                "annotations": {"description": "Annotations is an unstructured key value map"
                                               " stored with a resource.", **labels},
                "finalizers": {"description": "Must be empty before the object is deleted"
                                              " from the registry.",
                               "type": "array", "items": {"type": "string", "default": ""},
                               "x-kubernetes-patch-strategy": "merge"},
                "ownerReferences": {"description": "List of objects depended by this object.",
                                    "type": "array",
                                    "items": _ref(f"{META}.OwnerReference"),
                                    "x-kubernetes-patch-merge-key": "uid",
                                    "x-kubernetes-patch-strategy": "merge"},
                "managedFields": {"description": "ManagedFields maps workflow-id and version"
                                                 " to the set of fields that are managed by"
                                                 " that workflow.",
                                  "type": "array", "items": _free("A managed fields entry.")},
            },
        },
        f"{META}.OwnerReference": {
            "description": "OwnerReference contains enough information to let you identify an"
                           " owning object.",
            "type": "object",
            "required": ["apiVersion", "kind", "name", "uid"],
            "properties": {
                "apiVersion": _string("API version of the referent."),
                "kind": _string("Kind of the referent."),
                "name": _string("Name of the referent."),
                "uid": _string("UID of the referent."),
                "controller": {"description": "If true, this reference points to the managing"
                                              " controller.", "type": "boolean"},
                "blockOwnerDeletion": {"description": "If true, the owner cannot be deleted"
                                                      " before this reference is removed.",
                                       "type": "boolean"},
            },
            "x-kubernetes-map-type": "atomic",
        },
        f"{META}.ListMeta": {
            "description": "ListMeta describes metadata that synthetic resources must have.",
            "type": "object",
            "properties": {
                "resourceVersion": _string("String that identifies the server's internal"
                                           " version of this object."),
                "continue": _string("Set if the user can request more items."),
                "remainingItemCount": {"description": "The number of subsequent items in the"
                                                      " list.", "type": "integer",
                                       "format": "int64"},
            },
        },
        f"{META}.Time": {"description": "Time is a wrapper around time.Time.",
                         "type": "string", "format": "date-time"},
        f"{META}.Patch": {"description": "Patch is provided to give a concrete name and type"
                                         " to the Kubernetes PATCH request body.",
                          "type": "object"},
        f"{META}.Status": {
            "description": "Status is a return value for calls that don't return other"
                           " objects.",
            "type": "object",
            "properties": {
                "apiVersion": _string(_API_VERSION_DESCRIPTION),
                "kind": _string(_KIND_DESCRIPTION),
                "code": {"description": "Suggested HTTP return code for this status.",
                         "type": "integer", "format": "int32"},
                "details": _free("Extended data associated with the reason."),
                "message": _string("A human-readable description of the status."),
                "reason": _string("A machine-readable description of why this operation is in"
                                  " the Failure status."),
                "status": _string("Status of the operation: Success or Failure."),
                "metadata": _ref_with(f"{META}.ListMeta", "Standard list metadata."),
            },
            "x-kubernetes-group-version-kind": [{"group": "", "kind": "Status",
                                                 "version": "v1"}],
        },
        "io.k8s.api.autoscaling.v1.Scale": {
            "description": "Scale represents a scaling request for a resource.",
            "type": "object",
            "properties": {
                "apiVersion": _string(_API_VERSION_DESCRIPTION),
                "kind": _string(_KIND_DESCRIPTION),
                "metadata": _ref_with(f"{META}.ObjectMeta", _METADATA_DESCRIPTION),
                "spec": {"description": "Desired state of the scale.", "type": "object",
                         "properties": {"replicas": {"description": "Desired number of"
                                                                    " instances.",
                                                     "type": "integer", "format": "int32"}}},
                "status": {"description": "Current status of the scale.", "type": "object",
                           "properties": {"replicas": {"description": "Actual number of"
                                                                      " observed instances.",
                                                       "type": "integer", "format": "int32"},
                                          "selector": _string("Label query over pods.")}},
            },
            "x-kubernetes-group-version-kind": [{"group": "autoscaling", "kind": "Scale",
                                                 "version": "v1"}],
        },
    }


# --- schema conversions -------------------------------------------------------------------


def _to_v3(schema: Any) -> Any:
    """int-or-string nodes get the anyOf kubectl's explain shows as `<IntOrString>`."""
    if not isinstance(schema, dict):
        return schema
    converted: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            converted[key] = {name: _to_v3(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            converted[key] = _to_v3(value)
        else:
            converted[key] = value
    if converted.get("x-kubernetes-int-or-string") is True:
        _unfold_int_or_string(converted)
    return converted


_INT_OR_STRING: Final = ({"type": "integer"}, {"type": "string"})


def _unfold_int_or_string(schema: dict[str, Any]) -> None:
    """apiextensions' Structural.Unfold: an int-or-string node publishes the anyOf of its
    two types, or, when it has an anyOf of its own, an allOf put in front that holds it.
    kubectl explain still shows such a node as <Object> (it reads only `type`), as it does
    against a real server (kubernetes/kubernetes#130946)."""
    all_of = schema.get("allOf")
    first = all_of[0] if isinstance(all_of, list) and all_of else {}
    if _is_int_or_string(schema.get("anyOf")) or (
            isinstance(first, dict) and _is_int_or_string(first.get("anyOf"))):
        return
    unfolded = [dict(branch) for branch in _INT_OR_STRING]
    if "anyOf" not in schema:
        schema["anyOf"] = unfolded
    else:
        schema["allOf"] = [{"anyOf": unfolded}, *(all_of or [])]


def _is_int_or_string(any_of: Any) -> bool:
    return isinstance(any_of, list) and tuple(any_of) == _INT_OR_STRING


_V2_DROPPED: Final = ("default", "nullable", "anyOf", "allOf", "oneOf", "not",
                      "x-kubernetes-validations")


def _to_v2(schema: Any) -> Any:
    """A v3 schema as Kubernetes publishes it in v2 (see `k8s-reference/112`)."""
    if not isinstance(schema, dict):
        return schema
    converted: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _V2_DROPPED:
            continue
        if key == "properties" and isinstance(value, dict):
            converted[key] = {name: _to_v2(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            converted[key] = _to_v2(value)
        else:
            converted[key] = value
    if schema.get("x-kubernetes-int-or-string") is True or (
            schema.get("x-kubernetes-preserve-unknown-fields") is True):
        converted.pop("type", None)  # kubectl's v2 validation would reject other types
    ref = _single_all_of_ref(schema) or converted.get("$ref")
    if isinstance(ref, str):
        converted["$ref"] = ref.replace("#/components/schemas/", "#/definitions/")
    return converted


def _single_all_of_ref(schema: dict[str, Any]) -> str | None:
    """v3 wraps a described reference in allOf; v2 puts the $ref beside the description."""
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], dict):
        ref = all_of[0].get("$ref")
        return ref if isinstance(ref, str) else None
    return None


def _ref(name: str, *, v2: bool = False) -> dict[str, str]:
    return {"$ref": f"#/definitions/{name}" if v2 else f"#/components/schemas/{name}"}


def _ref_with(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "allOf": [_ref(name)]}


# --- index helpers --------------------------------------------------------------------------


def _gv_key(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _split_gv_key(key: str) -> tuple[str, str]:
    parts = key.split("/")
    return ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])


def _hash(document: Any) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha512(text.encode()).hexdigest().upper()
