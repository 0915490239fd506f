"""Label and field selectors, parsed once per request and matched per object.

Label selectors support every operator of the real server: `=`, `==`, `!=`, `in`, `notin`,
`key` (exists), `!key` (does not exist), and `>`/`<` (the label exists and, as an integer,
is greater or less than the value, which must be an integer). As in the real server (060),
`!=` and `notin` also match objects that do not carry the label at all.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, Final

from capguard.localcluster import errors

_SET_TERM: Final = re.compile(r"^\s*([^\s!=()<>]+)\s+(in|notin)\s+\(([^()]*)\)\s*$")
_EQ_TERM: Final = re.compile(r"^\s*([^\s!=()<>]+)\s*(==|=|!=)\s*([^\s!=(),<>]*)\s*$")
_ORDER_TERM: Final = re.compile(r"^\s*([^\s!=()<>]+)\s*([<>])\s*([^\s!=(),<>]*)\s*$")
_EXISTS_TERM: Final = re.compile(r"^\s*(!?)\s*([^\s!=()<>]+)\s*$")

Matcher = Callable[[dict[str, str]], bool]


@dataclasses.dataclass(frozen=True)
class LabelSelector:
    matchers: tuple[Matcher, ...] = ()

    def matches(self, labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        return all(matcher(labels) for matcher in self.matchers)

    @property
    def empty(self) -> bool:
        return not self.matchers


def _split_terms(text: str) -> list[str]:
    # Commas separate terms except inside the parentheses of an `in (a,b)` set.
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return [term for term in terms if term.strip()]


def _term_matcher(term: str) -> Matcher:
    if match := _SET_TERM.match(term):
        key, operator, raw_values = match.groups()
        values = frozenset(value.strip() for value in raw_values.split(","))
        if operator == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if match := _EQ_TERM.match(term):
        key, operator, value = match.groups()
        if operator == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if match := _ORDER_TERM.match(term):
        key, operator, raw = match.groups()
        bound = _integer(raw)
        if bound is None:
            raise errors.bad_request(
                f'unable to parse requirement: values[0]: Invalid value: "{raw}": '
                "for 'Gt', 'Lt' operators, the value must be an integer")
        greater = operator == ">"
        return lambda labels: _compares(labels.get(key), bound, greater=greater)
    if match := _EXISTS_TERM.match(term):
        negated, key = match.groups()
        if negated:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise errors.bad_request(f"unable to parse requirement: invalid label selector: {term!r}")


_INTEGER: Final = re.compile(r"^[+-]?[0-9]+$")


def _integer(text: str | None) -> int | None:
    """Go's strconv.ParseInt(text, 10, 64): no underscores or spaces, unlike int()."""
    if text is None or not _INTEGER.match(text):
        return None
    number = int(text)
    return number if -(2**63) <= number < 2**63 else None


def _compares(value: str | None, bound: int, *, greater: bool) -> bool:
    number = _integer(value)
    if number is None:
        return False
    return number > bound if greater else number < bound


def parse_labels(text: str | None) -> LabelSelector:
    if not text:
        return LabelSelector()
    return LabelSelector(tuple(_term_matcher(term) for term in _split_terms(text)))


@dataclasses.dataclass(frozen=True)
class FieldSelector:
    """Only metadata.name and metadata.namespace, as for custom resources (061)."""

    terms: tuple[tuple[str, bool, str], ...] = ()  # (field, equal?, value)

    def matches(self, obj: dict[str, Any]) -> bool:
        return all((_field_value(obj, field) == value) == equal
                   for field, equal, value in self.terms)

    @property
    def empty(self) -> bool:
        return not self.terms

    def wanted_name(self) -> str | None:
        """The one name an `metadata.name=x` selector allows: lets a list skip the scan."""
        for field, equal, value in self.terms:
            if field == "metadata.name" and equal:
                return value
        return None


def _field_value(obj: dict[str, Any], field: str) -> str:
    value: Any = obj
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


_SUPPORTED_FIELDS: Final = frozenset({"metadata.name", "metadata.namespace"})


def parse_fields(text: str | None, *, extra_fields: frozenset[str] = frozenset()) -> FieldSelector:
    if not text:
        return FieldSelector()
    terms = []
    for term in text.split(","):
        if not term.strip():
            continue
        match = re.match(r"^\s*([^\s!=]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if not match:
            raise errors.bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
        field, operator, value = match.groups()
        if field not in _SUPPORTED_FIELDS and field not in extra_fields:
            raise errors.bad_request(f"field label not supported: {field}")
        terms.append((field, operator != "!=", value))
    return FieldSelector(tuple(terms))
