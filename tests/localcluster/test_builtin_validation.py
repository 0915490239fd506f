"""Leases, Events and ConfigMaps are validated as kube-apiserver validates them: the
embedded server stored a Lease of 0 seconds, an Event that says neither who reported it
nor why, and a ConfigMap key a Pod could not mount, all of which a real server refuses
with 422. capguard's own Event bodies (`kube.events.render`) go through the same rules.

No recorded exchange refuses one of these kinds; the rules and messages follow
pkg/apis/coordination/validation and pkg/apis/core/validation (1.32).
"""
from __future__ import annotations

import datetime
from typing import Any, Final

from capguard.kube import events
from capguard.localcluster import LocalCluster

from .widget_api import call

LEASES: Final = "/apis/coordination.k8s.io/v1/namespaces/default/leases"
CORE_EVENTS: Final = "/api/v1/namespaces/default/events"
EVENTS_V1: Final = "/apis/events.k8s.io/v1/namespaces/default/events"
CONFIGMAPS: Final = "/api/v1/namespaces/default/configmaps"
NOW: Final = "2026-12-07T10:00:00.123456Z"


def causes_of(answer: dict[str, Any]) -> list[tuple[str, str]]:
    return [(cause["field"], cause["message"]) for cause in answer["details"]["causes"]]


async def test_a_lease_of_no_time_is_refused(local_cluster: LocalCluster) -> None:
    status, answer, _ = await call(local_cluster, "POST", LEASES, {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 0, "leaseTransitions": -1}})
    assert (status, answer["reason"]) == (422, "Invalid")
    assert answer["message"] == (
        'Lease.coordination.k8s.io "l" is invalid: [spec.leaseDurationSeconds: Invalid value: '
        "0: must be greater than 0, spec.leaseTransitions: Invalid value: -1: must be greater "
        "than or equal to 0]")


def core_event(name: str, **fields: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Event", "metadata": {"name": name},
            "involvedObject": {"kind": "Lease", "name": "l", "namespace": "default"},
            **fields}


async def test_an_event_with_event_time_must_say_who_reported_it_how_and_why(
        local_cluster: LocalCluster) -> None:
    # Without eventTime, an old-style Event: only its namespaces must agree.
    assert (await call(local_cluster, "POST", CORE_EVENTS, core_event("old")))[0] == 201
    status, answer, _ = await call(local_cluster, "POST", CORE_EVENTS, core_event(
        "new", eventTime=NOW, reportingComponent="not a name", reason="x" * 129,
        message="é" * 513))
    assert status == 422
    assert causes_of(answer) == [
        ("reportingComponent", 'Invalid value: "not a name": name part must consist of '
         "alphanumeric characters, '-', '_' or '.', and must start and end with an "
         "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
         "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"),
        ("reportingInstance", "Required value"),
        ("action", "Required value"),
        ("reason", 'Invalid value: "": can have at most 128 characters'),
        ("message", 'Invalid value: "": can have at most 1024 characters')]

    elsewhere = core_event("elsewhere")
    elsewhere["involvedObject"]["namespace"] = "kube-system"
    status, answer, _ = await call(local_cluster, "POST", CORE_EVENTS, elsewhere)
    assert status == 422 and causes_of(answer) == [
        ("involvedObject.namespace", 'Invalid value: "kube-system": does not match '
                                     "event.namespace")]


async def test_capguards_own_events_pass_and_a_longer_message_would_not(
        local_cluster: LocalCluster) -> None:
    involved = events.ObjectRef("capguard.dev/v1alpha1", "ModelCapacity", "default", "chat")
    now = datetime.datetime(2026, 12, 7, 10, tzinfo=datetime.UTC)
    body = events.render(events.Event(involved, events.WARNING, "BatchRefused", "m" * 5000),
                         component="capguard", instance="capguard-operator-7d9f-abcde", now=now)
    status, created, _ = await call(local_cluster, "POST", CORE_EVENTS, body)
    assert status == 201, created
    assert len(created["message"]) == events.MESSAGE_BYTES   # the recorder cut it to fit

    body["metadata"]["name"] += "x"
    body["message"] = "m" * (events.MESSAGE_BYTES + 1)
    status, answer, _ = await call(local_cluster, "POST", CORE_EVENTS, body)
    assert status == 422 and causes_of(answer) == [
        ("message", 'Invalid value: "": can have at most 1024 characters')]


async def test_an_events_v1_event_leaves_the_deprecated_fields_alone(
        local_cluster: LocalCluster) -> None:
    body = {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "eventTime": NOW, "reportingController": "capguard", "reportingInstance": "i",
            "action": "Refuse", "reason": "BatchRefused", "type": "Fatal",
            "regarding": {"kind": "Lease", "name": "l", "namespace": "default"},
            "deprecatedCount": 2}
    status, answer, _ = await call(local_cluster, "POST", EVENTS_V1, body)
    assert status == 422 and causes_of(answer) == [
        ("type", 'Invalid value: "": has invalid value: Fatal'),
        ("deprecatedCount", 'Invalid value: "": needs to be unset')]
    body.pop("deprecatedCount")
    body["type"] = "Warning"
    assert (await call(local_cluster, "POST", EVENTS_V1, body))[0] == 201


async def test_config_map_keys_and_immutability(local_cluster: LocalCluster) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"a b": "1", "..x": "2", "k": "3"}, "binaryData": {"k": "MQ=="}}
    status, answer, _ = await call(local_cluster, "POST", CONFIGMAPS, body)
    assert status == 422 and [field for field, _ in causes_of(answer)] == [
        "data[a b]", "data[..x]", "data[k]"]
    assert causes_of(answer)[1][1] == 'Invalid value: "..x": must not start with \'..\''
    assert causes_of(answer)[2][1] == 'Invalid value: "k": duplicate of key present in binaryData'

    frozen = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "frozen"},
              "data": {"k": "1"}, "immutable": True}
    assert (await call(local_cluster, "POST", CONFIGMAPS, frozen))[0] == 201
    frozen["data"] = {"k": "2"}
    status, answer, _ = await call(local_cluster, "PUT", CONFIGMAPS + "/frozen", frozen)
    assert status == 422 and causes_of(answer) == [
        ("data", "Forbidden: field is immutable when `immutable` is set")]
