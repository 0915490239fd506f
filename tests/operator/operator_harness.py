"""The real operator (Kopf, reconcile loop, driver, Lease) against the embedded API server.

`cluster` starts a `LocalCluster` with the CRDs from `crds/`; `kube` is a client for the
test's own reads and writes; `start_operator` runs `capguard.operator.serve` in this
event loop with compressed times and stops it at the end of the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import pathlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from capguard import operator
from capguard.kube import client
from capguard.localcluster import LocalCluster

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
NAMESPACE = "default"

FAST: dict[str, Any] = dict(
    metrics_host="127.0.0.1", metrics_port=0, load_time=0.3, drain_time=0.1,
    reconcile_interval=0.2, leader_election=False, identity="test-operator", seed=1,
    engine_driver="simulated",
)


@pytest.fixture
async def cluster(tmp_path: pathlib.Path) -> AsyncIterator[LocalCluster]:
    async with LocalCluster(crds_dir=CRDS, kubeconfig_path=tmp_path / "kubeconfig") as found:
        yield found


class Kube:
    """What a person (or kubectl) does, over HTTP, in one namespace."""

    def __init__(self, api: client.Api, session: aiohttp.ClientSession) -> None:
        self.api = api
        self.session = session

    async def create(self, resource: client.Resource, body: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": resource.api_version, **body}
        body.setdefault("metadata", {}).setdefault("namespace", NAMESPACE)
        return await self.api.create(resource, namespace=NAMESPACE, body=body)

    async def get(self, resource: client.Resource, name: str) -> dict[str, Any]:
        return await self.api.get(resource, namespace=NAMESPACE, name=name)

    async def patch(self, resource: client.Resource, name: str, patch: dict[str, Any],
                    subresource: str | None = None) -> dict[str, Any]:
        return await self.api.merge_patch(resource, namespace=NAMESPACE, name=name,
                                          patch=patch, subresource=subresource)

    async def items(self, resource: client.Resource) -> list[dict[str, Any]]:
        return [item async for item in self.api.list(resource, namespace=NAMESPACE)]

    async def events(self, reason: str) -> list[dict[str, Any]]:
        return [e for e in await self.items(client.EVENTS) if e.get("reason") == reason]

    async def engines(self, *names: str, pool: str = "h100-a", **spec: Any) -> None:
        for name in names:
            await self.create(client.ENGINES, {
                "kind": "InferenceEngine", "metadata": {"name": name},
                "spec": {"pool": pool, **spec}})

    async def model(self, name: str, replicas: int, **spec: Any) -> None:
        await self.create(client.MODELS, {
            "kind": "ModelCapacity", "metadata": {"name": name},
            "spec": {"replicas": replicas, **spec}})

    async def breaker(self, name: str, **spec: Any) -> None:
        await self.create(client.BREAKERS, {
            "kind": "CircuitBreaker", "metadata": {"name": name}, "spec": spec})

    async def phases(self) -> dict[str, str]:
        return {e["metadata"]["name"]: (e.get("status") or {}).get("phase", "")
                for e in await self.items(client.ENGINES)}


@pytest.fixture
async def kube(cluster: LocalCluster) -> AsyncIterator[Kube]:
    async with aiohttp.ClientSession() as session:
        api = client.Api()
        api.connect(session=session, server=cluster.url)
        yield Kube(api, session)


async def eventually(
    check: Callable[[], Awaitable[Any]], *, timeout: float = 10.0, interval: float = 0.05
) -> Any:
    """Poll until `check` returns something truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s; last seen: {found!r}")
        await asyncio.sleep(interval)


@dataclasses.dataclass
class Started:
    """An operator running in its own thread and event loop, as it would in its own process:
    Kopf cancels every task created after it starts, so it must not share the test's loop."""

    handles: operator.Running
    stop: threading.Event
    thread: threading.Thread
    errors: list[BaseException]

    async def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.handles.metrics_port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return await response.text()

    async def halt(self) -> None:
        self.stop.set()
        await asyncio.to_thread(self.thread.join, 20)
        assert not self.thread.is_alive(), "the operator did not stop"
        if self.errors:
            raise self.errors[0]


StartOperator = Callable[..., Awaitable[Started]]


@pytest.fixture
async def start_operator(cluster: LocalCluster) -> AsyncIterator[StartOperator]:
    started: list[Started] = []

    async def start(*, api: Callable[[], client.Api] | None = None,
                    **overrides: Any) -> Started:
        options = operator.Options(kubeconfig=str(cluster.kubeconfig_path),
                                   **{**FAST, **overrides})
        running: list[operator.Running] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def serve() -> None:
            try:
                asyncio.run(operator.serve(options, stop_flag=stop, running=running,
                                           api=api() if api else None))
            except BaseException as error:
                errors.append(error)

        thread = threading.Thread(target=serve, name=f"operator {options.identity}",
                                  daemon=True)
        thread.start()
        await eventually(lambda: _ready(running, errors), timeout=10)
        one = Started(running[0], stop, thread, errors)
        started.append(one)
        return one

    yield start
    for one in started:
        if one.thread.is_alive():
            with contextlib.suppress(Exception):
                await one.halt()


async def _ready(running: list[operator.Running], errors: list[BaseException]) -> bool:
    if errors:
        raise errors[0]  # surface the operator's crash in the test
    return bool(running)


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    """A status condition by type ({} when absent)."""
    for found in (body.get("status") or {}).get("conditions") or []:
        if found["type"] == kind:
            return dict(found)
    return {}


def metric(text: str, name: str, **labels: str) -> float | None:
    """One sample's value from a Prometheus exposition, or None when absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        series, _, rest = head.partition("{")
        if series != name:
            continue
        found = dict(
            part.split("=", 1) for part in rest.rstrip("}").split(",") if "=" in part)
        if all(found.get(k, "").strip('"') == v for k, v in labels.items()):
            return float(value)
    return None


__all__ = ["FAST", "NAMESPACE", "Kube", "Started", "condition", "eventually", "metric"]
