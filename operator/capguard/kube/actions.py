"""An action, as the write that executes it.

The binding is a merge-patch of the engine carrying the resourceVersion the action was
planned from: if anything wrote the engine since, the API server answers 409 and the
action is dropped and re-planned, never applied to a world it was not planned for
(DESIGN.md invariant 2). The action id goes on the object in the same write, so what
ran is recorded where a restarted operator will read it. (`capguard run --naive`, the
incident's manager, writes without the precondition.)
"""

from __future__ import annotations

from typing import Any

from capguard.core import queue, specs


def binding_patch(
    action: queue.Action, *, revision: str | None, precondition: bool = True
) -> dict[str, Any]:
    """`spec.modelRef`/`spec.revision` (null unbinds), the action id, the precondition.

    Without `precondition` (`capguard run --naive` only) the write lands whatever
    happened to the engine since, as the incident's capacity manager's writes did.
    """
    metadata: dict[str, Any] = {"annotations": {specs.ACTION_ID_ANNOTATION: action.id}}
    if precondition:
        metadata["resourceVersion"] = action.planned_from.engine_resource_version
    return {
        "metadata": metadata,
        "spec": {"modelRef": action.intent.model, "revision": revision},
    }


def last_action(action: queue.Action, *, time: str) -> dict[str, Any]:
    """`status.lastAction` of the engine: what ran, planned from which version, when."""
    return {
        "id": action.id,
        "type": action.intent.kind.value,
        "plannedFromResourceVersion": action.planned_from.engine_resource_version,
        "time": time,
    }
