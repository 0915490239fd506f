"""The writer: every write the operator makes, leader-gated, bounded, remembered.

It decides nothing. It sends what it is given (a step's executions, statuses, the
simulated driver's phase moves) only while this replica leads, at most
`concurrency` at once, and puts what the API server answered into the index at once,
so the next look does not write the same thing again before the watch brings it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

import aiohttp

from capguard.core import clock, pipeline, specs
from capguard.handlers import index, records
from capguard.kube import actions, client

logger = logging.getLogger(__name__)

ERRORS: Final = (client.ApiError, aiohttp.ClientError, OSError, TimeoutError)


class Outcome(enum.Enum):
    """What became of an action's write (the `result` label of the actions metric)."""

    EXECUTED = "executed"
    CONFLICT = "conflict"  # 409: the engine changed since the plan
    FAILED = "failed"  # any other error, or this replica no longer leads


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


class Writer:
    def __init__(
        self, *, api: client.Api, index: index.Index, is_leader: Callable[[], bool],
        concurrency: int,
    ) -> None:
        self.api = api
        self.index = index
        self.is_leader = is_leader
        self._slots = asyncio.Semaphore(concurrency)

    async def status(
        self, resource: client.Resource, meta: records.Meta, status: Mapping[str, Any]
    ) -> bool:
        if not self.is_leader():
            return False
        async with self._slots:
            try:
                body = await self.api.merge_patch(
                    resource, namespace=meta.namespace, name=meta.name,
                    patch={"status": dict(status)}, subresource="status")
            except client.NotFound:
                return False  # deleted meanwhile
            except ERRORS as error:
                logger.warning("Status of %s/%s not written: %s", resource.plural, meta.name, error)
                return False
        self.remember(resource, body)
        return True

    async def action(
        self, namespace: str, execution: pipeline.Execution, *, engine: specs.Engine, now: float
    ) -> Written:
        """Execute one action: the binding, as a patch that fails if the engine changed."""
        if not self.is_leader():
            return Written(execution, Outcome.FAILED, None)
        action = execution.action
        patch = actions.binding_patch(action, revision=execution.revision,
                                      precondition=execution.precondition)
        async with self._slots:
            try:
                body = await self.api.merge_patch(
                    client.ENGINES, namespace=namespace, name=action.intent.engine, patch=patch)
            except client.Conflict:
                return Written(execution, Outcome.CONFLICT, None)
            except ERRORS as error:
                logger.warning("Action %s on %s failed: %s", action.id, action.intent.engine,
                               error)
                return Written(execution, Outcome.FAILED, None)
        self.remember(client.ENGINES, body)
        last_action = actions.last_action(action, time=clock.timestamp(now))
        with contextlib.suppress(specs.SpecError):  # else the engine as we knew it
            engine = specs.parse_engine(body)
        generation = int((body.get("metadata") or {}).get("generation") or 0)
        return Written(execution, Outcome.EXECUTED, Executed(engine, generation, last_action))

    async def engine_status(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> specs.Engine | None:
        if not self.is_leader():
            return None
        async with self._slots:
            try:
                body = await self.api.merge_patch(client.ENGINES, namespace=namespace, name=name,
                                                  patch=patch, subresource="status")
            except (client.Conflict, client.NotFound):
                return None  # the engine changed or went: the next pass sees it as it is
            except ERRORS as error:
                logger.warning("Engine %s status not written: %s", name, error)
                return None
        self.remember(client.ENGINES, body)
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
