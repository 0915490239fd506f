"""A backlog of assigns goes out in passes that start small and double while every write
succeeds (`reconcile.slow_start`, after client-go's slowStartBatch)."""

from __future__ import annotations

from capguard.handlers import reconcile

CONFIG = reconcile.Config(first_assigns_per_pass=1000, max_assigns_per_pass=4000)


def _passes(backlog: int, *, failing: frozenset[int] = frozenset()) -> list[int]:
    """The assigns each pass writes until ``backlog`` is done; a pass in ``failing`` (by
    number) has one write fail, which the next pass retries."""
    limit, left, passes = CONFIG.first_assigns_per_pass, backlog, []
    while left:
        executed = min(limit, left)
        failed = 1 if len(passes) in failing else 0
        passes.append(executed)
        left -= executed - failed
        limit = reconcile.slow_start(limit, executed=executed, failed=failed, config=CONFIG)
    return passes


def test_a_backlog_starts_at_the_first_limit_and_doubles_up_to_the_most() -> None:
    assert _passes(10_000) == [1000, 2000, 4000, 3000]
    assert _passes(20_000) == [1000, 2000, 4000, 4000, 4000, 4000, 1000]


def test_a_failed_or_late_write_halves_the_limit_down_to_the_first() -> None:
    assert _passes(10_000, failing=frozenset({2})) == [1000, 2000, 4000, 2000, 1001]
    assert _passes(5_000, failing=frozenset({0, 1})) == [1000, 1000, 1000, 2000, 2]


def test_a_drained_backlog_starts_the_next_one_small() -> None:
    after_small_pass = reconcile.slow_start(4000, executed=12, failed=0, config=CONFIG)
    assert after_small_pass == CONFIG.first_assigns_per_pass
    assert reconcile.slow_start(1000, executed=0, failed=0, config=CONFIG) == 1000


def test_the_pipeline_caps_a_step_at_the_most_a_pass_may_assign() -> None:
    config = reconcile.Config()
    assert config.first_assigns_per_pass <= config.max_assigns_per_pass
    assert config.pipeline().max_assigns_per_step == config.max_assigns_per_pass
