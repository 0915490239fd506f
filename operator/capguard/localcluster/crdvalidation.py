"""What apiextensions refuses in a CustomResourceDefinition, outside its schemas.

Follows apiextensions-apiserver 1.30's `validation.go` (names, group, scope, versions,
stored versions, subresources, printer columns, conversion, protected groups, the fields
an update may not change) with its messages and field paths. The OpenAPI schema of each
version is checked elsewhere (`crds._version_causes`).

Where a cause is reported depends on a detail of the real server: it validates its
internal form, into which a v1 CRD is converted by hoisting `schema`, `subresources`,
`additionalPrinterColumns` and `selectableFields` to the spec when every version has the
same value. A single-version CRD's scale paths are therefore reported at
`spec.subresources.scale...` (340), not `spec.versions[0].subresources.scale...`.
"""
from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any, Final

from capguard.localcluster import meta, schema

Cause = dict[str, str]
Causes = list[Cause]

# The v1 field each per-version value is hoisted to in the internal form.
HOISTED: Final = {"schema": "validation", "subresources": "subresources",
                  "additionalPrinterColumns": "additionalPrinterColumns",
                  "selectableFields": "selectableFields"}
COLUMN_TYPES: Final = ("boolean", "date", "integer", "number", "string")
COLUMN_FORMATS: Final = ("byte", "date", "date-time", "double", "float", "int32", "int64",
                         "password")
MAX_SELECTABLE_FIELDS: Final = 8
APPROVAL_ANNOTATION: Final = "api-approved.kubernetes.io"
_SIMPLE_FIELD_PATH: Final = re.compile(r"(\.[A-Za-z_][A-Za-z0-9_-]*)+")
_APPROVAL_HELP: Final = "see https://github.com/kubernetes/enhancements/pull/1111"


# ---- causes in the words of k8s.io/apimachinery/pkg/util/validation/field ----------------

def invalid(field: str, value: Any, detail: str) -> Cause:
    rendered = value if isinstance(value, _Rendered) else schema.go_value(value)
    return {"reason": "FieldValueInvalid", "field": field,
            "message": f"Invalid value: {rendered}: {detail}"}


def required(field: str, detail: str = "") -> Cause:
    return {"reason": "FieldValueRequired", "field": field,
            "message": f"Required value: {detail}" if detail else "Required value"}


def forbidden(field: str, detail: str) -> Cause:
    return {"reason": "FieldValueForbidden", "field": field, "message": f"Forbidden: {detail}"}


def not_supported(field: str, value: Any, supported: tuple[str, ...]) -> Cause:
    listed = ", ".join(json.dumps(option) for option in supported)
    return {"reason": "FieldValueNotSupported", "field": field, "message":
            f"Unsupported value: {schema.go_value(value)}: supported values: {listed}"}


class _Rendered(str):
    """A value already in Go's %#v form (a struct or slice), printed as it is."""


def _text(value: Any) -> str:
    # A Go string field: anything else would have failed to decode; treat it as empty.
    return value if isinstance(value, str) else ""


# ---- hoisting: where the real server reports a per-version value ------------------------

def placed(spec: dict[str, Any], key: str) -> list[tuple[str, Any]]:
    """(field path, value) of a per-version key as apiextensions validates it: once at
    `spec.<hoisted>` when every version has the same value, else once per version."""
    versions = _versions(spec)
    if not versions:
        return []
    values = [_empty_as_none(version.get(key)) for version in versions]
    if all(value == values[0] for value in values):
        return [(f"spec.{HOISTED[key]}", values[0])]
    return [(f"spec.versions[{index}].{key}", value) for index, value in enumerate(values)]


def _empty_as_none(value: Any) -> Any:
    # Go's semantic equality treats an empty list like an absent one (not so for objects).
    return None if value == [] else value


def _versions(spec: dict[str, Any]) -> list[dict[str, Any]]:
    versions = spec.get("versions")
    if not isinstance(versions, list):
        return []
    return [version if isinstance(version, dict) else {} for version in versions]


# ---- the whole CRD ------------------------------------------------------------------------

