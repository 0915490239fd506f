"""The demo's own view of its namespace, kept current by watches (list, then watch).

It is the observer's view, independent of the operator's: the measures are computed
from it, so an operator bug shows up as a bad number instead of hiding. Engine changes
are passed to a listener with the fleet before and after them, which is how executed
actions are seen: a new `capguard.dev/action-id` annotation on an engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any, Final

import aiohttp

from capguard.core import fleet as fleet_
from capguard.core import specs
from capguard.demo import connection as connection_
from capguard.kube import client

Body = dict[str, Any]
EVENTS_KEPT: Final = 200
RETRY_SECONDS: Final = 0.5


@dataclasses.dataclass(frozen=True)
class EngineChange:
    """One watch event of an engine, with the fleet as the demo saw it around it."""

    old: Body | None
    new: Body
    before: fleet_.Fleet
    after: fleet_.Fleet
    previous_change_at: float  # monotonic time of this engine's previous change
    history_before: int  # len(Mirror.serving_history) before this change was recorded


Listener = Callable[[EngineChange], None]


class Mirror:
    def __init__(self, *, connection: connection_.Connection, namespace: str) -> None:
        self.connection = connection
        self.namespace = namespace
        self.engines: dict[str, Body] = {}
        self.models: dict[str, Body] = {}
        self.breakers: dict[str, Body] = {}
        self.events: list[Body] = []  # core/v1 Events in the namespace, oldest first
        self.listeners: list[Listener] = []
        self._parsed_engines: dict[str, specs.Engine] = {}
        self._parsed_models: dict[str, specs.ModelSpec] = {}
        self._parsed_breakers: dict[str, specs.BreakerSpec] = {}
        self._changed_at: dict[str, float] = {}
        # Every change of any model's serving units, as (monotonic time, units by model).
        self.serving_history: list[tuple[float, dict[str, int]]] = []
        self._listed = {r.plural: asyncio.Event() for r in _KINDS}

    async def run(self) -> None:
        """Follow every kind until cancelled."""
        await asyncio.gather(*(self._follow(r) for r in _KINDS))

    async def ready(self) -> None:
        """Until every kind has been listed once."""
        await asyncio.gather(*(e.wait() for e in self._listed.values()))

    def fleet(self) -> fleet_.Fleet:
        return fleet_.Fleet.of(engines=self._parsed_engines.values(),
                               models=self._parsed_models.values(),
                               breakers=self._parsed_breakers.values())

    async def _follow(self, resource: client.Resource) -> None:
        while True:
            # A watch ends (or expires with 410) now and then: list again and go on.
            with contextlib.suppress(client.ApiError, client.EmptyWatch, aiohttp.ClientError,
                                     OSError, TimeoutError, ValueError):
                items, version = await self.connection.list_with_version(
                    resource, namespace=self.namespace)
                self._replace_all(resource, items)
                self._listed[resource.plural].set()
                async for event in self.connection.api.watch(
                        resource, namespace=self.namespace, resource_version=version,
                        timeout_seconds=connection_.WATCH_TIMEOUT):
                    self._on_event(resource, event)
            await asyncio.sleep(RETRY_SECONDS)

    def _replace_all(self, resource: client.Resource, items: list[Body]) -> None:
        """A fresh listing: what it lacks was deleted while no watch was open."""
        if resource is client.EVENTS:
            self.events = items[-EVENTS_KEPT:]
            return
        held = (self.engines if resource is client.ENGINES
                else self.models if resource is client.MODELS else self.breakers)
        listed = {str(item["metadata"]["name"]) for item in items}
        for name, body in list(held.items()):
            if name not in listed:
                self._store(resource, body, deleted=True)
        for item in items:
            self._store(resource, item, deleted=False)

    def _on_event(self, resource: client.Resource, event: Body) -> None:
        kind, body = event.get("type"), event.get("object") or {}
        if kind in ("BOOKMARK", "ERROR"):
            return
        if resource is client.EVENTS:
            self.events = [*self.events, body][-EVENTS_KEPT:]
            return
        self._store(resource, body, deleted=kind == "DELETED")

    def _store(self, resource: client.Resource, body: Body, *, deleted: bool) -> None:
        name = str(body["metadata"]["name"])
        if resource is client.ENGINES:
            self._store_engine(name, body, deleted=deleted)
        elif resource is client.MODELS:
            _put(self.models, self._parsed_models, name, body, specs.parse_model, deleted)
        else:
            _put(self.breakers, self._parsed_breakers, name, body, specs.parse_breaker, deleted)

    def _store_engine(self, name: str, body: Body, *, deleted: bool) -> None:
        old = self.engines.get(name)
        acted = self.listeners and not deleted and _acted(old, body)
        before = self.fleet() if acted else None
        _put(self.engines, self._parsed_engines, name, body, specs.parse_engine, deleted)
        now = time.monotonic()
        previous = self._changed_at.get(name, now)
        self._changed_at[name] = now
        after = self.fleet()
        recorded = len(self.serving_history)
        self._remember_serving(after, now=now)
        if before is None:
            return
        change = EngineChange(old, body, before, after, previous, recorded)
        for listener in self.listeners:
            listener(change)

    def _remember_serving(self, fleet: fleet_.Fleet, *, now: float) -> None:
        serving = {name: fleet.serving_units(name) for name in fleet.models}
        if not self.serving_history or self.serving_history[-1][1] != serving:
            self.serving_history.append((now, serving))


def _acted(old: Body | None, new: Body) -> bool:
    """Whether the operator wrote an action (binding) or its record (status.lastAction)."""
    return action_id(old) != action_id(new) or last_action(old) != last_action(new)


def action_id(body: Body | None) -> str | None:
    annotations = ((body or {}).get("metadata") or {}).get("annotations") or {}
    found = annotations.get(specs.ACTION_ID_ANNOTATION)
    return str(found) if found else None


def last_action(body: Body | None) -> Body:
    found = ((body or {}).get("status") or {}).get("lastAction")
    return dict(found) if isinstance(found, dict) else {}


_KINDS: Final = (client.ENGINES, client.MODELS, client.BREAKERS, client.EVENTS)


def _put(bodies: dict[str, Body], parsed: dict[str, Any], name: str, body: Body,
         parse: Callable[[Body], Any], deleted: bool) -> None:
    bodies.pop(name, None)
    parsed.pop(name, None)
    if deleted:
        return
    bodies[name] = body
    with contextlib.suppress(specs.SpecError):
        parsed[name] = parse(body)
