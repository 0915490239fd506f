"""Built-in kinds read as kube-apiserver reads them: decoded into their Go types.

A custom resource has a schema, which prunes and validates it. A built-in kind has none;
the real server decodes its body into a Go struct (sigs.k8s.io/json, case-sensitive), so:

- a field of the wrong JSON type is refused before anything else, in encoding/json's
  words (`json: cannot unmarshal number into Go struct field LeaseSpec.spec.
  leaseDurationSeconds of type int32`: the struct that holds the field, then the field
  path without indexes or map keys). The first such error in the document is the one told;
- a time is parsed as Go's `time.Parse` parses it: a `metav1.Time` as RFC 3339, a
  `metav1.MicroTime` (a Lease's renewTime, an Event's eventTime) with exactly six
  fractional digits, and the error is Go's (`parsing time "..." as "...": cannot parse
  "Z" as ".000000"`). A time is kept as Go writes it back: in UTC, whole seconds for a
  Time and microseconds for a MicroTime;
- a field the struct does not have is dropped, and reported (its path, `spec.rules[0].
  verb`) for `fieldValidation` to warn about or refuse;
- a null leaves the field unset (a list item or map value: its type's zero value).

Where a Go type decodes itself (a CRD schema's `items` and `additionalProperties`), it
decodes its part with a fresh, non-strict decoder: unknown fields there are dropped with
no report, as a real server drops them (kubernetes/kubernetes#128033).

Only the kinds the embedded server serves are described, from their Go types in
k8s.io/api and apiextensions-apiserver (the fields of 1.32).
"""
from __future__ import annotations

import calendar
import dataclasses
import datetime
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

# ---- what a decoder says -------------------------------------------------------------------


class DecodeError(Exception):
    """The body does not decode into the kind's Go type; `str()` is the real message."""


@dataclasses.dataclass(frozen=True)
class Decoded:
    value: dict[str, Any]
    unknown: tuple[str, ...]   # paths of unknown fields, in the decoder's order


@dataclasses.dataclass(frozen=True)
class _TypeError:
    """encoding/json's UnmarshalTypeError: rendered with the context where it stopped."""

    value: str            # "string", "number", "number 1.5", "bool", "array", "object"
    go: str               # the Go type it could not go into
    struct: str = ""
    stack: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.struct or self.stack:
            field = ".".join(self.stack)
            return (f"json: cannot unmarshal {self.value} into Go struct field "
                    f"{self.struct}.{field} of type {self.go}")
        return f"json: cannot unmarshal {self.value} into Go value of type {self.go}"


class _Fatal(Exception):
    """An error a custom UnmarshalJSON returned: decoding stops there."""

    def __init__(self, error: _TypeError | str) -> None:
        super().__init__(str(error))
        self.error = error


# ---- the types ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Scalar:
    go: str
    accepts: Callable[[Any], bool]
    # A type with its own UnmarshalJSON (times): the stored value, or _Fatal.
    read: Callable[[Any], Any] | None = None


@dataclasses.dataclass(frozen=True)
class Slice:
    of: Node

    @property
    def go(self) -> str:
        return f"[]{self.of.go}"


@dataclasses.dataclass(frozen=True)
class Map:
    of: Node

    @property
    def go(self) -> str:
        return f"map[string]{self.of.go}"


@dataclasses.dataclass(frozen=True, eq=False)
class Struct:
    package: str
    name: str
    # A callable for types that hold themselves (a CRD schema's properties).
    fields: Mapping[str, Node] | Callable[[], Mapping[str, Node]]

    @property
    def go(self) -> str:
        return f"{self.package}.{self.name}"

    def field_types(self) -> Mapping[str, Node]:
        return self.fields() if callable(self.fields) else self.fields


@dataclasses.dataclass(frozen=True)
class SelfDecoding:
    """A Go type whose UnmarshalJSON decodes its value afresh, non-strictly, as one of
    `shapes` (JSON type -> the Go type it becomes); anything else is `refusal`."""

    go: str
    shapes: Mapping[type, Node | None]   # None: kept as it is (`true`, `false`)
    refusal: str


