"""Structural schemas: pruning, defaulting and validation as the real apiserver does them.

The expected causes are copied from a real kube-apiserver 1.24 (the reference
exchanges 020 and 040-045, recorded with the Widget CRD below).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from capguard.localcluster import schema

WIDGET_SCHEMA: dict[str, Any] = yaml.safe_load("""
type: object
required: [spec]
properties:
  spec:
    type: object
    required: [size]
    properties:
      size: {type: string, enum: [small, medium, large]}
      replicas: {type: integer, minimum: 0, maximum: 10, default: 1}
      color: {type: string, pattern: '^#[0-9a-f]{6}$'}
      port: {x-kubernetes-int-or-string: true}
      owner:
        type: object
        properties:
          name: {type: string}
          email: {type: string}
      config: {type: object, x-kubernetes-preserve-unknown-fields: true}
  status:
    type: object
    properties:
      replicas: {type: integer}
      selector: {type: string}
      phase: {type: string}
      observedGeneration: {type: integer, format: int64}
""")


@pytest.fixture(scope="module")
def widgets() -> schema.Schema:
    return schema.Schema(WIDGET_SCHEMA)


def widget(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "widgets.example.dev/v1", "kind": "Widget",
            "metadata": {"name": "wd-bad"}, "spec": spec}


def causes_of(s: schema.Schema, obj: dict[str, Any]) -> set[tuple[str, str, str]]:
    prepared = s.apply_defaults(s.prune(obj))
    return {(c.reason, c.message, c.field) for c in s.validate(prepared)}


# --- the recorded reference cases ------------------------------------------------------


def test_create_prunes_unknown_fields_and_defaults_replicas(widgets: schema.Schema) -> None:
    sent = {**widget(size="small", color="#00ff00", port="http",
                     owner={"name": "ann", "team": "pruned"},
                     config={"anything": {"goes": [1, "two", True]}}, unknownField="pruned"),
            "unknownTopLevel": "pruned", "status": {"phase": "SentOnCreate"}}
    stored = widgets.apply_defaults(widgets.prune(sent))
    assert stored["spec"] == {"size": "small", "color": "#00ff00", "port": "http",
                              "owner": {"name": "ann"},
                              "config": {"anything": {"goes": [1, "two", True]}},
                              "replicas": 1}
    assert "unknownTopLevel" not in stored
    assert stored["metadata"] == {"name": "wd-bad"}
    assert widgets.validate(stored) == []


def test_unknown_fields_are_named_as_strict_validation_names_them(
        widgets: schema.Schema) -> None:
    sent = {**widget(size="small", owner={"team": "x"}, unknownField=1), "unknownTopLevel": 1}
    assert widgets.unknown_fields(sent) == ["spec.owner.team", "spec.unknownField",
                                            "unknownTopLevel"]


def test_wrong_type(widgets: schema.Schema) -> None:  # 040, without the scale cause
    assert causes_of(widgets, widget(size="small", replicas="three")) == {
        ("FieldValueTypeInvalid",
         'Invalid value: "string": spec.replicas in body must be of type integer: "string"',
         "spec.replicas")}


def test_missing_required(widgets: schema.Schema) -> None:  # 041
    assert causes_of(widgets, widget(replicas=1)) == {
        ("FieldValueRequired", "Required value", "spec.size")}


def test_enum(widgets: schema.Schema) -> None:  # 042
    assert causes_of(widgets, widget(size="huge")) == {
        ("FieldValueNotSupported",
         'Unsupported value: "huge": supported values: "small", "medium", "large"',
         "spec.size")}


def test_below_minimum(widgets: schema.Schema) -> None:  # 043, without the scale cause
    assert causes_of(widgets, widget(size="small", replicas=-1)) == {
        ("FieldValueInvalid",
         "Invalid value: -1: spec.replicas in body should be greater than or equal to 0",
         "spec.replicas")}


def test_pattern(widgets: schema.Schema) -> None:  # 044
    assert causes_of(widgets, widget(size="small", color="green")) == {
        ("FieldValueInvalid",
         "Invalid value: \"green\": spec.color in body should match '^#[0-9a-f]{6}$'",
         "spec.color")}


def test_several_violations_at_once(widgets: schema.Schema) -> None:  # 045
    assert causes_of(widgets, widget(size="huge", replicas=11, color="green", port=[80])) == {
        ("FieldValueNotSupported",
         'Unsupported value: "huge": supported values: "small", "medium", "large"',
         "spec.size"),
        ("FieldValueInvalid",
         "Invalid value: \"green\": spec.color in body should match '^#[0-9a-f]{6}$'",
         "spec.color"),
        ("FieldValueTypeInvalid",
         'Invalid value: "array": spec.port in body must be of type integer,string: "array"',
         "spec.port"),
        ("FieldValueInvalid",
         "Invalid value: 11: spec.replicas in body should be less than or equal to 10",
         "spec.replicas"),
    }


def test_missing_spec_is_required_at_the_root(widgets: schema.Schema) -> None:
    obj = widget()
    del obj["spec"]
    assert causes_of(widgets, obj) == {("FieldValueRequired", "Required value", "spec")}


# --- the other value validations --------------------------------------------------------

BOUNDS = schema.Schema(yaml.safe_load("""
type: object
properties:
  spec:
    type: object
    properties:
      name: {type: string, minLength: 2, maxLength: 4}
      ratio: {type: number, exclusiveMinimum: true, minimum: 0, exclusiveMaximum: true,
              maximum: 1}
      step: {type: integer, multipleOf: 5}
      tags: {type: array, minItems: 1, maxItems: 2, items: {type: string}}
      unique: {type: array, uniqueItems: true, items: {type: integer}}
      labels: {type: object, maxProperties: 1, minProperties: 1,
               additionalProperties: {type: string}}
      when: {type: string, format: date-time}
      id: {type: string, format: uuid}
      maybe: {type: string, nullable: true}
      set: {type: array, x-kubernetes-list-type: set, items: {type: string}}
      ports:
        type: array
        x-kubernetes-list-type: map
        x-kubernetes-list-map-keys: [name]
        items: {type: object, properties: {name: {type: string}, port: {type: integer}}}
