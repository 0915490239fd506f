"""What the built-in kinds add on admission: a Namespace gets its `kubernetes` finalizer,
its `kubernetes.io/metadata.name` label and phase Active (003), and the namespaces the
real server's NamespaceLifecycle admission protects cannot be deleted. Leases, Events and
ConfigMaps are validated as kube-apiserver validates them (pkg/apis/*/validation: no
recorded exchange refuses one, so the rules and messages follow the source)."""
from __future__ import annotations

import re
from typing import Any, Final

from capguard.localcluster import errors, meta, objects, resources

NAME_LABEL = "kubernetes.io/metadata.name"
IMMORTAL_NAMESPACES: Final = frozenset({"default", "kube-system", "kube-public"})
# An Event's limits (core/validation): reportingInstance, action and reason; its message.
_EVENT_FIELD_LIMIT: Final = 128
_EVENT_MESSAGE_LIMIT: Final = 1024
_CONFIG_KEY: Final = re.compile(r"[-._a-zA-Z0-9]+")
_CONFIG_KEY_ERROR: Final = (
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. "
    "'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is "
    "'[-._a-zA-Z0-9]+')")
_IMMUTABLE_CONFIG: Final = "field is immutable when `immutable` is set"


def install(api: objects.Objects) -> None:
    api.preparers[resources.NAMESPACES.storage_key] = prepare_namespace
    api.before_delete[resources.NAMESPACES.storage_key] = refuse_immortal
    api.preparers[resources.LEASES.storage_key] = validate_lease
    api.preparers[resources.CORE_EVENTS.storage_key] = validate_event   # both versions
    api.preparers[resources.CONFIGMAPS.storage_key] = validate_config_map


def prepare_namespace(rt: resources.ResourceType, namespace: dict[str, Any],
                      old: dict[str, Any] | None) -> list[dict[str, str]]:
    metadata = namespace["metadata"]
    labels = metadata.get("labels")
    if not isinstance(labels, dict):
        labels = metadata["labels"] = {}
    labels[NAME_LABEL] = metadata["name"]
    if old is None:
        namespace["spec"] = {"finalizers": ["kubernetes"]}
        namespace["status"] = {"phase": "Active"}
    return []


def refuse_immortal(namespace: dict[str, Any]) -> dict[str, Any]:
    name = namespace["metadata"]["name"]
    if name in IMMORTAL_NAMESPACES:
        raise errors.forbidden(f'namespaces "{name}" is forbidden: this namespace may not be '
                               f"deleted", details={"name": name, "kind": "namespaces"})
    return namespace


def validate_lease(rt: resources.ResourceType, lease: dict[str, Any],
                   old: dict[str, Any] | None) -> list[dict[str, str]]:
    """ValidateLeaseSpec (coordination/validation)."""
    spec = lease.get("spec") or {}
    causes = []
    duration, transitions = spec.get("leaseDurationSeconds"), spec.get("leaseTransitions")
    if duration is not None and duration <= 0:
        causes.append(errors.invalid_cause("spec.leaseDurationSeconds", duration,
                                           "must be greater than 0"))
    if transitions is not None and transitions < 0:
        causes.append(errors.invalid_cause("spec.leaseTransitions", transitions,
                                           "must be greater than or equal to 0"))
    return causes


def validate_event(rt: resources.ResourceType, event: dict[str, Any],
                   old: dict[str, Any] | None) -> list[dict[str, str]]:
    """ValidateEventCreate and ValidateEventUpdate (core/validation) on the stored core/v1
    shape: legacyValidateEvent for both versions (an Event with eventTime is a "new" one:
    it must say who reported it, how and why), and on an events.k8s.io/v1 create the
    newer API's own rules. Paths name the internal fields, as the real messages do, but
    for the reporting controller, named as the request's version names it."""
    causes = _legacy_event_causes(rt, event)
    if rt is resources.EVENTS_V1 and old is None:
        causes += _events_v1_causes(event)
    return causes


