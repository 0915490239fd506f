"""The gate, by example: one behaviour per test. The invariants are in test_invariants.py."""

from __future__ import annotations

import pytest

from capguard.core import breaker, fleet, gate, planner, queue, specs

from .core_fleets import breaker as breaker_spec
from .core_fleets import model, serving_fleet

V, R = gate.Verdict, gate.Reason


def drain_plan(*, replicas: int = 8, serving: int = 10, **model_spec: object):  # type: ignore[no-untyped-def]
    found = serving_fleet({"m": serving}, minAvailable=1, maxUnavailable=10)
    return found.with_model(
        model("m", replicas=replicas, minAvailable=1, maxUnavailable=10, **model_spec)
    )


def verdicts(decisions: list[gate.Decision]) -> list[tuple[str, str]]:
    return [(d.verdict.value, d.reason.value) for d in decisions]


def test_open_breaker_holds_and_naive_release_flushes_everything() -> None:
    found = drain_plan(replicas=2)
    q = queue.ActionQueue()
    q.enqueue(planner.plan(found), found, 0.0)
    cb = breaker.BreakerMachine(breaker_spec(open=True), now=0.0)
    naive = gate.Gate(gate.GateConfig(guarded=False))
    assert {d.reason for d in naive.triage(q, found, {"cb": cb}, 1.0).decisions} == {R.BREAKER_OPEN}
    cb.observe(breaker_spec(open=False), breaker.FleetSignals(), 3600.0)
    flushed = naive.triage(q, found, {"cb": cb}, 3600.0).decisions
    assert len(flushed) == 8 and all(d.verdict is V.EXECUTE for d in flushed)


def test_floor_holds_with_reason_floor() -> None:
    planned = serving_fleet({"m": 4}).with_model(model("m", replicas=2, maxUnavailable=4))
    q = queue.ActionQueue()
    q.enqueue(planner.plan(planned), planned, 0.0)
    # Demand went back up before the drains ran; nothing the drains depend on changed.
    live = planned.with_model(model("m", replicas=4, minAvailable=4, maxUnavailable=4))
    decisions = gate.Gate(gate.GateConfig(fleet_max_unavailable_percent=100)).triage(
        q, live, {}, 0.0
    ).decisions
    assert verdicts(decisions) == [("Hold", "Floor"), ("Hold", "Floor")]
    assert "floor protected" in decisions[0].message


def test_disruption_budget_counts_what_this_triage_takes() -> None:
    found = drain_plan(replicas=2).with_model(
        model("m", replicas=2, minAvailable=1, maxUnavailable=3)
    )
    q = queue.ActionQueue()
    q.enqueue(planner.plan(found), found, 0.0)
    decisions = gate.Gate(gate.GateConfig(fleet_max_unavailable_percent=100)).triage(
        q, found, {}, 0.0
    ).decisions
    assert [d.verdict for d in decisions].count(V.EXECUTE) == 3
    assert {d.reason for d in decisions if d.verdict is V.HOLD} == {R.DISRUPTION_BUDGET}


def test_tokens_are_spent_only_on_execute() -> None:
    found = drain_plan(replicas=2, rateLimit={"actionsPerMinute": 6, "burst": 2})
    q = queue.ActionQueue()
    q.enqueue(planner.plan(found), found, 0.0)
    g = gate.Gate(gate.GateConfig(fleet_max_unavailable_percent=100))
    first = g.triage(q, found, {}, 0.0).decisions
    assert [d.reason for d in first].count(R.ALLOWED) == 2
    assert {d.reason for d in first if d.verdict is V.HOLD} == {R.RATE_LIMITED}
    # Ten seconds refill exactly one token (6 a minute).
    assert [d.reason for d in g.triage(q, found, {}, 10.0).decisions].count(R.ALLOWED) == 1


def test_a_token_due_at_a_pass_is_there_at_that_pass() -> None:
    """2 a minute and a pass every 5 s: after the burst, a take every 30 s sharp. (Six
    refills of 1/6 add up to a hair under 1.0 in floating point, which held each token a
    pass too long.) A held take says when its token comes."""
    found = drain_plan(replicas=2, rateLimit={"actionsPerMinute": 2, "burst": 2})
    q = queue.ActionQueue()
    q.enqueue(planner.plan(found), found, 0.0)
    g = gate.Gate(gate.GateConfig(fleet_max_unavailable_percent=100))
    executed, retry_at = {}, {}
    for now in range(0, 65, 5):
        decisions = g.triage(q, found, {}, float(now)).decisions
        executed[now] = sum(d.verdict is V.EXECUTE for d in decisions)
        retry_at[now] = sorted({d.retry_at or 0.0 for d in decisions if d.verdict is V.HOLD})
        gate.settle(q, decisions)
    assert {now: n for now, n in executed.items() if n} == {0: 2, 30: 1, 60: 1}
    assert retry_at[0] == [pytest.approx(30.0)] and retry_at[25] == [pytest.approx(30.0)]


