"""`capguard load`: open-loop requests per model, recorded per model and per second.

Arrivals follow a seeded Poisson schedule fixed before the first request (`schedule`),
so a run can be compared with its plan exactly. They never wait for answers: a slow or
failing gateway cannot slow the load down, which is what makes the success rate an
honest measure of an incident. Requests beyond `max_in_flight` are not sent and count
as failed with code "overload" rather than queueing. Each request is counted in the
second it was scheduled for, so every second adds up: sent = succeeded + failed.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import heapq
import json
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import click

from capguard import commandline

if TYPE_CHECKING:  # imported where it runs: `capguard --help` does not load it
    import aiohttp

Rate = Callable[[str, float], float] | Mapping[str, float]
OnSecond = Callable[[int, Mapping[str, "Second"]], None]

TIMEOUT: Final = "timeout"  # no answer within the client's timeout
CONNECT: Final = "connect"  # the gateway could not be reached
DISCONNECT: Final = "disconnect"  # the connection broke before the answer
OVERLOAD: Final = "overload"  # not sent: the generator's in-flight bound was reached
DEFAULT_MAX_IN_FLIGHT: Final = 10_000
PROMPT: Final = "capguard load"


def schedule(*, rate: Rate, models: Sequence[str], duration: float,
             seed: int) -> dict[str, tuple[float, ...]]:
    """Arrival times (seconds from the start) per model: a Poisson process whose rate is
    `rate(model, second)` within each second, from a generator seeded per model (adding a
    model does not move another's arrivals)."""
    plan: dict[str, tuple[float, ...]] = {}
    for model in models:
        draw = random.Random(f"{seed}/{model}")
        arrivals: list[float] = []
        for second in range(math.ceil(duration)):
            per_second, end = rate_of(rate, model, float(second)), min(second + 1.0, duration)
            moment = float(second)  # memoryless: starting over at each second is exact
            while per_second > 0:
                moment += draw.expovariate(per_second)
                if moment >= end:
                    break
                arrivals.append(moment)
        plan[model] = tuple(arrivals)
    return plan


def rate_of(rate: Rate, model: str, second: float) -> float:
    return max(0.0, rate(model, second) if callable(rate) else float(rate.get(model, 0.0)))


@dataclasses.dataclass(frozen=True)
class Second:
    """One model's requests scheduled in one second, and how they ended."""

    second: int
    sent: int  # scheduled, sent or counted as overload
    succeeded: int  # answered 2xx
    failed: Mapping[str, int]  # by HTTP code ("503") or TIMEOUT/CONNECT/DISCONNECT/OVERLOAD
    latency_p50: float | None  # of the succeeded requests, seconds
    latency_p99: float | None

    def document(self) -> dict[str, Any]:
        return {"second": self.second, "sent": self.sent, "succeeded": self.succeeded,
                "failed": dict(self.failed), "latency_p50": self.latency_p50,
                "latency_p99": self.latency_p99}


@dataclasses.dataclass(frozen=True)
class Recording:
    """A run: per model, one `Second` for each second of the run."""

    seconds: Mapping[str, tuple[Second, ...]]

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.seconds)

    def _of(self, model: str | None) -> Iterable[Second]:
        chosen = self.models if model is None else (model,)
        return (s for m in chosen for s in self.seconds.get(m, ()))

    def sent(self, model: str | None = None) -> int:
        return sum(s.sent for s in self._of(model))

    def succeeded(self, model: str | None = None) -> int:
        return sum(s.succeeded for s in self._of(model))

    def failed(self, model: str | None = None) -> dict[str, int]:
        """Failed requests by code."""
        counts: collections.Counter[str] = collections.Counter()
        for second in self._of(model):
            counts.update(second.failed)
        return dict(sorted(counts.items()))

    def success_rate(self, model: str | None = None) -> float | None:
        """Succeeded / sent, of one model or of all; None when nothing was sent."""
        sent = self.sent(model)
        return self.succeeded(model) / sent if sent else None

    def success_rate_by_minute(self, model: str | None = None) -> tuple[float | None, ...]:
        """The success rate of each minute of the run (None for a minute with no request)."""
        minutes = math.ceil(max((len(s) for s in self.seconds.values()), default=0) / 60)
        sent, succeeded = [0] * minutes, [0] * minutes
        for second in self._of(model):
            sent[second.second // 60] += second.sent
            succeeded[second.second // 60] += second.succeeded
        return tuple(ok / total if total else None for ok, total in zip(succeeded, sent,
                                                                        strict=True))

    def summary(self) -> dict[str, Any]:
        """Totals and success rates, overall and per model, as JSON."""
        def totals(model: str | None) -> dict[str, Any]:
            return {"sent": self.sent(model), "succeeded": self.succeeded(model),
                    "failed": self.failed(model), "success_rate": self.success_rate(model),
                    "success_rate_by_minute": list(self.success_rate_by_minute(model))}
        return {**totals(None), "models": {m: totals(m) for m in self.models}}


class _Tally:
    """Outcomes as they arrive, per model and second, until the run is frozen."""

    def __init__(self, *, models: Sequence[str], seconds: int) -> None:
        self.sent = {m: [0] * seconds for m in models}
        self.pending = [0] * seconds
        self.failed = {m: [collections.Counter[str]() for _ in range(seconds)] for m in models}
        self.latencies: dict[str, list[list[float]]] = {m: [[] for _ in range(seconds)]
                                                        for m in models}
        self.emitted = 0

    def send(self, model: str, second: int) -> None:
        self.sent[model][second] += 1
        self.pending[second] += 1

    def finish(self, model: str, second: int, *, code: str, latency: float) -> None:
        self.pending[second] -= 1
        if code.startswith("2"):
            self.latencies[model][second].append(latency)
        else:
            self.failed[model][second][code] += 1

    def second(self, model: str, second: int) -> Second:
        latencies = sorted(self.latencies[model][second])
        return Second(second=second, sent=self.sent[model][second], succeeded=len(latencies),
                      failed=dict(sorted(self.failed[model][second].items())),
                      latency_p50=_quantile(latencies, 0.5),
                      latency_p99=_quantile(latencies, 0.99))

    def complete(self, *, elapsed: float) -> list[int]:
        """Seconds that have ended with no request of theirs still out, in order, once."""
        done = []
        while (self.emitted < len(self.pending) and elapsed >= self.emitted + 1
               and not self.pending[self.emitted]):
            done.append(self.emitted)
            self.emitted += 1
        return done

    def recording(self) -> Recording:
        return Recording({m: tuple(self.second(m, s) for s in range(len(self.pending)))
                          for m in self.sent})


def _quantile(ordered: Sequence[float], q: float) -> float | None:
    """Nearest rank."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else None


async def run(*, gateway: str, rate: Rate, models: Sequence[str], duration: float,
              seed: int = 0, timeout: float = 30.0, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
              on_second: OnSecond | None = None, path: str = "/v1/completions") -> Recording:
    """Send the schedule's requests to `gateway` at their times; the recording.

    `on_second(second, {model: Second})` is called for each second, in order, once every
    request scheduled in it has ended (at most `timeout` after the second)."""
    import aiohttp

    plan = schedule(rate=rate, models=models, duration=duration, seed=seed)
    arrivals = list(heapq.merge(*([(t, m) for t in times] for m, times in plan.items())))
    tally = _Tally(models=models, seconds=math.ceil(duration))
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0)  # a connection pool would queue: not open-loop
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        start = loop.time()
        in_flight: set[asyncio.Task[None]] = set()

        def emit(*, elapsed: float) -> None:
            for second in tally.complete(elapsed=elapsed):
                if on_second is not None:
                    on_second(second, {m: tally.second(m, second) for m in models})

        ticker = asyncio.create_task(_tick(lambda: emit(elapsed=loop.time() - start)))
        try:
            for moment, model in arrivals:
                await asyncio.sleep(start + moment - loop.time())
                second = int(moment)
                tally.send(model, second)
                if len(in_flight) >= max_in_flight:
                    tally.finish(model, second, code=OVERLOAD, latency=0.0)
                    continue
                task = asyncio.create_task(_request(session, url=gateway.rstrip("/") + path,
                                                    model=model, second=second, tally=tally))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            await asyncio.sleep(start + duration - loop.time())
            await asyncio.gather(*in_flight)
        finally:
            ticker.cancel()
        emit(elapsed=math.inf)  # every request has ended by now
    return tally.recording()


async def _tick(emit: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(0.25)
        emit()


async def _request(session: aiohttp.ClientSession, *, url: str, model: str, second: int,
                   tally: _Tally) -> None:
    import aiohttp

    loop = asyncio.get_running_loop()
    started = loop.time()
    body = {"model": model, "prompt": PROMPT, "max_tokens": 16}
    try:
        async with session.post(url, json=body) as response:
            await response.read()
            code = str(response.status)
    except TimeoutError:
        code = TIMEOUT
    except aiohttp.ClientConnectorError:
        code = CONNECT
    except aiohttp.ClientError:
        code = DISCONNECT
    tally.finish(model, second, code=code, latency=loop.time() - started)


# --- the command --------------------------------------------------------------------


def rates(ctx: click.Context, param: click.Parameter, value: Sequence[str]) -> dict[str, float]:
    """A click callback: `--rate MODEL=RPS`, repeatable, into {model: rps}."""
    found: dict[str, float] = {}
    for item in value:
        model, _, number = item.partition("=")
        try:
            found[model] = float(number)
        except ValueError:
            found[model] = -1.0
        if not model or found[model] < 0:
            raise click.BadParameter(f"{item!r} is not MODEL=RPS, e.g. llama=20",
                                     ctx=ctx, param=param)
    return found


def _print_second(second: int, by_model: Mapping[str, Second]) -> None:
    for model, found in by_model.items():
        click.echo(json.dumps({"model": model, **found.document()}))


def _table(recording: Recording) -> str:
    def percent(rate: float | None) -> str:
        return "-" if rate is None else f"{100 * rate:.2f}%"

    lines = [f"{'model':<24} {'sent':>8} {'ok':>8} {'success':>9}  failed by code"]
    for model in (*recording.models, None):
        lines.append(f"{model or '(all)':<24} {recording.sent(model):>8} "
                     f"{recording.succeeded(model):>8} "
                     f"{percent(recording.success_rate(model)):>9}  "
                     f"{recording.failed(model) or ''}")
    minutes = " ".join(percent(r) for r in recording.success_rate_by_minute())
    return "\n".join([*lines, f"success rate by minute: {minutes}"])


@click.command("load", cls=commandline.OneLineCommand)
@click.option("--gateway", "url", required=True, help="The gateway's base URL.")
@click.option("--rate", "rate", multiple=True, required=True, callback=rates,
              help="MODEL=RPS: requests per second for a model (repeat for more models).")
@click.option("--duration", default="60s", show_default=True, callback=commandline.duration,
              help="How long to send for.")
@click.option("--timeout", default="30s", show_default=True, callback=commandline.duration,
              help="A request unanswered for this long counts as failed (timeout).")
@click.option("--seed", type=int, default=0, show_default=True, help="The schedule's seed.")
@click.option("--max-in-flight", type=click.IntRange(min=1), default=DEFAULT_MAX_IN_FLIGHT,
              show_default=True, help="Requests beyond this many unanswered ones are not sent "
                                      "and count as failed (overload).")
@click.option("--json", "as_json", is_flag=True,
              help="{'started': UNIX_TIME}, then one JSON object per model per second, "
                   "then {'summary': ...}.")
def command(*, url: str, rate: dict[str, float], duration: float, timeout: float, seed: int,
            max_in_flight: int, as_json: bool) -> None:
    """Send open-loop requests per model to a gateway and report the success rate."""
    if as_json:  # second 0 starts now: a reader maps seconds to its own clock from this
        click.echo(json.dumps({"started": time.time()}))
    recording = asyncio.run(run(gateway=url, rate=rate, models=list(rate), duration=duration,
                                seed=seed, timeout=timeout, max_in_flight=max_in_flight,
                                on_second=_print_second if as_json else None))
    if as_json:
        click.echo(json.dumps({"summary": recording.summary()}))
    else:
        click.echo(_table(recording))


if __name__ == "__main__":
    command(prog_name="load")  # errors read "capguard load: ...", as registered
