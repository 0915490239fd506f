"""Which breaker holds which actions when breakers overlap, and one that selects nothing."""

from __future__ import annotations

import dataclasses

from capguard.core import holdings, pipeline

from .core_fleets import breaker, serving_fleet

CHAT = {"matchLabels": {"app": "chat"}}


def scaled_up_with(*breakers: object) -> pipeline.StepResult:
    """chat serves 1 of 3 desired units, two idle engines wait; the breakers given."""
    found = serving_fleet({"chat": 1, "code": 1}, spares=2)
    found = found.with_model(dataclasses.replace(found.models["chat"], replicas=3))
    for spec in breakers:
        found = found.with_breaker(spec)  # type: ignore[arg-type]
    return pipeline.Pipeline().step(pipeline.Observed(found), 0.0)


def test_two_open_breakers_over_one_model_each_hold_its_actions_and_name_the_other() -> None:
    result = scaled_up_with(breaker("maint", open=True, selector=CHAT),
                            breaker("freeze", open=True))
    found = holdings.of(result)
    assert not result.executions
    assert found["maint"].actions == found["freeze"].actions == 2
    assert found["maint"].models == (holdings.HeldModel("chat", 2, ("freeze",)),)
    assert found["freeze"].models == (holdings.HeldModel("chat", 2, ("maint",)),)
    assert found["freeze"].selected == ("chat", "code")


def test_a_closed_breaker_holds_nothing_and_says_who_holds_its_models() -> None:
    result = scaled_up_with(breaker("maint", open=True, selector=CHAT), breaker("watch"))
    found = holdings.of(result)
    assert found["watch"].actions == 0 and found["watch"].models == ()
    assert found["watch"].held_elsewhere == (("chat", ("maint",)),)
    assert found["maint"].models == (holdings.HeldModel("chat", 2, ()),)


def test_a_breaker_whose_selector_matches_no_model_selects_nothing() -> None:
    result = scaled_up_with(breaker("typo", open=True,
                                    selector={"matchLabels": {"app": "chatt"}}))
    found = holdings.of(result)["typo"]
    assert found.selects_nothing and found.actions == 0
    assert len(result.executions) == 2  # it pauses nothing: the scale-up runs
    assert holdings.selected(result.fleet) == {"typo": ()}
