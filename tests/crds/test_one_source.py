"""The CRD schema is the one source of the API's fields, defaults and enums.

`crds/*.yaml` is what people edit and what the API server enforces. The core's parser
(`capguard.core.specs`) must read a body the server did not default exactly as the
server would have defaulted it, the core's enums and duration syntax must be the
schema's, and docs/api-contract.md must name every field with the schema's type, bounds,
default and enum (and no field the schema lacks). Each test below fails when one of those
copies goes stale.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from capguard.core import breaker, planner, specs

from .test_crds import (
    DURATIONS,
    GROUP,
    KINDS,
    LABEL_KEYS,
    LABEL_VALUES,
    SELECTORS,
    VERSION,
    Schema,
    admit,
    apply_defaults,
    in_match_expressions,
    in_match_labels,
    node_at,
    schema_of,
    walk,
)

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "api-contract.md"

# Bodies that give every optional part at its smallest: the schema's defaults fill them.
BODIES: list[tuple[str, dict[str, Any], Callable[[dict[str, Any]], object]]] = [
    ("InferenceEngine", {"pool": "p"}, specs.parse_engine),
    ("ModelCapacity", {"replicas": 4}, specs.parse_model),
    ("ModelCapacity", {"replicas": 4, "rateLimit": {"actionsPerMinute": 6}}, specs.parse_model),
    ("CircuitBreaker", {}, specs.parse_breaker),
    ("CircuitBreaker", {"autoTrip": {}, "rateLimit": {"actionsPerMinute": 6}},
     specs.parse_breaker),
]


@pytest.mark.parametrize(("kind", "spec", "parse"), BODIES,
                         ids=[f"{k}-{sorted(s)}" for k, s, _ in BODIES])
def test_the_parser_defaults_what_the_api_server_defaults(
    kind: str, spec: dict[str, Any], parse: Callable[[dict[str, Any]], object],
) -> None:
    """A body the server never defaulted (a test's, a replay's) parses to the same value
    as the one it stores: the dataclasses' defaults, which the parser reads, mirror the
    schema's, and this says when they stop."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
            "metadata": {"name": "x", "namespace": "ns"}, "spec": spec}
    assert parse(body) == parse(apply_defaults(kind, body))


ENUMS: list[tuple[type[enum.Enum], str, str]] = [
    (specs.Phase, "InferenceEngine", ".status.phase"),
    (planner.ActionType, "InferenceEngine", ".status.lastAction.type"),
    (planner.ActionType, "CircuitBreaker", ".status.releasePlan.actions[].type"),
    (breaker.BreakerState, "CircuitBreaker", ".status.state"),
    (specs.SelectorOperator, "ModelCapacity", ".spec.engineSelector.matchExpressions[].operator"),
    (specs.SelectorOperator, "CircuitBreaker", ".spec.selector.matchExpressions[].operator"),
]


def _node(kind: str, path: str) -> Schema:
    node: Schema | None = schema_of(kind)
    for part in path.strip(".").split("."):
        assert node is not None, path
        items = part.endswith("[]")
        node = node_at(node, "." + part.removesuffix("[]"))
        if items and node is not None:
            node = node["items"]
    assert node is not None, path
    return node


@pytest.mark.parametrize(("values", "kind", "path"), ENUMS,
                         ids=[f"{e.__name__}-{k}{p}" for e, k, p in ENUMS])
def test_the_core_enums_are_the_schemas(values: type[enum.Enum], kind: str, path: str) -> None:
    assert [v.value for v in values] == _node(kind, path)["enum"]


@pytest.mark.parametrize(("duration", "ok"), DURATIONS)
def test_the_parser_reads_the_durations_the_api_server_admits(duration: str, ok: bool) -> None:
    try:
        specs.parse_duration(duration)
    except ValueError:
        parsed = False
    else:
        parsed = True
    assert parsed is ok


def _selector_rules(kind: str) -> Iterator[str]:
    selector = schema_of(kind)["properties"]["spec"]["properties"][SELECTORS[kind]]
    for _, node in walk(selector):
        for validation in node.get("x-kubernetes-validations", []):
            if "matches(" in validation["rule"]:
                yield validation["rule"]


