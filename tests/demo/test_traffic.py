"""The demo's request measure (`capguard.demo.serving`): the load reports a second only
once its last request has ended, so the end of an incident arrives after the incident.
The report must wait for it, and count nothing from after the end."""

from __future__ import annotations

import asyncio
import time

from capguard.demo import serving


def _second(model: str, second: int, *, sent: int, ok: int) -> dict[str, object]:
    failed = {"timeout": sent - ok} if sent > ok else {}
    return {"model": model, "second": second, "sent": sent, "succeeded": ok, "failed": failed}


async def _reports(traffic: serving.Traffic, started: float,
                   lines: list[tuple[float, dict[str, object]]]) -> None:
    """Lines as `capguard load --json` prints them, each ``delay`` seconds after the last."""
    traffic.add({"started": started})
    for delay, line in lines:
        await asyncio.sleep(delay)
        traffic.add(line)


def test_the_seconds_before_the_end_are_waited_for_and_those_after_are_left_out() -> None:
    async def scenario() -> tuple[serving.Traffic, serving.Traffic]:
        traffic = serving.Traffic()
        started = time.time() - 3.5  # seconds 0-2 have ended, 3 is under way: the end
        late = [(0.0, _second("a", 0, sent=10, ok=10)),
                (0.0, _second("a", 1, sent=10, ok=10)),
                (0.3, _second("a", 2, sent=10, ok=2)),  # its requests timed out: late
                (0.1, _second("a", 3, sent=10, ok=0)),
                (0.1, _second("a", 4, sent=10, ok=10))]  # began after the end
        feeding = asyncio.create_task(_reports(traffic, started, late))
        await asyncio.sleep(0.05)
        at_once = traffic.before(started + 3.5)
        measured = await serving.through(traffic, started + 3.5, timeout=5)
        await feeding
        return at_once, measured

    at_once, measured = asyncio.run(scenario())
    assert sorted(second for _, second in at_once.sent) == [0, 1]
    assert sorted(second for _, second in measured.sent) == [0, 1, 2, 3]
    summary = measured.summary(zero=measured.started or 0.0, speed=60, models=["a"])
    assert summary["requests_total"] == 40
    assert summary["requests_failed_by_code"] == {"timeout": 18}
    assert summary["success_rate_by_minute"] == {"0": 1.0, "1": 1.0, "2": 0.2, "3": 0.0}


def test_a_load_that_never_reports_the_end_gives_what_it_has_after_the_timeout() -> None:
    async def scenario() -> tuple[serving.Traffic, float]:
        traffic = serving.Traffic()
        started = time.time() - 2.5
        traffic.add({"started": started})
        traffic.add(_second("a", 0, sent=5, ok=5))
        begun = time.monotonic()
        measured = await serving.through(traffic, started + 2.5, timeout=0.3)
        return measured, time.monotonic() - begun

    measured, waited = asyncio.run(scenario())
    assert 0.3 <= waited < 2
    assert measured.sent == {("a", 0): 5}
