"""Table columns for `kubectl get`: definitions and cells from additionalPrinterColumns.

Follows apiextensions-apiserver's `tableconvertor` (columns, cell types) and
k8s.io/client-go/util/jsonpath (the path language), in the subset printer columns
use: `.a.b`, `['key']`, `[0]`, `[-1]`, `[1:3]`, `[*]`, `..name`, unions `[0,2]`, and
filters `[?(@.type=="Ready")]` with `== != < <= > >=` or a bare existence test.
Only the first result of a path is shown, as Kubernetes does.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import re
from collections.abc import Iterator
from typing import Any, Final

NAME_DESCRIPTION: Final = (
    "Name must be unique within a namespace. Is required when creating resources, although"
    " some resources may allow a client to request the generation of an appropriate name"
    " automatically. Name is primarily intended for creation idempotence and configuration"
    " definition. Cannot be updated. More info:"
    " http://kubernetes.io/docs/user-guide/identifiers#names")
CREATION_TIMESTAMP_DESCRIPTION: Final = (
    "CreationTimestamp is a timestamp representing the server time when this object was"
    " created. It is not guaranteed to be set in happens-before order across separate"
    " operations. Clients may not set this value. It is represented in RFC3339 form and is"
    " in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info:"
    " https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md"
    "#metadata")
# What a CRD without additionalPrinterColumns shows (serveDefaultColumnsIfEmpty).
DEFAULT_COLUMNS: Final = ({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp",
                           "description": CREATION_TIMESTAMP_DESCRIPTION},)


def column_definitions(printer_columns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table.columnDefinitions: Name, then the CRD's columns (or the default Age)."""
    definitions = [{"name": "Name", "type": "string", "format": "name",
                    "description": NAME_DESCRIPTION, "priority": 0}]
    for column in _columns(printer_columns):
        json_path = str(column.get("jsonPath", ""))
        description = column.get("description") or (
            f"Custom resource definition column (in JSONPath format): {json_path}")
        definitions.append({
            "name": str(column.get("name", "")),
            "type": str(column.get("type", "string")),
            "format": str(column.get("format", "")),
            "description": description,
            "priority": _priority(column.get("priority")),
        })
    return definitions


def row_cells(printer_columns: list[dict[str, Any]], obj: dict[str, Any],
              now: datetime.datetime) -> list[Any]:
    """One Table row: the name, then each column's value formatted for its type."""
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    assert isinstance(metadata, dict)
    cells: list[Any] = [metadata.get("name", "")]
    for column in _columns(printer_columns):
        cells.append(_cell(column, obj, now=now))
    return cells


