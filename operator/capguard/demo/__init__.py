"""`capguard demo`: the march-4 incident played live, with time compressed.

The embedded API server (or any cluster), the fleet of the simulator's scenario, the
real operator as a separate process, the incident's script, and at the end the
simulator's own measures and plot computed from what a watcher of the cluster saw.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
from collections.abc import Coroutine, Sequence
from typing import Any, Final

from rich import console as rich_console

from capguard.demo import display, play, postmortem
from capguard.sim import plot as sim_plot
from capguard.sim import report as sim_report

Options = play.Options
EXIT_INTERRUPTED: Final = 130


def main(options: Options, *, as_json: bool, modes: Sequence[str] = ("guarded",)) -> int:
    """Play the incident in each mode in turn (a fresh fleet each time), print each one's
    report, then the plot of all of them and the JSON last; the process exit code."""
    console = display.make_console(stderr=False)
    outcomes: list[play.Outcome] = []

    def report(outcome: play.Outcome) -> None:
        outcomes.append(outcome)
        summary = outcome.summary()
        mode = outcome.timeline.mode
        console.print(sim_report.as_table({f"{mode} (live)": outcome.timeline.summary()}))
        if outcome.traffic is not None:
            console.print(display.success_table({mode: _minutes(outcome)}))
            console.print(f"{mode}: {summary['requests_total']} requests, "
                          f"{summary['requests_failed']} failed "
                          f"{summary['requests_failed_by_code'] or ''}", soft_wrap=True)
        if len(outcomes) == len(modes) or options.keep:
            _finish(outcomes, options=options, as_json=as_json, console=console)

    try:
        for mode in modes:
            chosen = dataclasses.replace(options, naive=mode == "naive")
            asyncio.run(_until_signalled(play.play(chosen, console=console, report=report)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("stopped; everything the demo started is cleaned up", style="bold")
        return EXIT_INTERRUPTED
    return 0


def _minutes(outcome: play.Outcome) -> list[tuple[int, float, float]]:
    """(minute, overall, worst model's) success rate for every minute with requests."""
    worst = outcome.worst_model_by_minute()
    return [(m, rate, worst.get(m, rate)) for m, rate in outcome.success_by_minute()]


def _finish(outcomes: Sequence[play.Outcome], *, options: Options, as_json: bool,
            console: rich_console.Console) -> None:
    if len(outcomes) > 1 and outcomes[0].traffic is not None:
        console.print(display.success_table({o.timeline.mode: _minutes(o) for o in outcomes}))
    if options.plot is not None:
        options.plot.parent.mkdir(parents=True, exist_ok=True)
        if all(o.traffic is not None for o in outcomes):
            postmortem.draw(outcomes, path=options.plot)
        else:
            sim_plot.draw([o.timeline for o in outcomes], path=options.plot)
        console.print(f"timeline: {options.plot}")
    if as_json:
        # One line, the last of the output: tools read it with `tail -n 1`. One mode: its
        # report; several: {mode: report}, as `capguard simulate --mode both` prints.
        summaries = {o.timeline.mode: o.summary() for o in outcomes}
        document = summaries if len(summaries) > 1 else next(iter(summaries.values()))
        console.file.write(json.dumps(document) + "\n")
        console.file.flush()


async def _until_signalled(work: Coroutine[Any, Any, None]) -> None:
    """Run ``work``; SIGTERM cancels it like Ctrl-C does, so cleanup runs either way."""
    task = asyncio.create_task(work)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await task
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


__all__ = ["Options", "main"]