Node = Scalar | Slice | Map | Struct | SelfDecoding


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


STRING: Final = Scalar("string", lambda v: isinstance(v, str))
BOOL: Final = Scalar("bool", lambda v: isinstance(v, bool))
INT32: Final = Scalar("int32", lambda v: _is_int(v) and -2**31 <= v < 2**31)
INT64: Final = Scalar("int64", lambda v: _is_int(v) and -2**63 <= v < 2**63)
FLOAT64: Final = Scalar("float64", lambda v: isinstance(v, int | float) and
                        not isinstance(v, bool))
BYTES: Final = Scalar("[]uint8", lambda v: isinstance(v, str))   # base64, not checked here
JSON: Final = Scalar("interface {}", lambda v: True)   # apiextensions JSON, RawExtension
STRINGS: Final = Slice(STRING)
LABELS: Final = Map(STRING)

# ---- times, parsed as Go's time.Parse parses them -------------------------------------------

RFC3339: Final = "2006-01-02T15:04:05Z07:00"
RFC3339_MICRO: Final = "2006-01-02T15:04:05.000000Z07:00"
_DIGITS: Final = re.compile(r"[0-9]*")
_RANGES: Final = {"01": "month", "15": "hour", "04": "minute", "05": "second"}


def parse_go_time(layout: str, text: str) -> datetime.datetime:
    """`time.Parse(layout, text)` for RFC3339 and RFC3339Micro; ValueError with Go's
    message (`parsing time "..." as "...": cannot parse "..." as "..."`)."""
    micro = layout == RFC3339_MICRO

    def cannot(rest: str, element: str) -> ValueError:
        return ValueError(f'parsing time "{text}" as "{layout}": cannot parse "{rest}" as '
                          f'"{element}"')

    def out_of_range(what: str) -> ValueError:
        return ValueError(f'parsing time "{text}": {what} out of range')

    rest = text
    numbers: list[int] = []
    # (element, digits, fixed width, the bound a value must stay below, literal after it)
    for element, width, fixed, bound, literal in (
            ("2006", 4, True, 0, "-"), ("01", 2, True, 13, "-"), ("02", 2, True, 0, "T"),
            ("15", 2, False, 24, ":"), ("04", 2, True, 60, ":"), ("05", 2, True, 60, "")):
        digits = _DIGITS.match(rest, 0, width).group()   # type: ignore[union-attr]
        if len(digits) < width and (fixed or not digits):
            raise cannot(rest, element)
        number = int(digits)
        if bound and (number >= bound or (element == "01" and number < 1)):
            raise out_of_range(_RANGES[element])
        numbers.append(number)
        rest = rest[len(digits):]
        if literal:
            if not rest.startswith(literal):
                raise cannot(rest, literal)
            rest = rest[1:]
    year, month, day, hour, minute, second = numbers
    micros = 0
    if micro:
        if len(rest) < 7 or rest[0] not in ".," or not rest[1:7].isdigit():
            raise cannot(rest, ".000000")
        micros, rest = int(rest[1:7]), rest[7:]
    elif len(rest) >= 2 and rest[0] in ".," and rest[1].isdigit():
        fraction = _DIGITS.match(rest, 1).group()   # type: ignore[union-attr]
        micros = int((fraction + "000000")[:6])
        rest = rest[1 + len(fraction):]
    if rest.startswith("Z"):
        offset, rest = datetime.timedelta(0), rest[1:]
    elif (len(rest) >= 6 and rest[0] in "+-" and rest[3] == ":"
          and rest[1:3].isdigit() and rest[4:6].isdigit()):
        offset = datetime.timedelta(hours=int(rest[1:3]), minutes=int(rest[4:6]))
        offset, rest = (offset if rest[0] == "+" else -offset), rest[6:]
    else:
        raise cannot(rest, "Z07:00")
    if rest:
        raise ValueError(f'parsing time "{text}": extra text: "{rest}"')
    try:
        moment = datetime.datetime(year, month, day, hour, minute, second, micros,
                                   tzinfo=datetime.timezone(offset))
    except ValueError:
        raise out_of_range("day") from None
    return moment.astimezone(datetime.UTC)


