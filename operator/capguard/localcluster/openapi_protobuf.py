"""The Swagger 2.0 document as protobuf (gnostic's `openapi.v2.Document`), the only form
kubectl accepts from `/openapi/v2`.

kubectl 1.32 falls back to OpenAPI v2 where v3 does not settle a question: client-side
validation of a `kind: List` (its field-validation check answers "unsupported" for List
without asking the server), and kinds the v3 document does not describe (`kubectl create
-f pod.yaml` here). It asks only for
`application/com.github.proto-openapi.spec.v2@v1.0+protobuf` and refuses anything else,
so a JSON-only server makes those commands fail with "failed to download openapi".

This encodes what `openapi.openapi_v2` builds, field numbers as in gnostic's
`openapiv2/OpenAPIv2.proto`: definitions (JSON Schema keywords), paths with their
operations, parameters and responses, and every `x-` extension, whose value gnostic keeps
as YAML text (JSON is YAML, so it is written as JSON).
"""
from __future__ import annotations

import json
import struct
from typing import Any, Final

# What real servers answer with: Go's mime parser, which kubectl runs on the response,
# refuses the "@" of the older spelling that kubectl still asks for.
MEDIA_TYPE: Final = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
MEDIA_TYPE_DEPRECATED: Final = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"

# Schema: string, double, bool and int64 fields by JSON Schema keyword.
_SCHEMA_STRINGS: Final = {"$ref": 1, "format": 2, "title": 3, "description": 4,
                          "pattern": 13, "discriminator": 26}
_SCHEMA_DOUBLES: Final = {"multipleOf": 6, "maximum": 7, "minimum": 9}
_SCHEMA_BOOLS: Final = {"exclusiveMaximum": 8, "exclusiveMinimum": 10, "uniqueItems": 16,
                        "readOnly": 27}
_SCHEMA_INTS: Final = {"maxLength": 11, "minLength": 12, "maxItems": 14, "minItems": 15,
                       "maxProperties": 17, "minProperties": 18}
# Query and path parameters (QueryParameterSubSchema, PathParameterSubSchema).
_QUERY: Final = {"required": 1, "in": 2, "description": 3, "name": 4, "type": 6, "format": 7,
                 "uniqueItems": 20}
_PATH: Final = {"required": 1, "in": 2, "description": 3, "name": 4, "type": 5, "format": 6,
                "uniqueItems": 19}
_METHODS: Final = {"get": 2, "put": 3, "post": 4, "delete": 5, "options": 6, "head": 7,
                   "patch": 8}


def encode_document(document: dict[str, Any]) -> bytes:
    out = bytearray()
    _string(out, 1, document.get("swagger", "2.0"))
    info = document.get("info") or {}
    _message(out, 2, _fields_of(info, {"title": 1, "version": 2, "description": 3}))
    paths = bytearray()
    for name, item in (document.get("paths") or {}).items():
        _message(paths, 2, _named(name, _path_item(item)))
    _message(out, 8, bytes(paths))
    _message(out, 9, _named_schemas(document.get("definitions") or {}))   # Definitions
    _extensions(out, 16, document)
    return bytes(out)


# ---- messages ------------------------------------------------------------------------------

def _schema(schema: dict[str, Any]) -> bytes:
    out = bytearray()
    for key, value in schema.items():
        if key in _SCHEMA_STRINGS:
            _string(out, _SCHEMA_STRINGS[key], value)
        elif key in _SCHEMA_DOUBLES:
            _double(out, _SCHEMA_DOUBLES[key], value)
        elif key in _SCHEMA_BOOLS:
            _bool(out, _SCHEMA_BOOLS[key], value)
        elif key in _SCHEMA_INTS:
            _varint_field(out, _SCHEMA_INTS[key], value)
        elif key == "default":
            _message(out, 5, _any(value))
        elif key == "required":
            for name in value:
                _string(out, 19, name)
        elif key == "enum":
            for item in value:
                _message(out, 20, _any(item))
        elif key == "additionalProperties":
            # AdditionalPropertiesItem: a schema (1) or a boolean (2).
            _message(out, 21, _message_bytes(1, _schema(value)) if isinstance(value, dict)
                     else _bool_bytes(2, value))
        elif key == "type":
            types = bytearray()
            for name in [value] if isinstance(value, str) else value:
                _string(types, 1, name)
            _message(out, 22, bytes(types))
        elif key == "items":
            items = bytearray()
            for item in value if isinstance(value, list) else [value]:
                _message(items, 1, _schema(item))
            _message(out, 23, bytes(items))
        elif key == "allOf":
            for item in value:
                _message(out, 24, _schema(item))
        elif key == "properties":
            _message(out, 25, _named_schemas(value))   # Properties
        elif key == "example":
            _message(out, 30, _any(value))
    _extensions(out, 31, schema)
    return bytes(out)


def _named_schemas(schemas: dict[str, Any]) -> bytes:
    """Definitions and Properties alike: NamedSchema entries in field 1."""
    out = bytearray()
    for name, schema in schemas.items():
        _message(out, 1, _named(name, _schema(schema)))
    return bytes(out)


