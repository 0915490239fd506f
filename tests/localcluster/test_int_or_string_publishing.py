"""How an `x-kubernetes-int-or-string` field is published, and what `kubectl explain` makes
of it: as a real 1.30 server publishes it (apiextensions' Structural.Unfold, then
ToKubeOpenAPI; reference 111/112 for the plain case) and as kubectl shows it against a
real server: `<Object>`, since kubectl's explain template reads only `type`, which an
int-or-string node has none of (kubernetes/kubernetes#130946).
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
from typing import Any, Final

import pytest

from capguard.localcluster import LocalCluster, ThreadedCluster, resources

from .widget_api import call

REPO: Final = pathlib.Path(__file__).resolve().parents[2]
KUBECTL: Final = shutil.which("kubectl")
INT_OR_STRING: Final = [{"type": "integer"}, {"type": "string"}]
GROUP: Final = "ios.example.dev"


def crd(fields: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"ports.{GROUP}"},
            "spec": {"group": GROUP, "scope": "Namespaced",
                     "names": {"plural": "ports", "singular": "port", "kind": "Port",
                               "listKind": "PortList"},
                     "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                         "openAPIV3Schema": {"type": "object", "properties": {"spec": {
                             "type": "object", "properties": fields}}}}}]}}


FIELDS: Final = {
    "plain": {"x-kubernetes-int-or-string": True},
    "pattern": {"x-kubernetes-int-or-string": True, "anyOf": INT_OR_STRING},
    "bounded": {"x-kubernetes-int-or-string": True,
                "anyOf": [{"maximum": 10}, {"pattern": "^[a-z]+$"}]},
}


async def published(cluster: LocalCluster, path: str) -> dict[str, Any]:
    status, document, _ = await call(cluster, "GET", path)
    assert status == 200
    spec: dict[str, Any] = next(
        schema for schema in (document.get("components", {}).get("schemas")
                              or document["definitions"]).values()
        if schema.get("x-kubernetes-group-version-kind", [{}])[0].get("kind") == "Port"
    )["properties"]["spec"]["properties"]
    return spec


async def test_v3_unfolds_int_or_string_as_apiextensions_does(
        local_cluster: LocalCluster) -> None:
    local_cluster.apply(resources.CRDS, crd(FIELDS))
    spec = await published(local_cluster, f"/openapi/v3/apis/{GROUP}/v1")
    assert spec["plain"] == {"x-kubernetes-int-or-string": True, "anyOf": INT_OR_STRING}
    assert spec["pattern"] == FIELDS["pattern"]   # already the pattern: left as it is
    # An anyOf of its own stays; the int-or-string anyOf goes in front, inside an allOf.
    assert spec["bounded"] == {**FIELDS["bounded"], "allOf": [{"anyOf": INT_OR_STRING}]}
    for field in ("plain", "pattern", "bounded"):
        assert "type" not in spec[field]
    v2 = await published(local_cluster, "/openapi/v2")
    assert all(v2[field] == {"x-kubernetes-int-or-string": True} for field in FIELDS)


@pytest.mark.kubectl
@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not on PATH")
def test_kubectl_explain_shows_int_or_string_as_a_real_server_makes_it_show(
        threaded_local_cluster: ThreadedCluster, tmp_path: pathlib.Path) -> None:
    assert KUBECTL is not None
    env = {**os.environ, "KUBECONFIG": str(threaded_local_cluster.kubeconfig_path)}

    def kubectl(*args: str) -> str:
        result = subprocess.run([KUBECTL, "--cache-dir", str(tmp_path / "cache"), *args],
                                env=env, capture_output=True, text=True, timeout=60,
                                check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    kubectl("apply", "-f", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", "crd", "--all")
    field = kubectl("explain", "modelcapacities.spec.minAvailable")
    assert "FIELD: minAvailable <Object>\n" in field
    spec = kubectl("explain", "modelcapacities.spec")
    assert "  minAvailable\t<Object>\n" in spec and "  maxUnavailable\t<Object>\n" in spec
    assert "  replicas\t<integer> -required-\n" in spec
    # The v2 document has no type for it either: kubectl's v2 explain names none.
    old = kubectl("explain", "modelcapacities.spec.minAvailable",
                  "--output=plaintext-openapiv2")
    assert "FIELD:" not in old and "The floor: capacity units" in old
