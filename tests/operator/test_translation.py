"""The pure translation parts: conditions, status builders, driver phases, Event dedupe."""

from __future__ import annotations

import datetime
import re
from typing import Any

import pytest

from capguard.core import breaker, drift, engines, pipeline, planner, specs
from capguard.core import fleet as fleet_
from capguard.core import queue as queue_
from capguard.handlers import driver, index, records
from capguard.handlers import status as status_
from capguard.handlers import view as view_
from capguard.kube import actions, client, events, heartbeats

T0 = 1_800_000_000.0


def test_last_transition_time_moves_only_when_the_status_flips() -> None:
    first = status_.merge_conditions(
        None, [status_.Condition("Available", "True", "FloorMet", "ok")], generation=1, now=T0)
    same = status_.merge_conditions(
        first, [status_.Condition("Available", "True", "FloorMet", "still ok")],
        generation=2, now=T0 + 60)
    flipped = status_.merge_conditions(
        same, [status_.Condition("Available", "False", "BelowFloor", "short")],
        generation=2, now=T0 + 120)
    assert same[0]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    assert same[0]["observedGeneration"] == 2 and same[0]["message"] == "still ok"
    assert flipped[0]["lastTransitionTime"] == status_.timestamp(T0 + 120)


def test_an_unchanged_status_is_not_rewritten_and_ticking_seconds_do_not_count() -> None:
    current = {"state": "Open", "secondsInState": {"Open": 10}}
    assert not status_.changed(current, {"state": "Open", "secondsInState": {"Open": 70}})
    assert status_.changed(current, {"state": "HalfOpen", "secondsInState": {"Open": 70}})


def test_model_conditions_tell_held_from_converging_from_converged() -> None:
    short = drift.ModelDrift(desired=4, serving=2, floor=3, loading=1)
    held = status_.model_conditions(short, failed=0, held_reason="breaker pause is open")
    by_type = {c.type: c for c in held}
    assert (by_type["Available"].status, by_type["Available"].reason) == ("False", "BelowFloor")
    assert (by_type["Progressing"].status, by_type["Progressing"].reason) == ("False", "Held")
    assert by_type["DriftDetected"].status == "True"
    moving = {c.type: c for c in status_.model_conditions(short, failed=1, held_reason=None)}
    assert moving["Progressing"].reason == "Converging"
    assert moving["Degraded"].status == "True"
    done = drift.ModelDrift(desired=4, serving=4, floor=3)
    steady = {c.type: c for c in status_.model_conditions(done, failed=0, held_reason=None)}
    assert steady["Progressing"].reason == "Converged"
    assert steady["DriftDetected"].status == "False"


def test_the_scale_selector_is_written_as_kubectl_writes_it() -> None:
    selector = specs.LabelSelector(
        (("pool", "h100"),),
        (specs.Requirement("tier", specs.SelectorOperator.IN, ("a", "b")),
         specs.Requirement("spot", specs.SelectorOperator.DOES_NOT_EXIST)))
    assert status_.selector_string(selector) == "pool=h100,tier in (a,b),!spot"


def test_a_bad_spec_becomes_a_record_with_the_error_not_an_exception() -> None:
    body = {"metadata": {"name": "m", "namespace": "ns", "generation": 3, "uid": "u"},
            "spec": {"replicas": 2, "minAvailable": 5}}
    record = records.model_record(body)
    assert record.value is None and record.error is not None
    wanted = status_.invalid_model_status(error=record.error, existing={}, generation=3, now=T0)
    kinds = {c["type"]: c for c in wanted["conditions"]}
    assert kinds["Valid"]["reason"] == kinds["Available"]["reason"] == "InvalidSpec"
    assert "minAvailable" in kinds["Valid"]["message"]


def _engine(phase: specs.Phase, *, since: float | None = T0, bound: str | None = "chat",
            model: str | None = "chat") -> specs.Engine:
    return specs.Engine(name="e", spec=specs.EngineSpec(pool="p", model_ref=bound),
                        phase=phase, model=model, since=since, resource_version="7")


CONFIG = driver.DriverConfig(engines.Timing(load=10.0, drain=2.0))