def _legacy_event_causes(rt: resources.ResourceType,
                         event: dict[str, Any]) -> list[dict[str, str]]:
    namespace = event["metadata"].get("namespace", "")
    involved = (event.get("involvedObject") or {}).get("namespace", "")
    controller = "reportingComponent" if rt is resources.CORE_EVENTS else "reportingController"
    mismatch = errors.invalid_cause("involvedObject.namespace", involved,
                                    "does not match event.namespace")
    causes = []
    if not event.get("eventTime"):   # an old-style Event: only the namespaces must agree
        if involved != namespace and (involved or namespace != "default"):
            causes.append(mismatch)
    else:
        if not involved and namespace not in ("default", "kube-system"):
            causes.append(mismatch)
        reporter = event.get("reportingComponent") or ""
        if not reporter:
            causes.append(errors.required_cause(controller))
        causes += [errors.invalid_cause(controller, reporter, problem)
                   for problem in meta.qualified_name_problems(reporter)]
        for field in ("reportingInstance", "action", "reason"):
            value = event.get(field) or ""
            if not value:
                causes.append(errors.required_cause(field))
            if len(value) > _EVENT_FIELD_LIMIT:
                causes.append(errors.invalid_cause(
                    field, "", f"can have at most {_EVENT_FIELD_LIMIT} characters"))
        if len((event.get("message") or "").encode()) > _EVENT_MESSAGE_LIMIT:
            causes.append(errors.invalid_cause(
                "message", "", f"can have at most {_EVENT_MESSAGE_LIMIT} characters"))
    causes += [errors.invalid_cause("namespace", namespace, problem)
               for problem in meta.subdomain_problems(namespace)]
    return causes


def _events_v1_causes(event: dict[str, Any]) -> list[dict[str, str]]:
    causes = []
    series = event.get("series")
    if series is not None:
        if (series.get("count") or 0) < 2:
            causes.append(errors.invalid_cause("series.count", "", "should be at least 2"))
        if not series.get("lastObservedTime"):
            causes.append(errors.required_cause("series.lastObservedTime"))
    if not event.get("eventTime"):
        causes.append(errors.required_cause("eventTime"))
    kind = event.get("type") or ""
    if kind not in ("Normal", "Warning"):
        causes.append(errors.invalid_cause("type", "", f"has invalid value: {kind}"))
    for stored, named in (("firstTimestamp", "deprecatedFirstTimestamp"),
                          ("lastTimestamp", "deprecatedLastTimestamp"),
                          ("count", "deprecatedCount"), ("source", "deprecatedSource")):
        if event.get(stored):
            causes.append(errors.invalid_cause(named, "", "needs to be unset"))
    return causes


def validate_config_map(rt: resources.ResourceType, config_map: dict[str, Any],
                        old: dict[str, Any] | None) -> list[dict[str, str]]:
    """ValidateConfigMap and ValidateConfigMapUpdate (core/validation)."""
    data, binary = config_map.get("data") or {}, config_map.get("binaryData") or {}
    causes = []
    for bag, keys in (("data", data), ("binaryData", binary)):
        for key in keys:
            causes += [errors.invalid_cause(f"{bag}[{key}]", key, problem)
                       for problem in _config_key_problems(key)]
            if bag == "data" and key in binary:
                causes.append(errors.invalid_cause(f"data[{key}]", key,
                                                   "duplicate of key present in binaryData"))
    if old is not None and old.get("immutable"):
        if not config_map.get("immutable"):
            causes.append(errors.forbidden_cause("immutable", _IMMUTABLE_CONFIG))
        for bag in ("data", "binaryData"):
            if (config_map.get(bag) or {}) != (old.get(bag) or {}):
                causes.append(errors.forbidden_cause(bag, _IMMUTABLE_CONFIG))
    return causes


def _config_key_problems(key: str) -> list[str]:
    """IsConfigMapKey."""
    problems = []
    if len(key) > 253:
        problems.append("must be no more than 253 characters")
    if not _CONFIG_KEY.fullmatch(key):
        problems.append(_CONFIG_KEY_ERROR)
    if key in (".", ".."):
        problems.append(f"must not be '{key}'")
    elif key.startswith(".."):
        problems.append("must not start with '..'")
    return problems
