"""The picture a postmortem wants: naive and guarded on the same axes and time range.

Four panels sharing the incident's minutes: the request success rate (overall and the
worst model's, per minute), the engines out of service against the disruption budget,
the queued backlog (the breaker's Open and HalfOpen time shaded on every panel), and a
marker where a batch was refused. The key numbers are in the subtitle.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit, works in CI

from matplotlib import pyplot
from matplotlib.axes import Axes

from capguard.demo import play
from capguard.sim import plot as sim_plot

_STYLE = {"guarded": ("#2e7d32", "-"), "naive": ("#c62828", "--")}
_BREAKER = {"Open": "#e45756", "HalfOpen": "#f2a541"}


def draw(outcomes: Sequence[play.Outcome], *, path: pathlib.Path) -> None:
    figure, axes = pyplot.subplots(4, 1, figsize=(12, 11), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 2, 2, 0.6]})
    success, out, backlog, breaker = axes
    for outcome in outcomes:
        colour, line = _STYLE.get(outcome.timeline.mode, ("#555555", ":"))
        mode = outcome.timeline.mode
        overall = outcome.success_by_minute()
        worst = sorted(outcome.worst_model_by_minute().items())
        success.plot([m + 0.5 for m, _ in overall], [100 * r for _, r in overall], line,
                     color=colour, linewidth=1.6, label=f"{mode}: all models")
        success.plot([m + 0.5 for m, _ in worst], [100 * r for _, r in worst], line,
                     color=colour, linewidth=0.9, alpha=0.6, label=f"{mode}: worst model")
        minutes = [s.at / 60 for s in outcome.timeline.samples]
        out.step(minutes, [s.out_of_service for s in outcome.timeline.samples], line,
                 color=colour, where="post", label=f"{mode}: engines out of service")
        backlog.step(minutes, [s.backlog for s in outcome.timeline.samples], line,
                     color=colour, where="post", label=f"{mode}: queued actions")
        for at in outcome.refused_at:
            for ax in (success, out, backlog):
                ax.axvline(at / 60, color=colour, linestyle=":", linewidth=1)
        success.plot([a / 60 for a in outcome.refused_at], [101] * len(outcome.refused_at),
                     "v", color=colour, markersize=9, linestyle="none",
                     label=f"{mode}: batch refused" if outcome.refused_at else None)
    budget = max((o.timeline.disruption_budget for o in outcomes), default=0)
    out.axhline(budget, color="black", linewidth=1, linestyle="-.",
                label=f"disruption budget ({budget})")
    _breaker_rows(breaker, outcomes)
    success.set_ylabel("request success %")
    success.set_ylim(-3, 105)
    out.set_ylabel("engines")
    backlog.set_ylabel("actions")
    breaker.set_xlabel("incident minutes")
    for ax in (success, out, backlog):
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
        ax.grid(alpha=0.3)
    figure.suptitle(_title(outcomes), fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _breaker_rows(ax: Axes, outcomes: Sequence[play.Outcome]) -> None:
    """One row per mode: the time its breaker spent Open (red) and HalfOpen (amber)."""
    for row, outcome in enumerate(outcomes):
        for state, start, end in sim_plot.stretches(
                outcome.timeline.samples, tick=outcome.timeline.scenario.tick_seconds):
            colour = _BREAKER.get(state)
            if colour is not None:
                ax.broken_barh([(start / 60, (end - start) / 60)], (row + 0.1, 0.8),
                               color=colour)
    ax.set_yticks([i + 0.5 for i in range(len(outcomes))],
                  [f"{o.timeline.mode} breaker" for o in outcomes], fontsize=8)
    ax.set_ylim(0, max(1, len(outcomes)))


def _title(outcomes: Sequence[play.Outcome]) -> str:
    parts = []
    for outcome in outcomes:
        summary = outcome.summary()
        lowest = summary.get("min_success_rate")
        rate = "-" if not isinstance(lowest, float) else f"{100 * lowest:.1f}%"
        parts.append(
            f"{outcome.timeline.mode}: worst minute {rate} of requests served, "
            f"{summary.get('error_minutes', '-')} error minutes, "
            f"{summary['max_engines_out_of_service']} engines out at once "
            f"(budget {summary['disruption_budget']}), "
            f"{summary['refused_batches']} batch refused")
    scenario = outcomes[0].timeline.scenario.name if outcomes else ""
    return f"{scenario}, live on real engines\n" + "\n".join(parts)
