"""The set-up the recordings of cases 300-384 leave out.

The recorder of the CRD-admission cases works in namespace `ref-crd` and, for 370-372 and
380-384, creates a small CRD first without recording it ("When a CRD is created only as
set-up, only the requests that matter are recorded"). What that CRD was can be read off
the recordings: group `crdref.example.dev`, plural = kind in lower case + `s`, one version
`v1` whose schema has `spec.size` (a string), and where 382 shows them at work, a status
subresource and `status.phase` (372 shows a schema without status; 382's NoSt keeps the
status it is sent, which a schema without it would prune). This module rebuilds exactly
that, so the replay sends it before the case.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Final

GROUP: Final = "crdref.example.dev"
NAMESPACE: Final = "ref-crd"

# case id -> (kind, has a status subresource, declares status.phase) of the CRDs it needs
SETUP_KINDS: Final[dict[str, tuple[tuple[str, bool, bool], ...]]] = {
    "370": (("Stored", False, False),),
    "371": (("Scoped", False, False),),
    "372": (("Gener", False, False),),
    "380": (("Named", False, False),),
    "381": (("Unknown", False, False),),
    "382": (("WithSt", True, True), ("NoSt", False, True)),
    "383": (("Big", False, False),),
    "384": (("Metas", False, False),),
}


def set_up_crd(kind: str, *, status: bool, status_schema: bool = False) -> dict[str, Any]:
    plural = kind.lower() + "s"
    spec_schema = {"type": "object", "properties": {"size": {"type": "string"}}}
    properties: dict[str, Any] = {"spec": spec_schema}
    if status or status_schema:
        properties["status"] = {"type": "object",
                                "properties": {"phase": {"type": "string"}}}
    version: dict[str, Any] = {"name": "v1", "served": True, "storage": True}
    if status:
        version["subresources"] = {"status": {}}
    version["schema"] = {"openAPIV3Schema": {"type": "object", "properties": properties}}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{GROUP}"},
            "spec": {"group": GROUP, "scope": "Namespaced",
                     "names": {"plural": plural, "singular": kind.lower(), "kind": kind,
                               "listKind": kind + "List"},
                     "versions": [version]}}


def prepare(base: str, case_id: str) -> None:
    """Create what case `case_id` assumes exists; a no-op for cases before 300."""
    if not case_id.startswith("3"):
        return
    _post(base, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": NAMESPACE}}, exists_ok=True)
    for kind, status, status_schema in SETUP_KINDS.get(case_id, ()):
        _post(base, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
              set_up_crd(kind, status=status, status_schema=status_schema), exists_ok=False)


def _post(base: str, path: str, body: dict[str, Any], *, exists_ok: bool) -> None:
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"},
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 201, response.status
    except urllib.error.HTTPError as error:
        if not (exists_ok and error.code == 409):
            raise AssertionError(f"set-up POST {path} answered {error.code}: "
                                 f"{error.read()[:500]!r}") from error
