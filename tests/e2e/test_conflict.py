"""No stale action: a write planned from a resourceVersion that no longer holds loses
with 409, is counted, and the engine is re-planned from what the cluster shows.

The other write lands between the operator's planning and its action's arrival by
construction (`harness.Interposer` holds the action's PATCH while it writes the engine),
not by racing a writer against the operator: that race was lost or won by timing alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from . import harness
from .conftest import Operators


@pytest.fixture
def interpose(kube: harness.Kubectl,
              tmp_path: Path) -> Iterator[Callable[..., harness.Interposer]]:
    """Interposers, stopped after the operators that use them (requested before
    `operators`): an operator never sees its API server vanish, even on failure."""
    with contextlib.ExitStack() as stack:
        def start(**kwargs: Any) -> harness.Interposer:
            return stack.enter_context(harness.Interposer(kube, directory=tmp_path, **kwargs))
        yield start


def test_a_stale_action_loses_with_409_and_is_replanned(
    kube: harness.Kubectl, interpose: Callable[..., harness.Interposer], operators: Operators,
) -> None:
    kube.apply(harness.engine("e-0"), harness.model("chat", replicas=0))
    interposer = interpose(engine_name="e-0")
    operator = operators.start(kubeconfig=interposer.kubeconfig)
    harness.wait_until(
        lambda: kube.get("ie", "e-0").get("status", {}).get("phase") == "Idle",
        timeout=10, what="engine e-0 Idle")
    with harness.FleetWatch(kube) as watch:
        kube.run("scale", "mc/chat", "--replicas=1")
        [lost] = harness.wait_until(lambda: interposer.intercepted, timeout=15,
                                    what="the operator's action on e-0")
        assert int(lost.touched_to) > int(lost.planned_from), lost
        assert lost.status == 409, f"a write over a changed engine was accepted: {lost}"
        harness.wait_until(
            lambda: operator.metrics().total("capguard_actions_total",
                                             result="conflict") >= 1,
            timeout=10, what="the lost action counted (capguard_actions_total conflict)")
        harness.wait_serving(kube, {"chat": 1})
        assert harness.planned_from_elsewhere(watch) == []
    body = kube.get("ie", "e-0")
    assert body["spec"]["modelRef"] == "chat" and body["status"]["phase"] == "Serving"
    assert body["metadata"]["labels"].get("e2e-touch") == "1"  # the other write survived
    # Re-planned: a new action, from a version at or after the other write.
    last = body["status"]["lastAction"]
    assert body["metadata"]["annotations"][harness.ACTION_ID] == last["id"] != lost.action_id
    assert int(last["plannedFromResourceVersion"]) >= int(lost.touched_to), (last, lost)
    conflicts = harness.wait_until(lambda: kube.events(reason="ActionConflict", name="e-0"),
                                   timeout=10, what="an ActionConflict Event on e-0")
    assert any(lost.action_id in e["message"]
               and f"resourceVersion {lost.planned_from}" in e["message"]
               for e in conflicts), conflicts
    metrics = operator.metrics()
    assert metrics.total("capguard_actions_total", type="assign", result="executed") == 1
    assert len(interposer.intercepted) == 1


def test_an_executed_action_is_recorded_even_if_the_engine_changes_before_its_record(
    kube: harness.Kubectl, interpose: Callable[..., harness.Interposer], operators: Operators,
) -> None:
    kube.apply(harness.engine("e-0"), harness.model("chat", replicas=0))
    interposer = interpose(engine_name="e-0", hold="record")
    operator = operators.start(kubeconfig=interposer.kubeconfig)
    harness.wait_until(
        lambda: kube.get("ie", "e-0").get("status", {}).get("phase") == "Idle",
        timeout=10, what="engine e-0 Idle")
    kube.run("scale", "mc/chat", "--replicas=1")
    [held] = harness.wait_until(lambda: interposer.intercepted, timeout=15,
                                what="the record of the operator's action on e-0")
    harness.wait_serving(kube, {"chat": 1})
    body = kube.get("ie", "e-0")
    assert body["metadata"]["annotations"][harness.ACTION_ID] == held.action_id
    assert operator.metrics().total("capguard_actions_total", result="executed") == 1
    # What the CRD promises: the last action executed on the engine, in its status, also
    # when the record's first write lost to the interposed one (gap 5, fixed).
    last = harness.wait_until(
        lambda: kube.get("ie", "e-0")["status"].get("lastAction"), timeout=10,
        what="status.lastAction of the executed action")
    assert last["id"] == held.action_id, (last, held)
