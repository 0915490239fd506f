"""`capguard gateway` as a process, against the embedded API server and real upstreams.

Each test starts the embedded server in its own event loop, OpenAI-like upstream HTTP
servers that count what they were sent, and the gateway as a subprocess that follows the
engines the test writes through the API (status and heartbeat Lease included, as an engine
agent writes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import pathlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from capguard.kube import client, heartbeats
from capguard.localcluster import LocalCluster
from e2e import harness

from . import processes

ROOT = pathlib.Path(__file__).resolve().parents[2]
NAMESPACE = "default"
HEARTBEAT_INTERVAL = 10.0  # the agent's default, which a Lease states


# --- what the tests start -------------------------------------------------------------


class Upstream:
    """An OpenAI-compatible server on loopback that answers `status` and counts requests."""

    def __init__(self, *, name: str, status: int = 200, delay: float = 0.0) -> None:
        self.name = name
        self.status = status
        self.delay = delay
        self.seen: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> Upstream:
        app = web.Application()
        app.router.add_post("/v1/completions", self._answer)
        app.router.add_post("/v1/chat/completions", self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def _answer(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append(body)
        await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.json_response({"error": {"message": f"{self.name} is busy",
                                                "type": "rate_limit", "code": "busy"}},
                                     status=self.status)
        return web.json_response({"id": f"cmpl-{len(self.seen)}", "object": "text_completion",
                                  "model": body["model"], "served_by": self.name,
                                  "choices": [{"index": 0, "text": "ok"}]})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclasses.dataclass
class Gateway:
    process: asyncio.subprocess.Process
    url: str
    log: pathlib.Path

    async def post(self, session: aiohttp.ClientSession, body: Any,
                   path: str = "/v1/completions") -> tuple[int, Any]:
        async with session.post(self.url + path, json=body) as response:
            return response.status, await response.json(content_type=None)

    async def metrics(self, session: aiohttp.ClientSession) -> harness.MetricsPage:
        async with session.get(self.url + "/metrics") as response:
            return harness.MetricsPage.parse(await response.text())

    async def routable(self, session: aiohttp.ClientSession, model: str) -> float:
        page = await self.metrics(session)
        return page.total("capguard_gateway_routable_engines", model=model)


@contextlib.asynccontextmanager
async def running_gateway(kubeconfig: pathlib.Path, directory: pathlib.Path,
                          *flags: str) -> AsyncIterator[Gateway]:
    """`python -m capguard.serving.gateway` on a free port; stopped (and its log shown on
    failure) at the end."""
    log = directory / "gateway.log"
    with log.open("w") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "capguard.serving.gateway", f"--kubeconfig={kubeconfig}",
            f"--namespace={NAMESPACE}", "--port=0", *flags,
            stdout=asyncio.subprocess.PIPE, stderr=stderr, env=harness.clean_env())
    try:
        assert process.stdout is not None
        first = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
        assert first.startswith("capguard gateway listening at http://"), (
            f"the gateway did not start: {first!r} {log.read_text()}")
        yield Gateway(process=process, url=first.split(" at ")[1].strip(), log=log)
    except BaseException:
        print(f"----- gateway log -----\n{log.read_text()[-4000:]}")
        raise
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), timeout=10)


async def eventually(check: Callable[[], Awaitable[Any]], *, timeout: float = 15.0) -> Any:
    """Poll until `check` returns something truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s; last seen: {found!r}")
        await asyncio.sleep(0.05)


