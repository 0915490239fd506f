"""The embedded server over real HTTP, for what the recorded reference does not cover:
garbage never crashes it or changes stored objects, field validation, dry runs,
strategic merge patches, ownerReference cascades, namespaces, limits, watches."""
from __future__ import annotations

import asyncio
import json
import pathlib
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capguard.localcluster import (
    LocalCluster,
    ThreadedCluster,
    cel,
    openapi_protobuf,
    protobuf,
    resources,
    store,
)

from .widget_api import JSON, MERGE, WIDGETS, call, widget


async def test_garbage_bodies_never_crash_or_change_the_stored_object(
        widgets: LocalCluster) -> None:
    status, created, _ = await call(widgets, "POST", WIDGETS, widget("w"))
    assert status == 201
    garbage: list[tuple[str, Any, dict[str, str]]] = [
        ("POST", b"\xff\xfe", JSON), ("POST", "[1,2", JSON), ("POST", "NaN", JSON),
        ("POST", "[" * 100000, JSON), ("POST", {"kind": "Widget"}, JSON),
        ("POST", {**widget("x"), "metadata": {"name": 7}}, JSON),
        ("POST", {**widget("x"), "metadata": {"name": "x", "labels": "no"}}, JSON),
        ("POST", {**widget("x"), "metadata": []}, JSON),
        ("PUT", {**widget("w"), "metadata": {"name": "w", "resourceVersion": {"a": 1}}}, JSON),
        ("PATCH", "not json", MERGE), ("PATCH", [1, 2], MERGE), ("PATCH", {"metadata": 5}, MERGE),
        ("PATCH", {"op": "x"}, {"Content-Type": "application/json-patch+json"}),
        ("PATCH", [{"op": "remove", "path": "/nope"}],
         {"Content-Type": "application/json-patch+json"}),
        ("PATCH", {"spec": {"replicas": "many"}}, MERGE),
        ("POST", "x", {"Content-Type": "application/xml"}),
    ]
    for method, body, headers in garbage:
        path = WIDGETS if method == "POST" else WIDGETS + "/w"
        status, answer, _ = await call(widgets, method, path, body, headers=headers)
        assert 400 <= status < 500, (method, body, status, answer)
        assert answer["kind"] == "Status" and answer["code"] == status
    _, after, _ = await call(widgets, "GET", WIDGETS + "/w")
    assert after == created


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(patch=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                          lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                          max_leaves=12))
def test_random_merge_patches_answer_without_server_errors(
        threaded_local_cluster: ThreadedCluster, patch: Any) -> None:
    import urllib.error
    import urllib.request

    def send(method: str, path: str, body: Any, content_type: str) -> int:
        request = urllib.request.Request(threaded_local_cluster.url + path, method=method,
                                         data=json.dumps(body).encode(),
                                         headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    send("POST", "/api/v1/namespaces/default/configmaps",
         {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}, "application/json")
    status = send("PATCH", "/api/v1/namespaces/default/configmaps/c", patch,
                  "application/merge-patch+json")
    assert status < 500


async def test_field_validation_strict_warn_and_ignore(widgets: LocalCluster) -> None:
    body = widget("w")
    body["spec"]["bogus"] = 1
    status, answer, _ = await call(widgets, "POST", WIDGETS + "?fieldValidation=Strict", body)
    assert (status, answer["reason"]) == (400, "BadRequest")
    assert 'unknown field "spec.bogus"' in answer["message"]
    status, answer, response = await call(widgets, "POST", WIDGETS + "?fieldValidation=Warn",
                                          body)
    assert status == 201 and "bogus" not in answer["spec"]
    assert 'unknown field \\"spec.bogus\\"' in response.headers["Warning"]
    status, _, response = await call(widgets, "PATCH", WIDGETS + "/w?fieldValidation=Ignore",
                                     {"spec": {"bogus": 2}}, headers=MERGE)
    assert status == 200 and "Warning" not in response.headers


async def test_dry_run_validates_and_stores_nothing(widgets: LocalCluster) -> None:
    status, answer, _ = await call(widgets, "POST", WIDGETS + "?dryRun=All", widget("w"))
    assert status == 201 and answer["spec"]["replicas"] == 1
    status, _, _ = await call(widgets, "GET", WIDGETS + "/w")
    assert status == 404
    status, answer, _ = await call(widgets, "POST", WIDGETS + "?dryRun=All",
                                   widget("w", size="huge"))
    assert (status, answer["reason"]) == (422, "Invalid")
    await call(widgets, "POST", WIDGETS, widget("w"))
    status, answer, _ = await call(widgets, "PATCH", WIDGETS + "/w?dryRun=All",
                                   {"spec": {"replicas": 5}}, headers=MERGE)
    assert status == 200 and answer["spec"]["replicas"] == 5
    _, stored, _ = await call(widgets, "GET", WIDGETS + "/w")
    assert stored["spec"]["replicas"] == 1


async def test_strategic_merge_patch_of_a_configmap(local_cluster: LocalCluster) -> None:
    path = "/api/v1/namespaces/default/configmaps"
    await call(local_cluster, "POST", path, {"apiVersion": "v1", "kind": "ConfigMap",
                                             "metadata": {"name": "c", "finalizers": ["a"]},
                                             "data": {"x": "1"}})
    status, answer, _ = await call(
        local_cluster, "PATCH", path + "/c", {"metadata": {"finalizers": ["b"]},
                                              "data": {"y": "2"}},
        headers={"Content-Type": "application/strategic-merge-patch+json"})
    assert status == 200
    assert answer["metadata"]["finalizers"] == ["a", "b"]
    assert answer["data"] == {"x": "1", "y": "2"}


async def test_owner_deletion_cascades_in_the_background(widgets: LocalCluster) -> None:
    _, owner, _ = await call(widgets, "POST", WIDGETS, widget("owner"))
    child = widget("child")
    child["metadata"]["ownerReferences"] = [{"apiVersion": "widgets.example.dev/v1",
                                             "kind": "Widget", "name": "owner",
                                             "uid": owner["metadata"]["uid"]}]
    assert (await call(widgets, "POST", WIDGETS, child))[0] == 201
    assert (await call(widgets, "DELETE", WIDGETS + "/owner"))[0] == 200
    for _ in range(50):
        if (await call(widgets, "GET", WIDGETS + "/child"))[0] == 404:
            break
        await asyncio.sleep(0.01)
    assert (await call(widgets, "GET", WIDGETS + "/child"))[0] == 404


async def test_namespace_terminates_until_finalized() -> None:
    # Without the namespace controller, as a bare kube-apiserver (199); with it, see
    # test_namespace_controller.py.
    async with LocalCluster(namespace_controller=False) as local_cluster:
        await _terminates_until_finalized(local_cluster)


async def _terminates_until_finalized(local_cluster: LocalCluster) -> None:
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gone"}}
    await call(local_cluster, "POST", "/api/v1/namespaces", namespace)
    status, terminating, _ = await call(local_cluster, "DELETE", "/api/v1/namespaces/gone")
    assert status == 200 and terminating["status"]["phase"] == "Terminating"
    status, answer, _ = await call(local_cluster, "POST", "/api/v1/namespaces/gone/configmaps",
                                   {"apiVersion": "v1", "kind": "ConfigMap",
                                    "metadata": {"name": "c"}})
    assert (status, answer["reason"]) == (403, "Forbidden")
    terminating["spec"]["finalizers"] = []
    status, _, _ = await call(local_cluster, "PUT", "/api/v1/namespaces/gone/finalize",
                              terminating)
    assert status == 200
    assert (await call(local_cluster, "GET", "/api/v1/namespaces/gone"))[0] == 404


async def test_limits_media_types_and_unknown_paths(local_cluster: LocalCluster) -> None:
    path = "/api/v1/namespaces/default/configmaps"
    big = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"},
           "data": {"x": "a" * (4 * 1024 * 1024)}}
    status, answer, _ = await call(local_cluster, "POST", path, big)
    assert (status, answer["reason"]) == (413, "RequestEntityTooLarge")
    status, answer, _ = await call(local_cluster, "GET", path,
                                   headers={"Accept": "application/xml"})
    assert (status, answer["reason"]) == (406, "NotAcceptable")
    status, answer, response = await call(local_cluster, "GET", "/api/v1/pods")
    assert status == 404 and answer == "404 page not found\n"
    assert response.content_type == "text/plain"


