"""The planner: desired vs observed -> intents, make before break, deterministic."""

from __future__ import annotations

import dataclasses

from capguard.core import fleet, planner

from .core_fleets import engine, model, serving_fleet

A = planner.ActionType


def kinds(intents: list[planner.Intent]) -> list[tuple[str, str, str | None, str | None]]:
    return [(i.kind.value, i.engine, i.model, i.from_model) for i in intents]


def test_assigns_idle_engines_to_the_higher_priority_model_first() -> None:
    found = fleet.Fleet.of(
        engines=[engine("e1"), engine("e2")],
        models=[model("low", replicas=2), model("high", replicas=1, priority=10)],
    )
    assert kinds(planner.plan(found)) == [
        ("Assign", "e1", "high", None),
        ("Assign", "e2", "low", None),
    ]


def test_cordoned_and_unmatched_engines_get_no_assignment() -> None:
    found = fleet.Fleet.of(
        engines=[engine("e1", cordoned=True), engine("e2", pool="b"), engine("e3", pool="a")],
        models=[model("m", replicas=3, engineSelector={"matchLabels": {"pool": "a"}})],
    )
    assert kinds(planner.plan(found)) == [("Assign", "e3", "m", None)]


def test_a_cordoned_surplus_is_drained_never_reassigned() -> None:
    # A cordoned engine keeps its model or none (the CRD's rule refuses a new modelRef).
    # `new` is allocated x, which k gives up only once its cordoned replacement y
    # serves; meanwhile `closed`, cordoned and given up by `old`, must not be handed to
    # `new` in x's place: it is drained. (A random fleet, with more engines around it,
    # had the planner write such a reassign, which the API server refuses.)
    found = fleet.Fleet.of(
        engines=[engine("x", model="k"), engine("y", model="k", phase="Loading", cordoned=True),
                 engine("closed", model="old", cordoned=True)],
        models=[model("k", replicas=1), model("old", replicas=0), model("new", replicas=1)],
    )
    assert found.allocation.claims == {"x": "new", "y": "k"}
    assert kinds(planner.plan(found)) == [("Drain", "closed", None, "old")]


def test_surplus_is_reassigned_to_a_model_in_need_before_it_is_drained() -> None:
    found = serving_fleet({"a": 4, "b": 2}).with_model(model("a", replicas=3))
    found = found.with_model(model("b", replicas=3))
    assert kinds(planner.plan(found)) == [("Reassign", "a-003", "b", "a")]


def test_drains_only_what_keeps_the_model_at_desired_serving() -> None:
    found = serving_fleet({"a": 4}).with_model(model("a", replicas=2, minAvailable=1))
    loading = dataclasses.replace(found.engines["a-000"], phase=planner.specs.Phase.LOADING)
    found = found.with_engine(loading)
    # a-000 is loading (costs nothing to drain); then one serving engine; two stay serving.
    assert kinds(planner.plan(found)) == [
        ("Drain", "a-000", None, "a"),
        ("Drain", "a-003", None, "a"),
    ]


def test_refresh_plans_the_replacement_first_and_the_drain_only_with_surplus() -> None:
    found = serving_fleet({"m": 2}, spares=1).with_model(model("m", replicas=2, revision="v2"))
    first = planner.plan(found)
    assert kinds(first) == [("Assign", "spare-000", "m", None), ("Assign", "m-000", "m", None)][:1]
    # Once the replacement serves v2, the model has a serving surplus: the old one may go.
    replaced = found.with_engine(engine("spare-000", model="m", revision="v2"))
    assert kinds(planner.plan(replaced)) == [("Drain", "m-000", None, "m")]


def test_engine_outside_the_selector_is_rebalanced_make_before_break() -> None:
    found = fleet.Fleet.of(
        engines=[engine("old", model="m", pool="a"), engine("new", pool="b")],
        models=[model("m", replicas=1, engineSelector={"matchLabels": {"pool": "b"}})],
    )
    assert kinds(planner.plan(found)) == [("Assign", "new", "m", None)]
    moved = found.with_engine(engine("new", model="m", pool="b"))
    assert kinds(planner.plan(moved)) == [("Drain", "old", None, "m")]


def test_bound_engine_not_yet_serving_is_refreshed_in_place() -> None:
    found = fleet.Fleet.of(
        engines=[engine("e", model="m", phase="Loading", revision="v1")],
        models=[model("m", replicas=1, revision="v2")],
    )
    assert kinds(planner.plan(found)) == [("Reassign", "e", "m", "m")]


