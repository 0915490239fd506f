"""The summary conditions kstatus, Argo CD and `kubectl wait` read, and what a breaker's
status says it holds: rendered from the core's values (the e2e tests watch them live)."""

from __future__ import annotations

from capguard.core import drift, holdings, specs
from capguard.handlers import records
from capguard.handlers import status as status_

T0 = 1_800_000_000.0


def summary(view: drift.ModelDrift, *, held: str | None = None) -> dict[str, tuple[str, str]]:
    found = status_.model_conditions(view, failed=0, held_reason=held)
    return {c.type: (c.status, c.reason) for c in found
            if c.type in {status_.READY, status_.RECONCILING, status_.STALLED}}


def test_ready_means_desired_serving_not_at_the_floor() -> None:
    at_floor = drift.ModelDrift(desired=4, serving=3, floor=3, loading=1)
    assert summary(at_floor) == {"Ready": ("False", "Converging"),
                                 "Reconciling": ("True", "Converging"),
                                 "Stalled": ("False", "Progressing")}
    done = drift.ModelDrift(desired=4, serving=4, floor=3)
    assert summary(done)["Ready"] == ("True", "DesiredServing")
    assert summary(done)["Reconciling"] == ("False", "DesiredServing")


def test_a_rollout_a_hold_and_a_missing_supply_each_say_why_the_model_is_not_ready() -> None:
    rolling = drift.ModelDrift(desired=2, serving=2, floor=1, outdated=1)
    assert summary(rolling)["Ready"] == ("False", "OutdatedRevision")
    short = drift.ModelDrift(desired=4, serving=2, floor=2)
    assert summary(short, held="breaker maint is Open")["Reconciling"] == ("True", "Held")
    nowhere = drift.ModelDrift(desired=2, serving=0, floor=1, allocated=0, covered=0, pools=())
    assert summary(nowhere) == {"Ready": ("False", status_.NO_ELIGIBLE_ENGINES),
                                "Reconciling": ("False", status_.NO_ELIGIBLE_ENGINES),
                                "Stalled": ("True", status_.NO_ELIGIBLE_ENGINES)}


def test_an_invalid_model_is_stalled_on_its_spec() -> None:
    error = specs.SpecError(kind="ModelCapacity", name="chat", field="spec.replicas",
                            problem="is -1", fix="use 0 or more")
    written = status_.invalid_model_status(error=error, existing={}, generation=3, now=T0)
    found = {c["type"]: (c["status"], c["reason"]) for c in written["conditions"]}
    assert found["Stalled"] == ("True", "InvalidSpec")
    assert found["Ready"] == ("False", "InvalidSpec")


def test_a_breaker_status_names_what_it_holds_and_who_else_holds_it() -> None:
    holding = holdings.Holding(selected=("chat", "code"), actions=3,
                               models=(holdings.HeldModel("chat", 3, ("freeze",)),))
    fields, (held, selection) = status_.holding_status(
        holding, selector=specs.LabelSelector())
    assert fields == {"heldActions": 3, "selectedModels": 2, "heldModels": [
        {"model": "chat", "heldActions": 3, "alsoHeldBy": ["freeze"]}]}
    assert (held.status, held.reason) == ("True", "ActionsHeld")
    assert held.message == ("holds 3 actions of models chat (3); "
                            "breaker freeze also holds those of chat")
    assert (selection.status, selection.reason) == ("False", "ModelsSelected")


def test_a_closed_breaker_says_who_holds_its_models_and_an_empty_one_says_it_selects_nothing(
) -> None:
    closed = holdings.Holding(selected=("chat",), actions=0, models=(),
                              held_elsewhere=(("chat", ("maint",)),))
    assert status_.holding_condition(closed).message == (
        "holds no action; those of chat are held by breaker maint")
    body = {"metadata": {"name": "typo", "namespace": "ns", "resourceVersion": "1"},
            "spec": {"selector": {"matchLabels": {"app": "chatt"}}}}
    record = records.breaker_record(body)
    assert record.value is not None
    nothing = holdings.Holding(selected=(), actions=0, models=())
    condition = status_.selection_condition(nothing, selector=record.value.selector)
    assert (condition.status, condition.reason) == ("True", "NoModelsSelected")
    assert condition.message.startswith("spec.selector app=chatt matches no ModelCapacity")
