"""`capguard demo` end to end, as a person runs it: a subprocess, the embedded API server,
the real operator, the march-4 script, and the measures it prints as its last line.

`--speed 300` plays the incident's 70 minutes in 14 seconds (64 engines, 8 models,
the sim's timeline for seed 0). Here the guarded operator on simulated engines (fast); the
default demo, real engines with traffic in both modes, is played once, at `--speed 120`,
from the installed wheel (tests/ship/test_packaging.py), so that every one of its
processes is the wheel's.
"""

from __future__ import annotations

import io
import json
import pathlib
import subprocess
import sys
from typing import Any

import pytest

from capguard.demo import display
from capguard.sim import report

SPEED = "300"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


def demo(tmp_path: pathlib.Path, *flags: str, speed: str = SPEED,
         timeout: float = 140) -> tuple[dict[str, Any], pathlib.Path, str]:
    plot = tmp_path / "timeline.png"
    done = subprocess.run(
        [sys.executable, "-m", "capguard.cli", "demo", "--json", "--speed", speed,
         "--plot", str(plot), *flags],
        capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    return json.loads(last), plot, done.stdout


def test_guarded_demo_refuses_the_batch_and_holds_every_floor(tmp_path: pathlib.Path) -> None:
    measures, plot, output = demo(tmp_path, "--mode=guarded", "--engines=simulated")
    assert measures["mode"] == "guarded"
    assert measures["min_serving_ratio"] >= measures["floor_ratio"]
    assert measures["stale_actions_executed"] == 0
    assert measures["floor_breaking_actions"] == 0
    assert measures["refused_batches"] >= 1
    assert measures["max_engines_out_of_service"] <= measures["disruption_budget"]
    assert measures["converge_seconds"] is not None
    assert plot.stat().st_size > 0
    lines = output.splitlines()
    # Piped: the Event's whole message on its line, and the clock explained once.
    assert any("BatchRefused" in line and "re-planning" in line for line in lines), output
    assert output.count("1 real second at --speed 300;") == 1, output
    assert output.count("show real time") == 1, output


@pytest.mark.parametrize("plot", ["timeline.txt", "not-a-folder/x.png"])
def test_a_plot_it_cannot_draw_is_refused_before_the_demo_starts(
    tmp_path: pathlib.Path, plot: str
) -> None:
    (tmp_path / "not-a-folder").write_text("a file where the folder would go")
    done = subprocess.run(
        [sys.executable, "-m", "capguard.cli", "demo", "--plot", str(tmp_path / plot)],
        capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2, done.stderr
    assert "--plot" in done.stderr and "serving at" not in done.stdout


def test_off_a_terminal_lines_are_whole_and_the_clock_is_explained_once() -> None:
    piped = io.StringIO()
    console = display.make_console(stderr=False, file=piped)
    assert not console.is_terminal
    event = {"reason": "BatchRefused", "involvedObject": {"kind": "CircuitBreaker",
                                                          "name": "capacity"},
             "message": "refused post-pause batch batch-c7f23fc4cc23: 8 actions, oldest "
                        "planned 3s ago; re-planning from the cluster " + "x" * 200}
    said = [*display.time_note(speed=60, duration=4200), *display.event_lines([event]),
            "fleet: 8 models x 7 units, 64 engines in pools h100-a, h100-b, breaker "
            "'capacity' (namespace capguard-demo) " + "y" * 200]
    for line in said:
        console.print(line)  # as the demo prints: markup on, no per-call soft_wrap
    summary = {"scenario": "march-4", "seed": 0, "min_serving_ratio": 1.0}
    console.print(report.as_table({"guarded (live) " + "z" * 120: summary}))
    printed = piped.getvalue().splitlines()
    assert printed[:len(said)] == said
    assert said[0].startswith("time: 1 incident minute = 1 real second at --speed 60;")
    assert sum("incident minute = " in line for line in printed) == 1
    table = printed[len(said):]
    assert len({len(row) for row in table[1:]}) == 1, table  # every row one whole line
    assert len(table) == 1 + 4 + 1, table  # title, borders and header, one measure
