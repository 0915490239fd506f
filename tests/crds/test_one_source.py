"""The CRD schema is the one source of the API's fields, defaults and enums.

`crds/*.yaml` is what people edit and what the API server enforces. The core's parser
(`capguard.core.specs`) must read a body the server did not default exactly as the
server would have defaulted it, the core's enums must be the schema's, and the field
lists of docs/api-contract.md must name every field with its default. Each test below
fails when one of those copies goes stale.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from capguard.core import breaker, planner, specs

from .test_crds import GROUP, VERSION, apply_defaults, node_at, schema_of

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
    as the one it stores: the parser's defaults mirror the schema's, and this says when
    they stop."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
            "metadata": {"name": "x", "namespace": "ns"}, "spec": spec}
    assert parse(body) == parse(apply_defaults(kind, body))


ENUMS: list[tuple[type[enum.Enum], str, str]] = [
    (specs.Phase, "InferenceEngine", ".status.phase"),
    (planner.ActionType, "InferenceEngine", ".status.lastAction.type"),
    (breaker.BreakerState, "CircuitBreaker", ".status.state"),
    (specs.SelectorOperator, "ModelCapacity", ".spec.engineSelector.matchExpressions[].operator"),
    (specs.SelectorOperator, "CircuitBreaker", ".spec.selector.matchExpressions[].operator"),
]


def _node(kind: str, path: str) -> dict[str, Any]:
    node: dict[str, Any] | None = schema_of(kind)
    for part in path.strip(".").split("."):
        assert node is not None, path
        items = part.endswith("[]")
        node = node_at(node, "." + part.removesuffix("[]"))
        if items and node is not None:
            node = node["items"]
    assert node is not None, path
    return node


@pytest.mark.parametrize(("values", "kind", "path"), ENUMS,
                         ids=[f"{e.__name__}-{k}" for e, k, _ in ENUMS])
def test_the_core_enums_are_the_schemas(values: type[enum.Enum], kind: str, path: str) -> None:
    assert [v.value for v in values] == _node(kind, path)["enum"]


def _section(kind: str) -> str:
    text = CONTRACT.read_text()
    start = text.index(f"### {kind} (")
    end = text.find("\n### ", start + 1)
    return text[start:end if end != -1 else None]


def _spec_fields(kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every field of the spec, nested objects' fields too (not the label selectors',
    which are Kubernetes' own)."""
    spec = schema_of(kind)["properties"]["spec"]["properties"]
    for name, node in spec.items():
        yield name, node
        if name.endswith(("Selector", "selector")):
            continue
        yield from node.get("properties", {}).items()


def _shown(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("kind", ["InferenceEngine", "ModelCapacity", "CircuitBreaker"])
def test_the_contract_names_every_field_with_its_default(kind: str) -> None:
    section = _section(kind)
    for name, node in _spec_fields(kind):
        assert f"`{name}`" in section, f"docs/api-contract.md ({kind}) does not name {name}"
        if "default" not in node or isinstance(node["default"], dict):
            continue
        described = re.search(rf"`{name}`[^\n]*?default `?\"?([^`\")]+)", section)
        assert described, f"docs/api-contract.md ({kind}) gives no default for {name}"
        assert described.group(1) == _shown(node["default"]), (
            f"docs/api-contract.md ({kind}): {name} defaults to {described.group(1)}, "
            f"the CRD says {node['default']}")
