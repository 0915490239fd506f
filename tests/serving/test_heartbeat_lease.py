"""Which Lease of an engine's name is its heartbeat (`capguard.kube.heartbeats`): the only
kind of Lease an agent writes, whatever else shares the name."""

from __future__ import annotations

from capguard.kube import heartbeats

ENGINE = {"apiVersion": "capguard.dev/v1alpha1", "kind": "InferenceEngine",
          "metadata": {"name": "engine-0", "uid": "uid-1"}}


def test_the_lease_an_agent_creates_speaks_for_its_engine_and_for_one_of_its_name_again(
) -> None:
    lease = heartbeats.lease(ENGINE, holder="agent", interval=10.0, now=0.0)
    assert heartbeats.speaks_for(lease, "engine-0")
    # The engine deleted and created again has another uid: its agent renews the Lease
    # until the garbage collector deletes it, then creates its own.
    again = {**ENGINE, "metadata": {"name": "engine-0", "uid": "uid-2"}}
    assert heartbeats.speaks_for(heartbeats.lease(again, holder="a", interval=1.0, now=0.0),
                                 "engine-0")
    assert not heartbeats.speaks_for(lease, "engine-1")


def test_another_components_lease_of_the_name_is_not_a_heartbeat() -> None:
    election = {"metadata": {"name": "engine-0"}, "spec": {"holderIdentity": "leader"}}
    assert not heartbeats.speaks_for(election, "engine-0")
    labelled = heartbeats.lease(ENGINE, holder="agent", interval=10.0, now=0.0)
    labelled["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "engine-0", "uid": "u"}]
    assert not heartbeats.speaks_for(labelled, "engine-0")


def test_readers_believe_only_a_lease_an_agent_would_write() -> None:
    # The operator and the gateway read renewals through `renewed`: a Lease an agent
    # leaves alone says nothing of its engine either, even when it carries the label.
    ours = heartbeats.lease(ENGINE, holder="agent", interval=10.0, now=100.0)
    assert heartbeats.renewed(ours) == 100.0
    foreign = heartbeats.lease(ENGINE, holder="agent", interval=10.0, now=100.0)
    foreign["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "engine-0", "uid": "u"}]
    assert heartbeats.renewed(foreign) is None
    unlabelled = {**ours, "metadata": {**ours["metadata"], "labels": {}}}
    assert heartbeats.renewed(unlabelled) is None
