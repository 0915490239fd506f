"""The breaker state machine: Closed -> Open (manual or automatic) -> HalfOpen -> Closed.

A machine remembers what the gate needs to stop a post-pause flush: when the current
pause began, when it was released and how long it lasted. It also counts time per
state, refused actions and probe results, for status and metrics (which actions each
breaker holds is core/holdings.py's).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
from collections.abc import Mapping
from typing import Any, Final

from capguard.core import clock, specs

# A failure rate over two outcomes says little; below this many we never trip on it.
MIN_OUTCOMES_FOR_RATE: Final = 5


class BreakerState(enum.Enum):
    CLOSED = "Closed"
    OPEN = "Open"
    HALF_OPEN = "HalfOpen"


class TripReason(enum.Enum):
    MANUAL = "Manual"
    DRIFT = "Drift"
    FLOOR_BREACH = "FloorBreach"
    ACTION_FAILURES = "ActionFailures"
    PROBE_FAILED = "ProbeFailed"


@dataclasses.dataclass(frozen=True)
class FleetSignals:
    """What the fleet looks like to a breaker's auto-trip rules (from ``drift.signals``)."""

    max_drift_ratio: float = 0.0
    floor_breached: bool = False


class BreakerMachine:
    def __init__(
        self,
        spec: specs.BreakerSpec,
        *,
        now: float,
        state: BreakerState | None = None,
        since: float | None = None,
        last_pause_seconds: float = 0.0,
    ) -> None:
        """A new machine follows its spec; pass ``state``/``since`` to restore one from status."""
        self.spec = spec
        if state is None:
            state = BreakerState.OPEN if spec.open else BreakerState.CLOSED
        self.state = state
        self.since = now if since is None else since
        self.reason: TripReason | None = TripReason.MANUAL if spec.open else None
        # Start of the current pause; a HalfOpen that fails back to Open continues it.
        self.opened_at: float | None = self.since if state is BreakerState.OPEN else None
        self.released_at: float | None = self.since if state is BreakerState.HALF_OPEN else None
        self.last_pause_seconds = last_pause_seconds
        self.probes_in_flight = 0
        self.probes_succeeded = 0
        self.refused = 0
        self._seconds: dict[BreakerState, float] = dict.fromkeys(BreakerState, 0.0)
        self._outcomes: collections.deque[tuple[float, bool]] = collections.deque()

    @classmethod
    def restore(
        cls,
        spec: specs.BreakerSpec,
        *,
        now: float,
        state: BreakerState,
        since: float,
        reason: TripReason | None = None,
        opened_at: float | None = None,
        last_pause_seconds: float | None = None,
        seconds_in_state: Mapping[BreakerState, float] | None = None,
        reported_at: float | None = None,
        probes_succeeded: int = 0,
        refused: int = 0,
    ) -> BreakerMachine:
        """A machine as a restarted operator finds it in status: the same pause continues.

        ``opened_at`` is when the current pause began (it may precede ``since`` when a
        failed probe reopened the breaker); in HalfOpen it is what a failed probe
        continues, and without ``last_pause_seconds`` the pause is ``since - opened_at``.
        ``seconds_in_state`` is ``secondsInState`` as last written, at ``reported_at``
        (default: now, which loses only the time since that write).
        """
        machine = cls(spec, now=now, state=state, since=since)
        if reason is not None:
            machine.reason = reason
        if opened_at is not None and state is not BreakerState.CLOSED:
            machine.opened_at = min(opened_at, since)
        if last_pause_seconds is None and state is BreakerState.HALF_OPEN:
            start = machine.opened_at
            last_pause_seconds = since - start if start is not None else 0.0
        machine.last_pause_seconds = last_pause_seconds or 0.0
        if seconds_in_state is not None:
            spent = dict.fromkeys(BreakerState, 0.0) | dict(seconds_in_state)
            current = (reported_at if reported_at is not None else now) - since
            spent[state] = max(0.0, spent[state] - current)  # since-based again from here
            machine._seconds = spent
        machine.probes_succeeded = probes_succeeded if state is BreakerState.HALF_OPEN else 0
        machine.refused = refused
        return machine

    @property
    def name(self) -> str:
        return self.spec.name

    def observe(self, spec: specs.BreakerSpec, signals: FleetSignals, now: float) -> None:
        """Follow the spec (manual trip and release) and the auto-trip thresholds."""
        self.spec = spec
        self._forget_old_outcomes(now)
        if spec.open:
            if self.state is not BreakerState.OPEN:
                self._open(TripReason.MANUAL, now=now)
            self.reason = TripReason.MANUAL
        elif self.state is BreakerState.OPEN:
            if self.reason is TripReason.MANUAL or self._cooled_down(now):
                self._release(now)
        elif self.state is BreakerState.CLOSED:
            trip = self._auto_trip(signals)
            if trip is not None:
                self._open(trip, now=now)

    def record_outcome(self, success: bool, now: float) -> None:
        """How an executed action ended: what `maxActionFailureRate` is measured on."""
        self._outcomes.append((now, success))

    def record_probe(self, success: bool, now: float) -> None:
        """The outcome of an action executed as a probe; in HalfOpen it decides the state.

        The probe's slot is free again whatever the state now: a probe that outlives its
        HalfOpen (tripped meanwhile) holds its slot into the next one until it ends."""
        self.record_outcome(success, now)
        self.probes_in_flight = max(0, self.probes_in_flight - 1)
        if self.state is not BreakerState.HALF_OPEN:
            return
        if not success:
            self._open(TripReason.PROBE_FAILED, now=now)
            return
        self.probes_succeeded += 1
        if self.probes_succeeded >= self.spec.half_open_probes:
            self._move(BreakerState.CLOSED, now=now)
            self.reason = None

    def probe_slots(self) -> int:
        """How many more actions HalfOpen lets through before their outcomes are known."""
        if self.state is not BreakerState.HALF_OPEN:
            return 0
        return max(0, self.spec.half_open_probes - self.probes_in_flight - self.probes_succeeded)

    def start_probe(self) -> None:
        self.probes_in_flight += 1

    def cancel_probe(self) -> None:
        """A probe that never ran (its write lost with 409 or failed) gives its slot back."""
        self.probes_in_flight = max(0, self.probes_in_flight - 1)

    def count_refused(self, actions: int) -> None:
        self.refused += actions

    def snapshot(self, now: float) -> Snapshot:
        return Snapshot(
            name=self.name,
            generation=self.spec.generation,
            state=self.state,
            since=self.since,
            reason=self.reason,
            opened_at=self.opened_at,
            released_at=self.released_at,
            last_pause_seconds=self.last_pause_seconds,
            probes_in_flight=self.probes_in_flight,
            probes_succeeded=self.probes_succeeded,
            probe_slots=self.probe_slots(),
            refused=self.refused,
            seconds_in_state=self.seconds_in_state(now),
        )

    def seconds_in_state(self, now: float) -> dict[BreakerState, float]:
        spent = dict(self._seconds)
        spent[self.state] += now - self.since
        return spent

    def failure_rate(self) -> float:
        if len(self._outcomes) < MIN_OUTCOMES_FOR_RATE:
            return 0.0
        return sum(1 for _, ok in self._outcomes if not ok) / len(self._outcomes)

    def _auto_trip(self, signals: FleetSignals) -> TripReason | None:
        rules = self.spec.auto_trip
        if rules is None:
            return None
        if rules.max_drift_ratio is not None and signals.max_drift_ratio > rules.max_drift_ratio:
            return TripReason.DRIFT
        if rules.on_floor_breach and signals.floor_breached:
            return TripReason.FLOOR_BREACH
        limit = rules.max_action_failure_rate
        if limit is not None and self.failure_rate() > limit:
            return TripReason.ACTION_FAILURES
        return None

    def _cooled_down(self, now: float) -> bool:
        # An automatic trip has nobody to release it: after one window it probes again.
        window = self.spec.auto_trip.window if self.spec.auto_trip else 0.0
        return now - self.since >= window

    def _forget_old_outcomes(self, now: float) -> None:
        window = self.spec.auto_trip.window if self.spec.auto_trip else 0.0
        while self._outcomes and self._outcomes[0][0] < now - window:
            self._outcomes.popleft()

    def _open(self, reason: TripReason, *, now: float) -> None:
        if self.state is BreakerState.CLOSED or self.opened_at is None:
            self.opened_at = now
        self.reason = reason
        self._move(BreakerState.OPEN, now=now)

    def _release(self, now: float) -> None:
        self.released_at = now
        self.last_pause_seconds = now - (self.opened_at if self.opened_at is not None else now)
        self.probes_succeeded = 0
        self._move(BreakerState.HALF_OPEN, now=now)

    def _move(self, state: BreakerState, *, now: float) -> None:
        self._seconds[self.state] += now - self.since
        self.state = state
        self.since = now
        if state is BreakerState.CLOSED:
            self.opened_at = None


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A machine at one moment, as a value: for status, metrics and tests."""

    name: str
    generation: int
    state: BreakerState
    since: float
    reason: TripReason | None
    opened_at: float | None
    released_at: float | None
    last_pause_seconds: float
    probes_in_flight: int
    probes_succeeded: int
    probe_slots: int
    refused: int
    seconds_in_state: Mapping[BreakerState, float]


# -- the status format: what is written to a CircuitBreaker's status and read back -----


def saved_status(snapshot: Snapshot, *, now: float) -> dict[str, Any]:
    """The machine's part of `status`: everything a restarted operator restores it from."""
    return {
        "state": snapshot.state.value,
        "since": clock.timestamp(snapshot.since),
        "reason": snapshot.reason.value if snapshot.reason else "",
        "refusedActions": snapshot.refused,
        "probesSucceeded": snapshot.probes_succeeded,
        "secondsInState": {s.value: round(v, 1) for s, v in snapshot.seconds_in_state.items()},
        "secondsInStateAt": clock.precise_timestamp(now),
        # Where the current pause began (None: the merge patch removes it).
        "pausedSince": None if snapshot.opened_at is None else clock.timestamp(snapshot.opened_at),
    }