@pytest.mark.parametrize(("engine", "now", "phase"), [
    (_engine(specs.Phase.IDLE, since=None, bound=None, model=None), T0, specs.Phase.IDLE),
    (_engine(specs.Phase.IDLE, model=None), T0, specs.Phase.LOADING),
    (_engine(specs.Phase.LOADING), T0 + 10, specs.Phase.SERVING),
    (_engine(specs.Phase.LOADING, bound="other"), T0, specs.Phase.DRAINING),
    (_engine(specs.Phase.SERVING, bound=None), T0, specs.Phase.DRAINING),
    (_engine(specs.Phase.DRAINING, bound=None), T0 + 2, specs.Phase.IDLE),
    (_engine(specs.Phase.FAILED), T0 + 10, specs.Phase.IDLE),
])
def test_the_driver_moves_one_phase_when_it_is_due(
    engine: specs.Engine, now: float, phase: specs.Phase
) -> None:
    step = driver.transition(engine, config=CONFIG, now=now, roll=lambda: 1.0)
    assert step.transition is not None and step.transition.phase is phase


def test_the_driver_waits_for_a_load_and_may_fail_it() -> None:
    loading = _engine(specs.Phase.LOADING)
    waiting = driver.transition(loading, config=CONFIG, now=T0 + 3, roll=lambda: 0.0)
    assert waiting.transition is None and waiting.due == T0 + 10
    config = driver.DriverConfig(engines.Timing(load=10.0), failure_rate=0.5)
    failed = driver.transition(loading, config=config, now=T0 + 10, roll=lambda: 0.1)
    assert failed.transition is not None and failed.transition.phase is specs.Phase.FAILED
    steady = driver.transition(_engine(specs.Phase.SERVING), config=CONFIG, now=T0, roll=float)
    assert steady == engines.Step(None, None)


def test_a_driver_write_carries_the_resource_version_it_saw() -> None:
    step = engines.Transition(specs.Phase.SERVING, "chat", None, "serving chat")
    patch = driver.status_patch(step, engine=_engine(specs.Phase.LOADING), generation=4,
                                existing_conditions=None, now=T0)
    assert patch["metadata"] == {"resourceVersion": "7"}
    assert patch["status"]["phase"] == "Serving" and patch["status"]["observedGeneration"] == 4
    since = patch["status"]["since"]
    assert datetime.datetime.fromisoformat(since).timestamp() == T0


def test_the_same_event_is_queued_once_per_window() -> None:
    now = [0.0]
    recorder = events.Recorder(api=client.Api(), instance="me", dedupe_window=60,
                               clock=lambda: now[0])
    ref = events.ObjectRef("capguard.dev/v1alpha1", "ModelCapacity", "ns", "m", "u")
    event = events.Event(ref, events.WARNING, "InvalidSpec", "spec.minAvailable: too high")
    assert recorder.record(event)
    assert not recorder.record(event)
    assert recorder.record(events.Event(ref, events.WARNING, "InvalidSpec", "another"))
    now[0] = 61.0
    assert recorder.record(event)


def test_an_event_names_its_object_for_kubectl_describe() -> None:
    ref = events.ObjectRef("capguard.dev/v1alpha1", "CircuitBreaker", "ns", "pause", "u1")
    body = events.render(events.Event(ref, events.WARNING, "BatchRefused", "12 actions"),
                         component="capguard", instance="pod-1",
                         now=datetime.datetime(2026, 3, 4, tzinfo=datetime.UTC))
    assert body["involvedObject"] == {"apiVersion": "capguard.dev/v1alpha1",
                                      "kind": "CircuitBreaker", "namespace": "ns",
                                      "name": "pause", "uid": "u1"}
    assert body["metadata"]["name"].startswith("pause.")
    assert (body["type"], body["reason"], body["count"]) == ("Warning", "BatchRefused", 1)
    assert body["lastTimestamp"] == "2026-03-04T00:00:00Z"


