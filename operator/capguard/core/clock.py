"""Time as a parameter: the core never reads the wall clock itself."""

from __future__ import annotations

import dataclasses
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
