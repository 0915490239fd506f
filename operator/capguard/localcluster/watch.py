"""Watch streams: JSON lines of `{"type", "object"}` from a resourceVersion (080-083).

A watch subscribes before it reads the backlog, in one step of the event loop, so no
change falls between the two. Selector watches turn "starts matching" into ADDED and
"stops matching" into DELETED carrying the previous content at the new resourceVersion
(082), as the real watch cache does.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from capguard.localcluster import errors, resources, selectors, store

DEFAULT_TIMEOUT: Final = 1800.0       # the real server's minimum request timeout
BOOKMARK_INTERVAL: Final = 30.0       # real servers send one about every minute
_BATCH: Final = 512                   # changes written per socket write when behind

Encoder = Callable[[str, dict[str, Any]], bytes]


@dataclasses.dataclass(frozen=True)
class WatchOptions:
    namespace: str | None
    labels: selectors.LabelSelector
    fields: selectors.FieldSelector
    resource_version: str
    timeout: float
    bookmarks: bool


class Stream:
    def __init__(self, *, db: store.Store, rt: resources.ResourceType, options: WatchOptions,
                 encode_object: Callable[[dict[str, Any]], bytes], raw_ok: bool) -> None:
        self.db, self.rt, self.options = db, rt, options
        self.encode_object = encode_object
        self.raw_ok = raw_ok

    async def serve(self, request: web.Request, *, opened: Callable[[], None] | None = None
                    ) -> web.StreamResponse:
        """Stream until the timeout, the client leaving or the server stopping; `opened` is
        called once the 200 and its headers are sent."""
        watcher: store.Watcher | None = self.db.subscribe(self.rt.storage_key)
        try:
            initial, last_rv = self._initial()
        except store.TooOld as error:
            self.db.unsubscribe(watcher)  # type: ignore[arg-type]
            initial, last_rv = [self._error_line(errors.expired(str(error)).status)], 0
            watcher = None
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if opened is not None:
            opened()
        try:
            if initial:
                await response.write(b"".join(initial))
            if watcher is not None:
                await self._follow(response, watcher, last_rv)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            if watcher is not None:
                self.db.unsubscribe(watcher)
        return response

    def _initial(self) -> tuple[list[bytes], int]:
        rv = self.options.resource_version
        if rv in ("", "0"):
            # No or zero resourceVersion: synthetic ADDED for what exists now.
            lines = []
            for key in self.db.keys(self.rt.storage_key):
                entry = self.db.get(self.rt.storage_key, key)
                if entry is not None and self._matches(entry.obj):
                    lines.append(self._line("ADDED", entry.obj, entry.raw))
            return lines, self.db.revision
        try:
            since = int(rv)
        except ValueError as error:
            raise errors.bad_request(f"invalid resource version: {rv}") from error
        lines = [line for change in self.db.changes_since(self.rt.storage_key, since)
                 if (line := self._change_line(change)) is not None]
        return lines, self.db.revision

    async def _follow(self, response: web.StreamResponse, watcher: store.Watcher,
                      last_rv: int) -> None:
        deadline = time.monotonic() + self.options.timeout
        next_bookmark = time.monotonic() + BOOKMARK_INTERVAL
        while True:
            now = time.monotonic()
            wait = min(deadline, next_bookmark if self.options.bookmarks else deadline) - now
            try:
                change = await asyncio.wait_for(watcher.queue.get(), timeout=max(wait, 0))
            except TimeoutError:
                if self.options.bookmarks:
                    await response.write(self._bookmark())
                    next_bookmark = time.monotonic() + BOOKMARK_INTERVAL
                if time.monotonic() >= deadline:
                    return
                continue
            if change is None:
                return
            lines = []
            while change is not None:
                if change.rv > last_rv and (line := self._change_line(change)) is not None:
                    lines.append(line)
                if len(lines) >= _BATCH or watcher.queue.empty():
                    break
                change = watcher.queue.get_nowait()
            if lines:
                await response.write(b"".join(lines))
            if change is None:
                return

    def _matches(self, obj: dict[str, Any]) -> bool:
        options = self.options
        if options.namespace is not None and obj["metadata"].get("namespace") != options.namespace:
            return False
        if not options.labels.empty and not options.labels.matches(obj["metadata"].get("labels")):
            return False
        return options.fields.empty or options.fields.matches(self.rt.external(obj))

    def _change_line(self, change: store.Change) -> bytes | None:
        now = self._matches(change.entry.obj)
        before = change.prev is not None and self._matches(change.prev.obj)
        if change.type == "DELETED":
            return self._line("DELETED", change.entry.obj, change.entry.raw) if before else None
        if change.type == "ADDED":
            return self._line("ADDED", change.entry.obj, change.entry.raw) if now else None
        if now and before:
            return self._line("MODIFIED", change.entry.obj, change.entry.raw)
        if now:
            return self._line("ADDED", change.entry.obj, change.entry.raw)
        if before and change.prev is not None:
            gone = dict(change.prev.obj)
            gone["metadata"] = dict(gone["metadata"], resourceVersion=str(change.rv))
            return self._line("DELETED", gone)
        return None

    def _line(self, kind: str, obj: dict[str, Any], raw: bytes | None = None) -> bytes:
        # Plain JSON watches of a stored shape reuse the bytes cached at write time.
        encoded = raw if raw is not None and self.raw_ok else self.encode_object(obj)
        return b'{"type":"' + kind.encode() + b'","object":' + encoded + b"}\n"

    def _bookmark(self) -> bytes:
        obj = {"kind": self.rt.kind, "apiVersion": self.rt.api_version,
               "metadata": {"resourceVersion": str(self.db.revision)}}
        return b'{"type":"BOOKMARK","object":' + json.dumps(obj).encode() + b"}\n"

    def _error_line(self, status: dict[str, Any]) -> bytes:
        return b'{"type":"ERROR","object":' + json.dumps(status).encode() + b"}\n"
