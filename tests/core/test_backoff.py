"""The one retry schedule: capped exponential with jitter, endless for whoever needs it."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from capguard.core import backoff


@given(attempt=st.integers(1, 200), jitter=st.floats(0.0, 1.0))
def test_a_wait_is_within_half_and_all_of_a_capped_doubling(attempt: int, jitter: float) -> None:
    ceiling = min(backoff.CAP, backoff.BASE * 2.0 ** (attempt - 1))
    wait = backoff.delay(attempt, jitter=jitter)
    assert ceiling / 2 <= wait <= ceiling <= backoff.CAP


def test_the_schedule_never_ends_and_starts_over_for_each_request() -> None:
    schedule = backoff.Schedule(jitter=lambda: 1.0)
    first = list(itertools.islice(schedule, 50))
    assert first[:6] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0] and set(first[5:]) == {30.0}
    assert list(itertools.islice(schedule, 3)) == [1.0, 2.0, 4.0]  # a fresh iteration


def test_a_keyed_jitter_is_fixed_by_its_key_and_spread_over_keys() -> None:
    spread = [backoff.jitter_of(f"engine-{i}/1") for i in range(200)]
    assert backoff.jitter_of("engine-0/1") == spread[0]
    assert all(0.0 <= j < 1.0 for j in spread) and min(spread) < 0.1 and max(spread) > 0.9