def now_rfc3339(*, ago: float = 0.0) -> str:
    moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=ago)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Engines:
    """InferenceEngines written through the API, their status and heartbeat Lease as an
    engine agent writes them."""

    def __init__(self, api: client.Api) -> None:
        self.api = api

    async def serving(self, name: str, *, model: str, endpoint: str,
                      heartbeat: str | None = "now", units: int = 1) -> None:
        await self.api.create(client.ENGINES, namespace=NAMESPACE, body={
            "apiVersion": client.ENGINES.api_version, "kind": "InferenceEngine",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"pool": "pool-a", "capacityUnits": units, "modelRef": model}})
        status: dict[str, Any] = {"phase": "Serving", "model": model, "endpoint": endpoint}
        if heartbeat is not None:
            status["lastHeartbeatTime"] = now_rfc3339() if heartbeat == "now" else heartbeat
        await self.status(name, **status)

    async def spec(self, name: str, **spec: Any) -> None:
        await self.api.merge_patch(client.ENGINES, namespace=NAMESPACE, name=name,
                                   patch={"spec": spec})

    async def status(self, name: str, **status: Any) -> None:
        await self.api.merge_patch(client.ENGINES, namespace=NAMESPACE, name=name,
                                   patch={"status": status}, subresource="status")

    async def lease(self, name: str, *, ago: float = 0.0, labelled: bool = True,
                    earlier: bool = False) -> None:
        """The engine's Lease as its agent creates it, renewed `ago` seconds ago (without
        the heartbeat label: any other Lease of the same name; ``earlier``: the Lease of
        an earlier engine of that name, another uid, not yet garbage-collected)."""
        engine = await self.api.get(client.ENGINES, namespace=NAMESPACE, name=name)
        if earlier:
            engine = {**engine, "metadata": {"name": name, "uid": f"earlier-{name}"}}
        body = heartbeats.lease(engine, holder=f"{name}-agent", interval=HEARTBEAT_INTERVAL,
                                now=time.time() - ago)
        if not labelled:
            del body["metadata"]["labels"]
        await self.api.create(client.LEASES, namespace=NAMESPACE, body=body)

    async def renew(self, name: str) -> None:
        """Renew the engine's Lease now, as its agent does every interval."""
        await self.api.merge_patch(client.LEASES, namespace=NAMESPACE, name=name,
                                   patch=heartbeats.renewal(holder=f"{name}-agent",
                                                            interval=HEARTBEAT_INTERVAL,
                                                            now=time.time()))


@dataclasses.dataclass
class World:
    kubeconfig: pathlib.Path
    server: str
    directory: pathlib.Path
    engines: Engines
    session: aiohttp.ClientSession
    upstreams: list[Upstream]

    async def upstream(self, name: str, *, status: int = 200, delay: float = 0.0) -> Upstream:
        started = await Upstream(name=name, status=status, delay=delay).start()
        self.upstreams.append(started)
        return started

    def gateway(self, *flags: str) -> contextlib.AbstractAsyncContextManager[Gateway]:
        return running_gateway(self.kubeconfig, self.directory, *flags)


@contextlib.asynccontextmanager
async def started_world(directory: pathlib.Path, **cluster: Any) -> AsyncIterator[World]:
    """The embedded API server and a client of it; upstreams started in it stop with it."""
    async with (LocalCluster(crds_dir=ROOT / "crds", kubeconfig_path=directory / "kubeconfig",
                             **cluster) as cluster,
                aiohttp.ClientSession() as session):
        api = client.Api()
        api.connect(session=session, server=cluster.url)
        found = World(kubeconfig=cluster.kubeconfig_path, server=cluster.url,
                      directory=directory,
                      engines=Engines(api), session=session, upstreams=[])
        try:
            yield found
        finally:
            for upstream in found.upstreams:
                await upstream.stop()


@pytest.fixture
async def world(tmp_path: pathlib.Path) -> AsyncIterator[World]:
    async with started_world(tmp_path) as found:
        yield found


def completion(model: str) -> dict[str, Any]:
    return {"model": model, "prompt": "hello", "max_tokens": 4}


# --- the tests ----------------------------------------------------------------------


async def test_a_serving_engine_with_a_fresh_heartbeat_gets_the_request(world: World) -> None:
    upstream = await world.upstream("u1")
    async with world.gateway() as gateway:
        await world.engines.serving("e1", model="llama", endpoint=upstream.url)
        await eventually(lambda: gateway.routable(world.session, "llama"))
        status, body = await gateway.post(world.session, completion("llama"))
        chat_status, _ = await gateway.post(
            world.session, {"model": "llama", "messages": [{"role": "user", "content": "hi"}]},
            path="/v1/chat/completions")
        async with world.session.get(gateway.url + "/v1/models") as response:
            models = await response.json()
    assert (status, body["served_by"], chat_status) == (200, "u1", 200)
    assert [seen["model"] for seen in upstream.seen] == ["llama", "llama"]
    assert [m["id"] for m in models["data"]] == ["llama"]