"""))


@pytest.mark.parametrize(("spec", "expected"), [
    ({"name": "abcde"}, ("FieldValueTooLong", "Too long: may not be longer than 4", "spec.name")),
    ({"name": "a"}, ("FieldValueInvalid",
                     'Invalid value: "a": spec.name in body should be at least 2 chars long',
                     "spec.name")),
    ({"ratio": 0}, ("FieldValueInvalid",
                    "Invalid value: 0: spec.ratio in body should be greater than 0",
                    "spec.ratio")),
    ({"ratio": 1.0}, ("FieldValueInvalid",
                      "Invalid value: 1: spec.ratio in body should be less than 1",
                      "spec.ratio")),
    ({"step": 7}, ("FieldValueInvalid",
                   "Invalid value: 7: spec.step in body should be a multiple of 5",
                   "spec.step")),
    ({"tags": []}, ("FieldValueInvalid",
                    "Invalid value: 0: spec.tags in body should have at least 1 items",
                    "spec.tags")),
    ({"tags": ["a", "b", "c"]}, ("FieldValueTooMany",
                                 "Too many: 3: must have at most 2 items", "spec.tags")),
    ({"unique": [1, 2, 1]}, ("FieldValueInvalid",
                             'Invalid value: "": spec.unique in body shouldn\'t contain'
                             " duplicates", "spec.unique")),
    ({"labels": {"a": "1", "b": "2"}}, ("FieldValueTooMany",
                                        "Too many: 2: must have at most 1 items",
                                        "spec.labels")),
    ({"labels": {"a": 1}}, ("FieldValueTypeInvalid",
                            'Invalid value: "integer": spec.labels.a in body must be of type'
                            ' string: "integer"', "spec.labels.a")),
    ({"when": "yesterday"}, ("FieldValueTypeInvalid",
                             'Invalid value: "yesterday": spec.when in body must be of type'
                             ' date-time: "yesterday"', "spec.when")),
    ({"id": "not-a-uuid"}, ("FieldValueTypeInvalid",
                            'Invalid value: "not-a-uuid": spec.id in body must be of type'
                            ' uuid: "not-a-uuid"', "spec.id")),
    ({"set": ["a", "b", "a"]}, ("FieldValueDuplicate", 'Duplicate value: "a"', "spec.set[2]")),
    ({"ports": [{"name": "http", "port": 80}, {"name": "http", "port": 81}]},
     ("FieldValueDuplicate", 'Duplicate value: map[string]interface {}{"name":"http"}',
      "spec.ports[1]")),
])
def test_value_validations(spec: dict[str, Any], expected: tuple[str, str, str]) -> None:
    assert causes_of(BOUNDS, {"spec": spec}) == {expected}


@pytest.mark.parametrize("spec", [
    {"name": "abcd", "ratio": 0.5, "step": 10, "tags": ["x"], "unique": [1, 2],
     "labels": {"a": "b"}, "when": "2024-01-02T03:04:05Z",
     "id": "0f8fad5b-d9cb-469f-a165-70867728950e", "maybe": None, "set": ["a", "b"],
     "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]},
    {"ratio": 0.25, "when": "2024-01-02T03:04:05.123+01:00"},
])
def test_valid_values_pass(spec: dict[str, Any]) -> None:
    assert causes_of(BOUNDS, {"spec": spec}) == set()


def test_integral_float_is_an_integer_and_is_stored_as_one(widgets: schema.Schema) -> None:
    # Go decodes 2.0 as float64; kube-openapi accepts it for type integer.
    pruned = widgets.prune(widget(size="small", replicas=2.0))
    assert pruned["spec"]["replicas"] == 2
    assert isinstance(pruned["spec"]["replicas"], int)
    assert widgets.validate(widget(size="small", replicas=2.0)) == []
    assert causes_of(widgets, widget(size="small", replicas=2.5)) == {
        ("FieldValueTypeInvalid",
         'Invalid value: "number": spec.replicas in body must be of type integer: "number"',
         "spec.replicas")}


def test_boolean_is_not_an_integer(widgets: schema.Schema) -> None:
    assert causes_of(widgets, widget(size="small", replicas=True)) == {
        ("FieldValueTypeInvalid",
         'Invalid value: "boolean": spec.replicas in body must be of type integer:'
         ' "boolean"', "spec.replicas")}


def test_null_in_non_nullable_field_means_default(widgets: schema.Schema) -> None:
    defaulted = widgets.apply_defaults(widget(size="small", replicas=None, color=None))
    assert defaulted["spec"] == {"size": "small", "replicas": 1}


# --- pruning and defaulting details -------------------------------------------------------

NESTED = schema.Schema(yaml.safe_load("""
type: object
properties:
  spec:
    type: object
    default: {}
    properties:
      mode: {type: string, default: fast}
      limits:
        type: object
        properties:
          cpu: {type: string, default: "1"}
      items:
        type: array
        items:
          type: object
          properties:
            weight: {type: integer, default: 1}
      free:
        type: object
        x-kubernetes-preserve-unknown-fields: true
        properties:
          known: {type: object, properties: {a: {type: string}}}
      template:
        type: object
        x-kubernetes-embedded-resource: true
        properties:
          spec: {type: object, properties: {x: {type: string}}}
      byName:
        type: object
        additionalProperties:
          type: object
          properties: {size: {type: integer, default: 3}}
