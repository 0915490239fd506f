"""Capacity under scarcity, through kubectl (issue 11): each case a user hit, end to end.

- A greedy model (empty selector, huge replicas) held every engine; a model scaled up
  afterwards stayed below its own floor forever. Now the floor is restored from the
  greedy model's engines and the impossible is said (condition, Event, metric).
- A selector that matches no engine said `Converging` forever; now `NoEligibleEngines`.
- An engine applied with `spec.modelRef: no-such-model` was silently rebound to another
  model; now its binding is left alone and an Event says why it serves nothing.
(The fourth case, a selector key that is not a label key, is refused at admission:
tests/e2e/test_selectors.py.)
"""

from __future__ import annotations

import time

from . import harness
from .conftest import Operators


def progressing(kube: harness.Kubectl, model: str) -> tuple[str, str]:
    found = harness.condition(kube.get("mc", model), "Progressing") or {}
    return str(found.get("status")), str(found.get("reason"))


def test_a_greedy_model_gives_back_a_floor_and_the_shortfall_is_said(
    kube: harness.Kubectl, operators: Operators,
) -> None:
    kube.apply(*harness.engines("ie", 10), harness.model("legit", replicas=3))
    operator = operators.start()
    harness.wait_serving(kube, {"legit": 3})
    # Admissible and greedy: an empty selector and far more than the pool holds.
    kube.apply(harness.model("greedy", replicas=1000, max_unavailable="100%"))
    harness.wait_until(lambda: harness.serving(kube, "greedy") == 7, timeout=30,
                       what="greedy takes the 7 spare engines")
    # Scaled up later (desired 4, floor 4, serving 3), legit's floor comes from greedy:
    # both floors cannot be met (900 + 4 > 10), so they share max-min: 4 and 6.
    with harness.FleetWatch(kube) as watch:
        harness.wait_until(lambda: len(watch.engines()) == 10, timeout=10,
                           what="the watch lists every engine")
        since = time.monotonic()
        kube.run("scale", "mc/legit", "--replicas=4")
        harness.wait_serving(kube, {"legit": 4, "greedy": 6}, timeout=40)
        # No model below its floor because of an action: legit never served less than 3,
        # greedy (below a floor nobody can meet) never less than its share, 6.
        assert watch.lowest_serving("legit", since=since) == 3
        assert watch.lowest_serving("greedy", since=since) == 6
    legit, greedy = kube.get("mc", "legit"), kube.get("mc", "greedy")
    assert legit["status"]["floor"] == 4 and progressing(kube, "legit") == ("False", "Converged")
    assert progressing(kube, "greedy") == ("False", "InsufficientCapacity")
    message = str((harness.condition(greedy, "Progressing") or {}).get("message"))
    assert "pool pool-a" in message and "894 units short" in message, message
    told = kube.events(reason="InsufficientCapacity", name="greedy")
    assert len(told) == 1 and told[0]["type"] == "Warning", told
    assert "pool pool-a" in told[0]["message"] and "units short" in told[0]["message"]
    metrics = operator.metrics()
    assert metrics.total("capguard_model_floor_shortfall_units", model="greedy",
                         pool="pool-a") == 894
    assert metrics.total("capguard_model_floor_shortfall_units", model="legit") == 0
    assert metrics.total("capguard_pool_supply_units", pool="pool-a") == 10
    assert operator.alive


def test_a_selector_that_matches_no_engine_says_so(
    kube: harness.Kubectl, operators: Operators,
) -> None:
    lost = harness.model("lost", replicas=2, extra={
        "engineSelector": {"matchLabels": {"capguard.dev/pool": "nowhere"}}})
    kube.apply(*harness.engines("ie", 2), lost)
    operators.start()
    harness.wait_until(lambda: progressing(kube, "lost") == ("False", "NoEligibleEngines"),
                       timeout=20, what="lost says NoEligibleEngines")
    message = str((harness.condition(kube.get("mc", "lost"), "Progressing") or {})
                  .get("message"))
    assert "matches no InferenceEngine" in message and "kubectl label" in message
    assert [e["type"] for e in kube.events(reason="NoEligibleEngines", name="lost")] == [
        "Warning"]
    # Label engines into the pool it asks for: it converges, and says so.
    for name in ("ie-0", "ie-1"):
        kube.run("label", "--overwrite", "ie", name, "capguard.dev/pool=nowhere")
    harness.wait_serving(kube, {"lost": 2}, timeout=30)
    harness.wait_until(lambda: progressing(kube, "lost") == ("False", "Converged"),
                       timeout=20, what="lost converges")


def test_a_modelref_naming_no_model_is_left_alone_and_reported(
    kube: harness.Kubectl, operators: Operators,
) -> None:
    pinned = harness.engine("pinned")
    pinned["spec"]["modelRef"] = "no-such-model"
    kube.apply(pinned, *harness.engines("ie", 2), harness.model("chat", replicas=3))
    operators.start()
    harness.wait_serving(kube, {"chat": 2}, timeout=30)
    harness.wait_until(lambda: kube.events(reason="UnknownModel", name="pinned"),
                       timeout=20, what="an UnknownModel Event on the engine")
    told = kube.events(reason="UnknownModel", name="pinned")
    assert len(told) == 1 and told[0]["type"] == "Warning"
    assert "no-such-model" in told[0]["message"] and "clear spec.modelRef" in told[0][
        "message"]
    # chat is one unit short, and still the user's binding is not overwritten.
    assert kube.get("ie", "pinned")["spec"]["modelRef"] == "no-such-model"
    assert progressing(kube, "chat") == ("False", "InsufficientCapacity")
    # The model it names appears: the engine serves it, no rebinding needed.
    kube.apply(harness.model("no-such-model", replicas=1))
    harness.wait_serving(kube, {"no-such-model": 1, "chat": 2}, timeout=30)
    assert kube.get("ie", "pinned")["spec"]["modelRef"] == "no-such-model"