def saved_state(status: Mapping[str, Any]) -> BreakerState | None:
    """The state `status` shows (what `kubectl get cb` showed), None when it shows none."""
    try:
        return BreakerState(status.get("state"))
    except ValueError:
        return None


def restore(spec: specs.BreakerSpec, status: Mapping[str, Any], *, now: float) -> BreakerMachine:
    """A machine as `saved_status` left it: a restart keeps the pause and its length."""
    state = saved_state(status)
    if state is None:
        return BreakerMachine(spec, now=now)
    reason = None
    with contextlib.suppress(ValueError):
        reason = TripReason(status.get("reason"))
    return BreakerMachine.restore(
        spec,
        now=now,
        state=state,
        since=clock.parse_timestamp(status.get("since")) or now,
        reason=reason,
        opened_at=clock.parse_timestamp(status.get("pausedSince")),
        seconds_in_state=_seconds_in_state(status),
        reported_at=clock.parse_timestamp(status.get("secondsInStateAt")),
        probes_succeeded=int(status.get("probesSucceeded") or 0),
        refused=int(status.get("refusedActions") or 0),
    )


def _seconds_in_state(status: Mapping[str, Any]) -> dict[BreakerState, float] | None:
    saved = status.get("secondsInState")
    if not isinstance(saved, Mapping):
        return None
    return {
        state: float(value)
        for state in BreakerState
        if isinstance(value := saved.get(state.value), int | float)
    }
