"""Restart-safe (DESIGN.md #7): the leader killed with SIGKILL in the middle of a release
and a new replica started. Nothing executed is repeated, nothing stale is executed, and
no floor breaks, on any state the API server stored."""

from __future__ import annotations

import collections
import time

import pytest

from . import harness
from .conftest import Operators


@pytest.mark.slow
def test_sigkill_during_a_release_then_restart_repeats_nothing_and_keeps_the_floor(
    kube: harness.Kubectl, operators: Operators,
) -> None:
    kube.apply(*harness.engines("e", 10),
               harness.model("chat", replicas=6, min_available=4),
               harness.model("embed", replicas=4, min_available=3),
               harness.breaker("maint", pause_threshold="2s", max_batch_after_pause=1))
    first = operators.start(identity=f"{kube.namespace}-first", leader_election=True)
    harness.wait_serving(kube, {"chat": 6, "embed": 4}, timeout=30)
    with harness.FleetWatch(kube) as watch:
        kube.patch("cb", "maint", {"spec": {"open": True}})
        harness.wait_until(lambda: kube.get("cb", "maint")["status"]["state"] == "Open",
                           timeout=10, what="breaker Open")
        tripped = time.monotonic()
        kube.patch("mc", "chat", {"spec": {"replicas": 3, "minAvailable": 3}})
        kube.patch("mc", "embed", {"spec": {"replicas": 7}})
        harness.wait_until(
            lambda: (kube.get("cb", "maint")["status"].get("releasePlan") or {}).get("size", 0)
            >= 3, timeout=10, what="a release plan of three moves")
        time.sleep(max(0.0, tripped + 2.5 - time.monotonic()))  # a pause longer than 2s
        released = time.monotonic()
        kube.patch("cb", "maint", {"spec": {"open": False}})

        def moved_since_release() -> list[tuple[str, harness.EngineState]]:
            return [(name, after) for name in watch.names()
                    for _, after in harness.actions(watch.history(name))
                    if after.seen_at >= released]

        harness.wait_until(moved_since_release, timeout=15, interval=0.02,
                           what="the first action after the release")
        first.kill()  # SIGKILL: no lease release, nothing flushed
        before_restart = len(moved_since_release())
        second = operators.start(identity=f"{kube.namespace}-second", leader_election=True)
        harness.wait_serving(kube, {"chat": 3, "embed": 7}, timeout=40)
        harness.wait_until(lambda: kube.get("cb", "maint")["status"]["state"] == "Closed",
                           timeout=15, what="breaker Closed after the restart")

        assert watch.lowest_serving("chat", since=tripped) >= 3, "chat went below its floor"
        assert watch.lowest_serving("embed", since=tripped) >= 4, "embed lost capacity"
        moved = moved_since_release()
        per_engine = collections.Counter(name for name, _ in moved)
        assert len(moved) == 3 and set(per_engine.values()) == {1}, (
            f"expected three engines moved once each after the release: {moved}")
        ids = [after.action_id for _, after in moved]
        assert len(set(ids)) == len(ids), f"an action id was written twice: {ids}"
        assert harness.planned_from_elsewhere(watch) == []
    assert first.process.returncode == -9
    metrics = second.metrics()
    assert metrics.total("capguard_leader") == 1
    executed = metrics.total("capguard_actions_total", result="executed")
    assert executed == 3 - before_restart, (executed, before_restart)
    assert kube.run("get", "lease", harness.LEASE_NAME, f"--namespace={harness.OPERATOR_NAMESPACE}",
                    "--output=jsonpath={.spec.holderIdentity}").stdout == second.identity
