"""One property test per invariant of DESIGN.md, each attacking it with random worlds.

A world (see world.py) starts from a random fleet and plays a random script of time
steps, plans from fresh or stale views, demand changes, revision rollouts, engine
failures, breaker trips and releases, approvals and operator restarts. Every triage
is recorded; each test checks its invariant on every record.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capguard.core import breaker, drift, gate, planner, queue

from . import world as world_
from .core_fleets import engine, model, serving_fleet

EXAMPLES = settings(max_examples=150, deadline=None)
V = gate.Verdict


def play(run: tuple[world_.Shape, list[world_.Event], list[bool]]) -> world_.World:
    shape, script, outcomes = run
    return world_.World(shape).run(script, outcomes=outcomes)


def executed(record: world_.Triage) -> list[queue.Action]:
    return [d.action for d in record.decisions if d.verdict is V.EXECUTE]


def takes_capacity(record: world_.Triage, action: queue.Action) -> bool:
    source = action.intent.from_model
    return source is not None and record.before.engines[action.intent.engine].serves(source)


@EXAMPLES
@given(world_.runs)
def test_floor_never_broken(run: tuple[world_.Shape, list[world_.Event], list[bool]]) -> None:
    """#1: no executed action leaves its model below the floor it had when it ran, and
    never a floor for a surplus. One exception, the max-min sharing of floors the supply
    cannot all cover: a model already below its floor may give an engine to another
    model below its floor, keeping its own share (``Fleet.protected_units``)."""
    for record in play(run).triages:
        for action in executed(record):
            if not takes_capacity(record, action):
                continue
            source, to = action.intent.from_model, action.intent.model
            assert source is not None
            before, after = record.before, record.after.serving_units(source)
            assert after >= before.protected_units(source), (source, record.now)
            if after < before.floor_units(source):
                assert before.serving_units(source) < before.floor_units(source)
                assert to is not None and before.serving_units(to) < before.floor_units(to), (
                    f"{source}'s floor taken for {to}'s surplus")


@settings(max_examples=100, deadline=None)
@given(world_.runs)
def test_floors_are_restored_as_far_as_the_supply_allows_and_the_rest_is_said(
    run: tuple[world_.Shape, list[world_.Event], list[bool]],
) -> None:
    """Left alone for hours after any script (failed engines repaired, the breaker closed),
    every model serves the part of its floor the supply covers; a model still below its
    floor is one the allocation reports short (InsufficientCapacity)."""
    world = play(run).settle()
    found = world.fleet
    for name, share in found.allocation.models.items():
        serving = found.serving_units(name)
        assert serving >= min(share.covered, share.floor), (name, serving, share)
        if serving < share.floor:
            assert share.floor_shortfall > 0, (name, serving, share)


@settings(max_examples=100, deadline=None)
@given(world_.runs)
def test_left_alone_the_fleet_comes_to_rest(
    run: tuple[world_.Shape, list[world_.Event], list[bool]],
) -> None:
    """Liveness: whatever the gate holds (budgets, the fleet cap, the room kept for takes
    waiting for a token, rate limits) it holds only for a while. Left alone for hours
    after any script, the planner finds nothing left to do and the queue is empty."""
    world = play(run).settle()
    left = planner.plan(world.fleet)
    assert not left and not world.queue, (left[:5], world.queue.pending()[:5])


@EXAMPLES
@given(world_.runs)
def test_no_stale_action_executes(
    run: tuple[world_.Shape, list[world_.Event], list[bool]],
) -> None:
    """#2: an executed action's planned-from state still held, and it had not expired."""
    for record in play(run).triages:
        for action in executed(record):
            live = record.before.engines[action.intent.engine]
            assert live.resource_version == action.planned_from.engine_resource_version
            assert live.last_action_id != action.id
            assert not action.expired(record.now)
            intent, planned = action.intent, action.planned_from
            if intent.from_model is not None:
                serving = record.before.serving_units(intent.from_model)
                assert serving >= planned.model_serving_units
            # The destination's need the move was planned to fill has not been filled since.
            if intent.model is not None and intent.model != intent.from_model:
                need = planned.model_serving_units if intent.from_model is None else None
                need = planned.target_serving_units if need is None else need
                assert need is not None, intent
                assert record.before.serving_units(intent.model) <= need


@EXAMPLES
@given(world_.runs)
def test_engines_of_an_unreadable_model_are_left_alone(
    run: tuple[world_.Shape, list[world_.Event], list[bool]],
) -> None:
    """A typo is not a deletion: no executed action moves an engine to or from such a model."""
    for record in play(run).triages:
        unreadable = record.before.unreadable_models
        for action in executed(record):
            live = record.before.engines[action.intent.engine]
            touched = {action.intent.model, action.intent.from_model, live.spec.model_ref}
            assert not touched & unreadable, (action.intent, unreadable)


