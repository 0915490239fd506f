"""The breaker state machine, by example."""

from __future__ import annotations

import dataclasses

from capguard.core import breaker

from .core_fleets import breaker as breaker_spec

S = breaker.BreakerState
CALM = breaker.FleetSignals()


def test_manual_trip_release_probes_then_closed_with_time_per_state() -> None:
    spec = breaker_spec(halfOpenProbes=2)
    machine = breaker.BreakerMachine(spec, now=0.0)
    machine.observe(dataclasses.replace(spec, open=True), CALM, 10.0)
    assert (machine.state, machine.reason) == (S.OPEN, breaker.TripReason.MANUAL)
    machine.observe(spec, CALM, 610.0)
    assert machine.state is S.HALF_OPEN
    assert (machine.released_at, machine.last_pause_seconds) == (610.0, 600.0)
    assert machine.probe_slots() == 2
    machine.start_probe()
    machine.record_probe(True, 620.0)
    assert machine.state is S.HALF_OPEN and machine.probe_slots() == 1
    machine.record_probe(True, 630.0)
    assert machine.state is S.CLOSED
    assert machine.seconds_in_state(700.0) == {S.CLOSED: 80.0, S.OPEN: 600.0, S.HALF_OPEN: 20.0}


def test_a_failed_probe_reopens_and_the_pause_continues() -> None:
    spec = breaker_spec(open=True)
    machine = breaker.BreakerMachine(spec, now=0.0)
    machine.observe(dataclasses.replace(spec, open=False), CALM, 100.0)
    machine.record_probe(False, 110.0)
    assert (machine.state, machine.reason) == (S.OPEN, breaker.TripReason.PROBE_FAILED)
    assert machine.opened_at == 0.0  # one pause from 0, not a new one from 110
    machine.observe(dataclasses.replace(spec, open=False), CALM, 400.0)
    assert machine.state is S.HALF_OPEN and machine.last_pause_seconds == 400.0


def test_auto_trip_on_drift_floor_breach_and_failure_rate() -> None:
    spec = breaker_spec(autoTrip={"maxDriftRatio": 0.3, "maxActionFailureRate": 0.5})
    drifting = breaker.BreakerMachine(spec, now=0.0)
    drifting.observe(spec, breaker.FleetSignals(max_drift_ratio=0.4), 1.0)
    assert (drifting.state, drifting.reason) == (S.OPEN, breaker.TripReason.DRIFT)
    breached = breaker.BreakerMachine(spec, now=0.0)
    breached.observe(spec, breaker.FleetSignals(floor_breached=True), 1.0)
    assert breached.reason is breaker.TripReason.FLOOR_BREACH
    failing = breaker.BreakerMachine(spec, now=0.0)
    for ok in (True, False, False, False, True):
        failing.record_probe(ok, 1.0)
    failing.observe(spec, CALM, 2.0)
    assert failing.reason is breaker.TripReason.ACTION_FAILURES


def test_an_automatic_trip_probes_again_after_its_window() -> None:
    spec = breaker_spec(autoTrip={"maxDriftRatio": 0.3, "window": "2m"})
    machine = breaker.BreakerMachine(spec, now=0.0)
    machine.observe(spec, breaker.FleetSignals(max_drift_ratio=0.9), 0.0)
    machine.observe(spec, breaker.FleetSignals(max_drift_ratio=0.9), 60.0)
    assert machine.state is S.OPEN
    machine.observe(spec, breaker.FleetSignals(max_drift_ratio=0.9), 120.0)
    assert machine.state is S.HALF_OPEN  # drift does not re-trip HalfOpen; probes decide


def test_restored_from_status() -> None:
    machine = breaker.BreakerMachine(
        breaker_spec(), now=500.0, state=S.HALF_OPEN, since=450.0, last_pause_seconds=900.0
    )
    assert machine.released_at == 450.0 and machine.last_pause_seconds == 900.0
    assert machine.seconds_in_state(500.0)[S.HALF_OPEN] == 50.0


def test_a_probe_that_never_ran_gives_its_slot_back() -> None:
    spec = breaker_spec(open=True, halfOpenProbes=1)
    machine = breaker.BreakerMachine(spec, now=0.0)
    machine.observe(dataclasses.replace(spec, open=False), CALM, 60.0)
    machine.start_probe()
    assert machine.probe_slots() == 0
    machine.cancel_probe()  # the write lost with 409: the probe never happened
    assert machine.probe_slots() == 1 and machine.state is S.HALF_OPEN
    machine.cancel_probe()  # never below zero
    assert machine.probes_in_flight == 0


def test_restore_continues_the_same_pause_and_the_time_per_state() -> None:
    spec = breaker_spec(open=True, halfOpenProbes=2)
    released = dataclasses.replace(spec, open=False)
    original = breaker.BreakerMachine(spec, now=0.0)
    original.observe(released, CALM, 300.0)  # HalfOpen after a 300 s pause
    original.record_probe(False, 320.0)  # a failed probe: Open again, the same pause
    written = original.seconds_in_state(350.0)  # secondsInState as last written
    restored = breaker.BreakerMachine.restore(
        released,
        now=400.0,
        state=original.state,
        since=original.since,
        reason=original.reason,
        opened_at=original.opened_at,
        seconds_in_state=written,
        reported_at=350.0,
    )
    assert restored.seconds_in_state(400.0) == original.seconds_in_state(400.0)
    for machine in (original, restored):
        machine.observe(released, CALM, 620.0)  # a probe failure cools down like a trip
        assert machine.state is S.HALF_OPEN and machine.last_pause_seconds == 620.0


def test_restore_in_half_open_keeps_the_pause_length_and_the_probes() -> None:
    restored = breaker.BreakerMachine.restore(
        breaker_spec(halfOpenProbes=3),
        now=1_000.0,
        state=S.HALF_OPEN,
        since=900.0,
        opened_at=100.0,
        probes_succeeded=2,
        refused=7,
    )
    assert (restored.released_at, restored.last_pause_seconds) == (900.0, 800.0)
    assert restored.probe_slots() == 1 and restored.refused == 7
    restored.record_probe(False, 1_010.0)
    assert restored.state is S.OPEN and restored.opened_at == 100.0  # the pause continues
