"""The operator's own index of engines, models and breakers, rebuilt from the cluster.

The reconcile loop's own watch streams feed it (`Reconciler._follow`); an explicit LIST
at startup (and a periodic resync) makes it complete and drops what a broken watch
missed. Why not
`@kopf.index`: Kopf's "indexes are populated" barrier notifies every waiting object's
worker each time one object is indexed, so a cold start costs O(n^2) wake-ups and
10,000 engines take minutes before the first handler runs. Here a cold start is one
LIST and one dict insert per object.

Newer wins by resourceVersion, compared as integers: Kubernetes calls resourceVersions
opaque, but etcd's (and the embedded server's) are its revision counter, and a watch
event racing the LIST must not resurrect an older body. A non-integer version is taken
as newer (the event stream's order then decides). An equal version is the same object
(our own write coming back on the watch, or a resync): not parsed again.

The index also says what changed since the reconcile loop last looked: the models whose
status may be out of date (their spec, or an engine holding them, changed) and whether
anything the planner reads changed at all. That is what lets a pass be incremental.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from capguard.core import engines
from capguard.handlers import records
from capguard.kube import heartbeats

T = TypeVar("T")
Key = tuple[str, str]  # (namespace, name)


def _newer(candidate: str, current: str) -> bool:
    try:
        return int(candidate) >= int(current)
    except ValueError:
        return True


class Listener(Protocol[T]):
    def __call__(self, key: Key, old: records.Record[T] | None,
                 new: records.Record[T] | None) -> None: ...


def _ignore(key: Key, old: object, new: object) -> None:
    pass


class Store(Generic[T]):
    """Records of one kind by (namespace, name), newest resourceVersion wins."""

    def __init__(self, parse: Callable[[Mapping[str, Any]], records.Record[T]],
                 *, on_change: Listener[T] = _ignore) -> None:
        self.parse = parse
        self.on_change = on_change
        self.records: dict[Key, records.Record[T]] = {}
        # The same records by namespace, so a pass's snapshot is a copy, not a walk.
        self._namespaces: dict[str, dict[str, records.Record[T]]] = {}
        # Deletions since the last LIST (so a LIST in flight cannot resurrect them).
        self._tombstones: dict[Key, str] = {}

    def __len__(self) -> int:
        return len(self.records)

    def apply(self, body: Mapping[str, Any]) -> bool:
        """Store an object's current body; False if an equal or newer one is already here."""
        meta = records.meta_of(body)
        key = (meta.namespace, meta.name)
        buried = self._tombstones.get(key)
        if buried is not None and not _newer(meta.resource_version, buried):
            return False
        current = self.records.get(key)
        if current is not None and (
                current.meta.resource_version == meta.resource_version
                or not _newer(meta.resource_version, current.meta.resource_version)):
            return False
        record = self.parse(body)
        self.records[key] = record
        self._namespaces.setdefault(key[0], {})[key[1]] = record
        self.on_change(key, current, record)
        return True

    def delete(self, body: Mapping[str, Any]) -> None:
        meta = records.meta_of(body)
        key = (meta.namespace, meta.name)
        current = self.records.get(key)
        if current is not None and _newer(meta.resource_version, current.meta.resource_version):
            self._drop(key)
            self.on_change(key, current, None)
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
                self._drop(key)
                self.on_change(key, record, None)
        self._tombstones.clear()

    def _drop(self, key: Key) -> None:
        del self.records[key]
        namespace = self._namespaces[key[0]]
        del namespace[key[1]]
        if not namespace:
            del self._namespaces[key[0]]

    def by_namespace(self) -> dict[str, list[records.Record[T]]]:
        return {namespace: list(found.values()) for namespace, found in self._namespaces.items()}


@dataclasses.dataclass
class Changes:
    """What changed in one namespace since the loop last took its changes: the engines,
    the models whose spec changed, and whether a fleet must be built afresh (a breaker's
    spec changed, or a model's spec stopped or started to parse)."""

    engines: set[str] = dataclasses.field(default_factory=set)
    models: set[str] = dataclasses.field(default_factory=set)
    rebuild: bool = False


