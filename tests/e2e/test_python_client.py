"""What a Python controller or script does through the official `kubernetes` client: the
CRDs, capguard's objects, their /scale and /status, watches, errors, Events and the
leader Lease, each answer read through the client's own typed models (kube_client.py)."""

from __future__ import annotations

import datetime

import pytest
from kubernetes import client, dynamic

from . import harness, kube_client
from .conftest import Operators, Target
from .kube_client import GROUP, VERSION

CRD_NAMES = {f"{plural}.{GROUP}" for plural in kube_client.PLURALS.values()}


def test_the_crds_and_their_discovery_read_back_typed(kube_api: client.ApiClient) -> None:
    extensions = client.ApiextensionsV1Api(kube_api)
    crds = {crd.metadata.name: crd for crd in extensions.list_custom_resource_definition().items
            if crd.spec.group == GROUP}
    assert set(crds) == CRD_NAMES
    for crd in crds.values():
        conditions = {c.type: c for c in crd.status.conditions}
        assert conditions["Established"].status == conditions["NamesAccepted"].status == "True"
        assert all(isinstance(c.last_transition_time, datetime.datetime)
                   for c in conditions.values()), conditions
        assert crd.status.accepted_names == crd.spec.names
        assert crd.status.stored_versions == [VERSION]
        (version,) = crd.spec.versions
        assert version.served and version.storage and version.subresources.status is not None
        assert version.additional_printer_columns
        spec = version.var_schema.open_apiv3_schema.properties["spec"]
        assert spec.description and all(p.description for p in spec.properties.values())

    models = crds[f"modelcapacities.{GROUP}"].spec.versions[0]
    assert models.subresources.scale == client.V1CustomResourceSubresourceScale(
        spec_replicas_path=".spec.replicas", status_replicas_path=".status.serving",
        label_selector_path=".status.selector")
    spec = models.var_schema.open_apiv3_schema.properties["spec"]
    assert [rule.field_path for rule in spec.x_kubernetes_validations] == [".minAvailable"]
    assert spec.properties["minAvailable"].x_kubernetes_int_or_string is True

    resources = {r.name: r for r in
                 client.CustomObjectsApi(kube_api).get_api_resources(GROUP, VERSION).resources}
    assert resources["modelcapacities"].short_names == ["mc"]
    assert resources["modelcapacities"].singular_name == "modelcapacity"
    scale = resources["modelcapacities/scale"]
    assert (scale.group, scale.version, scale.kind) == ("autoscaling", "v1", "Scale")
    assert "circuitbreakers/scale" not in resources

    # The dynamic client finds the kind and its subresources by discovery.
    found = dynamic.DynamicClient(kube_api).resources.get(api_version=f"{GROUP}/{VERSION}",
                                                          kind="ModelCapacity")
    assert set(found.subresources) == {"scale", "status"}

    # A watch starts with the current objects, each one a typed CRD.
    watched = kube_client.first(
        extensions.list_custom_resource_definition, timeout=5, what="the CRDs watched",
        match=lambda crd: crd.metadata.name == f"modelcapacities.{GROUP}")
    assert isinstance(watched, client.V1CustomResourceDefinition)
    assert watched.spec.versions[0].subresources.scale is not None