def set_defaults(spec: dict[str, Any]) -> None:
    """v1 defaulting, applied when the request is decoded (before validation)."""
    names = spec.get("names")
    if isinstance(names, dict):
        kind = _text(names.get("kind"))
        if not names.get("singular"):
            names["singular"] = kind.lower()
        if not names.get("listKind") and kind:
            names["listKind"] = kind + "List"
    if spec.get("conversion") is None:
        spec["conversion"] = {"strategy": "None"}
    service = ((spec.get("conversion") or {}).get("webhook") or {}).get("clientConfig") or {}
    if isinstance(service.get("service"), dict):
        service["service"].setdefault("port", 443)
    for version in _versions(spec):
        # served and storage have no omitempty and no default: absent is false.
        version.setdefault("served", False)
        version.setdefault("storage", False)


def create_causes(crd: dict[str, Any]) -> Causes:
    spec = crd["spec"]
    stored = first_storage_version(spec)
    return (name_match_causes(crd)
            + spec_causes(spec)
            + stored_version_causes(spec, [stored] if stored else [])
            + approval_causes(crd, None)
            + preserve_unknown_fields_causes(spec, None))


def update_causes(crd: dict[str, Any], old: dict[str, Any]) -> Causes:
    spec, old_spec = crd["spec"], old["spec"]
    return (spec_causes(spec)
            + immutable_causes(spec, old_spec, established=is_established(old))
            + stored_version_causes(spec, stored_versions(spec, old))
            + approval_causes(crd, old)
            + preserve_unknown_fields_causes(spec, old_spec))


def stored_versions(spec: dict[str, Any], old: dict[str, Any] | None) -> list[str]:
    """status.storedVersions after a write: the update strategy adds a new storage version."""
    stored = list(((old or {}).get("status") or {}).get("storedVersions") or [])
    current = first_storage_version(spec)
    if current and current not in stored:
        stored.append(current)
    return stored


def name_match_causes(crd: dict[str, Any]) -> Causes:
    spec = crd["spec"]
    names = spec.get("names") if isinstance(spec.get("names"), dict) else {}
    name = crd["metadata"].get("name")
    if name != f"{_text(names.get('plural'))}.{_text(spec.get('group'))}":
        return [invalid("metadata.name", name, 'must be spec.names.plural+"."+spec.group')]
    return []


def first_storage_version(spec: dict[str, Any]) -> str | None:
    return next((_text(v.get("name")) for v in _versions(spec) if v.get("storage") is True),
                None)


def is_established(crd: dict[str, Any]) -> bool:
    return any(condition.get("type") == "Established" and condition.get("status") == "True"
               for condition in (crd.get("status") or {}).get("conditions") or []
               if isinstance(condition, dict))


def spec_causes(spec: dict[str, Any]) -> Causes:
    return (group_causes(spec.get("group"))
            + scope_causes(spec.get("scope"))
            + version_list_causes(spec)
            + name_causes(spec.get("names"))
            + [cause for path, value in placed(spec, "subresources")
               for cause in subresource_causes(value, path)]
            + [cause for path, value in placed(spec, "additionalPrinterColumns")
               for cause in column_list_causes(value, path)]
            + selectable_field_causes(spec)
            + conversion_causes(spec))


def group_causes(group: Any) -> Causes:
    group = _text(group)
    if not group:
        return [required("spec.group")]
    if problems := meta.subdomain_problems(group):
        return [invalid("spec.group", group, ",".join(problems))]
    if "." not in group:
        return [invalid("spec.group", group, "should be a domain with at least one dot")]
    return []


def scope_causes(scope: Any) -> Causes:
    scope = _text(scope)
    if not scope:
        return [required("spec.scope")]
    if scope not in ("Cluster", "Namespaced"):
        return [not_supported("spec.scope", scope, ("Cluster", "Namespaced"))]
    return []


# ---- versions -----------------------------------------------------------------------------

