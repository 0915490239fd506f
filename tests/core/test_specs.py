"""The one parser: good bodies become values, bad ones a SpecError that names field and fix."""

from __future__ import annotations

import pytest

from capguard.core import fleet, specs

from .core_fleets import breaker_body, engine_body, model_body


def test_engine_body_parses_spec_status_and_action_id() -> None:
    body = engine_body("e1", model="llama", units=2, rv="7", revision="r1", action_id="abc")
    engine = specs.parse_engine(body)
    assert engine.spec.model_ref == "llama"
    assert engine.phase is specs.Phase.SERVING
    assert (engine.units, engine.resource_version, engine.last_action_id) == (2, "7", "abc")


def test_model_defaults_follow_the_crd() -> None:
    found = specs.parse_model(model_body("m", replicas=8))
    assert found.min_available == specs.IntOrPercent(90, percent=True)
    assert found.floor_units == 8  # 90% of 8 rounds up, never down to 7
    assert found.max_unavailable_engines(8) == 1


def test_percent_budget_rounds_down_but_never_to_zero() -> None:
    found = specs.parse_model(model_body("m", replicas=8, maxUnavailable="10%"))
    assert found.max_unavailable_engines(8) == 1
    assert found.max_unavailable_engines(40) == 4


def test_breaker_durations_and_approval() -> None:
    body = breaker_body(
        pauseThreshold="1h30m",
        maxPlanAge="90s",
        approval={"batch": "batch-1", "approvedBy": "ana"},
        autoTrip={"maxDriftRatio": 0.2, "window": "250ms"},
    )
    found = specs.parse_breaker(body)
    assert (found.pause_threshold, found.max_plan_age) == (5400.0, 90.0)
    assert found.approval == specs.Approval("batch-1", "ana")
    assert found.auto_trip is not None and found.auto_trip.window == 0.25


def test_selectors_match_labels_and_expressions() -> None:
    body = model_body(
        "m",
        replicas=1,
        engineSelector={
            "matchLabels": {"pool": "h100"},
            "matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["b"]}],
        },
    )
    selector = specs.parse_model(body).engine_selector
    assert selector.matches({"pool": "h100", "zone": "a"})
    assert not selector.matches({"pool": "h100", "zone": "b"})
    assert not selector.matches({"pool": "a100"})


def test_fleet_from_bodies() -> None:
    found = fleet.Fleet.from_bodies(
        engines=[engine_body("e1", model="m"), engine_body("e2")],
        models=[model_body("m", replicas=1)],
        breakers=[breaker_body()],
    )
    assert found.serving_units("m") == 1
    assert [b.name for b in found.breakers_for("m")] == ["cb"]


def test_fleet_read_keeps_an_unreadable_model_by_name_and_reports_every_error() -> None:
    reading = fleet.Fleet.read(
        engines=[engine_body("e1", model="typo"), {"metadata": {"name": "e2"}, "spec": {}}],
        models=[model_body("typo", replicas=-1), model_body("ok", replicas=1)],
        breakers=[breaker_body()],
    )
    assert reading.fleet.unreadable_models == {"typo"}
    assert sorted(reading.fleet.models) == ["ok"] and sorted(reading.fleet.engines) == ["e1"]
    assert [(e.kind, e.name, e.field) for e in reading.errors] == [
        (specs.MODEL, "typo", "spec.replicas"),
        (specs.ENGINE, "e2", "spec.pool"),
    ]
    fixed = reading.fleet.with_model(specs.parse_model(model_body("typo", replicas=1)))
    assert fixed.unreadable_models == frozenset()


def _with(body: dict[str, object], section: str, **fields: object) -> dict[str, object]:
    part = dict(body.get(section) or {})  # type: ignore[call-overload]
    part.update(fields)
    return {**body, section: part}


