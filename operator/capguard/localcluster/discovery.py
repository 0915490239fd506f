"""Discovery documents: /version, /api, /api/v1, /apis, /apis/G, /apis/G/V (000-013),
and aggregated discovery (`APIGroupDiscoveryList`, v2 and v2beta1) as servers since 1.30
serve it."""
from __future__ import annotations

from typing import Any, Final

from capguard.localcluster import resources

# The version kubectl and Kopf see (the one openapi.py reports too); the behaviour that
# differs from the 1.24 reference (aggregated discovery, CEL, field validation) is that
# of servers since 1.30.
VERSION_INFO: Final = {
    "major": "1", "minor": "32", "gitVersion": "v1.32.0",
    "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
    "buildDate": "2024-04-17T00:00:00Z", "goVersion": "python", "compiler": "capguard",
    "platform": "linux/amd64",
}


def api_versions(server_address: str) -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
        {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}


def _group_version(group: str, version: str) -> dict[str, str]:
    return {"groupVersion": f"{group}/{version}", "version": version}


def api_group(registry: resources.Registry, group: str) -> dict[str, Any] | None:
    versions = registry.versions(group)
    if not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group,
            "versions": [_group_version(group, v) for v in versions],
            "preferredVersion": _group_version(group, versions[0])}


def api_group_list(registry: resources.Registry) -> dict[str, Any]:
    groups = []
    for group in registry.groups():
        document = api_group(registry, group)
        if document is not None:
            del document["kind"], document["apiVersion"]
            groups.append(document)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def _resource_entry(rt: resources.ResourceType) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": rt.plural, "singularName": rt.singular,
                             "namespaced": rt.namespaced, "kind": rt.kind,
                             "verbs": list(rt.verbs)}
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    if rt.storage_version_hash:
        entry["storageVersionHash"] = rt.storage_version_hash
    return entry


def _subresource_entries(rt: resources.ResourceType) -> list[dict[str, Any]]:
    entries = []
    for sub in rt.subresources():
        entry: dict[str, Any] = {"name": f"{rt.plural}/{sub.name}", "singularName": "",
                                 "namespaced": rt.namespaced}
        if sub.group is not None:
            entry["group"], entry["version"] = sub.group, sub.version
        entry["kind"] = sub.kind or rt.kind
        entry["verbs"] = list(sub.verbs)
        entries.append(entry)
    return entries


def api_resource_list(registry: resources.Registry, group: str, version: str
                      ) -> dict[str, Any] | None:
    served = registry.resources(group, version)
    if not served:
        return None
    entries = []
    for rt in sorted(served, key=lambda rt: rt.plural):
        entries.append(_resource_entry(rt))
        entries.extend(_subresource_entries(rt))
    document: dict[str, Any] = {"kind": "APIResourceList"}
    if group:
        document["apiVersion"] = "v1"
    document["groupVersion"] = f"{group}/{version}" if group else version
    document["resources"] = entries
    return document


# ---- aggregated discovery -------------------------------------------------------------------

def _aggregated_resource(rt: resources.ResourceType) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": rt.plural,
        "responseKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        "scope": "Namespaced" if rt.namespaced else "Cluster",
        "singularResource": rt.singular or rt.kind.lower(),
        "verbs": list(rt.verbs),
    }
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    subresources = [{
        "subresource": sub.name,
        "responseKind": {"group": rt.group if sub.group is None else sub.group,
                         "version": rt.version if sub.version is None else sub.version,
                         "kind": sub.kind or rt.kind},
        "verbs": list(sub.verbs)} for sub in rt.subresources()]
    if subresources:
        entry["subresources"] = subresources
    return entry


def _aggregated_group(registry: resources.Registry, group: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"creationTimestamp": None}
    if group:
        metadata = {"name": group, **metadata}
    versions = registry.versions(group) if group else ["v1"]
    return {"metadata": metadata, "versions": [{
        "version": version,
        "resources": [_aggregated_resource(rt) for rt in
                      sorted(registry.resources(group, version), key=lambda rt: rt.plural)],
        "freshness": "Current"} for version in versions]}


def aggregated(registry: resources.Registry, *, legacy: bool, version: str) -> dict[str, Any]:
    groups = [""] if legacy else registry.groups()
    return {"kind": "APIGroupDiscoveryList", "apiVersion": f"apidiscovery.k8s.io/{version}",
            "metadata": {}, "items": [_aggregated_group(registry, g) for g in groups]}


def aggregated_content_type(version: str) -> str:
    return f"application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"
