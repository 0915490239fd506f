"""Just enough of Kubernetes' protobuf encoding to read what `kubectl create namespace`
and `kubectl create configmap` send (typed clients post built-ins as protobuf).

Decodes the `k8s\\x00` envelope (runtime.Unknown) and the Namespace and ConfigMap
messages with the ObjectMeta fields a client sets; anything else is refused with 415.
"""
from __future__ import annotations

from collections.abc import Iterator
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


_DECODERS: Final = {("v1", "Namespace"): _namespace, ("v1", "ConfigMap"): _configmap}


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
