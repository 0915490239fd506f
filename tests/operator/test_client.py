"""The API client keeps working when its credentials or its session do not: a 401 logs
in again (a rotated service-account token), a session closed under it is made again,
and a 429's Retry-After reaches the caller."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import kopf
import pytest
from aiohttp import web

from capguard.kube import client


@contextlib.asynccontextmanager
async def _serving(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """An HTTP endpoint answering every path with ``handler``; its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


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

    async with _serving(answer) as url:
        yield url, seen


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

    api = client.Api(request_timeout=5.0, read_idle_timeout=0.3)
    async with _serving(silent) as url:
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


async def test_a_watch_event_longer_than_aiohttps_line_limit_comes_through() -> None:
    """An object may be up to ~1.5 MiB (etcd's limit), and a watch event carries it whole
    on one line: aiohttp's line reader raised LineTooLong past 512 KiB, which ended the
    watch task. Events before and after it, and one split across writes, come too."""
    big = {"type": "MODIFIED", "object": {"metadata": {"name": "big", "resourceVersion": "7"},
                                          "spec": {"note": "x" * 1_400_000}}}
    small = {"type": "ADDED", "object": {"metadata": {"name": "a", "resourceVersion": "5"}}}
    mark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        text = (json.dumps(small) + "\n" + json.dumps(big) + "\n").encode()
        for start in range(0, len(text), 100_000):
            await response.write(text[start:start + 100_000])
        await response.write(json.dumps(mark).encode())  # the last line has no newline
        await response.write_eof()
        return response

    api = client.Api()
    async with _serving(stream) as url:
        api.login(kopf.ConnectionInfo(server=url, token="t"))
        try:
            seen = [event async for event in api.watch(client.ENGINES, namespace="ns",
                                                       resource_version="1")]
            assert seen == [small, big, mark]
        finally:
            await api.close()
