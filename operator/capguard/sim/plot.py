"""The timeline as a PNG: serving share per model, the floor, the breaker, the actions."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit, works in CI

from matplotlib import pyplot
from matplotlib.axes import Axes

from capguard.sim import measures

_BREAKER_COLOURS = {"Open": "#e45756", "HalfOpen": "#f2a541"}


def draw(timelines: Sequence[measures.Timeline], *, path: pathlib.Path) -> None:
    """One panel per mode, stacked, sharing the time axis."""
    figure, axes = pyplot.subplots(
        len(timelines), 1, figsize=(12, 3.6 * len(timelines)), sharex=True, squeeze=False
    )
    for ax, timeline in zip(axes[:, 0], timelines, strict=True):
        _panel(ax, timeline)
    axes[-1, 0].set_xlabel("minutes")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _panel(ax: Axes, timeline: measures.Timeline) -> None:
    minutes = [s.at / 60 for s in timeline.samples]
    _breaker_band(ax, timeline)
    for i, name in enumerate(timeline.scenario.model_names):
        share = [_share(s.models[i]) for s in timeline.samples]
        ax.plot(minutes, share, linewidth=1.2, label=name)
    ax.axhline(
        timeline.scenario.floor_ratio, color="black", linestyle="--", linewidth=1, label="floor"
    )
    acted = [e.at / 60 for e in timeline.executed]
    ax.plot(acted, [-0.04] * len(acted), "|", color="black", markersize=8, label="action ran")
    top = max((_share(m) for s in timeline.samples for m in s.models), default=1.0)
    ax.set_ylim(-0.08, max(1.1, top + 0.1))
    ax.set_ylabel("serving / desired")
    ax.set_title(f"{timeline.scenario.name} — {timeline.mode} (seed {timeline.seed})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)


def _breaker_band(ax: Axes, timeline: measures.Timeline) -> None:
    """Shade the time the breaker spent Open (red) and HalfOpen (amber)."""
    tick = timeline.scenario.tick_seconds
    labelled: set[str] = set()
    for state, start, end in stretches(timeline.samples, tick=tick):
        colour = _BREAKER_COLOURS.get(state)
        if colour is None:
            continue
        label = None if state in labelled else f"breaker {state}"
        labelled.add(state)
        ax.axvspan(start / 60, end / 60, color=colour, alpha=0.15, linewidth=0, label=label)


def stretches(
    samples: Sequence[measures.Sample], *, tick: float
) -> list[tuple[str, float, float]]:
    """Consecutive samples in the same breaker state, as (state, start, end) in seconds."""
    stretches: list[tuple[str, float, float]] = []
    for sample in samples:
        if stretches and stretches[-1][0] == sample.breaker:
            state, start, _ = stretches[-1]
            stretches[-1] = (state, start, sample.at + tick)
        else:
            stretches.append((sample.breaker, sample.at, sample.at + tick))
    return stretches


def _share(model: measures.ModelSample) -> float:
    return model.serving / model.desired if model.desired else 1.0
