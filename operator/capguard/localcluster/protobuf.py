"""Just enough of Kubernetes' protobuf encoding to read what `kubectl create namespace`,
`kubectl create configmap`, `create serviceaccount`, `create role`, `create rolebinding`
(and their cluster kinds), `kubectl create token` and `kubectl auth can-i` send (typed
clients post built-ins as protobuf).

Decodes the `k8s\\x00` envelope (runtime.Unknown) and those messages with the ObjectMeta
fields a client sets; anything else is refused with 415.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

from capguard.localcluster import errors

MAGIC: Final = b"k8s\x00"
_META_STRINGS: Final = {1: "name", 2: "generateName", 3: "namespace", 6: "resourceVersion"}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, Any]]:
    """(field number, value) pairs: ints for varints, bytes for length-delimited."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
            if pos > len(data):
                raise ValueError("truncated field")
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, pos = data[pos:pos + width], pos + width
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, value


def _map_entry(data: bytes) -> tuple[str, str]:
    entry = dict(_fields(data))
    return entry.get(1, b"").decode(), entry.get(2, b"").decode()


def _object_meta(data: bytes) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for number, value in _fields(data):
        if number in _META_STRINGS and value:   # gogo-protobuf sends empty strings too
            metadata[_META_STRINGS[number]] = value.decode()
        elif number in (11, 12):
            key, item = _map_entry(value)
            metadata.setdefault("labels" if number == 11 else "annotations", {})[key] = item
        elif number == 14:
            metadata.setdefault("finalizers", []).append(value.decode())
    return metadata


def _namespace(raw: bytes) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {}}
    for number, value in _fields(raw):
        if number == 1:
            obj["metadata"] = _object_meta(value)
    return obj


def _configmap(raw: bytes) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}
    for number, value in _fields(raw):
        if number == 1:
            obj["metadata"] = _object_meta(value)
        elif number == 2:
            key, item = _map_entry(value)
            obj.setdefault("data", {})[key] = item
        elif number == 4:
            obj["immutable"] = bool(value)
    return obj


# The messages of RBAC's kinds and the authorization reviews, as `kubectl create role`,
# `kubectl create rolebinding` and `kubectl auth can-i` post them: field number -> (name,
# type), a type being "string", "strings" (repeated), "bool", "meta" or another message.
Message = dict[int, tuple[str, Any]]
_POLICY_RULE: Final[Message] = {1: ("verbs", "strings"), 2: ("apiGroups", "strings"),
                                3: ("resources", "strings"), 4: ("resourceNames", "strings"),
                                5: ("nonResourceURLs", "strings")}
_SUBJECT: Final[Message] = {1: ("kind", "string"), 2: ("apiGroup", "string"),
                            3: ("name", "string"), 4: ("namespace", "string")}
_ROLE_REF: Final[Message] = {1: ("apiGroup", "string"), 2: ("kind", "string"),
                             3: ("name", "string")}
_RESOURCE_ATTRIBUTES: Final[Message] = {
    1: ("namespace", "string"), 2: ("verb", "string"), 3: ("group", "string"),
    4: ("version", "string"), 5: ("resource", "string"), 6: ("subresource", "string"),
    7: ("name", "string")}
_NON_RESOURCE_ATTRIBUTES: Final[Message] = {1: ("path", "string"), 2: ("verb", "string")}
_ACCESS: Final[Message] = {1: ("resourceAttributes", _RESOURCE_ATTRIBUTES),
                           2: ("nonResourceAttributes", _NON_RESOURCE_ATTRIBUTES)}
_MESSAGES: Final[dict[tuple[str, str], Message]] = {
    ("v1", "ServiceAccount"): {1: ("metadata", "meta"),
                               4: ("automountServiceAccountToken", "bool")},
    ("rbac.authorization.k8s.io/v1", "Role"): {1: ("metadata", "meta"),
                                               2: ("rules", [_POLICY_RULE])},
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): {1: ("metadata", "meta"),
                                                      2: ("rules", [_POLICY_RULE])},
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): {
        1: ("metadata", "meta"), 2: ("subjects", [_SUBJECT]), 3: ("roleRef", _ROLE_REF)},
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): {
        1: ("metadata", "meta"), 2: ("subjects", [_SUBJECT]), 3: ("roleRef", _ROLE_REF)},
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): {1: ("metadata", "meta"),
                                                             2: ("spec", _ACCESS)},
    ("authentication.k8s.io/v1", "SelfSubjectReview"): {1: ("metadata", "meta")},
    ("authentication.k8s.io/v1", "TokenRequest"): {
        1: ("metadata", "meta"),
        2: ("spec", {1: ("audiences", "strings"), 4: ("expirationSeconds", "int")})},
    ("authorization.k8s.io/v1", "SelfSubjectRulesReview"): {
        1: ("metadata", "meta"), 2: ("spec", {1: ("namespace", "string")})},
    ("authorization.k8s.io/v1", "SubjectAccessReview"): {
        1: ("metadata", "meta"), 2: ("spec", {**_ACCESS, 3: ("user", "string"),
                                              4: ("groups", "strings"), 6: ("uid", "string")})},
}


def _message(raw: bytes, shape: Message) -> dict[str, Any]:
    """Decode one message of `shape`; fields it does not name are skipped."""
    obj: dict[str, Any] = {}
    for number, value in _fields(raw):
        if number not in shape:
            continue
        name, kind = shape[number]
        if kind == "string":
            if value:   # gogo-protobuf sends empty strings; JSON omits them (omitempty)
                obj[name] = value.decode()
        elif kind == "strings":
            obj.setdefault(name, []).append(value.decode())
        elif kind == "bool":
            obj[name] = bool(value)
        elif kind == "int":
            obj[name] = value
        elif kind == "meta":
            obj[name] = _object_meta(value)
        elif isinstance(kind, list):
            obj.setdefault(name, []).append(_message(value, kind[0]))
        else:
            obj[name] = _message(value, kind)
    return obj


def _typed(api_version: str, kind: str, shape: Message) -> Callable[[bytes], dict[str, Any]]:
    def decode(raw: bytes) -> dict[str, Any]:
        return {"apiVersion": api_version, "kind": kind, "metadata": {},
                **_message(raw, shape)}
    return decode


_DECODERS: Final = {("v1", "Namespace"): _namespace, ("v1", "ConfigMap"): _configmap,
                    **{key: _typed(*key, shape) for key, shape in _MESSAGES.items()}}


def decode(body: bytes) -> dict[str, Any]:
    if not body.startswith(MAGIC):
        raise errors.bad_request("protobuf body without the k8s envelope")
    try:
        unknown = dict(_fields(body[len(MAGIC):]))
        type_meta = dict(_fields(unknown.get(1, b"")))
        key = (type_meta.get(1, b"").decode(), type_meta.get(2, b"").decode())
        decoder = _DECODERS.get(key)
        if decoder is None:
            raise errors.unsupported_media_type(
                "the body of the request was in an unknown format - accepted media types "
                "include: application/json, application/yaml")
        return decoder(unknown.get(2, b""))
    except (ValueError, UnicodeDecodeError, AttributeError) as error:
        raise errors.bad_request(f"unable to decode protobuf body: {error}") from error