def _named(data: bytes, number: int) -> dict[str, bytes]:
    """The (name, value) entries of a gnostic Named* list in field `number` of `data`."""
    found = {}
    for field, value in protobuf._fields(data):
        if field == number:
            entry = dict(protobuf._fields(value))
            found[entry[1].decode()] = entry.get(2, b"")
    return found


async def test_openapi_negotiates_json_or_v2_protobuf_as_real_servers(
        widgets: LocalCluster) -> None:
    proto_v2 = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"

    async def fetch(path: str, accept: str) -> tuple[int, str, bytes]:
        async with aiohttp.ClientSession() as session, session.get(
                widgets.url + path, headers={"Accept": accept}) as response:
            return response.status, response.headers["Content-Type"], await response.read()

    # kubectl's only Accept for v2 (client-side validation of a List, kinds v3 lacks).
    status, content_type, document = await fetch("/openapi/v2", proto_v2)
    assert (status, content_type) == (200, openapi_protobuf.MEDIA_TYPE)
    fields = dict(protobuf._fields(document))
    assert fields[1] == b"2.0"
    definitions = _named(fields[9], 1)
    widget_schema = dict(protobuf._fields(definitions["dev.example.widgets.v1.Widget"]))
    extensions = _named(definitions["dev.example.widgets.v1.Widget"], 31)
    assert json.loads(dict(protobuf._fields(
        extensions["x-kubernetes-group-version-kind"]))[2]) == [
            {"group": "widgets.example.dev", "kind": "Widget", "version": "v1"}]
    assert set(_named(widget_schema[25], 1)) >= {"apiVersion", "kind", "metadata", "spec"}
    item = _named(fields[8], 2)[
        "/apis/widgets.example.dev/v1/namespaces/{namespace}/widgets/{name}"]
    patch = dict(protobuf._fields(item))[8]
    query_names = set()
    for number, parameter in protobuf._fields(patch):
        if number == 8 and (non_body := dict(protobuf._fields(
                dict(protobuf._fields(parameter))[1])).get(2)) is not None:
            sub = dict(protobuf._fields(dict(protobuf._fields(non_body)).get(3, b"")))
            query_names.add(sub.get(4, b"").decode())
    assert "fieldValidation" in query_names

    for accept in ("application/json", "*/*", f"application/json;q=0.9, {proto_v2};q=0.1",
                   "application/yaml, application/json"):
        status, content_type, body = await fetch("/openapi/v2", accept)
        assert (status, content_type, json.loads(body)["swagger"]) == (
            200, "application/json", "2.0"), accept
    status, content_type, _ = await fetch("/openapi/v2", f"application/json;q=0.1, {proto_v2}")
    assert (status, content_type) == (200, openapi_protobuf.MEDIA_TYPE)
    for path, accept in (("/openapi/v2", "application/yaml"), ("/openapi/v2", "text/html"),
                         ("/openapi/v3", "application/com.github.proto-openapi.spec.v3@v1.0"
                                         "+protobuf")):
        status, _, _ = await fetch(path, accept)
        assert status == 406, (path, accept)
    status, _, body = await fetch("/openapi/v3", "application/json, */*")
    assert status == 200 and "apis/widgets.example.dev/v1" in json.loads(body)["paths"]


