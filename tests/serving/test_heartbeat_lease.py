"""Which Lease of an engine's name is its heartbeat (`capguard.kube.heartbeats`): the only
kind of Lease an agent writes, whatever else shares the name; and of which engine object,
since one created again keeps the name but not the uid."""

from __future__ import annotations

import pathlib
import time

import aiohttp

from capguard.kube import client, heartbeats
from capguard.localcluster import LocalCluster
from capguard.serving import agent

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENGINE = {"apiVersion": "capguard.dev/v1alpha1", "kind": "InferenceEngine",
          "metadata": {"name": "engine-0", "uid": "uid-1"}}


def test_the_lease_an_agent_creates_speaks_for_its_engine_object_not_for_its_name(
) -> None:
    lease = heartbeats.lease(ENGINE, holder="agent", interval=10.0, now=0.0)
    assert heartbeats.speaks_for(lease, "engine-0")
    assert not heartbeats.speaks_for(lease, "engine-1")
    assert heartbeats.owner_uid(lease) == "uid-1"
    assert heartbeats.belongs(heartbeats.owner_uid(lease), uid="uid-1")
    # The engine deleted and created again has another uid: the old one's Lease, until
    # the garbage collector deletes it, is a heartbeat of that name (its new agent may
    # take it over) but not of the new engine.
    assert not heartbeats.belongs(heartbeats.owner_uid(lease), uid="uid-2")
    assert heartbeats.read(lease) == heartbeats.Heartbeat(renewed=0.0, owner="uid-1")


def test_a_lease_that_names_no_uid_is_taken_as_the_engines() -> None:
    # An agent that did not know its engine's uid wrote no owner, or one without a uid.
    unknown = heartbeats.lease({"metadata": {"name": "engine-0"}}, holder="agent",
                               interval=10.0, now=0.0)
    assert unknown["metadata"]["ownerReferences"] == []
    assert heartbeats.speaks_for(unknown, "engine-0")
    assert heartbeats.owner_uid(unknown) == ""
    assert heartbeats.belongs("", uid="uid-2")


def test_an_acquiring_renewal_makes_the_lease_its_engines_heartbeat() -> None:
    # The new engine's agent takes the old one's Lease over: the merge patch replaces the
    # owners whole, and is preconditioned on the Lease as the agent read it.
    again = {**ENGINE, "metadata": {"name": "engine-0", "uid": "uid-2"}}
    patch = heartbeats.renewal(holder="agent", interval=10.0, now=0.0, acquired=True,
                               resource_version="7", engine=again)
    assert patch["metadata"] == {"resourceVersion": "7", "ownerReferences": [
        {"apiVersion": "capguard.dev/v1alpha1", "kind": "InferenceEngine",
         "name": "engine-0", "uid": "uid-2"}]}
    taken = heartbeats.lease(ENGINE, holder="agent", interval=10.0, now=0.0)
    taken["metadata"].update(patch["metadata"])
    assert heartbeats.belongs(heartbeats.owner_uid(taken), uid="uid-2")
    # A plain renewal leaves the owners alone.
    assert "metadata" not in heartbeats.renewal(holder="agent", interval=10.0, now=1.0)


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


async def test_an_agent_takes_over_the_lease_of_an_earlier_engine_of_its_name(
        tmp_path: pathlib.Path) -> None:
    """Against the embedded API server: the Lease of an earlier engine of the name (not yet
    garbage-collected) is a heartbeat, not another component's Lease; the agent's first
    renewal makes it its engine's. When its engine is created again while it runs, its
    next renewal takes the Lease over again rather than renewing it for the old one."""
    where = {"namespace": "default", "name": "engine-0"}
    async with (LocalCluster(crds_dir=ROOT / "crds",
                             kubeconfig_path=tmp_path / "kubeconfig") as cluster,
                aiohttp.ClientSession() as session):
        api = client.Api()
        api.connect(session=session, server=cluster.url)
        engine = await api.create(client.ENGINES, namespace="default", body={
            **ENGINE, "metadata": {"name": "engine-0"}, "spec": {"pool": "p"}})
        earlier = {**engine, "metadata": {"name": "engine-0", "uid": "uid-earlier"}}
        await api.create(client.LEASES, namespace="default", body=heartbeats.lease(
            earlier, holder="earlier-agent", interval=10.0, now=time.time()))
        found = agent.Agent(agent.Options(name="engine-0", serve_command="true"), api=api)
        found.learn(engine)
        assert await found.renew(first=True)
        lease = await api.get(client.LEASES, **where)
        assert heartbeats.owner_uid(lease) == engine["metadata"]["uid"]
        assert lease["spec"]["holderIdentity"] == found.holder
        assert not found.lease_unusable
        again = {**engine, "metadata": {**engine["metadata"], "uid": "uid-again"}}
        found.learn(again)  # its engine created again, as its watch shows it
        assert await found.renew(first=False)
        assert heartbeats.owner_uid(await api.get(client.LEASES, **where)) == "uid-again"
