"""Applying PATCH bodies: JSON merge patch, JSON patch and an approximate strategic merge.

Strategic merge patch is served only for built-in kinds (custom resources answer 415, as
the real server does, 036). The approximation here is a merge patch in which the few
lists that matter to capguard's built-ins and kubectl merge by key instead of being
replaced: `metadata.finalizers` and `metadata.ownerReferences` (by uid), and the `$patch:
delete` / `$deleteFromPrimitiveList` directives are honoured for those.
"""
from __future__ import annotations

from typing import Any, Final

import jsonpatch

from capguard.localcluster import errors

MERGE: Final = "application/merge-patch+json"
JSON: Final = "application/json-patch+json"
STRATEGIC: Final = "application/strategic-merge-patch+json"
APPLY: Final = "application/apply-patch+yaml"

# Lists merged by key in strategic merge patches: path -> key (None: a set of primitives).
_MERGED_LISTS: Final[dict[tuple[str, ...], str | None]] = {
    ("metadata", "finalizers"): None,
    ("metadata", "ownerReferences"): "uid",
    ("spec", "finalizers"): None,
}


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def json_patch(target: dict[str, Any], operations: Any) -> Any:
    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise errors.bad_request("json: cannot unmarshal object into Go value of type "
                                 "jsonpatch.Patch")
    try:
        return jsonpatch.JsonPatch(operations).apply(target)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError,
            IndexError, TypeError, ValueError) as error:
        # Every failure, a failed `test` included, is one generic 422 (035).
        raise errors.invalid_generic() from error


def strategic(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [item for item in result.get(field) or [] if item not in value]
        elif key.startswith("$"):
            continue   # $patch, $retainKeys, $setElementOrder: ordering hints, ignored
        elif value is None:
            result.pop(key, None)
        elif (*path, key) in _MERGED_LISTS and isinstance(value, list):
            result[key] = _merge_list(result.get(key) or [], value, _MERGED_LISTS[(*path, key)])
        else:
            result[key] = strategic(result.get(key), value, (*path, key))
    return result


def _merge_list(current: list[Any], patch: list[Any], key: str | None) -> list[Any]:
    if key is None:
        return current + [item for item in patch if item not in current]
    merged = {item.get(key): item for item in current if isinstance(item, dict)}
    for item in patch:
        if not isinstance(item, dict):
            continue
        if item.get("$patch") == "delete":
            merged.pop(item.get(key), None)
        else:
            merged[item.get(key)] = merge(merged.get(item.get(key)), item)
    return list(merged.values())