async def test_watch_older_than_the_window_expires(widget_crd: dict[str, Any]) -> None:
    async with LocalCluster(window=5) as cluster:
        cluster.apply(resources.CRDS, widget_crd)
        for index in range(10):
            await call(cluster, "POST", WIDGETS, widget(f"w{index}"))
        status, text, _ = await call(cluster, "GET", WIDGETS + "?watch=1&resourceVersion=6")
        event = json.loads(text.splitlines()[0] if isinstance(text, str) else json.dumps(text))
        assert status == 200 and event["type"] == "ERROR" and event["object"]["code"] == 410


async def test_watch_delivers_changes_and_honours_the_timeout(widgets: LocalCluster) -> None:
    _, listing, _ = await call(widgets, "GET", WIDGETS)
    rv = listing["metadata"]["resourceVersion"]
    async with aiohttp.ClientSession() as session, session.get(widgets.url + WIDGETS, params={
            "watch": "true", "resourceVersion": rv, "timeoutSeconds": "1",
            "allowWatchBookmarks": "true"}) as response:
        await call(widgets, "POST", WIDGETS, widget("w"))
        await call(widgets, "PATCH", WIDGETS + "/w", {"spec": {"replicas": 2}},
                   headers=MERGE)
        await call(widgets, "DELETE", WIDGETS + "/w")
        events = [json.loads(line) async for line in response.content]
    assert [e["type"] for e in events if e["type"] != "BOOKMARK"] == [
        "ADDED", "MODIFIED", "DELETED"]
    assert events[-1]["type"] == "BOOKMARK"


