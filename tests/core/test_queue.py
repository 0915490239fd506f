"""The action queue and drift, by example."""

from __future__ import annotations

from capguard.core import drift, planner, queue

from .core_fleets import breaker, model, serving_fleet


def test_actions_are_stamped_with_what_they_were_planned_from() -> None:
    found = serving_fleet({"m": 3}).with_model(model("m", replicas=2, minAvailable=1))
    (action,) = queue.ActionQueue().enqueue(planner.plan(found), found, 5.0)
    assert action.planned_from == queue.PlannedFrom("1", 3)
    assert (action.planned_at, action.max_age) == (5.0, queue.DEFAULT_MAX_AGE)


def test_newest_plan_wins_and_the_same_plan_keeps_its_age() -> None:
    found = serving_fleet({"m": 3}).with_model(model("m", replicas=2, minAvailable=1))
    q = queue.ActionQueue()
    q.enqueue(planner.plan(found), found, 0.0)
    assert q.enqueue(planner.plan(found), found, 50.0) == []
    assert q.oldest_age(60.0) == 60.0
    move = planner.Intent(planner.ActionType.REASSIGN, "m-002", "n", "m")
    (newer,) = q.enqueue([move], found, 70.0)
    assert q.pending() == [newer] and len(q) == 1


def test_the_strictest_governing_breaker_sets_the_max_age() -> None:
    found = serving_fleet({"m": 3}).with_model(model("m", replicas=2, minAvailable=1))
    found = found.with_breaker(breaker("slow", maxPlanAge="1h"))
    found = found.with_breaker(breaker("fast", maxPlanAge="90s"))
    (action,) = queue.ActionQueue().enqueue(planner.plan(found), found, 0.0)
    assert action.max_age == 90.0 and action.expired(91.0) and not action.expired(90.0)


def test_drift_report() -> None:
    found = serving_fleet({"m": 3}).with_model(model("m", replicas=5, minAvailable=4))
    q = queue.ActionQueue()
    q.enqueue([planner.Intent(planner.ActionType.DRAIN, "m-000", None, "m")], found, 0.0)
    moved = found.bind("m-000", model=None, action_id="x", resource_version="9")
    report = drift.measure(moved, q, 30.0)
    m = report.models["m"]
    assert (m.desired, m.serving, m.drift, m.floor, m.draining) == (5, 2, 3, 4, 1)
    assert m.below_floor and m.available_percent == 40
    assert (report.oldest_plan_age, report.stale_view_engines) == (30.0, 1)
    assert report.signals().max_drift_ratio == 0.6 and report.signals().floor_breached
