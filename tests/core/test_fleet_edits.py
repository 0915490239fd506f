"""Editing a fleet: several engines at once give exactly what one at a time gives."""

from __future__ import annotations

from capguard.core import fleet as fleet_
from capguard.core import planner, specs

from .core_fleets import engine, model


def _found() -> fleet_.Fleet:
    return fleet_.Fleet.of(engines=[engine(f"e{i}") for i in range(4)],
                           models=[model("m", replicas=2), model("n", replicas=1)])


def test_with_engines_is_with_engine_one_at_a_time() -> None:
    found = _found()
    changes = [engine("e2", model="m"), engine("new"), engine("e0", phase="Failed"),
               engine("e2", model="n")]  # the same engine twice: the last one counts
    one_at_a_time = found
    for changed in changes:
        one_at_a_time = one_at_a_time.with_engine(changed)
    at_once = found.with_engines(changes)
    assert list(at_once.engines.items()) == list(one_at_a_time.engines.items())
    assert at_once.engines["e2"].spec.model_ref == "n"
    assert found.with_engines([]) is found
    assert list(found.engines) == ["e0", "e1", "e2", "e3"]  # the original is untouched


def test_expect_builds_each_intent_on_the_ones_before_it() -> None:
    found = _found()
    intents = [planner.Intent(planner.ActionType.ASSIGN, "e1", model="m"),
               planner.Intent(planner.ActionType.REASSIGN, "e1", model="n", from_model="m"),
               planner.Intent(planner.ActionType.ASSIGN, "e3", model="m")]
    expected = planner.expect(found, intents)
    e1, e3 = expected.engines["e1"], expected.engines["e3"]
    assert (e1.spec.model_ref, e1.model, e1.phase) == ("n", "n", specs.Phase.SERVING)
    assert e1.resource_version == found.engines["e1"].resource_version + planner.EXPECTED
    assert e3.spec.model_ref == "m"
    assert expected.engines["e0"] is found.engines["e0"]
    assert list(expected.engines) == list(found.engines)