def test_writes_and_refusals_answer_as_a_real_server(custom: kube_client.Custom) -> None:
    created = custom.create(harness.engine("e-0", labels={"tier": "gold"}))
    metadata = kube_client.metadata(created)
    assert metadata.generation == 1 and metadata.uid and metadata.namespace == custom.namespace
    assert metadata.creation_timestamp.tzinfo is not None
    custom.create(harness.engine("e-1"))
    listed = custom.list("inferenceengines", label_selector="tier=gold")
    assert [item["metadata"]["name"] for item in listed["items"]] == ["e-0"]
    assert listed["kind"] == "InferenceEngineList" and listed["metadata"]["resourceVersion"]

    with pytest.raises(client.ApiException) as exists:
        custom.create(harness.engine("e-0"))
    status = kube_client.status_of(exists.value)
    assert (exists.value.status, status.code, status.status, status.reason) == (
        409, 409, "Failure", "AlreadyExists")
    assert (status.details.name, status.details.group) == ("e-0", GROUP)

    # A write planned from a version that no longer holds loses with 409 Conflict.
    custom.patch("inferenceengines", "e-0", {"metadata": {"labels": {"moved": "yes"}}})
    with pytest.raises(client.ApiException) as conflict:
        custom.patch("inferenceengines", "e-0", {
            "metadata": {"resourceVersion": metadata.resource_version},
            "spec": {"capacityUnits": 2}})
    status = kube_client.status_of(conflict.value)
    assert (conflict.value.status, status.reason, status.details.name) == (409, "Conflict", "e-0")
    assert custom.get("inferenceengines", "e-0")["spec"]["capacityUnits"] == 1

    # A floor above the desired count is refused at admission, naming the field.
    with pytest.raises(client.ApiException) as invalid:
        custom.create(harness.model("floor-too-high", replicas=2, min_available=3))
    status = kube_client.status_of(invalid.value)
    assert (invalid.value.status, status.reason, status.details.kind) == (
        422, "Invalid", "ModelCapacity")
    causes = {cause.field: cause for cause in status.details.causes}
    assert causes["spec.minAvailable"].reason == "FieldValueInvalid", causes
    assert "must not exceed spec.replicas" in causes["spec.minAvailable"].message
    with pytest.raises(client.ApiException) as missing:
        custom.get("modelcapacities", "floor-too-high")
    assert kube_client.status_of(missing.value).reason == "NotFound"


def test_status_scale_watch_and_delete(custom: kube_client.Custom, target: Target) -> None:
    """The API as a client sees it. Where capguard is deployed (kind), its operator writes
    this model's status too: what the test reads of the status is then checked only in
    the answers to its own writes, and the watch only for the spec's changes."""
    model = custom.create(harness.model("chat", replicas=2))
    patched = custom.patch_status("modelcapacities", "chat", {"serving": 1})
    assert patched["status"]["serving"] == 1
    assert patched["metadata"]["generation"] == model["metadata"]["generation"]
    # The main resource ignores status; /status ignores spec.
    custom.patch("modelcapacities", "chat", {"status": {"serving": 7}})
    custom.patch_status("modelcapacities", "chat", {"serving": 1, "replicas": 9})
    assert custom.get("modelcapacities", "chat")["spec"]["replicas"] == 2

    scale = custom.scale("modelcapacities", "chat")
    assert (scale.kind, scale.api_version) == ("Scale", "autoscaling/v1")
    assert scale.spec.replicas == 2
    if not target.deployed:
        assert scale.status.replicas == 1
    assert scale.metadata.uid == model["metadata"]["uid"]
    since = custom.list("modelcapacities")["metadata"]["resourceVersion"]
    scaled = custom.scale("modelcapacities", "chat", replicas=3)
    assert scaled.spec.replicas == 3
    assert custom.get("modelcapacities", "chat")["metadata"]["generation"] == 2

    # Without finalizers a DELETE answers a Status naming what went; with one, the object.
    gone = client.V1Status.from_dict(custom.delete("modelcapacities", "chat"))
    assert (gone.status, gone.details.name, gone.details.uid) == (
        "Success", "chat", model["metadata"]["uid"])
    custom.create(harness.engine("held", finalizers=[harness.FOREIGN_FINALIZER]))
    terminating = kube_client.metadata(custom.delete("inferenceengines", "held"))
    assert terminating.deletion_timestamp is not None and terminating.finalizers
    assert terminating.deletion_grace_period_seconds == 0
    custom.patch("inferenceengines", "held", {"metadata": {"finalizers": None}})
    with pytest.raises(client.ApiException) as missing:
        custom.get("inferenceengines", "held")
    assert kube_client.status_of(missing.value).reason == "NotFound"

    # A watch from a list's resourceVersion replays each change after it, in order.
    seen = [(kind, body["metadata"]["name"], body["spec"].get("replicas"))
            for kind, body in custom.watch("modelcapacities", resource_version=since, timeout=2)]
    if target.deployed:  # the operator's status writes: MODIFIED with the spec unchanged
        seen = _spec_changes(seen, listed=("MODIFIED", "chat", 2))
    assert seen == [("MODIFIED", "chat", 3), ("DELETED", "chat", 3)], seen


