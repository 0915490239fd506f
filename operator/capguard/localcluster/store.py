"""The in-memory object store: one global revision counter, like etcd's, and a window of
recent changes that watches replay from.

Stored objects are never mutated after `put`: every write builds a new dict, and each
entry caches its JSON bytes, so reads serialize nothing and cannot corrupt the store.
Memory: every object lives once as a dict plus once as bytes (roughly 3 KiB for a small
custom resource); the change window holds references to those same entries, not copies.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
from typing import Any, Final

# How many changes watches can replay from (a watch from an older resourceVersion gets
# 410 Expired and must re-list, as with the real server's watch cache).
DEFAULT_WINDOW: Final = 100_000
assert DEFAULT_WINDOW > 0
# A watcher that falls this far behind is dropped rather than let memory grow unbounded.
MAX_WATCHER_BACKLOG: Final = 200_000

# etcd's --max-request-bytes (1.5 MiB): a write whose key and value exceed it is refused.
MAX_REQUEST_BYTES: Final = 1536 * 1024

Key = tuple[str, str]  # (namespace or "", name)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    obj: dict[str, Any]   # never mutated; thaw() for a private copy
    raw: bytes
    rv: int

    def thaw(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.raw)
        return result


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    type: str              # ADDED, MODIFIED, DELETED
    storage_key: str
    rv: int
    entry: Entry           # the new state; for DELETED the last state at the deletion rv
    prev: Entry | None     # the state before, for selector watches (082)


class RequestTooLarge(Exception):
    """The write is larger than etcd takes in one request (383: ~2 MB is refused)."""


class TooOld(Exception):
    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")


class Watcher:
    """A queue of changes for one watch stream; `None` tells the stream to stop."""

    def __init__(self, storage_key: str) -> None:
        self.storage_key = storage_key
        self.queue: asyncio.Queue[Change | None] = asyncio.Queue()


class Store:
    def __init__(self, *, window: int = DEFAULT_WINDOW) -> None:
        self.revision = 0
        self._window = window
        self._compacted = 0      # the newest rv dropped from the window
        self._partitions: dict[str, dict[Key, Entry]] = {}
        self._sorted_keys: dict[str, list[Key]] = {}
        self._log: collections.deque[Change] = collections.deque()
        self._watchers: dict[str, set[Watcher]] = {}
        self._started: dict[str, int] = {}   # storage key -> rv its history starts at

    # ---- reads --------------------------------------------------------------------------

    def get(self, storage_key: str, key: Key) -> Entry | None:
        return self._partitions.get(storage_key, {}).get(key)

    def keys(self, storage_key: str) -> list[Key]:
        """All keys of a partition in etcd order (namespace, then name)."""
        cached = self._sorted_keys.get(storage_key)
        if cached is None:
            cached = sorted(self._partitions.get(storage_key, {}))
            self._sorted_keys[storage_key] = cached
        return cached

    def last_change(self) -> Change:
        return self._log[-1]

    def count(self, storage_key: str) -> int:
        return len(self._partitions.get(storage_key, {}))

    # ---- writes -------------------------------------------------------------------------

    def put(self, storage_key: str, key: Key, obj: dict[str, Any]) -> Entry:
        """Store `obj` (which the store now owns) at a new revision; ADDED or MODIFIED."""
        obj["metadata"]["resourceVersion"] = str(self.revision + 1)
        raw = dumps(obj)
        if len(raw) + len(storage_key) + len(key[0]) + len(key[1]) > MAX_REQUEST_BYTES:
            raise RequestTooLarge()
        self.revision += 1
        entry = Entry(obj=obj, raw=raw, rv=self.revision)
        partition = self._partitions.setdefault(storage_key, {})
        prev = partition.get(key)
        partition[key] = entry
        if prev is None:
            self._sorted_keys.pop(storage_key, None)
        self._record(Change("ADDED" if prev is None else "MODIFIED", storage_key,
                            self.revision, entry, prev))
        return entry

    def remove(self, storage_key: str, key: Key) -> Entry | None:
        """Delete at a new revision; the DELETED change carries the last state at that rv."""
        partition = self._partitions.get(storage_key, {})
        prev = partition.pop(key, None)
        if prev is None:
            return None
        self._sorted_keys.pop(storage_key, None)
        self.revision += 1
        last = dict(prev.obj)
        last["metadata"] = dict(prev.obj["metadata"], resourceVersion=str(self.revision))
        entry = Entry(obj=last, raw=dumps(last), rv=self.revision)
        self._record(Change("DELETED", storage_key, self.revision, entry, prev))
        return entry

    def drop_partition(self, storage_key: str) -> None:
        """Forget a partition whose resource type is gone (a deleted CRD)."""
        self._partitions.pop(storage_key, None)
        self._sorted_keys.pop(storage_key, None)
        self._started.pop(storage_key, None)
        for watcher in self._watchers.pop(storage_key, set()):
            watcher.queue.put_nowait(None)

    def start_history(self, storage_key: str) -> None:
        """A new resource type's watch history begins now, like a fresh watch cache (081)."""
        self._started.setdefault(storage_key, self.revision)

    def _record(self, change: Change) -> None:
        if len(self._log) >= self._window:
            self._compacted = self._log.popleft().rv
        self._log.append(change)
        for watcher in list(self._watchers.get(change.storage_key, ())):
            if watcher.queue.qsize() > MAX_WATCHER_BACKLOG:
                self.unsubscribe(watcher)
                watcher.queue.put_nowait(None)
            else:
                watcher.queue.put_nowait(change)

    # ---- watches ------------------------------------------------------------------------

    def changes_since(self, storage_key: str, rv: int) -> list[Change]:
        """Changes of one partition after `rv`; TooOld if the window no longer holds them."""
        oldest = max(self._compacted, self._started.get(storage_key, 0))
        if rv < oldest:
            raise TooOld(rv, oldest + 1)
        found = []
        for change in reversed(self._log):
            if change.rv <= rv:
                break
            if change.storage_key == storage_key:
                found.append(change)
        found.reverse()
        return found

    def subscribe(self, storage_key: str) -> Watcher:
        watcher = Watcher(storage_key)
        self._watchers.setdefault(storage_key, set()).add(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        self._watchers.get(watcher.storage_key, set()).discard(watcher)

    def close_watchers(self) -> None:
        for watchers in self._watchers.values():
            for watcher in watchers:
                watcher.queue.put_nowait(None)
        self._watchers.clear()