async def test_real_model_servers_serve_through_it_and_their_saturation_is_a_429(
        world: World) -> None:
    """Two stand-in model servers, one request in flight each at most, slow enough that
    four concurrent requests overlap: two are served, one by each; two get 429."""
    slow = ("--model=llama", "--port=0", "--load-time=0s", "--latency=5s",
            "--concurrency-per-unit=1")
    async with (processes.running("capguard.serving.modelserver", *slow, "--name=ms-1") as one,
                processes.running("capguard.serving.modelserver", *slow, "--name=ms-2") as two,
                world.gateway() as gateway):
        await world.engines.serving("e1", model="llama", endpoint=one.url)
        await world.engines.serving("e2", model="llama", endpoint=two.url)
        await eventually(lambda: _equals(gateway.routable(world.session, "llama"), 2))
        answers = await asyncio.gather(*(_served_by(world.session, gateway) for _ in range(4)))
        page = await gateway.metrics(world.session)
    assert sorted(answers) == [(200, "ms-1"), (200, "ms-2"), (429, None), (429, None)]
    assert page.total("capguard_gateway_requests_total", model="llama", code="429") == 2
    assert page.total("capguard_gateway_upstream_retries_total") == 2


async def _served_by(session: aiohttp.ClientSession,
                     gateway: Gateway) -> tuple[int, str | None]:
    async with session.post(gateway.url + "/v1/completions", json=completion("llama")) as answer:
        await answer.read()
        served_by = answer.headers.get("x-capguard-served-by") if answer.status == 200 else None
        return answer.status, served_by


async def test_an_engine_that_turns_draining_gets_no_new_requests(world: World) -> None:
    leaving, staying = await world.upstream("leaving"), await world.upstream("staying")
    async with world.gateway() as gateway:
        await world.engines.serving("e1", model="llama", endpoint=leaving.url)
        await world.engines.serving("e2", model="llama", endpoint=staying.url)
        await eventually(lambda: _equals(gateway.routable(world.session, "llama"), 2))
        await world.engines.status("e1", phase="Draining")
        await eventually(lambda: _equals(gateway.routable(world.session, "llama"), 1))
        answers = [await gateway.post(world.session, completion("llama")) for _ in range(10)]
    assert {status for status, _ in answers} == {200}
    assert (len(leaving.seen), len(staying.seen)) == (0, 10)


async def test_an_engine_bound_elsewhere_or_not_serving_gets_no_requests(world: World) -> None:
    upstream = await world.upstream("u1")
    async with world.gateway() as gateway:
        await world.engines.serving("e1", model="llama", endpoint=upstream.url)
        await world.engines.serving("e2", model="llama", endpoint=upstream.url)
        await eventually(lambda: _equals(gateway.routable(world.session, "llama"), 2))
        await world.engines.spec("e1", modelRef="qwen")
        await world.engines.status("e2", phase="Loading")
        await eventually(lambda: _equals(gateway.routable(world.session, "llama"), 0))
        status, _ = await gateway.post(world.session, completion("llama"))
    assert status == 503
    assert upstream.seen == []


async def test_no_routable_engine_is_a_503_in_the_openai_shape(world: World) -> None:
    async with world.gateway() as gateway:
        await eventually(lambda: _ready(world.session, gateway))
        status, body = await gateway.post(world.session, completion("llama"))
        missing, missing_body = await gateway.post(world.session, {"prompt": "no model"})
        garbage, _ = await gateway.post(world.session, "not an object")
        async with world.session.get(gateway.url + "/v1/models") as response:
            models = await response.json()
    assert (status, body) == (503, {"error": {"message": "model llama has no serving capacity",
                                              "type": "service_unavailable",
                                              "code": "no_capacity"}})
    assert (missing, missing_body["error"]["type"], garbage) == (400, "invalid_request_error",
                                                                 400)
    assert models == {"object": "list", "data": []}


