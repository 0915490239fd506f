"""The writer: every write the operator makes, fenced, bounded, backed off, remembered.

It decides nothing. It sends what it is given (a step's executions, statuses, the
simulated driver's phase moves), at most `concurrency` at once, and puts what the API
server answered into the index at once, so the next look does not write the same thing
again before the watch brings it back. Three checks stand right before each request,
after any wait for a slot:

- fencing: this replica still holds the Lease by its own monotonic clock (the elector's
  renew deadline keeps a margin inside the lease duration), so a leader that was
  frozen past its lease sends nothing when it thaws;
- freshness: an action triaged longer ago than `max_write_delay` is not written (the
  model side of its plan may be gone); it goes back to planning;
- backoff: after a failure of an unwell API (5xx, 429, a timeout, a refused connection)
  nothing is sent until the backoff (or the server's Retry-After) has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import aiohttp

from capguard import defaults
from capguard.core import backoff, clock, pipeline, specs
from capguard.handlers import index, records
from capguard.kube import actions, client

logger = logging.getLogger(__name__)

ERRORS: Final = (client.ApiError, aiohttp.ClientError, OSError, TimeoutError)


class Outcome(enum.Enum):
    """What became of an action's write (the `result` label of the actions metric)."""

    EXECUTED = "executed"
    CONFLICT = "conflict"  # 409: the engine changed since the plan
    FAILED = "failed"  # an error, or held back by the backoff
    NOT_LEADING = "not_leading"  # the lease was no longer ours at the moment of writing
    LATE = "late"  # triaged longer ago than max_write_delay: back to planning


class _Unsent(Exception):
    """A write the checks stopped before it was sent."""

    def __init__(self, outcome: Outcome, retry_after: float | None = None) -> None:
        super().__init__(outcome.value)
        self.outcome = outcome
        self.retry_after = retry_after


@dataclasses.dataclass(frozen=True)
class Executed:
    """An action the API server accepted: the engine as written, for the rest of the pass."""

    engine: specs.Engine
    generation: int
    last_action: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Written:
    execution: pipeline.Execution
    outcome: Outcome
    done: Executed | None
    transient: bool = False  # failed on an unwell API: the engine backs off
    retry_after: float | None = None