def test_expired_and_stale_actions_are_refused() -> None:
    found = drain_plan(replicas=9)
    q = queue.ActionQueue(max_age=60.0)
    q.enqueue(planner.plan(found), found, 0.0)
    g = gate.Gate()
    assert verdicts(g.triage(q, found, {}, 61.0).decisions) == [("Refuse", "Expired")]
    touched = found.bind("m-009", model="m", action_id="x", resource_version="2")
    assert verdicts(g.triage(q, touched, {}, 1.0).decisions) == [("Refuse", "Stale")]


def test_half_open_lets_only_the_probes_through() -> None:
    found = drain_plan(replicas=2)
    q = queue.ActionQueue()
    cb = breaker.BreakerMachine(breaker_spec(open=True, halfOpenProbes=2), now=0.0)
    cb.observe(breaker_spec(open=False, halfOpenProbes=2), breaker.FleetSignals(), 60.0)
    assert cb.state is breaker.BreakerState.HALF_OPEN
    q.enqueue(planner.plan(found), found, 61.0)
    g = gate.Gate(gate.GateConfig(fleet_max_unavailable_percent=100))
    decisions = g.triage(q, found, {"cb": cb}, 61.0).decisions
    assert sum(d.probe for d in decisions) == 2
    assert {d.reason for d in decisions if d.verdict is V.HOLD} == {R.HALF_OPEN_PROBE_LIMIT}


def test_post_pause_backlog_is_refused_as_one_named_batch_unless_approved() -> None:
    found = drain_plan(replicas=2)
    q = queue.ActionQueue(max_age=7200.0)
    spec = breaker_spec(open=True, maxPlanAge="2h")
    cb = breaker.BreakerMachine(spec, now=0.0)
    q.enqueue(planner.plan(found), found, 10.0)
    g = gate.Gate()
    plan = g.release_plan(q, found, cb, 1800.0)
    assert plan.guarded and plan.size == 8
    cb.observe(breaker_spec(open=False, maxPlanAge="2h"), breaker.FleetSignals(), 1800.0)
    refused = g.triage(q, found, {"cb": cb}, 1800.0).decisions
    assert {(d.verdict, d.reason, d.batch) for d in refused} == {
        (V.REFUSE, R.POST_PAUSE_BATCH, plan.batch)
    }
    approved = breaker_spec(
        open=False, maxPlanAge="2h", approval={"batch": plan.batch, "approvedBy": "ana"}
    )
    cb.observe(approved, breaker.FleetSignals(), 1800.0)
    decisions = gate.Gate().triage(q, found, {"cb": cb}, 1800.0).decisions
    assert R.POST_PAUSE_BATCH not in {d.reason for d in decisions}
    assert sum(d.verdict is V.EXECUTE for d in decisions) == 1  # still probes and budgets


def test_settle_keeps_only_held_actions() -> None:
    found = drain_plan(replicas=2)
    q = queue.ActionQueue()
    q.enqueue(planner.plan(found), found, 0.0)
    decisions = gate.Gate().triage(q, found, {}, 0.0).decisions
    gate.settle(q, decisions)
    assert len(q) == sum(d.verdict is V.HOLD for d in decisions)


def test_engines_of_a_deleted_model_are_drained_under_the_fleet_cap_only() -> None:
    """An orphan drain takes capacity from nobody: no floor or budget of a departed model."""
    found = serving_fleet({"chat": 2}, minAvailable=2, maxUnavailable=0)
    orphaned = fleet.Fleet.of(engines=found.engines.values(), models=[])
    q = queue.ActionQueue()
    q.enqueue(planner.plan(orphaned), orphaned, 0.0)
    wide = gate.Gate(gate.GateConfig(fleet_max_unavailable_percent=100))
    assert verdicts(wide.triage(q, orphaned, {}, 0.0).decisions) == [("Execute", "Allowed")] * 2
    # The fleet-wide budget still applies: 10% of two engines lets one out at a time.
    capped = gate.Gate().triage(q, orphaned, {}, 0.0).decisions
    assert verdicts(capped) == [("Execute", "Allowed"), ("Hold", "FleetDisruptionBudget")]