async def test_when_every_engine_answers_429_the_client_gets_429(world: World) -> None:
    first, second = await world.upstream("a", status=429), await world.upstream("b", status=429)
    async with world.gateway() as gateway:
        await world.engines.serving("e1", model="llama", endpoint=first.url)
        await world.engines.serving("e2", model="llama", endpoint=second.url)
        await eventually(lambda: _equals(gateway.routable(world.session, "llama"), 2))
        status, body = await gateway.post(world.session, completion("llama"))
        page = await gateway.metrics(world.session)
    assert status == 429
    assert body["error"]["code"] == "busy"  # the upstream's answer, passed through
    assert (len(first.seen), len(second.seen)) == (1, 1)  # each engine tried once
    assert page.total("capguard_gateway_upstream_retries_total") == 1


async def test_a_saturated_or_unreachable_engine_hands_the_request_to_the_next(
        world: World) -> None:
    busy, free = await world.upstream("busy", status=429), await world.upstream("free")
    async with world.gateway() as gateway:
        await world.engines.serving("e1", model="llama", endpoint=busy.url)
        await world.engines.serving("e2", model="llama", endpoint="http://127.0.0.1:1")
        await world.engines.serving("e3", model="llama", endpoint=free.url)
        await eventually(lambda: _equals(gateway.routable(world.session, "llama"), 3))
        answers = [await gateway.post(world.session, completion("llama")) for _ in range(6)]
    assert [(status, body["served_by"]) for status, body in answers] == [(200, "free")] * 6
    assert len(free.seen) == 6


async def test_when_no_engine_can_be_reached_the_client_gets_502(world: World) -> None:
    async with world.gateway() as gateway:
        await world.engines.serving("e1", model="llama", endpoint="http://127.0.0.1:1")
        await eventually(lambda: gateway.routable(world.session, "llama"))
        status, body = await gateway.post(world.session, completion("llama"))
    assert (status, body["error"]["code"]) == (502, "upstream_unreachable")


async def test_a_stale_or_missing_heartbeat_is_not_routed(world: World) -> None:
    silent, missing, alive = (await world.upstream("silent"), await world.upstream("missing"),
                              await world.upstream("alive"))
    async with world.gateway("--heartbeat-timeout=40s") as gateway:
        await world.engines.serving("e1", model="llama", endpoint=silent.url,
                                    heartbeat=now_rfc3339(ago=3600))
        await world.engines.serving("e2", model="llama", endpoint=missing.url, heartbeat=None)
        await world.engines.serving("e3", model="qwen", endpoint=alive.url)
        await eventually(lambda: _equals(gateway.routable(world.session, "qwen"), 1))
        stale, _ = await gateway.post(world.session, completion("llama"))
        await world.engines.status("e1", lastHeartbeatTime=now_rfc3339())
        await eventually(lambda: _equals(gateway.routable(world.session, "llama"), 1))
        renewed, body = await gateway.post(world.session, completion("llama"))
    assert (stale, renewed, body["served_by"]) == (503, 200, "silent")
    assert (len(silent.seen), len(missing.seen)) == (1, 0)


async def test_heartbeat_timeout_zero_routes_engines_without_an_agent(world: World) -> None:
    upstream = await world.upstream("u1")
    async with world.gateway("--heartbeat-timeout=0") as gateway:
        await world.engines.serving("e1", model="llama", endpoint=upstream.url, heartbeat=None)
        await eventually(lambda: gateway.routable(world.session, "llama"))
        status, _ = await gateway.post(world.session, completion("llama"))
    assert status == 200


async def test_an_engine_whose_lease_is_fresh_is_routed_whatever_its_status_heartbeat(
        world: World) -> None:
    """An agent with a Lease writes lastHeartbeatTime only with a phase report."""
    upstream = await world.upstream("u1")
    async with world.gateway("--heartbeat-timeout=40s") as gateway:
        await world.engines.serving("e1", model="llama", endpoint=upstream.url, heartbeat=None)
        await world.engines.serving("e2", model="llama", endpoint=upstream.url,
                                    heartbeat=now_rfc3339(ago=3600))
        await world.engines.lease("e1")
        await world.engines.lease("e2")
        await eventually(lambda: _equals(gateway.routable(world.session, "llama"), 2))
        status, _ = await gateway.post(world.session, completion("llama"))
    assert status == 200


