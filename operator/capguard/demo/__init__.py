"""`capguard demo`: the march-4 incident played live, with time compressed.

The embedded API server (or any cluster), the fleet of the simulator's scenario, the
real operator as a separate process, the incident's script, and at the end the
simulator's own measures and plot computed from what a watcher of the cluster saw.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Coroutine
from typing import Any, Final

from capguard.demo import display, play
from capguard.sim import measures
from capguard.sim import plot as sim_plot
from capguard.sim import report as sim_report

Options = play.Options
EXIT_INTERRUPTED: Final = 130


def main(options: Options, *, as_json: bool) -> int:
    """Run the demo, print the report (and the JSON last); the process exit code."""
    console = display.make_console(stderr=False)

    def report(timeline: measures.Timeline) -> None:
        summary = timeline.summary()
        if options.plot is not None:
            options.plot.parent.mkdir(parents=True, exist_ok=True)
            sim_plot.draw([timeline], path=options.plot)
        console.print(sim_report.as_table({f"{timeline.mode} (live)": summary}))
        if options.plot is not None:
            console.print(f"timeline: {options.plot}")
        if as_json:
            # One line, the last of the output: tools read it with `tail -n 1`.
            console.file.write(json.dumps(summary) + "\n")
            console.file.flush()

    try:
        asyncio.run(_until_signalled(play.play(options, console=console, report=report)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("stopped; everything the demo started is cleaned up", style="bold")
        return EXIT_INTERRUPTED
    return 0


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
