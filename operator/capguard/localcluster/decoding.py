"""Decoding request bodies as the real server's strict decoders do: the last of duplicated
keys wins, and each duplicate is reported so `fieldValidation` can warn about or refuse it.

JSON duplicates are named by their path in the document, in the order the decoder meets
them (sigs.k8s.io/json: `duplicate field "spec.ports[0].hostPort"`); YAML duplicates by
the line of the repeated key, all in one error (yaml.v2: `yaml: unmarshal errors:` then
`  line 6: key "name" already set in map` per duplicate), which a warning splits again.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Final

import yaml

_YAML_ERRORS: Final = "yaml: unmarshal errors:"


@dataclasses.dataclass(frozen=True)
class Decoded:
    value: Any
    problems: tuple[str, ...] = ()   # strict decoding errors, in the real server's words


class _Duplicated(Exception):
    """Raised by the fast path: the document repeats a key, so decode it again slowly."""


def loads_json(raw: bytes | str) -> Decoded:
    """JSON with its duplicate keys reported; NaN and Infinity refused, as in Go."""
    try:
        return Decoded(json.loads(raw, object_pairs_hook=_unique, parse_constant=_constant))
    except _Duplicated:
        pass
    events: dict[int, list[tuple[Any, ...]]] = {}
    value = json.loads(raw, parse_constant=_constant,
                       object_pairs_hook=lambda pairs: _tracked(pairs, events))
    paths = (_path(parts) for parts in _events_of(value, events))
    return Decoded(value, tuple(f'duplicate field "{path}"' for path in paths))


def loads_yaml(text: str) -> Decoded:
    """YAML (as the JSON it stands for) with its duplicate keys reported by line."""
    loader = _Loader(text)
    try:
        value = loader.get_single_data()
    finally:
        loader.dispose()
    # Round-trip through JSON: YAML may hold dates or non-string keys JSON cannot.
    value = json.loads(json.dumps(value, default=str))
    if not loader.duplicates:
        return Decoded(value)
    return Decoded(value, ("\n  ".join([_YAML_ERRORS, *loader.duplicates]),))


def warnings(problems: tuple[str, ...]) -> tuple[str, ...]:
    """One warning per problem; the YAML group is split into one per line, as in Go."""
    found: list[str] = []
    for problem in problems:
        if problem.startswith(_YAML_ERRORS):
            found += [line.strip() for line in problem.splitlines()[1:]]
        else:
            found.append(problem)
    return tuple(found)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _Duplicated()
    return result


def _constant(name: str) -> Any:
    raise ValueError(f"invalid character '{name[0]}' looking for beginning of value")


def _tracked(pairs: list[tuple[str, Any]], events: dict[int, list[tuple[Any, ...]]]
             ) -> dict[str, Any]:
    """A decoded object whose duplicates (paths relative to it) wait in `events`.

    The decoder meets a repeated key before that key's value, and the keys of a value
    before the keys after it, so walking the pairs in order gives the decoder's order.
    """
    result: dict[str, Any] = {}
    found: list[tuple[Any, ...]] = []
    for key, value in pairs:
        if key in result:
            found.append((key,))
        found += [(key, *parts) for parts in _events_of(value, events)]
        result[key] = value
    events[id(result)] = found
    return result


def _events_of(value: Any, events: dict[int, list[tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return events.pop(id(value), [])
    if isinstance(value, list):
        return [(index, *parts) for index, item in enumerate(value)
                for parts in _events_of(item, events)]
    return []


def _path(parts: tuple[Any, ...]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, noting each repeated mapping key with its line."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            if key_node.value in seen:
                self.duplicates.append(f"line {key_node.start_mark.line + 1}: key "
                                       f"{json.dumps(key_node.value)} already set in map")
            seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)