def version_list_causes(spec: dict[str, Any]) -> Causes:
    versions = _versions(spec)
    causes: Causes = []
    for index, version in enumerate(versions):
        name = _text(version.get("name"))
        if problems := meta.dns1035_problems(name):
            causes.append(invalid(f"spec.versions[{index}].name", name, ",".join(problems)))
        causes += deprecation_causes(version, f"spec.versions[{index}].deprecationWarning")
    names = [_text(version.get("name")) for version in versions]
    if len(set(names)) != len(names):
        causes.append(invalid("spec.versions", go_versions(spec),
                              "must contain unique version names"))
    if sum(1 for version in versions if version.get("storage") is True) != 1:
        causes.append(invalid("spec.versions", go_versions(spec),
                              "must have exactly one version marked as storage version"))
    return causes


def deprecation_causes(version: dict[str, Any], field: str) -> Causes:
    warning = version.get("deprecationWarning")
    if warning is None:
        return []
    if version.get("deprecated") is not True:
        return [invalid(field, warning, "can only be set for deprecated versions")]
    warning = _text(warning)
    problems = ["must be <= 256 characters long"] if len(warning.encode()) > 256 else []
    if not warning:
        problems.append("must not be an empty string")
    for index, char in enumerate(warning):
        if not char.isprintable():
            problems.append("must only contain printable UTF-8 characters; non-printable "
                            f"character found at index {len(warning[:index].encode())}")
            break
    return [invalid(field, warning, problem) for problem in problems]


def stored_version_causes(spec: dict[str, Any], stored: list[str]) -> Causes:
    """Every stored version stays in spec.versions, and the storage version is stored."""
    field = "status.storedVersions"
    if not stored:
        return [invalid(field, _Rendered("[]string(nil)"), "must have at least one stored "
                                                          "version")]
    causes: Causes = []
    names = [_text(version.get("name")) for version in _versions(spec)]
    for version in _versions(spec):
        if version.get("storage") is True and _text(version.get("name")) not in stored:
            causes.append(invalid(field, _go_strings(stored),
                                  f"must have the storage version {version.get('name')}"))
    for index, name in enumerate(stored):
        if name not in names and stored.index(name) == index:
            causes.append(invalid(
                f"{field}[{index}]", name,
                f"missing from spec.versions; {name} was previously a storage version, and "
                f"must remain in spec.versions until a storage migration ensures no data "
                f"remains persisted in {name} and removes {name} from status.storedVersions"))
    return causes


def _go_strings(values: list[str]) -> _Rendered:
    return _Rendered("[]string{" + ", ".join(json.dumps(v) for v in values) + "}")


def go_versions(spec: dict[str, Any]) -> _Rendered:
    """spec.versions as Go's %#v prints the internal form (hoisted fields are nil)."""
    hoisted = {key for key in HOISTED if len(placed(spec, key)) == 1}
    items = []
    for version in _versions(spec):
        fields = [f"Name:{json.dumps(_text(version.get('name')))}",
                  f"Served:{schema.go_value(version.get('served') is True)}",
                  f"Storage:{schema.go_value(version.get('storage') is True)}",
                  f"Deprecated:{schema.go_value(version.get('deprecated') is True)}",
                  "DeprecationWarning:" + _go_pointer("string", version.get(
                      "deprecationWarning"))]
        for key, go_type in (("schema", "*apiextensions.CustomResourceValidation"),
                             ("subresources", "*apiextensions.CustomResourceSubresources"),
                             ("additionalPrinterColumns",
                              "[]apiextensions.CustomResourceColumnDefinition"),
                             ("selectableFields", "[]apiextensions.SelectableField")):
            value = None if key in hoisted else _empty_as_none(version.get(key))
            shown = f"({go_type})" if go_type.startswith("*") else go_type
            fields.append(f"{_go_field(key)}:{shown}(nil)" if value is None
                          else f"{_go_field(key)}:{shown}{{...}}")
        items.append("apiextensions.CustomResourceDefinitionVersion{" + ", ".join(fields) + "}")
    return _Rendered("[]apiextensions.CustomResourceDefinitionVersion{" + ", ".join(items) + "}")


def _go_pointer(go_type: str, value: Any) -> str:
    return f"(*{go_type})(nil)" if value is None else f"(*{go_type})({schema.go_value(value)})"


def _go_field(key: str) -> str:
    return key[0].upper() + key[1:]


# ---- names --------------------------------------------------------------------------------