async def test_an_old_lease_is_not_routed_until_it_is_renewed(world: World) -> None:
    silent, alive = await world.upstream("silent"), await world.upstream("alive")
    async with world.gateway("--heartbeat-timeout=40s") as gateway:
        await world.engines.serving("e1", model="llama", endpoint=silent.url,
                                    heartbeat=now_rfc3339(ago=3600))
        await world.engines.lease("e1", ago=3600)
        await world.engines.serving("e2", model="qwen", endpoint=alive.url, heartbeat=None)
        await world.engines.lease("e2")
        # e2 and its Lease were written after e1 and its Lease: the gateway has seen both.
        await eventually(lambda: _equals(gateway.routable(world.session, "qwen"), 1))
        stale, _ = await gateway.post(world.session, completion("llama"))
        await world.engines.renew("e1")  # the Lease alone: no write to the engine
        await eventually(lambda: _equals(gateway.routable(world.session, "llama"), 1))
        renewed, body = await gateway.post(world.session, completion("llama"))
    assert (stale, renewed, body["served_by"]) == (503, 200, "silent")
    assert len(silent.seen) == 1


async def test_a_lease_deleted_or_without_a_renew_time_no_longer_vouches(world: World) -> None:
    upstream = await world.upstream("u1")
    async with world.gateway("--heartbeat-timeout=40s") as gateway:
        for name in ("e1", "e2"):
            await world.engines.serving(name, model="llama", endpoint=upstream.url,
                                        heartbeat=now_rfc3339(ago=3600))
            await world.engines.lease(name)
        await eventually(lambda: _equals(gateway.routable(world.session, "llama"), 2))
        await world.engines.api.merge_patch(client.LEASES, namespace=NAMESPACE, name="e1",
                                            patch={"spec": {"renewTime": None}})
        await world.engines.api.request("DELETE", client.LEASES.path(namespace=NAMESPACE,
                                                                     name="e2"))
        await eventually(lambda: _equals(gateway.routable(world.session, "llama"), 0))
        status, _ = await gateway.post(world.session, completion("llama"))
    assert status == 503 and upstream.seen == []


async def test_a_lease_without_the_heartbeat_label_is_no_heartbeat(world: World) -> None:
    upstream, alive = await world.upstream("u1"), await world.upstream("alive")
    async with world.gateway("--heartbeat-timeout=40s") as gateway:
        await world.engines.serving("e1", model="llama", endpoint=upstream.url,
                                    heartbeat=now_rfc3339(ago=3600))
        await world.engines.lease("e1", labelled=False)
        await world.engines.serving("e2", model="qwen", endpoint=alive.url, heartbeat=None)
        await world.engines.lease("e2")
        await eventually(lambda: _equals(gateway.routable(world.session, "qwen"), 1))
        unlabelled, _ = await gateway.post(world.session, completion("llama"))
        await world.engines.api.merge_patch(client.LEASES, namespace=NAMESPACE, name="e1",
                                            patch={"metadata": {"labels": {
                                                heartbeats.LABEL: heartbeats.OF_ENGINES}}})
        await eventually(lambda: _equals(gateway.routable(world.session, "llama"), 1))
    assert unlabelled == 503 and upstream.seen == []