@EXAMPLES
@given(world_.runs)
def test_no_post_pause_flush(run: tuple[world_.Shape, list[world_.Event], list[bool]]) -> None:
    """#3: after a long pause, a backlog above maxBatchAfterPause runs only if approved."""
    for record in play(run).triages:
        released = record.breaker.released_at
        spec = record.before.breakers["cb"]
        long_pause = record.breaker.last_pause_seconds > spec.pause_threshold
        if released is None or record.breaker.state is breaker.BreakerState.OPEN:
            continue
        backlog = [d.action for d in record.decisions if d.action.planned_at < released]
        if not long_pause or len(backlog) <= spec.max_batch_after_pause:
            continue
        approved = spec.approval is not None and spec.approval.batch == gate.batch_id(backlog)
        ran = [a for a in executed(record) if a.planned_at < released]
        assert approved or not ran, f"{len(ran)} of a {len(backlog)}-action backlog flushed"
        reasons = {d.reason for d in record.decisions if d.action in backlog}
        assert approved or reasons == {gate.Reason.POST_PAUSE_BATCH}


@EXAMPLES
@given(world_.runs)
def test_bounded_rate_and_half_open_probes(
    run: tuple[world_.Shape, list[world_.Event], list[bool]],
) -> None:
    """#4: budgets, token buckets and HalfOpen probes bound what runs at once."""
    played = play(run)
    shape = played.shape
    first_seen: dict[int, float] = {}
    disrupted: dict[tuple[int, str], int] = {}
    for epoch, record in _epochs(played):
        first_seen.setdefault(epoch, record.now)
        taking = [a for a in executed(record) if takes_capacity(record, a)]
        _assert_budgets(record, taking)
        for action in taking:
            if action.intent.from_model not in record.before.models:
                continue  # an orphan drain: no model, so no per-model bucket
            key = (epoch, action.intent.from_model or "")
            disrupted[key] = disrupted.get(key, 0) + 1
            allowed = 2 + shape.rate_per_minute * (record.now - first_seen[epoch]) / 60
            assert disrupted[key] <= allowed + 1e-9, "per-model token bucket overrun"
        if record.breaker.state is breaker.BreakerState.OPEN:
            assert not executed(record)
        if record.breaker.state is breaker.BreakerState.HALF_OPEN:
            assert len(executed(record)) <= record.breaker.probe_slots <= shape.probes


@EXAMPLES
@given(world_.runs)
def test_every_probe_slot_taken_is_tracked(
    run: tuple[world_.Shape, list[world_.Event], list[bool]],
) -> None:
    """#4: a probe slot a breaker counts as taken belongs to an action whose outcome the
    pipeline waits for (a slot nobody settles or gives back holds the breaker for good)."""
    for record in play(run).triages:
        assert record.probes_counted == record.probes_tracked, record.now


@EXAMPLES
@given(
    rate=st.sampled_from([0.5, 1.0, 6.0, 30.0]),
    burst=st.integers(1, 4),
    steps=st.lists(st.sampled_from([0.5, 1.0, 5.0, 20.0, 90.0]), min_size=1, max_size=40),
)
def test_bounded_rate_token_buckets(rate: float, burst: int, steps: list[float]) -> None:
    """#4: however often the gate is asked, disruptions never outrun the token bucket."""
    limit = {"actionsPerMinute": rate, "burst": burst}
    found = serving_fleet({"m": 40}).with_model(
        model("m", replicas=0, minAvailable=0, maxUnavailable=40, rateLimit=limit)
    )
    g = gate.Gate(gate.GateConfig(fleet_max_unavailable_percent=100))
    q = queue.ActionQueue()
    now, done = 0.0, 0
    for step in steps:
        now += step
        q.enqueue(planner.plan(found), found, now)
        decisions = g.triage(q, found, {}, now).decisions
        for d in decisions:
            if d.verdict is V.EXECUTE:
                found = found.bind(
                    d.action.intent.engine, model=None, action_id=d.action.id, resource_version="2"
                )
                done += 1
        gate.settle(q, decisions)
        assert done <= burst + rate * (now - steps[0]) / 60 + 1e-9


