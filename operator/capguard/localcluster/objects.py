"""Object semantics: create, read, list, update, patch and delete, with the rules the real
API server applies (resourceVersion preconditions, generation, status and scale
subresources, finalizers, deletion, defaulting/pruning/validation of custom resources).

Handlers here take parsed input and return `Reply`/`Listing` values; HTTP lives in
`server.py`. Every stored object is a fresh dict handed to the store, never a dict a
client or another object still references.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import copy
import dataclasses
import json
from collections.abc import Callable
from typing import Any, Final

from capguard.localcluster import (
    decoding,
    errors,
    gotypes,
    meta,
    patching,
    resources,
    selectors,
    store,
)

_SERVER_FIELDS: Final = ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
                         "deletionGracePeriodSeconds", "generation", "selfLink",
                         "managedFields")
_GO_TYPES: Final = {str: "string", bool: "bool", float: "float64", list: "[]interface {}",
                    dict: "map[string]interface {}"}


@dataclasses.dataclass(frozen=True)
class WriteOptions:
    dry_run: bool = False
    field_validation: str = "Warn"   # newer servers' default (GA 1.27); 1.24 had none
    decode_problems: tuple[str, ...] = ()   # what reading the body found (duplicate keys)


@dataclasses.dataclass(frozen=True)
class Reply:
    code: int
    entry: store.Entry | None = None     # a stored object, served from its cached bytes
    body: dict[str, Any] | None = None   # anything else (Status, Scale, dry-run objects)
    warnings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Listing:
    entries: list[store.Entry]
    rv: int
    continue_token: str = ""
    remaining: int | None = None


@dataclasses.dataclass(frozen=True)
class ListOptions:
    namespace: str | None = None
    labels: selectors.LabelSelector = dataclasses.field(default_factory=selectors.LabelSelector)
    fields: selectors.FieldSelector = dataclasses.field(default_factory=selectors.FieldSelector)
    limit: int = 0
    continue_token: str = ""
    resource_version: str = ""
    resource_version_match: str = ""


@dataclasses.dataclass(frozen=True)
class DeleteOptions:
    precondition_rv: str | None = None
    precondition_uid: str | None = None
    propagation: str = "Background"
    dry_run: bool = False


Hook = Callable[[resources.ResourceType, store.Change], None]
Preparer = Callable[[resources.ResourceType, dict[str, Any], dict[str, Any] | None],
                    list[dict[str, str]]]


class Objects:
    def __init__(self, *, registry: resources.Registry, db: store.Store) -> None:
        self.registry = registry
        self.db = db
        # Kind-specific steps: `preparers` adjust/validate an object before a write
        # (returning causes), `hooks` react after a change (CRDs register resources).
        self.preparers: dict[str, Preparer] = {}
        self.hooks: list[Hook] = []
        self.before_delete: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
        self._owned: dict[str, set[tuple[str, store.Key]]] = {}  # owner uid -> dependents
        self._orphaning: set[str] = set()
        self.hooks.append(self._track_owners)

    # ---- reads --------------------------------------------------------------------------

    def get(self, rt: resources.ResourceType, *, namespace: str, name: str) -> store.Entry:
        entry = self.db.get(rt.storage_key, (namespace, name))
        if entry is None:
            raise errors.not_found(rt, name)
        return entry

    def list_objects(self, rt: resources.ResourceType, options: ListOptions) -> Listing:
        if options.resource_version_match == "Exact" and options.resource_version not in (
                "", str(self.db.revision)):
            raise errors.expired(f"too old resource version: {options.resource_version} "
                                 f"({self.db.revision})")
        rv, start = self._continue_from(options)
        keys = self._key_range(rt, options.namespace)
        if start is not None:
            keys = keys[bisect.bisect_right(keys, start):]
        filtered = not (options.labels.empty and options.fields.empty)
        page: list[store.Entry] = []
        for index, key in enumerate(keys):
            entry = self.db.get(rt.storage_key, key)
            if entry is None or not self._selected(rt, entry, options):
                continue
            if options.limit and len(page) == options.limit:
                token = _encode_continue(rv, page_last_key(page))
                remaining = None if filtered else len(keys) - index
                return Listing(page, rv, token, remaining)
            page.append(entry)
        return Listing(page, rv)

    def _continue_from(self, options: ListOptions) -> tuple[int, store.Key | None]:
        if not options.continue_token:
            return self.db.revision, None
        if options.resource_version not in ("", "0"):
            raise errors.bad_request("specifying resource version is not allowed when using "
                                     "continue")
        return _decode_continue(options.continue_token)

    def _key_range(self, rt: resources.ResourceType, namespace: str | None) -> list[store.Key]:
        keys = self.db.keys(rt.storage_key)
        if namespace is None:
            return keys
        low = bisect.bisect_left(keys, (namespace, ""))
        high = bisect.bisect_left(keys, (namespace + "\x00", ""))
        return keys[low:high]

    def _selected(self, rt: resources.ResourceType, entry: store.Entry,
                  options: ListOptions) -> bool:
        metadata = entry.obj["metadata"]
        if not options.labels.empty and not options.labels.matches(metadata.get("labels")):
            return False
        return options.fields.empty or options.fields.matches(rt.external(entry.obj))

    # ---- create -------------------------------------------------------------------------

    def create(self, rt: resources.ResourceType, body: Any, *, namespace: str,
               options: WriteOptions) -> Reply:
        obj, options = decoded(rt, self._checked_body(rt, body), options)
        metadata = obj.setdefault("metadata", {})
        if not isinstance(metadata, dict):
            raise errors.bad_request("metadata must be an object")
        self._place(rt, metadata, namespace)
        for field in _SERVER_FIELDS:
            metadata.pop(field, None)
        if rt.status_subresource and rt.custom:
            obj.pop("status", None)   # status is written through /status only (020)
        metadata["uid"] = meta.new_uid()
        metadata["creationTimestamp"] = meta.now_rfc3339()
        if rt.tracks_generation:
            metadata["generation"] = 1
        obj = rt.internal(obj)
        obj, warnings = self._admit(rt, obj, None, options)
        key = (metadata.get("namespace", ""), obj["metadata"]["name"])
        if self.db.get(rt.storage_key, key) is not None:
            raise errors.already_exists(rt, key[1])
        if options.dry_run:
            return Reply(201, body=rt.external(obj), warnings=warnings)
        entry = self.db.put(rt.storage_key, key, obj)
        self._after(rt, self.db_last_change())
        return Reply(201, entry=entry, warnings=warnings)

    def _checked_body(self, rt: resources.ResourceType, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise errors.bad_request(f"the object provided is unrecognized (must be of type "
                                     f"{rt.kind}): couldn't get version/kind; json parse error")
        if not rt.custom:
            # Built-in kinds decode with the URL's group/version/kind as defaults, as the
            # real server's codec does: Kopf posts its Events without apiVersion and kind.
            body = {"apiVersion": body.get("apiVersion") or rt.api_version,
                    "kind": body.get("kind") or rt.kind,
                    **{k: v for k, v in body.items() if k not in ("apiVersion", "kind")}}
        if not body.get("kind"):
            raise errors.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                f"Object 'Kind' is missing in '{json.dumps(body)[:1000]}'")
        if body.get("kind") != rt.kind or body.get("apiVersion") != rt.api_version:
            raise errors.bad_request(
                f"the API version in the data ({body.get('apiVersion')}) does not match the "
                f"expected API version ({rt.api_version})"
                if body.get("kind") == rt.kind else
                f"{body.get('kind')} in version \"{rt.version}\" cannot be handled as a "
                f"{rt.kind}: the kind in the data does not match {rt.kind}")
        checked: dict[str, Any] = body
        return checked

    def _place(self, rt: resources.ResourceType, metadata: dict[str, Any],
               namespace: str) -> None:
        """Name the new object and check its namespace exists and accepts new content."""
        if rt.namespaced:
            if metadata.get("namespace") not in (None, "", namespace):
                raise errors.bad_request("the namespace of the provided object does not match "
                                         "the namespace sent on the request")
            metadata["namespace"] = namespace
            ns = self.db.get(resources.NAMESPACES.storage_key, ("", namespace))
            if ns is None:
                raise errors.namespace_not_found(namespace)
            if ns.obj["metadata"].get("deletionTimestamp"):
                raise errors.forbidden(
                    f'{rt.group_resource} "{metadata.get("name") or ""}" is forbidden: unable '
                    f"to create new content in namespace {namespace} because it is being "
                    "terminated", details={"name": metadata.get("name") or "",
                                           "group": rt.group, "kind": rt.plural})
        else:
            metadata.pop("namespace", None)
        if not metadata.get("name") and isinstance(metadata.get("generateName"), str):
            metadata["name"] = meta.generated_name(metadata["generateName"])
        name = metadata.get("name")
        if not isinstance(name, str) or not name:
            raise errors.invalid(rt, "", [{
                "reason": "FieldValueRequired", "field": "metadata.name",
                "message": "Required value: name or generateName is required"}])

    # ---- update, patch and their subresources ------------------------------------------

    def update(self, rt: resources.ResourceType, body: Any, *, namespace: str, name: str,
               subresource: str | None, options: WriteOptions) -> Reply:
        old = self.get(rt, namespace=namespace, name=name)
        obj, options = decoded(rt, self._checked_body(rt, body), options)
        metadata = _metadata_of(obj)
        if metadata.get("name") not in (None, name):
            raise errors.bad_request(f"the name of the object ({metadata.get('name')}) does "
                                     f"not match the name on the URL ({name})")
        uid = metadata.get("uid")
        if uid and uid != old.obj["metadata"]["uid"]:
            # The uid sent is a precondition of the update (defaultUpdatedObjectInfo).
            raise errors.conflict(rt, name, "Precondition failed: UID in precondition: "
                                  f"{uid}, UID in object meta: {old.obj['metadata']['uid']}")
        rv = metadata.get("resourceVersion")
        if not rv and rt.custom:
            raise errors.invalid(rt, name, [{
                "reason": "FieldValueInvalid", "field": "metadata.resourceVersion",
                "message": "Invalid value: 0x0: must be specified for an update"}],
                by_resource=True)
        return self._write(rt, old, rt.internal(obj), rv=rv, subresource=subresource,
                           options=options)

    def patch(self, rt: resources.ResourceType, patch: Any, *, content_type: str,
              namespace: str, name: str, subresource: str | None,
              options: WriteOptions) -> Reply:
        if (content_type == patching.APPLY and subresource is None and isinstance(patch, dict)
                and self.db.get(rt.storage_key, (namespace, name)) is None):
            # Server-side apply creates what does not exist yet (201), as the real one does.
            metadata = _metadata_of(patch)
            if metadata.get("name") not in (None, name):
                raise errors.bad_request(f"the name of the object ({metadata.get('name')}) "
                                         f"does not match the name on the URL ({name})")
            metadata["name"] = name
            return self.create(rt, patch, namespace=namespace, options=options)
        old = self.get(rt, namespace=namespace, name=name)
        patched = apply_patch(rt, rt.external(old.thaw()), patch, content_type=content_type)
        if not isinstance(patched, dict):
            raise errors.bad_request("the patch did not produce an object")
        patched, options = decoded(rt, patched, options, patched=True)
        rv = _metadata_of(patched).get("resourceVersion")
        return self._write(rt, old, rt.internal(patched), rv=rv, subresource=subresource,
                           options=options, patched=True)

    def _write(self, rt: resources.ResourceType, old: store.Entry, new: dict[str, Any], *,
               rv: Any, subresource: str | None, options: WriteOptions,
               patched: bool = False) -> Reply:
        name = old.obj["metadata"]["name"]
        if rv and str(rv) != str(old.rv):
            raise errors.conflict(rt, name)
        new = self._scoped_to_subresource(rt, old.obj, new, subresource)
        uid = new["metadata"].get("uid")
        if uid and uid != old.obj["metadata"]["uid"]:   # a patch changing it
            raise errors.invalid(rt, name, [_invalid("metadata.uid", uid, "field is immutable")])
        _keep_server_fields(new["metadata"], old.obj["metadata"])
        self._check_finalizers(rt, old.obj, new)
        new, warnings = self._admit(rt, new, old.obj, options, patched=patched)
        if _same(old.obj, new):
            return Reply(200, entry=old, warnings=warnings)   # no-op keeps the rv (029, 051)
        if rt.tracks_generation and _spec_changed(rt, old.obj, new):
            new["metadata"]["generation"] = old.obj["metadata"].get("generation", 0) + 1
        if options.dry_run:
            new["metadata"]["resourceVersion"] = str(old.rv)
            return Reply(200, body=rt.external(new), warnings=warnings)
        if new["metadata"].get("deletionTimestamp") and not _finalizers(new):
            # The last finalizer is gone: the object goes, answered in its final state
            # with the unchanged resourceVersion (090, 199).
            new["metadata"]["resourceVersion"] = str(old.rv)
            self._remove(rt, old)
            return Reply(200, body=rt.external(new), warnings=warnings)
        key = (new["metadata"].get("namespace", ""), name)
        entry = self.db.put(rt.storage_key, key, new)
        self._after(rt, self.db_last_change())
        return Reply(200, entry=entry, warnings=warnings)

    def _scoped_to_subresource(self, rt: resources.ResourceType, old: dict[str, Any],
                               new: dict[str, Any], subresource: str | None) -> dict[str, Any]:
        """Writes to the main resource ignore status; writes to status ignore all else."""
        if subresource == "status":
            scoped = copy.deepcopy(old)
            if "status" in new:
                scoped["status"] = new["status"]
            else:
                scoped.pop("status", None)
            return scoped
        if subresource == "finalize":   # namespaces: only spec.finalizers may change
            scoped = copy.deepcopy(old)
            spec = dict(scoped.get("spec") or {})
            finalizers = (new.get("spec") or {}).get("finalizers")
            if finalizers:
                spec["finalizers"] = finalizers
            else:
                spec.pop("finalizers", None)
            scoped["spec"] = spec
            return scoped
        if rt.status_subresource:
            if "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        if rt is resources.NAMESPACES:
            new["spec"] = old.get("spec", {})   # spec.finalizers only through /finalize
        return new

    def _check_finalizers(self, rt: resources.ResourceType, old: dict[str, Any],
                          new: dict[str, Any]) -> None:
        if not old["metadata"].get("deletionTimestamp"):
            return
        before = set(old["metadata"].get("finalizers") or [])
        added = [f for f in new["metadata"].get("finalizers") or [] if f not in before]
        if added:
            quoted = ", ".join(json.dumps(f) for f in added)
            message = ("Forbidden: no new finalizers can be added if the object is being "
                       f"deleted, found new finalizers []string{{{quoted}}}")
            raise errors.invalid(rt, old["metadata"]["name"], [
                {"reason": "FieldValueForbidden", "message": message,
                 "field": "metadata.finalizers"}])

    def _admit(self, rt: resources.ResourceType, obj: dict[str, Any], old: dict[str, Any] | None,
               options: WriteOptions, *, patched: bool = False
               ) -> tuple[dict[str, Any], tuple[str, ...]]:
        """Prune, default and validate: the admission a custom resource gets (020, 040-045)."""
        pruned, unknown = (rt.schema.prune_reporting(obj) if rt.schema is not None
                           else (obj, []))
        warnings = self._field_validation(rt, obj, options, patched=patched, unknown=unknown)
        obj = pruned
        obj["metadata"] = meta.known_metadata(obj["metadata"])   # ObjectMeta drops the rest
        causes = _metadata_causes(rt, obj)
        if rt.schema is not None:
            obj = rt.schema.apply_defaults(obj)
            causes += [dataclasses.asdict(cause) for cause in rt.schema.validate(obj, old)]
        causes += _scale_causes(rt, obj)
        preparer = self.preparers.get(rt.storage_key)
        if preparer is not None:
            causes += preparer(rt, obj, old)
        if causes:
            raise errors.invalid(rt, obj["metadata"].get("name", ""), causes)
        return obj, warnings

    def _field_validation(self, rt: resources.ResourceType, obj: dict[str, Any],
                          options: WriteOptions, *, patched: bool,
                          unknown: list[str]) -> tuple[str, ...]:
        """Server-side field validation (GA 1.27; 1.24 pruned silently, 020, 381): duplicate
        and unknown fields (``unknown``: what the schema prunes) refuse the write under
        Strict and are warnings under Warn."""
        if options.field_validation == "Ignore":
            return ()
        unknown = [*meta.unknown_metadata(obj["metadata"]), *unknown]
        problems = [*options.decode_problems, *(f'unknown field "{path}"' for path in unknown)]
        if problems and options.field_validation == "Strict":
            if patched:
                raise errors.strict_patch(_patched_json(rt, obj), problems)
            raise errors.strict_decoding(rt, problems)
        return decoding.warnings(tuple(problems))

    # ---- scale subresource (052) ---------------------------------------------------------

    def get_scale(self, rt: resources.ResourceType, *, namespace: str, name: str
                  ) -> dict[str, Any]:
        obj = self.get(rt, namespace=namespace, name=name).obj
        path = rt.scale["specReplicasPath"] if rt.scale else ""
        if _read_path(obj, path) is None:
            # The real ScaleREST builds no Scale without spec replicas: 500, not 0 (343).
            raise errors.internal(f"the spec replicas field {json.dumps(path)} does not exist")
        return self._scale_of(rt, obj)

    def _scale_of(self, rt: resources.ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        assert rt.scale is not None
        metadata = obj["metadata"]
        status: dict[str, Any] = {"replicas": _read_path(obj, rt.scale.get("statusReplicasPath"))
                                  or 0}
        selector = _read_path(obj, rt.scale.get("labelSelectorPath"))
        if selector:
            status["selector"] = selector
        scale_meta = {key: metadata[key] for key in (
            "name", "namespace", "uid", "resourceVersion", "creationTimestamp") if key in metadata}
        return {"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": scale_meta,
                "spec": {"replicas": _read_path(obj, rt.scale["specReplicasPath"]) or 0},
                "status": status}

    def update_scale(self, rt: resources.ResourceType, body: Any, *, namespace: str,
                     name: str, options: WriteOptions, patch_type: str | None = None) -> Reply:
        old = self.get(rt, namespace=namespace, name=name)
        if patch_type is not None:
            body = apply_patch(rt, self._scale_of(rt, old.obj), body, content_type=patch_type)
        if not isinstance(body, dict) or not isinstance(body.get("spec", {}), dict):
            raise errors.bad_request("the object provided is unrecognized (must be of type "
                                     "Scale)")
        rv = (body.get("metadata") or {}).get("resourceVersion")
        new = old.thaw()
        replicas = (body.get("spec") or {}).get("replicas", 0)
        _write_path(new, rt.scale["specReplicasPath"] if rt.scale else "", replicas)
        reply = self._write(rt, old, new, rv=rv, subresource=None, options=options)
        obj = reply.entry.obj if reply.entry else reply.body or {}
        return Reply(200, body=self._scale_of(rt, obj), warnings=reply.warnings)

    # ---- delete ---------------------------------------------------------------------------

    def delete(self, rt: resources.ResourceType, *, namespace: str, name: str,
               options: DeleteOptions) -> Reply:
        entry = self.get(rt, namespace=namespace, name=name)
        self._check_preconditions(rt, entry, options)
        if options.propagation == "Orphan":
            self._orphaning.add(entry.obj["metadata"]["uid"])
        return self._delete_entry(rt, entry, dry_run=options.dry_run)

    def _check_preconditions(self, rt: resources.ResourceType, entry: store.Entry,
                             options: DeleteOptions) -> None:
        metadata = entry.obj["metadata"]
        if options.precondition_uid and options.precondition_uid != metadata["uid"]:
            raise errors.precondition_conflict(rt, metadata["name"], field="uid",
                                               expected=options.precondition_uid,
                                               actual=metadata["uid"])
        if options.precondition_rv and options.precondition_rv != str(entry.rv):
            raise errors.precondition_conflict(rt, metadata["name"], field="resourceVersion",
                                               expected=options.precondition_rv,
                                               actual=str(entry.rv))

    def _delete_entry(self, rt: resources.ResourceType, entry: store.Entry, *,
                      dry_run: bool = False) -> Reply:
        obj = entry.obj
        if obj["metadata"].get("deletionTimestamp"):
            return Reply(200, entry=entry)    # already being deleted: nothing more to do
        before_delete = self.before_delete.get(rt.storage_key)
        candidate = before_delete(entry.thaw()) if before_delete else obj
        if _finalizers(candidate):
            return self._mark_deleting(rt, entry, candidate, dry_run=dry_run)
        if not dry_run:
            self._remove(rt, entry)
        details = {"name": obj["metadata"]["name"], "group": rt.group, "kind": rt.plural,
                   "uid": obj["metadata"]["uid"]}
        if not rt.group:
            del details["group"]
        return Reply(200, body=errors.success_body(details=details))

    def _mark_deleting(self, rt: resources.ResourceType, entry: store.Entry,
                       candidate: dict[str, Any], *, dry_run: bool) -> Reply:
        """Finalizers hold the object: it gets a deletionTimestamp and stays (090, 199)."""
        marked = candidate if candidate is not entry.obj else entry.thaw()
        metadata = marked["metadata"]
        metadata["deletionTimestamp"] = meta.now_rfc3339()
        if rt is resources.NAMESPACES:
            marked.setdefault("status", {})["phase"] = "Terminating"
        elif rt.custom:
            metadata["deletionGracePeriodSeconds"] = 0
        if rt.tracks_generation and rt is not resources.CRDS:
            metadata["generation"] = entry.obj["metadata"].get("generation", 0) + 1
        if dry_run:
            return Reply(200, body=rt.external(marked))
        marked_entry = self.db.put(rt.storage_key, _key_of(marked), marked)
        self._after(rt, self.db_last_change())
        return Reply(200, entry=marked_entry)

    def _remove(self, rt: resources.ResourceType, entry: store.Entry) -> None:
        metadata = entry.obj["metadata"]
        self.db.remove(rt.storage_key, (metadata.get("namespace", ""), metadata["name"]))
        self._after(rt, self.db_last_change())

    def delete_collection(self, rt: resources.ResourceType, list_options: ListOptions,
                          options: DeleteOptions) -> Listing:
        everything = dataclasses.replace(list_options, limit=0, continue_token="")
        listing = self.list_objects(rt, everything)
        for entry in listing.entries:
            current = self.db.get(rt.storage_key, _key_of(entry.obj))
            if current is not None:
                self._delete_entry(rt, current, dry_run=options.dry_run)
        return Listing(listing.entries, listing.rv)   # the version it was listed at (190)

    # ---- after a change: hooks and the garbage collector ----------------------------------

    def db_last_change(self) -> store.Change:
        return self.db.last_change()

    def _after(self, rt: resources.ResourceType, change: store.Change) -> None:
        for hook in list(self.hooks):
            hook(rt, change)

    def _track_owners(self, rt: resources.ResourceType, change: store.Change) -> None:
        ref = (change.storage_key, _key_of(change.entry.obj))
        for owner in _owner_uids(change.prev.obj if change.prev else None):
            self._owned.get(owner, set()).discard(ref)
        if change.type != "DELETED":
            for owner in _owner_uids(change.entry.obj):
                self._owned.setdefault(owner, set()).add(ref)
            return
        uid = change.entry.obj["metadata"].get("uid", "")
        if self._owned.get(uid):
            # Background propagation: dependents go after the owner, not within its request.
            self.soon(lambda: self._collect(uid))

    def soon(self, action: Callable[[], None]) -> None:
        """Run `action` after the write being made (on the loop; at once without one)."""
        try:
            asyncio.get_running_loop().call_soon(action)
        except RuntimeError:
            action()

    def _collect(self, owner_uid: str) -> None:
        orphan = owner_uid in self._orphaning
        self._orphaning.discard(owner_uid)
        for storage_key, key in sorted(self._owned.pop(owner_uid, set())):
            entry = self.db.get(storage_key, key)
            dependent_types = self.registry.by_storage(storage_key)
            if entry is None or not dependent_types:
                continue
            rt = dependent_types[0]
            remaining = [ref for ref in entry.obj["metadata"].get("ownerReferences") or []
                         if ref.get("uid") != owner_uid]
            if orphan or remaining:
                updated = entry.thaw()
                updated["metadata"]["ownerReferences"] = remaining
                if not remaining:
                    del updated["metadata"]["ownerReferences"]
                self.db.put(storage_key, key, updated)
                self._after(rt, self.db_last_change())
            else:
                self._delete_entry(rt, entry)


# ---- helpers --------------------------------------------------------------------------------

def decoded(rt: resources.ResourceType, obj: dict[str, Any], options: WriteOptions, *,
            patched: bool = False) -> tuple[dict[str, Any], WriteOptions]:
    """A built-in kind's body as its Go type decodes it (`gotypes`): a field of the wrong
    type refused (400; 422 on `patch` for a patch, as the real patcher words it), unknown
    fields dropped and added to what `fieldValidation` warns about or refuses."""
    if rt.go_type is None:
        return obj, options
    try:
        result = gotypes.decode(rt.go_type, obj)
    except gotypes.DecodeError as error:
        if patched:
            raise errors.invalid_patch(_patched_json(rt, obj), str(error)) from None
        raise errors.cannot_handle(rt, str(error)) from None
    if not result.unknown:
        return result.value, options   # duplicate fields, if any, are refused in _admit
    problems = (*options.decode_problems, *(f'unknown field "{path}"' for path in result.unknown))
    if patched and options.field_validation == "Strict":
        # named with the patched object as it came, unknown fields and all
        raise errors.strict_patch(_patched_json(rt, obj), list(problems))
    return result.value, dataclasses.replace(options, decode_problems=problems)


def _patched_json(rt: resources.ResourceType, obj: dict[str, Any]) -> str:
    # What the real patcher names in its 422: the patched object, as Go marshals a map.
    return json.dumps(rt.external(obj), sort_keys=True, separators=(",", ":"))


def apply_patch(rt: resources.ResourceType, target: dict[str, Any], patch: Any, *,
                content_type: str) -> Any:
    if content_type == patching.MERGE:
        return patching.merge(target, patch)
    if content_type == patching.JSON:
        return patching.json_patch(target, patch)
    if content_type == patching.STRATEGIC and not rt.custom:
        return patching.strategic(target, patch)
    if content_type == patching.APPLY:
        # Server-side apply approximated as a merge patch (no field ownership tracking).
        return patching.merge(target, patch)
    raise errors.unsupported_media_type()


def page_last_key(page: list[store.Entry]) -> store.Key:
    return _key_of(page[-1].obj)


def _key_of(obj: dict[str, Any]) -> store.Key:
    return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def _encode_continue(rv: int, key: store.Key) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": list(key)})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_continue(token: str) -> tuple[int, store.Key]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        namespace, name = data["start"]
        return int(data["rv"]), (str(namespace), str(name))
    except (ValueError, KeyError, TypeError, binascii.Error) as error:
        raise errors.bad_request("continue key is not valid: incorrect encoded start "
                                 "resourceVersion (version meta.k8s.io/v1)") from error


def _metadata_of(obj: dict[str, Any]) -> dict[str, Any]:
    metadata = obj.setdefault("metadata", {})
    if not isinstance(metadata, dict):
        raise errors.bad_request("metadata must be an object")
    return metadata


def _keep_server_fields(new: dict[str, Any], old: dict[str, Any]) -> None:
    """Fields clients cannot change on update come from the stored object."""
    for field in ("uid", "creationTimestamp", "deletionTimestamp",
                  "deletionGracePeriodSeconds", "generation", "namespace", "name"):
        if field in old:
            new[field] = old[field]
        else:
            new.pop(field, None)
    new["resourceVersion"] = old["resourceVersion"]
    new.pop("selfLink", None)
    new.pop("managedFields", None)


def _same(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return old == new


def _spec_changed(rt: resources.ResourceType, old: dict[str, Any], new: dict[str, Any]) -> bool:
    ignored = {"metadata", "status"} if rt.status_subresource else {"metadata"}
    keys = (old.keys() | new.keys()) - ignored
    return any(old.get(key) != new.get(key) for key in keys)


def _finalizers(obj: dict[str, Any]) -> list[Any]:
    found = list(obj["metadata"].get("finalizers") or [])
    if obj.get("kind") == "Namespace":
        found += (obj.get("spec") or {}).get("finalizers") or []
    return found


def _owner_uids(obj: dict[str, Any] | None) -> list[str]:
    if obj is None:
        return []
    refs = obj["metadata"].get("ownerReferences") or []
    return [ref["uid"] for ref in refs if isinstance(ref, dict) and isinstance(ref.get("uid"), str)]


def _metadata_causes(rt: resources.ResourceType, obj: dict[str, Any]) -> list[dict[str, str]]:
    """ValidateObjectMeta: what a real server refuses in any object's metadata."""
    metadata = obj["metadata"]
    causes = _shape_causes(metadata)
    generate_name = metadata.get("generateName")
    if isinstance(generate_name, str) and generate_name:
        causes += [_invalid("metadata.generateName", generate_name, problem) for problem in
                   (meta.path_segment_problems(generate_name) if rt.path_segment_names else
                    meta.name_problems(generate_name, dns_label=rt is resources.NAMESPACES,
                                       prefix=True))]
    causes += [_invalid("metadata.name", metadata["name"], problem) for problem in
               (meta.path_segment_problems(metadata["name"]) if rt.path_segment_names else
                meta.name_problems(metadata["name"], dns_label=rt is resources.NAMESPACES))]
    if _is_string_map(metadata.get("labels")):
        causes += [_invalid("metadata.labels", value, problem)
                   for value, problem in meta.label_problems(metadata["labels"])]
    if _is_string_map(metadata.get("annotations")):
        causes += [_invalid("metadata.annotations", key, problem) if key else {
            "reason": "FieldValueTooLong", "field": "metadata.annotations",
            "message": f"Too long: {problem}"}
            for key, problem in meta.annotation_problems(metadata["annotations"])]
    for finalizer in metadata.get("finalizers") or []:
        causes += [_invalid("metadata.finalizers", str(finalizer), problem)
                   for problem in meta.qualified_name_problems(str(finalizer))]
    for reference in metadata.get("ownerReferences") or []:
        causes += [_invalid(f"metadata.ownerReferences.{field}", value, problem)
                   for field, value, problem in meta.owner_reference_problems(reference)]
    return causes


