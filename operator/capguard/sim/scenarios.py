"""The scenarios the simulator replays, each a frozen set of documented parameters.

A scenario says what the fleet looks like, when the breaker opens and closes, and what
routine work the capacity manager is asked to do while it is open. The seed decides
the exact moments (and the engine physics' jitter); the scenario decides the rest.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Mapping
from typing import Final

from capguard.sim import physics as physics_

POOL_LABEL: Final = "capguard.dev/pool"
MODEL_NAMES: Final = (
    "llama-70b", "mixtral-8x7b", "qwen-72b", "gemma-27b",
    "mistral-7b", "phi-3", "deepseek-v2", "command-r",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Pause:
    """The breaker is open from ``opens_at`` until ``closes_at`` (virtual seconds)."""

    opens_at: float
    closes_at: float


@dataclasses.dataclass(frozen=True)
class Rate:
    """A token bucket: ``per_minute`` tokens a minute, at most ``burst`` saved up."""

    per_minute: float
    burst: int


# What can happen to the fleet. Each event is a spec change a person (or an autoscaler)
# makes, or a failure; the simulator applies them at their time, whatever the breaker says.
@dataclasses.dataclass(frozen=True)
class Refresh:
    at: float
    model: str  # gets the next revision: its engines must reload


@dataclasses.dataclass(frozen=True)
class Rebalance:
    at: float
    model: str
    pool: str  # the model's engineSelector now picks this pool


@dataclasses.dataclass(frozen=True)
class Demand:
    at: float
    model: str
    replicas: int


@dataclasses.dataclass(frozen=True)
class Failures:
    at: float
    count: int  # serving engines, picked by the seeded RNG, fail at once


@dataclasses.dataclass(frozen=True)
class Breaker:
    at: float
    open: bool


Event = Refresh | Rebalance | Demand | Failures | Breaker


@dataclasses.dataclass(frozen=True, kw_only=True)
class Scenario:
    """A fleet, a breaker schedule and the routine work asked for while it is open."""

    name: str
    summary: str
    models: int = 8
    units_per_model: int = 7  # desired capacity units (one engine = one unit)
    spare_engines: int = 8  # idle engines, so make-before-break has somewhere to start
    pools: tuple[str, ...] = ("h100-a", "h100-b")  # model i lives in pools[i % len(pools)]
    floor_percent: int = 90  # every model's minAvailable, as a percent of its replicas
    max_unavailable: int = 1  # every model's maxUnavailable, in engines
    model_rate: Rate | None = None  # every model's rateLimit
    global_rate: Rate = Rate(per_minute=2.0, burst=2)  # the breaker's rateLimit
    pause_threshold: float = 300.0
    max_batch_after_pause: int = 3
    half_open_probes: int = 2
    max_plan_age: float = 600.0
    physics: physics_.Physics = dataclasses.field(default_factory=physics_.Physics)
    tick_seconds: float = 5.0
    duration: float = 3600.0  # virtual seconds simulated, in both modes alike
    pauses: tuple[Pause, ...] = (Pause(300.0, 1500.0),)
    # Routine work asked for during the pauses, at seeded moments inside them:
    refreshes: int = 0  # models that get a new revision
    rebalances: int = 0  # models moved to another pool
    demand_shifts: int = 0  # models whose desired units change by +-demand_step
    demand_step: int = 2
    failures: int = 0  # failure events, each failing failure_size serving engines
    failure_size: int = 2
    # Per model, by index (a model past the end gets 0): its priority, and desired units
    # it gains at a seeded moment inside a pause (demand growth).
    priorities: tuple[int, ...] = ()
    growth: tuple[int, ...] = ()
    # Failure events (failure_size engines each) at seeded moments in the late_window
    # seconds after the last release, when the manager sees them at once.
    late_failures: int = 0
    late_window: float = 1200.0
    # Record each model's covered floor and report restoration (`measures.FloorCase`).
    floor_measures: bool = False

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(_model_name(i, self.models) for i in range(self.models))

    @property
    def engine_count(self) -> int:
        return self.models * self.units_per_model + self.spare_engines

    @property
    def floor_ratio(self) -> float:
        return self.floor_percent / 100

    @property
    def release_at(self) -> float:
        """The last release: convergence and unserved demand are measured from here."""
        return max(p.closes_at for p in self.pauses)

    def pool_of(self, model_index: int) -> str:
        return self.pools[model_index % len(self.pools)]

    def priority_of(self, model_index: int) -> int:
        return _nth(self.priorities, model_index)

    def timeline(self, rng: random.Random) -> tuple[Event, ...]:
        """Every event of one run, in time order; the seed picks the moments."""
        events: list[Event] = [e for p in self.pauses for e in _switches(p)]
        events += self._routine_work(rng)
        return tuple(sorted(events, key=lambda e: (e.at, _ORDER[type(e)])))

    def _routine_work(self, rng: random.Random) -> Iterator[Event]:
        names = self.model_names
        for name in rng.sample(names, k=min(self.refreshes, len(names))):
            yield Refresh(self._moment(rng), name)
        for name in rng.sample(names, k=min(self.rebalances, len(names))):
            index = names.index(name)
            yield Rebalance(self._moment(rng), name, self.pools[(index + 1) % len(self.pools)])
        shifted = rng.sample(names, k=min(self.demand_shifts, len(names)))
        for i, name in enumerate(shifted):
            step = self.demand_step if i % 2 == 0 else -self.demand_step  # half grow, half shrink
            yield Demand(self._moment(rng), name, max(1, self.units_per_model + step))
        for _ in range(self.failures):
            yield Failures(self._moment(rng), self.failure_size)
        for i, name in enumerate(names):
            if _nth(self.growth, i):
                yield Demand(self._moment(rng), name, self.units_per_model + _nth(self.growth, i))
        for _ in range(self.late_failures):
            yield Failures(self._late_moment(rng), self.failure_size)

    def _moment(self, rng: random.Random) -> float:
        """A tick-aligned moment inside one of the pauses, never its last minute."""
        pause = rng.choice(self.pauses)
        latest = max(pause.opens_at, pause.closes_at - 60.0)
        at = rng.uniform(pause.opens_at, latest)
        return at - at % self.tick_seconds

    def _late_moment(self, rng: random.Random) -> float:
        """A tick-aligned moment after the last release, inside the late window."""
        at = rng.uniform(self.release_at + self.tick_seconds, self.release_at + self.late_window)
        return at - at % self.tick_seconds


_ORDER: Final[Mapping[type, int]] = {
    Breaker: 0, Refresh: 1, Rebalance: 2, Demand: 3, Failures: 4,
}  # fmt: skip


def _switches(pause: Pause) -> tuple[Breaker, Breaker]:
    return Breaker(pause.opens_at, True), Breaker(pause.closes_at, False)


def _nth(values: tuple[int, ...], index: int) -> int:
    return values[index] if index < len(values) else 0


def _model_name(index: int, count: int) -> str:
    return MODEL_NAMES[index] if count <= len(MODEL_NAMES) else f"model-{index:03d}"


MARCH_4: Final = Scenario(
    name="march-4",
    summary=(
        "The seed incident: 8 models x 7 units + 8 spare engines, the breaker open for "
        "20 minutes while routine revision refreshes are planned from a cached view; "
        "no failures, desired capacity constant, then a release."
    ),
    refreshes=8,
    # Plans outlive the pause, as in the incident, so at the release it is the
    # post-pause batch guard (not expiry) that stands between the backlog and the fleet.
    max_plan_age=1800.0,
    duration=4200.0,  # the release is at 25 min; guarded needs about 32 more to converge
)

FAILURES_DURING_PAUSE: Final = Scenario(
    name="failures-during-pause",
    summary=(
        "Engines fail and demand shifts while the breaker is open: the cached view "
        "misses both, so every queued plan is built on counts that no longer hold."
    ),
    refreshes=3,
    demand_shifts=3,
    failures=3,
    physics=physics_.Physics(load_failure_rate=0.05),
)

FLAPPING_BREAKER: Final = Scenario(
    name="flapping-breaker",
    summary=(
        "The breaker opens for 4 minutes every 7, each pause shorter than the pause "
        "threshold: the batch guard stays quiet unless HalfOpen never closes in between, "
        "so staleness, floor, budgets and rate limits must hold on their own."
    ),
    pauses=tuple(Pause(300.0 + 420.0 * i, 300.0 + 420.0 * i + 240.0) for i in range(4)),
    refreshes=4,
    rebalances=2,
)

THUNDERING_SCALE: Final = Scenario(
    name="thundering-scale",
    summary=(
        "A big demand shift during the pause: half the models grow by 3 units and half "
        "shrink by 3, with only 4 spares, so the backlog moves engines between models."
    ),
    spare_engines=4,
    demand_shifts=8,
    demand_step=3,
)

SCARCITY: Final = Scenario(
    name="scarcity",
    summary=(
        "Demand above supply: during the pause the high-priority models grow by 4 units "
        "and the middle ones by 2, so each pool's desired units exceed its engines and "
        "its floors nearly fill it; engines fail during the pause and after the release, "
        "so for a stretch some floors cannot be covered until repairs bring engines back."
    ),
    units_per_model=6,
    spare_engines=4,
    floor_percent=80,
    priorities=(100, 100, 50, 50),
    growth=(4, 4, 2, 2),
    failures=2,
    late_failures=2,
    duration=4800.0,
    floor_measures=True,
)

SCENARIOS: Final[Mapping[str, Scenario]] = {
    s.name: s
    for s in (MARCH_4, FAILURES_DURING_PAUSE, FLAPPING_BREAKER, THUNDERING_SCALE, SCARCITY)
}