def _assert_budgets(record: world_.Triage, taking: list[queue.Action]) -> None:
    before = record.before
    per_model: dict[str, int] = {}
    for action in taking:
        source = action.intent.from_model or ""
        per_model[source] = per_model.get(source, 0) + 1
    for source, count in per_model.items():
        if source not in before.models:
            continue  # an orphan drain: its model is gone, only the fleet-wide cap applies
        room = before.max_unavailable_engines(source) - len(before.unavailable_engines(source))
        assert count <= max(0, room), f"{source}: {count} taken, room {room}"
    cap = max(1, record.config.fleet_max_unavailable_percent * len(before.engines) // 100)
    assert len(taking) <= max(0, cap - before.out_of_service_engines)
    if taking:
        # Takes go before assigns, but no assign of the same triage uses up the room a
        # take counted on: the fleet ends within its cap, whatever put engines out.
        assert record.after.out_of_service_engines <= cap, (record.now, len(taking))


def _epochs(played: world_.World) -> list[tuple[int, world_.Triage]]:
    """Triages labelled with the gate that made them (a restart starts a new one)."""
    return [(played.epochs[i], t) for i, t in enumerate(played.triages)]


intents = st.builds(
    planner.Intent,
    kind=st.sampled_from(planner.ActionType),
    engine=st.sampled_from([f"m-{i:03d}" for i in range(6)]),
    model=st.sampled_from(["m", None]),
    from_model=st.sampled_from(["m", None]),
)


@EXAMPLES
@given(st.lists(st.lists(intents, max_size=8), max_size=8), st.integers(0, 3))
def test_coalescing_keeps_one_intent_per_engine(
    plans: list[list[planner.Intent]], failures: int
) -> None:
    """#5: at most one pending action per engine, and it is the newest plan's."""
    found = serving_fleet({"m": 6})
    q = queue.ActionQueue()
    newest: dict[str, planner.Intent] = {}
    for now, plan in enumerate(plans):
        q.enqueue(plan, found, float(now))
        newest.update((i.engine, i) for i in plan)
        for name in sorted(found.engines)[:failures]:  # the world moves between plans
            found = found.bind(name, model="m", action_id="x", resource_version=str(now + 2))
    pending = q.pending()
    assert len({a.intent.engine for a in pending}) == len(pending) == len(newest)
    assert {a.intent.engine: a.intent for a in pending} == newest


@EXAMPLES
@given(world_.runs)
def test_drift_measured(run: tuple[world_.Shape, list[world_.Event], list[bool]]) -> None:
    """#6: drift matches a brute-force count, and a drift above the threshold trips."""
    played = play(run)
    now = played.clock.now()
    report = drift.measure(played.fleet, played.queue, now)
    for name, found in report.models.items():
        serving = sum(
            e.units
            for e in played.fleet.engines.values()
            if e.phase.value == "Serving" and e.model == name and e.spec.model_ref == name
        )
        assert found.serving == serving
        assert found.drift == max(0, played.fleet.models[name].replicas - serving)
    pending = played.queue.pending()
    assert report.oldest_plan_age == max((now - a.planned_at for a in pending), default=0.0)
    assert report.stale_view_engines == sum(
        played.fleet.engines[a.intent.engine].resource_version
        != a.planned_from.engine_resource_version
        for a in pending
    )
    closed = dataclasses.replace(played.fleet.breakers["cb"], open=False)
    machine = breaker.BreakerMachine(closed, now=now)
    machine.observe(closed, report.signals(), now)
    tripped = report.signals().max_drift_ratio > 0.75
    assert (machine.state is breaker.BreakerState.OPEN) == tripped


@EXAMPLES
@given(world_.runs)
def test_auto_trip_signals_follow_the_rules(
    run: tuple[world_.Shape, list[world_.Event], list[bool]],
) -> None:
    """#6: a breach counts once a model was available; drift once stuck for a window."""
    played = play(run)
    spec = played.fleet.breakers["cb"]
    window = spec.auto_trip.window if spec.auto_trip else 0.0
    tracker = drift.SignalTracker()
    history: list[tuple[float, drift.DriftReport]] = []
    for record in played.triages:
        report = drift.measure(record.before, queue.ActionQueue(), record.now)
        history.append((record.now, report))
        tracker.observe(report, now=record.now)
        for name, found in report.models.items():
            signals = tracker.signals(breaker=spec, models=[name], now=record.now)
            seen = [r.models[name] for _, r in history if name in r.models]
            assert signals.floor_breached == (found.below_floor and _was_available(history, name))
            stuck = _stuck_since(history, name)
            lasted = stuck is not None and record.now - stuck >= window
            assert signals.max_drift_ratio == (found.drift_ratio if lasted else 0.0), seen


def _was_available(history: list[tuple[float, drift.DriftReport]], name: str) -> bool:
    """At or above its floor in some report since it last (re)appeared."""
    for _, report in reversed(history):
        if name not in report.models:
            return False
        if not report.models[name].below_floor:
            return True
    return False


def _stuck_since(history: list[tuple[float, drift.DriftReport]], name: str) -> float | None:
    """When the current run of drift without progress began (None: no drift now)."""
    since = None
    for (now, report), (_, earlier) in zip(
        reversed(history), [*reversed(history[:-1]), (0.0, None)], strict=True
    ):
        found = report.models.get(name)
        if found is None or not found.drift:
            break
        since = now
        before = earlier.models.get(name) if earlier is not None else None
        if before is None or found.drift < before.drift or not before.drift:
            break
    return since


@EXAMPLES
@given(world_.runs)
def test_restart_safe(run: tuple[world_.Shape, list[world_.Event], list[bool]]) -> None:
    """#7: rebuilt from the cluster, the core decides the same and never repeats an action."""
    played = play(run)
    assert len(played.executed_ids) == len(set(played.executed_ids)), "an action ran twice"
    now = played.clock.now()
    stale_view = played.triages[0].before if played.triages else played.fleet
    decisions = []
    for _ in range(2):  # two operators started from the same cluster state
        q = queue.ActionQueue()
        q.enqueue(planner.plan(stale_view), stale_view, now)
        q.enqueue(planner.plan(played.fleet), played.fleet, now)
        machine = copy.deepcopy(played.machine)
        triage = gate.Gate(played.config).triage(q, played.fleet, {"cb": machine}, now)
        decisions.append(triage.decisions)
    assert decisions[0] == decisions[1]
    old = played.machine
    restored = world_.restored(old, spec=old.spec, now=now)
    kept = ["state", "since", "reason", "refused"]
    if old.state is not breaker.BreakerState.CLOSED:  # a closed pause is over: nothing to keep
        kept += ["opened_at"]
    if old.state is breaker.BreakerState.HALF_OPEN:  # the release and probes of this pause
        kept += ["released_at", "last_pause_seconds", "probes_succeeded"]
    assert [getattr(restored, k) for k in kept] == [getattr(old, k) for k in kept]
    later = restored.seconds_in_state(now + 60)
    assert later == pytest.approx(old.seconds_in_state(now + 60), abs=0.1)  # status rounds
    for decision in decisions[0]:
        live = played.fleet.engines[decision.action.intent.engine]
        if live.last_action_id == decision.action.id:
            assert decision.verdict is V.REFUSE


def test_an_action_recorded_on_the_engine_is_not_executed_again() -> None:
    """#7, by example: the executor wrote the id, then died before forgetting the action."""
    found = serving_fleet({"m": 3}).with_model(model("m", replicas=2, minAvailable=1))
    q = queue.ActionQueue()
    (action,) = q.enqueue(planner.plan(found), found, 0.0)
    written = dataclasses.replace(found.engines[action.intent.engine], last_action_id=action.id)
    decisions = gate.Gate().triage(q, found.with_engine(written), {}, 1.0).decisions
    assert [d.reason for d in decisions] == [gate.Reason.ALREADY_EXECUTED]


def test_naive_release_breaks_the_floor_guarded_does_not() -> None:
    """The incident in miniature: a stale rebalancing backlog flushed at once."""
    live = serving_fleet({"a": 4, "b": 4}, minAvailable="75%", maxUnavailable=1)
    # The cached view thought b needed no more than 1 engine and a needed 7.
    cached = live.with_model(model("a", replicas=7, minAvailable=1, maxUnavailable=1))
    cached = cached.with_model(model("b", replicas=1, minAvailable=1, maxUnavailable=1))
    backlog = planner.plan(cached)
    spec = world_.specs.BreakerSpec(name="cb", open=True, max_plan_age=7_200.0)
    results = {}
    for guarded in (False, True):
        q = queue.ActionQueue(max_age=7_200.0)
        q.enqueue(backlog, live, 0.0)
        cb = breaker.BreakerMachine(spec, now=0.0)
        cb.observe(dataclasses.replace(spec, open=False), breaker.FleetSignals(), 1_800.0)
        config = gate.GateConfig(guarded=guarded)
        decisions = gate.Gate(config).triage(q, live, {"cb": cb}, 1_800.0).decisions
        after = live
        for d in decisions:
            if d.verdict is V.EXECUTE:
                after = after.bind(
                    d.action.intent.engine,
                    model=d.action.intent.model,
                    action_id=d.action.id,
                    resource_version="2",
                )
        results[guarded] = after.serving_units("b")
    assert results[False] < live.floor_units("b") <= results[True]
    assert engine  # keep the builder import honest for readers of this file
