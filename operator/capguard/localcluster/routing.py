"""Mapping URL paths to resources: `/api/v1/...` and `/apis/G/V/...`, namespaced or not,
with an optional subresource. Anything else is a `PageNotFound` (plain text 404, 195)."""
from __future__ import annotations

import dataclasses

from capguard.localcluster import errors, resources


@dataclasses.dataclass(frozen=True)
class Target:
    rt: resources.ResourceType
    namespace: str | None      # None: cluster-scoped, or a list across all namespaces
    name: str | None
    subresource: str | None

    @property
    def scope_namespace(self) -> str:
        return self.namespace or ""


def resource_target(registry: resources.Registry, *, group: str, version: str,
                    parts: list[str]) -> Target:
    if len(parts) >= 3 and parts[0] == "namespaces":
        rt = registry.get(group, version, parts[2])
        if rt is not None and rt.namespaced:
            return _target(rt, namespace=parts[1], rest=parts[3:])
    if not parts:
        raise errors.PageNotFound()
    rt = registry.get(group, version, parts[0])
    if rt is None:
        raise errors.PageNotFound()
    return _target(rt, namespace=None, rest=parts[1:])


def _target(rt: resources.ResourceType, *, namespace: str | None, rest: list[str]) -> Target:
    if len(rest) > 2 or any(not part for part in rest):
        raise errors.PageNotFound()
    name = rest[0] if rest else None
    subresource = rest[1] if len(rest) == 2 else None
    if subresource is not None and rt.subresource(subresource) is None:
        raise errors.PageNotFound()
    if rt.namespaced and name is not None and namespace is None:
        raise errors.PageNotFound()   # a namespaced object needs its namespace in the path
    return Target(rt, namespace, name, subresource)