def _spec_changes(events: list[tuple[str, str, int]], *,
                  listed: tuple[str, str, int]) -> list[tuple[str, str, int]]:
    """The events that change what the one before showed (the first: the object as listed)."""
    kept, last = [], listed
    for event in events:
        if event != last:
            kept.append(event)
        last = event
    return kept


def test_an_operator_follows_the_client_and_answers_in_typed_status_events_and_lease(
    kube_api: client.ApiClient, custom: kube_client.Custom, operators: Operators,
) -> None:
    for body in (*harness.engines("e", 4), harness.model("chat", replicas=2),
                 harness.breaker("maint", pause_threshold="10m")):
        custom.create(body)
    operator = operators.start(leader_election=True)
    custom.wait("modelcapacities", "chat", timeout=30, what="chat serving 2",
                match=lambda body: (body.get("status") or {}).get("serving") == 2)

    # An autoscaler's move: /scale, then the operator converges.
    custom.scale("modelcapacities", "chat", replicas=3)
    model = custom.wait("modelcapacities", "chat", timeout=20, what="chat serving 3",
                        match=lambda body: body["status"].get("serving") == 3)
    scale = custom.scale("modelcapacities", "chat")
    assert (scale.spec.replicas, scale.status.replicas) == (3, 3)
    conditions = kube_client.conditions(model)
    assert conditions["Available"].status == "True"
    assert {c.observed_generation for c in conditions.values()} == {
        model["metadata"]["generation"]}
    assert harness.serving_units(custom.list("inferenceengines")["items"]) == {"chat": 3}

    # A person trips the breaker; a scale-up while it is open is held, not executed.
    custom.patch("circuitbreakers", "maint", {"spec": {"open": True}})
    breaker = custom.wait("circuitbreakers", "maint", timeout=10, what="maint Open",
                          match=lambda body: body["status"].get("state") == "Open")
    assert kube_client.conditions(breaker)["Paused"].status == "True"
    custom.scale("modelcapacities", "chat", replicas=4)
    custom.wait("circuitbreakers", "maint", timeout=10, what="maint holding an action",
                match=lambda body: body["status"].get("heldActions", 0) >= 1)
    progressing = kube_client.conditions(custom.get("modelcapacities", "chat"))["Progressing"]
    assert (progressing.status, progressing.reason) == ("False", "Held"), progressing

    uid = breaker["metadata"]["uid"]
    opened = kube_client.first(
        client.CoreV1Api(kube_api).list_namespaced_event, custom.namespace,
        field_selector=f"involvedObject.uid={uid}", timeout=10, what="a BreakerOpened Event",
        match=lambda event: event.reason == "BreakerOpened")
    assert isinstance(opened, client.CoreV1Event)
    assert (opened.involved_object.kind, opened.involved_object.name) == (
        "CircuitBreaker", "maint")
    assert (opened.type, opened.reporting_component, opened.reporting_instance) == (
        "Warning", "capguard", operator.identity)
    (reported,) = [event for event in client.EventsV1Api(kube_api).list_namespaced_event(
        custom.namespace, field_selector="regarding.name=maint").items
        if event.reason == "BreakerOpened"]
    assert (reported.regarding.uid, reported.note) == (uid, opened.message)
    assert reported.reporting_controller == "capguard" and reported.event_time is not None

    lease = client.CoordinationV1Api(kube_api).read_namespaced_lease(
        harness.LEASE_NAME, harness.OPERATOR_NAMESPACE)
    assert lease.spec.holder_identity == operator.identity
    assert lease.spec.lease_duration_seconds == 3
    assert lease.spec.renew_time >= lease.spec.acquire_time
    namespace = client.CoreV1Api(kube_api).read_namespace(custom.namespace)
    assert namespace.status.phase == "Active"

    custom.patch("circuitbreakers", "maint", {"spec": {"open": False}})
    custom.wait("modelcapacities", "chat", timeout=20, what="chat serving 4 after the release",
                match=lambda body: body["status"].get("serving") == 4)