"""))


def test_defaults_apply_only_where_the_parent_exists() -> None:
    defaulted = NESTED.apply_defaults({"spec": {}})
    assert defaulted["spec"] == {"mode": "fast"}  # no limits object invented


def test_defaulted_parent_gets_its_childrens_defaults() -> None:
    assert NESTED.apply_defaults({})["spec"] == {"mode": "fast"}


def test_defaults_reach_list_items_and_additional_properties() -> None:
    defaulted = NESTED.apply_defaults(
        {"spec": {"items": [{}, {"weight": 5}], "limits": {}, "byName": {"a": {}}}})
    assert defaulted["spec"]["items"] == [{"weight": 1}, {"weight": 5}]
    assert defaulted["spec"]["limits"] == {"cpu": "1"}
    assert defaulted["spec"]["byName"] == {"a": {"size": 3}}


def test_preserve_unknown_fields_keeps_unknown_but_prunes_declared_children() -> None:
    pruned = NESTED.prune({"spec": {"free": {"x": {"y": 1}, "known": {"a": "1", "b": 2}}}})
    assert pruned["spec"]["free"] == {"x": {"y": 1}, "known": {"a": "1"}}


def test_embedded_resource_keeps_api_version_kind_metadata() -> None:
    template = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                "spec": {"x": "1", "y": 2}, "other": 1}
    pruned = NESTED.prune({"spec": {"template": template}})
    assert pruned["spec"]["template"] == {"apiVersion": "v1", "kind": "Pod",
                                          "metadata": {"name": "p"}, "spec": {"x": "1"}}


def test_embedded_resource_needs_api_version_and_kind() -> None:
    assert causes_of(NESTED, {"spec": {"template": {"kind": "Pod"}}}) == {
        ("FieldValueRequired", "Required value: must not be empty",
         "spec.template.apiVersion")}


def test_prune_and_default_do_not_touch_their_input() -> None:
    sent = {"spec": {"items": [{}], "unknown": 1, "free": {"z": [1]}}}
    before = copy.deepcopy(sent)
    pruned = NESTED.prune(sent)
    pruned["spec"]["free"]["z"].append(2)
    NESTED.apply_defaults(sent)["spec"]["items"][0]["weight"] = 9
    assert sent == before


# --- robustness: nothing a client sends can crash the server --------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["spec", "status", "size", "replicas", "color", "port",
                                       "owner", "config", "name", "items", "free", "template",
                                       "apiVersion", "kind", "metadata", "x", "byName"])
                      | st.text(max_size=4), children, max_size=5),
    max_leaves=25)
objects = st.dictionaries(st.sampled_from(["apiVersion", "kind", "metadata", "spec", "status",
                                           "extra"]), json_values, max_size=5)
SCHEMAS = [schema.Schema(WIDGET_SCHEMA), BOUNDS, NESTED]


@settings(max_examples=300, deadline=None)
@given(obj=objects, old=st.none() | objects, which=st.sampled_from(range(len(SCHEMAS))))
def test_arbitrary_input_never_raises(obj: dict[str, Any], old: dict[str, Any] | None,
                                      which: int) -> None:
    s = SCHEMAS[which]
    prepared = s.apply_defaults(s.prune(obj))
    assert all(isinstance(c, schema.Cause) for c in s.validate(prepared, old))
    assert all(isinstance(c, schema.Cause) for c in s.validate(obj, old))
    assert all(isinstance(p, str) for p in s.unknown_fields(obj))


@settings(max_examples=300, deadline=None)
@given(obj=objects, which=st.sampled_from(range(len(SCHEMAS))))
def test_prune_and_default_are_idempotent(obj: dict[str, Any], which: int) -> None:
    s = SCHEMAS[which]
    pruned = s.prune(obj)
    assert s.prune(pruned) == pruned
    assert s.unknown_fields(pruned) == []
    defaulted = s.apply_defaults(pruned)
    assert s.apply_defaults(defaulted) == defaulted


@settings(max_examples=200, deadline=None)
@given(obj=objects)
def test_schema_of_arbitrary_shape_compiles_and_runs(obj: dict[str, Any]) -> None:
    # A CRD author can write nonsense too (wrong types for keywords): no crash either.
    s = schema.Schema(obj)
    s.validate(s.apply_defaults(s.prune(obj)))


# --- speed ------------------------------------------------------------------------------------


def test_validating_a_small_object_takes_well_under_a_millisecond(
        widgets: schema.Schema) -> None:
    obj = widgets.apply_defaults(widgets.prune(widget(size="small", color="#00ff00",
                                                      port=80, owner={"name": "ann"})))
    rounds = 2000
    started = time.perf_counter()
    for _ in range(rounds):
        widgets.validate(obj)
    assert (time.perf_counter() - started) / rounds < 0.0005


def test_deeply_nested_input_is_handled() -> None:
    deep: Any = "leaf"
    for _ in range(5000):
        deep = {"n": deep}
    s = schema.Schema(yaml.safe_load("""
