"""CustomResourceDefinitions: creating, updating and deleting them makes their resources
appear and disappear, as the apiextensions controllers of a real server do (005, 195).

On create the CRD is answered as stored (no conditions yet) and then, within the same
request, gets `NamesAccepted` and `Established` so that `kubectl wait --for
condition=established` returns at once. On delete it gets the `customresourcecleanup`
finalizer and a `Terminating` condition, its instances are deleted (their own finalizers
respected), and when the last one is gone the CRD goes and its paths answer 404.
"""
from __future__ import annotations

import base64
import hashlib
from typing import Any, Final

from capguard.localcluster import (
    crdvalidation,
    meta,
    objects,
    resources,
    schema,
    store,
    structural,
)

CLEANUP_FINALIZER: Final = "customresourcecleanup.apiextensions.k8s.io"
Causes = list[dict[str, str]]


def storage_version_hash(group: str, version: str, kind: str) -> str:
    digest = hashlib.sha256(f"{group}/{version}/{kind}".encode()).digest()
    return base64.b64encode(digest[:8]).decode()


class Controller:
    def __init__(self, api: objects.Objects) -> None:
        self.api = api
        self._served: dict[str, list[resources.ResourceType]] = {}   # CRD name -> types
        api.preparers[resources.CRDS.storage_key] = self.prepare
        api.before_delete[resources.CRDS.storage_key] = self.before_delete
        api.hooks.append(self.on_change)

    # ---- admission ------------------------------------------------------------------------

    def prepare(self, rt: resources.ResourceType, crd: dict[str, Any],
                old: dict[str, Any] | None) -> Causes:
        spec = crd.get("spec")
        if not isinstance(spec, dict):
            return [crdvalidation.required("spec")]
        crdvalidation.set_defaults(spec)   # the real server defaults while decoding
        causes = (crdvalidation.create_causes(crd) if old is None
                  else crdvalidation.update_causes(crd, old))
        causes += _version_causes(spec.get("versions"))
        if causes:
            return causes
        if old is None:
            crd["status"] = {"conditions": None, "acceptedNames": {"plural": "", "kind": ""}}
        status = crd.setdefault("status", {})
        status["storedVersions"] = crdvalidation.stored_versions(spec, old)
        return []

    def before_delete(self, crd: dict[str, Any]) -> dict[str, Any]:
        finalizers = crd["metadata"].setdefault("finalizers", [])
        if CLEANUP_FINALIZER not in finalizers:
            finalizers.append(CLEANUP_FINALIZER)
        conditions = [c for c in crd["status"].get("conditions") or []
                      if c.get("type") != "Terminating"]
        conditions.append(_condition("Terminating", "InstanceDeletionPending",
                                     "CustomResourceDefinition marked for deletion; "
                                     "CustomResource deletion will begin soon"))
        crd["status"]["conditions"] = conditions
        return crd

    # ---- reacting to changes ----------------------------------------------------------------

    def on_change(self, rt: resources.ResourceType, change: store.Change) -> None:
        if change.storage_key == resources.CRDS.storage_key:
            self._crd_changed(change)
        elif change.type == "DELETED":
            self._maybe_finish_cleanup(change.storage_key)

    def _crd_changed(self, change: store.Change) -> None:
        crd = change.entry.obj
        name = crd["metadata"]["name"]
        if change.type == "DELETED":
            self._unserve(name)
        elif crd["metadata"].get("deletionTimestamp"):
            self._delete_instances(crd)
        else:
            self._establish(change.entry)

    def _establish(self, entry: store.Entry) -> None:
        crd = entry.obj
        conflict = self._names_conflict(crd)
        if conflict is None:
            self._serve(crd)
        status = _desired_status(crd, conflict)
        if status != crd.get("status"):
            updated = entry.thaw()
            updated["status"] = status
            self.api.db.put(resources.CRDS.storage_key, ("", crd["metadata"]["name"]), updated)
            self.api._after(resources.CRDS, self.api.db_last_change())

    def _names_conflict(self, crd: dict[str, Any]) -> str | None:
        names, group = crd["spec"]["names"], crd["spec"]["group"]
        for other_name, served in self._served.items():
            if other_name == crd["metadata"]["name"]:
                continue
            for rt in served:
                if rt.group == group and rt.plural == names["plural"]:
                    return f'"{names["plural"]}" is already in use'
                if rt.group == group and rt.kind == names["kind"]:
                    return f'"{names["kind"]}" is already in use'
        for rt in resources.BUILTINS:
            if rt.group == group and rt.plural == names["plural"]:
                return f'"{names["plural"]}" is already in use'
        return None

    def _serve(self, crd: dict[str, Any]) -> None:
        name = crd["metadata"]["name"]
        served = [resource_type(crd, version) for version in crd["spec"]["versions"]
                  if version.get("served", True)]
        for rt in self._served.get(name, []):
            self.api.registry.remove(rt)
        for rt in served:
            self.api.registry.add(rt)
            self.api.db.start_history(rt.storage_key)
        self._served[name] = served

    def _unserve(self, name: str) -> None:
        for rt in self._served.pop(name, []):
            self.api.registry.remove(rt)
            self.api.db.drop_partition(rt.storage_key)

    def _delete_instances(self, crd: dict[str, Any]) -> None:
        served = self._served.get(crd["metadata"]["name"], [])
        if served:
            rt = served[0]
            for key in list(self.api.db.keys(rt.storage_key)):
                entry = self.api.db.get(rt.storage_key, key)
                if entry is not None:
                    self.api._delete_entry(rt, entry)
        self._maybe_finish_cleanup(_storage_key(crd))

    def _maybe_finish_cleanup(self, storage_key: str) -> None:
        for name, served in list(self._served.items()):
            if not served or served[0].storage_key != storage_key:
                continue
            crd = self.api.db.get(resources.CRDS.storage_key, ("", name))
            if (crd is not None and crd.obj["metadata"].get("deletionTimestamp")
                    and self.api.db.count(storage_key) == 0):
                self.api._remove(resources.CRDS, crd)
            return
        # A terminating CRD that was never served (a names conflict) has nothing to clean.
        for key in list(self.api.db.keys(resources.CRDS.storage_key)):
            entry = self.api.db.get(resources.CRDS.storage_key, key)
            if (entry is not None and entry.obj["metadata"].get("deletionTimestamp")
                    and _storage_key(entry.obj) == storage_key and key[1] not in self._served):
                self.api._remove(resources.CRDS, entry)


