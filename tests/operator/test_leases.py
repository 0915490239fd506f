"""Leader election against the embedded API server: one holder, takeover only after expiry."""

from __future__ import annotations

import asyncio

from operator_harness import Kube

from capguard.kube import client, leases


def elector(kube: Kube, identity: str, *, clock: list[float]) -> leases.LeaderElector:
    config = leases.LeaseConfig(namespace="default", identity=identity, duration=15, renew=5)
    return leases.LeaderElector(api=kube.api, config=config, clock=lambda: clock[0])


async def test_one_candidate_wins_and_the_other_waits_a_full_duration(kube: Kube) -> None:
    clock = [100.0]
    first, second = elector(kube, "a", clock=clock), elector(kube, "b", clock=clock)
    won = await asyncio.gather(first.try_acquire_or_renew(), second.try_acquire_or_renew())
    assert sorted(won) == [False, True]  # a create race: one 409s
    leader, standby = (first, second) if won[0] else (second, first)
    assert leader.leading and not standby.leading

    # The leader goes silent (SIGKILL): the standby takes over only after 15 s of its own.
    await standby.try_acquire_or_renew()
    clock[0] += 10
    assert leader.leading is False  # past its renew deadline (10 s), it stops acting first
    assert not await standby.try_acquire_or_renew()
    clock[0] += 5.1
    assert await standby.try_acquire_or_renew()
    lease = await kube.api.get(client.LEASES, namespace="default", name="capguard-leader")
    assert lease["spec"]["holderIdentity"] == ("b" if leader is first else "a")
    assert lease["spec"]["leaseTransitions"] == 1


async def test_a_renewal_keeps_the_lease_and_a_release_hands_it_over_at_once(
    kube: Kube
) -> None:
    clock = [0.0]
    first, second = elector(kube, "a", clock=clock), elector(kube, "b", clock=clock)
    assert await first.try_acquire_or_renew()
    assert not await second.try_acquire_or_renew()
    clock[0] += 4
    assert await first.try_acquire_or_renew()  # a renewal is a write with the resourceVersion
    clock[0] += 5
    assert not await second.try_acquire_or_renew()  # it has just seen the renewal
    assert first.leading
    await first.release()
    assert not first.leading
    assert await second.try_acquire_or_renew()