type: object
x-kubernetes-validations: [{rule: "has(self.spec)"}]
properties:
  spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""))
    obj = {"spec": deep, "drop": deep}
    pruned = s.apply_defaults(s.prune(obj))
    assert "drop" not in pruned
    assert [c.reason for c in s.validate(pruned, pruned)] == ["FieldValueInvalid"]


@pytest.mark.parametrize(("declared", "value", "message"), [
    ("{type: integer, format: int32}", 2**31,
     'Invalid value: "": Checked value must be of type integer with format int32 in spec.n'),
    ("{type: number, format: float}", 1e39,
     'Invalid value: "": Checked value must be of type number with format float in spec.n'),
])
def test_numbers_must_fit_their_format(declared: str, value: Any, message: str) -> None:
    s = schema.Schema(yaml.safe_load(f"{{type: object, properties: {{spec: {{type: object,"
                                     f" properties: {{n: {declared}}}}}}}}}"))
    assert causes_of(s, {"spec": {"n": value}}) == {("FieldValueInvalid", message, "spec.n")}
    assert causes_of(s, {"spec": {"n": 7}}) == set()


def test_an_integer_beyond_int64_is_not_an_integer() -> None:
    # Go decodes it as a float64 above 2^53, which kube-openapi does not take for an integer.
    s = schema.Schema(yaml.safe_load("{type: object, properties: {spec: {type: object, "
                                     "properties: {n: {type: integer}}}}}"))
    assert causes_of(s, {"spec": {"n": 2**63}}) == {(
        "FieldValueTypeInvalid",
        'Invalid value: "number": spec.n in body must be of type integer: "number"', "spec.n")}
    assert causes_of(s, {"spec": {"n": 2**63 - 1}}) == set()