def _time_reader(layout: str, written: Callable[[datetime.datetime], str],
                 canonical: re.Pattern[str]) -> Callable[[Any], Any]:
    def read(value: Any) -> Any:
        if not isinstance(value, str):   # metav1 times unmarshal a string first
            raise _Fatal(_TypeError(_described(value), "string"))
        return parsed(value)

    @functools.lru_cache(maxsize=4096)   # an object's times mostly come back unchanged
    def parsed(value: str) -> str:
        match = canonical.fullmatch(value)
        if match is not None:   # already as Go writes it (most writes): only the date to check
            year, month, day, hour, minute, second = map(int, match.groups())
            if (0 < month < 13 and 0 < day <= calendar.monthrange(year, month)[1]
                    and hour < 24 and minute < 60 and second < 60):
                return value
        try:
            return written(parse_go_time(layout, value))
        except ValueError as error:
            raise _Fatal(str(error)) from None
    return read


def written_time(moment: datetime.datetime) -> str:
    """A metav1.Time as Go writes it: in UTC, whole seconds."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def written_micro_time(moment: datetime.datetime) -> str:
    """A metav1.MicroTime as Go writes it: in UTC, microseconds."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_WRITTEN: Final = r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)"
TIME: Final = Scalar("v1.Time", lambda v: True, _time_reader(
    RFC3339, written_time, re.compile(_WRITTEN + "Z")))
MICRO_TIME: Final = Scalar("v1.MicroTime", lambda v: True, _time_reader(
    RFC3339_MICRO, written_micro_time, re.compile(_WRITTEN + r"\.\d{6}Z")))


# ---- the decoder -------------------------------------------------------------------------

_DROP: Final = object()
_ZEROS: Final[dict[str, Any]] = {"string": "", "bool": False, "int32": 0, "int64": 0,
                                 "float64": 0}
_MAX_STRICT_ERRORS: Final = 100   # sigs.k8s.io/json keeps at most 100


