"""`meta.k8s.io/v1` Tables, what `kubectl get` asks for (070, 071, 083).

Columns come from a CRD's additionalPrinterColumns (built-ins have a few of their own);
`columns.py` evaluates their JSONPath and formats the cells.
"""
from __future__ import annotations

import datetime
from typing import Any, Final

from capguard.localcluster import columns, resources

_ROW_METADATA: Final = ("name", "generateName", "namespace", "uid", "resourceVersion",
                        "generation", "creationTimestamp", "deletionTimestamp",
                        "deletionGracePeriodSeconds", "labels", "annotations",
                        "ownerReferences", "finalizers")


def table(rt: resources.ResourceType, objs: list[dict[str, Any]], *, resource_version: str,
          include_object: str = "Metadata", continue_token: str = "",
          remaining: int | None = None) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC)
    printer_columns = list(rt.printer_columns)
    list_meta: dict[str, Any] = {"resourceVersion": resource_version}
    if continue_token:
        list_meta["continue"] = continue_token
    if remaining is not None:
        list_meta["remainingItemCount"] = remaining
    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta,
        "columnDefinitions": columns.column_definitions(printer_columns),
        "rows": [{"cells": columns.row_cells(printer_columns, obj, now),
                  "object": _row_object(obj, include_object)} for obj in objs],
    }


def _row_object(obj: dict[str, Any], include_object: str) -> dict[str, Any] | None:
    if include_object == "None":
        return None
    if include_object == "Object":
        return obj
    metadata = obj.get("metadata") or {}
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": {key: metadata[key] for key in _ROW_METADATA if key in metadata}}
