"""Capped exponential backoff with jitter: the one schedule for every retry.

The pipeline holds an action whose write failed (its engine waits), the writer waits
out an unwell API, and Kopf's own requests retry on the same schedule, never giving up.
Randomness comes in as a number: the core stays deterministic (`jitter_of` draws it
from a key), the I/O layers pass a random one.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from typing import Final

BASE: Final = 1.0  # seconds before the first retry (at most)
CAP: Final = 30.0  # never longer than this between tries


def delay(attempt: int, *, jitter: float, base: float = BASE, cap: float = CAP) -> float:
    """The wait after the ``attempt``-th failure in a row (1 = the first): half of a capped
    doubling is fixed, half spread by ``jitter`` in [0, 1), so retries that failed together
    do not come back together."""
    ceiling = min(cap, base * 2.0 ** max(0, attempt - 1))
    return ceiling / 2 + ceiling / 2 * min(max(jitter, 0.0), 1.0)


def jitter_of(key: str) -> float:
    """A jitter in [0, 1) fixed by ``key``: the same failure waits the same time."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclasses.dataclass(frozen=True)
class Schedule:
    """An endless backoff schedule, for whoever retries forever (Kopf's `error_backoffs`).

    Each iteration starts over at the first attempt; ``jitter`` is called once per wait.
    """

    jitter: Callable[[], float]
    base: float = BASE
    cap: float = CAP

    def __iter__(self) -> Iterator[float]:
        attempt = 0
        while True:
            attempt += 1
            yield delay(attempt, jitter=self.jitter(), base=self.base, cap=self.cap)