def _described(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "number"


class _Decoder:
    def __init__(self, *, strict: bool) -> None:
        self.strict = strict
        self.saved: _TypeError | None = None
        self.unknown: list[str] = []

    def refuse(self, value: Any, go: str, context: tuple[str, tuple[str, ...]]) -> Any:
        if self.saved is None:
            described = _described(value)
            if described == "number" and go.startswith(("int", "uint")):
                described = f"number {value}"   # encoding/json quotes a number it can't fit
            self.saved = _TypeError(described, go, *context)
        return _DROP

    def value(self, node: Node, value: Any, path: str,
              context: tuple[str, tuple[str, ...]]) -> Any:
        if value is None:
            return _DROP
        if isinstance(node, Scalar):
            if node.read is not None:
                try:
                    return node.read(value)
                except _Fatal as fatal:
                    raise self._in_context(fatal, context) from None
            return value if node.accepts(value) else self.refuse(value, node.go, context)
        if isinstance(node, SelfDecoding):
            return self._self_decoding(node, value, context)
        if isinstance(node, Slice):
            if not isinstance(value, list):
                return self.refuse(value, node.go, context)
            items = (self.element(node.of, item, f"{path}[{index}]", context)
                     for index, item in enumerate(value))
            return [item for item in items if item is not _DROP]
        if isinstance(node, Map):
            if not isinstance(value, dict):
                return self.refuse(value, node.go, context)
            entries = ((key, self.element(node.of, item, _child(path, key), context))
                       for key, item in value.items())
            return {key: item for key, item in entries if item is not _DROP}
        if not isinstance(value, dict):
            return self.refuse(value, node.go, context)
        fields = node.field_types()
        kept: dict[str, Any] = {}
        for key, item in value.items():
            field = fields.get(key)
            if field is None:
                if self.strict and len(self.unknown) < _MAX_STRICT_ERRORS:
                    self.unknown.append(_child(path, key))
                continue
            if item is None:
                continue
            if type(field) is Scalar and field.read is None:   # the common case, inline
                if field.accepts(item):
                    kept[key] = item
                else:
                    self.refuse(item, field.go, (node.name, (*context[1], key)))
                continue
            decoded = self.value(field, item, _child(path, key), (node.name, (*context[1], key)))
            if decoded is not _DROP:
                kept[key] = decoded
        return kept

    def element(self, node: Node, value: Any, path: str,
                context: tuple[str, tuple[str, ...]]) -> Any:
        """A list item or map value: a null there is its type's zero value, still counted."""
        if value is None:
            return _ZEROS.get(node.go, {} if isinstance(node, Struct) else _DROP)
        return self.value(node, value, path, context)

    def _self_decoding(self, node: SelfDecoding, value: Any,
                       context: tuple[str, tuple[str, ...]]) -> Any:
        shapes = [shape for kind, shape in node.shapes.items() if isinstance(value, kind)]
        if not shapes:
            raise self._in_context(_Fatal(node.refusal), context)
        shape = shapes[0]
        if shape is None:
            return value
        inner = _Decoder(strict=False)
        decoded = inner.value(shape, value, "", ("", ()))
        if inner.saved is not None:
            # Its json.Unmarshal returned the error; ours then adds where we stopped.
            raise self._in_context(_Fatal(inner.saved), context)
        return decoded

    @staticmethod
    def _in_context(fatal: _Fatal, context: tuple[str, tuple[str, ...]]) -> DecodeError:
        error = fatal.error
        if isinstance(error, _TypeError) and (context[0] or context[1]):
            error = dataclasses.replace(error, struct=context[0], stack=context[1])
        return DecodeError(str(error))


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def decode(kind: Struct, obj: dict[str, Any]) -> Decoded:
    """`obj` decoded into `kind`; DecodeError if it does not fit."""
    decoder = _Decoder(strict=True)
    value = decoder.value(kind, obj, "", ("", ()))
    if decoder.saved is not None:
        raise DecodeError(str(decoder.saved))
    return Decoded(value, tuple(decoder.unknown))


# ---- the kinds served ----------------------------------------------------------------------

def _struct(package: str, name: str, /, **fields: Node) -> Struct:
    return Struct(package, name, fields)


# metav1.ObjectMeta as 1.32 decodes it (clusterName went in 1.25); managedFields unchecked.
OBJECT_META: Final = _struct(
    "v1", "ObjectMeta", name=STRING, generateName=STRING, namespace=STRING, selfLink=STRING,
    uid=STRING, resourceVersion=STRING, generation=INT64, creationTimestamp=TIME,
    deletionTimestamp=TIME, deletionGracePeriodSeconds=INT64, labels=LABELS,
    annotations=LABELS, ownerReferences=Slice(_struct(
        "v1", "OwnerReference", apiVersion=STRING, kind=STRING, name=STRING, uid=STRING,
        controller=BOOL, blockOwnerDeletion=BOOL)),
    finalizers=STRINGS, managedFields=Slice(JSON))


def kind(package: str, name: str, fields: Mapping[str, Node]) -> Struct:
    """A top-level kind: TypeMeta's fields, ObjectMeta's and its own."""
    return Struct(package, name, {"apiVersion": STRING, "kind": STRING,
                                  "metadata": OBJECT_META, **fields})


OBJECT_REFERENCE: Final = _struct(
    "v1", "ObjectReference", kind=STRING, namespace=STRING, name=STRING, uid=STRING,
    apiVersion=STRING, resourceVersion=STRING, fieldPath=STRING)
LABEL_SELECTOR: Final = _struct(
    "v1", "LabelSelector", matchLabels=LABELS, matchExpressions=Slice(_struct(
        "v1", "LabelSelectorRequirement", key=STRING, operator=STRING, values=STRINGS)))
_CONDITION_FIELDS: Final[Mapping[str, Node]] = {
    "type": STRING, "status": STRING, "lastTransitionTime": TIME, "reason": STRING,
    "message": STRING}

NAMESPACE: Final = kind("v1", "Namespace", {
    "spec": _struct("v1", "NamespaceSpec", finalizers=STRINGS),
    "status": _struct("v1", "NamespaceStatus", phase=STRING, conditions=Slice(
        Struct("v1", "NamespaceCondition", _CONDITION_FIELDS)))})
CONFIG_MAP: Final = kind("v1", "ConfigMap", {
    "data": LABELS, "binaryData": Map(BYTES), "immutable": BOOL})
_EVENT_SOURCE: Final = _struct("v1", "EventSource", component=STRING, host=STRING)
CORE_EVENT: Final = kind("v1", "Event", {
    "involvedObject": OBJECT_REFERENCE, "reason": STRING, "message": STRING,
    "source": _EVENT_SOURCE, "firstTimestamp": TIME, "lastTimestamp": TIME, "count": INT32,
    "type": STRING, "eventTime": MICRO_TIME,
    "series": _struct("v1", "EventSeries", count=INT32, lastObservedTime=MICRO_TIME),
    "action": STRING, "related": OBJECT_REFERENCE, "reportingComponent": STRING,
    "reportingInstance": STRING})
EVENT_V1: Final = kind("v1", "Event", {
    "eventTime": MICRO_TIME,
    "series": _struct("v1", "EventSeries", count=INT32, lastObservedTime=MICRO_TIME),
    "reportingController": STRING, "reportingInstance": STRING, "action": STRING,
    "reason": STRING, "regarding": OBJECT_REFERENCE, "related": OBJECT_REFERENCE,
    "note": STRING, "type": STRING, "deprecatedSource": _EVENT_SOURCE,
    "deprecatedFirstTimestamp": TIME, "deprecatedLastTimestamp": TIME,
    "deprecatedCount": INT32})
LEASE: Final = kind("v1", "Lease", {"spec": _struct(
    "v1", "LeaseSpec", holderIdentity=STRING, leaseDurationSeconds=INT32,
    acquireTime=MICRO_TIME, renewTime=MICRO_TIME, leaseTransitions=INT32, strategy=STRING,
    preferredHolder=STRING)})
SERVICE_ACCOUNT: Final = kind("v1", "ServiceAccount", {
    "secrets": Slice(OBJECT_REFERENCE),
    "imagePullSecrets": Slice(_struct("v1", "LocalObjectReference", name=STRING)),
    "automountServiceAccountToken": BOOL})
_POLICY_RULE: Final = _struct("v1", "PolicyRule", verbs=STRINGS, apiGroups=STRINGS,
                              resources=STRINGS, resourceNames=STRINGS,
                              nonResourceURLs=STRINGS)
ROLE: Final = kind("v1", "Role", {"rules": Slice(_POLICY_RULE)})
CLUSTER_ROLE: Final = kind("v1", "ClusterRole", {
    "rules": Slice(_POLICY_RULE),
    "aggregationRule": _struct("v1", "AggregationRule",
                               clusterRoleSelectors=Slice(LABEL_SELECTOR))})
_BINDING_FIELDS: Final[Mapping[str, Node]] = {
    "subjects": Slice(_struct("v1", "Subject", kind=STRING, apiGroup=STRING, name=STRING,
                              namespace=STRING)),
    "roleRef": _struct("v1", "RoleRef", apiGroup=STRING, kind=STRING, name=STRING)}
ROLE_BINDING: Final = kind("v1", "RoleBinding", _BINDING_FIELDS)
CLUSTER_ROLE_BINDING: Final = kind("v1", "ClusterRoleBinding", _BINDING_FIELDS)


def _schema_fields() -> Mapping[str, Node]:
    return _SCHEMA_FIELDS


SCHEMA: Final = Struct("v1", "JSONSchemaProps", _schema_fields)
_SCHEMA_OR_ARRAY: Final = SelfDecoding("v1.JSONSchemaPropsOrArray",
                                       {dict: SCHEMA, list: Slice(SCHEMA)},
                                       "input must be a JSON object or a JSON array")
_SCHEMA_OR_BOOL: Final = SelfDecoding("v1.JSONSchemaPropsOrBool", {dict: SCHEMA, bool: None},
                                      "boolean or JSON schema expected")
_SCHEMA_OR_STRINGS: Final = SelfDecoding("v1.JSONSchemaPropsOrStringArray",
                                         {dict: SCHEMA, list: STRINGS},
                                         "input must be a JSON array or a JSON object")
_SCHEMA_FIELDS: Final[Mapping[str, Node]] = {
    "id": STRING, "$schema": STRING, "$ref": STRING, "description": STRING, "type": STRING,
    "format": STRING, "title": STRING, "default": JSON, "maximum": FLOAT64,
    "exclusiveMaximum": BOOL, "minimum": FLOAT64, "exclusiveMinimum": BOOL,
    "maxLength": INT64, "minLength": INT64, "pattern": STRING, "maxItems": INT64,
    "minItems": INT64, "uniqueItems": BOOL, "multipleOf": FLOAT64, "enum": Slice(JSON),
    "maxProperties": INT64, "minProperties": INT64, "required": STRINGS,
    "items": _SCHEMA_OR_ARRAY, "allOf": Slice(SCHEMA), "oneOf": Slice(SCHEMA),
    "anyOf": Slice(SCHEMA), "not": SCHEMA, "properties": Map(SCHEMA),
    "additionalProperties": _SCHEMA_OR_BOOL, "patternProperties": Map(SCHEMA),
    "dependencies": Map(_SCHEMA_OR_STRINGS), "additionalItems": _SCHEMA_OR_BOOL,
    "definitions": Map(SCHEMA),
    "externalDocs": _struct("v1", "ExternalDocumentation", description=STRING, url=STRING),
    "example": JSON, "nullable": BOOL, "x-kubernetes-preserve-unknown-fields": BOOL,
    "x-kubernetes-embedded-resource": BOOL, "x-kubernetes-int-or-string": BOOL,
    "x-kubernetes-list-map-keys": STRINGS, "x-kubernetes-list-type": STRING,
    "x-kubernetes-map-type": STRING,
    "x-kubernetes-validations": Slice(_struct(
        "v1", "ValidationRule", rule=STRING, message=STRING, messageExpression=STRING,
        reason=STRING, fieldPath=STRING, optionalOldSelf=BOOL)),
}
_NAMES: Final = _struct("v1", "CustomResourceDefinitionNames", plural=STRING,
                        singular=STRING, shortNames=STRINGS, kind=STRING, listKind=STRING,
                        categories=STRINGS)
CUSTOM_RESOURCE_DEFINITION: Final = kind("v1", "CustomResourceDefinition", {
    "spec": _struct(
        "v1", "CustomResourceDefinitionSpec", group=STRING, names=_NAMES, scope=STRING,
        versions=Slice(_struct(
            "v1", "CustomResourceDefinitionVersion", name=STRING, served=BOOL, storage=BOOL,
            deprecated=BOOL, deprecationWarning=STRING,
            schema=_struct("v1", "CustomResourceValidation", openAPIV3Schema=SCHEMA),
            subresources=_struct(
                "v1", "CustomResourceSubresources",
                status=_struct("v1", "CustomResourceSubresourceStatus"),
                scale=_struct("v1", "CustomResourceSubresourceScale",
                              specReplicasPath=STRING, statusReplicasPath=STRING,
                              labelSelectorPath=STRING)),
            additionalPrinterColumns=Slice(_struct(
                "v1", "CustomResourceColumnDefinition", name=STRING, type=STRING,
                format=STRING, description=STRING, priority=INT32, jsonPath=STRING)),
            selectableFields=Slice(_struct("v1", "SelectableField", jsonPath=STRING)))),
        conversion=_struct(
            "v1", "CustomResourceConversion", strategy=STRING, webhook=_struct(
                "v1", "WebhookConversion", conversionReviewVersions=STRINGS,
                clientConfig=_struct(
                    "v1", "WebhookClientConfig", url=STRING, caBundle=BYTES,
                    service=_struct("v1", "ServiceReference", namespace=STRING, name=STRING,
                                    path=STRING, port=INT32)))),
        preserveUnknownFields=BOOL),
    "status": _struct(
        "v1", "CustomResourceDefinitionStatus", acceptedNames=_NAMES,
        storedVersions=STRINGS, conditions=Slice(Struct(
            "v1", "CustomResourceDefinitionCondition", _CONDITION_FIELDS)))})