def name_causes(names: Any) -> Causes:
    if not isinstance(names, dict):
        names = {}
    causes = [required(f"spec.names.{key}") for key in ("plural", "singular", "kind",
                                                        "listKind") if not _text(names.get(key))]
    for key in ("plural", "singular"):
        value = _text(names.get(key))
        if value and (problems := meta.dns1035_problems(value)):
            causes.append(invalid(f"spec.names.{key}", value, ",".join(problems)))
    for key in ("kind", "listKind"):
        value = _text(names.get(key))
        if value and (problems := meta.dns1035_problems(value.lower())):
            causes.append(invalid(f"spec.names.{key}", value, "may have mixed case, but should "
                                  "otherwise match: " + ",".join(problems)))
    for key in ("shortNames", "categories"):
        for index, value in enumerate(names.get(key) or []):
            if problems := meta.dns1035_problems(_text(value)):
                causes.append(invalid(f"spec.names.{key}[{index}]", value, ",".join(problems)))
    if _text(names.get("kind")) and names.get("kind") == names.get("listKind"):
        causes.append(invalid("spec.names.listKind", names["listKind"],
                              "kind and listKind may not be the same"))
    return causes


def immutable_causes(spec: dict[str, Any], old_spec: dict[str, Any], *,
                     established: bool) -> Causes:
    """Scope and kind shape the storage once served; group and plural make the name."""
    fields = [("spec.scope", ("scope",)), ("spec.names.kind", ("names", "kind"))]
    if not established:
        fields = []
    fields += [("spec.group", ("group",)), ("spec.names.plural", ("names", "plural"))]
    causes = []
    for field, path in fields:
        new, old = _dig(spec, path), _dig(old_spec, path)
        if new != old:
            causes.append(invalid(field, new, "field is immutable"))
    return causes


