"""`capguard model-server`: a stand-in for vLLM or any OpenAI-compatible model server.

The engine agent supervises one of these per engine, the gateway routes to it, and a
demo runs dozens on two cores, so it must start fast and stay small: it is a plain
asyncio HTTP/1.1 server (keep-alive, Content-Length bodies) rather than aiohttp.web,
whose import alone costs more than this whole process takes to answer its first
/health (bench/bench_modelserver.py measures both). It imports no other capguard
wing, and prometheus-client only when /metrics is first scraped.

What it imitates, and nothing more: a load that takes a while and may fail (exit 3, one
stderr line), `/health` 503 then 200 as vLLM's, `/v1/models`, `/v1/completions` and
`/v1/chat/completions` for its one model with OpenAI's response and error shapes, a
bound of concurrent requests per capacity unit (over it: 429 with Retry-After), a
latency with jitter drawn from --seed, and a graceful SIGTERM: the listener closes,
requests in flight finish within --grace, the rest are cut, exit 0.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import http
import json
import math
import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Iterable, Mapping
from typing import Any, Final

import click

from capguard import commandline

COMPLETION_ROUTES: Final = {"/v1/completions": "text_completion",
                            "/v1/chat/completions": "chat.completion"}
PATHS: Final = frozenset({*COMPLETION_ROUTES, "/health", "/v1/models", "/metrics"})
MAX_HEAD: Final = 64 * 1024  # request line and headers
MAX_BODY: Final = 8 * 1024 * 1024
JITTER: Final = 0.25  # each latency is the mean times uniform(1 - JITTER, 1 + JITTER)
EXIT_LOAD_FAILED: Final = 3


class Phase(enum.Enum):
    LOADING = "loading"
    SERVING = "ok"
    DRAINING = "draining"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    model: str
    revision: str | None
    name: str | None
    load_time: float
    load_failure_rate: float
    latency: float
    units: int
    concurrency_per_unit: int
    grace: float
    seed: int

    @property
    def capacity(self) -> int:
        """How many completions may be in flight at once; one more gets a 429."""
        return self.units * self.concurrency_per_unit


# --- HTTP/1.1, the small part of it OpenAI clients use --------------------------------


class BadRequest(Exception):
    """The client sent something that is not an HTTP/1.1 request we can read."""


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    keep_alive: bool


@dataclasses.dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, document: object, *,
             headers: tuple[tuple[str, str], ...] = ()) -> Response:
        return cls(status, json.dumps(document).encode(), headers=headers)

    def encode(self, *, served_by: str, keep_alive: bool) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {http.HTTPStatus(self.status).phrase}",
                 f"Content-Type: {self.content_type}",
                 f"Content-Length: {len(self.body)}",
                 f"x-capguard-served-by: {served_by}",
                 f"Connection: {'keep-alive' if keep_alive else 'close'}",
                 *(f"{key}: {value}" for key, value in self.headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


async def read_request(reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> Request | None:
    """The next request of a connection, or None when the client closed it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if error.partial.strip():
            raise BadRequest("the connection closed inside a request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest(f"a request head longer than {MAX_HEAD} bytes") from None
    request_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
    method, path, version = _request_line(request_line)
    headers = {}
    for line in header_lines:
        key, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(f"a header line without a colon: {line!r}")
        headers[key.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise BadRequest("chunked request bodies are not supported; send Content-Length")
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = await reader.readexactly(_content_length(headers))
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return Request(method, path.partition("?")[0], headers, body, keep_alive)


def _request_line(line: str) -> tuple[str, str, str]:
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"not an HTTP/1.x request line: {line[:80]!r}")
    return parts[0], parts[1], parts[2]


def _content_length(headers: Mapping[str, str]) -> int:
    raw = headers.get("content-length", "0")
    if not raw.isdigit() or int(raw) > MAX_BODY:
        raise BadRequest(f"Content-Length {raw!r} is not a number up to {MAX_BODY}")
    return int(raw)


# --- OpenAI's shapes ------------------------------------------------------------------


def openai_error(status: int, message: str, *, kind: str, code: str | None,
                 param: str | None = None,
                 headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """OpenAI's error body, which its clients turn into typed exceptions by status."""
    return Response.json(status, {"error": {"message": message, "type": kind,
                                            "param": param, "code": code}}, headers=headers)


def _words(value: object) -> int:
    """A token count good enough for `usage`: words in the prompt or the messages."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(item) for item in value)
    if isinstance(value, dict):
        return _words(value.get("content"))
    return 0


def completion(*, route: str, model: str, number: int, created: int,
               body: Mapping[str, Any]) -> dict[str, Any]:
    """A deterministic answer in the shape of the route's OpenAI response."""
    text = f"A reply from {model}."
    chat = route == "/v1/chat/completions"
    prompt_tokens = _words(body.get("messages") if chat else body.get("prompt"))
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": "stop"}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{number}",
            "object": COMPLETION_ROUTES[route], "created": created, "model": model,
            "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                      "total_tokens": prompt_tokens + len(text.split())}}


def _parse_body(raw: bytes, *, route: str) -> dict[str, Any] | Response:
    """The request's JSON object, or the 400 a real server answers instead."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return openai_error(400, "We could not parse the JSON body of your request.",
                            kind="invalid_request_error", code=None)
    required = "messages" if route == "/v1/chat/completions" else "prompt"
    for field in ("model", required):
        if not body.get(field):
            return openai_error(400, f"you must provide a {field} parameter",
                                kind="invalid_request_error", code=None, param=field)
    if body.get("stream"):
        return openai_error(400, "the capguard model-server stand-in does not stream",
                            kind="invalid_request_error", code=None, param="stream")
    return body


# --- the server -----------------------------------------------------------------------


class ModelServer:
    """One model's server: its phase, the requests in flight and its connections."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.phase = Phase.LOADING
        self.served_by = options.name or ""
        self.in_flight = 0
        self.served = 0
        self.codes: collections.Counter[tuple[str, int]] = collections.Counter()
        self.random = random.Random(options.seed)
        self.started = int(time.time())
        self.idle: set[asyncio.Task[None]] = set()
        self.busy: set[asyncio.Task[None]] = set()

    async def connection(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        """Serve one connection's requests until it closes or the server drains."""
        task = asyncio.current_task()
        assert task is not None
        try:
            await self._requests(reader, writer, task)
        except BadRequest as error:
            response = openai_error(400, str(error), kind="invalid_request_error", code=None)
            writer.write(response.encode(served_by=self.served_by, keep_alive=False))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client left; nothing to answer
        finally:
            self.idle.discard(task)
            self.busy.discard(task)
            writer.close()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        task: asyncio.Task[None]) -> None:
        while not self.draining():
            self.idle.add(task)  # a drain closes idle connections at once
            request = await read_request(reader, writer)
            self.idle.discard(task)
            if request is None:
                return
            self.busy.add(task)
            response = await self.answer(request)
            self.codes[(self._route(request.path), response.status)] += 1
            keep_alive = request.keep_alive and not self.draining()
            writer.write(response.encode(served_by=self.served_by, keep_alive=keep_alive))
            await writer.drain()
            self.busy.discard(task)
            if not keep_alive:
                return

    def draining(self) -> bool:
        return self.phase is Phase.DRAINING

    @staticmethod
    def _route(path: str) -> str:
        return path if path in PATHS else "other"  # a bounded label set for /metrics

    async def answer(self, request: Request) -> Response:
        """The response to one request; a bug of ours is a 500 and a traceback on stderr."""
        try:
            return await self.respond(request)
        except Exception:
            traceback.print_exc()
            return openai_error(500, "the model-server failed; its stderr says why",
                                kind="server_error", code=None)

    async def respond(self, request: Request) -> Response:
        route = (request.method, request.path)
        if route == ("GET", "/health"):
            return self.health()
        if route == ("GET", "/metrics"):
            return self.metrics()
        if route == ("GET", "/v1/models"):
            return self.unavailable() or self.models()
        if request.method == "POST" and request.path in COMPLETION_ROUTES:
            return await self.complete(request)
        return openai_error(405 if request.path in PATHS else 404,
                            f"Invalid URL ({request.method} {request.path})",
                            kind="invalid_request_error", code="unknown_url")

    def health(self) -> Response:
        if self.phase is not Phase.SERVING:
            return Response.json(503, {"status": self.phase.value})
        return Response.json(200, {"status": "ok", "model": self.options.model,
                                   "revision": self.options.revision})

    def models(self) -> Response:
        return Response.json(200, {"object": "list", "data": [{
            "id": self.options.model, "object": "model", "created": self.started,
            "owned_by": "capguard", "root": self.options.model}]})

    def unavailable(self) -> Response | None:
        """The 503 of a server that is loading or leaving, with when to come back."""
        if self.phase is Phase.SERVING:
            return None
        loading = self.phase is Phase.LOADING
        message = (f"{self.options.model} is loading" if loading
                   else "the server is shutting down")
        return openai_error(503, message, kind="server_error",
                            code="model_loading" if loading else "shutting_down",
                            headers=(("Retry-After", self._retry_after()),))

    def _retry_after(self) -> str:
        waited = self.options.load_time if self.phase is Phase.LOADING else self.options.latency
        return str(max(1, math.ceil(waited)))

    async def complete(self, request: Request) -> Response:
        body = _parse_body(request.body, route=request.path)
        if isinstance(body, Response):
            return body
        if body["model"] != self.options.model:
            return openai_error(404, f"The model `{body['model']}` does not exist.",
                                kind="invalid_request_error", code="model_not_found",
                                param="model")
        refusal = self.unavailable() or self.saturated()
        if refusal is not None:
            return refusal
        self.in_flight += 1
        try:
            if self.options.latency > 0:
                await asyncio.sleep(self.options.latency
                                    * self.random.uniform(1 - JITTER, 1 + JITTER))
            self.served += 1
            return Response.json(200, completion(route=request.path, model=self.options.model,
                                                 number=self.served, created=int(time.time()),
                                                 body=body))
        finally:
            self.in_flight -= 1

    def saturated(self) -> Response | None:
        if self.in_flight < self.options.capacity:
            return None
        return openai_error(
            429, f"{self.options.model} is at its {self.options.capacity} concurrent requests "
                 f"({self.options.units} units x {self.options.concurrency_per_unit}); retry",
            kind="requests", code="rate_limit_exceeded",
            headers=(("Retry-After", self._retry_after()),))

    def metrics(self) -> Response:
        import prometheus_client
        from prometheus_client import core

        server = self

        class Collector(prometheus_client.registry.Collector):
            def collect(self) -> Iterable[prometheus_client.Metric]:
                yield from server.metric_families(core)

        registry = prometheus_client.CollectorRegistry(auto_describe=False)
        registry.register(Collector())
        return Response(200, prometheus_client.generate_latest(registry),
                        content_type=prometheus_client.CONTENT_TYPE_LATEST)

    def metric_families(self, core: Any) -> Iterable[Any]:
        requests = core.CounterMetricFamily(
            "capguard_model_server_requests", "Requests answered, by route and status code.",
            labels=["route", "code"])
        for (route, code), count in sorted(self.codes.items()):
            requests.add_metric([route, str(code)], count)
        yield requests
        yield core.GaugeMetricFamily("capguard_model_server_requests_in_flight",
                                     "Completions being answered now.", value=self.in_flight)
        yield core.GaugeMetricFamily("capguard_model_server_capacity",
                                     "Completions that may be in flight at once.",
                                     value=self.options.capacity)
        yield core.GaugeMetricFamily("capguard_model_server_loaded",
                                     "1 once the model is loaded and served.",
                                     value=int(self.phase is Phase.SERVING))

    async def drain(self, *, grace: float) -> int:
        """Let the requests in flight finish within the grace; return how many were cut."""
        self.phase = Phase.DRAINING
        for task in self.idle:
            task.cancel()
        pending = self.idle | self.busy
        if pending:
            await asyncio.wait(pending, timeout=grace)
        cut = [task for task in self.busy if not task.done()]
        for task in cut:
            task.cancel()
        await asyncio.gather(*cut, return_exceptions=True)
        return len(cut)


# --- the command ----------------------------------------------------------------------


async def serve(options: Options, *, host: str, port: int) -> int:
    """Listen, load, serve until SIGTERM or SIGINT, drain; the process's exit code."""
    server = ModelServer(options)
    try:
        listener = await asyncio.start_server(server.connection, host, port, limit=MAX_HEAD)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise click.BadParameter(f"cannot listen on {host}:{port}: {reason}",
                                 param_hint="'--port'") from None
    bound_host, bound_port = listener.sockets[0].getsockname()[:2]
    server.served_by = options.name or f"{bound_host}:{bound_port}"
    click.echo(f"capguard model-server listening at http://{bound_host}:{bound_port}")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=options.load_time)
    if not stop.is_set():
        if server.random.random() < options.load_failure_rate:
            listener.close()
            click.echo(f"model-server: failed to load {options.model}: the load failed "
                       f"(--load-failure-rate {options.load_failure_rate:g}, "
                       f"--seed {options.seed})", err=True)
            return EXIT_LOAD_FAILED
        server.phase = Phase.SERVING
        await stop.wait()
    listener.close()  # new connections are refused from here on
    cut = await server.drain(grace=options.grace)
    if cut:
        click.echo(f"model-server: {cut} requests still in flight after the "
                   f"{options.grace:g}s grace were cut", err=True)
    return 0


@click.command("model-server", cls=commandline.OneLineCommand)
@click.option("--model", required=True, help="The one model this server serves.")
@click.option("--revision", default=None, help="The model's revision, reported by /health.")
@click.option("--name", default=None,
              help="Who serves, in the x-capguard-served-by header (the engine's name). "
                   "Default: host:port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), required=True,
              help="Port to listen on; 0 picks a free one (the first line says which).")
@click.option("--load-time", default="3s", show_default=True, callback=commandline.duration,
              help="How long the model takes to load; /health answers 503 until then.")
@click.option("--load-failure-rate", type=click.FloatRange(0, 1), default=0.0,
              show_default=True,
              help="The chance that the load fails at its end: exit 3, one stderr line.")
@click.option("--latency", default="0s", show_default=True, callback=commandline.duration,
              help="Mean time to answer a completion, with a jitter of ±25% from --seed.")
@click.option("--units", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Capacity units (the engine's capacityUnits).")
@click.option("--concurrency-per-unit", type=click.IntRange(1, 100_000), default=4,
              show_default=True,
              help="Completions in flight per unit; one more than units x this gets a 429.")
@click.option("--grace", default="30s", show_default=True, callback=commandline.duration,
              help="On SIGTERM, how long requests in flight may finish before they are cut.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the load failure and the latency jitter.")
def command(*, host: str, port: int, revision: str | None, **flags: Any) -> None:
    """Serve one model the way vLLM does, for capguard's engine agent and demo."""
    options = Options(revision=revision or None, **flags)
    sys.exit(asyncio.run(serve(options, host=host, port=port)))


if __name__ == "__main__":
    command(prog_name="model-server")  # errors read `capguard model-server: ...`, as in cli
