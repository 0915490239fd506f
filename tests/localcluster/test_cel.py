"""x-kubernetes-validations: CEL rules as Kubernetes 1.29+ evaluates them on CRDs."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from capguard.localcluster import cel, schema


def compiled(text: str) -> schema.Schema:
    return schema.Schema(yaml.safe_load(text))


def causes(s: schema.Schema, obj: dict[str, Any],
           old: dict[str, Any] | None = None) -> list[tuple[str, str, str]]:
    return [(c.reason, c.message, c.field) for c in s.validate(obj, old)]


REPLICAS = compiled("""
type: object
properties:
  spec:
    type: object
    x-kubernetes-validations:
    - rule: "!has(self.minAvailable) || self.minAvailable <= self.replicas"
      message: minAvailable must not exceed replicas
      fieldPath: .minAvailable
    - rule: "self.replicas < 100"
    - rule: "self.replicas != 13"
      messageExpression: "'replicas ' + string(self.replicas) + ' is unlucky'"
      reason: FieldValueForbidden
    properties:
      replicas: {type: integer}
      minAvailable: {type: integer}
""")


def test_rule_failure_is_reported_at_the_node_as_invalid_object() -> None:
    assert causes(REPLICAS, {"spec": {"replicas": 100}}) == [
        ("FieldValueInvalid", 'Invalid value: "object": failed rule: self.replicas < 100',
         "spec")]


def test_message_and_field_path() -> None:
    assert causes(REPLICAS, {"spec": {"replicas": 1, "minAvailable": 2}}) == [
        ("FieldValueInvalid", 'Invalid value: "object": minAvailable must not exceed replicas',
         "spec.minAvailable")]


def test_message_expression_and_reason() -> None:
    assert causes(REPLICAS, {"spec": {"replicas": 13}}) == [
        ("FieldValueForbidden", "Forbidden: replicas 13 is unlucky", "spec")]


def test_runtime_error_becomes_an_invalid_cause_not_a_crash() -> None:
    # self.replicas is missing: cel-go says "no such key", and apiextensions names the rule.
    assert causes(REPLICAS, {"spec": {}}) == [
        ("FieldValueInvalid", 'Invalid value: "object": no such key: replicas evaluating rule: '
                              "self.replicas < 100", "spec"),
        ("FieldValueInvalid", 'Invalid value: "object": no such key: replicas evaluating rule: '
                              "self.replicas != 13", "spec")]


def test_passing_rules_give_no_causes() -> None:
    assert causes(REPLICAS, {"spec": {"replicas": 3, "minAvailable": 2}}) == []


TRANSITION = compiled("""
type: object
properties:
  spec:
    type: object
    properties:
      pool:
        type: string
        x-kubernetes-validations:
        - rule: self == oldSelf
          message: pool is immutable
          reason: FieldValueForbidden
      items:
        type: array
        items:
          type: object
          properties:
            name: {type: string}
          x-kubernetes-validations:
          - rule: self.name.startsWith('x')
            reason: FieldValueRequired
            message: names start with x
""")


def test_transition_rule_is_skipped_on_create() -> None:
    assert causes(TRANSITION, {"spec": {"pool": "a"}}) == []


def test_transition_rule_runs_on_update() -> None:
    assert causes(TRANSITION, {"spec": {"pool": "b"}}, old={"spec": {"pool": "a"}}) == [
        ("FieldValueForbidden", "Forbidden: pool is immutable", "spec.pool")]
    assert causes(TRANSITION, {"spec": {"pool": "a"}}, old={"spec": {"pool": "a"}}) == []


def test_transition_rule_is_skipped_where_the_old_value_is_absent() -> None:
    assert causes(TRANSITION, {"spec": {"pool": "b"}}, old={"spec": {}}) == []


def test_rules_on_list_items_name_the_item() -> None:
    assert causes(TRANSITION, {"spec": {"items": [{"name": "xa"}, {"name": "b"}]}}) == [
        ("FieldValueRequired", "Required value: names start with x", "spec.items[1]")]


NUMBERS = compiled("""
type: object
properties:
  spec:
    type: object
    properties:
      ratio:
        type: number
        x-kubernetes-validations: [{rule: "self >= 0.5"}]
      floor:
        x-kubernetes-int-or-string: true
        x-kubernetes-validations:
        - rule: "type(self) == string ? self.matches('^[0-9]+%$') : self >= 0"
          message: a count of 0 or more, or a percent
      tags:
        type: array
        items: {type: string}
        x-kubernetes-validations:
        - rule: self.isSorted() && self.all(t, t.lowerAscii() == t)
          reason: FieldValueDuplicate
