"""The demo's mirror (`capguard.demo.mirror`) on the embedded API server: it lists, then
watches, and lists again whenever a watch ends. What that fresh listing lacks was
deleted while no watch was open, and the mirror drops it too (it used to keep it)."""

from __future__ import annotations

import asyncio
import pathlib

from capguard.demo import connection, mirror
from capguard.localcluster import LocalCluster, objects

ROOT = pathlib.Path(__file__).resolve().parents[2]
NAMESPACE = "default"


def _engine(name: str) -> dict[str, object]:
    return {"apiVersion": "capguard.dev/v1alpha1", "kind": "InferenceEngine",
            "metadata": {"name": name, "labels": {"capguard.dev/pool": "a"}},
            "spec": {"pool": "a", "capacityUnits": 1}}


async def _until(check: object, what: str, timeout: float = 10) -> None:
    assert callable(check)
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.05)


async def test_an_object_deleted_while_no_watch_was_open_leaves_the_mirror(
        tmp_path: pathlib.Path) -> None:
    async with LocalCluster(kubeconfig_path=tmp_path / "kubeconfig",
                            crds_dir=ROOT / "crds") as cluster:
        engines = cluster.api.registry.get("capguard.dev", "v1alpha1", "inferenceengines")
        assert engines is not None and cluster.kubeconfig_path is not None
        for name in ("e-1", "e-2"):
            cluster.api.create(engines, _engine(name), namespace=NAMESPACE,
                               options=objects.WriteOptions())
        link = await connection.connect(cluster.kubeconfig_path)
        seen = mirror.Mirror(connection=link, namespace=NAMESPACE)
        following = asyncio.create_task(seen.run())
        try:
            await asyncio.wait_for(seen.ready(), timeout=10)
            assert set(seen.engines) == {"e-1", "e-2"}
            # Every watch ends, and e-1 goes before the mirror lists again: no DELETED
            # event reaches it, only the listing without e-1.
            cluster.db.close_watchers()
            cluster.api.delete(engines, namespace=NAMESPACE, name="e-1",
                               options=objects.DeleteOptions())
            await _until(lambda: set(seen.engines) == {"e-2"},
                         f"the mirror drops e-1 on its next listing: {set(seen.engines)}")
            assert {e.name for e in seen.fleet().engines.values()} == {"e-2"}
        finally:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
            await link.aclose()
