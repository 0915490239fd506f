"""The CRDs in crds/ and the samples in deploy/samples/, checked without a cluster.

Admission is the embedded API server's own code (`capguard.localcluster.schema`: prune,
defaults, types, bounds, enums, patterns, then the x-kubernetes-validations CEL rules),
not a copy of it; tests/localcluster holds that code to a real kube-apiserver's
recorded answers.
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from capguard.localcluster import schema as embedded

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
SAMPLES_DIR = ROOT / "deploy" / "samples"
INVALID_DIR = SAMPLES_DIR / "invalid"

GROUP = "capguard.dev"
VERSION = "v1alpha1"
KINDS = {
    "InferenceEngine": ("inferenceengines", "ie"),
    "ModelCapacity": ("modelcapacities", "mc"),
    "CircuitBreaker": ("circuitbreakers", "cb"),
}

Schema = dict[str, Any]
Errors = list[tuple[str, str]]


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def load_crds() -> dict[str, dict[str, Any]]:
    crds = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        (crd,) = load_docs(path)
        crds[crd["spec"]["names"]["kind"]] = crd
    return crds


CRDS = load_crds()


def version_of(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version


def schema_of(kind: str) -> Schema:
    return version_of(CRDS[kind])["schema"]["openAPIV3Schema"]


def sample_paths() -> list[Path]:
    kustomization = yaml.safe_load((SAMPLES_DIR / "Kustomization").read_text())
    return [SAMPLES_DIR / name for name in kustomization["resources"]]


def samples() -> list[dict[str, Any]]:
    return [doc for path in sample_paths() for doc in load_docs(path)]


def invalid_paths() -> list[Path]:
    return sorted(INVALID_DIR.glob("*.yaml"))


# --- walking schemas ---------------------------------------------------------------


def walk(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema node that describes a field, with its path. Skips the branches of
    anyOf, which only restate the int-or-string union and may carry no description."""
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def is_int_or_string(schema: Schema) -> bool:
    return bool(schema.get("x-kubernetes-int-or-string"))


def is_free_object(schema: Schema) -> bool:
    """metadata: the API server validates it itself, the schema only names it."""
    return schema.get("type") == "object" and not (
        "properties" in schema or "additionalProperties" in schema
    )


# One step of a printer column's path: a field, and optionally a filter on its items
# such as [?(@.type=="Ready")], as kubectl's columns select one condition.
_STEP = re.compile(r'\.([^.\[]+)(?:\[\?\(@\.([^=\s]+)\s*==\s*"([^"]*)"\)\])?')


def node_at(schema: Schema, json_path: str) -> Schema | None:
    """The schema node of a JSONPath such as .status.model or
    .status.conditions[?(@.type=="Ready")].status, or None."""
    node: Schema | None = schema
    position = 0
    while position < len(json_path):
        step = _STEP.match(json_path, position)
        if step is None or node is None:
            return None
        if is_free_object(node):
            return {"type": "string"}  # metadata.creationTimestamp and friends
        name, key, _ = step.groups()
        node = node.get("properties", {}).get(name)
        if key is not None:  # a filter reads the array's items, by one of their fields
            node = node.get("items") if node and node.get("type") == "array" else None
            if node is None or key not in node.get("properties", {}):
                return None
        position = step.end()
    return node


# --- admission: the embedded API server's own schema and CEL code -------------------
#
# Not a second implementation: `capguard.localcluster.schema.Schema` is what the embedded
# server runs on every write (prune, default, validate, CEL), and its agreement with a
# real kube-apiserver is what tests/localcluster replays from the recordings.


@functools.cache
def compiled(kind: str) -> embedded.Schema:
    found = embedded.Schema(schema_of(kind))
    assert found.rule_errors == [], found.rule_errors  # a real server refuses such a CRD
    return found


