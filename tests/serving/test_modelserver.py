"""`capguard model-server`, the stand-in for vLLM, as the real process the agent starts.

Each test starts `python -m capguard.serving.modelserver --port 0`, reads the URL from
its first line and talks to it as an OpenAI client would: the response and error shapes
are the fields such a client reads (status codes, `error.code`, `choices`, `usage`).
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import aiohttp
import click
import pytest

from capguard import commandline
from capguard.core import specs
from capguard.serving import modelserver
from serving import processes

MODULE = "capguard.serving.modelserver"
MODEL = "llama-3-8b"


def server(*args: str) -> Any:
    return processes.running(MODULE, "--model", MODEL, "--port", "0", *args)


async def post(session: aiohttp.ClientSession, url: str, body: Any, *,
               path: str = "/v1/completions") -> tuple[int, Any, aiohttp.ClientResponse]:
    async with session.post(url + path, json=body) as response:
        return response.status, await response.json(), response


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        return response.status, await response.json(content_type=None)


def assert_openai_error(document: Any, *, code: str | None, kind: str) -> None:
    error = document["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["type"]) == (code, kind)
    assert isinstance(error["message"], str) and error["message"]


async def in_flight(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    line = next(line for line in text.splitlines()
                if line.startswith("capguard_model_server_requests_in_flight "))
    return float(line.split()[1])


async def wait_ready(session: aiohttp.ClientSession, url: str) -> None:
    while (await get(session, url + "/health"))[0] != 200:
        await asyncio.sleep(0.05)


async def terminate_with_in_flight(started: processes.Started, session: aiohttp.ClientSession,
                                   *, count: int) -> list[asyncio.Task[Any]]:
    """Once the model is loaded, `count` completions in flight, then SIGTERM."""
    await wait_ready(session, started.url)
    requests = [asyncio.create_task(post(session, started.url, {"model": MODEL, "prompt": "p"}))
                for _ in range(count)]
    async with aiohttp.ClientSession() as metrics:  # its own connection: the others are busy
        while await in_flight(metrics, started.url) < count:
            await asyncio.sleep(0.05)
    started.signal(signal.SIGTERM)
    return requests


async def test_health_says_loading_then_ok_with_the_model_and_revision() -> None:
    async with server("--revision", "r7", "--load-time", "2s") as started, \
            aiohttp.ClientSession() as session:
        assert started.first_line.startswith("capguard model-server listening at http://")
        assert await get(session, started.url + "/health") == (503, {"status": "loading"})
        status, body, _ = await post(session, started.url, {"model": MODEL, "prompt": "hi"})
        assert status == 503
        assert_openai_error(body, code="model_loading", kind="server_error")
        await wait_ready(session, started.url)
        assert await get(session, started.url + "/health") == (
            200, {"status": "ok", "model": MODEL, "revision": "r7"})


async def test_it_answers_for_its_model_in_openai_shapes() -> None:
    async with server("--load-time", "0", "--name", "engine-a") as started, \
            aiohttp.ClientSession() as session:
        await wait_ready(session, started.url)
        status, models = await get(session, started.url + "/v1/models")
        assert status == 200 and models["object"] == "list"
        assert [(m["id"], m["object"]) for m in models["data"]] == [(MODEL, "model")]

        status, body, response = await post(session, started.url,
                                            {"model": MODEL, "prompt": "say hello"})
        assert status == 200
        assert response.headers["x-capguard-served-by"] == "engine-a"
        assert (body["object"], body["model"]) == ("text_completion", MODEL)
        assert body["id"] and body["choices"][0]["text"]
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["usage"]["prompt_tokens"] == 2
        assert body["usage"]["total_tokens"] == 2 + body["usage"]["completion_tokens"]

        status, body, _ = await post(session, started.url, {
            "model": MODEL, "messages": [{"role": "user", "content": "hello"}]},
            path="/v1/chat/completions")
        assert status == 200 and body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert body["choices"][0]["message"]["content"]


async def test_another_model_is_404_a_bad_body_400_and_an_unknown_url_404() -> None:
    async with server("--load-time", "0") as started, aiohttp.ClientSession() as session:
        status, body, _ = await post(session, started.url, {"model": "qwen", "prompt": "x"})
        assert status == 404
        assert_openai_error(body, code="model_not_found", kind="invalid_request_error")
        assert body["error"]["param"] == "model"

        async with session.post(started.url + "/v1/chat/completions", data=b"{not json",
                                headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400
            assert_openai_error(await response.json(), code=None, kind="invalid_request_error")

        status, body, _ = await post(session, started.url, {"model": MODEL})
        assert status == 400 and body["error"]["param"] == "prompt"

        assert (await get(session, started.url + "/v1/embeddings"))[0] == 404
        assert (await get(session, started.url + "/v1/completions"))[0] == 405

        async with session.get(started.url + "/metrics") as response:
            metrics = await response.text()
        assert 'capguard_model_server_requests_total{code="404",route="/v1/completions"} 1.0' \
            in metrics


async def test_one_request_over_units_times_concurrency_is_429_with_retry_after() -> None:
    async with server("--load-time", "0", "--units", "2", "--concurrency-per-unit", "2",
                      "--latency", "3s") as started, aiohttp.ClientSession() as session:
        await wait_ready(session, started.url)
        answers = await asyncio.gather(*(
            post(session, started.url, {"model": MODEL, "prompt": f"n{n}"}) for n in range(5)))
        assert sorted(status for status, _, _ in answers) == [200, 200, 200, 200, 429]
        [(_, body, response)] = [answer for answer in answers if answer[0] == 429]
        assert_openai_error(body, code="rate_limit_exceeded", kind="requests")
        assert int(response.headers["Retry-After"]) >= 1


async def test_sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_0() -> None:
    async with server("--load-time", "0", "--latency", "4s") as started, \
            aiohttp.ClientSession() as session:
        requests = await terminate_with_in_flight(started, session, count=3)
        host, port = started.url.removeprefix("http://").split(":")
        while True:  # until the listener is closed: connections accepted before it are idle
            try:
                _, writer = await asyncio.open_connection(host, int(port))
            except (ConnectionRefusedError, ConnectionResetError):
                break  # a connect racing the listener's close is reset, not refused
            writer.close()
            await asyncio.sleep(0.02)
        assert not any(request.done() for request in requests)
        answers = await asyncio.gather(*requests)
        assert [status for status, _, _ in answers] == [200, 200, 200]
        assert {response.headers["Connection"] for _, _, response in answers} == {"close"}
        assert await started.exit_code() == 0


async def test_requests_still_running_at_the_end_of_the_grace_are_cut() -> None:
    async with server("--load-time", "0", "--latency", "60s", "--grace", "300ms") as started:
        async with aiohttp.ClientSession() as session:
            requests = await terminate_with_in_flight(started, session, count=2)
            outcomes = await asyncio.gather(*requests, return_exceptions=True)
        assert all(isinstance(outcome, aiohttp.ClientError) for outcome in outcomes)
        assert await started.exit_code() == 0
        assert "model-server: 2 requests still in flight after the 0.3s grace were cut" \
            in started.stderr


async def test_a_load_that_fails_exits_3_with_one_line_naming_the_model() -> None:
    async with server("--load-time", "0", "--load-failure-rate", "1") as started:
        assert await started.exit_code() == 3
        [line] = started.stderr_lines
        assert line.startswith(f"model-server: failed to load {MODEL}: ")


@pytest.mark.parametrize(("flag", "value", "named"), [
    ("--load-time", "soon", "--load-time"),
    ("--load-failure-rate", "2", "--load-failure-rate"),
    ("--units", "0", "--units"),
])
async def test_a_users_mistake_is_one_line_and_exit_2(flag: str, value: str,
                                                      named: str) -> None:
    line = await one_line_exit_2("--model", MODEL, "--port", "0", flag, value)
    assert named in line


async def test_a_busy_port_is_one_line_and_exit_2() -> None:
    async with server("--load-time", "0") as started:
        port = started.url.rsplit(":", 1)[1]
        line = await one_line_exit_2("--model", MODEL, "--port", port)
    assert f"'--port': cannot listen on 127.0.0.1:{port}" in line


async def one_line_exit_2(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *processes.python_module(MODULE), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await process.communicate()
    assert (process.returncode, stdout) == (2, b"")
    [line] = stderr.decode().splitlines()
    assert line.startswith("capguard model-server: ")
    return line


@pytest.mark.parametrize("text", ["0", "1.5", "90s", "250ms", "1h30m", "1.5m", "5m2s"])
def test_durations_read_as_the_core_reads_them(text: str) -> None:
    expected = float(text) if text.replace(".", "", 1).isdigit() else specs.parse_duration(text)
    assert commandline.duration(click.Context(modelserver.command), click.Option(["--x"]),
                                text) == expected


@pytest.mark.parametrize("text", ["s", "1.s", "5 s", "-1s", "-1", "nan", "inf", "1d", ""])
def test_durations_the_core_refuses_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        specs.parse_duration(text)
    with pytest.raises(click.BadParameter):
        commandline.duration(click.Context(modelserver.command), click.Option(["--x"]), text)