""")


def test_number_field_holding_an_integer_compares_with_doubles() -> None:
    # JSON 1 under type: number is a double in CEL; cel-python alone would fail here.
    assert causes(NUMBERS, {"spec": {"ratio": 1}}) == []
    assert causes(NUMBERS, {"spec": {"ratio": 0.25}}) == [
        ("FieldValueInvalid", 'Invalid value: "number": failed rule: self >= 0.5',
         "spec.ratio")]


@pytest.mark.parametrize(("floor", "ok"), [(3, True), ("50%", True), (-1, False),
                                           ("half", False)])
def test_int_or_string_rules(floor: Any, ok: bool) -> None:
    found = causes(NUMBERS, {"spec": {"floor": floor}})
    assert (found == []) is ok
    if not ok:
        assert found == [("FieldValueInvalid",
                          'Invalid value: "": a count of 0 or more, or a percent',
                          "spec.floor")]


def test_kubernetes_list_and_string_extensions() -> None:
    assert causes(NUMBERS, {"spec": {"tags": ["a", "b"]}}) == []
    assert causes(NUMBERS, {"spec": {"tags": ["b", "a"]}}) == [
        ("FieldValueDuplicate", 'Duplicate value: "array"', "spec.tags")]
    assert causes(NUMBERS, {"spec": {"tags": ["A"]}}) != []


def test_root_rule_sees_only_name_and_generate_name_of_metadata() -> None:
    s = compiled("""
type: object
x-kubernetes-validations:
- rule: "self.metadata.name.startsWith('ok-') && !has(self.metadata.labels)"
""")
    assert causes(s, {"metadata": {"name": "ok-1", "labels": {"a": "b"}}}) == []


def test_rule_that_does_not_parse_is_reported_at_compile_time() -> None:
    s = compiled("""
type: object
properties:
  spec:
    type: object
    x-kubernetes-validations: [{rule: "self.x >"}]