def test_an_event_fits_what_a_real_api_server_admits_however_long_its_object_and_text() -> None:
    # core/v1 Events with eventTime: message at most 1024 bytes (Go's len: "é" is two),
    # and metadata.name a DNS subdomain of at most 253 (a CR's own name may be 253 long).
    name = "a" * 230 + "." + "b" * 22  # 253: the longest an InferenceEngine's name may be
    ref = events.ObjectRef("capguard.dev/v1alpha1", "InferenceEngine", "ns", name, "u1")
    body = events.render(events.Event(ref, events.WARNING, "InvalidSpec", "é" * 1000),
                         component="capguard", instance="pod-1",
                         now=datetime.datetime(2026, 3, 4, tzinfo=datetime.UTC))
    assert len(body["message"].encode()) <= 1024 and body["message"] == "é" * 512
    event_name = body["metadata"]["name"]
    assert len(event_name) <= 253 and event_name.startswith("a" * 230)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*",
                        event_name), event_name
    assert body["involvedObject"]["name"] == name  # the object is named in full
    short = events.render(events.Event(ref, events.NORMAL, "Done", "ok"), component="c",
                          instance="i", now=datetime.datetime(2026, 3, 4, tzinfo=datetime.UTC))
    assert short["message"] == "ok"


def _body(name: str, version: str, *, replicas: int = 1) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": version},
            "spec": {"replicas": replicas}}


def test_the_index_keeps_the_newest_body_and_a_late_list_cannot_resurrect() -> None:
    store = index.Index().models
    assert store.apply(_body("m", "10", replicas=2))
    assert not store.apply(_body("m", "9", replicas=1))  # an older LIST page loses
    assert store.records[("ns", "m")].value is not None
    assert store.records[("ns", "m")].value.replicas == 2
    store.delete(_body("gone", "12"))
    assert not store.apply(_body("gone", "11"))  # deleted after the LIST was taken
    assert store.apply(_body("gone", "13"))  # recreated since: a newer object


def test_a_full_list_drops_what_a_broken_watch_missed() -> None:
    store = index.Index().models
    store.apply(_body("stays", "5"))
    store.apply(_body("missed-delete", "6"))
    store.apply(_body("created-after-list", "30"))
    listed = store.listed([_body("stays", "5")])
    store.forget_unlisted(listed, list_version="20", namespace=None)
    assert set(store.records) == {("ns", "stays"), ("ns", "created-after-list")}


