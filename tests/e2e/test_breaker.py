"""A tripped breaker holds actions; a release after a long pause refuses the backlog as a
whole and the fleet recovers from the cluster as it is, never below a floor."""

from __future__ import annotations

import time

import pytest

from . import harness
from .conftest import Operators


def _breaker_state(kube: harness.Kubectl, name: str) -> str:
    return str(kube.get("cb", name).get("status", {}).get("state", ""))


def _trip(kube: harness.Kubectl, name: str) -> float:
    """`kubectl patch cb NAME spec.open=true`; returns when the operator shows it Open."""
    kube.patch("cb", name, {"spec": {"open": True}})
    harness.wait_until(lambda: _breaker_state(kube, name) == "Open", timeout=10,
                       what=f"breaker {name} Open")
    return time.monotonic()


def test_a_tripped_breaker_holds_actions_and_metrics_show_the_drift(
    kube: harness.Kubectl, operators: Operators,
) -> None:
    kube.apply(*harness.engines("e", 4), harness.model("chat", replicas=2),
               harness.breaker("maint", pause_threshold="10m"))
    operator = operators.start()
    harness.wait_serving(kube, {"chat": 2})
    with harness.FleetWatch(kube) as watch:
        tripped = _trip(kube, "maint")
        kube.run("scale", "mc/chat", "--replicas=4")

        def held() -> dict[str, object] | None:
            status = kube.get("cb", "maint")["status"]
            return status if status.get("heldActions", 0) >= 2 else None

        status = harness.wait_until(held, timeout=10, what="the breaker to hold 2 actions")
        assert status["state"] == "Open"
        progressing = harness.condition(kube.get("mc", "chat"), "Progressing")
        assert progressing is not None and progressing["reason"] == "Held", progressing
        metrics = operator.metrics()
        assert metrics.total("capguard_queue_actions", state="held") >= 2
        assert metrics.total("capguard_model_drift_units", model="chat") == 2
        assert metrics.total("capguard_breaker_state", breaker="maint", state="Open") == 1
        assert kube.events(reason="BreakerOpened", name="maint")
        # Nothing executed while open: no engine got an action since the trip.
        assert not [after for name in watch.names()
                    for _, after in harness.actions(watch.history(name))
                    if after.seen_at >= tripped]
        assert harness.serving(kube, "chat") == 2

        # A short pause (under pauseThreshold) is released normally: the holds run.
        kube.patch("cb", "maint", {"spec": {"open": False}})
        harness.wait_serving(kube, {"chat": 4})
        harness.wait_until(lambda: _breaker_state(kube, "maint") == "Closed", timeout=10,
                           what="breaker Closed after its probe")
        assert kube.get("cb", "maint")["status"]["refusedActions"] == 0