def test_orphan_drains_spend_the_global_rate_limit() -> None:
    found = serving_fleet({"chat": 3})
    orphaned = fleet.Fleet.of(engines=found.engines.values(), models=[])
    q = queue.ActionQueue()
    q.enqueue(planner.plan(orphaned), orphaned, 0.0)
    limit = specs.RateLimit(actions_per_minute=1.0, burst=1)
    config = gate.GateConfig(fleet_max_unavailable_percent=100, rate_limit=limit)
    decisions = gate.Gate(config).triage(q, orphaned, {}, 0.0).decisions
    assert verdicts(decisions) == [("Execute", "Allowed")] + [("Hold", "RateLimited")] * 2


def test_a_breaker_selecting_every_model_also_pauses_orphan_drains() -> None:
    found = serving_fleet({"chat": 1})
    orphaned = fleet.Fleet.of(engines=found.engines.values(), models=[])
    q = queue.ActionQueue()
    q.enqueue(planner.plan(orphaned), orphaned, 0.0)
    everything = breaker.BreakerMachine(breaker_spec("all", open=True), now=0.0)
    assert verdicts(gate.Gate().triage(q, orphaned, {"all": everything}, 0.0).decisions) == [
        ("Hold", "BreakerOpen")
    ]
    labelled = breaker_spec("chat", open=True, selector={"matchLabels": {"app": "chat"}})
    by_label = breaker.BreakerMachine(labelled, now=0.0)
    assert verdicts(gate.Gate().triage(q, orphaned, {"chat": by_label}, 0.0).decisions) == [
        ("Execute", "Allowed")
    ]


def test_an_action_touching_a_model_that_became_unreadable_is_refused_as_stale() -> None:
    found = drain_plan(replicas=9)
    q = queue.ActionQueue()
    q.enqueue(planner.plan(found), found, 0.0)
    typo = fleet.Fleet.of(engines=found.engines.values(), unreadable_models={"m"})
    decisions = gate.Gate().triage(q, typo, {}, 1.0).decisions
    assert verdicts(decisions) == [("Refuse", "Stale")]
    assert "invalid spec" in decisions[0].message


def test_a_plan_made_at_the_release_instant_is_not_part_of_the_backlog() -> None:
    found = drain_plan(replicas=2)
    spec = breaker_spec(open=True, maxPlanAge="2h")
    cb = breaker.BreakerMachine(spec, now=0.0)
    cb.observe(breaker_spec(open=False, maxPlanAge="2h"), breaker.FleetSignals(), 1800.0)
    q = queue.ActionQueue(max_age=7200.0)
    q.enqueue(planner.plan(found), found, 1800.0)  # re-planned from the fresh view
    decisions = gate.Gate().triage(q, found, {"cb": cb}, 1800.0).decisions
    assert R.POST_PAUSE_BATCH not in {d.reason for d in decisions}
    assert sum(d.probe for d in decisions) == 1  # HalfOpen probes still bound it


def test_a_take_gets_the_fleet_cap_before_assigns_and_assigns_alone_are_not_held() -> None:
    """A token not spent is lost at burst; an assign loses nothing by waiting a pass. So
    the take goes first, and the assigns wait rather than push the fleet past its cap."""
    found = serving_fleet({"a": 3}, spares=2).with_model(model("a", replicas=2, maxUnavailable=1))
    found = found.with_model(model("b", replicas=2, minAvailable=0))  # no floor to restore
    q = queue.ActionQueue()
    q.enqueue(planner.plan(found), found, 0.0)
    decisions = gate.Gate().triage(q, found, {}, 0.0).decisions  # 10% of 5 engines: cap 1
    assert [(d.action.intent.engine, d.verdict.value, d.reason.value) for d in decisions] == [
        ("a-002", "Execute", "Allowed"),
        ("spare-000", "Hold", "FleetDisruptionBudget"),
        ("spare-001", "Hold", "FleetDisruptionBudget"),
    ]
    # Nothing to take (a needs its three): adding capacity is never held by the cap.
    wanted = found.with_model(model("a", replicas=3, maxUnavailable=1))
    q = queue.ActionQueue()
    q.enqueue(planner.plan(wanted), wanted, 0.0)
    decisions = gate.Gate().triage(q, wanted, {}, 0.0).decisions
    assert verdicts(decisions) == [("Execute", "Allowed")] * 2