def test_failed_and_orphaned_engines_are_released() -> None:
    found = fleet.Fleet.of(
        engines=[engine("f", model="m", phase="Failed"), engine("o", model="gone")],
        models=[model("m", replicas=0)],
    )
    assert kinds(planner.plan(found)) == [("Drain", "f", None, "m"), ("Drain", "o", None, "gone")]


def test_a_converged_fleet_plans_nothing_and_plans_are_deterministic() -> None:
    found = serving_fleet({"a": 3, "b": 5}, spares=2)
    assert planner.plan(found) == []
    shifted = found.with_model(model("a", replicas=5)).with_model(model("b", replicas=2))
    assert planner.plan(shifted) == planner.plan(shifted)


def test_engines_of_an_unreadable_model_are_left_alone() -> None:
    """A typo in a ModelCapacity is not a deletion: nothing drains its engines."""
    found = fleet.Fleet.of(
        engines=[engine("e1", model="typo"), engine("f", model="typo", phase="Failed")],
        models=[model("m", replicas=1)],
        unreadable_models={"typo"},
    )
    assert planner.plan(found) == []  # not orphans, and not idle for m either


def test_a_paused_cached_view_builds_plans_on_plans_that_never_ran() -> None:
    live = fleet.Fleet.of(engines=[engine("e1"), engine("e2")], models=[model("m", replicas=1)])
    cached = planner.CachedView()
    view = cached.current(live, paused=True)
    intents = planner.plan(view)
    cached.assume(view, intents, paused=True)
    assumed = cached.current(live, paused=True)
    # e1's assign is assumed done: the next plan builds on it, though the cluster is unchanged.
    assert assumed.engines["e1"].serves("m") and not live.engines["e1"].serves("m")
    assert assumed.engines["e1"].resource_version.endswith(planner.EXPECTED)
    assert planner.plan(assumed) == []
    assert cached.current(live, paused=False) is live  # closed: the cluster again


def test_spares_are_spread_over_the_models_a_round_at_a_time() -> None:
    """One spare each, not both to the first model: each model can then give an engine of
    its old revision as soon as its spare serves, instead of one model holding both."""
    found = serving_fleet({"m": 2, "n": 2}, spares=2)
    found = found.with_model(model("m", replicas=2, revision="v2"))
    found = found.with_model(model("n", replicas=2, revision="v2"))
    assert kinds(planner.plan(found)) == [
        ("Assign", "spare-000", "m", None),
        ("Assign", "spare-001", "n", None),
    ]


def test_a_model_with_surplus_to_give_receives_after_the_others() -> None:
    """An engine arriving holds a model's own gives back while it loads (its budget counts
    it), so surplus goes first to a model that has none to give."""
    engines = [engine("r-000", model="r")]
    for giver in ("g1", "g2"):  # one engine on v2, two old ones: one may go, one more needed
        engines += [engine(f"{giver}-000", model=giver, revision="v2"),
                    engine(f"{giver}-001", model=giver), engine(f"{giver}-002", model=giver)]
    found = fleet.Fleet.of(engines=engines, models=[
        model("g1", replicas=2, revision="v2"), model("g2", replicas=2, revision="v2"),
        model("r", replicas=3),
    ])
    assert kinds(planner.plan(found)) == [
        ("Reassign", "g1-001", "r", "g1"),
        ("Reassign", "g2-001", "r", "g2"),
    ]


def test_surplus_the_gate_can_take_now_goes_to_the_first_target() -> None:
    """Three models refresh to v2. g1's maxUnavailable is used up by the replacement
    loading for it, so the gate holds its take until that load ends: r, with nothing
    arriving, gets g2's surplus, the one the gate can take now (it got g1's, and the take
    that ran went to a model whose own surplus it then held back)."""
    engines = [engine("r-000", model="r", revision="v2"), engine("r-001", model="r"),
               engine("g1-003", model="g1", revision="v2", phase="Loading")]
    for giver in ("g1", "g2"):  # one engine on v2, two old ones: one may go
        engines += [engine(f"{giver}-000", model=giver, revision="v2"),
                    engine(f"{giver}-001", model=giver), engine(f"{giver}-002", model=giver)]
    found = fleet.Fleet.of(engines=engines, models=[
        model(name, replicas=2, revision="v2") for name in ("g1", "g2", "r")])
    assert found.max_unavailable_engines("g1") == len(found.unavailable_engines("g1")) == 1
    assert kinds(planner.plan(found)) == [
        ("Reassign", "g2-001", "r", "g2"),
        ("Reassign", "g1-001", "g2", "g1"),
    ]
