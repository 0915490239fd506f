"""CEL rules of `x-kubernetes-validations`, compiled once and evaluated per object.

Library choice: `cel-python` (import name `celpy`). It is a pure-Python, maintained
implementation of the CEL spec (parser, macros `has/all/exists/exists_one/map/filter`,
`size`, `matches`, `int()`, `string()`, `duration()`, `timestamp()`), it accepts extra
functions, so the Kubernetes extension library (`isSorted`, `sum`, `lowerAscii`, ...)
can be added here in a few lines, and it needs no native build. Its gaps against
cel-go, which the real apiserver uses, are documented where they bite: no static type
check (a misspelt field is found at evaluation, not at CRD creation), no cost budget,
and no heterogeneous numeric equality (`1 == 1.0` is an error, so numbers are fed to
CEL with the type their schema declares, see `schema.py`).

Measured against `common-expression-language` 0.10 (Rust cel bindings): it is 10-30x
faster (about 20 us per compiled rule against 200-700 us here, celpy's time going to its
lark tree walk), accepts method-style extension functions and has `1 == 1.0`. celpy
stays because everything here is built and tested on it; the switch is contained in
this module (`Rule`, `to_cel`, the extension table). CEL cost did show in a benchmark:
in a 10,000-engine unhandled start, 70 % of the server's CPU went to one transition
rule that every engine status write re-runs on the unchanged spec. `Rule.check`
remembers outcomes by value instead, which took the server from 1,130 to 4,200
writes/s; by the values of the fields a rule reads, since a 50,000-engine fleet has more
distinct specs than a memo of outcomes by whole value could hold.

Behaviour follows Kubernetes 1.29+ (CEL validation GA); the recorded 1.24 server has
no CEL at all, so nothing in `k8s-reference/` pins it down.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Callable, Sequence
from typing import Any, Final

import celpy
from celpy import adapter, celtypes

#: Reasons a rule may declare (`reason:`); anything else falls back to the default.
REASONS: Final = frozenset(
    {"FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"}
)
DEFAULT_REASON: Final = "FieldValueInvalid"

# A rule mentions oldSelf -> it is a transition rule, evaluated only on updates where
# the old value exists (Kubernetes decides this from the compiled AST; a word match is
# the same answer for every rule outside a string literal).
_OLD_SELF: Final = re.compile(r"\boldSelf\b")

_ENV: Final = celpy.Environment()


class RuleCompileError(ValueError):
    """A rule that does not parse; Kubernetes would reject the CRD carrying it."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """Why one rule rejected a value: the reason and the message a user reads.

    `evaluation_error`: the rule could not be evaluated; Kubernetes reports that at the
    rule's node, not at its fieldPath.
    """

    reason: str
    message: str
    evaluation_error: bool = False


def uses_old_self(source: str) -> bool:
    """A transition rule: it reads oldSelf, so it runs only on updates."""
    return bool(_OLD_SELF.search(source))


class Rule:
    """One `x-kubernetes-validations` entry, compiled."""

    __slots__ = ("_message_program", "_old_fields", "_outcomes", "_program", "_self_fields",
                 "field_path", "message", "reason", "source", "uses_old_self")

    def __init__(self, spec: dict[str, Any]) -> None:
        self.source: str = str(spec.get("rule", ""))
        self.message: str | None = _optional_str(spec.get("message"))
        reason = spec.get("reason")
        self.reason: str = reason if reason in REASONS else DEFAULT_REASON
        self.field_path: str = str(spec.get("fieldPath") or "")
        self.uses_old_self: bool = uses_old_self(self.source)
        self._program = _compile(self.source)
        message_expression = _optional_str(spec.get("messageExpression"))
        self._message_program = _compile(message_expression) if message_expression else None
        # The fields of self and oldSelf the rule and its message read, when that can be
        # told (None: it reads more, or it cannot be told): the outcome's memo key.
        read = (self.source, message_expression or "")
        self._self_fields = _fields_read(read, "self")
        self._old_fields = _fields_read(read, "oldSelf")
        # The last outcomes by (self, oldSelf) as JSON text, least recently used first.
        self._outcomes: dict[tuple[str, str], Outcome | None] = {}

    def check(self, self_json: Any, old_json: Any = None) -> Outcome | None:
        """`evaluate` on JSON values (numbers as their schema declares them), remembered.

        A rule is a pure function of `self` and `oldSelf`, and a server is asked about the
        same values again and again: every status write re-checks the unchanged spec
        (Kubernetes runs a spec's transition rules on a status update too). celpy takes
        0.2-0.7 ms a rule, which made CEL most of the embedded server's time per write;
        cel-go takes microseconds, so remembering keeps our cost where a real server's is.
        The key is the JSON text, which tells 1 from 1.0 and true from 1 as CEL does, of
        the fields the rule reads when it reads only some (`_fields_read`): an engine's
        spec rule reads cordoned and modelRef, so 50,000 engines in 10 pools are 5,000
        keys, one per model, not 50,000.
        Raises RecursionError for a value nested too deep to convert.
        """
        old_key = ""
        if self.uses_old_self:
            try:
                old_key = _key(old_json, self._old_fields)
            except RecursionError:  # a stored object too deep to convert: oldSelf is null
                old_json, old_key = None, "null"
        key = (_key(self_json, self._self_fields), old_key)
        try:
            outcome = self._outcomes.pop(key)
        except KeyError:
            outcome = self.evaluate(self_value=to_cel(self_json),
                                    old_self=_old_value(old_json) if self.uses_old_self else None)
        self._outcomes[key] = outcome
        if len(self._outcomes) > _REMEMBERED:
            del self._outcomes[next(iter(self._outcomes))]
        return outcome

    def evaluate(self, *, self_value: Any, old_self: Any = None) -> Outcome | None:
        """Evaluate with CEL values; None when the rule holds, else why it failed.

        Never raises: a rule that errors at runtime (missing field, no overload,
        division by zero) is a failure with the error as its message, as in
        Kubernetes, because the object cannot be proven valid.
        """
        activation = {"self": self_value}
        if self.uses_old_self:
            activation["oldSelf"] = old_self
        try:
            result = self._program.evaluate(activation)
        except Exception as error:  # celpy raises many types; none may escape
            return self._evaluation_error(error)
        if isinstance(result, Exception):  # celpy can return errors as values
            return self._evaluation_error(result)
        if not isinstance(result, celtypes.BoolType):
            return Outcome(DEFAULT_REASON, "rule did not evaluate to a boolean")
        if result:
            return None
        return Outcome(self.reason, self._failure_message(activation))

    def _evaluation_error(self, error: BaseException) -> Outcome:
        """Worded as apiextensions words a rule that fails to evaluate; celpy's own text
        (parse-tree tokens, Python exception reprs) never reaches a user."""
        text = _error_text(error)
        if text is None:
            message = ("'no such overload': call arguments did not match a supported operator, "
                       f"function or macro signature for rule: {self._shown()}")
        else:
            message = f"{text} evaluating rule: {self._shown()}"
        return Outcome(DEFAULT_REASON, message, evaluation_error=True)

    def _shown(self) -> str:
        """ruleErrorString: the rule's message if it has one, else its text."""
        return (self.message or self.source).strip()

    def _failure_message(self, activation: dict[str, Any]) -> str:
        """messageExpression if it yields a non-empty string, else message, else the rule."""
        if self._message_program is not None:
            try:
                text = self._message_program.evaluate(activation)
            except Exception:  # a broken messageExpression falls back, as in Kubernetes
                text = None
            if isinstance(text, str) and text.strip():
                return str(text)
        if self.message:
            return self.message
        return f"failed rule: {self.source}"


_INT64: Final = range(-(2**63), 2**63)
# Outcomes per rule (`Rule.check`). More than the distinct values one rule sees in a
# large fleet: an engine's spec rule sees one spec per model, 5,000 at 50,000 engines, in
# turn, and a memo smaller than that (least recently used first out) remembers none of
# them. ~200 bytes an outcome.
_REMEMBERED: Final = 65_536


def _text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _key(value: Any, fields: frozenset[str] | None) -> str:
    """The memo key of a value: its JSON text, or for an object of which the rule reads
    only `fields`, theirs alone (a field absent and a field null are told apart)."""
    if fields is None or not isinstance(value, dict):
        return _text(value)
    return _text([[name, name in value, value.get(name)] for name in sorted(fields)])


# What follows a variable: `.field`, not a call (`self.all(...)` reads all of self).
_SELECTED: Final = re.compile(r"\.\s*([A-Za-z_][A-Za-z0-9_]*)\s*(\()?")
# String literals, blanked before looking for variables. Raw, bytes and triple-quoted ones,
# and comments, are not parsed here: `_fields_read` then says it cannot tell.
_STRING: Final = re.compile(r"'(?:\\.|[^'\\\n])*'|\"(?:\\.|[^\"\\\n])*\"")
_UNPARSED: Final = re.compile(r"[rRbB]['\"]|'''|\"\"\"|//")


def _fields_read(sources: Sequence[str], variable: str) -> frozenset[str] | None:
    """The top-level fields of `variable` that CEL sources read, when every use of it is
    `variable.field` with a plain field name; None when one reads more, or when a word
    match cannot tell. Conservative: a field name that needs CEL escaping (`__dash__`),
    a method call on the variable, an index, an optional field (`self.?x`), or the
    variable on its own (`self == oldSelf`, `size(self)`) all say None."""
    fields: set[str] = set()
    word = re.compile(rf"(?<![A-Za-z0-9_.]){re.escape(variable)}(?![A-Za-z0-9_])")
    for source in sources:
        if _UNPARSED.search(source):
            return None
        code = _STRING.sub("''", source)
        for use in word.finditer(code):
            selected = _SELECTED.match(code, use.end())
            if selected is None or selected.group(2) or "__" in selected.group(1):
                return None
            fields.add(selected.group(1))
    return frozenset(fields)


def _old_value(old_json: Any) -> Any:
    try:
        return to_cel(old_json)
    except RecursionError:
        return None  # a stored object too deep to convert: its transition rules see null


def to_cel(value: Any) -> Any:
    """JSON value -> CEL value (maps, lists, ints, doubles, strings, bools, null).

    Integers beyond int64 become doubles, as Go's JSON decoding makes them; celpy's own
    converter raises on them.
    """
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return celtypes.IntType(value) if value in _INT64 else celtypes.DoubleType(value)
    if isinstance(value, dict):
        return celtypes.MapType({celtypes.StringType(str(k)): to_cel(v) for k, v in value.items()})
    if isinstance(value, list):
        return celtypes.ListType([to_cel(item) for item in value])
    return adapter.json_to_cel(value)


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _compile(source: str) -> celpy.Runner:
    try:
        ast = _ENV.compile(source)
        return _ENV.program(ast, functions=KUBERNETES_FUNCTIONS)
    except Exception as error:  # parse errors come as several exception types
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "syntax error"
        raise RuleCompileError(f"compilation failed: {first_line}") from error


# cel-go's words for the runtime errors celpy reports in its own: (pattern, message).
_RUNTIME_ERRORS: Final = (
    (re.compile(r"no such member in mapping: '([^']*)'"), "no such key: {0}"),
    (re.compile(r"(?i)modul|remainder"), "modulus by zero"),
    (re.compile(r"(?i)divi.*zero|zero.*divi"), "division by zero"),
    (re.compile(r"(?i)overflow|out of range for int|too large"), "integer overflow"),
    (re.compile(r"(?i)index.*out of range|list index"), "index out of bounds"),
    (re.compile(r"(?i)undeclared reference to '([^']*)'"), "no such attribute: {0}"),
)


def _error_text(error: BaseException) -> str | None:
    """cel-go's text for a runtime error, or None when it is a mismatched overload.

    Only fixed wordings leave this function, quoting at most a key of the object:
    celpy's text embeds parse-tree tokens, Python reprs and the whole activation.
    """
    args = getattr(error, "args", ())
    if _DURATION_CONVERSION in " ".join(str(arg) for arg in args):
        return _DURATION_CONVERSION
    text = " ".join(str(arg) for arg in args[:2]) if args else str(error)
    if isinstance(error, ZeroDivisionError):
        return "division by zero"
    for pattern, message in _RUNTIME_ERRORS:
        match = pattern.search(text)
        if match:
            return message.format(*match.groups())
    return None


# --- The Kubernetes CEL extension functions that CRDs commonly use -------------------
# (k8s.io/apiserver/pkg/cel/library: lists, strings, regex). celpy calls a method
# `x.f(a)` as `f(x, a)`.


# A duration is a Go time.Duration in cel-go: int64 nanoseconds, so time.ParseDuration
# refuses anything past 2562047h47m16.854775807s and the conversion is an error.
_GO_DURATION_NANOS: Final = 2**63 - 1
_DURATION_CONVERSION: Final = "type conversion error from 'string' to 'google.protobuf.Duration'"


def _duration(value: Any) -> celtypes.DurationType:
    try:
        parsed = celtypes.DurationType(value)
    except (ValueError, OverflowError, TypeError):
        raise ValueError(_DURATION_CONVERSION) from None
    nanos = (parsed.days * 86_400 + parsed.seconds) * 10**9 + parsed.microseconds * 1_000
    if abs(nanos) > _GO_DURATION_NANOS:
        raise ValueError(_DURATION_CONVERSION)
    return parsed


def _is_sorted(items: Sequence[Any]) -> celtypes.BoolType:
    return celtypes.BoolType(all(a <= b for a, b in itertools.pairwise(items)))


def _sum(items: Sequence[Any]) -> Any:
    total: Any = celtypes.IntType(0)
    for index, item in enumerate(items):
        total = item if index == 0 else total + item
    return total


def _min(items: Sequence[Any]) -> Any:
    return min(items)


def _max(items: Sequence[Any]) -> Any:
    return max(items)


def _index_of(container: Any, item: Any) -> celtypes.IntType:
    if isinstance(container, str):
        return celtypes.IntType(container.find(item))
    for index, candidate in enumerate(container):
        if candidate == item:
            return celtypes.IntType(index)
    return celtypes.IntType(-1)


def _last_index_of(container: Any, item: Any) -> celtypes.IntType:
    if isinstance(container, str):
        return celtypes.IntType(container.rfind(item))
    for index in range(len(container) - 1, -1, -1):
        if container[index] == item:
            return celtypes.IntType(index)
    return celtypes.IntType(-1)


def _lower_ascii(text: str) -> celtypes.StringType:
    return celtypes.StringType(text.translate(_LOWER))


def _upper_ascii(text: str) -> celtypes.StringType:
    return celtypes.StringType(text.translate(_UPPER))


_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_UPPER: Final = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _trim(text: str) -> celtypes.StringType:
    return celtypes.StringType(text.strip())


def _split(text: str, separator: str, *limit: int) -> celtypes.ListType:
    parts = text.split(separator, int(limit[0]) - 1) if limit and int(limit[0]) > 0 else (
        text.split(separator))
    return celtypes.ListType([celtypes.StringType(part) for part in parts])


def _join(items: Sequence[Any], *separator: str) -> celtypes.StringType:
    return celtypes.StringType((separator[0] if separator else "").join(map(str, items)))


def _replace(text: str, old: str, new: str, *count: int) -> celtypes.StringType:
    limit = int(count[0]) if count else -1
    return celtypes.StringType(text.replace(old, new, limit))


def _substring(text: str, start: int, *end: int) -> celtypes.StringType:
    stop = int(end[0]) if end else len(text)
    if not 0 <= int(start) <= stop <= len(text):
        raise ValueError(f"substring: index out of range: {start}..{stop}")
    return celtypes.StringType(text[int(start):stop])


def _char_at(text: str, index: int) -> celtypes.StringType:
    if not 0 <= int(index) <= len(text):
        raise ValueError(f"charAt: index out of range: {index}")
    return celtypes.StringType(text[int(index):int(index) + 1])


def _find(text: str, pattern: str) -> celtypes.StringType:
    match = re.search(pattern, text)
    return celtypes.StringType(match.group(0) if match else "")


def _find_all(text: str, pattern: str, *limit: int) -> celtypes.ListType:
    found = [m.group(0) for m in re.finditer(pattern, text)]
    if limit and int(limit[0]) >= 0:
        found = found[: int(limit[0])]
    return celtypes.ListType([celtypes.StringType(item) for item in found])


KUBERNETES_FUNCTIONS: Final[dict[str, Callable[..., Any]]] = {
    "duration": _duration,
    "isSorted": _is_sorted,
    "sum": _sum,
    "min": _min,
    "max": _max,
    "indexOf": _index_of,
    "lastIndexOf": _last_index_of,
    "lowerAscii": _lower_ascii,
    "upperAscii": _upper_ascii,
    "trim": _trim,
    "split": _split,
    "join": _join,
    "replace": _replace,
    "substring": _substring,
    "charAt": _char_at,
    "find": _find,
    "findAll": _find_all,
}
