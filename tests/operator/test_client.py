"""The API client keeps working when its credentials or its session do not: a 401 logs
in again (a rotated service-account token), a session closed under it is made again,
and a 429's Retry-After reaches the caller."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import kopf
import pytest
from aiohttp import web

from capguard.kube import client


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[str]]]:
    """An HTTP endpoint that takes only the token "fresh" and throttles /busy."""
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if request.path == "/busy":
            return web.json_response({"kind": "Status", "code": 429, "reason": "TooManyRequests",
                                      "message": "slow down"}, status=429,
                                     headers={"Retry-After": "7"})
        if request.headers.get("Authorization") != "Bearer fresh":
            return web.json_response({"kind": "Status", "code": 401, "reason": "Unauthorized",
                                      "message": "Unauthorized"}, status=401)
        return web.json_response({"kind": "Lease", "metadata": {"name": "x"}})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_a_401_logs_in_again_and_the_request_is_tried_once_more(
    server: tuple[str, list[str]],
) -> None:
    url, seen = server
    logins = []

    def relogin() -> kopf.ConnectionInfo:
        logins.append("again")
        return kopf.ConnectionInfo(server=url, token="fresh")

    api = client.Api()
    api.login(kopf.ConnectionInfo(server=url, token="rotated-away"), relogin=relogin)
    try:
        body = await api.request("GET", "/apis/coordination.k8s.io/v1/leases/x")
        assert body["kind"] == "Lease"
        assert seen == ["Bearer rotated-away", "Bearer fresh"] and logins == ["again"]
        await api._own_session().close()  # closed under it (Kopf used to do this)
        assert (await api.request("GET", "/x"))["kind"] == "Lease"
    finally:
        await api.close()


async def test_without_new_credentials_the_401_is_the_callers(
    server: tuple[str, list[str]],
) -> None:
    url, _ = server
    api = client.Api()
    api.login(kopf.ConnectionInfo(server=url, token="stale"), relogin=lambda: None)
    try:
        with pytest.raises(client.Unauthorized):
            await api.request("GET", "/x")
        with pytest.raises(client.ApiError) as busy:
            await api.request("GET", "/busy")
        assert busy.value.status == 429 and busy.value.transient
        assert busy.value.retry_after == 7.0
    finally:
        await api.close()


async def test_a_read_that_hears_nothing_is_given_up_a_silent_write_is_not() -> None:
    """A GET whose connection goes silent (a dead connection) is given up after the read
    idle timeout, not the whole request timeout; a write may be silent for longer (an
    admission webhook may hold it) and still be answered."""
    async def silent(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.json_response({"kind": "Lease", "metadata": {"name": "x"}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", silent)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    api = client.Api(request_timeout=5.0, read_idle_timeout=0.3)
    api.login(kopf.ConnectionInfo(server=url, token="t"))
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await api.request("GET", "/x")
        assert time.monotonic() - started < 0.9
        written = await api.request("PATCH", "/x", body={"spec": {}},
                                    content_type=client.MERGE_PATCH)
        assert written["kind"] == "Lease"
    finally:
        await api.close()
        await runner.cleanup()
