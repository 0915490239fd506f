"""The timeline as a PNG: serving share per model, the floor, the breaker, the actions."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit, works in CI

from matplotlib import pyplot

from capguard.sim import measures

_BREAKER_COLOURS = {"Open": "#e45756", "HalfOpen": "#f2a541"}


def draw(timelines: Sequence[measures.Timeline], *, path: pathlib.Path) -> None:
    """One panel per mode, stacked, sharing the time axis."""
    figure, axes = pyplot.subplots(
        len(timelines), 1, figsize=(11, 3.6 * len(timelines)), sharex=True, squeeze=False
    )
    for ax, timeline in zip(axes[:, 0], timelines, strict=True):
        _panel(ax, timeline)
    axes[-1, 0].set_xlabel("minutes")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _panel(ax: matplotlib.axes.Axes, timeline: measures.Timeline) -> None:
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
    ax.set_ylim(-0.08, 1.35)
    ax.set_ylabel("serving / desired")
    ax.set_title(f"{timeline.scenario.name} — {timeline.mode} (seed {timeline.seed})")
    ax.legend(loc="upper right", ncol=5, fontsize=7)


def _breaker_band(ax: matplotlib.axes.Axes, timeline: measures.Timeline) -> None:
    """Shade the time the breaker spent Open (red) and HalfOpen (amber)."""
    tick = timeline.scenario.tick_seconds
    for sample in timeline.samples:
        colour = _BREAKER_COLOURS.get(sample.breaker)
        if colour is not None:
            ax.axvspan(
                sample.at / 60, (sample.at + tick) / 60, color=colour, alpha=0.15, linewidth=0
            )


def _share(model: measures.ModelSample) -> float:
    return model.serving / model.desired if model.desired else 1.0