@pytest.mark.parametrize("kind", sorted(SELECTORS))
def test_the_selector_rules_quote_the_parsers_label_syntax(kind: str) -> None:
    """Every regex a selector rule matches against is one of the parser's, and a key's
    rule quotes the key syntax with the prefix bound, a value's the value syntax."""
    quoted = [re.findall(r"matches\('([^']*)'\)", rule) for rule in _selector_rules(kind)]
    key, prefix, value = (specs.LABEL_KEY.pattern, specs.LABEL_PREFIX_TOO_LONG.pattern,
                          specs.LABEL_VALUE.pattern)
    assert sorted(quoted) == sorted([[key, prefix], [key, prefix], [value], [value]])


def _parses(body: dict[str, Any]) -> bool:
    parse = specs.parse_model if body["kind"] == "ModelCapacity" else specs.parse_breaker
    try:
        parse(body)
    except specs.SpecError:
        return False
    return True


@pytest.mark.parametrize("kind", sorted(SELECTORS))
@pytest.mark.parametrize("place", [in_match_labels, in_match_expressions])
@pytest.mark.parametrize(("text", "ok"), [(text, ok) for text, ok in LABEL_KEYS + LABEL_VALUES],
                         ids=[text[:20] for text, _ in LABEL_KEYS + LABEL_VALUES])
def test_the_parser_refuses_the_labels_admission_refuses(
    kind: str, place: Callable[..., dict[str, Any]], text: str, ok: bool,
) -> None:
    """The same examples through admission and through the parser (bodies that bypass
    admission: the simulator's, a test's), as keys and as values."""
    for argument in ("key", "value"):
        body = place(kind, **{argument: text})
        assert (admit(body) == []) is _parses(body), (argument, text)


def test_the_parser_says_which_label_and_what_to_change() -> None:
    body = in_match_labels("ModelCapacity", key="bad key!")
    with pytest.raises(specs.SpecError) as refused:
        specs.parse_model(body)
    assert refused.value.field == "spec.engineSelector.matchLabels"
    assert "'bad key!' is not a label key" in refused.value.problem
    assert "a name of at most 63 characters" in refused.value.fix
    body = in_match_expressions("CircuitBreaker", value="bad value!")
    with pytest.raises(specs.SpecError) as refused:
        specs.parse_breaker(body)
    assert refused.value.field == "spec.selector.matchExpressions[0].values[1]"
    assert "at most 63 characters" in refused.value.fix


@pytest.mark.parametrize("kind", sorted(SELECTORS))
def test_the_contract_states_the_label_syntax(kind: str) -> None:
    bullet = re.search(rf"^- `{SELECTORS[kind]}`.*?(?=^- |\Z)", _parts(kind)["spec"],
                       re.MULTILINE | re.DOTALL)
    assert bullet, kind
    words = " ".join(bullet.group(0).split())
    assert "at most 253 characters" in words and "at most 63 characters" in words, words


# --- docs/api-contract.md --------------------------------------------------------------
#
# The contract's field lists are prose (why a field exists, what it does); the facts in
# them are checked here against the schema rather than generated from it.

# The schema's duration syntax; `_doc_type` calls a string of this pattern a duration.
DURATION = schema_of("CircuitBreaker")["properties"]["spec"]["properties"]["maxPlanAge"]["pattern"]

# What the contract writes first in a field's parentheses, per kind of schema node.
DOC_TYPES = {"string", "integer", "number", "boolean", "object", "list", "int-or-string",
             "duration", "date-time", "enum", "LabelSelector"}


def _doc_type(node: Schema) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    if "matchLabels" in node.get("properties", {}):
        return "LabelSelector"
    if node.get("pattern") == DURATION:
        return "duration"
    if node.get("format") == "date-time":
        return "date-time"
    if "enum" in node:
        return "enum"
    return "list" if node["type"] == "array" else str(node["type"])


def _section(kind: str) -> str:
    text = CONTRACT.read_text()
    start = text.index(f"### {kind} (")
    end = text.find("\n#", start + 1)
    return text[start:end if end != -1 else None]


def _parts(kind: str) -> dict[str, str]:
    """The contract's `spec:` and `status:` lists of a kind."""
    section = _section(kind)
    spec_at, status_at = section.index("\nspec:\n"), section.index("\nstatus:\n")
    return {"spec": section[spec_at:status_at], "status": section[status_at:]}


def _fields(schema: Schema, *, own: bool = True) -> Iterator[tuple[str, Schema]]:
    """(name, node) of every field under `schema`; with `own`, not those inside the label
    selectors and conditions, whose fields are Kubernetes' own."""
    for path, node in walk(schema):
        if own and re.search(r"(Selector|selector|conditions)[.\[]", path):
            continue
        name = path.rsplit(".", 1)[-1].removesuffix("[]")
        if name:
            yield name, node