@pytest.mark.slow
def test_a_release_after_a_long_pause_refuses_the_batch_and_recovers_within_the_floor(
    kube: harness.Kubectl, operators: Operators,
) -> None:
    kube.apply(*harness.engines("e", 8),
               harness.model("chat", replicas=5, min_available=4),
               harness.model("embed", replicas=3, min_available=2),
               harness.breaker("maint", pause_threshold="2s", max_batch_after_pause=1))
    operator = operators.start()
    harness.wait_serving(kube, {"chat": 5, "embed": 3})
    with harness.FleetWatch(kube) as watch:
        tripped = _trip(kube, "maint")
        # Demand shifts while the breaker is open; the planner keeps planning from a view
        # that grows older: two engines to move from chat to embed.
        kube.patch("mc", "chat", {"spec": {"replicas": 3, "minAvailable": 3}})
        kube.patch("mc", "embed", {"spec": {"replicas": 5}})
        plan = harness.wait_until(
            lambda: (kube.get("cb", "maint")["status"].get("releasePlan") or {}).get("size", 0)
            >= 2 and kube.get("cb", "maint")["status"]["releasePlan"],
            timeout=10, what="the release plan (a dry run) published while open")
        assert {a["engine"] for a in plan["actions"]} <= {f"e-{i}" for i in range(8)}
        time.sleep(max(0.0, tripped + 2.5 - time.monotonic()))  # the pause outlasts 2s
        released = time.monotonic()
        kube.patch("cb", "maint", {"spec": {"open": False}})

        refused = harness.wait_until(lambda: kube.events(reason="BatchRefused", name="maint"),
                                     timeout=10, what="a BatchRefused Event")
        assert plan["batch"] in refused[0]["message"], refused[0]["message"]
        status = kube.get("cb", "maint")["status"]
        assert status["lastRefusedBatch"]["batch"] == plan["batch"]
        assert status["lastRefusedBatch"]["size"] == plan["size"]
        assert status["lastRefusedBatch"]["oldestPlanAgeSeconds"] >= 2
        assert status["refusedActions"] >= plan["size"]
        # The Event carries the breaker's uid, so `kubectl describe` shows it too.
        assert "BatchRefused" in kube.run("describe", "cb", "maint").stdout
        metrics = operator.metrics()
        assert metrics.total("capguard_refused_batches_total", breaker="maint") == 1
        assert metrics.total("capguard_refusals_total", reason="PostPauseBatch") >= plan["size"]

        # Re-planned from the cluster as it is, the fleet converges, one move at a time.
        harness.wait_serving(kube, {"chat": 3, "embed": 5}, timeout=30)
        harness.wait_until(lambda: _breaker_state(kube, "maint") == "Closed", timeout=15,
                           what="breaker Closed after its probes")
        assert watch.lowest_serving("chat", since=tripped) >= 3, "chat went below its floor"
        assert watch.lowest_serving("embed", since=tripped) >= 3, "embed lost capacity"
        moved = [(name, after) for name in watch.names()
                 for _, after in harness.actions(watch.history(name))
                 if after.seen_at >= released]
        assert len(moved) == 2, f"expected exactly two moves after the release: {moved}"
        assert len({name for name, _ in moved}) == 2, "an engine was moved twice"

    conditions = kube.get("cb", "maint")["status"].get("conditions") or []
    refused_condition = harness.condition(kube.get("cb", "maint"), "BatchRefused")
    assert refused_condition is not None and refused_condition["status"] == "True", conditions


def test_an_orphan_drain_probes_a_half_open_breaker_and_it_closes(
    kube: harness.Kubectl, operators: Operators,
) -> None:
    """A breaker over every model governs the drain of a deleted model's engines too: the
    drain is its one HalfOpen probe, the probe's outcome is recorded, and it closes. (A
    second copy of the governing rule in the operator once lost that probe: the slot stayed
    taken and the breaker held everything it governs, for good.)"""
    kube.apply(*harness.engines("e", 3), harness.model("chat", replicas=2),
               harness.model("code", replicas=1),
               harness.breaker("all", pause_threshold="10m", half_open_probes=1))
    operators.start()
    harness.wait_serving(kube, {"chat": 2, "code": 1})
    orphan = next(e["metadata"]["name"] for e in kube.items("ie")
                  if e["spec"].get("modelRef") == "code")
    _trip(kube, "all")
    kube.run("delete", "mc", "code")

    def held() -> bool:
        return bool(kube.get("cb", "all")["status"].get("heldActions", 0) >= 1)

    harness.wait_until(held, timeout=10, what="the orphan drain held by the open breaker")
    assert kube.get("ie", orphan)["spec"].get("modelRef") == "code"
    kube.patch("cb", "all", {"spec": {"open": False}})
    harness.wait_until(lambda: _breaker_state(kube, "all") == "Closed", timeout=20,
                       what="breaker Closed after its orphan-drain probe")
    engine = kube.get("ie", orphan)
    assert engine["spec"].get("modelRef") is None and engine["status"]["phase"] == "Idle"
    assert kube.events(reason="BreakerClosed", name="all")
    assert harness.serving(kube, "chat") == 2
