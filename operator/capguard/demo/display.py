"""What a person watches: a live panel on a terminal, narration lines everywhere else.

The panel redraws a few times a second from the recorder's latest sample; narration
lines (what the script did, what the operator announced in Events) scroll above it,
and are all that is printed when the output is not a terminal (CI, `--json` in a pipe).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any, Final

from rich import console as rich_console
from rich import table as rich_table
from rich import text as rich_text
from rich.console import Group

from capguard.demo import record
from capguard.sim import measures, scenarios

BAR_WIDTH: Final = 20
# Off a terminal rich assumes 80 columns and wraps every longer line and table; a pipe
# or a log file has no width, so a line stays one line (a grep finds it whole).
PIPE_WIDTH: Final = 1000
# Event reasons worth a line of their own (the operator's stable reasons).
NARRATED: Final = frozenset({"BreakerOpened", "BreakerHalfOpen", "BreakerClosed",
                             "BatchRefused", "FloorProtected", "ActionConflict"})


def time_note(*, speed: float, duration: float) -> list[str]:
    """Said once, before the incident: its clock against the real one everything else shows."""
    if speed >= 60:
        rate = f"{_count(speed / 60, 'incident minute')} = 1 real second"
    else:
        rate = f"1 incident minute = {_count(60 / speed, 'real second')}"
    return [
        f"time: {rate} at --speed {speed:g}; the MM:SS clock here is the incident's "
        f"(up to {duration / 60:g} minutes: {duration / speed:.0f} real seconds)",
        f"      Events, kubectl describe and the operator's log show real time: "
        f"an Event's '10s' is {_count(10 * speed / 60, 'incident minute')}",
    ]


def _count(number: float, unit: str) -> str:
    return f"{number:.3g} {unit}{'' if number == 1 else 's'}"


def clock(virtual_seconds: float) -> str:
    """Virtual time as the incident's minutes and seconds."""
    sign = "-" if virtual_seconds < 0 else ""
    minutes, seconds = divmod(int(abs(virtual_seconds)), 60)
    return f"{sign}{minutes:02d}:{seconds:02d}"


def panel(*, scenario: scenarios.Scenario, sample: measures.Sample | None,
          counts: record.OperatorCounts, executed: int, mode: str,
          revisions: Mapping[str, str]) -> Group:
    """The live view: breaker and queue, then one bar per model against its floor."""
    if sample is None:
        return Group(rich_text.Text("starting..."))
    header = rich_text.Text.assemble(
        (f" {clock(sample.at)} ", "bold reverse"), "  ",
        (f"{mode} ", "bold"), "breaker ", _breaker(sample.breaker),
        f"  queued {counts.backlog}  executed {executed}  refused {counts.refused}"
        f" ({counts.refused_batches} batches)  expired {counts.expired}"
        f"  engines out {sample.out_of_service}",
    )
    return Group(header, _models(scenario, sample=sample, revisions=revisions))


def _models(scenario: scenarios.Scenario, *, sample: measures.Sample,
            revisions: Mapping[str, str]) -> rich_table.Table:
    table = rich_table.Table(box=None, pad_edge=False)
    for column in ("model", "revision", "serving / desired", "units", "floor"):
        table.add_column(column)
    for name, model in zip(scenario.model_names, sample.models, strict=False):
        table.add_row(name, revisions.get(name, ""), _bar(model),
                      f"{model.serving}/{model.desired}", str(model.floor))
    return table


def _bar(model: measures.ModelSample) -> rich_text.Text:
    share = model.serving / model.desired if model.desired else 1.0
    filled = min(BAR_WIDTH, round(share * BAR_WIDTH))
    colour = "green" if model.serving >= model.floor else "bold red"
    return rich_text.Text("█" * filled + "·" * (BAR_WIDTH - filled), style=colour)


def _breaker(state: str) -> rich_text.Text:
    colour = {"Open": "bold red", "HalfOpen": "bold yellow"}.get(state, "green")
    return rich_text.Text(state, style=colour)


def progress_line(sample: measures.Sample, *, counts: record.OperatorCounts,
                  executed: int) -> str:
    """One line for a log: the same numbers as the panel, for output that is not a terminal."""
    low = min((m.serving / m.desired for m in sample.models if m.desired), default=1.0)
    return (f"{clock(sample.at)}  breaker {sample.breaker:<8} lowest serving {low:4.0%}  "
            f"out of service {sample.out_of_service:2d}  queued {counts.backlog:2d}  "
            f"executed {executed:3d}  refused {counts.refused:3d}")


def event_lines(events: Iterable[Mapping[str, Any]]) -> list[str]:
    """The operator's Events worth narrating, as `Reason object: message`."""
    lines = []
    for event in events:
        reason = str(event.get("reason") or "")
        if reason not in NARRATED:
            continue
        involved = event.get("involvedObject") or event.get("regarding") or {}
        subject = f"{str(involved.get('kind') or '').lower()}/{involved.get('name') or ''}"
        lines.append(f"Event {reason} on {subject}: {event.get('message') or event.get('note')}")
    return lines


def kubectl_lines(*, kubeconfig: str, namespace: str, metrics_port: int,
                  breaker: str) -> Sequence[str]:
    """Commands a person can type in another terminal while the demo runs."""
    return (
        f"export KUBECONFIG={kubeconfig}",
        f"kubectl -n {namespace} get mc,cb -w",
        f"kubectl -n {namespace} get ie -w",
        f"kubectl -n {namespace} describe cb {breaker}",
        f"kubectl -n {namespace} get events --sort-by=.lastTimestamp",
        f"curl -s localhost:{metrics_port}/metrics | grep capguard_",
    )


def make_console(*, stderr: bool, file: IO[str] | None = None) -> rich_console.Console:
    """A terminal's own width; elsewhere lines as long as they are, never wrapped."""
    console = rich_console.Console(stderr=stderr, file=file, highlight=False)
    if console.is_terminal:
        return console
    return rich_console.Console(stderr=stderr, file=file, highlight=False, width=PIPE_WIDTH,
                                soft_wrap=True)


WINDOW: Final = 5  # incident minutes per row of the success-rate table


def success_table(rows: Mapping[str, Sequence[tuple[int, float, float]]]) -> rich_table.Table:
    """The request success rate by incident minute, per mode: each row the worst minute of
    a window, overall and of the worst model. ``rows``: mode -> (minute, overall, worst
    model) for every minute with requests."""
    table = rich_table.Table(title="request success rate (the worst minute of each "
                             f"{WINDOW} incident minutes)")
    table.add_column("minutes")
    for mode in rows:
        table.add_column(f"{mode}: all", justify="right")
        table.add_column(f"{mode}: worst model", justify="right")
    last = max((m for found in rows.values() for m, _, _ in found), default=-1)
    for start in range(0, last + 1, WINDOW):
        cells = [f"{start:02d}-{start + WINDOW - 1:02d}"]
        for found in rows.values():
            window = [(o, w) for m, o, w in found if start <= m < start + WINDOW]
            cells += [_percent(min((o for o, _ in window), default=None)),
                      _percent(min((w for _, w in window), default=None))]
        table.add_row(*cells)
    return table


def _percent(rate: float | None) -> str:
    if rate is None:
        return "-"
    text = f"{100 * rate:.1f}%"
    return text if rate >= 0.99 else f"[bold red]{text}[/bold red]"
