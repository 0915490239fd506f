"""What the built-in kinds add on admission: a Namespace gets its `kubernetes` finalizer,
its `kubernetes.io/metadata.name` label and phase Active (003)."""
from __future__ import annotations

from typing import Any

from capguard.localcluster import objects, resources

NAME_LABEL = "kubernetes.io/metadata.name"


def install(api: objects.Objects) -> None:
    api.preparers[resources.NAMESPACES.storage_key] = prepare_namespace


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