async def test_the_audit_buffer_is_bounded_and_the_audit_file_gets_every_request(
        tmp_path: pathlib.Path) -> None:
    log = tmp_path / "audit.jsonl"
    async with LocalCluster(audit_buffer=5, audit_log=log) as cluster:
        for _ in range(20):
            await call(cluster, "GET", "/api/v1/namespaces")
        await call(cluster, "GET", "/version")
        assert len(cluster.audit) == 5
        assert [record["path"] for record in cluster.audit][-2:] == [
            "/api/v1/namespaces", "/version"]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 21
    assert {(r["verb"], r["resource"], r["code"]) for r in records[:20]} == {
        ("list", "namespaces", 200)}


async def test_a_watch_is_in_the_audit_log_while_it_streams(
        tmp_path: pathlib.Path, widget_crd: dict[str, Any]) -> None:
    log = tmp_path / "audit.jsonl"

    def watches() -> list[dict[str, Any]]:
        records = [json.loads(line) for line in log.read_text().splitlines()]
        return [record for record in records if record["verb"] == "watch"]

    async with LocalCluster(audit_log=log) as cluster:
        cluster.apply(resources.CRDS, widget_crd)
        async with aiohttp.ClientSession() as session, session.get(
                cluster.url + WIDGETS, params={"watch": "true", "timeoutSeconds": "30",
                                               "resourceVersion": "0"}) as response:
            assert response.status == 200
            for _ in range(100):
                if watches():
                    break
                await asyncio.sleep(0.01)
            [opened] = watches()
            assert (opened["code"], opened["resource"], opened["namespace"]) == (
                200, "widgets", "default")
            assert "resourceVersion=0" in opened["query"]
            assert cluster.audit[-1] == opened
        refused, _, _ = await call(cluster, "GET", WIDGETS + "?watch=1&labelSelector=a%20b%20c")
        assert refused == 400
    # The ended watch is not written twice; a refused one is written with its code.
    assert [record["code"] for record in watches()] == [200, 400]


async def test_transition_rules_cost_nothing_on_create(
        local_cluster: LocalCluster, widget_crd: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    spec = widget_crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["x-kubernetes-validations"] = [{"rule": "self.size == oldSelf.size",
                                         "message": "size is immutable"}]
    local_cluster.apply(resources.CRDS, widget_crd)
    converted: list[Any] = []
    to_cel = cel.to_cel
    monkeypatch.setattr(cel, "to_cel", lambda value: converted.append(value) or to_cel(value))
    status, _, _ = await call(local_cluster, "POST", WIDGETS, widget("w"))
    assert (status, converted) == (201, [])   # no old object: no rule runs, nothing converted
    status, body, _ = await call(local_cluster, "PATCH", WIDGETS + "/w",
                                 {"spec": {"size": "large"}}, headers=MERGE)
    assert status == 422
    assert body["details"]["causes"][0]["message"] == 'Invalid value: "object": size is immutable'
    assert converted


async def test_crd_deletion_waits_for_instance_finalizers(widgets: LocalCluster) -> None:
    held = widget("held")
    held["metadata"]["finalizers"] = ["example.dev/hold"]
    await call(widgets, "POST", WIDGETS, held)
    crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.widgets.example.dev"
    assert (await call(widgets, "DELETE", crd_path))[0] == 200
    assert (await call(widgets, "GET", crd_path))[0] == 200     # still terminating
    status, _, _ = await call(widgets, "PATCH", WIDGETS + "/held",
                              {"metadata": {"finalizers": None}}, headers=MERGE)
    assert status == 200
    assert (await call(widgets, "GET", crd_path))[0] == 404
    assert (await call(widgets, "GET", WIDGETS))[0] == 404


def test_threaded_cluster_serves_synchronous_callers(
        threaded_local_cluster: ThreadedCluster) -> None:
    import urllib.request

    with urllib.request.urlopen(threaded_local_cluster.url + "/api/v1/namespaces") as response:
        names = [item["metadata"]["name"] for item in json.load(response)["items"]]
    assert "default" in names
    assert threaded_local_cluster.kubeconfig_path.read_text().count("http://127.0.0.1:") == 1
    assert threaded_local_cluster.audit[-1]["verb"] == "list"


def test_store_entries_are_not_shared_with_readers() -> None:
    db = store.Store()
    entry = db.put("k", ("", "a"), {"metadata": {"name": "a"}, "spec": {"x": [1]}})
    copy = entry.thaw()
    copy["spec"]["x"].append(2)
    assert db.get("k", ("", "a")).obj["spec"]["x"] == [1]  # type: ignore[union-attr]
