"""The CRDs capguard ships pass apiextensions' schema admission on the embedded server, the
old root-metadata defect is refused as the recorded real server refuses it (300), and no
value a user sends makes a CEL rule leak cel-python's internals into a Status message."""
from __future__ import annotations

import copy
import json
import pathlib
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from capguard.localcluster import LocalCluster, ThreadedCluster, errors, structural

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "crds").glob("*.yaml"))
CRDS_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
MODELS = "/apis/capguard.dev/v1alpha1/namespaces/default/modelcapacities"
ENGINES = "/apis/capguard.dev/v1alpha1/namespaces/default/inferenceengines"
# What cel-python says in its own words; none of it may reach a user.
INTERNALS = ("Token(", "Tree(", "overload for", "celpy", "Error(", "Traceback", "relation_",
             "<class", "lark")


def shipped(path: pathlib.Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def send(base: str, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(), method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def empty_cluster() -> Iterator[ThreadedCluster]:
    with LocalCluster.start_in_thread() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def capguard_cluster() -> Iterator[ThreadedCluster]:
    with LocalCluster.start_in_thread(crds_dir=ROOT / "crds") as cluster:
        yield cluster


@pytest.mark.parametrize("path", SHIPPED, ids=[path.stem for path in SHIPPED])
def test_each_shipped_crd_is_admitted_by_a_post(empty_cluster: ThreadedCluster,
                                                path: pathlib.Path) -> None:
    status, body = send(empty_cluster.url, "POST", CRDS_PATH, shipped(path))
    assert status == 201, body.get("message")


def with_described_metadata(path: pathlib.Path) -> dict[str, Any]:
    """The defect controller-gen style CRDs had: a description on the root metadata."""
    crd = copy.deepcopy(shipped(path))
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    root["properties"]["metadata"]["description"] = "Standard object metadata."
    return crd


def test_a_description_on_root_metadata_is_refused_as_apiextensions_does(
        empty_cluster: ThreadedCluster) -> None:
    crd = with_described_metadata(ROOT / "crds" / "inferenceengines.capguard.dev.yaml")
    crd["metadata"]["name"] = "broken" + crd["metadata"]["name"]   # not created before
    crd["spec"]["names"] = {**crd["spec"]["names"], "plural": "broken" + crd["spec"]["names"][
        "plural"], "kind": "Broken", "listKind": "BrokenList", "singular": "broken"}
    crd["spec"]["names"].pop("shortNames", None)
    status, body = send(empty_cluster.url, "POST", CRDS_PATH, crd)
    assert status == 422
    assert body["details"]["causes"] == [{
        "reason": "FieldValueForbidden",
        "message": "Forbidden: must not specify anything other than name and generateName, "
                   "but metadata is implicitly specified",
        "field": "spec.validation.openAPIV3Schema.properties[metadata]"}]


def test_loading_crds_from_a_directory_goes_through_the_same_admission(
        tmp_path: pathlib.Path) -> None:
    path = ROOT / "crds" / "circuitbreakers.capguard.dev.yaml"
    (tmp_path / path.name).write_text(yaml.safe_dump(with_described_metadata(path)))
    cluster = LocalCluster()
    with pytest.raises(errors.ApiError) as refused:
        cluster.load_crds(tmp_path)
    assert refused.value.code == 422
    assert cluster.load_crds(ROOT / "crds") == sorted(
        shipped(path)["metadata"]["name"] for path in SHIPPED)


def model(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "capguard.dev/v1alpha1", "kind": "ModelCapacity",
            "metadata": {"name": name}, "spec": {"replicas": 3, **spec}}


def test_an_integer_too_big_for_int64_is_a_type_error_and_rules_do_not_run(
        capguard_cluster: ThreadedCluster) -> None:
    status, body = send(capguard_cluster.url, "POST", MODELS,
                        model("huge", replicas=12345678901234567890123, minAvailable=1))
    assert status == 422
    causes = {(cause["reason"], cause["field"]) for cause in body["details"]["causes"]}
    assert ("FieldValueTypeInvalid", "spec.replicas") in causes
    assert ("FieldValueInvalid", "<nil>") in causes     # "some validation rules were not checked"
    assert not [word for word in INTERNALS if word in body["message"]]


HOSTILE = [1e300, -1, 2**63 - 1, -(2**63), "", "%", "101%", "Token('RULE', 'x')", "9" * 40,
           True, None, [], {}, 0.5, "1e999", "\u0000", "90%%"]


@pytest.mark.parametrize("value", HOSTILE, ids=[repr(value)[:20] for value in HOSTILE])
def test_hostile_values_never_leak_cel_internals(capguard_cluster: ThreadedCluster,
                                                 value: Any) -> None:
    for field in ("minAvailable", "maxUnavailable", "replicas"):
        status, body = send(capguard_cluster.url, "POST", MODELS,
                            model(f"hostile-{abs(hash((field, repr(value)))) % 10**8}",
                                  **{field: value}))
        if status == 201:
            continue
        messages = [body["message"], *(cause["message"] for cause in
                                       body.get("details", {}).get("causes", []))]
        leaked = [(word, message) for message in messages for word in INTERNALS
                  if word in message and word not in repr(value)]
        assert not leaked, leaked


def test_an_unbounded_nested_loop_is_over_budget_and_bounds_bring_it_under() -> None:
    rule = {"rule": "self.all(x, self.all(y, x == y))"}
    unbounded = {"type": "object", "properties": {"names": {
        "type": "array", "items": {"type": "string"}, "x-kubernetes-validations": [rule]}}}
    bounded = copy.deepcopy(unbounded)
    bounded["properties"]["names"].update(maxItems=20)
    bounded["properties"]["names"]["items"]["maxLength"] = 30
    refused = structural.schema_causes(unbounded, path="schema")
    assert {cause["field"] for cause in refused} == {
        "schema", "schema.properties[names].x-kubernetes-validations[0].rule"}
    assert "more than 100x" in refused[0]["message"]
    assert structural.schema_causes(bounded, path="schema") == []


def test_a_pattern_that_does_not_compile_is_refused(empty_cluster: ThreadedCluster) -> None:
    # apiextensions compiles every `pattern` when the CRD is written; accepting "[" would
    # leave each CR of that field unchecked here and the CRD refused on a real cluster.
    crd = shipped(ROOT / "crds" / "inferenceengines.capguard.dev.yaml")
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["pool"]["pattern"] = "["
    status, body = send(empty_cluster.url, "POST", CRDS_PATH, crd)
    assert status == 422, body
    (cause,) = body["details"]["causes"]
    assert cause["reason"] == "FieldValueInvalid"
    assert cause["field"] == ("spec.validation.openAPIV3Schema.properties[spec]"
                              ".properties[pool].pattern")
    assert "must be a valid regular expression" in cause["message"]


@pytest.mark.parametrize("pool", ["h100-a\n", "h100-A"])
def test_a_pool_name_is_matched_as_gos_regexp_matches_it(
        capguard_cluster: ThreadedCluster, pool: str) -> None:
    # '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$': in Go's regexp `$` is the end of the text (Python's
    # `re` also matched before a final newline); a real API server
    # answers 422 "spec.pool in body should match ..." (shared/k8s-reference 044).
    engine = {"apiVersion": "capguard.dev/v1alpha1", "kind": "InferenceEngine",
              "metadata": {"name": f"ie-{len(pool)}-{ord(pool[-1])}"},
              "spec": {"pool": pool, "capacityUnits": 1}}
    status, body = send(capguard_cluster.url, "POST", ENGINES, engine)
    assert status == 422, body
    assert {(c["reason"], c["field"]) for c in body["details"]["causes"]} >= {
        ("FieldValueInvalid", "spec.pool")}
    assert any("spec.pool in body should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'"
               in c["message"] for c in body["details"]["causes"]), body


@pytest.mark.parametrize(("pattern", "compiles"), [
    ("(?=a)b", False),          # a look-ahead: Perl's, not RE2's
    (r"(a)\1", False),          # a back-reference
    (r"^\pL+$", True),          # a Unicode class: RE2's, which Python's `re` cannot read
    ("^[[:alpha:]]+$", True),   # a POSIX class
])
def test_a_pattern_compiles_exactly_when_gos_regexp_compiles_it(
        pattern: str, compiles: bool) -> None:
    schema_ = {"type": "object", "properties": {"name": {"type": "string", "pattern": pattern}}}
    causes = structural.schema_causes(schema_, path="schema")
    assert (causes == []) is compiles, causes
    if not compiles:
        (cause,) = causes
        assert cause["field"] == "schema.properties[name].pattern"
        assert "must be a valid regular expression, but isn't: error parsing regexp: " \
            in cause["message"]
