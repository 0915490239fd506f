"""Table columns: definitions shaped as recorded (070/071), cells as kubectl shows them."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capguard.localcluster import columns

WIDGET_COLUMNS: list[dict[str, Any]] = [
    {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
NOW = datetime.datetime(2024, 1, 2, 4, 0, 0, tzinfo=datetime.UTC)


def test_definitions_as_recorded() -> None:  # 070
    definitions = columns.column_definitions(WIDGET_COLUMNS)
    assert definitions[0] == {"name": "Name", "type": "string", "format": "name",
                              "description": columns.NAME_DESCRIPTION, "priority": 0}
    assert definitions[1] == {
        "name": "Replicas", "type": "integer", "format": "",
        "description": "Custom resource definition column (in JSONPath format): .spec.replicas",
        "priority": 0}
    assert [d["name"] for d in definitions] == ["Name", "Replicas", "Phase", "Age"]


def test_declared_description_and_priority_are_kept() -> None:
    definitions = columns.column_definitions([{"name": "Reason", "type": "string",
                                               "jsonPath": ".status.reason", "priority": 1,
                                               "description": "Why."}])
    assert definitions[1]["description"] == "Why."
    assert definitions[1]["priority"] == 1


def test_no_columns_means_the_default_age_column() -> None:
    definitions = columns.column_definitions([])
    assert [d["name"] for d in definitions] == ["Name", "Age"]
    assert definitions[1]["type"] == "date"


def test_cells_with_a_missing_value_and_an_age() -> None:  # 070: null where absent
    obj = {"metadata": {"name": "wd-a", "creationTimestamp": "2024-01-02T03:04:05Z"},
           "spec": {"replicas": 1}}
    assert columns.row_cells(WIDGET_COLUMNS, obj, NOW) == ["wd-a", 1, None, "55m"]


def test_filter_expression() -> None:
    obj = {"metadata": {"name": "m"}, "status": {"conditions": [
        {"type": "Progressing", "status": "False"}, {"type": "Ready", "status": "True"}]}}
    column = [{"name": "Ready", "type": "string",
               "jsonPath": '.status.conditions[?(@.type=="Ready")].status'}]
    assert columns.row_cells(column, obj, NOW) == ["m", "True"]


@pytest.mark.parametrize(("path", "expected"), [
    (".spec.items[0].name", "a"),
    (".spec.items[-1].name", "c"),
    (".spec.items[1:].name", "b"),
    (".spec.items[*].name", "a"),
    ("..name", "m"),
    (".spec['odd.key']", "x"),
    ("{.spec.items[2].name}", "c"),
    (".spec.items[?(@.weight > 1)].name", "b"),
    (".spec.items[?(@.flag)].name", "c"),
    (".spec.map", '{"k":1}'),
    (".spec.ratio", "0.5"),
    (".spec.on", "true"),
    (".spec.nothing", None),
    (".spec.items[7]", None),
])
def test_jsonpath(path: str, expected: Any) -> None:
    obj = {"metadata": {"name": "m"},
           "spec": {"items": [{"name": "a", "weight": 1}, {"name": "b", "weight": 2},
                              {"name": "c", "flag": True}],
                    "odd.key": "x", "map": {"k": 1}, "ratio": 0.5, "on": True}}
    column = [{"name": "C", "type": "string", "jsonPath": path}]
    assert columns.row_cells(column, obj, NOW)[1] == expected


@pytest.mark.parametrize(("column_type", "value", "expected"), [
    ("integer", 3, 3), ("integer", 3.7, 3), ("integer", "3", None),
    ("number", 2, 2.0), ("number", True, None),
    ("boolean", False, False), ("boolean", "true", None),
    ("date", "not a time", "<invalid>"),
])
def test_cell_types(column_type: str, value: Any, expected: Any) -> None:
    assert columns.format_cell(column_type, value, now=NOW) == expected


@pytest.mark.parametrize(("seconds", "shown"), [
    (-5, "<invalid>"), (-1, "0s"), (0, "0s"), (119, "119s"), (120, "2m"), (150, "2m30s"),
    (600, "10m"), (3 * 3600 - 1, "179m"), (3 * 3600, "3h"), (3 * 3600 + 60, "3h1m"),
    (8 * 3600, "8h"), (47 * 3600, "47h"), (48 * 3600, "2d"), (49 * 3600, "2d1h"),
    (8 * 86400, "8d"), (800 * 86400, "2y70d"), (3000 * 86400, "8y"),
])
def test_ages_as_kubectl_prints_them(seconds: int, shown: str) -> None:
    assert columns.human_duration(datetime.timedelta(seconds=seconds)) == shown


def test_unreadable_path_gives_an_empty_cell() -> None:
    column = [{"name": "C", "type": "string", "jsonPath": ".spec[?(bogus"}]
    assert columns.row_cells(column, {"metadata": {"name": "m"}}, NOW) == ["m", None]


@settings(max_examples=200, deadline=None)
@given(obj=st.dictionaries(st.sampled_from(["metadata", "spec", "status"]),
                           st.recursive(st.none() | st.booleans() | st.integers()
                                        | st.floats() | st.text(max_size=4),
                                        lambda c: st.lists(c, max_size=3)
                                        | st.dictionaries(st.sampled_from(
                                            ["name", "replicas", "phase", "creationTimestamp",
                                             "conditions", "type", "status"]), c, max_size=3),
                                        max_leaves=10)),
       column_type=st.sampled_from(["integer", "number", "string", "boolean", "date", "x"]),
       path=st.sampled_from([".spec.replicas", ".status.phase", "..name", ".spec[*]",
                             '.status.conditions[?(@.type=="Ready")].status',
                             ".metadata.creationTimestamp", ".spec[0:2]"]))
def test_cells_never_raise(obj: dict[str, Any], column_type: str, path: str) -> None:
    column = [{"name": "C", "type": column_type, "jsonPath": path}]
    assert len(columns.row_cells(column, obj, NOW)) == 2