""")
    assert [c.field for c in s.rule_errors] == ["spec.x-kubernetes-validations"]
    assert s.validate({"spec": {}}) == []


@pytest.mark.parametrize(("rule", "value", "holds"), [
    ("size(self) == 2", ["a", "b"], True),
    ("self.exists(x, x == 'b')", ["a", "b"], True),
    ("self.sum() == 6", [1, 2, 3], True),
    ("self.min() == 1 && self.max() == 3", [3, 1, 2], True),
    ("self.indexOf(2) == 1 && self.lastIndexOf(9) == -1", [1, 2], True),
    ("self.join('-') == 'a-b'", ["a", "b"], True),
])
def test_list_library(rule: str, value: Any, holds: bool) -> None:
    outcome = cel.Rule({"rule": rule}).evaluate(self_value=cel.to_cel(value))
    assert (outcome is None) is holds


@pytest.mark.parametrize(("rule", "value"), [
    ("self.split(',') == ['a', 'b']", "a,b"),
    ("self.trim() == 'x'", "  x "),
    ("self.upperAscii() == 'AB'", "ab"),
    ("self.replace('a', 'b') == 'bb'", "ab"),
    ("self.substring(1) == 'b' && self.charAt(0) == 'a'", "ab"),
    ("self.find('[0-9]+') == '12' && self.findAll('[0-9]') == ['1', '2']", "a12"),
    ("duration(self) > duration('1m')", "90s"),
    ("int(self) == 5 && string(5) == self", "5"),
])
def test_string_library(rule: str, value: Any) -> None:
    assert cel.Rule({"rule": rule}).evaluate(self_value=cel.to_cel(value)) is None


def test_non_boolean_result_is_a_failure() -> None:
    outcome = cel.Rule({"rule": "self + 1"}).evaluate(self_value=cel.to_cel(1))
    assert outcome == cel.Outcome("FieldValueInvalid", "rule did not evaluate to a boolean")


def test_unknown_reason_falls_back_to_invalid() -> None:
    outcome = cel.Rule({"rule": "false", "reason": "Bogus"}).evaluate(self_value=None)
    assert outcome == cel.Outcome("FieldValueInvalid", "failed rule: false")


@settings(max_examples=200, deadline=None)
@given(value=st.recursive(st.none() | st.booleans() | st.integers() | st.floats()
                          | st.text(max_size=5),
                          lambda c: st.lists(c, max_size=3)
                          | st.dictionaries(st.text(max_size=3), c, max_size=3),
                          max_leaves=10),
       rule=st.sampled_from(["self.x > 1", "size(self) > 0", "self.all(x, x > 0)",
                             "self.matches('a')", "self.isSorted()", "self / 0 == 1",
                             "self.sum() > 0", "self.split(',').size() > 1",
                             "self.substring(5) == ''", "duration(self) > duration('1s')"]))
def test_no_rule_raises_whatever_self_is(value: Any, rule: str) -> None:
    outcome = cel.Rule({"rule": rule}).evaluate(self_value=cel.to_cel(value))
    assert outcome is None or isinstance(outcome.message, str)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-3, 3)
                     | st.text("ab,", max_size=3),
                     lambda c: st.lists(c, max_size=3)
                     | st.dictionaries(st.sampled_from(["x", "y"]), c, max_size=2),
                     max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.tuples(_JSON, _JSON), min_size=1, max_size=8),
       rule=st.sampled_from(["type(self) == int", "self == oldSelf", "self.x > oldSelf.x",
                             "size(self) > 0", "self.all(x, x == 1)", "self == true",
                             "oldSelf == 1.0 || self == 1", "!has(self.x) || self.x == 1",
                             "has(oldSelf.y) && oldSelf.y == self.x", "self.x == 'self.y'",
                             "self.x == 1 || self.y == 2", "self.x.all(v, v == 1)"]),
       message=st.sampled_from([None, "'y is ' + string(self.y)", "string(oldSelf)"]))
def test_a_remembered_outcome_is_the_outcome_evaluated_afresh(
        values: list[tuple[Any, Any]], rule: str, message: str | None) -> None:
    """One Rule checks a sequence of (self, oldSelf) pairs, some of them repeated: each
    outcome is what a fresh evaluation gives; 1, 1.0 and true are never taken for one
    another (CEL tells them apart), nor objects that differ in a field the rule or its
    message reads (it remembers by the fields it reads, when it reads only some)."""
    spec = {"rule": rule} | ({"messageExpression": message} if message else {})
    remembering = cel.Rule(spec)
    for self_json, old_json in values + values[::-1]:
        fresh = cel.Rule(spec).evaluate(
            self_value=cel.to_cel(self_json), old_self=cel.to_cel(old_json))
        assert remembering.check(self_json, old_json) == fresh


def test_objects_that_differ_only_in_fields_a_rule_does_not_read_share_an_outcome() -> None:
    # The engine's spec rule reads cordoned and modelRef: specs in ten pools of one model
    # are one outcome remembered, not ten.
    rule = cel.Rule({"rule": "!has(self.cordoned) || !self.cordoned || "
                             "!has(self.modelRef) || oldSelf.modelRef == self.modelRef"})
    for pool in range(10):
        spec = {"pool": f"pool-{pool}", "modelRef": "m1", "cordoned": True}
        assert rule.check(spec, spec) is None
        assert rule.check(spec, {"pool": f"pool-{pool}", "modelRef": "m2"}) is not None
    assert len(rule._outcomes) == 2
    # What the message reads counts too.
    said = cel.Rule({"rule": "self.x == 1", "messageExpression": "'y is ' + string(self.y)"})
    assert [said.check({"x": 2, "y": y}).message for y in (1, 2, 1)] == ["y is 1", "y is 2",
                                                                        "y is 1"]


def test_what_a_rule_reads_is_told_conservatively() -> None:
    read = cel._fields_read
    assert read(("has(self.a) && self.b == oldSelf.c", ""), "self") == {"a", "b"}
    assert read(("has(self.a) && self.b == oldSelf.c", ""), "oldSelf") == {"c"}
    assert read(("self.a", "'b: ' + string(self.b)"), "self") == {"a", "b"}
    assert read(("x.self.q == 'self.z' && self.b > 0", ""), "self") == {"b"}
    assert read(("self.a.b > 0", ""), "self") == {"a"}
    assert read(("self.a == 1", ""), "oldSelf") == frozenset()
    for reads_more in ("self == oldSelf", "size(self) > 0", "self.all(x, x > 0)", "self[0]",
                       "self.?a.orValue(1) == 1", "self.a__dash__b == 1",
                       "self.a // a comment's 'self.b'\n || self.c",
                       "r'self.a' == self.b", "'''x''' == self.a"):
        assert read((reads_more, ""), "self") is None, reads_more


def test_values_that_only_look_alike_are_told_apart() -> None:
    rule = cel.Rule({"rule": "type(self) == int && self == oldSelf"})
    assert rule.check(1, 1) is None
    assert rule.check(1.0, 1) is not None
    assert rule.check(True, 1) is not None
    assert rule.check(1, 1.0) is not None
    assert rule.check(1, 1) is None


def test_what_a_rule_remembers_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cel, "_REMEMBERED", 256)  # the bound, not its size (65,536: 7 s)
    rule = cel.Rule({"rule": "self < 10"})
    for value in range(cel._REMEMBERED + 100):
        assert (rule.check(value) is None) == (value < 10)
    assert len(rule._outcomes) == cel._REMEMBERED
    assert rule.check(5) is None and rule.check(50) is not None