def _stated_types(text: str, name: str) -> Iterator[tuple[str, str]]:
    """(type, words) wherever the contract writes `name` (type words...); "integers", of
    a list of fields, is read as "integer"."""
    for found in re.finditer(rf"`{name}`\s+\(([^)]*)", text):
        written = found.group(1).split(" ")[0].rstrip(",:;").removesuffix("s")
        if written in DOC_TYPES:
            yield written, found.group(1)


def _check_bounds(stated: str, node: Schema, where: str) -> None:
    """`integer >= 1`, `number > 0`, `number 0-1`: the schema's minimum and maximum."""
    if found := re.match(r"\S+ >= (-?\d+)", stated):
        assert node.get("minimum") == int(found.group(1)), where
        assert not node.get("exclusiveMinimum"), where
    if found := re.match(r"\S+ > (-?\d+)", stated):
        assert node.get("minimum") == int(found.group(1)), where
        assert node.get("exclusiveMinimum"), where
    if found := re.match(r"\S+ (-?\d+)-(\d+)", stated):
        assert (node.get("minimum"), node.get("maximum")) == tuple(map(int, found.groups())), where


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("part", ["spec", "status"])
def test_the_contract_names_exactly_the_schemas_fields(kind: str, part: str) -> None:
    """Every field of the part is named; every field the contract names (a camelCase word
    in backticks) is one of the part's, at any depth; in `spec:` each top-level field has
    its own bullet, and no other field does."""
    text, schema = _parts(kind)[part], schema_of(kind)["properties"][part]
    for name in schema["properties"]:
        assert f"`{name}`" in text, f"docs/api-contract.md ({kind} {part}) does not name {name}"
    known = {name for name, _ in _fields(schema, own=False)}
    named = set(re.findall(r"`([a-z][A-Za-z]*)`", text))
    assert named <= known, f"docs/api-contract.md ({kind} {part}) names {named - known}"
    if part == "spec":
        bullets = re.findall(r"^- `(\w+)`", text, re.MULTILINE)
        assert sorted(bullets) == sorted(schema["properties"]), f"{kind} spec bullets"


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("part", ["spec", "status"])
def test_the_contract_gives_each_field_the_schemas_type_and_bounds(kind: str, part: str) -> None:
    """Where the contract writes `field` (type ...), the type is the schema's, and so are
    any bound it states and, for a top-level field, whether it says "required"; a
    top-level spec field always has its type written."""
    text, schema = _parts(kind)[part], schema_of(kind)["properties"][part]
    for name, node in _fields(schema):
        stated = list(_stated_types(text, name))
        if part == "spec" and name in schema["properties"]:
            assert stated, f"docs/api-contract.md ({kind}) gives no type for {name}"
        for written, words in stated:
            where = f"docs/api-contract.md ({kind} {part}) {name}: ({words})"
            assert written == _doc_type(node), where
            _check_bounds(words, node, where)
            if name in schema["properties"]:  # "required with `batch`" is a CEL rule's
                required = re.search(r"\brequired\b(?! with)", words) is not None
                assert required is (name in schema.get("required", [])), where


def _shown(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_contract_gives_every_default(kind: str) -> None:
    text = _parts(kind)["spec"]
    for name, node in _fields(schema_of(kind)["properties"]["spec"]):
        if "default" not in node or isinstance(node["default"], dict):
            continue
        described = re.search(rf"`{name}`[^\n]*?default `?\"?([^`\")]+)", text)
        assert described, f"docs/api-contract.md ({kind}) gives no default for {name}"
        assert described.group(1) == _shown(node["default"]), (
            f"docs/api-contract.md ({kind}): {name} defaults to {described.group(1)}, "
            f"the CRD says {node['default']}")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_contract_gives_every_enum_and_the_duration_syntax(kind: str) -> None:
    section = _section(kind)
    for part in ("spec", "status"):
        for name, node in _fields(schema_of(kind)["properties"][part]):
            if "enum" in node:
                shown = "|".join(node["enum"])
                assert f"`{shown}`" in section, f"docs/api-contract.md ({kind}) {name}: {shown}"
            if _doc_type(node) == "duration":
                assert f"`{DURATION}`" in section, f"docs/api-contract.md ({kind}) durations"