async def test_an_earlier_engines_lease_of_the_name_is_no_heartbeat_until_taken_over(
        world: World) -> None:
    """An engine deleted and created again keeps its name, not its uid: the earlier
    engine's Lease, renewed until the garbage collector deletes it, vouches for nothing
    until the new engine's agent takes it over (its first renewal names its engine)."""
    upstream, alive = await world.upstream("u1"), await world.upstream("alive")
    async with world.gateway("--heartbeat-timeout=40s") as gateway:
        await world.engines.serving("e1", model="llama", endpoint=upstream.url, heartbeat=None)
        await world.engines.lease("e1", earlier=True)
        await world.engines.renew("e1")
        await world.engines.serving("e2", model="qwen", endpoint=alive.url, heartbeat=None)
        await world.engines.lease("e2")
        await eventually(lambda: _equals(gateway.routable(world.session, "qwen"), 1))
        earlier, _ = await gateway.post(world.session, completion("llama"))
        engine = await world.engines.api.get(client.ENGINES, namespace=NAMESPACE, name="e1")
        await world.engines.api.merge_patch(client.LEASES, namespace=NAMESPACE, name="e1",
                                            patch=heartbeats.renewal(
                                                holder="e1-agent", interval=HEARTBEAT_INTERVAL,
                                                now=time.time(), acquired=True, engine=engine))
        await eventually(lambda: _equals(gateway.routable(world.session, "llama"), 1))
        taken, body = await gateway.post(world.session, completion("llama"))
    assert (earlier, taken, body["served_by"]) == (503, 200, "u1")
    assert len(upstream.seen) == 1


async def test_only_a_liveness_check_reads_leases_and_only_the_heartbeat_ones(
        tmp_path: pathlib.Path) -> None:
    """With --heartbeat-timeout=0 the gateway needs no RBAC for Leases."""
    async def nothing() -> None:
        pass

    asked: dict[str, list[dict[str, str]]] = {}
    async with started_world(tmp_path) as world:
        for timeout in ("0", "40s"):
            proxy = ExpiringProxy(server=world.server, meanwhile=nothing)
            async with (proxy.kubeconfig(tmp_path) as kubeconfig,
                        running_gateway(kubeconfig, tmp_path,
                                        f"--heartbeat-timeout={timeout}") as gateway):
                await eventually(lambda: _ready(world.session, gateway))
            asked[timeout] = [query for path, query in proxy.asked
                              if path.endswith("/" + client.LEASES.plural)]
    assert asked["0"] == []
    assert {query.get("labelSelector") for query in asked["40s"]} == {heartbeats.SELECTOR}


async def test_metrics_count_requests_by_model_and_code(world: World) -> None:
    upstream = await world.upstream("u1")
    async with world.gateway() as gateway:
        await world.engines.serving("e1", model="llama", endpoint=upstream.url)
        await world.engines.serving("e2", model="qwen", endpoint="", heartbeat=None)
        await eventually(lambda: gateway.routable(world.session, "llama"))
        for body in [completion("llama")] * 3 + [completion("qwen")] * 2 + [
                completion("nobody-serves-this"), completion("nor-this"), {"no": "model"}]:
            await gateway.post(world.session, body)
        page = await gateway.metrics(world.session)
    count = "capguard_gateway_requests_total"
    assert page.total(count, model="llama", code="200") == 3
    assert page.total(count, model="qwen", code="503") == 2
    assert page.total(count, model="_unknown", code="503") == 2
    assert page.total(count, model="_unknown", code="400") == 1
    assert page.total(count) == 8
    assert page.total("capguard_gateway_request_duration_seconds_count", model="llama") == 3
    assert not page.has(count, model="nobody-serves-this")
    # Defined in capguard.metrics like the operator's: process series, no _created gauges.
    assert page.has("process_resident_memory_bytes")
    assert not any(name.endswith("_created") for name, _, _ in page.samples)


async def test_readyz_once_the_engines_are_listed_and_a_bad_flag_is_one_line(
        world: World) -> None:
    async with world.gateway() as gateway:
        assert await eventually(lambda: _ready(world.session, gateway))
        async with world.session.get(gateway.url + "/healthz") as response:
            assert response.status == 200
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "capguard.serving.gateway", "--heartbeat-timeout=soon",
        stderr=asyncio.subprocess.PIPE, env=harness.clean_env())
    _, stderr = await done.communicate()
    lines = stderr.decode().strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, lines
    assert "--heartbeat-timeout" in lines[0]


