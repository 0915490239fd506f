"""Two replicas with leader election: exactly one acts (the Lease holder); the other
observes and serves metrics but writes nothing; it takes over when the leader dies."""

from __future__ import annotations

import signal
import time

import pytest

from . import harness
from .conftest import Operators


def _lease_holder(kube: harness.Kubectl) -> str:
    return kube.run("get", "lease", harness.LEASE_NAME, f"--namespace={harness.OPERATOR_NAMESPACE}",
                    "--output=jsonpath={.spec.holderIdentity}").stdout


def _two_replicas(
    kube: harness.Kubectl, operators: Operators,
) -> tuple[harness.OperatorProcess, harness.OperatorProcess]:
    """Engines e-0..3 and model chat (2), and two replicas: (the leader, the standby)."""
    kube.apply(*harness.engines("e", 4), harness.model("chat", replicas=2))
    replicas = [operators.start(identity=f"{kube.namespace}-{n}", leader_election=True)
                for n in ("a", "b")]

    def one_leader() -> harness.OperatorProcess | None:
        leading = [r for r in replicas if r.leading()]
        return leading[0] if len(leading) == 1 else None

    leader = harness.wait_until(one_leader, timeout=30, what="exactly one leader")
    return leader, next(r for r in replicas if r is not leader)


def _model_and_pool_series(page: harness.MetricsPage) -> set[str]:
    return {name for name, _, _ in page.samples
            if name.startswith(("capguard_model_", "capguard_pool_"))}


@pytest.mark.slow
def test_two_replicas_exactly_one_acts_and_the_other_takes_over_when_it_dies(
    kube: harness.Kubectl, operators: Operators,
) -> None:
    # A Lease left by a killed leader expires first (3s here; 15s for a deployed one).
    leader, follower = _two_replicas(kube, operators)
    assert _lease_holder(kube) == leader.identity
    harness.wait_serving(kube, {"chat": 2})
    assert not follower.leading()
    follower_metrics, leader_metrics = follower.metrics(), leader.metrics()
    assert follower_metrics.total("capguard_actions_total") == 0
    assert leader_metrics.total("capguard_actions_total", result="executed") >= 2
    # Only the leader exports model and pool gauges (a standby's copy would make every
    # alert fire twice); both export the process, Python and build series.
    harness.wait_until(
        lambda: leader.metrics().total("capguard_model_serving_units", model="chat") == 2,
        timeout=10, what="the leader's metrics to show chat serving 2")
    assert _model_and_pool_series(follower_metrics) == set()
    for page in (leader_metrics, follower_metrics):
        names = {name for name, _, _ in page.samples}
        assert {"process_cpu_seconds_total", "process_resident_memory_bytes",
                "python_gc_collections_total", "python_info", "capguard_build_info",
                "capguard_reconcile_errors_total"} <= names
        assert not [n for n in names if n.endswith("_created")], "counters export _created"
    system = kube.in_namespace(harness.OPERATOR_NAMESPACE)
    writers = {e.get("reportingInstance") for e in kube.items("events") + system.items("events")
               if e.get("reportingComponent") == "capguard"}
    assert leader.identity in writers and follower.identity not in writers, writers

    leader.kill()
    harness.wait_until(follower.leading, timeout=15, what="the standby to take over")
    assert _lease_holder(kube) == follower.identity
    kube.run("scale", "mc/chat", "--replicas=3")
    harness.wait_serving(kube, {"chat": 3})
    assert follower.metrics().total("capguard_actions_total", result="executed") >= 1
    harness.wait_until(
        lambda: follower.metrics().total("capguard_model_serving_units", model="chat") == 3,
        timeout=10, what="the new leader's metrics to show chat serving 3")
    harness.wait_until(
        lambda: [e for e in system.events(reason="LeaderChanged")
                 if e.get("reportingInstance") == follower.identity],
        timeout=10, what="a LeaderChanged Event from the new leader")


def test_sigterm_hands_the_lease_over_and_the_standby_acts_at_once(
    kube: harness.Kubectl, operators: Operators,
) -> None:
    """On SIGTERM the leader gives the Lease up before it exits (and says so), so the
    standby acts within two seconds instead of waiting out the lease."""
    leader, standby = _two_replicas(kube, operators)
    harness.wait_serving(kube, {"chat": 2})
    harness.wait_until(lambda: standby.metrics().total("capguard_leader") == 0, timeout=5,
                       what="the standby to export capguard_leader 0")
    leader.process.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    holder = harness.wait_until(lambda: _lease_holder(kube) == standby.identity, timeout=5,
                                what="the standby to hold the Lease")
    took_over = time.monotonic() - stopped
    print(f"standby holds the Lease {took_over:.2f}s after SIGTERM")
    kube.run("scale", "mc/chat", "--replicas=3")
    scaled = time.monotonic()
    harness.wait_serving(kube, {"chat": 3})
    assert holder and took_over < 2.0, f"the standby took the Lease after {took_over:.1f}s"
    acted = [e for e in kube.items("ie") if e["spec"].get("modelRef") == "chat"]
    assert len(acted) == 3 and time.monotonic() - scaled < 10
    leader.process.wait(timeout=10)
    assert leader.process.returncode == 0
    log = leader.log()
    assert "Released the lease" in log, log[-2000:]
    assert "Traceback" not in log, log[-2000:]
