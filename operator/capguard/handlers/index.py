"""The operator's own index of engines, models and breakers, rebuilt from the cluster.

Kopf feeds it from the watch streams (`on.event`); an explicit LIST at startup (and a
periodic resync) makes it complete and drops what a broken watch missed. Why not
`@kopf.index`: Kopf's "indexes are populated" barrier notifies every waiting object's
worker each time one object is indexed, so a cold start costs O(n^2) wake-ups and
10,000 engines take minutes before the first handler runs. Here a cold start is one
LIST and one dict insert per object.

Newer wins by resourceVersion, compared as integers: Kubernetes calls resourceVersions
opaque, but etcd's (and the embedded server's) are its revision counter, and a watch
event racing the LIST must not resurrect an older body. A non-integer version is taken
as newer (the event stream's order then decides).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from capguard.handlers import records

T = TypeVar("T")
Key = tuple[str, str]  # (namespace, name)


def _newer(candidate: str, current: str) -> bool:
    try:
        return int(candidate) >= int(current)
    except ValueError:
        return True


class Store(Generic[T]):
    """Records of one kind by (namespace, name), newest resourceVersion wins."""

    def __init__(self, parse: Callable[[Mapping[str, Any]], records.Record[T]]) -> None:
        self.parse = parse
        self.records: dict[Key, records.Record[T]] = {}
        # Deletions since the last LIST (so a LIST in flight cannot resurrect them).
        self._tombstones: dict[Key, str] = {}

    def __len__(self) -> int:
        return len(self.records)

    def apply(self, body: Mapping[str, Any]) -> bool:
        """Store an object's current body; False if an equal or newer one is already here."""
        record = self.parse(body)
        key = (record.meta.namespace, record.meta.name)
        buried = self._tombstones.get(key)
        if buried is not None and not _newer(record.meta.resource_version, buried):
            return False
        current = self.records.get(key)
        if current is not None and not _newer(
                record.meta.resource_version, current.meta.resource_version):
            return False
        self.records[key] = record
        return True

    def delete(self, body: Mapping[str, Any]) -> None:
        meta = records.meta_of(body)
        key = (meta.namespace, meta.name)
        current = self.records.get(key)
        if current is None or _newer(meta.resource_version, current.meta.resource_version):
            self.records.pop(key, None)
        self._tombstones[key] = meta.resource_version  # until the next LIST is applied

    def listed(self, bodies: Iterable[Mapping[str, Any]]) -> set[Key]:
        """Apply one page of a LIST; returns the keys it held."""
        keys = set()
        for body in bodies:
            self.apply(body)
            meta = records.meta_of(body)
            keys.add((meta.namespace, meta.name))
        return keys

    def forget_unlisted(
        self, listed: set[Key], *, list_version: str, namespace: str | None
    ) -> None:
        """After a full LIST: drop what it lacked, unless an event brought it since."""
        for key, record in list(self.records.items()):
            if namespace is not None and key[0] != namespace:
                continue
            if key not in listed and not _newer(record.meta.resource_version, list_version):
                del self.records[key]
        self._tombstones.clear()

    def by_namespace(self) -> dict[str, list[records.Record[T]]]:
        grouped: dict[str, list[records.Record[T]]] = collections.defaultdict(list)
        for (namespace, _), record in self.records.items():
            grouped[namespace].append(record)
        return grouped


class Index:
    """The three kinds the reconcile loop reads."""

    def __init__(self) -> None:
        self.engines = Store(records.engine_record)
        self.models = Store(records.model_record)
        self.breakers = Store(records.breaker_record)
