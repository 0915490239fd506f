"""What the built-in kinds add on admission: a Namespace gets its `kubernetes` finalizer,
its `kubernetes.io/metadata.name` label and phase Active (003), and the namespaces the
real server's NamespaceLifecycle admission protects cannot be deleted."""
from __future__ import annotations

from typing import Any, Final

from capguard.localcluster import errors, objects, resources

NAME_LABEL = "kubernetes.io/metadata.name"
IMMORTAL_NAMESPACES: Final = frozenset({"default", "kube-system", "kube-public"})


def install(api: objects.Objects) -> None:
    api.preparers[resources.NAMESPACES.storage_key] = prepare_namespace
    api.before_delete[resources.NAMESPACES.storage_key] = refuse_immortal


def prepare_namespace(rt: resources.ResourceType, namespace: dict[str, Any],
                      old: dict[str, Any] | None) -> list[dict[str, str]]:
    metadata = namespace["metadata"]
    labels = metadata.get("labels")
    if not isinstance(labels, dict):
        labels = metadata["labels"] = {}
    labels[NAME_LABEL] = metadata["name"]
    if old is None:
        namespace["spec"] = {"finalizers": ["kubernetes"]}
        namespace["status"] = {"phase": "Active"}
    return []


def refuse_immortal(namespace: dict[str, Any]) -> dict[str, Any]:
    name = namespace["metadata"]["name"]
    if name in IMMORTAL_NAMESPACES:
        raise errors.forbidden(f'namespaces "{name}" is forbidden: this namespace may not be '
                               f"deleted", details={"name": name, "kind": "namespaces"})
    return namespace