def _path_item(item: dict[str, Any]) -> bytes:
    out = bytearray()
    for method, number in _METHODS.items():
        if method in item:
            _message(out, number, _operation(item[method]))
    for parameter in item.get("parameters") or []:
        _message(out, 9, _parameters_item(parameter))
    _extensions(out, 10, item)
    return bytes(out)


def _operation(operation: dict[str, Any]) -> bytes:
    out = bytearray()
    for tag in operation.get("tags") or []:
        _string(out, 1, tag)
    _string(out, 2, operation.get("summary"))
    _string(out, 3, operation.get("description"))
    _string(out, 5, operation.get("operationId"))
    for media in operation.get("produces") or []:
        _string(out, 6, media)
    for media in operation.get("consumes") or []:
        _string(out, 7, media)
    for parameter in operation.get("parameters") or []:
        _message(out, 8, _parameters_item(parameter))
    responses = bytearray()
    for code, response in (operation.get("responses") or {}).items():
        _message(responses, 1, _named(code, _response_value(response)))
    if responses:
        _message(out, 9, bytes(responses))
    _bool(out, 11, operation.get("deprecated"))
    _extensions(out, 13, operation)
    return bytes(out)


def _parameters_item(parameter: dict[str, Any]) -> bytes:
    """ParametersItem: a Parameter (1) or a JsonReference (2)."""
    if "$ref" in parameter:
        return _message_bytes(2, _fields_of(parameter, {"$ref": 1, "description": 2}))
    if parameter.get("in") == "body":
        body = bytearray(_fields_of(parameter, {"description": 1, "name": 2, "in": 3,
                                                "required": 4}))
        if "schema" in parameter:
            _message(body, 5, _schema(parameter["schema"]))
        _extensions(body, 6, parameter)
        return _message_bytes(1, _message_bytes(1, bytes(body)))
    # NonBodyParameter: header (1), formData (2), query (3), path (4) sub-schemas.
    where = parameter.get("in")
    numbers, choice = (_PATH, 4) if where == "path" else (_QUERY, 3)
    if where == "header":
        numbers, choice = _PATH, 1   # HeaderParameterSubSchema numbers as PathParameter's
    sub = bytearray(_fields_of(parameter, numbers))
    _extensions(sub, 22 if numbers is _PATH else 23, parameter)
    return _message_bytes(1, _message_bytes(2, _message_bytes(choice, bytes(sub))))


def _response_value(response: dict[str, Any]) -> bytes:
    """ResponseValue: a Response (1) or a JsonReference (2)."""
    if "$ref" in response:
        return _message_bytes(2, _fields_of(response, {"$ref": 1, "description": 2}))
    out = bytearray()
    _string(out, 1, response.get("description"))
    if "schema" in response:
        _message(out, 2, _message_bytes(1, _schema(response["schema"])))   # SchemaItem
    _extensions(out, 5, response)
    return _message_bytes(1, bytes(out))


def _named(name: str, value: bytes) -> bytes:
    out = bytearray()
    _string(out, 1, name)
    _message(out, 2, value)
    return bytes(out)


def _any(value: Any) -> bytes:
    """gnostic's Any: the value as YAML text (field 2)."""
    out = bytearray()
    _string(out, 2, json.dumps(value, ensure_ascii=False) + "\n")
    return bytes(out)


def _extensions(out: bytearray, number: int, node: dict[str, Any]) -> None:
    for key, value in node.items():
        if key.startswith("x-"):
            _message(out, number, _named(key, _any(value)))


def _fields_of(node: dict[str, Any], numbers: dict[str, int]) -> bytes:
    """The string, boolean and integer fields of `node` named in `numbers`."""
    out = bytearray()
    for key, number in numbers.items():
        value = node.get(key)
        if isinstance(value, bool):
            _bool(out, number, value)
        elif isinstance(value, int):
            _varint_field(out, number, value)
        elif isinstance(value, str):
            _string(out, number, value)
    return bytes(out)


# ---- wire format ----------------------------------------------------------------------------

def _varint(out: bytearray, value: int) -> None:
    value &= (1 << 64) - 1   # negative int64 as ten bytes, as protobuf does
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _key(out: bytearray, number: int, wire: int) -> None:
    _varint(out, number << 3 | wire)


def _message(out: bytearray, number: int, data: bytes) -> None:
    _key(out, number, 2)
    _varint(out, len(data))
    out += data


def _message_bytes(number: int, data: bytes) -> bytes:
    out = bytearray()
    _message(out, number, data)
    return bytes(out)


def _string(out: bytearray, number: int, value: Any) -> None:
    if isinstance(value, str) and value:   # proto3 leaves out empty strings
        _message(out, number, value.encode())


def _bool(out: bytearray, number: int, value: Any) -> None:
    if value is True:
        out += _bool_bytes(number, True)


def _bool_bytes(number: int, value: bool) -> bytes:
    out = bytearray()
    _key(out, number, 0)
    out.append(1 if value else 0)
    return bytes(out)


def _varint_field(out: bytearray, number: int, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value:
        _key(out, number, 0)
        _varint(out, value)


def _double(out: bytearray, number: int, value: Any) -> None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value:
        _key(out, number, 1)
        out += struct.pack("<d", float(value))
