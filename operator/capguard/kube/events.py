"""Kubernetes Events on the objects a person will `kubectl describe`.

Posting never blocks a reconcile: events go to a queue and one worker posts them. The
same event (object, reason, message) is posted once per window, so a condition that
holds for an hour produces one Event, not one per reconcile loop.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import logging
import secrets
import time
from collections.abc import Callable
from typing import Final

import aiohttp

from capguard.core import clock
from capguard.kube import client

logger = logging.getLogger(__name__)

NORMAL: Final = "Normal"
WARNING: Final = "Warning"
DEFAULT_DEDUPE_WINDOW: Final = 600.0
_REMEMBERED: Final = 10_000  # bounded memory for the dedupe window
_QUEUE_LIMIT: Final = 1_000  # events beyond this are dropped (and logged), never buffered forever
# What a real API server admits of an Event with eventTime (core/v1 legacyValidateEvent):
# a message of at most 1024 bytes (Go's len), and a name that is a DNS subdomain.
MESSAGE_BYTES: Final = 1024
NAME_LENGTH: Final = 253
_SUFFIX: Final = 16  # hex digits after the object's name, as client-go's recorder adds


@dataclasses.dataclass(frozen=True)
class ObjectRef:
    """The involved object of an Event."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str = ""


@dataclasses.dataclass(frozen=True)
class Event:
    involved: ObjectRef
    type: str
    reason: str
    message: str


def render(event: Event, *, component: str, instance: str, now: datetime.datetime) -> client.Body:
    """The core/v1 Event body, as `kubectl describe` expects it."""
    ref = event.involved
    stamp, micro = clock.timestamp(now.timestamp()), clock.precise_timestamp(now.timestamp())
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": _name(ref.name), "namespace": ref.namespace},
        "involvedObject": {
            "apiVersion": ref.api_version, "kind": ref.kind, "namespace": ref.namespace,
            "name": ref.name, **({"uid": ref.uid} if ref.uid else {}),
        },
        "type": event.type,
        "reason": event.reason,
        "message": _message(event.message),
        "source": {"component": component, "host": instance},
        "reportingComponent": component,
        "reportingInstance": instance,
        "action": event.reason,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "eventTime": micro,
        "count": 1,
    }


def _name(involved: str) -> str:
    """The object's name and a random suffix, the name cut so the whole fits 253 (an
    object's name may itself be 253 long); never ending in a dot or dash before ours."""
    prefix = involved[:NAME_LENGTH - _SUFFIX - 1].rstrip(".-")
    return f"{prefix}.{secrets.token_hex(_SUFFIX // 2)}"


def _message(message: str) -> str:
    """At most MESSAGE_BYTES of UTF-8, cut at a character, not inside one."""
    encoded = message.encode()
    if len(encoded) <= MESSAGE_BYTES:
        return message
    return encoded[:MESSAGE_BYTES].decode(errors="ignore")


class Recorder:
    """Queues Events with a dedupe window and posts them from one background worker."""

    def __init__(
        self,
        *,
        api: client.Api,
        instance: str,
        component: str = "capguard",
        dedupe_window: float = DEFAULT_DEDUPE_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._instance = instance
        self._component = component
        self._window = dedupe_window
        self._clock = clock
        self._posted: collections.OrderedDict[Event, float] = collections.OrderedDict()
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=_QUEUE_LIMIT)
        self.posted_count = 0

    def record(self, event: Event) -> bool:
        """Queue the event unless the same one was queued within the window; True if queued."""
        now = self._clock()
        last = self._posted.get(event)
        if last is not None and now - last < self._window:
            return False
        self._posted[event] = now
        self._posted.move_to_end(event)
        while len(self._posted) > _REMEMBERED:
            self._posted.popitem(last=False)
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            logger.warning("Event queue full; dropping %s %s", event.reason, event.involved.name)
            return False
        return True

    async def run(self) -> None:
        """Post queued events forever (cancel to stop)."""
        while True:
            event = await self._queue.get()
            try:
                await self._post(event)
            finally:
                self._queue.task_done()

    async def drain(self) -> None:
        """Wait until every queued event is posted (for tests and graceful shutdown)."""
        await self._queue.join()

    async def _post(self, event: Event) -> None:
        now = datetime.datetime.now(datetime.UTC)
        body = render(event, component=self._component, instance=self._instance, now=now)
        try:
            await self._api.create(client.EVENTS, namespace=event.involved.namespace, body=body)
            self.posted_count += 1
        except (client.ApiError, aiohttp.ClientError, OSError, TimeoutError) as error:
            # An Event is a courtesy to a human; losing one must never stop the operator.
            logger.warning("Could not post event %s on %s: %s",
                           event.reason, event.involved.name, error)
