"""Shards sharing one budget object (`capguard.sim.shards`): the global bounds hold across
shards whose writes conflict, a dead shard's grant is lost, and a 409 never double spends."""

from __future__ import annotations

import dataclasses

import pytest

from capguard.sim import scenarios, shards

RATE = scenarios.Rate(per_minute=12.0, burst=3)
# 3 shards x (12 models x 9 units + 12 spares); passes within 50 ms of each other, so
# the shards' writes to the budget object conflict.
SMALL = shards.Setup(shards=3, models=12, spare_engines=12, refreshes=3, rate=RATE,
                     budget=8, spread=0.05, dies_at=480.0, duration=2400.0)


# The same fleet where the rate binds rather than the budget.
RATE_BOUND = dataclasses.replace(SMALL, rate=scenarios.Rate(per_minute=4.0, burst=2), budget=100)


@pytest.mark.parametrize("setup", [SMALL, RATE_BOUND], ids=["budget", "rate"])
def test_the_global_budget_and_rate_hold_across_conflicting_shards(setup: shards.Setup) -> None:
    report = shards.simulate(setup, seed=3)
    assert report.conflicts > 0 and report.takes > 0
    assert report.converge_seconds is not None
    assert report.max_in_flight <= report.budget
    assert report.max_takes_per_window <= report.rate_bound
    assert report.overspent == 0 and report.over_issued <= 1e-9


def test_without_the_precondition_the_same_runs_overspend() -> None:
    """The measures can fail: unconditional writes overwrite other shards' grants, whose
    holders still spend them."""
    budget = shards.simulate(SMALL, seed=3, precondition=False)
    assert budget.overspent > 0 and budget.max_in_flight > budget.budget
    rate = shards.simulate(RATE_BOUND, seed=3, precondition=False)
    assert rate.overspent > 0 and rate.max_takes_per_window > rate.rate_bound


def test_a_dead_shards_grant_expires_and_its_tokens_are_neither_used_nor_returned() -> None:
    run = shards.Run(SMALL, seed=3)
    run.play()
    assert run.dead_grant is not None
    holder, held = run.dead_grant
    ledger = run.ledger
    assert held > 0 and ledger.lost[holder] == held
    # Not one of the held tokens became a take: its takes are those of earlier grants.
    assert ledger.used[holder] == ledger.given[holder] - ledger.returned[holder] - held
    successor = f"{holder.split('#')[0]}#2"
    assert ledger.used[successor] <= ledger.given[successor] - ledger.returned[successor]


def budget(*, tokens: float, grants: dict[str, shards.Grant] | None = None) -> shards.Budget:
    return shards.Budget(tokens=tokens, refilled_at=0.0, unavailable={}, grants=grants or {})


def take(status: shards.Budget, *, holder: str, want: int, now: float) -> shards.Take:
    return shards.take(status, holder=holder, shard=holder.split("#")[0], want=want, used=0,
                       unavailable=0, rate=RATE, room=100, ttl=30.0, now=now)


def test_an_expired_grant_is_dropped_lost_and_counted_as_its_shards_disruptions() -> None:
    dead = shards.Grant(shard="a", count=2, expires_at=30.0)
    status = budget(tokens=1.0, grants={"a#1": dead})
    done = take(status, holder="b#1", want=3, now=40.0)
    assert done.lost == {"a#1": 2}
    assert "a#1" not in done.budget.grants and done.budget.unavailable["a"] == 2
    # The bucket refilled (40 s at 12/min: 8 tokens, capped by the burst of 3) and no more.
    assert done.given == 3 and done.budget.tokens == 0.0
    # The dead holder itself, back after the expiry, finds nothing to spend.
    late = take(status, holder="a#1", want=2, now=40.0)
    assert late.lost == {"a#1": 2} and late.given == 2  # new tokens, the old ones lost


def test_a_conflicting_write_is_retried_and_never_double_spends() -> None:
    obj = shards.BudgetObject(rate=RATE, now=0.0)
    version = obj.version
    first = take(obj.status, holder="a#1", want=3, now=0.0)
    second = take(obj.status, holder="b#1", want=3, now=0.0)
    assert obj.write(first.budget, expect=version)
    assert not obj.write(second.budget, expect=version)  # 409: a wrote first
    retried = take(obj.status, holder="b#1", want=3, now=0.0)
    assert obj.write(retried.budget, expect=obj.version)
    assert (first.given, retried.given, obj.conflicts) == (3, 0, 1)
    # Unconditional, both writes land: 6 tokens handed out of a bucket of 3.
    naive = shards.BudgetObject(rate=RATE, now=0.0)
    a = take(naive.status, holder="a#1", want=3, now=0.0)
    b = take(naive.status, holder="b#1", want=3, now=0.0)
    assert naive.write(a.budget, expect=None) and naive.write(b.budget, expect=None)
    assert a.given + b.given == 6


def test_grants_held_and_the_level_never_pass_the_burst() -> None:
    """A holder that saves tokens cannot spend more than the bucket allows later."""
    done = take(budget(tokens=3.0), holder="a#1", want=3, now=0.0)
    later = take(done.budget, holder="b#1", want=3, now=20.0)  # 4 tokens of refill
    assert later.given == 0 and later.budget.tokens + later.budget.held() <= RATE.burst


def test_the_most_in_any_window() -> None:
    assert shards.max_in_window([0.0, 10.0, 59.0, 60.0, 61.0, 200.0], window=60.0) == 4
    assert shards.max_in_window([], window=60.0) == 0
