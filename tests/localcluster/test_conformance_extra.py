"""Conformance over real HTTP for what neither the recorded reference nor the other files
cover: the `>`/`<` label selector operators, stale resourceVersions on subresources,
the fallback of clients asking for an aggregated discovery version this server lacks,
and malformed YAML bodies."""
from __future__ import annotations

from typing import Any

from capguard.localcluster import LocalCluster

from .widget_api import MERGE, WIDGETS, call, widget


async def _names(cluster: LocalCluster, selector: str) -> tuple[int, Any]:
    status, answer, _ = await call(cluster, "GET", f"{WIDGETS}?labelSelector={selector}")
    if status != 200:
        return status, answer
    return status, sorted(item["metadata"]["name"] for item in answer["items"])


async def test_label_selectors_gt_and_lt_compare_integers(widgets: LocalCluster) -> None:
    for name, labels in (("w1", {"n": "1"}), ("w5", {"n": "5"}), ("wx", {"n": "x"}),
                         ("none", {})):
        body = widget(name)
        body["metadata"]["labels"] = labels
        assert (await call(widgets, "POST", WIDGETS, body))[0] == 201
    # As labels.Parse does: the label must exist and parse as an integer.
    assert await _names(widgets, "n%3E3") == (200, ["w5"])
    assert await _names(widgets, "n%3C3") == (200, ["w1"])
    assert await _names(widgets, "n%3E0,n%3C9") == (200, ["w1", "w5"])
    status, answer = await _names(widgets, "n%3Ex")
    assert (status, answer["reason"]) == (400, "BadRequest")
    assert "for 'Gt', 'Lt' operators, the value must be an integer" in answer["message"]
    status, answer = await _names(widgets, "n%3E%3D3")
    assert (status, answer["reason"]) == (400, "BadRequest")


async def test_stale_resource_versions_conflict_on_status_and_scale(
        widgets: LocalCluster) -> None:
    _, created, _ = await call(widgets, "POST", WIDGETS, widget("w", replicas=1))
    stale = created["metadata"]["resourceVersion"]
    await call(widgets, "PATCH", WIDGETS + "/w", {"metadata": {"labels": {"a": "b"}}},
               headers=MERGE)
    status, answer, _ = await call(
        widgets, "PATCH", WIDGETS + "/w/status",
        {"metadata": {"resourceVersion": stale}, "status": {"phase": "x"}}, headers=MERGE)
    assert (status, answer["reason"]) == (409, "Conflict")
    scale = {"apiVersion": "autoscaling/v1", "kind": "Scale",
             "metadata": {"name": "w", "namespace": "default", "resourceVersion": stale},
             "spec": {"replicas": 3}}
    status, answer, _ = await call(widgets, "PUT", WIDGETS + "/w/scale", scale)
    assert (status, answer["reason"]) == (409, "Conflict")
    _, stored, _ = await call(widgets, "GET", WIDGETS + "/w")
    assert stored["spec"]["replicas"] == 1 and "phase" not in stored.get("status", {})


async def test_aggregated_discovery_falls_back_when_its_version_is_unknown(
        local_cluster: LocalCluster) -> None:
    unknown = "application/json;g=apidiscovery.k8s.io;v=v9;as=APIGroupDiscoveryList"
    for path, kind in (("/apis", "APIGroupList"), ("/api", "APIVersions")):
        status, answer, response = await call(
            local_cluster, "GET", path, headers={"Accept": unknown + ",application/json"})
        assert (status, answer["kind"], response.content_type) == (
            200, kind, "application/json")
        status, answer, _ = await call(local_cluster, "GET", path, headers={"Accept": unknown})
        assert (status, answer["reason"]) == (406, "NotAcceptable")
    for version in ("v2", "v2beta1"):
        accept = ("application/json;g=apidiscovery.k8s.io;"
                  f"v={version};as=APIGroupDiscoveryList,application/json")
        status, answer, _ = await call(local_cluster, "GET", "/apis", headers={"Accept": accept})
        assert (status, answer["kind"], answer["apiVersion"]) == (
            200, "APIGroupDiscoveryList", f"apidiscovery.k8s.io/{version}")


async def test_malformed_yaml_is_bad_request_and_stores_nothing(
        local_cluster: LocalCluster) -> None:
    path = "/api/v1/namespaces/default/configmaps"
    status, answer, _ = await call(local_cluster, "POST", path, "metadata: {name: [x\n",
                                   headers={"Content-Type": "application/yaml"})
    assert (status, answer["kind"], answer["reason"]) == (400, "Status", "BadRequest")
    _, listing, _ = await call(local_cluster, "GET", path)
    assert listing["items"] == []