def resource_type(crd: dict[str, Any], version: dict[str, Any]) -> resources.ResourceType:
    spec = crd["spec"]
    names = spec["names"]
    subresources = version.get("subresources") or {}
    storage = crdvalidation.first_storage_version(spec) or version["name"]
    columns = version.get("additionalPrinterColumns") or [resources.AGE_COLUMN]
    openapi = (version.get("schema") or {}).get("openAPIV3Schema") or {}
    version_schema = schema.Schema(openapi)
    return resources.ResourceType(
        group=spec["group"], version=version["name"], plural=names["plural"],
        kind=names["kind"], namespaced=spec.get("scope") == "Namespaced",
        singular=names.get("singular", ""), short_names=tuple(names.get("shortNames") or ()),
        categories=tuple(names.get("categories") or ()), verbs=resources.CUSTOM_VERBS,
        storage_version_hash=storage_version_hash(spec["group"], storage, names["kind"]),
        custom=True, tracks_generation=True, status_subresource="status" in subresources,
        scale=subresources.get("scale"), printer_columns=tuple(columns),
        schema=version_schema, storage=_storage_key(crd), crd_name=crd["metadata"]["name"],
        listing_kind=names.get("listKind", ""),
        to_external=(_served_as(f"{spec['group']}/{version['name']}", version_schema)
                     if len(spec["versions"]) > 1 else None),
        to_internal=None)


def _served_as(api_version: str, version_schema: schema.Schema) -> resources.Converter:
    """Conversion strategy None: another version only relabels apiVersion, and the object
    is then pruned by that version's schema, as the real server's converter does (361)."""
    def convert(stored: dict[str, Any]) -> dict[str, Any]:
        if stored.get("apiVersion") == api_version:
            return stored
        return version_schema.prune({**stored, "apiVersion": api_version})
    return convert


def _storage_key(crd: dict[str, Any]) -> str:
    return f"{crd['spec']['group']}/{crd['spec']['names']['plural']}"


def _condition(kind: str, reason: str, message: str, status: str = "True") -> dict[str, Any]:
    return {"type": kind, "status": status, "lastTransitionTime": meta.now_rfc3339(),
            "reason": reason, "message": message}


def _desired_status(crd: dict[str, Any], conflict: str | None) -> dict[str, Any]:
    status = dict(crd.get("status") or {})
    if conflict is None:
        wanted = [_condition("NamesAccepted", "NoConflicts", "no conflicts found"),
                  _condition("Established", "InitialNamesAccepted",
                             "the initial names have been accepted")]
        status["acceptedNames"] = dict(crd["spec"]["names"])
    else:
        wanted = [_condition("NamesAccepted", "NameConflict", conflict, "False"),
                  _condition("Established", "NotAccepted", "not all names are accepted",
                             "False")]
    status["conditions"] = meta.settled_conditions(status.get("conditions"), wanted)
    storage = next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))
    stored = list(status.get("storedVersions") or [])
    if storage not in stored:
        stored.append(storage)
    status["storedVersions"] = stored
    return status


def _version_causes(versions: Any) -> Causes:
    """Every version has a schema, and apiextensions accepts each (`structural`), judged
    once at `spec.validation` when all versions share it, as the real server reports it."""
    if not isinstance(versions, list):
        return []   # crdvalidation reports a missing storage version
    causes: Causes = []
    for index, version in enumerate(versions):
        if isinstance(version, dict) and not isinstance(
                _dict(version.get("schema")).get("openAPIV3Schema"), dict):
            causes.append({"reason": "FieldValueRequired",
                           "field": f"spec.versions[{index}].schema.openAPIV3Schema",
                           "message": "Required value: schemas are required"})
    if causes:
        return causes
    for path, version_schema in crdvalidation.placed({"versions": versions}, "schema"):
        if isinstance(version_schema, dict):
            causes += structural.schema_causes(version_schema["openAPIV3Schema"],
                                               path=f"{path}.openAPIV3Schema")
    return causes


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