def apply_defaults(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The body as stored: pruned, then defaulted (nulls dropped first)."""
    schema = compiled(kind)
    return schema.apply_defaults(schema.prune(copy.deepcopy(body)))


def admit(body: dict[str, Any], old: dict[str, Any] | None = None) -> Errors:
    """What the API server reports for a create (or, with `old`, an update), as
    (field, message); [] when admitted."""
    causes = compiled(body["kind"]).validate(apply_defaults(body["kind"], body), old)
    return [(cause.field, cause.message) for cause in causes]


def all_validations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for kind in CRDS:
        for path, node in walk(schema_of(kind)):
            for validation in node.get("x-kubernetes-validations", []):
                yield kind, path, validation


# --- the CRDs ----------------------------------------------------------------------


def test_each_kind_has_one_crd_file_named_after_it() -> None:
    assert set(CRDS) == set(KINDS)
    for plural, _ in KINDS.values():
        assert (CRD_DIR / f"{plural}.{GROUP}.yaml").exists()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_crd_identity(kind: str) -> None:
    crd = CRDS[kind]
    plural, short_name = KINDS[kind]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{plural}.{GROUP}"
    assert crd["spec"]["group"] == GROUP
    assert crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert names["plural"] == plural
    assert names["shortNames"] == [short_name]
    assert names["categories"] == ["capguard"]
    version = version_of(crd)
    assert (version["name"], version["served"], version["storage"]) == (VERSION, True, True)
    assert version["subresources"]["status"] == {}


def test_model_capacity_has_the_scale_subresource() -> None:
    scale = version_of(CRDS["ModelCapacity"])["subresources"]["scale"]
    assert scale == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.serving",
        "labelSelectorPath": ".status.selector",
    }
    schema = schema_of("ModelCapacity")
    assert node_at(schema, ".spec.replicas")["type"] == "integer"
    assert node_at(schema, ".status.serving")["type"] == "integer"
    assert node_at(schema, ".status.selector")["type"] == "string"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_field_has_a_description(kind: str) -> None:
    """Except the root's `metadata`: apiextensions refuses anything there but `type`
    (and name/generateName restrictions), a description included (reference case 300)."""
    undescribed = [
        path or "<root>"
        for path, node in walk(schema_of(kind))
        if path != ".metadata" and not str(node.get("description", "")).strip()
    ]
    assert undescribed == []
    assert schema_of(kind)["properties"]["metadata"] == {"type": "object"}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_schema_is_structural(kind: str) -> None:
    """Every node has a type, except int-or-string, whose anyOf is exactly the union
    the API server allows (nothing else inside the branches)."""
    for path, node in walk(schema_of(kind)):
        if is_int_or_string(node):
            assert "type" not in node, path
            assert node.get("anyOf", [{"type": "integer"}, {"type": "string"}]) == [
                {"type": "integer"},
                {"type": "string"},
            ], path
        else:
            assert node.get("type") in {
                "object",
                "array",
                "string",
                "integer",
                "number",
                "boolean",
            }, path
            assert "anyOf" not in node, path


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_defaults_are_valid_values(kind: str) -> None:
    for path, node in walk(schema_of(kind)):
        if "default" in node:
            assert embedded.Schema(node).validate_value(copy.deepcopy(node["default"])) == [], (
                path)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_spec_strings_and_lists_are_bounded(kind: str) -> None:
    """The CEL cost estimator assumes unbounded strings and lists are as large as a
    request can be; bounding them keeps rules within the cost limit."""
    spec = schema_of(kind)["properties"]["spec"]
    for path, node in walk(spec, ".spec"):
        if node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, path
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if isinstance(node.get("additionalProperties"), dict):
            assert "maxProperties" in node, path


def test_a_column_path_follows_a_condition_filter_into_the_items() -> None:
    schema = schema_of("ModelCapacity")
    ready = node_at(schema, '.status.conditions[?(@.type=="Ready")].status')
    assert ready is not None and ready["type"] == "string"
    assert node_at(schema, '.status.conditions[?(@.kind=="Ready")].status') is None
    assert node_at(schema, '.status.serving[?(@.type=="Ready")]') is None  # not an array
    assert node_at(schema, '.status.conditions[?(@.type=="Ready")].nothing') is None


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_printer_columns_point_at_fields(kind: str) -> None:
    schema = schema_of(kind)
    for column in version_of(CRDS[kind])["additionalPrinterColumns"]:
        node = node_at(schema, column["jsonPath"])
        assert node is not None, column
        if column["type"] in {"integer", "boolean"}:
            assert node["type"] == column["type"], column
        if column["type"] == "date" and not column["jsonPath"].startswith(".metadata."):
            assert node.get("format") == "date-time", column


def test_printer_columns_answer_the_first_question() -> None:
    def columns(kind: str) -> list[str]:
        return [c["name"] for c in version_of(CRDS[kind])["additionalPrinterColumns"]]

    assert columns("InferenceEngine")[:3] == ["Model", "Phase", "Pool"]
    assert columns("ModelCapacity")[:6] == [
        "Desired", "Serving", "Floor", "Drift", "Available%", "Ready"]  # as Deployments: READY
    assert columns("CircuitBreaker")[:4] == ["State", "Since", "Held", "Refused"]
    for kind in KINDS:
        assert columns(kind)[-1] == "Age"


@pytest.mark.parametrize(
    "kind,path,validation",
    list(all_validations()),
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_cel_rules_compile_and_explain_themselves(
    kind: str, path: str, validation: dict[str, Any]
) -> None:
    assert compiled(kind).rule_errors == []  # every rule of the CRD compiled
    message = validation["message"]
    assert message.strip().endswith("."), "messages are sentences that say what to change"


def test_no_message_expression_concatenates_an_unbounded_string() -> None:
    # cel-go cannot bound string(x), so '...' + string(x) is estimated over any cost budget
    # and a real apiextensions refuses the CRD: messages stay static.
    for kind, path, validation in all_validations():
        assert "string(" not in validation.get("messageExpression", ""), (kind, path)


# --- the samples -------------------------------------------------------------------


def test_samples_form_a_realistic_fleet() -> None:
    by_kind: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for doc in samples():
        assert doc["apiVersion"] == f"{GROUP}/{VERSION}"
        assert "namespace" not in doc["metadata"], "samples are namespace-agnostic"
        by_kind[doc["kind"]].append(doc)
    engines, models = by_kind["InferenceEngine"], by_kind["ModelCapacity"]
    assert len(models) >= 3 and len(by_kind["CircuitBreaker"]) == 1
    assert len(engines) >= 10
    assert len({engine["spec"]["pool"] for engine in engines}) == 2
    for engine in engines:
        assert engine["metadata"]["labels"]["capguard.dev/pool"] == engine["spec"]["pool"]
    floors = {type(model["spec"]["minAvailable"]) for model in models}
    assert floors == {int, str}, "one absolute floor and at least one percent floor"
    assert any("rateLimit" in m["spec"] and "engineSelector" in m["spec"] for m in models)
    assert len({model["spec"]["priority"] for model in models}) == len(models)
    usable_units = sum(
        engine["spec"].get("capacityUnits", 1)
        for engine in engines
        if not engine["spec"].get("cordoned")
    )
    assert sum(model["spec"]["replicas"] for model in models) <= usable_units


@pytest.mark.parametrize(
    "body",
    samples(),
    ids=lambda body: f"{body['kind']}/{body['metadata']['name']}",
)
def test_sample_is_admitted(body: dict[str, Any]) -> None:
    assert admit(body) == []


def expected_error_path(path: Path) -> str:
    match = re.search(r"^# Expect error on: (\S+)$", path.read_text(), re.MULTILINE)
    assert match, f"{path.name} must say where the error is expected"
    return match.group(1)


@pytest.mark.parametrize("path", invalid_paths(), ids=lambda path: path.name)
def test_invalid_sample_is_rejected_where_it_says(path: Path) -> None:
    (body,) = load_docs(path)
    assert "# Rejected by:" in path.read_text()
    errors = admit(body)
    assert errors, f"{path.name} was admitted"
    assert expected_error_path(path) in {error_path.lstrip(".") for error_path, _ in errors}


def test_invalid_samples_cover_the_rules_the_design_names() -> None:
    names = {path.name for path in invalid_paths()}
    assert {
        "mc-floor-above-desired.yaml",
        "mc-negative-replicas.yaml",
        "mc-percent-over-100.yaml",
        "cb-bad-duration.yaml",
        "cb-approval-without-approver.yaml",
    } <= names


# --- single rules, attacked directly -------------------------------------------------


def model(**spec: Any) -> dict[str, Any]:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelCapacity"}
    return body | {"metadata": {"name": "m"}, "spec": spec}


@pytest.mark.parametrize(
    "min_available,ok",
    [
        (0, True),
        (4, True),
        (5, False),
        (-1, False),
        ("0%", True),
        ("100%", True),
        ("101%", False),
        ("090%", False),
        ("90", False),
        ("half", False),
        # null is dropped and defaulted to "90%", as the API server does
        (None, True),
    ],
)
def test_min_available(min_available: Any, ok: bool) -> None:
    assert (admit(model(replicas=4, minAvailable=min_available)) == []) is ok


@pytest.mark.parametrize(
    "max_unavailable,ok",
    [
        (1, True),
        (3, True),
        (0, False),
        ("25%", True),
        ("100%", True),
        ("0%", False),
        ("250%", False),
    ],
)
def test_max_unavailable(max_unavailable: Any, ok: bool) -> None:
    assert (admit(model(replicas=4, maxUnavailable=max_unavailable)) == []) is ok


def test_model_defaults_are_the_contract_ones() -> None:
    spec = apply_defaults("ModelCapacity", model(replicas=2))["spec"]
    assert spec == {"replicas": 2, "minAvailable": "90%", "maxUnavailable": 1, "priority": 0}


def test_breaker_defaults_make_an_empty_spec_a_closed_breaker() -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CircuitBreaker"}
    body = apply_defaults("CircuitBreaker", body | {"metadata": {"name": "b"}})
    assert body["spec"] == {
        "open": False,
        "pauseThreshold": "5m",
        "maxBatchAfterPause": 3,
        "halfOpenProbes": 2,
        "maxPlanAge": "10m",
    }


# Also what the core's parser must accept and refuse (test_one_source).
DURATIONS = [
    ("90s", True),
    ("5m", True),
    ("1h30m", True),
    ("1.5h", True),
    ("250ms", True),
    ("5", False),
    ("5 minutes", False),
    ("-5m", False),
    ("5d", False),
    ("", False),
    ("5m\n", False),  # Go's `$` is the end of the text
    ("2562048h", True),  # no rule reads pauseThreshold as a duration: see below
]


@pytest.mark.parametrize("duration,ok", DURATIONS)
def test_durations(duration: str, ok: bool) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CircuitBreaker"}
    body |= {"metadata": {"name": "b"}, "spec": {"pauseThreshold": duration}}
    assert (admit(body) == []) is ok


@pytest.mark.parametrize(("field", "duration", "ok"), [
    ("maxPlanAge", "2562047h", True),
    ("maxPlanAge", "2562048h", False),  # past Go's int64 nanoseconds: duration() errs
    ("window", "2562048h", False),
])
def test_a_duration_a_rule_reads_must_fit_gos_int64_nanoseconds(
        field: str, duration: str, ok: bool) -> None:
    spec: dict[str, Any] = ({"maxPlanAge": duration} if field == "maxPlanAge" else
                            {"autoTrip": {"window": duration}})
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CircuitBreaker",
            "metadata": {"name": "b"}, "spec": spec}
    errors = admit(body)
    assert (errors == []) is ok, errors
    if not ok:
        assert any("type conversion error from 'string' to 'google.protobuf.Duration'" in m
                   for _, m in errors), errors


# Kubernetes' label syntax; also what the core's parser must accept and refuse
# (test_one_source).
LABEL_KEYS = [
    ("tier", True),
    ("capguard.dev/pool", True),
    ("nvidia.com/gpu.product", True),
    ("A_b-c.9", True),
    ("a" * 63, True),
    ("a" * 253 + "/b", True),
    ("bad key!", False),
    ("a" * 64, False),
    ("a" * 254 + "/b", False),
    ("-tier", False),
    ("tier.", False),
    ("Capguard.dev/pool", False),
    ("/tier", False),
    ("capguard.dev/", False),
    ("a/b/c", False),
    ("", False),
]
LABEL_VALUES = [
    ("", True),
    ("h100", True),
    ("A_b-c.9", True),
    ("a" * 63, True),
    ("bad value!", False),
    ("a" * 64, False),
    ("-h100", False),
    ("h100_", False),
    ("pool/a", False),
]
SELECTORS = {"ModelCapacity": "engineSelector", "CircuitBreaker": "selector"}
KEY_MESSAGE = ("must be label keys: an optional prefix, a lowercase DNS subdomain of at most "
               "253 characters, and '/', then a name of at most 63 characters of letters, "
               "digits, '-', '_' or '.', beginning and ending with a letter or digit, for "
               "example capguard.dev/pool or tier.")
VALUE_MESSAGE = ("must be label values: empty, or at most 63 characters of letters, digits, "
                 "'-', '_' or '.', beginning and ending with a letter or digit.")


def selecting(kind: str, selector: dict[str, Any]) -> dict[str, Any]:
    """A ModelCapacity or CircuitBreaker whose selector is `selector`."""
    spec: dict[str, Any] = {SELECTORS[kind]: selector}
    if kind == "ModelCapacity":
        spec["replicas"] = 1
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": "x"},
            "spec": spec}


def in_match_labels(kind: str, *, key: str = "tier", value: str = "gold") -> dict[str, Any]:
    return selecting(kind, {"matchLabels": {key: value}})


def in_match_expressions(kind: str, *, key: str = "tier", value: str = "gold") -> dict[str, Any]:
    return selecting(kind, {"matchExpressions": [
        {"key": key, "operator": "In", "values": ["silver", value]}]})


@pytest.mark.parametrize("kind", sorted(SELECTORS))
@pytest.mark.parametrize("place", [in_match_labels, in_match_expressions])
@pytest.mark.parametrize(("key", "ok"), LABEL_KEYS, ids=[k[:20] for k, _ in LABEL_KEYS])
def test_selector_keys_are_label_keys(kind: str, place: Any, key: str, ok: bool) -> None:
    assert (admit(place(kind, key=key)) == []) is ok


@pytest.mark.parametrize("kind", sorted(SELECTORS))
@pytest.mark.parametrize("place", [in_match_labels, in_match_expressions])
@pytest.mark.parametrize(("value", "ok"), LABEL_VALUES, ids=[v[:20] for v, _ in LABEL_VALUES])
def test_selector_values_are_label_values(kind: str, place: Any, value: str, ok: bool) -> None:
    assert (admit(place(kind, value=value)) == []) is ok


@pytest.mark.parametrize("kind", sorted(SELECTORS))
def test_a_bad_selector_says_where_and_what_to_change(kind: str) -> None:
    at = f"spec.{SELECTORS[kind]}"
    errors = admit(selecting(kind, {
        "matchLabels": {"bad key!": "gold", "tier": "bad value!"},
        "matchExpressions": [{"key": "bad key!", "operator": "NotIn", "values": ["bad value!"]}],
    }))
    shown = 'Invalid value: "{}": {}.{} {}'
    assert sorted(errors) == sorted([
        (f"{at}.matchLabels", shown.format("object", at, "matchLabels keys", KEY_MESSAGE)),
        (f"{at}.matchLabels[tier]",
         shown.format("string", at, "matchLabels values", VALUE_MESSAGE)),
        (f"{at}.matchExpressions[0].key",
         shown.format("string", at, "matchExpressions keys", KEY_MESSAGE)),
        (f"{at}.matchExpressions[0].values[0]",
         shown.format("string", at, "matchExpressions values", VALUE_MESSAGE)),
    ])


@pytest.mark.parametrize(
    "approval,ok",
    [
        ({"batch": "b-1", "approvedBy": "ana"}, True),
        ({"batch": "b-1"}, False),
        ({"approvedBy": "ana"}, False),
        ({"batch": "", "approvedBy": "ana"}, False),
        ({}, True),
    ],
)
def test_approval_needs_a_batch_and_an_approver(approval: dict[str, str], ok: bool) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CircuitBreaker"}
    body |= {"metadata": {"name": "b"}, "spec": {"approval": approval}}
    assert (admit(body) == []) is ok


@pytest.mark.parametrize(
    "old,new,ok",
    [
        # A cordoned engine keeps its model, may be unassigned, but gets no new one.
        ({"cordoned": True, "modelRef": "a"}, {"cordoned": True, "modelRef": "a"}, True),
        ({"cordoned": True, "modelRef": "a"}, {"cordoned": True, "modelRef": ""}, True),
        ({"cordoned": True, "modelRef": "a"}, {"cordoned": True}, True),
        ({"cordoned": True, "modelRef": "a"}, {"cordoned": True, "modelRef": "b"}, False),
        ({"cordoned": True}, {"cordoned": True, "modelRef": "b"}, False),
        # Cordoning and rebinding in one write is a new assignment too.
        ({"cordoned": False, "modelRef": "a"}, {"cordoned": True, "modelRef": "b"}, False),
        ({"cordoned": False}, {"cordoned": False, "modelRef": "b"}, True),
        ({"cordoned": True, "modelRef": "a"}, {"cordoned": False, "modelRef": "b"}, True),
    ],
)
def test_cordoned_engine_gets_no_new_assignment(
    old: dict[str, Any], new: dict[str, Any], ok: bool
) -> None:
    def engine(spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceEngine",
                "metadata": {"name": "e"}, "spec": {"pool": "p"} | spec}

    stored = apply_defaults("InferenceEngine", engine(old))
    assert (admit(engine(new), old=stored) == []) is ok


def test_cordoned_engine_may_be_created_bound() -> None:
    """Transition rules do not run on create: an engine cordoned while serving can be
    recreated (for example restored from a backup) with its model."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferenceEngine"}
    body |= {"metadata": {"name": "e"}, "spec": {"pool": "p", "cordoned": True, "modelRef": "a"}}
    assert admit(body) == []


# --- rendering -------------------------------------------------------------------


@pytest.mark.kubectl
@pytest.mark.parametrize("directory", [CRD_DIR, SAMPLES_DIR], ids=["crds", "samples"])
def test_kustomize_renders(directory: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=True
    ).stdout
    kinds = [doc["kind"] for doc in yaml.safe_load_all(rendered) if doc]
    if directory == CRD_DIR:
        assert kinds == ["CustomResourceDefinition"] * 3
    else:
        assert len(kinds) == len(samples())