def _shape_causes(metadata: dict[str, Any]) -> list[dict[str, str]]:
    causes = []
    for key in ("annotations", "labels"):
        value = metadata.get(key)
        if value is not None and not _is_string_map(value):
            causes.append({"reason": "FieldValueInvalid", "field": f"metadata.{key}",
                           "message": "Invalid value: must be a map of strings"})
    for key in ("finalizers", "ownerReferences"):
        value = metadata.get(key)
        wanted = str if key == "finalizers" else dict
        if value is not None and not (isinstance(value, list) and all(
                isinstance(item, wanted) for item in value)):
            causes.append({"reason": "FieldValueInvalid", "field": f"metadata.{key}",
                           "message": "Invalid value: must be a list"})
            metadata.pop(key)   # checked no further
    return causes


def _is_string_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(item, str) for item in value.values())


_invalid = errors.invalid_cause


def _read_path(obj: dict[str, Any], path: str | None) -> Any:
    if not path:
        return None
    value: Any = obj
    for part in path.strip(".").split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _write_path(obj: dict[str, Any], path: str, value: Any) -> None:
    parts = path.strip(".").split(".")
    target = obj
    for part in parts[:-1]:
        if not isinstance(target.get(part), dict):
            target[part] = {}
        target = target[part]
    target[parts[-1]] = value


def _scale_causes(rt: resources.ResourceType, obj: dict[str, Any]) -> list[dict[str, str]]:
    """The scale subresource's own checks of its replica paths (040, 043)."""
    if rt.scale is None:
        return []
    causes = []
    for key in ("specReplicasPath", "statusReplicasPath"):
        path = rt.scale.get(key)
        value = _read_path(obj, path)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            go_type = _GO_TYPES.get(type(value), type(value).__name__)
            causes.append({"reason": "FieldValueInvalid", "field": str(path), "message": (
                f"Invalid value: 0: {path} accessor error: {value} is of the type {go_type}, "
                "expected int64")})
        elif value < 0:
            causes.append({"reason": "FieldValueInvalid", "field": str(path),
                           "message": f"Invalid value: {value}: should be a non-negative integer"})
    return causes