class Index:
    """The three kinds the reconcile loop reads (and, with agents, the engines' Leases),
    engines by the models they hold, and what changed since the loop last asked."""

    def __init__(self) -> None:
        self.engines = Store(records.engine_record, on_change=self._engine_changed)
        self.models = Store(records.model_record, on_change=self._model_changed)
        self.breakers = Store(records.breaker_record, on_change=self._breaker_changed)
        self.leases = Store(records.lease_record, on_change=self._lease_changed)
        # namespace -> engine -> its Lease's last renewal (epoch seconds), while that Lease
        # is the heartbeat of the engine of its name indexed now (`heartbeats.belongs`),
        # not of an earlier one awaiting the garbage collector: a renewal moves only this,
        # not the engine, so the thousand heartbeats a second of a large fleet are no
        # planning change ...
        self.renewals: dict[str, dict[str, float]] = collections.defaultdict(dict)
        # ... unless the engine was silent as the last pass saw it (namespace -> names):
        # then it is heard again. The reconcile loop keeps this current.
        self.silent: dict[str, frozenset[str]] = {}
        self.engines_by_model: dict[Key, set[str]] = collections.defaultdict(set)
        self.dirty_models: set[Key] = set()  # whose status may need rewriting
        self.planning_inputs_changed = True  # anything the planner or the gate reads
        # Per namespace, how many times that happened: equal numbers, equal plans.
        self.planning_versions: dict[str, int] = collections.defaultdict(int)
        self._changes: dict[str, Changes] = collections.defaultdict(Changes)

    def take_changes(self, namespace: str) -> Changes:
        """What changed in the namespace since the last call (`Fleet.derive` applies it)."""
        return self._changes.pop(namespace, None) or Changes()

    def engines_of(self, namespace: str, model: str) -> list[records.EngineRecord]:
        """The engines holding a model: bound to it, loading, serving or draining it."""
        found = (self.engines.records.get((namespace, name))
                 for name in self.engines_by_model.get((namespace, model), ()))
        return [r for r in found if r is not None]

    def take_dirty_models(self) -> set[Key]:
        dirty, self.dirty_models = self.dirty_models, set()
        return dirty

    def mark_dirty(self, keys: Iterable[Key]) -> None:
        """Have the fast path look at these models again."""
        self.dirty_models.update(keys)

    def _engine_changed(self, key: Key, old: records.EngineRecord | None,
                        new: records.EngineRecord | None) -> None:
        namespace, name = key
        before = records.engine_models(old) if old is not None else frozenset()
        after = records.engine_models(new) if new is not None else frozenset()
        for model in before - after:
            held = self.engines_by_model.get((namespace, model))
            if held is not None:
                held.discard(name)
                if not held:
                    del self.engines_by_model[(namespace, model)]
        for model in after - before:
            self.engines_by_model[(namespace, model)].add(name)
        self.dirty_models.update((namespace, model) for model in before | after)
        self._changes[namespace].engines.add(name)
        if (old.meta.uid if old else None) != (new.meta.uid if new else None):
            self._update_renewal(key)  # another engine object: is its Lease its heartbeat?
        self._planning_input_changed(namespace)

    def _model_changed(self, key: Key, old: records.ModelRecord | None,
                       new: records.ModelRecord | None) -> None:
        self.dirty_models.add(key)
        if not _same_spec(old, new):
            changes = self._changes[key[0]]
            changes.models.add(key[1])
            if (new is not None and new.value is None) or (old is not None and old.value is None):
                changes.rebuild = True  # which models do not parse changes
            self._planning_input_changed(key[0])  # not for our own status write coming back

    def _breaker_changed(self, key: Key, old: records.BreakerRecord | None,
                         new: records.BreakerRecord | None) -> None:
        if not _same_spec(old, new):
            self._changes[key[0]].rebuild = True
            self._planning_input_changed(key[0])

    def _lease_changed(self, key: Key, old: records.Record[heartbeats.Heartbeat] | None,
                       new: records.Record[heartbeats.Heartbeat] | None) -> None:
        namespace, name = key
        before, renewed = self._update_renewal(key)
        if engines.renewal_changes_hearing(before, renewed,
                                           silent=name in self.silent.get(namespace, ())):
            # Heard again, or maybe no longer: a change of the engine for its hearing.
            if key in self.engines.records:
                self._changes[namespace].engines.add(name)
            self._planning_input_changed(namespace)

    def _update_renewal(self, key: Key) -> tuple[float | None, float | None]:
        """Bring the renewal of the engine of the key's name up to date with its Lease and
        itself (either may come first); returns the renewal before and after. A change of
        the engine is a change for its hearing already (`Changes.engines`)."""
        namespace, name = key
        known = self.renewals[namespace]
        before = known.get(name)
        lease, engine = self.leases.records.get(key), self.engines.records.get(key)
        renewed = None
        if lease is not None and lease.value is not None and engine is not None and (
                heartbeats.belongs(lease.value.owner, uid=engine.meta.uid)):
            renewed = lease.value.renewed
        if renewed is not None:
            known[name] = renewed
        elif before is not None:
            del known[name]
        return before, renewed

    def _planning_input_changed(self, namespace: str) -> None:
        self.planning_inputs_changed = True
        self.planning_versions[namespace] += 1


def _same_spec(old: records.Record[Any] | None, new: records.Record[Any] | None) -> bool:
    """Whether only the status changed (a parsed spec compares by value, an error by text)."""
    if old is None or new is None:
        return False
    return _spec_value(old) == _spec_value(new) and str(old.error) == str(new.error)


def _spec_value(record: records.Record[Any]) -> object:
    """The parsed value without its resourceVersion (which every write moves; the core
    reads it on engines only, and an engine's every change is a planning change anyway)."""
    value = record.value
    if dataclasses.is_dataclass(value) and hasattr(value, "resource_version"):
        return dataclasses.replace(value, resource_version="")  # type: ignore[type-var]
    return value
