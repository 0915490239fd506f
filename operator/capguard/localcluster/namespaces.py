"""The namespace lifecycle controller, as kube-controller-manager runs it: when a Namespace
gets a deletionTimestamp, every object in it is deleted, then its `kubernetes` finalizer
is removed and the Namespace goes.

- Every namespaced resource served at that moment is swept, built-in and custom alike, one
  store partition at a time (kinds served under two versions or groups are swept once).
- Deletion goes through `Objects`, so an object's own finalizers are respected (it gets a
  deletionTimestamp and is waited for), ownerReference cascades run and watchers see
  DELETED events.
- Meanwhile the Namespace shows phase Terminating and the conditions the real controller
  writes (`NamespaceContentRemaining`, `NamespaceFinalizersRemaining`, and the three
  failure conditions, always False here).
- The sweep runs as one task on the server's event loop and yields every `BATCH` objects,
  so a namespace of many thousands of objects does not stall requests; objects deleted
  or changed meanwhile are simply looked up again.

It does not honour namespace finalizers other than `kubernetes`: a Namespace with others
(in `spec.finalizers` or `metadata.finalizers`) waits for whoever owns them.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any, Final

from capguard.localcluster import errors, meta, objects, resources, store

logger = logging.getLogger(__name__)

FINALIZER: Final = "kubernetes"
# How many objects a sweep deletes or counts before letting other work run.
BATCH: Final = 100
# When some of a namespace's content refused deletion, how long until the next try.
RETRY_SECONDS: Final = 1.0


class Controller:
    """Finalizes terminating Namespaces; `start()` on the server's loop, `stop()` at the end."""

    def __init__(self, api: objects.Objects) -> None:
        self.api = api
        self._terminating: set[str] = set()    # namespaces we are to empty and finalize
        self._pending: dict[str, None] = {}    # an ordered set of namespaces to look at
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        api.hooks.append(self.on_change)

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Begin working, on the running loop; namespaces terminating already are picked up."""
        if self._task is not None:
            return
        for key in list(self.api.db.keys(resources.NAMESPACES.storage_key)):
            entry = self.api.db.get(resources.NAMESPACES.storage_key, key)
            if entry is not None:
                self._namespace_changed(entry.obj)
        self._wake = asyncio.Event()
        if self._pending:
            self._wake.set()
        self._task = asyncio.get_running_loop().create_task(self._run(),
                                                            name="namespace-controller")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._wake = None

    # ---- reacting to changes (called within every write: must stay cheap) ------------------

    def on_change(self, rt: resources.ResourceType, change: store.Change) -> None:
        if change.storage_key == resources.NAMESPACES.storage_key:
            if change.type == "DELETED":
                self._terminating.discard(change.entry.obj["metadata"]["name"])
                self._pending.pop(change.entry.obj["metadata"]["name"], None)
            else:
                self._namespace_changed(change.entry.obj)
        elif change.storage_key == resources.CRDS.storage_key and change.type == "DELETED":
            for name in self._terminating:   # a resource type went away: look again
                self._schedule(name)
        else:
            namespace = change.entry.obj["metadata"].get("namespace")
            if namespace and namespace in self._terminating:
                self._schedule(namespace)

    def _namespace_changed(self, namespace: dict[str, Any]) -> None:
        name = namespace["metadata"]["name"]
        if _ours_to_finalize(namespace):
            self._terminating.add(name)
            self._schedule(name)
        else:
            self._terminating.discard(name)

    def _schedule(self, name: str) -> None:
        self._pending[name] = None
        if self._wake is not None:
            self._wake.set()

    # ---- the worker -------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                name = next(iter(self._pending))
                del self._pending[name]
                try:
                    await self._sync(name)
                except asyncio.CancelledError:
                    raise
                except Exception:   # a bug of ours: logged, and the controller lives on
                    logger.exception("namespace controller failed on namespace %s", name)
                await asyncio.sleep(0)

    async def _sync(self, name: str) -> None:
        namespace = self._namespace(name)
        if namespace is None or not _ours_to_finalize(namespace.obj):
            return
        uid = namespace.obj["metadata"]["uid"]
        failures = await self._delete_content(name, uid)
        remaining, finalizers = await self._count_content(name, uid)
        namespace = self._still_ours(name, uid)   # it may have changed while we yielded
        if namespace is None:
            return
        if not remaining and not failures:
            self._finalize(namespace)
            return
        self._report(namespace, remaining, finalizers, failures)
        if failures:   # refusals do not come back by themselves: try again in a while
            asyncio.get_running_loop().call_later(RETRY_SECONDS, self._schedule, name)

    def _still_ours(self, name: str, uid: str) -> store.Entry | None:
        """The namespace, if it is the same one and still ours to empty and finalize (a
        client may have finalized it, or even created it anew, while we yielded)."""
        namespace = self._namespace(name)
        if (namespace is None or namespace.obj["metadata"]["uid"] != uid
                or not _ours_to_finalize(namespace.obj)):
            return None
        return namespace

    def _namespace(self, name: str) -> store.Entry | None:
        return self.api.db.get(resources.NAMESPACES.storage_key, ("", name))

    def _content_types(self) -> list[resources.ResourceType]:
        """One served type per namespaced store partition."""
        found: dict[str, resources.ResourceType] = {}
        for rt in self.api.registry:
            if rt.namespaced:
                found.setdefault(rt.storage_key, rt)
        return list(found.values())

    async def _delete_content(self, name: str, uid: str) -> list[str]:
        """Delete what is not being deleted yet; the errors met, if any."""
        failures: list[str] = []
        for count, (rt, key) in enumerate(self._content_keys(name), start=1):
            if count % BATCH == 0:
                await asyncio.sleep(0)
                if self._still_ours(name, uid) is None:
                    return []
            # Looked up again right before deleting: it may be gone, or its type unserved.
            entry = self.api.db.get(rt.storage_key, key)
            if entry is None or entry.obj["metadata"].get("deletionTimestamp"):
                continue
            served = rt if self.api.registry.get(rt.group, rt.version, rt.plural) is rt else (
                next(iter(self.api.registry.by_storage(rt.storage_key)), None))
            if served is None:
                continue
            try:
                self.api._delete_entry(served, entry)
            except errors.ApiError as error:
                failures.append(f'{rt.group_resource} "{key[1]}": {error}')
        return failures

    async def _count_content(self, name: str, uid: str
                             ) -> tuple[dict[str, int], dict[str, int]]:
        """Objects left, by group resource, and how many objects each finalizer holds."""
        remaining: dict[str, int] = {}
        finalizers: dict[str, int] = {}
        for count, (rt, key) in enumerate(self._content_keys(name), start=1):
            if count % BATCH == 0:
                await asyncio.sleep(0)
                if self._still_ours(name, uid) is None:
                    break
            entry = self.api.db.get(rt.storage_key, key)
            if entry is None:
                continue
            remaining[rt.group_resource] = remaining.get(rt.group_resource, 0) + 1
            for finalizer in set(entry.obj["metadata"].get("finalizers") or []):
                finalizers[str(finalizer)] = finalizers.get(str(finalizer), 0) + 1
        return remaining, finalizers

    def _content_keys(self, name: str) -> Iterator[tuple[resources.ResourceType, store.Key]]:
        for rt in self._content_types():
            # A snapshot of the keys: the store builds a new list when keys come and go.
            for key in self.api._key_range(rt, name):
                yield rt, key

    def _finalize(self, namespace: store.Entry) -> None:
        """The namespace is empty: drop our finalizer, as PUT /finalize would (199)."""
        body = namespace.thaw()
        spec = body.setdefault("spec", {})
        spec["finalizers"] = [f for f in spec.get("finalizers") or [] if f != FINALIZER]
        name = body["metadata"]["name"]
        try:
            self.api.update(resources.NAMESPACES, body, namespace="", name=name,
                            subresource="finalize", options=objects.WriteOptions())
        except errors.ApiError as error:
            if error.code == 409:      # changed meanwhile: look again
                self._schedule(name)
            elif error.code != 404:
                raise

    def _report(self, namespace: store.Entry, remaining: dict[str, int],
                finalizers: dict[str, int], failures: list[str]) -> None:
        """Phase Terminating and the conditions that say what the namespace waits for."""
        body = namespace.thaw()
        status = body.setdefault("status", {})
        conditions = meta.settled_conditions(status.get("conditions"),
                                             _conditions(remaining, finalizers, failures))
        if status.get("phase") == "Terminating" and status.get("conditions") == conditions:
            return
        status["phase"] = "Terminating"
        status["conditions"] = conditions
        name = body["metadata"]["name"]
        try:
            self.api.update(resources.NAMESPACES, body, namespace="", name=name,
                            subresource="status", options=objects.WriteOptions())
        except errors.ApiError as error:
            if error.code == 409:
                self._schedule(name)
            elif error.code != 404:
                raise


def _ours_to_finalize(namespace: dict[str, Any]) -> bool:
    return bool(namespace["metadata"].get("deletionTimestamp")) and FINALIZER in (
        (namespace.get("spec") or {}).get("finalizers") or [])


def _conditions(remaining: dict[str, int], finalizers: dict[str, int],
                failures: list[str]) -> list[dict[str, Any]]:
    """What namespaced_resources_deleter.go reports, in its order and wording: each
    condition is True, with the trouble named, while there is trouble."""
    content = ", ".join(f"{resource} has {count} resource instances"
                        for resource, count in sorted(remaining.items()))
    held = ", ".join(f"{finalizer} in {count} resource instances"
                     for finalizer, count in sorted(finalizers.items()))
    failed = ", ".join(failures[:5])
    table = (   # type, trouble; reason and message with trouble; reason and message without
        ("NamespaceDeletionDiscoveryFailure", "", "", "",
         "ResourcesDiscovered", "All resources successfully discovered"),
        ("NamespaceDeletionGroupVersionParsingFailure", "", "", "",
         "ParsedGroupVersions", "All legacy kube types successfully parsed"),
        ("NamespaceDeletionContentFailure", failed,
         "ContentDeletionFailed", "Failed to delete all resource types, ",
         "ContentDeleted", "All content successfully deleted, may be waiting on finalization"),
        ("NamespaceContentRemaining", content,
         "SomeResourcesRemain", "Some resources are remaining: ",
         "ContentRemoved", "All content successfully removed"),
        ("NamespaceFinalizersRemaining", held,
         "SomeFinalizersRemain", "Some content in the namespace has finalizers remaining: ",
         "ContentHasNoFinalizers", "All content-preserving finalizers finished"),
    )
    now = meta.now_rfc3339()
    return [{"type": kind, "status": "True" if trouble else "False",
             "lastTransitionTime": now,
             "reason": bad_reason if trouble else good_reason,
             "message": bad_prefix + trouble if trouble else good_message}
            for kind, trouble, bad_reason, bad_prefix, good_reason, good_message in table]