BAD_BODIES = [
    # (parser, body, field named in the error, words the fix must contain)
    (specs.parse_engine, {"spec": {"pool": "a"}}, "metadata.name", "non-empty string"),
    (specs.parse_engine, {"metadata": {"name": "e"}, "spec": {}}, "spec.pool", "string"),
    (
        specs.parse_engine,
        _with(engine_body("e"), "spec", capacityUnits="2"),
        "spec.capacityUnits",
        "whole number",
    ),
    (
        specs.parse_engine,
        _with(engine_body("e"), "spec", capacityUnits=0),
        "spec.capacityUnits",
        "1 or more",
    ),
    (
        specs.parse_engine,
        _with(engine_body("e"), "spec", cordoned="yes"),
        "spec.cordoned",
        "true or false",
    ),
    (
        specs.parse_engine,
        _with(engine_body("e"), "status", phase="Running"),
        "status.phase",
        "Idle, Loading, Serving, Draining, Failed",
    ),
    (
        specs.parse_engine,
        _with(engine_body("e"), "status", since="yesterday"),
        "status.since",
        "RFC 3339",
    ),
    (specs.parse_model, {"metadata": {"name": "m"}, "spec": {}}, "spec.replicas", "integer"),
    (specs.parse_model, model_body("m", replicas=-1), "spec.replicas", "0 or more"),
    (
        specs.parse_model,
        model_body("m", replicas=3, minAvailable=5),
        "spec.minAvailable",
        "lower minAvailable to 3",
    ),
    (
        specs.parse_model,
        model_body("m", replicas=3, minAvailable="150%"),
        "spec.minAvailable",
        "0% to 100%",
    ),
    (
        specs.parse_model,
        model_body("m", replicas=3, minAvailable="half"),
        "spec.minAvailable",
        "percent like '90%'",
    ),
    (
        specs.parse_model,
        model_body("m", replicas=3, maxUnavailable="1.5"),
        "spec.maxUnavailable",
        "whole number",
    ),
    (
        specs.parse_model,
        model_body("m", replicas=3, rateLimit={"actionsPerMinute": 0}),
        "spec.rateLimit.actionsPerMinute",
        "set it above",
    ),
    (
        specs.parse_model,
        model_body(
            "m",
            replicas=3,
            engineSelector={"matchExpressions": [{"key": "pool", "operator": "Near"}]},
        ),
        "spec.engineSelector.matchExpressions[0].operator",
        "In, NotIn, Exists, DoesNotExist",
    ),
    (
        specs.parse_model,
        model_body("m", replicas=3, engineSelector="pool=a"),
        "spec.engineSelector",
        "mapping",
    ),
    (
        specs.parse_breaker,
        breaker_body(pauseThreshold="5 minutes"),
        "spec.pauseThreshold",
        "90s, 5m or 1h30m",
    ),
    (specs.parse_breaker, breaker_body(maxPlanAge=300), "spec.maxPlanAge", "string"),
    (specs.parse_breaker, breaker_body(halfOpenProbes=0), "spec.halfOpenProbes", "1 or more"),
    (
        specs.parse_breaker,
        breaker_body(autoTrip={"maxDriftRatio": 1.5}),
        "spec.autoTrip.maxDriftRatio",
        "between 0 and 1",
    ),
    (
        specs.parse_breaker,
        breaker_body(approval={"batch": "batch-1"}),
        "spec.approval.approvedBy",
        "second person",
    ),
    (specs.parse_breaker, {"metadata": {"name": "cb"}, "spec": []}, "spec", "mapping"),
]


@pytest.mark.parametrize(("parse", "body", "field", "fix"), BAD_BODIES)
def test_bad_body_names_field_and_fix(parse, body, field, fix) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(specs.SpecError) as caught:
        parse(body)
    assert caught.value.field == field
    assert field in str(caught.value)
    assert fix in str(caught.value)
    assert caught.value.kind in str(caught.value)


def test_duration_parser() -> None:
    assert specs.parse_duration("1h30m") == 5400.0
    assert specs.parse_duration("250ms") == 0.25
    assert specs.parse_duration("1.5s") == 1.5
    for bad in ("", "5", "m5", "5 m", "-5s", "5d"):
        with pytest.raises(ValueError):
            specs.parse_duration(bad)