def test_a_take_from_the_model_with_most_takes_left_goes_first() -> None:
    """A model gives one engine at a time: the one with the longest way to go gets the
    token, even when another's take is older, so no model is left alone at the end."""
    found = serving_fleet({"a": 6, "b": 3}, minAvailable=1, maxUnavailable=6)
    for name in ("a", "b"):
        found = found.with_model(model(name, replicas=2, minAvailable=1, maxUnavailable=6))
    q = queue.ActionQueue()
    intents = planner.plan(found)
    q.enqueue([i for i in intents if i.from_model == "b"], found, 0.0)  # the older
    q.enqueue([i for i in intents if i.from_model == "a"], found, 1.0)
    limit = specs.RateLimit(actions_per_minute=1.0, burst=1)
    config = gate.GateConfig(fleet_max_unavailable_percent=100, rate_limit=limit)
    decisions = gate.Gate(config).triage(q, found, {}, 1.0).decisions
    assert [d.action.intent.from_model for d in decisions if d.verdict is V.EXECUTE] == ["a"]


def test_a_take_waiting_for_its_token_keeps_its_room_from_a_spare_but_not_from_a_scale_up() -> None:
    """A take held only by the rate limit runs within a token's period; a spare assigned
    meanwhile would load for minutes in the room the take needs (march-4: the token goes
    unspent). So the room is kept for the take from a replacement for a model that serves
    its desired units, and never from an assign a model needs to reach them."""
    found = serving_fleet({"a": 3, "b": 2}, spares=1).with_model(model("a", replicas=2))
    found = found.with_model(model("b", replicas=2, revision="v2"))  # b needs a replacement
    limit = specs.RateLimit(actions_per_minute=1.0, burst=1)
    config = gate.GateConfig(fleet_max_unavailable_percent=20, rate_limit=limit)  # cap 1
    g = gate.Gate(config)
    spent = queue.ActionQueue()
    spent.enqueue([i for i in planner.plan(found) if i.from_model == "a"], found, 0.0)
    assert verdicts(list(g.triage(spent, found, {}, 0.0).decisions)) == [("Execute", "Allowed")]

    q = queue.ActionQueue()
    q.enqueue(planner.plan(found), found, 1.0)  # the same take again: the bucket is empty
    decisions = {d.action.intent.engine: d for d in g.triage(q, found, {}, 1.0).decisions}
    assert (decisions["a-002"].verdict, decisions["a-002"].reason) == (V.HOLD, R.RATE_LIMITED)
    spare = decisions["spare-000"]
    assert (spare.verdict, spare.reason) == (V.HOLD, R.FLEET_DISRUPTION_BUDGET)
    assert spare.message == ("0 engines out in the fleet and 1 kept for takes waiting for a "
                             "token, cap 1, takes first")

    # b short of its desired units (above its floor): the spare brings capacity it lacks.
    short = found.with_model(model("b", replicas=3, minAvailable=1, revision="v2"))
    q = queue.ActionQueue()
    q.enqueue(planner.plan(short), short, 2.0)
    decisions = {d.action.intent.engine: d for d in g.triage(q, short, {}, 2.0).decisions}
    assert decisions["a-002"].reason is R.RATE_LIMITED
    assert (decisions["spare-000"].verdict, decisions["spare-000"].reason) == (V.EXECUTE,
                                                                               R.ALLOWED)

    # A token further off than an engine's load keeps nothing: a spare started now would
    # have loaded and given the room back before the take could run.
    slow = gate.GateConfig(fleet_max_unavailable_percent=20, rate_limit=limit,
                           reserve_for_tokens_within=30.0)
    g = gate.Gate(slow)
    g.triage(spent, found, {}, 0.0)  # the first token, spent
    q = queue.ActionQueue()
    q.enqueue(planner.plan(found), found, 1.0)  # the next comes in 59 s
    decisions = {d.action.intent.engine: d for d in g.triage(q, found, {}, 1.0).decisions}
    assert decisions["a-002"].reason is R.RATE_LIMITED
    assert decisions["spare-000"].verdict is V.EXECUTE
