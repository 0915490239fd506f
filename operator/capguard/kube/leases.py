"""Leader election on a coordination.k8s.io/v1 Lease: exactly one replica acts.

The algorithm is client-go's: every write carries the Lease's resourceVersion, so two
candidates racing for it cannot both win (one gets 409). A candidate never trusts the
holder's clock: it takes over only after it has itself watched the record stay
unchanged for a full lease duration. The leader trusts its leadership only for a renew
deadline (shorter than the duration) after the start of its last successful renewal,
so it stops acting before anyone else may start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Final

import aiohttp

from capguard import defaults
from capguard.core import clock
from capguard.kube import client

logger = logging.getLogger(__name__)

DEFAULT_NAME: Final = defaults.LEASE_NAME
DEFAULT_DURATION: Final = defaults.LEASE_DURATION
DEFAULT_RENEW: Final = defaults.LEASE_RENEW


@dataclasses.dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    identity: str
    name: str = DEFAULT_NAME
    duration: float = DEFAULT_DURATION  # how long a silent holder keeps the lease
    renew: float = DEFAULT_RENEW  # how often the holder renews (and candidates retry)

    @property
    def renew_deadline(self) -> float:
        # The leader stops acting this long after its last successful renewal began;
        # anyone else waits the full duration after *observing* that renewal.
        return self.duration * 2 / 3

    @property
    def try_timeout(self) -> float:
        # A try (its read and its write) that has no answer by then is given up, as
        # controller-runtime gives its leader election client RenewDeadline/2: a request
        # that never answers (a dead connection) must not hold the election past a renew
        # deadline, nor keep a standby from looking again.
        return max(self.renew_deadline / 2, 1.0)


class LeaderElector:
    """Acquires and renews the Lease; `leading` says whether this replica may act now."""

    def __init__(
        self,
        *,
        api: client.Api,
        config: LeaseConfig,
        on_change: Callable[[bool], None] = lambda leading: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self.config = config
        self._on_change = on_change
        self._clock = clock
        self._leading_since_renewal: float | None = None  # clock() at the start of our last renewal
        self._observed_record: tuple[object, ...] | None = None
        self._observed_at = 0.0
        self._was_leading = False
        self._released = False  # given up on a stop: never taken again by this replica
        self.uid = ""  # the Lease's metadata.uid once seen (Events name it for kubectl describe)

    @property
    def leading(self) -> bool:
        started = self._leading_since_renewal
        return started is not None and self._clock() - started < self.config.renew_deadline

    def check(self) -> bool:
        """Whether this replica holds the lease now, by its own monotonic clock; made right
        before every write. A leader that finds its renewal too old (it was frozen, or the
        API was unreachable) stops at once and says so, without waiting for its next
        renewal round."""
        leading = self.leading
        if not leading and self._was_leading and self._leading_since_renewal is not None:
            logger.warning("Lease %s not renewed for %.1fs (renew deadline %.1fs of a %.0fs "
                           "lease): this replica stops acting.", self.config.name,
                           self._clock() - self._leading_since_renewal,
                           self.config.renew_deadline, self.config.duration)
        self._notify()
        return leading

    async def run(self) -> None:
        """Try to acquire, then renew, forever; release on cancellation."""
        try:
            while True:
                if not self._released:
                    try:
                        async with asyncio.timeout(self.config.try_timeout):
                            await self.try_acquire_or_renew()
                    except TimeoutError:
                        logger.warning("Leader election: the API server did not answer "
                                       "within %.1fs; trying again.", self.config.try_timeout)
                    except (client.ApiError, aiohttp.ClientError, OSError) as error:
                        logger.warning("Leader election: %s", error)
                self._notify()
                await asyncio.sleep(self.config.renew if self.leading else self.candidate_retry)
        finally:
            await asyncio.shield(self.release())

    async def try_acquire_or_renew(self) -> bool:
        started = self._clock()
        try:
            lease = await self._api.get(
                client.LEASES, namespace=self.config.namespace, name=self.config.name)
        except client.NotFound:
            return await self._write(started=started, lease=None)
        self._remember_uid(lease)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"),
                  spec.get("leaseTransitions"))
        if record != self._observed_record:
            self._observed_record = record
            self._observed_at = started
        duration = float(spec.get("leaseDurationSeconds") or self.config.duration)
        held_by_other = holder not in ("", self.config.identity)
        if held_by_other and started - self._observed_at < duration:
            self._leading_since_renewal = None
            return False
        return await self._write(started=started, lease=lease)

    async def _write(self, *, started: float, lease: client.Body | None) -> bool:
        now = clock.precise_timestamp(time.time())
        spec = dict((lease or {}).get("spec") or {})
        taking_over = spec.get("holderIdentity") != self.config.identity
        if taking_over:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if lease else 0)
        spec.update(holderIdentity=self.config.identity, renewTime=now,
                    leaseDurationSeconds=round(self.config.duration))
        metadata: dict[str, object] = {"name": self.config.name,
                                       "namespace": self.config.namespace}
        if lease is not None:
            metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": metadata, "spec": spec}
        try:
            if lease is None:
                written = await self._api.create(client.LEASES, namespace=self.config.namespace,
                                                 body=body)
            else:
                written = await self._api.replace(client.LEASES, namespace=self.config.namespace,
                                                  name=self.config.name, body=body)
        except client.Conflict:
            # Someone else wrote first: they lead (or renewed); look again next round.
            self._leading_since_renewal = None
            return False
        self._remember_uid(written)
        self._leading_since_renewal = started
        return True

    def _remember_uid(self, lease: client.Body) -> None:
        uid = (lease.get("metadata") or {}).get("uid")
        if isinstance(uid, str) and uid:
            self.uid = uid

    @property
    def candidate_retry(self) -> float:
        """How often a standby looks at the Lease: a released one is taken within this."""
        return min(self.config.renew / 2, 1.0)

    async def release(self) -> None:
        """Give the lease up on a graceful stop so a standby takes over at once."""
        self._released = True
        if not self.leading:
            return
        self._leading_since_renewal = None
        self._notify()
        try:
            async with asyncio.timeout(self.config.try_timeout):
                lease = await self._api.get(
                    client.LEASES, namespace=self.config.namespace, name=self.config.name)
                spec = lease.get("spec") or {}
                if spec.get("holderIdentity") != self.config.identity:
                    return
                spec.update(holderIdentity="", leaseDurationSeconds=1)
                lease["spec"] = spec
                await self._api.replace(client.LEASES, namespace=self.config.namespace,
                                        name=self.config.name, body=lease)
        except TimeoutError:
            logger.info("Could not release the lease (no answer within %.1fs): it will "
                        "expire.", self.config.try_timeout)
        except (client.ApiError, aiohttp.ClientError, OSError) as error:
            logger.info("Could not release the lease (it will expire): %s", error)

    def _notify(self) -> None:
        leading = self.leading
        if leading != self._was_leading:
            self._was_leading = leading
            self._on_change(leading)