def test_an_engine_on_its_way_out_gets_no_new_model() -> None:
    body = {"metadata": {"name": "e", "namespace": "ns", "finalizers": ["someone/else"],
                         "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"pool": "p"}}
    record = records.engine_record(body)
    assert record.value is not None and record.value.spec.cordoned


def _held_engine(name: str, version: str, *, bound: str | None = None,
            serving: str | None = None) -> dict[str, object]:
    status = {"phase": "Serving", "model": serving, "since": "2026-01-01T00:00:00Z"}
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": version},
            "spec": {"pool": "p", **({"modelRef": bound} if bound else {})},
            "status": status if serving else {}}


def test_the_index_knows_which_models_an_engine_change_touches() -> None:
    found = index.Index()
    found.engines.apply(_held_engine("e", "1", bound="chat", serving="chat"))
    assert found.take_dirty_models() == {("ns", "chat")}
    assert [r.meta.name for r in found.engines_of("ns", "chat")] == ["e"]
    # Rebound while still serving chat: both models' counts change, both hold it.
    found.engines.apply(_held_engine("e", "2", bound="code", serving="chat"))
    assert found.take_dirty_models() == {("ns", "chat"), ("ns", "code")}
    found.engines.apply(_held_engine("e", "3", bound="code", serving="code"))
    assert found.take_dirty_models() == {("ns", "chat"), ("ns", "code")}
    assert found.engines_of("ns", "chat") == []
    found.engines.delete(_held_engine("e", "4"))
    assert found.take_dirty_models() == {("ns", "code")}
    assert found.engines_of("ns", "code") == []


def test_a_status_write_coming_back_is_not_a_planning_change() -> None:
    found = index.Index()
    found.models.apply(_body("m", "1", replicas=2))
    versions = found.planning_versions["ns"]
    found.planning_inputs_changed = False
    status_only = {**_body("m", "2", replicas=2), "status": {"desired": 2}}
    assert found.models.apply(status_only)
    assert not found.models.apply(status_only)  # the same version again: not even parsed
    assert (found.planning_inputs_changed, found.planning_versions["ns"]) == (False, versions)
    assert found.take_dirty_models() == {("ns", "m")}  # its status is worth a look
    found.models.apply(_body("m", "3", replicas=3))
    assert found.planning_inputs_changed and found.planning_versions["ns"] == versions + 1


def _engine_of_uid(uid: str, version: str) -> dict[str, object]:
    return {"apiVersion": client.ENGINES.api_version, "kind": "InferenceEngine",
            "metadata": {"name": "e", "namespace": "ns", "uid": uid,
                         "resourceVersion": version}, "spec": {"pool": "p"}}


def _lease_of(engine: dict[str, object], version: str, *, renewed: float) -> dict[str, Any]:
    body = heartbeats.lease(engine, holder="agent", interval=10.0, now=renewed)
    body["metadata"].update(namespace="ns", resourceVersion=version)
    return body


def test_a_lease_renews_only_the_engine_object_it_is_the_heartbeat_of() -> None:
    """An engine deleted and created again under its name: the old one's Lease, left for
    the garbage collector and still renewed, vouches for nothing until the new engine's
    agent takes it over; whichever of a Lease and its engine comes first."""
    found = index.Index()
    old = _engine_of_uid("uid-1", "1")
    found.leases.apply(_lease_of(old, "2", renewed=T0))
    assert not found.renewals["ns"]  # its engine not indexed yet
    found.engines.apply(old)
    assert found.renewals["ns"] == {"e": T0}  # the Lease came first: heard once it is
    found.engines.delete({**old, "metadata": {**old["metadata"], "resourceVersion": "3"}})
    assert found.renewals["ns"] == {}
    found.engines.apply(_engine_of_uid("uid-2", "4"))
    found.take_changes("ns")
    found.silent["ns"] = frozenset({"e"})  # as the pass saw it: nobody vouches for it
    found.leases.apply(_lease_of(old, "5", renewed=T0 + 10))
    assert found.renewals["ns"] == {}  # the old engine's Lease, renewed
    taken = _lease_of(_engine_of_uid("uid-2", "4"), "6", renewed=T0 + 20)
    found.leases.apply(taken)
    assert found.renewals["ns"] == {"e": T0 + 20}
    assert found.take_changes("ns").engines == {"e"}  # heard again: looked at again
    # Created again, and the Lease's renewal arrived first: not the new engine's.
    found.engines.apply(_engine_of_uid("uid-3", "7"))
    assert found.renewals["ns"] == {}
    assert found.take_changes("ns").engines == {"e"}
    unknown = _lease_of({"metadata": {"name": "e"}}, "8", renewed=T0 + 30)
    found.leases.apply(unknown)  # an agent that did not know the uid: taken as the engine's
    assert found.renewals["ns"] == {"e": T0 + 30}


def test_a_restarted_operator_continues_the_pause_its_status_describes() -> None:
    """A breaker reopened by a failed probe: the pause began before `since`, and the
    seconds already spent in each state go on from where they were written."""
    now = T0 + 600
    body = {"metadata": {"name": "cb", "namespace": "ns", "generation": 1, "uid": "u"},
            "spec": {"pauseThreshold": "5m"},
            "status": {"state": "Open", "since": status_.timestamp(T0 + 400),
                       "reason": "ProbeFailed", "pausedSince": status_.timestamp(T0),
                       "secondsInState": {"Closed": 50.0, "Open": 350.0, "HalfOpen": 100.0},
                       "secondsInStateAt": status_.precise_timestamp(T0 + 450),
                       "refusedActions": 4}}
    record = records.breaker_record(body)
    assert record.value is not None
    machine = breaker.restore(record.value, record.status, now=now)
    assert machine.state is breaker.BreakerState.OPEN
    assert machine.reason is breaker.TripReason.PROBE_FAILED
    assert machine.opened_at == T0 and machine.refused == 4
    assert machine.seconds_in_state(now)[breaker.BreakerState.OPEN] == 350.0 + 150.0
    written = status_.breaker_status(record=record, snapshot=machine.snapshot(now), plan=None,
                                     refused=None, now=now)
    assert written["pausedSince"] == status_.timestamp(T0)


def test_engines_of_a_model_with_an_invalid_spec_stay_counted_and_unmoved() -> None:
    def engine(name: str) -> records.EngineRecord:
        return records.engine_record({
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": "1"},
            "spec": {"pool": "p", "modelRef": "chat"},
            "status": {"phase": "Serving", "model": "chat"}})
    typo = records.model_record({"metadata": {"name": "chat", "namespace": "ns"},
                                 "spec": {"replicas": 2, "minAvailable": 5}})
    view = view_.View(engines=[engine("e1"), engine("e2")], models=[typo])
    fleet = view_.build_fleet(view)
    assert set(fleet.engines) == {"e1", "e2"} and fleet.unreadable_models == {"chat"}
    assert planner.plan(fleet) == []


def test_every_model_an_open_breaker_governs_is_held_whatever_the_pass_decided() -> None:
    """While a breaker is Open, a pass that refused the model's actions as stale (they are
    re-planned and held again next pass) must still call the model Held, not Converging."""
    def model(name: str, tier: str) -> specs.ModelSpec:
        return specs.parse_model({"metadata": {"name": name, "namespace": "ns",
                                               "labels": {"tier": tier}},
                                  "spec": {"replicas": 2}})
    pause = specs.parse_breaker({"metadata": {"name": "pause", "namespace": "ns"},
                                 "spec": {"selector": {"matchLabels": {"tier": "chat"}}}})
    fleet = fleet_.Fleet.of(engines=[], models=[model("chat", "chat"), model("embed", "batch")],
                            breakers=[pause])
    closed = {"pause": breaker.BreakerMachine(pause, now=T0)}
    opened = {"pause": breaker.BreakerMachine(pause, now=T0, state=breaker.BreakerState.OPEN,
                                              since=T0)}
    assert pipeline.held_by_open_breakers(fleet, machines=closed) == {}
    assert pipeline.held_by_open_breakers(fleet, machines=opened) == {
        "chat": "breaker pause is Open"}


def test_only_the_naive_binding_write_goes_without_a_precondition() -> None:
    found = fleet_.Fleet.of(engines=[_engine(specs.Phase.IDLE, bound=None)])
    name = next(iter(found.engines))
    pending = queue_.ActionQueue()
    [action] = pending.enqueue([planner.Intent(planner.ActionType.ASSIGN, name, "chat")],
                               found, 0.0)
    guarded = actions.binding_patch(action, revision=None)
    naive = actions.binding_patch(action, revision=None, precondition=False)
    assert guarded["metadata"]["resourceVersion"] == found.engines[name].resource_version
    assert "resourceVersion" not in naive["metadata"]


def test_an_unhandled_engine_the_plan_binds_gets_no_idle_note_before_its_assign() -> None:
    """Four engines never written to, a model wanting three, one assign a step: the step
    executes one assign and plans the other two for later; only the engine left over is
    said to be Idle (the others are about to be recorded Loading)."""
    view = view_.View(
        engines=[records.engine_record({
            "metadata": {"name": f"e{i}", "namespace": "ns", "resourceVersion": "1"},
            "spec": {"pool": "p"}}) for i in range(4)],
        models=[records.model_record({"metadata": {"name": "chat", "namespace": "ns"},
                                      "spec": {"replicas": 3, "minAvailable": 0}})])
    fleet = view_.build_fleet(view)
    step = pipeline.Pipeline(pipeline.Config(max_assigns_per_step=1)).step(
        pipeline.Observed(fleet=fleet), T0)
    assert len(step.executions) == 1 and len(step.assigning) == 3
    executed = step.executions[0].action.intent.engine
    planned = driver.writes(fleet, found=view.engines, executed={}, config=driver.DriverConfig(),
                            now=T0, roll=lambda: 1.0, assigning=step.assigning)
    noted = {name for name, patch in planned.others if patch["status"]["phase"] == "Idle"}
    assert noted == {"e0", "e1", "e2", "e3"} - step.assigning
    assert executed in step.assigning