def _columns(printer_columns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    columns = [c for c in printer_columns or [] if isinstance(c, dict)]
    return columns or list(DEFAULT_COLUMNS)


def _priority(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _cell(column: dict[str, Any], obj: dict[str, Any], *, now: datetime.datetime) -> Any:
    cell = column.get("cell")
    if callable(cell):   # a built-in kind's printer: its cell as the Go printer writes it
        return cell(obj)
    try:
        path = compile_path(str(column.get("jsonPath", "")))
    except JSONPathError:
        return None
    try:
        found = next(path.find(obj), _MISSING)
        if found is _MISSING or found is None:
            return None
        return format_cell(str(column.get("type", "string")), found, now=now)
    except RecursionError:  # `..` or JSON text of a value nested beyond Python's stack
        return None


def format_cell(column_type: str, value: Any, *, now: datetime.datetime) -> Any:
    """A value as tableconvertor's cellForJSONValue shows it; None when it does not fit."""
    if column_type == "string":
        return _as_text(value)
    if column_type == "integer" and _is_number(value) and math.isfinite(value):
        return int(value)
    if column_type == "number" and _is_number(value):
        return _go_float(float(value))
    if column_type == "boolean" and isinstance(value, bool):
        return value
    if column_type == "date" and isinstance(value, str):
        return _age(value, now=now)
    return None


def _go_float(value: float) -> float | int:
    """A float64 as Go's JSON encoder writes it: 3.0 is `3`, 2.5 stays `2.5` (351)."""
    if value.is_integer() and abs(value) < 1e21:
        return int(value)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_text(value: Any) -> str:
    """jsonpath PrintResults: strings bare, scalars as Go prints them, the rest as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def _age(timestamp: str, *, now: datetime.datetime) -> str:
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    if then.tzinfo is None:
        then = then.replace(tzinfo=datetime.UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=datetime.UTC)
    return human_duration(now - then)


def human_duration(elapsed: datetime.timedelta) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration, as kubectl shows ages."""
    seconds = math.floor(elapsed.total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return _pair(minutes, "m", seconds % 60, "s")
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return _pair(hours, "h", minutes % 60, "m")
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return _pair(days, "d", hours % 24, "h")
    if hours < 24 * 365 * 2:
        return f"{days}d"
    if hours < 24 * 365 * 8:
        return _pair(days // 365, "y", days % 365, "d")
    return f"{days // 365}y"


def _pair(major: int, major_unit: str, minor: int, minor_unit: str) -> str:
    return f"{major}{major_unit}" if minor == 0 else f"{major}{major_unit}{minor}{minor_unit}"


# --- JSONPath ----------------------------------------------------------------------------


class JSONPathError(ValueError):
    """A printer column path this evaluator cannot read."""


_MISSING: Final = object()


@dataclasses.dataclass(frozen=True)
class _Step:
    kind: str  # "key", "index", "slice", "wildcard", "recurse", "filter", "union"
    key: str = ""
    numbers: tuple[int | None, ...] = ()
    keys: tuple[str, ...] = ()
    filter: _Filter | None = None


@dataclasses.dataclass(frozen=True)
class _Filter:
    path: Path
    operator: str  # "" for an existence test
    literal: Any = None


@dataclasses.dataclass(frozen=True)
class Path:
    """A compiled JSONPath; `find` yields every match in document order."""

    steps: tuple[_Step, ...]

    def find(self, document: Any) -> Iterator[Any]:
        values: list[Any] = [document]
        for step in self.steps:
            values = [found for value in values for found in _apply(step, value)]
        yield from values


_CACHE: dict[str, Path] = {}
_TOKEN: Final = re.compile(
    r"\.\.(?P<recurse>[A-Za-z0-9_\-/]+|\*)?"
    r"|\.(?P<key>[A-Za-z0-9_\-/]+|\*)"
    r"|\[(?P<bracket>(?:'[^']*'|\"[^\"]*\"|[^\]'\"])*)\]")


def compile_path(source: str) -> Path:
    """Parse `.spec.x`, also wrapped in `{...}` as kubectl users write it."""
    cached = _CACHE.get(source)
    if cached is not None:
        return cached
    text = source.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1].strip()
    if text.startswith("$"):
        text = text[1:]
    path = Path(tuple(_parse_steps(text)))
    if len(_CACHE) < 1024:  # CRDs declare a handful; a bound keeps a hostile CRD harmless
        _CACHE[source] = path
    return path


def _parse_steps(text: str) -> Iterator[_Step]:
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise JSONPathError(f"unrecognized JSONPath at {text[position:]!r}")
        position = match.end()
        if match.group("recurse") is not None or match.group(0) == "..":
            yield _Step("recurse")
            name = match.group("recurse")
            if name:
                yield _Step("wildcard") if name == "*" else _Step("key", key=name)
        elif match.group("key") is not None:
            name = match.group("key")
            yield _Step("wildcard") if name == "*" else _Step("key", key=name)
        else:
            yield _parse_bracket(match.group("bracket").strip())


def _parse_bracket(inner: str) -> _Step:
    if inner == "*":
        return _Step("wildcard")
    if inner.startswith("?"):
        return _Step("filter", filter=_parse_filter(inner[1:].strip()))
    if inner[:1] in ("'", '"'):
        keys = tuple(part.strip()[1:-1] for part in _split_union(inner))
        return _Step("key", key=keys[0]) if len(keys) == 1 else _Step("union", keys=keys)
    if ":" in inner:
        parts = [p.strip() for p in inner.split(":")]
        if len(parts) > 3:
            raise JSONPathError(f"bad slice [{inner}]")
        return _Step("slice", numbers=tuple(_int_or_none(p) for p in parts))
    return _Step("index", numbers=tuple(_int(p) for p in inner.split(",")))


def _split_union(inner: str) -> list[str]:
    return re.findall(r"'[^']*'|\"[^\"]*\"", inner)


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise JSONPathError(f"bad index {text!r}") from None


def _int_or_none(text: str) -> int | None:
    return _int(text) if text else None


_FILTER: Final = re.compile(r"^\(\s*@(?P<path>[^=!<>]*?)\s*(?:(?P<op>==|!=|<=|>=|<|>)\s*"
                            r"(?P<literal>.+?))?\s*\)$")


def _parse_filter(text: str) -> _Filter:
    match = _FILTER.match(text)
    if match is None:
        raise JSONPathError(f"unsupported filter {text!r}")
    path = Path(tuple(_parse_steps(match.group("path").strip())))
    if match.group("op") is None:
        return _Filter(path, "")
    return _Filter(path, match.group("op"), _literal(match.group("literal").strip()))


def _literal(text: str) -> Any:
    if text[:1] in ("'", '"') and text[-1:] == text[:1]:
        return text[1:-1]
    try:
        return json.loads(text)  # numbers, true, false, null
    except ValueError:
        raise JSONPathError(f"bad literal {text!r}") from None


def _apply(step: _Step, value: Any) -> Iterator[Any]:
    if step.kind == "key":
        if isinstance(value, dict) and step.key in value:
            yield value[step.key]
    elif step.kind == "union":
        if isinstance(value, dict):
            yield from (value[k] for k in step.keys if k in value)
    elif step.kind == "wildcard":
        yield from _children(value)
    elif step.kind == "recurse":
        yield from _descendants(value)
    elif isinstance(value, list):
        yield from _apply_to_list(step, value)


def _apply_to_list(step: _Step, value: list[Any]) -> Iterator[Any]:
    if step.kind == "index":
        for index in step.numbers:
            assert index is not None
            if -len(value) <= index < len(value):
                yield value[index]
    elif step.kind == "slice":
        start, stop, *rest = (*step.numbers, None)
        stride = rest[0] if rest and rest[0] else 1
        yield from value[slice(start, stop, stride)]
    elif step.kind == "filter" and step.filter is not None:
        yield from (item for item in value if _matches(step.filter, item))


def _children(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        yield from value.values()
    elif isinstance(value, list):
        yield from value


def _descendants(value: Any) -> Iterator[Any]:
    yield value
    for child in _children(value):
        yield from _descendants(child)


def _matches(condition: _Filter, item: Any) -> bool:
    found = next(condition.path.find(item), _MISSING)
    if not condition.operator:
        return found is not _MISSING
    if found is _MISSING:
        return False
    return _compare(found, condition.operator, condition.literal)


def _compare(left: Any, operator: str, right: Any) -> bool:
    if operator == "==":
        # JSON equality: true is not 1, although Python says it is.
        return isinstance(left, bool) == isinstance(right, bool) and bool(left == right)
    if operator == "!=":
        return not _compare(left, "==", right)
    both_numbers = _is_number(left) and _is_number(right)
    if not both_numbers and not (isinstance(left, str) and isinstance(right, str)):
        return False
    outcomes: dict[str, bool] = {"<": left < right, "<=": left <= right, ">": left > right,
                                 ">=": left >= right}
    return outcomes[operator]
