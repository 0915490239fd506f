"""A shard's grant: the takes one triage may execute when tokens come from a shared budget."""

from __future__ import annotations

from capguard.core import gate, pipeline, planner, queue

from .core_fleets import model, serving_fleet

V, R = gate.Verdict, gate.Reason


def test_a_grant_caps_the_takes_and_holds_the_rest_as_rate_limited() -> None:
    found = serving_fleet({"m": 10}, minAvailable=1, maxUnavailable=10).with_model(
        model("m", replicas=2, minAvailable=1, maxUnavailable=10,
              rateLimit={"actionsPerMinute": 60, "burst": 5}))
    q = queue.ActionQueue()
    q.enqueue(planner.plan(found), found, 0.0)
    g = gate.Gate(gate.GateConfig(fleet_max_unavailable_percent=100))
    capped = g.triage(q, found, {}, 0.0, granted=2).decisions
    assert [d.verdict for d in capped].count(V.EXECUTE) == 2
    held = [d for d in capped if d.verdict is V.HOLD]
    assert {d.reason for d in held} == {R.RATE_LIMITED}
    assert "grant" in held[0].message
    # A take held by the grant spent no token of the gate's own bucket: 3 of 5 are left.
    assert [d.verdict for d in g.triage(q, found, {}, 0.0).decisions].count(V.EXECUTE) == 3


def test_the_pipeline_passes_the_grant_to_the_gate() -> None:
    found = serving_fleet({"m": 10}, minAvailable=1, maxUnavailable=10).with_model(
        model("m", replicas=2, minAvailable=1, maxUnavailable=10))
    config = pipeline.Config(gate=gate.GateConfig(fleet_max_unavailable_percent=100))
    granted = pipeline.Pipeline(config).step(pipeline.Observed(found, granted=3), 0.0)
    free = pipeline.Pipeline(config).step(pipeline.Observed(found), 0.0)
    assert (len(granted.executions), len(free.executions)) == (3, 8)
