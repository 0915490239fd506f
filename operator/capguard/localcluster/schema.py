"""Structural schemas of CustomResourceDefinitions: pruning, defaulting, validation.

A `Schema` compiles one CRD version's `openAPIV3Schema` into a tree of `_Node`s once
(regular expressions and CEL programs included) and then prunes, defaults and
validates any number of objects against it. The algorithms follow the apiextensions
apiserver (`pkg/apiserver/schema/{pruning,defaulting}`, kube-openapi's validators and
`validation.ValidateCustomResource`); causes are worded as the recorded 1.24 server
words them (`k8s-reference/040-045`). CEL rules follow Kubernetes 1.29+.

Nothing a client sends may crash these functions: every value is checked for its
JSON type before it is used, and CEL failures become causes.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import ipaddress
import json
import math
import re
import uuid
from typing import Any, Final

from capguard.localcluster import cel, regex

# Keys kept at the root of a resource (and of embedded resources) whatever the schema.
_RESOURCE_KEYS: Final = ("apiVersion", "kind")
# Of the root's metadata, CEL rules see only these (as in Kubernetes).
_CEL_METADATA_KEYS: Final = ("name", "generateName")


@dataclasses.dataclass(frozen=True)
class Cause:
    """One entry of `Status.details.causes`."""

    reason: str
    message: str
    field: str


class Schema:
    """One CRD version's `openAPIV3Schema`, compiled for repeated use."""

    def __init__(self, openapi_v3_schema: dict[str, Any]) -> None:
        #: Rules that did not compile; a CRD carrying any would be rejected by Kubernetes.
        self.rule_errors: list[Cause] = []
        root = openapi_v3_schema if isinstance(openapi_v3_schema, dict) else {}
        self._root = _Node(root, path="", rule_errors=self.rule_errors)

    def prune(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A copy of `obj` without the fields the schema does not declare."""
        pruned = _prune(obj, self._root, path="", dropped=None, resource=True)
        return pruned if isinstance(pruned, dict) else {}

    def unknown_fields(self, obj: dict[str, Any]) -> list[str]:
        """Paths pruning would drop, as strict field validation names them.

        Kubernetes words them without a leading dot: `spec.foo`, `spec.items[0].bar`,
        and the server wraps each as `unknown field "spec.foo"`.
        """
        return self.prune_reporting(obj)[1]

    def prune_reporting(self, obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """`prune` and `unknown_fields` in one walk of the object: a write needs both."""
        dropped: list[str] = []
        pruned = _prune(obj, self._root, path="", dropped=dropped, resource=True)
        return (pruned if isinstance(pruned, dict) else {}), sorted(dropped)

    def apply_defaults(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A copy of `obj` with schema defaults applied where the parent exists.

        Also drops nulls of non-nullable fields without a default, as Kubernetes does
        before defaulting (so `replicas: null` means "use the default").
        """
        defaulted = _default(obj, self._root)
        return defaulted if isinstance(defaulted, dict) else {}

    def validate(self, obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[Cause]:
        """Structural validation and `x-kubernetes-validations`; [] when valid.

        `old` is the stored object on update: transition rules (using `oldSelf`) run
        only where it has a value at the same place.
        """
        return self._check(obj, old, root=True)

    def validate_value(self, value: Any) -> list[Cause]:
        """Causes of a value checked against this schema outside a resource (a default)."""
        return self._check(value, None, root=False)

    def _check(self, value: Any, old: Any, *, root: bool) -> list[Cause]:
        """Schema validation, then the CEL rules unless it found a blocking error.

        As apiextensions' `hasBlockingErr`: rules assume the types, bounds and required
        fields the schema promises, so they are not run on an object that breaks them.
        """
        causes: list[Cause] = []
        pending: list[_PendingRules] = []
        _validate(value, old, self._root, path="", causes=causes, root=root, pending=pending)
        if pending and any(cause.reason in _BLOCKING for cause in causes):
            causes.append(Cause("FieldValueInvalid", f"Invalid value: {_go(None)}: {_NOT_CHECKED}",
                                _NIL_PATH))
            return causes
        for rules in pending:
            _run_rules(rules.value, rules.old, rules.node, path=rules.path, causes=causes,
                       root=rules.root)
        return causes


# Schema errors after which CEL rules are not evaluated (apiextensions' hasBlockingErr).
_BLOCKING: Final = frozenset({"FieldValueNotSupported", "FieldValueRequired", "FieldValueTooLong",
                              "FieldValueTooMany", "FieldValueTypeInvalid"})
_NOT_CHECKED: Final = ("some validation rules were not checked because the object was invalid; "
                       "correct the existing errors to complete validation")
# How Go prints an empty field.Path: the field of causes about the object as a whole.
_NIL_PATH: Final = "<nil>"
# Go decodes integers beyond int64 as float64, which is an integer only up to 2^53.
_INT64: Final = range(-(2**63), 2**63)
_FLOAT_INTEGER_LIMIT: Final = 2**53


@dataclasses.dataclass(frozen=True)
class _PendingRules:
    """A node's x-kubernetes-validations, to run once the whole object passed the schema."""

    value: Any
    old: Any
    node: _Node
    path: str
    root: bool


class _Node:
    """One schema node with everything precomputed that validation needs."""

    def __init__(self, raw: dict[str, Any], *, path: str, rule_errors: list[Cause]) -> None:
        self.types: tuple[str, ...] = _types(raw)
        self.nullable = raw.get("nullable") is True
        self.int_or_string = raw.get("x-kubernetes-int-or-string") is True
        self.preserve = raw.get("x-kubernetes-preserve-unknown-fields") is True
        self.embedded = raw.get("x-kubernetes-embedded-resource") is True
        self.has_default = "default" in raw
        self.default = raw.get("default")
        self.properties = _children(raw.get("properties"), path=path, rule_errors=rule_errors)
        self.additional = _additional(raw.get("additionalProperties"), path=path,
                                      rule_errors=rule_errors)
        items = raw.get("items")
        self.items = (_Node(items, path=f"{path}[*]", rule_errors=rule_errors)
                      if isinstance(items, dict) else None)
        self.checks = _Checks(raw)
        self.rules = _rules(raw.get("x-kubernetes-validations"), path=path,
                            rule_errors=rule_errors)
        # Only transition rules here: without an old value there is nothing to evaluate.
        self.transition_rules_only = bool(self.rules) and all(
            rule.uses_old_self for rule in self.rules)
        self.cel_type = "" if self.int_or_string else (self.types[0] if self.types else "")

    @property
    def keeps_unknown(self) -> bool:
        """Fields not declared here survive pruning (their values are not pruned)."""
        return self.preserve or self.additional is True


class _Checks:
    """The value validations of one node (bounds, lengths, enum, pattern, format)."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.enum: list[Any] | None = raw["enum"] if isinstance(raw.get("enum"), list) else None
        self.enum_keys = {_canonical(v) for v in self.enum} if self.enum is not None else set()
        self.minimum = _number(raw.get("minimum"))
        self.maximum = _number(raw.get("maximum"))
        self.exclusive_minimum = raw.get("exclusiveMinimum") is True
        self.exclusive_maximum = raw.get("exclusiveMaximum") is True
        self.multiple_of = _number(raw.get("multipleOf"))
        self.number_format, self.number_range = _number_range(raw)
        self.min_length = _count(raw.get("minLength"))
        self.max_length = _count(raw.get("maxLength"))
        self.min_items = _count(raw.get("minItems"))
        self.max_items = _count(raw.get("maxItems"))
        self.unique_items = raw.get("uniqueItems") is True
        self.min_properties = _count(raw.get("minProperties"))
        self.max_properties = _count(raw.get("maxProperties"))
        self.required: tuple[str, ...] = tuple(
            r for r in raw.get("required", []) or [] if isinstance(r, str))
        self.pattern_source = raw.get("pattern") if isinstance(raw.get("pattern"), str) else None
        self.pattern = _regex(self.pattern_source)
        self.format = raw.get("format") if raw.get("format") in _FORMATS else None
        self.list_type = raw.get("x-kubernetes-list-type")
        keys = raw.get("x-kubernetes-list-map-keys")
        self.map_keys: tuple[str, ...] = tuple(
            k for k in keys if isinstance(k, str)) if isinstance(keys, list) else ()


_FLOAT32_MAX: Final = 3.4028234663852886e38
# What kube-openapi's IsValueValidAgainstRange lets each numeric type and format hold.
_NUMBER_RANGES: Final[dict[tuple[str, str], tuple[float, float]]] = {
    ("integer", "int32"): (-(2**31), 2**31 - 1),
    ("integer", "uint32"): (0, 2**32 - 1),
    ("integer", "uint64"): (0, 2**64 - 1),
    ("integer", "int64"): (-(2**63), 2**63 - 1),
    ("integer", ""): (-(2**63), 2**63 - 1),
    ("number", "float"): (-_FLOAT32_MAX, _FLOAT32_MAX),
    ("number", "float32"): (-_FLOAT32_MAX, _FLOAT32_MAX),
}


def _number_range(raw: dict[str, Any]) -> tuple[str, tuple[float, float] | None]:
    declared = str(raw.get("format")) if isinstance(raw.get("format"), str) else ""
    key = (str(raw.get("type")), declared)
    if key in _NUMBER_RANGES:
        return declared, _NUMBER_RANGES[key]
    return "", _NUMBER_RANGES.get((str(raw.get("type")), ""))


def _types(raw: dict[str, Any]) -> tuple[str, ...]:
    declared = raw.get("type")
    if isinstance(declared, str) and declared:
        return (declared,)
    return ()


def _children(raw: Any, *, path: str, rule_errors: list[Cause]) -> dict[str, _Node]:
    if not isinstance(raw, dict):
        return {}
    return {name: _Node(sub, path=_child(path, name), rule_errors=rule_errors)
            for name, sub in raw.items() if isinstance(sub, dict)}


def _additional(raw: Any, *, path: str, rule_errors: list[Cause]) -> _Node | bool | None:
    """additionalProperties: a schema for every value, True (anything), or absent."""
    if isinstance(raw, dict):
        return _Node(raw, path=f"{path}[*]", rule_errors=rule_errors)
    return True if raw is True else None


def _rules(raw: Any, *, path: str, rule_errors: list[Cause]) -> list[cel.Rule]:
    compiled = []
    for spec in raw if isinstance(raw, list) else []:
        if not isinstance(spec, dict):
            continue
        try:
            compiled.append(cel.Rule(spec))
        except cel.RuleCompileError as error:
            field = f"{path or '<root>'}.x-kubernetes-validations"
            rule_errors.append(Cause("FieldValueInvalid", f"Invalid value: {_go(spec.get('rule'))}:"
                                     f" {error}", field))
    return compiled


def _number(value: Any) -> float | int | None:
    return value if _is_number(value) else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _regex(source: str | None) -> regex.Pattern | None:
    if source is None:
        return None
    try:
        return regex.Pattern(source)
    except regex.Invalid:
        return None  # refused when its CRD was admitted (structural); unchecked, not a crash


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- pruning -------------------------------------------------------------------------


def _prune(value: Any, node: _Node | None, *, path: str, dropped: list[str] | None,
           resource: bool = False, preserving: bool = False) -> Any:
    """A pruned copy of `value` (pkg/apiserver/schema/pruning/algorithm.go).

    `preserving` carries x-kubernetes-preserve-unknown-fields down into list items,
    as Kubernetes' skipPrune does: their declared fields are pruned, the rest kept.
    """
    if isinstance(value, dict):
        return _prune_object(value, node, path=path, dropped=dropped, resource=resource,
                             preserving=preserving)
    if isinstance(value, list):
        keep = preserving or (node is not None and node.preserve)
        items = node.items if node is not None else None
        if keep and items is None:
            return _copy_json(value)
        return [_prune(item, items, path=f"{path}[{i}]", dropped=dropped, preserving=keep)
                for i, item in enumerate(value)]
    if node is not None and "integer" in node.types and isinstance(value, float):
        # Go decodes 2.0 as a float that validates as integer and is written back as 2.
        integral = math.isfinite(value) and value.is_integer()
        return int(value) if integral and abs(value) <= _FLOAT_INTEGER_LIMIT else value
    return value


def _prune_object(value: dict[str, Any], node: _Node | None, *, path: str,
                  dropped: list[str] | None, resource: bool, preserving: bool) -> dict[str, Any]:
    result: dict[str, Any] = {}
    embedded = resource or (node is not None and node.embedded)
    keeps_unknown = preserving or (node is not None and node.keeps_unknown)
    for key, item in value.items():
        if embedded and _kept_as_resource_field(key, item):
            result[key] = _copy_json(item)
        elif node is not None and key in node.properties:
            result[key] = _prune(item, node.properties[key], path=_child(path, key),
                                 dropped=dropped)
        elif node is not None and isinstance(node.additional, _Node):
            result[key] = _prune(item, node.additional, path=_child(path, key),
                                 dropped=dropped)
        elif keeps_unknown:
            result[key] = _copy_json(item)
        elif dropped is not None:
            dropped.append(_child(path, key))
    return result


def _kept_as_resource_field(key: str, item: Any) -> bool:
    """apiVersion/kind (strings) and metadata belong to every resource, declared or not.

    ObjectMeta is checked by the server's own metadata code, so it is kept here as sent.
    """
    if key in _RESOURCE_KEYS:
        return isinstance(item, str)
    return key == "metadata"


# --- defaulting ----------------------------------------------------------------------


def _default(value: Any, node: _Node | None) -> Any:
    """A defaulted copy of `value` (pkg/apiserver/schema/defaulting/algorithm.go)."""
    if node is None:
        return _copy_json(value)
    if isinstance(value, dict):
        return _default_object(value, node)
    if isinstance(value, list):
        return [_default_item(item, node.items) for item in value]
    return value


def _default_object(value: dict[str, Any], node: _Node) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, item in value.items():
        sub = node.properties.get(key)
        if sub is None and isinstance(node.additional, _Node):
            sub = node.additional
        if item is None and sub is not None and not sub.nullable:
            if sub.has_default:
                result[key] = _copy_json(sub.default)
            elif key in node.properties:
                continue  # a non-nullable null without default is dropped
            else:
                result[key] = None
        else:
            result[key] = item
    for key, sub in node.properties.items():
        if sub.has_default and key not in result and key not in value:
            result[key] = _copy_json(sub.default)
    # Defaults of defaults apply too: recurse into the values just set.
    for key, item in result.items():
        sub = node.properties.get(key)
        if sub is None and isinstance(node.additional, _Node):
            sub = node.additional
        result[key] = _default(item, sub) if sub is not None else _copy_json(item)
    return result


def _default_item(item: Any, items: _Node | None) -> Any:
    if item is None and items is not None and not items.nullable and items.has_default:
        item = _copy_json(items.default)
    return _default(item, items)


# --- validation ----------------------------------------------------------------------


def _validate(value: Any, old: Any, node: _Node, *, path: str, causes: list[Cause],
              pending: list[_PendingRules], root: bool = False,
              rules_path: str | None = None) -> None:
    """Append the causes `value` (at `path`) has against `node`.

    `rules_path` is where its CEL rules report: the same, except that a map's value is
    `m[key]` there (apiextensions' CEL validator uses field.Path.Key) and `m.key` in the
    OpenAPI errors (kube-openapi's validator).
    """
    rules_path = path if rules_path is None else rules_path
    if value is None and node.nullable:
        return
    if not _type_ok(value, node, path=path, causes=causes):
        return  # the other checks assume the declared type
    _check_value(value, node, path=path, causes=causes)
    if isinstance(value, dict):
        _validate_object(value, old if isinstance(old, dict) else None, node, path=path,
                         rules_path=rules_path, causes=causes, pending=pending, root=root)
    elif isinstance(value, list):
        _validate_list(value, old if isinstance(old, list) else None, node, path=path,
                       rules_path=rules_path, causes=causes, pending=pending)
    if node.rules:
        pending.append(_PendingRules(value, old, node, rules_path, root))


# bool before int: in Python True is an int, in JSON it is not a number.
_TYPE_NAMES: Final = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                      (list, "array"), (dict, "object"), (type(None), "null"))


def _type_name(value: Any) -> str:
    """The JSON type of a value as kube-openapi names it in messages."""
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT64:
        return "number"   # Go decodes it as a float64
    for python_type, name in _TYPE_NAMES:
        if isinstance(value, python_type):
            return name
    return "unknown"


def _type_ok(value: Any, node: _Node, *, path: str, causes: list[Cause]) -> bool:
    actual = _type_name(value)
    if node.int_or_string:
        allowed: tuple[str, ...] = ("integer", "string")
    elif node.types:
        allowed = node.types
    else:
        return True  # untyped (preserve-unknown-fields, embedded): anything goes
    if actual in allowed or _number_fits(value, actual, allowed):
        return True
    expected = ",".join(allowed)
    causes.append(Cause(
        "FieldValueTypeInvalid",
        f'Invalid value: "{actual}": {path} in body must be of type {expected}: "{actual}"',
        path))
    return False


def _number_fits(value: Any, actual: str, allowed: tuple[str, ...]) -> bool:
    """kube-openapi accepts an integral float as integer and an integer as number."""
    if actual == "integer":
        return "number" in allowed
    if actual != "number" or "integer" not in allowed:
        return False
    number = float(value)  # a JSON integer to kube-openapi: integral and within 2^53
    return number.is_integer() and abs(number) <= _FLOAT_INTEGER_LIMIT


def _check_value(value: Any, node: _Node, *, path: str, causes: list[Cause]) -> None:
    checks = node.checks
    if checks.enum is not None and _canonical(value) not in checks.enum_keys:
        causes.append(_not_supported(value, checks.enum, path=path))
    if isinstance(value, str):
        _check_string(value, checks, path=path, causes=causes)
    elif _is_number(value):
        _check_number(value, checks, path=path, causes=causes)


def _not_supported(value: Any, allowed: list[Any], *, path: str) -> Cause:
    quoted = ", ".join(json.dumps(v if isinstance(v, str) else _compact_json(v),
                                  ensure_ascii=False) for v in allowed)
    return Cause("FieldValueNotSupported",
                 f"Unsupported value: {_go(value)}: supported values: {quoted}", path)


def _check_string(value: str, checks: _Checks, *, path: str, causes: list[Cause]) -> None:
    if checks.max_length is not None and len(value) > checks.max_length:
        # 1.24 omits the value from "Too long" messages.
        causes.append(Cause("FieldValueTooLong",
                            f"Too long: may not be longer than {checks.max_length}", path))
    if checks.min_length is not None and len(value) < checks.min_length:
        causes.append(_invalid(value, f"{path} in body should be at least "
                                      f"{checks.min_length} chars long", path=path))
    if checks.pattern is not None and not checks.pattern.search(value):
        causes.append(_invalid(value, f"{path} in body should match '{checks.pattern_source}'",
                               path=path))
    if checks.format is not None and not _FORMATS[checks.format](value):
        causes.append(Cause("FieldValueTypeInvalid",
                            f"Invalid value: {_go(value)}: {path} in body must be of type "
                            f"{checks.format}: {_go(value)}", path))


def _check_number(value: float | int, checks: _Checks, *, path: str,
                  causes: list[Cause]) -> None:
    if checks.number_range is not None:
        _check_range(value, checks, path=path, causes=causes)
    if checks.maximum is not None:
        over = value >= checks.maximum if checks.exclusive_maximum else value > checks.maximum
        if over:
            relation = "less than" if checks.exclusive_maximum else "less than or equal to"
            causes.append(_invalid(value, f"{path} in body should be {relation} "
                                          f"{_go_number(checks.maximum)}", path=path))
    if checks.minimum is not None:
        under = value <= checks.minimum if checks.exclusive_minimum else value < checks.minimum
        if under:
            relation = "greater than" if checks.exclusive_minimum else "greater than or equal to"
            causes.append(_invalid(value, f"{path} in body should be {relation} "
                                          f"{_go_number(checks.minimum)}", path=path))
    if checks.multiple_of and not _is_multiple(value, checks.multiple_of):
        causes.append(_invalid(value, f"{path} in body should be a multiple of "
                                      f"{_go_number(checks.multiple_of)}", path=path))


def _check_range(value: float | int, checks: _Checks, *, path: str,
                 causes: list[Cause]) -> None:
    """An integer must fit its format (int32 by default int64), as Go converts it.

    Kubernetes reports this error without a field (its path is the root); it is given
    at the field here, where a user can find it.
    """
    assert checks.number_range is not None
    low, high = checks.number_range
    if low <= value <= high:
        return
    kind = "integer" if isinstance(low, int) else "number"
    with_format = f" with format {checks.number_format}" if checks.number_format else ""
    causes.append(_invalid("", f"Checked value must be of type {kind}{with_format} in {path}",
                           path=path))


def _is_multiple(value: float | int, factor: float | int) -> bool:
    try:
        quotient = value / factor
    except (ZeroDivisionError, OverflowError):
        return True
    return math.isfinite(quotient) and quotient == math.floor(quotient)


def _validate_object(value: dict[str, Any], old: dict[str, Any] | None, node: _Node, *,
                     path: str, rules_path: str, causes: list[Cause],
                     pending: list[_PendingRules], root: bool) -> None:
    checks = node.checks
    if node.embedded:
        _check_embedded(value, path=path, causes=causes)
    for name in checks.required:
        if name not in value:
            causes.append(Cause("FieldValueRequired", "Required value", _child(path, name)))
    if checks.max_properties is not None and len(value) > checks.max_properties:
        causes.append(Cause("FieldValueTooMany", f"Too many: {len(value)}: must have at most "
                                                 f"{checks.max_properties} items", path))
    if checks.min_properties is not None and len(value) < checks.min_properties:
        causes.append(_invalid(len(value), f"{path} in body should have at least "
                                           f"{checks.min_properties} properties", path=path))
    for key, item in value.items():
        if root and key == "metadata" and key not in node.properties:
            continue
        sub = node.properties.get(key)
        rules_child = _child(rules_path, key)
        if sub is None and isinstance(node.additional, _Node):
            sub, rules_child = node.additional, f"{rules_path}[{key}]"
        if sub is not None:
            _validate(item, old.get(key) if old else None, sub, path=_child(path, key),
                      rules_path=rules_child, causes=causes, pending=pending)


def _check_embedded(value: dict[str, Any], *, path: str, causes: list[Cause]) -> None:
    """An x-kubernetes-embedded-resource needs a non-empty apiVersion and kind."""
    for key in _RESOURCE_KEYS:
        field = _child(path, key)
        if key not in value:
            causes.append(Cause("FieldValueRequired", "Required value: must not be empty", field))
        elif not isinstance(value[key], str):
            causes.append(_invalid(value[key], "must be a string", path=field))
        elif not value[key]:
            causes.append(_invalid("", "must not be empty", path=field))


def _validate_list(value: list[Any], old: list[Any] | None, node: _Node, *, path: str,
                   rules_path: str, causes: list[Cause], pending: list[_PendingRules]) -> None:
    checks = node.checks
    if checks.max_items is not None and len(value) > checks.max_items:
        causes.append(Cause("FieldValueTooMany", f"Too many: {len(value)}: must have at most "
                                                 f"{checks.max_items} items", path))
    if checks.min_items is not None and len(value) < checks.min_items:
        causes.append(_invalid(len(value), f"{path} in body should have at least "
                                           f"{checks.min_items} items", path=path))
    if checks.unique_items and len({_canonical(v) for v in value}) < len(value):
        causes.append(_invalid("", f"{path} in body shouldn't contain duplicates", path=path))
    _check_list_type(value, checks, path=path, causes=causes)
    if node.items is None:
        return
    olds = _correlate(value, old, checks)
    for index, item in enumerate(value):
        _validate(item, olds[index], node.items, path=f"{path}[{index}]",
                  rules_path=f"{rules_path}[{index}]", causes=causes, pending=pending)


def _check_list_type(value: list[Any], checks: _Checks, *, path: str,
                     causes: list[Cause]) -> None:
    """x-kubernetes-list-type set/map: no two items (or map keys) alike."""
    if checks.list_type not in ("set", "map"):
        return
    seen: set[str] = set()
    for index, item in enumerate(value):
        key_value = _map_key(item, checks.map_keys) if checks.list_type == "map" else item
        if key_value is None:
            continue
        canonical = _canonical(key_value)
        if canonical in seen:
            shown = _go_map(key_value) if isinstance(key_value, dict) else _go(key_value)
            causes.append(Cause("FieldValueDuplicate", f"Duplicate value: {shown}",
                                f"{path}[{index}]"))
        seen.add(canonical)


def _map_key(item: Any, keys: tuple[str, ...]) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        return None
    return {key: item[key] for key in keys if key in item}


def _correlate(value: list[Any], old: list[Any] | None, checks: _Checks) -> list[Any]:
    """The old item for each new one: only map lists correlate (by key), as in Kubernetes."""
    if old is None or checks.list_type != "map" or not checks.map_keys:
        return [None] * len(value)
    by_key = {_canonical(_map_key(item, checks.map_keys)): item for item in old
              if isinstance(item, dict)}
    return [by_key.get(_canonical(_map_key(item, checks.map_keys))) for item in value]


def _invalid(value: Any, detail: str, *, path: str) -> Cause:
    return Cause("FieldValueInvalid", f"Invalid value: {_go(value)}: {detail}", path)


# --- CEL rules -------------------------------------------------------------------------


def _run_rules(value: Any, old: Any, node: _Node, *, path: str, causes: list[Cause],
               root: bool) -> None:
    """Evaluate the node's x-kubernetes-validations with `self` (and `oldSelf`)."""
    if old is None and node.transition_rules_only:
        return   # no rule runs: skip converting the value for CEL
    old_json = None
    try:
        self_json = _cel_json(value, node, root=root)
        if old is not None and any(rule.uses_old_self for rule in node.rules):
            old_json = _old_json(old, node, root=root)
        outcomes = [(rule, rule.check(self_json, old_json)) for rule in node.rules
                    if old is not None or not rule.uses_old_self]
    except RecursionError:  # nesting deeper than CEL conversion can follow
        causes.append(Cause("FieldValueInvalid", f"Invalid value: {_go(node.cel_type)}: "
                            "too deeply nested to evaluate validation rules", path))
        return
    for rule, outcome in outcomes:
        # Transition rules run on updates that have an old value.
        if outcome is not None:
            at = path if outcome.evaluation_error else _rule_path(path, rule.field_path)
            causes.append(_rule_cause(outcome, node, path=at or _NIL_PATH))


def _old_json(old: Any, node: _Node, *, root: bool) -> Any:
    try:
        return _cel_json(old, node, root=root)
    except RecursionError:
        return None  # a stored object too deep to convert: its transition rules see null


def _rule_cause(outcome: cel.Outcome, node: _Node, *, path: str) -> Cause:
    """Worded as k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel does."""
    shown = _go(node.cel_type)
    if outcome.reason == "FieldValueForbidden":
        return Cause(outcome.reason, f"Forbidden: {outcome.message}", path)
    if outcome.reason == "FieldValueRequired":
        return Cause(outcome.reason, f"Required value: {outcome.message}", path)
    if outcome.reason == "FieldValueDuplicate":
        return Cause(outcome.reason, f"Duplicate value: {shown}", path)
    return Cause(outcome.reason, f"Invalid value: {shown}: {outcome.message}", path)


_FIELD_PATH_PART: Final = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\['((?:[^'\\]|\\.)*)'\]")


def field_path_exists(raw: dict[str, Any], field_path: str) -> bool:
    """A rule's `fieldPath` names a field its node's schema declares (`.a.b`, `['x.y']`)."""
    node: Any = raw
    position = 0
    while position < len(field_path):
        match = _FIELD_PATH_PART.match(field_path, position)
        if match is None or not isinstance(node, dict):
            return False
        name = match.group(1) if match.group(1) is not None else match.group(2)
        properties = node.get("properties")
        declared = properties if isinstance(properties, dict) else {}
        node = declared.get(name, node.get("additionalProperties"))
        position = match.end()
    return isinstance(node, dict)


def go_value(value: Any) -> str:
    """A bad value as Go's field.Error prints it (strings quoted, numbers bare)."""
    return _go(value)


def _rule_path(path: str, field_path: str) -> str:
    """The node's path extended by the rule's `fieldPath` (`.a.b`, `['x.y']`)."""
    position = 0
    while position < len(field_path):
        match = _FIELD_PATH_PART.match(field_path, position)
        if match is None:
            return path  # Kubernetes rejects such a CRD; report at the node instead
        path = _child(path, match.group(1) if match.group(1) is not None else match.group(2))
        position = match.end()
    return path


def _cel_json(value: Any, node: _Node | None, *, root: bool = False) -> Any:
    """`value` with numbers as their schema declares them (CEL has no int==double)."""
    if node is None:
        return value
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            if root and key == "metadata" and isinstance(item, dict):
                result[key] = {k: item[k] for k in _CEL_METADATA_KEYS if k in item}
                continue
            sub = node.properties.get(key)
            if sub is None and isinstance(node.additional, _Node):
                sub = node.additional
            result[key] = _cel_json(item, sub)
        return result
    if isinstance(value, list):
        return [_cel_json(item, node.items) for item in value]
    if "number" in node.types and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if "integer" in node.types and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# --- formats -------------------------------------------------------------------------


def _is_date_time(value: str) -> bool:
    # RFC 3339 as strfmt accepts it: a "T" or space, optional fraction, Z or offset.
    if not _DATE_TIME.match(value):
        return False
    try:
        datetime.datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


_DATE_TIME: Final = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z", re.ASCII)


def _is_date(value: str) -> bool:
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        return False
    return len(value) == 10


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return bool(re.fullmatch(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                             r"[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", value))


def _is_byte(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except ValueError:
        return False
    return True


def _is_ip(version: int) -> Any:
    def check(value: str) -> bool:
        try:
            return ipaddress.ip_address(value).version == version
        except ValueError:
            return False
    return check


def _is_cidr(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return "/" in value


_FORMATS: Final[dict[str, Any]] = {
    # The subset of formats the apiextensions server checks that are cheap to check
    # faithfully; other formats (email, hostname, uri, ...) are accepted unchecked.
    "date-time": _is_date_time,
    "datetime": _is_date_time,
    "date": _is_date,
    "uuid": _is_uuid,
    "byte": _is_byte,
    "ipv4": _is_ip(4),
    "ipv6": _is_ip(6),
    "cidr": _is_cidr,
}


# --- values as Go prints them -------------------------------------------------------------


def _go(value: Any) -> str:
    """A bad value as `field.Error` prints it: strings quoted, numbers bare."""
    if value is None:
        return '"null"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if _is_number(value):
        return _go_number(value)
    return _compact_json(value)  # Go prints %#v here; JSON says the same more readably


def _go_number(value: float | int) -> str:
    """Go's %v of a number: ints bare, floats shortest, exponent from 1e21 / below 1e-4."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign, digits, exponent = decimal.Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    point = len(text) + exponent - 1
    prefix = "-" if sign else ""
    if point < -4 or point >= 21:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if point < 0 else '+'}{abs(point):02d}"
    if exponent >= 0:
        return prefix + text + "0" * exponent
    if point >= 0:
        return f"{prefix}{text[:point + 1]}.{text[point + 1:]}"
    return f"{prefix}0.{'0' * (-point - 1)}{text}"


def _go_map(value: dict[str, Any]) -> str:
    """Go's %#v of a map key of a list-type=map item, e.g. map[string]interface {}{"a":1}."""
    inner = ", ".join(f"{json.dumps(k)}:{_go(v)}" for k, v in sorted(value.items()))
    return f"map[string]interface {{}}{{{inner}}}"


def _compact_json(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _copy_json(value: Any) -> Any:
    """A deep copy of a JSON value without recursion: any nesting a parser accepts works."""
    if not isinstance(value, dict | list):
        return value
    root: Any = {} if isinstance(value, dict) else []
    pending = [(value, root)]
    while pending:
        source, target = pending.pop()
        entries = source.items() if isinstance(source, dict) else enumerate(source)
        for key, item in entries:
            child = item
            if isinstance(item, dict | list):
                child = {} if isinstance(item, dict) else []
                pending.append((item, child))
            if isinstance(target, dict):
                target[key] = child
            else:
                target.append(child)
    return root


def _canonical(value: Any) -> str:
    """A key equal for equal JSON values (1 and 1.0 alike, true and 1 not)."""
    try:
        return _compact_json(_normalize_numbers(value))
    except RecursionError:
        return f"<too deep to compare: {id(value)}>"


def _normalize_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and math.isfinite(value):
        return int(value)
    if isinstance(value, dict):
        return {str(k): _normalize_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalize_numbers(v) for v in value]
    return value
