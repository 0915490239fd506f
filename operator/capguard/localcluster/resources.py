"""What the server serves: resource types, the registry of them, and the built-in kinds.

A `ResourceType` describes one (group, version, plural) with the behaviour the handlers
need: custom-resource semantics, subresources, printer columns, a schema, and a codec for
kinds stored in another shape (events.k8s.io/v1 Events are stored as core/v1 Events).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Final

from capguard.localcluster import gotypes

ALL_VERBS: Final = ("create", "delete", "deletecollection", "get", "list", "patch", "update",
                    "watch")
# The order the real server lists a custom resource's verbs in (013).
CUSTOM_VERBS: Final = ("delete", "deletecollection", "get", "list", "patch", "create", "update",
                       "watch")
AGE_COLUMN: Final = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
# Columns of built-in kinds' Go printers: `cell` makes the cell from the object, as the
# printer does, where a CRD's column would evaluate `jsonPath` and format it by type.
# The default table convertor's (CRDs) and RBAC's: a date column whose cells are the
# RFC 3339 time itself, not an age.
CREATED_AT_COLUMN: Final = {
    "name": "Created At", "type": "date", "jsonPath": ".metadata.creationTimestamp",
    "cell": lambda obj: (obj.get("metadata") or {}).get("creationTimestamp")}
# RBAC's printer for bindings: `Kind/name` of the role.
ROLE_COLUMN: Final = {
    "name": "Role", "type": "string", "jsonPath": ".roleRef",
    "cell": lambda obj: "/".join(str((obj.get("roleRef") or {}).get(key) or "")
                                 for key in ("kind", "name")),
    "description": "RoleRef can reference a Role in the current namespace or a ClusterRole in "
                   "the global namespace. If the RoleRef cannot be resolved, the Authorizer "
                   "must return an error. This field is immutable."}

Converter = Callable[[dict[str, Any]], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Subresource:
    name: str
    verbs: tuple[str, ...]
    kind: str = ""             # empty: the parent's kind
    group: str | None = None   # None: the parent's group/version (scale is autoscaling/v1)
    version: str | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    storage_version_hash: str = ""
    custom: bool = False             # CRD-defined: CR semantics (415 for SMP, rv on PUT, ...)
    tracks_generation: bool = False
    status_subresource: bool = False
    scale: dict[str, Any] | None = None
    extra_subresources: tuple[Subresource, ...] = ()
    printer_columns: tuple[dict[str, Any], ...] = (AGE_COLUMN,)
    schema: Any = None               # schema.Schema of a custom resource, else None
    storage: str = ""                # store partition; kinds served twice share one
    to_external: Converter | None = None   # stored shape -> this version's shape
    to_internal: Converter | None = None   # this version's shape -> stored shape
    crd_name: str = ""
    listing_kind: str = ""           # a CRD's spec.names.listKind; else Kind + "List"
    field_labels: frozenset[str] = frozenset()
    path_segment_names: bool = False  # RBAC's kinds: any name that fits in a URL path
    go_type: gotypes.Struct | None = None   # a built-in kind's Go type: how a body decodes

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        # How messages name the resource: `widgets.widgets.example.dev`, `configmaps`.
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def kind_group(self) -> str:
        # How 422 messages name it: `Widget.widgets.example.dev`, `ConfigMap`.
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def list_kind(self) -> str:
        return self.listing_kind or self.kind + "List"

    @property
    def storage_key(self) -> str:
        return self.storage or f"{self.group}/{self.plural}"

    def subresources(self) -> tuple[Subresource, ...]:
        found = list(self.extra_subresources)
        if self.status_subresource and not any(s.name == "status" for s in found):
            found.append(Subresource("status", ("get", "patch", "update")))
        if self.scale is not None:
            found.append(Subresource("scale", ("get", "patch", "update"), kind="Scale",
                                     group="autoscaling", version="v1"))
        return tuple(found)

    def subresource(self, name: str) -> Subresource | None:
        return next((sub for sub in self.subresources() if sub.name == name), None)

    def external(self, stored: dict[str, Any]) -> dict[str, Any]:
        return self.to_external(stored) if self.to_external else stored

    def internal(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.to_internal(obj) if self.to_internal else obj


class Registry:
    """The served resource types, by (group, version, plural), in discovery order."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._group_order: list[str] = []

    def add(self, rt: ResourceType) -> None:
        self._types[(rt.group, rt.version, rt.plural)] = rt
        if rt.group and rt.group not in self._group_order:
            self._group_order.append(rt.group)

    def remove(self, rt: ResourceType) -> None:
        self._types.pop((rt.group, rt.version, rt.plural), None)
        if rt.group and not any(t.group == rt.group for t in self._types.values()):
            self._group_order.remove(rt.group)

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(list(self._types.values()))

    def groups(self) -> list[str]:
        """Named groups: built-ins first in server order, then CRD groups by name."""
        builtin = [g for g in self._group_order if g in BUILTIN_GROUPS]
        custom = sorted(g for g in self._group_order if g not in BUILTIN_GROUPS)
        return builtin + custom

    def versions(self, group: str) -> list[str]:
        found: list[str] = []
        for (g, v, _), _rt in self._types.items():
            if g == group and v not in found:
                found.append(v)
        return sorted(found, key=version_priority)

    def resources(self, group: str, version: str) -> list[ResourceType]:
        return [rt for (g, v, _), rt in self._types.items() if g == group and v == version]

    def by_storage(self, storage_key: str) -> list[ResourceType]:
        return [rt for rt in self._types.values() if rt.storage_key == storage_key]


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Kubernetes version order: GA before beta before alpha, higher numbers first."""
    import re

    match = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not match:
        return (3, 0, 0, version)
    major, stage, minor = match.groups()
    rank = {None: 0, "beta": 1, "alpha": 2}[stage]
    return (rank, -int(major), -int(minor or 0), version)


# ---- Events: stored once as core/v1, also served as events.k8s.io/v1 (102, 103) ----------

def _drop_empty(obj: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in obj.items() if value not in (None, "", 0, [])}


def core_event_normalized(obj: dict[str, Any]) -> dict[str, Any]:
    """The stored shape of a core/v1 Event: fields Go serializes without omitempty present."""
    result = {"kind": "Event", "apiVersion": "v1", "metadata": obj.get("metadata", {})}
    result["involvedObject"] = obj.get("involvedObject") or {}
    for key in ("reason", "message"):
        if obj.get(key):
            result[key] = obj[key]
    result["source"] = obj.get("source") or {}
    # times come decoded (`gotypes`): already as Go writes them
    result["firstTimestamp"] = obj.get("firstTimestamp")
    result["lastTimestamp"] = obj.get("lastTimestamp")
    if obj.get("count"):
        result["count"] = obj["count"]
    if obj.get("type"):
        result["type"] = obj["type"]
    result["eventTime"] = obj.get("eventTime")
    for key in ("series", "action", "related"):
        if obj.get(key):
            result[key] = obj[key]
    result["reportingComponent"] = obj.get("reportingComponent") or ""
    result["reportingInstance"] = obj.get("reportingInstance") or ""
    return result


def _event_to_events_v1(stored: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"kind": "Event", "apiVersion": "events.k8s.io/v1",
                              "metadata": stored.get("metadata", {}),
                              "eventTime": stored.get("eventTime")}
    result.update(_drop_empty({
        "series": stored.get("series"),
        "reportingController": stored.get("reportingComponent"),
        "reportingInstance": stored.get("reportingInstance"),
        "action": stored.get("action"),
        "reason": stored.get("reason"),
        "regarding": stored.get("involvedObject"),
        "related": stored.get("related"),
        "note": stored.get("message"),
        "type": stored.get("type"),
    }))
    result["deprecatedSource"] = stored.get("source") or {}
    result["deprecatedFirstTimestamp"] = stored.get("firstTimestamp")
    result["deprecatedLastTimestamp"] = stored.get("lastTimestamp")
    if stored.get("count"):
        result["deprecatedCount"] = stored["count"]
    return result


def _events_v1_to_event(obj: dict[str, Any]) -> dict[str, Any]:
    return core_event_normalized({
        "metadata": obj.get("metadata", {}),
        "involvedObject": obj.get("regarding"),
        "reason": obj.get("reason"),
        "message": obj.get("note"),
        "source": obj.get("deprecatedSource"),
        "firstTimestamp": obj.get("deprecatedFirstTimestamp"),
        "lastTimestamp": obj.get("deprecatedLastTimestamp"),
        "count": obj.get("deprecatedCount"),
        "type": obj.get("type"),
        "eventTime": obj.get("eventTime"),
        "series": obj.get("series"),
        "action": obj.get("action"),
        "related": obj.get("related"),
        "reportingComponent": obj.get("reportingController"),
        "reportingInstance": obj.get("reportingInstance"),
    })


def _core_event_view(stored: dict[str, Any]) -> dict[str, Any]:
    return stored


# ---- The built-in kinds capguard and Kopf need; anything else answers 404 ---------------

BUILTIN_GROUPS: Final = ("events.k8s.io", "authentication.k8s.io", "authorization.k8s.io",
                          "rbac.authorization.k8s.io", "apiextensions.k8s.io",
                          "coordination.k8s.io")

NAMESPACES: Final = ResourceType(
    group="", version="v1", plural="namespaces", kind="Namespace", namespaced=False,
    short_names=("ns",), verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
    storage_version_hash="Q3oi5N2YM8M=", status_subresource=True, go_type=gotypes.NAMESPACE,
    extra_subresources=(Subresource("finalize", ("update",)),
                        Subresource("status", ("get", "patch", "update"))),
    printer_columns=({"name": "Status", "type": "string", "jsonPath": ".status.phase"},
                     AGE_COLUMN))
CONFIGMAPS: Final = ResourceType(
    group="", version="v1", plural="configmaps", kind="ConfigMap", namespaced=True,
    short_names=("cm",), storage_version_hash="qFsyl6wFWjQ=", go_type=gotypes.CONFIG_MAP)
CORE_EVENTS: Final = ResourceType(
    group="", version="v1", plural="events", kind="Event", namespaced=True,
    short_names=("ev",), storage_version_hash="r2yiGXH7wu8=", storage="events",
    to_internal=core_event_normalized, go_type=gotypes.CORE_EVENT,
    printer_columns=({"name": "Type", "type": "string", "jsonPath": ".type"},
                     {"name": "Reason", "type": "string", "jsonPath": ".reason"},
                     {"name": "Message", "type": "string", "jsonPath": ".message"},
                     AGE_COLUMN),
    field_labels=frozenset({"involvedObject.kind", "involvedObject.name", "involvedObject.uid",
                            "involvedObject.namespace", "reason", "type"}))
EVENTS_V1: Final = ResourceType(
    group="events.k8s.io", version="v1", plural="events", kind="Event", namespaced=True,
    short_names=("ev",), storage_version_hash="r2yiGXH7wu8=", storage="events",
    to_external=_event_to_events_v1, to_internal=_events_v1_to_event, go_type=gotypes.EVENT_V1,
    printer_columns=({"name": "Type", "type": "string", "jsonPath": ".type"},
                     {"name": "Reason", "type": "string", "jsonPath": ".reason"},
                     {"name": "Note", "type": "string", "jsonPath": ".note"},
                     AGE_COLUMN),
    # The field labels of events.k8s.io/v1 (its names for the core ones), matched on this view.
    field_labels=frozenset({"regarding.kind", "regarding.name", "regarding.uid",
                            "regarding.namespace", "regarding.apiVersion",
                            "regarding.resourceVersion", "regarding.fieldPath",
                            "reportingController", "reason", "type"}))
LEASES: Final = ResourceType(
    group="coordination.k8s.io", version="v1", plural="leases", kind="Lease", namespaced=True,
    storage_version_hash="gqkMMb/YqFM=", go_type=gotypes.LEASE,
    printer_columns=({"name": "Holder", "type": "string", "jsonPath": ".spec.holderIdentity"},
                     AGE_COLUMN))
CRDS: Final = ResourceType(
    group="apiextensions.k8s.io", version="v1", plural="customresourcedefinitions",
    kind="CustomResourceDefinition", namespaced=False, short_names=("crd", "crds"),
    categories=("api-extensions",), storage_version_hash="M5uH+AlWATY=",
    tracks_generation=True, status_subresource=True, go_type=gotypes.CUSTOM_RESOURCE_DEFINITION,
    printer_columns=(CREATED_AT_COLUMN,))

# RBAC's kinds (`authz` authorizes by them) and the accounts they bind.
SERVICE_ACCOUNTS: Final = ResourceType(
    group="", version="v1", plural="serviceaccounts", kind="ServiceAccount", namespaced=True,
    short_names=("sa",), go_type=gotypes.SERVICE_ACCOUNT,
    printer_columns=({"name": "Secrets", "type": "string", "jsonPath": ".secrets",
                      "cell": lambda obj: len(obj.get("secrets") or []),
                      "description": "Secrets is a list of the secrets in the same namespace "
                                     "that pods running using this ServiceAccount are allowed "
                                     "to use."}, AGE_COLUMN),
    extra_subresources=(Subresource("token", ("create",), kind="TokenRequest",
                                    group="authentication.k8s.io", version="v1"),))
# What a token subresource is asked with and answers (`tokens`); not served on its own.
TOKEN_REQUESTS: Final = ResourceType(
    group="authentication.k8s.io", version="v1", plural="tokenrequests", kind="TokenRequest",
    namespaced=True, verbs=())
RBAC_GROUP: Final = "rbac.authorization.k8s.io"
ROLES: Final = ResourceType(group=RBAC_GROUP, version="v1", plural="roles", kind="Role",
                            namespaced=True, path_segment_names=True, go_type=gotypes.ROLE,
                            printer_columns=(CREATED_AT_COLUMN,))
CLUSTER_ROLES: Final = ResourceType(group=RBAC_GROUP, version="v1", plural="clusterroles",
                                    kind="ClusterRole", namespaced=False,
                                    path_segment_names=True, go_type=gotypes.CLUSTER_ROLE,
                                    printer_columns=(CREATED_AT_COLUMN,))
ROLE_BINDINGS: Final = ResourceType(
    group=RBAC_GROUP, version="v1", plural="rolebindings", kind="RoleBinding", namespaced=True,
    path_segment_names=True, go_type=gotypes.ROLE_BINDING,
    printer_columns=(ROLE_COLUMN, AGE_COLUMN))
CLUSTER_ROLE_BINDINGS: Final = ResourceType(
    group=RBAC_GROUP, version="v1", plural="clusterrolebindings", kind="ClusterRoleBinding",
    namespaced=False, path_segment_names=True, go_type=gotypes.CLUSTER_ROLE_BINDING,
    printer_columns=(ROLE_COLUMN, AGE_COLUMN))
RBAC_TYPES: Final = (ROLES, CLUSTER_ROLES, ROLE_BINDINGS, CLUSTER_ROLE_BINDINGS)
# Reviews are asked, not stored: a create answers with the review's status (`authz`).
SELF_SUBJECT_ACCESS_REVIEWS: Final = ResourceType(
    group="authorization.k8s.io", version="v1", plural="selfsubjectaccessreviews",
    kind="SelfSubjectAccessReview", namespaced=False, verbs=("create",))
SELF_SUBJECT_RULES_REVIEWS: Final = ResourceType(
    group="authorization.k8s.io", version="v1", plural="selfsubjectrulesreviews",
    kind="SelfSubjectRulesReview", namespaced=False, verbs=("create",))
SUBJECT_ACCESS_REVIEWS: Final = ResourceType(
    group="authorization.k8s.io", version="v1", plural="subjectaccessreviews",
    kind="SubjectAccessReview", namespaced=False, verbs=("create",))
SELF_SUBJECT_REVIEWS: Final = ResourceType(  # `kubectl auth whoami`
    group="authentication.k8s.io", version="v1", plural="selfsubjectreviews",
    kind="SelfSubjectReview", namespaced=False, verbs=("create",))
REVIEWS: Final = (SELF_SUBJECT_REVIEWS, SELF_SUBJECT_ACCESS_REVIEWS,
                  SELF_SUBJECT_RULES_REVIEWS, SUBJECT_ACCESS_REVIEWS)

BUILTINS: Final = (NAMESPACES, CONFIGMAPS, CORE_EVENTS, SERVICE_ACCOUNTS, EVENTS_V1, *REVIEWS,
                   *RBAC_TYPES, LEASES, CRDS)