class Writer:
    def __init__(
        self, *, api: client.Api, index: index.Index, is_leader: Callable[[], bool],
        concurrency: int, max_write_delay: float = defaults.MAX_WRITE_DELAY,
        monotonic: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.api = api
        self.index = index
        self.is_leader = is_leader
        self.max_write_delay = max_write_delay
        self._monotonic = monotonic
        self._jitter = jitter
        self._slots = asyncio.Semaphore(concurrency)
        self._failures = 0  # transient failures in a row
        self._quiet_until = 0.0  # monotonic: nothing is sent before
        self.troubled = False  # a transient failure since the caller last looked
        self.sent = 0  # requests sent, for the record

    async def _send(
        self, resource: client.Resource, *, namespace: str, name: str,
        patch: Mapping[str, Any], subresource: str | None = None,
        triaged_at: float | None = None,
    ) -> client.Body:
        """One PATCH, after the checks; raises `_Unsent`, or what the API raised."""
        async with self._slots:
            if not self.is_leader():
                raise _Unsent(Outcome.NOT_LEADING)
            now = self._monotonic()
            if triaged_at is not None and now - triaged_at > self.max_write_delay:
                raise _Unsent(Outcome.LATE)
            if now < self._quiet_until:
                raise _Unsent(Outcome.FAILED, retry_after=self._quiet_until - now)
            self.sent += 1
            try:
                body = await self.api.merge_patch(resource, namespace=namespace, name=name,
                                                  patch=patch, subresource=subresource)
            except ERRORS as error:
                if transient(error):
                    self._back_off(error)
                raise
        self._failures = 0
        self.remember(resource, body)
        return body

    def recovered(self) -> None:
        """The API answered a read again: writes may go at once."""
        self._failures = 0
        self._quiet_until = 0.0

    def _back_off(self, error: BaseException) -> None:
        self._failures += 1
        self.troubled = True
        wait = backoff.delay(self._failures, jitter=self._jitter())
        server = error.retry_after if isinstance(error, client.ApiError) else None
        wait = max(wait, server or 0.0)
        self._quiet_until = max(self._quiet_until, self._monotonic() + wait)
        if self._failures == 1 or self._failures % 10 == 0:
            logger.warning("The API server failed a write (%s); writes wait %.1fs "
                           "(%d failures in a row).", one_line(error), wait, self._failures)

    async def status(
        self, resource: client.Resource, meta: records.Meta, status: Mapping[str, Any]
    ) -> bool:
        try:
            await self._send(resource, namespace=meta.namespace, name=meta.name,
                             patch={"status": dict(status)}, subresource="status")
        except _Unsent:
            return False
        except client.NotFound:
            return False  # deleted meanwhile
        except ERRORS as error:
            logger.debug("Status of %s/%s not written: %s", resource.plural, meta.name, error)
            return False
        return True

    async def action(
        self, namespace: str, execution: pipeline.Execution, *, engine: specs.Engine,
        now: float, triaged_at: float,
    ) -> Written:
        """Execute one action: the binding, as a patch that fails if the engine changed.
        ``triaged_at`` is this writer's monotonic time when the step decided it."""
        action = execution.action
        patch = actions.binding_patch(action, revision=execution.revision,
                                      precondition=execution.precondition)
        try:
            body = await self._send(client.ENGINES, namespace=namespace,
                                    name=action.intent.engine, patch=patch,
                                    triaged_at=triaged_at)
        except _Unsent as unsent:
            held = unsent.retry_after is not None
            return Written(execution, unsent.outcome, None, held, unsent.retry_after)
        except client.Conflict:
            return Written(execution, Outcome.CONFLICT, None)
        except ERRORS as error:
            logger.warning("Action %s on %s failed: %s", action.id, action.intent.engine,
                           one_line(error))
            retry = error.retry_after if isinstance(error, client.ApiError) else None
            return Written(execution, Outcome.FAILED, None, transient(error), retry)
        last_action = actions.last_action(action, time=clock.timestamp(now))
        with contextlib.suppress(specs.SpecError):  # else the engine as we knew it
            engine = specs.parse_engine(body)
        generation = int((body.get("metadata") or {}).get("generation") or 0)
        return Written(execution, Outcome.EXECUTED, Executed(engine, generation, last_action))

    async def engine_status(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> specs.Engine | None:
        try:
            body = await self._send(client.ENGINES, namespace=namespace, name=name,
                                    patch=patch, subresource="status")
        except (_Unsent, client.Conflict, client.NotFound):
            return None  # not now, or the engine changed or went: the next pass sees it
        except ERRORS as error:
            logger.debug("Engine %s status not written: %s", name, error)
            return None
        try:
            return specs.parse_engine(body)
        except specs.SpecError:
            return None

    async def record_action(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> specs.Engine | None:
        """Record an executed action on its engine, even if the engine changed meanwhile.

        The phase move in `patch` carries the engine's resourceVersion and may lose to
        another write (it is re-derived next pass); the record of what ran may not be
        lost, and it overwrites nothing but itself, so it is retried without a precondition.
        """
        written = await self.engine_status(namespace, name, patch)
        if written is None and "metadata" in patch:
            record = {"status": {"lastAction": patch["status"]["lastAction"]}}
            written = await self.engine_status(namespace, name, record)
        return written

    def remember(self, resource: client.Resource, body: Mapping[str, Any]) -> None:
        """What the server answered is the object now: into the index at once."""
        stores: dict[str, index.Store[Any]] = {
            client.ENGINES.plural: self.index.engines, client.MODELS.plural: self.index.models,
            client.BREAKERS.plural: self.index.breakers}
        store = stores.get(resource.plural)
        if store is not None and (body.get("metadata") or {}).get("resourceVersion"):
            store.apply(body)


def transient(error: BaseException) -> bool:
    """An unwell or busy API (5xx, 429, no connection, a timeout): retry later, re-plan not."""
    if isinstance(error, client.ApiError):
        return error.transient
    return isinstance(error, aiohttp.ClientError | OSError | TimeoutError)


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