class ExpiringProxy:
    """Between the gateway and the API server: the engines' first watch ends after a
    second, as a server's timeoutSeconds ends it; before their second reaches the server,
    `meanwhile` writes enough that the version it resumes from has left the server's
    window. It records what the gateway asked (path and query)."""

    def __init__(self, *, server: str, meanwhile: Callable[[], Awaitable[None]]) -> None:
        self.server = server
        self.meanwhile = meanwhile
        self.watches = 0
        self.asked: list[tuple[str, dict[str, str]]] = []
        self._session = aiohttp.ClientSession()
        self._runner: web.AppRunner | None = None

    @contextlib.asynccontextmanager
    async def kubeconfig(self, directory: pathlib.Path) -> AsyncIterator[pathlib.Path]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        path = directory / "proxied.kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "proxied",
            "clusters": [{"name": "proxied", "cluster": {"server": f"http://{host}:{port}"}}],
            "users": [{"name": "proxied", "user": {}}],
            "contexts": [{"name": "proxied",
                          "context": {"cluster": "proxied", "user": "proxied"}}]}))
        try:
            yield path
        finally:
            await self._session.close()  # ends the watch still streaming
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.asked.append((request.path, dict(query)))
        if query.get("watch") and request.path.endswith("/" + client.ENGINES.plural):
            self.watches += 1
            if self.watches == 1:
                query["timeoutSeconds"] = "1"
            elif self.watches == 2:
                await self.meanwhile()
        async with self._session.request(request.method, self.server + request.path,
                                         params=query, data=await request.read()) as upstream:
            response = web.StreamResponse(status=upstream.status, headers={
                "Content-Type": upstream.headers.get("Content-Type", "application/json")})
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response


async def test_a_watch_resumed_from_a_version_the_server_no_longer_keeps_lists_again(
        tmp_path: pathlib.Path) -> None:
    async with started_world(tmp_path, window=5) as world:
        upstream = await world.upstream("u1")
        await world.engines.serving("e1", model="llama", endpoint=upstream.url)

        async def meanwhile() -> None:
            for ago in range(8):  # each a change: a write that changes nothing is no event
                await world.engines.status("e1", lastHeartbeatTime=now_rfc3339(ago=ago + 1))
            await world.engines.status("e1", phase="Draining")

        proxy = ExpiringProxy(server=world.server, meanwhile=meanwhile)
        async with (proxy.kubeconfig(tmp_path) as kubeconfig,
                    running_gateway(kubeconfig, tmp_path) as gateway):
            await eventually(lambda: _equals(gateway.routable(world.session, "llama"), 1))
            await eventually(lambda: _equals(gateway.routable(world.session, "llama"), 0))
            status, _ = await gateway.post(world.session, completion("llama"))
        log = gateway.log.read_text()
    assert status == 503 and upstream.seen == []
    assert proxy.watches >= 3 and "watch expired; listing again" in log, log


async def _equals(value: Awaitable[float], wanted: float) -> bool:
    return await value == wanted


async def _ready(session: aiohttp.ClientSession, gateway: Gateway) -> bool:
    async with session.get(gateway.url + "/readyz") as response:
        return response.status == 200



class EndingProxy(ExpiringProxy):
    """Between the gateway and the API server: every watch is answered 200 and ended at
    once with no event (a proxy that does not hold streams); the rest goes through."""

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch"):
            self.asked.append((request.path, dict(request.query)))
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            await response.write_eof()
            return response
        return await super()._forward(request)


async def test_watches_that_end_at_once_are_backed_off_not_opened_in_a_loop(
        tmp_path: pathlib.Path) -> None:
    async def nothing() -> None:
        pass

    async with started_world(tmp_path) as world:
        proxy = EndingProxy(server=world.server, meanwhile=nothing)
        async with (proxy.kubeconfig(tmp_path) as kubeconfig,
                    running_gateway(kubeconfig, tmp_path) as gateway):
            await eventually(lambda: _ready(world.session, gateway))
            began = len(proxy.asked)
            await asyncio.sleep(4)
            watches = [q for _, q in proxy.asked[began:] if q.get("watch")]
        log = gateway.log.read_text()
    # Backed off from 1 s, doubling: a few in 4 s (without, thousands).
    assert 1 <= len(watches) <= 8, len(watches)
    assert "the stream ended at once with no event" in log, log[-2000:]
