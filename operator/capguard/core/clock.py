"""Time as a parameter: the core never reads the wall clock itself."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Protocol


class Clock(Protocol):
    """Anything that tells the time in seconds (the operator passes a wall clock)."""

    def now(self) -> float: ...


@dataclasses.dataclass
class FakeClock:
    """A clock that moves only when told to: tests and the simulator drive it."""

    t: float = 0.0

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"a clock cannot go back (advance by {seconds})")
        self.t += seconds
        return self.t


# -- time as written in status (metav1.Time) ------------------------------------------


def timestamp(epoch: float) -> str:
    """RFC 3339 in UTC with whole seconds (metav1.Time)."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def precise_timestamp(epoch: float) -> str:
    """RFC 3339 in UTC with exactly six fractional digits: metav1.MicroTime, which a real API
    server requires of a Lease's times and an Event's eventTime (a MicroTime without them is
    a 400), and the sub-second `since` of phase timing in compressed demos."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
