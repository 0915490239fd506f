"""Drift and the auto-trip signals, by example."""

from __future__ import annotations

from capguard.core import breaker, drift, fleet, queue

from .core_fleets import breaker as breaker_spec
from .core_fleets import engine, model, serving_fleet

CB = breaker_spec(autoTrip={"maxDriftRatio": 0.25, "onFloorBreach": True, "window": "5m"})


def observed(tracker: drift.SignalTracker, found: fleet.Fleet, now: float) -> breaker.FleetSignals:
    tracker.observe(drift.measure(found, queue.ActionQueue(), now), now=now)
    return tracker.signals(breaker=CB, models=found.models, now=now)


def test_a_fleet_being_brought_up_does_not_trip_on_its_floor() -> None:
    cold = fleet.Fleet.of(engines=[engine("e1")], models=[model("m", replicas=1)])
    tracker = drift.SignalTracker()
    assert not observed(tracker, cold, 0.0).floor_breached  # never available yet
    up = cold.with_engine(engine("e1", model="m"))
    assert not observed(tracker, up, 10.0).floor_breached
    assert observed(tracker, cold, 20.0).floor_breached  # it was available, then lost it


def test_available_before_a_restart_counts_as_established() -> None:
    cold = fleet.Fleet.of(engines=[engine("e1")], models=[model("m", replicas=1)])
    tracker = drift.SignalTracker()
    tracker.observe(drift.measure(cold, queue.ActionQueue(), 0.0), now=0.0, available=["m"])
    assert tracker.signals(breaker=CB, models=["m"], now=0.0).floor_breached


def test_drift_trips_only_after_a_window_without_progress() -> None:
    found = serving_fleet({"m": 2}).with_model(model("m", replicas=4, minAvailable=0))
    tracker = drift.SignalTracker()
    assert observed(tracker, found, 0.0).max_drift_ratio == 0.0  # a scale-up, just now
    assert observed(tracker, found, 299.0).max_drift_ratio == 0.0
    assert observed(tracker, found, 300.0).max_drift_ratio == 0.5  # five minutes, stuck
    better = found.with_engine(engine("m-new", model="m"))  # progress: one more serving
    assert observed(tracker, better, 310.0).max_drift_ratio == 0.0
    assert observed(tracker, better, 610.0).max_drift_ratio == 0.25
    converged = better.with_model(model("m", replicas=3, minAvailable=0))
    assert observed(tracker, converged, 620.0) == breaker.FleetSignals()
    assert tracker.drifting_since == {}


def test_the_breaker_trips_on_the_tracked_signals() -> None:
    found = serving_fleet({"m": 2}).with_model(model("m", replicas=4, minAvailable=0))
    machine = breaker.BreakerMachine(CB, now=0.0)
    tracker = drift.SignalTracker()
    for now in (0.0, 150.0, 300.0):
        machine.observe(CB, observed(tracker, found, now), now)
    assert (machine.state, machine.reason) == (breaker.BreakerState.OPEN, breaker.TripReason.DRIFT)


def test_a_model_reaches_desired_only_at_its_revision_with_nothing_on_the_way() -> None:
    engines = [engine("a", model="chat", revision="r1"), engine("b", model="chat", revision="r2")]
    chat = model("chat", replicas=2, revision="r2")
    found = drift.measure(fleet.Fleet.of(engines=engines, models=[chat]),
                          queue.ActionQueue(), 0.0).models["chat"]
    assert (found.serving, found.outdated, found.drift) == (2, 1, 0)
    assert not found.reached_desired  # one unit still serves r1
    current = drift.measure(
        fleet.Fleet.of(engines=[engine("a", model="chat", revision="r2"), engines[1]],
                       models=[chat]), queue.ActionQueue(), 0.0).models["chat"]
    assert current.reached_desired
    assert not drift.ModelDrift(desired=2, serving=2, floor=1, draining=1).reached_desired
    assert not drift.ModelDrift(desired=3, serving=2, floor=1).reached_desired