def _dig(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


# ---- subresources and printer columns ----------------------------------------------------

def subresource_causes(subresources: Any, path: str) -> Causes:
    scale = subresources.get("scale") if isinstance(subresources, dict) else None
    if not isinstance(scale, dict):
        return []
    field = f"{path}.scale"
    causes = _replicas_path_causes(scale, f"{field}.specReplicasPath", "specReplicasPath",
                                   (".spec.",), "should be a json path under .spec")
    causes += _replicas_path_causes(scale, f"{field}.statusReplicasPath", "statusReplicasPath",
                                    (".status.",), "should be a json path under .status")
    if _text(scale.get("labelSelectorPath")):
        causes += _replicas_path_causes(
            scale, f"{field}.labelSelectorPath", "labelSelectorPath", (".spec.", ".status."),
            "should be a json path under either .spec or .status")
    return causes


def _replicas_path_causes(scale: dict[str, Any], field: str, key: str,
                          prefixes: tuple[str, ...], detail: str) -> Causes:
    path = _text(scale.get(key))
    if not path:
        return [required(field)]
    if problem := simple_json_path_problem(path):
        return [invalid(field, path, problem)]
    if not path.startswith(prefixes):
        return [invalid(field, path, detail)]
    return []


def simple_json_path_problem(path: str) -> str | None:
    """validateSimpleJSONPath: all it asks of a path is a leading dot."""
    if not path:
        return "must not be empty"
    if not path.startswith("."):
        return "must be a simple json path starting with ."
    return None


def column_list_causes(columns: Any, path: str) -> Causes:
    if not isinstance(columns, list):
        return []
    return [cause for index, column in enumerate(columns)
            for cause in column_causes(column if isinstance(column, dict) else {},
                                       f"{path}[{index}]")]


def column_causes(column: dict[str, Any], field: str) -> Causes:
    causes = [] if _text(column.get("name")) else [required(f"{field}.name")]
    kind, types = _text(column.get("type")), ",".join(COLUMN_TYPES)
    if not kind:
        causes.append(required(f"{field}.type", f"must be one of {types}"))
    elif kind not in COLUMN_TYPES:
        causes.append(invalid(f"{field}.type", kind, f"must be one of {types}"))
    form = _text(column.get("format"))
    if form and form not in COLUMN_FORMATS:
        causes.append(invalid(f"{field}.format", form,
                              f"must be one of {','.join(COLUMN_FORMATS)}"))
    # Go names this field path after the struct field: JSONPath, not jsonPath.
    json_path = _text(column.get("jsonPath"))
    if not json_path:
        causes.append(required(f"{field}.JSONPath"))
    elif problem := simple_json_path_problem(json_path):
        causes.append(invalid(f"{field}.JSONPath", json_path, problem))
    return causes


# ---- selectable fields (1.30: beta, on by default) ---------------------------------------

def selectable_field_causes(spec: dict[str, Any]) -> Causes:
    schemas = dict(placed(spec, "schema"))
    causes: Causes = []
    for path, fields in placed(spec, "selectableFields"):
        if not fields:
            continue
        schema_path = path.removesuffix("selectableFields") + (
            "validation" if path.startswith("spec.selectable") else "schema")
        schema = (schemas.get(schema_path) or {}).get("openAPIV3Schema")
        if not isinstance(schema, dict):
            causes.append(invalid(path, "", "selectableFields may only be set when "
                                  "version.schema.openAPIV3Schema is not included"))
            continue
        causes += _selectable_causes(fields, schema, path)
    return causes


def _selectable_causes(fields: Any, schema: dict[str, Any], path: str) -> Causes:
    causes: Causes = []
    seen: list[str] = []
    for index, selectable in enumerate(fields if isinstance(fields, list) else []):
        field = f"{path}[{index}].jsonPath"
        json_path = _text((selectable or {}).get("jsonPath"))
        if not json_path:
            causes.append(required(field))
            continue
        problem = _selectable_problem(json_path, schema)
        if problem:
            causes.append(invalid(field, json_path, problem))
        if json_path in seen:
            causes.append({"reason": "FieldValueDuplicate", "field": field,
                           "message": f"Duplicate value: {json.dumps(json_path)}"})
        else:
            seen.append(json_path)
    if len(seen) > MAX_SELECTABLE_FIELDS:
        causes.append({"reason": "FieldValueTooMany", "field": path, "message": (
            f"Too many: {len(seen)}: must have at most {MAX_SELECTABLE_FIELDS} items")})
    return causes


def _selectable_problem(json_path: str, schema: dict[str, Any]) -> str | None:
    if not _SIMPLE_FIELD_PATH.fullmatch(json_path):
        return "is an invalid path: must be a simple field path without array notation"
    parts = json_path[1:].split(".")
    if parts[0] == "metadata":
        return "must not point to fields in metadata"
    node: Any = schema
    for part in parts:
        node = ((node or {}).get("properties") or {}).get(part)
        if not isinstance(node, dict):
            return "is an invalid path: does not refer to a valid field"
    if node.get("type") not in ("string", "boolean", "integer"):
        return ("must point to a field of type string, boolean or integer. Enum string "
                "fields and strings with formats are allowed.")
    return None


# ---- conversion, protected groups, preserveUnknownFields ---------------------------------

def conversion_causes(spec: dict[str, Any]) -> Causes:
    conversion = spec.get("conversion")
    if not isinstance(conversion, dict):
        return []
    # Paths name the internal form: webhook.clientConfig is `webhookClientConfig` there.
    field = "spec.conversion"
    strategy = _text(conversion.get("strategy"))
    webhook = conversion.get("webhook")
    webhook = webhook if isinstance(webhook, dict) else {}
    config, reviews = webhook.get("clientConfig"), webhook.get("conversionReviewVersions")
    if strategy != "Webhook":
        causes = ([required(f"{field}.strategy")] if not strategy else
                  [not_supported(f"{field}.strategy", strategy, ("None", "Webhook"))]
                  if strategy != "None" else [])
        reason = "should not be set when strategy is not set to Webhook"
        if config is not None:
            causes.append(forbidden(f"{field}.webhookClientConfig", reason))
        if reviews:
            causes.append(forbidden(f"{field}.conversionReviewVersions", reason))
        return causes
    return (_client_config_causes(config, f"{field}.webhookClientConfig")
            + _review_version_causes(reviews, f"{field}.conversionReviewVersions"))


def _client_config_causes(config: Any, field: str) -> Causes:
    if not isinstance(config, dict):
        return [required(field, "required when strategy is set to Webhook")]
    url, service = config.get("url"), config.get("service")
    if (url is None) == (service is None):
        return [required(field, "exactly one of url or service is required")]
    if url is not None:
        return _webhook_url_causes(_text(url), f"{field}.url")
    service = service if isinstance(service, dict) else {}
    causes = [required(f"{field}.service.{key}", f"service {key} is required")
              for key in ("name", "namespace") if not _text(service.get(key))]
    port = service.get("port", 443)
    if not isinstance(port, int) or not 1 <= port <= 65535:
        causes.append(invalid(f"{field}.service.port", port,
                              "port is not valid: must be between 1 and 65535, inclusive"))
    return causes


def _webhook_url_causes(url: str, field: str) -> Causes:
    form = "; desired format: https://host[/path]"
    parsed = urllib.parse.urlsplit(url)
    causes = []
    if parsed.scheme != "https":
        causes.append(invalid(field, parsed.scheme, "'https' is the only allowed URL scheme"
                              + form))
    if not parsed.netloc:
        causes.append(invalid(field, parsed.netloc, "host must be specified" + form))
    if "@" in parsed.netloc:
        causes.append(invalid(field, parsed.netloc.rsplit("@", 1)[0],
                              "user information is not permitted in the URL"))
    if parsed.fragment:
        causes.append(invalid(field, parsed.fragment, "fragments are not permitted in the URL"))
    if parsed.query:
        causes.append(invalid(field, parsed.query,
                              "query parameters are not permitted in the URL"))
    return causes


def _review_version_causes(versions: Any, field: str) -> Causes:
    if not isinstance(versions, list) or not versions:
        return [required(field)]
    causes: Causes = []
    for index, version in enumerate(versions):
        version = _text(version)
        if version in versions[:index]:
            causes.append(invalid(f"{field}[{index}]", version, "duplicate version"))
            continue
        causes += [invalid(f"{field}[{index}]", version, problem)
                   for problem in meta.dns1035_problems(version)]
    if not {"v1", "v1beta1"} & {_text(version) for version in versions}:
        causes.append(invalid(field, _go_strings([_text(v) for v in versions]),
                              "must include at least one of v1, v1beta1"))
    return causes


def is_protected_group(group: str) -> bool:
    return group in ("k8s.io", "kubernetes.io") or group.endswith((".k8s.io",
                                                                   ".kubernetes.io"))


def approval_causes(crd: dict[str, Any], old: dict[str, Any] | None) -> Causes:
    """Groups of the Kubernetes project need a reviewed API (KEP 1111)."""
    if not is_protected_group(_text(crd["spec"].get("group"))):
        return []
    state, value = _approval(crd)
    if old is not None and _approval(old)[0] == state:
        return []   # an unchanged approval state never fails
    field = f"metadata.annotations[{APPROVAL_ANNOTATION}]"
    if state == "missing":
        return [required(field, f'protected groups must have approval annotation '
                                f'"{APPROVAL_ANNOTATION}", {_APPROVAL_HELP}')]
    if state == "invalid":
        return [invalid(field, value, f'protected groups must have approval annotation '
                                      f'"{APPROVAL_ANNOTATION}" with either a URL or a reason '
                                      f'starting with "unapproved", {_APPROVAL_HELP}')]
    return []


def _approval(crd: dict[str, Any]) -> tuple[str, str]:
    annotations = crd["metadata"].get("annotations") or {}
    if APPROVAL_ANNOTATION not in annotations:
        return "missing", ""
    value = _text(annotations[APPROVAL_ANNOTATION])
    if value.startswith("unapproved"):
        return "bypassed", value
    parsed = urllib.parse.urlsplit(value)
    return ("approved" if parsed.scheme and (parsed.netloc or parsed.path) else "invalid"), value


def preserve_unknown_fields_causes(spec: dict[str, Any], old_spec: dict[str, Any] | None
                                   ) -> Causes:
    if old_spec is not None and old_spec.get("preserveUnknownFields") is True:
        return []   # kept for CRDs that already had it
    if spec.get("preserveUnknownFields") is True:
        return [invalid("spec.preserveUnknownFields", True, "cannot set to true, set "
                        "x-kubernetes-preserve-unknown-fields to true in "
                        "spec.versions[*].schema instead")]
    return []
