"""The namespace lifecycle controller over real HTTP: a deleted Namespace is emptied (its
objects' own finalizers respected, watchers told of each deletion), then finalized and
gone; `kubectl delete namespace` returns as on kind; off, namespaces stay Terminating."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import shutil
import subprocess
import time
from typing import Any, Final

import aiohttp
import pytest
import yaml

from capguard.localcluster import LocalCluster, ThreadedCluster, command, resources

JSON: Final = {"Content-Type": "application/json"}
MERGE: Final = {"Content-Type": "application/merge-patch+json"}
HOLD: Final = "example.dev/hold"
KUBECTL: Final = shutil.which("kubectl")


def widgets_path(namespace: str) -> str:
    return f"/apis/widgets.example.dev/v1/namespaces/{namespace}/widgets"


def configmaps_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps"


def widget(name: str, **metadata: Any) -> dict[str, Any]:
    return {"apiVersion": "widgets.example.dev/v1", "kind": "Widget",
            "metadata": {"name": name, **metadata}, "spec": {"size": "small"}}


def configmap(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
            "data": {"k": "v"}}


async def call(cluster: LocalCluster, method: str, path: str, body: Any = None, *,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body)
    async with aiohttp.ClientSession() as session, session.request(
            method, cluster.url + path, data=data, headers=headers or JSON) as response:
        raw = await response.read()
        return response.status, json.loads(raw) if raw.startswith(b"{") else raw.decode()


async def make_namespace(cluster: LocalCluster, name: str) -> None:
    status, _ = await call(cluster, "POST", "/api/v1/namespaces",
                           {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    assert status == 201


async def gone(cluster: LocalCluster, path: str, *, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while (status := (await call(cluster, "GET", path))[0]) != 404:
        assert time.monotonic() < deadline, f"{path} still there ({status})"
        await asyncio.sleep(0.02)


@pytest.fixture
async def widgets(local_cluster: LocalCluster, widget_crd: dict[str, Any]) -> LocalCluster:
    local_cluster.apply(resources.CRDS, widget_crd)
    return local_cluster


async def test_a_deleted_namespace_is_emptied_then_goes(widgets: LocalCluster) -> None:
    await make_namespace(widgets, "doomed")
    await make_namespace(widgets, "bystander")
    for index in range(3):
        assert (await call(widgets, "POST", widgets_path("doomed"), widget(f"w{index}")))[0] == 201
        assert (await call(widgets, "POST", configmaps_path("doomed"),
                           configmap(f"c{index}")))[0] == 201
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
             "metadata": {"name": "l"}, "spec": {}}
    assert (await call(widgets, "POST",
                       "/apis/coordination.k8s.io/v1/namespaces/doomed/leases", lease))[0] == 201
    assert (await call(widgets, "POST", widgets_path("bystander"), widget("kept")))[0] == 201
    _, listed = await call(widgets, "GET", widgets_path("doomed"))

    async with aiohttp.ClientSession() as session, session.get(
            widgets.url + widgets_path("doomed"),
            params={"watch": "true", "resourceVersion": listed["metadata"]["resourceVersion"]}
    ) as stream:
        status, answer = await call(widgets, "DELETE", "/api/v1/namespaces/doomed")
        assert status == 200 and answer["status"]["phase"] == "Terminating"
        deleted: set[str] = set()
        async with asyncio.timeout(5):
            while len(deleted) < 3:
                event = json.loads(await stream.content.readline())
                if event["type"] == "DELETED":
                    deleted.add(event["object"]["metadata"]["name"])
        assert deleted == {"w0", "w1", "w2"}

    await gone(widgets, "/api/v1/namespaces/doomed")
    _, left = await call(widgets, "GET", configmaps_path("doomed"))
    assert left["items"] == []
    _, left = await call(widgets, "GET", "/apis/coordination.k8s.io/v1/leases")
    assert left["items"] == []
    _, kept = await call(widgets, "GET", "/apis/widgets.example.dev/v1/widgets")
    assert [item["metadata"]["name"] for item in kept["items"]] == ["kept"]
    assert (await call(widgets, "GET", "/api/v1/namespaces/bystander"))[0] == 200


async def test_a_foreign_finalizer_holds_the_namespace_until_removed(
        widgets: LocalCluster) -> None:
    await make_namespace(widgets, "held")
    assert (await call(widgets, "POST", widgets_path("held"),
                       widget("stuck", finalizers=[HOLD])))[0] == 201
    assert (await call(widgets, "POST", configmaps_path("held"), configmap("c")))[0] == 201
    assert (await call(widgets, "DELETE", "/api/v1/namespaces/held"))[0] == 200

    await gone(widgets, configmaps_path("held") + "/c")
    deadline = time.monotonic() + 5
    while True:
        _, namespace = await call(widgets, "GET", "/api/v1/namespaces/held")
        conditions = {c["type"]: c for c in namespace["status"].get("conditions") or []}
        if "NamespaceContentRemaining" in conditions:
            break
        assert time.monotonic() < deadline, namespace
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)   # and it stays so
    _, namespace = await call(widgets, "GET", "/api/v1/namespaces/held")
    assert namespace["status"]["phase"] == "Terminating"
    assert namespace["spec"]["finalizers"] == ["kubernetes"]
    conditions = {c["type"]: c for c in namespace["status"]["conditions"]}
    assert conditions["NamespaceContentRemaining"]["status"] == "True"
    assert conditions["NamespaceContentRemaining"]["reason"] == "SomeResourcesRemain"
    assert conditions["NamespaceContentRemaining"]["message"] == (
        "Some resources are remaining: widgets.widgets.example.dev has 1 resource instances")
    assert conditions["NamespaceFinalizersRemaining"]["message"] == (
        f"Some content in the namespace has finalizers remaining: {HOLD} in 1 resource "
        "instances")
    assert conditions["NamespaceDeletionContentFailure"]["status"] == "False"
    _, stuck = await call(widgets, "GET", widgets_path("held") + "/stuck")
    assert stuck["metadata"]["deletionTimestamp"]
    status, refused = await call(widgets, "POST", configmaps_path("held"), configmap("new"))
    assert (status, refused["reason"]) == (403, "Forbidden")

    status, _ = await call(widgets, "PATCH", widgets_path("held") + "/stuck",
                           {"metadata": {"finalizers": None}}, headers=MERGE)
    assert status == 200
    await gone(widgets, "/api/v1/namespaces/held")


async def test_a_large_namespace_goes_in_batches_without_stalling_or_crashing(
        widgets: LocalCluster, caplog: pytest.LogCaptureFixture) -> None:
    await make_namespace(widgets, "big")
    count = 1500
    for index in range(count):
        widgets.apply(resources.CONFIGMAPS, {**configmap(f"c{index:04}"),
                                             "metadata": {"name": f"c{index:04}",
                                                          "namespace": "big"}})
    caplog.set_level(logging.ERROR)
    assert (await call(widgets, "DELETE", "/api/v1/namespaces/big"))[0] == 200
    # While the controller sweeps, clients are served and may delete the same objects.
    racing = [call(widgets, "DELETE", configmaps_path("big") + f"/c{index:04}")
              for index in range(0, count, 7)]
    answers = await asyncio.gather(*racing, call(widgets, "GET", "/healthz"))
    assert all(status in (200, 404) for status, _ in answers[:-1])
    await gone(widgets, "/api/v1/namespaces/big", within=20)
    assert widgets.db.count(resources.CONFIGMAPS.storage_key) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_off_a_deleted_namespace_stays_terminating(tmp_path: pathlib.Path) -> None:
    async with LocalCluster(kubeconfig_path=tmp_path / "kubeconfig",
                            namespace_controller=False) as cluster:
        await make_namespace(cluster, "stays")
        assert (await call(cluster, "POST", configmaps_path("stays"), configmap("c")))[0] == 201
        assert (await call(cluster, "DELETE", "/api/v1/namespaces/stays"))[0] == 200
        await asyncio.sleep(0.3)
        _, namespace = await call(cluster, "GET", "/api/v1/namespaces/stays")
        assert namespace["status"] == {"phase": "Terminating"}
        assert (await call(cluster, "GET", configmaps_path("stays") + "/c"))[0] == 200


def test_the_command_line_switch() -> None:
    assert command.parser().parse_args([]).namespace_controller is True
    assert command.parser().parse_args(
        ["--no-namespace-controller"]).namespace_controller is False


@pytest.mark.kubectl
@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not on PATH")
def test_kubectl_delete_namespace_returns_with_it_gone(
        threaded_local_cluster: ThreadedCluster, widget_crd: dict[str, Any],
        tmp_path: pathlib.Path) -> None:
    assert KUBECTL is not None
    threaded_local_cluster.call(threaded_local_cluster.cluster.apply, resources.CRDS, widget_crd)
    env = {**os.environ, "KUBECONFIG": str(threaded_local_cluster.kubeconfig_path)}

    def kubectl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([KUBECTL, "--cache-dir", str(tmp_path / "cache"), *args],
                              input=stdin, capture_output=True, text=True, env=env,
                              timeout=30, check=False)

    assert kubectl("create", "namespace", "shortlived").returncode == 0
    manifests = yaml.safe_dump_all([widget(f"w{index}") for index in range(3)])
    created = kubectl("apply", "-n", "shortlived", "-f", "-", stdin=manifests)
    assert created.returncode == 0, created.stderr
    assert kubectl("create", "configmap", "c", "-n", "shortlived").returncode == 0

    started = time.monotonic()
    deleted = kubectl("delete", "namespace", "shortlived", "--timeout=20s")
    elapsed = time.monotonic() - started
    assert deleted.returncode == 0, deleted.stderr
    assert 'namespace "shortlived" deleted' in deleted.stdout
    assert elapsed < 5, f"kubectl delete namespace took {elapsed:.1f}s"

    missing = kubectl("get", "namespace", "shortlived")
    assert "(NotFound)" in missing.stderr
    left = kubectl("get", "widgets", "--all-namespaces", "-o", "name")
    assert left.returncode == 0 and left.stdout == "", left
