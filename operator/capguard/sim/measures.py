"""What a run measured: a timeline of samples and executed actions, and its summary.

Every number here comes from the simulator's ground truth (the world), never from
what the gate believed, so a gate bug shows up as a bad number instead of hiding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Final

from capguard.core import breaker as breaker_
from capguard.sim import scenarios as scenarios_


@dataclasses.dataclass(frozen=True)
class ModelSample:
    serving: int  # capacity units serving the model right now
    desired: int
    floor: int
    settled: bool  # at desired on its current revision and pool, nothing moving
    # The part of the floor the supply covers (``Allocation.models[m].covered``): the
    # floor the gate protects and the planner restores; the rest is reported short.
    covered: int | None = None  # None: not recorded


@dataclasses.dataclass(frozen=True)
class PoolSample:
    """One pool's supply against the floors of the models whose selector picks it, counted
    from the engines themselves, beside what the allocation reported short."""

    pool: str
    usable: int  # units of the pool's engines that are not failed
    floors: int
    reported_short: int  # the allocation's floor_shortfall over those models

    @property
    def short(self) -> int:
        """Floor units no allocation can cover: the floors above the usable supply."""
        return max(0, self.floors - self.usable)


@dataclasses.dataclass(frozen=True)
class Sample:
    """The fleet at the end of one tick."""

    at: float
    models: tuple[ModelSample, ...]  # in scenario.model_names order
    out_of_service: int  # engines holding or awaiting a model but not serving, or failed
    breaker: str  # the breaker state's CRD string
    backlog: int  # actions in the queue
    pools: tuple[PoolSample, ...] = ()  # in scenario.pools order


@dataclasses.dataclass(frozen=True)
class Executed:
    """One action that the manager wrote to the world."""

    at: float
    engine: str
    kind: str
    model: str | None
    from_model: str | None
    # The engine, or the counts of a model it touches, differed from the plan's view.
    stale: bool
    # Models this action took serving capacity from that were below floor right after.
    broke_floor: tuple[str, ...]
    # It took a serving engine for a model already holding its floor while these models
    # held less than the part of their floor the supply covers (surplus before floors).
    surplus_before_floors: tuple[str, ...] = ()


@dataclasses.dataclass
class Timeline:
    """Everything one run recorded, in order; ``summary`` turns it into the report."""

    scenario: scenarios_.Scenario
    mode: str
    seed: int
    disruption_budget: int
    samples: list[Sample] = dataclasses.field(default_factory=list)
    executed: list[Executed] = dataclasses.field(default_factory=list)
    refused: int = 0
    expired: int = 0
    conflicts: int = 0  # writes that lost their resourceVersion precondition (409)
    refused_batches: int = 0
    backlog_at_release: int = 0
    # Capacity-taking actions each model needed at the (last) release: see lower bound.
    needed_after_release: dict[str, int] = dataclasses.field(default_factory=dict)
    # The step (any step, not only a tick) from which every later step found the fleet
    # converged, as `converge_seconds` asks of the samples: see `converge_step_seconds`.
    converged_step_at: float | None = None

    def summary(self) -> dict[str, object]:
        """The report's JSON object: the keys other tools read (see docs)."""
        overall = _model_measures(self, index=None)
        report: dict[str, object] = {
            "scenario": self.scenario.name,
            "mode": self.mode,
            "seed": self.seed,
            "min_serving_ratio": overall["min_serving_ratio"],
            "floor_ratio": self.scenario.floor_ratio,
            "minutes_below_floor": overall["minutes_below_floor"],
            "max_engines_out_of_service": max((s.out_of_service for s in self.samples), default=0),
            "disruption_budget": self.disruption_budget,
            "floor_breaking_actions": overall["floor_breaking_actions"],
            "actions_executed": len(self.executed),
            "actions_refused": self.refused,
            "actions_expired": self.expired,
            "stale_actions_executed": overall["stale_actions_executed"],
            "refused_batches": self.refused_batches,
            "converge_seconds": self.converge_seconds(),
            "converge_lower_bound_seconds": round(self.converge_lower_bound(), 3),
            "unserved_demand_share": overall["unserved_demand_share"],
            "write_conflicts": self.conflicts,
            "backlog_at_release": self.backlog_at_release,
        }
        if self.scenario.floor_measures:
            report |= self.floor_summary()
        report["per_model"] = {
            name: _model_measures(self, index=i) for i, name in enumerate(self.scenario.model_names)
        }
        return report

    def floor_summary(self) -> dict[str, object]:
        """Scarcity: were the floors the supply covers restored in time, and was every
        floor it cannot cover reported short (`floor_cases`, `PoolSample`)?"""
        cases = floor_cases(self)
        judged = [c for c in cases if c.judged]
        in_time = sum(1 for c in judged if c.in_time)
        uncovered = sum(1 for s in self.samples for m in s.models if _uncovered(m))
        return {
            "floors_restored_ratio": round(in_time / len(judged), 4) if judged else None,
            "floor_cases": len(judged),
            "floor_cases_cut_short": len(cases) - len(judged),
            "uncovered_floor_model_minutes": round(uncovered * self.scenario.tick_seconds / 60, 3),
            "floor_shortfall_misreported_samples": sum(1 for s in self.samples if _misreported(s)),
            "surplus_before_floor_actions": sum(1 for e in self.executed
                                                if e.surplus_before_floors),
        }

    def converge_seconds(self) -> float | None:
        """Seconds from the last release until every model is settled and the queue empty.

        Settled: serving exactly its desired units on its current revision and in its
        selected pool, with nothing loading or draining for it. The moment counts only if
        it lasts to the end of the run; ``None`` means the run ended unconverged.
        """
        release = self.scenario.release_at
        converged_at: float | None = None
        for sample in self.samples:
            if sample.at < release:
                continue
            done = sample.backlog == 0 and all(m.settled for m in sample.models)
            if not done:
                converged_at = None
            elif converged_at is None:
                converged_at = sample.at
        return None if converged_at is None else round(converged_at - release, 3)

    def converge_step_seconds(self) -> float | None:
        """`converge_seconds` measured at the step the fleet converged rather than at the
        next tick's sample: the manager steps whenever the world changes, so the fleet is
        converged from that step on (the samples see it up to a tick later)."""
        at = self.converged_step_at
        release = self.scenario.release_at
        if at is None or self.converge_seconds() is None:
            return None
        return round(max(at, release) - release, 3)

    def converge_lower_bound(self) -> float:
        """The fastest convergence the rate limits allow after the last release.

        N capacity-taking actions are needed (every serving engine on the wrong revision
        or pool leaves its model once, and so does every surplus unit). A token bucket
        of ``burst`` b and rate r admits them no sooner than (N - b) / r after the first.
        The first cannot run before a replacement has loaded (the floor is the desired
        count, so make-before-break must make first): the shortest load comes before,
        and the last action's drain after. The slowest bucket (the breaker's, or any
        one model's) decides.
        """
        needed = self.needed_after_release
        total = sum(needed.values())
        if total == 0:
            return 0.0
        s = self.scenario
        buckets = [(total, s.global_rate)]
        if s.model_rate is not None:
            buckets += [(n, s.model_rate) for n in needed.values() if n > 0]
        tokens = max(max(0, n - r.burst) * 60.0 / r.per_minute for n, r in buckets)
        shortest_load = s.physics.load_seconds * (1 - s.physics.load_jitter)
        return shortest_load + tokens + s.physics.drain_seconds


@dataclasses.dataclass(frozen=True)
class FloorCase:
    """One (model, episode): a stretch of samples in which the model serves below its
    floor, the supply covers that floor (``covered == floor``) and the breaker is not
    Open, so the gate may act. The stretch ends when the model serves its floor again
    (restored), or is cut short: the supply no longer covers the floor (a failure), the
    breaker opens, or the run ends."""

    model: str
    start: float
    end: float  # the sample that ended the stretch (the last sample if the run ended)
    restored: bool
    allowed: float  # seconds the limits allow from ``start`` (`allowed_seconds`)

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def in_time(self) -> bool:
        return self.restored and self.seconds <= self.allowed

    @property
    def judged(self) -> bool:
        """Restored, or not restored within its allowance; a stretch cut short before its
        allowance ran out says nothing either way."""
        return self.restored or self.seconds > self.allowed


def floor_cases(timeline: Timeline) -> list[FloorCase]:
    """Every case of a model below a covered floor, in time order (see `FloorCase`)."""
    names = timeline.scenario.model_names
    started: dict[int, tuple[float, float]] = {}  # model index -> (start, allowed)
    cases = []
    for sample in timeline.samples:
        acting = sample.breaker != breaker_.BreakerState.OPEN.value
        for i, m in enumerate(sample.models):
            if acting and m.serving < m.floor and m.covered == m.floor:
                if i not in started:
                    started[i] = (sample.at, allowed_seconds(timeline.scenario, sample=sample))
            elif i in started:
                begun, allowed = started.pop(i)
                cases.append(FloorCase(names[i], begun, sample.at, m.serving >= m.floor, allowed))
    last = timeline.samples[-1].at if timeline.samples else 0.0
    cases += [FloorCase(names[i], b, last, False, a) for i, (b, a) in started.items()]
    return sorted(cases, key=lambda c: (c.start, c.model))


def allowed_seconds(scenario: scenarios_.Scenario, *, sample: Sample) -> float:
    """The time the limits allow to restore a covered floor that is short at ``sample``.

    Floors first, so the case waits at most for every floor unit short in the whole fleet
    at that moment: N = sum over models of (covered - serving, if positive). Each unit
    needs at most one capacity-taking action, and each action a token of the slowest
    bucket (the breaker's, or a model's rateLimit) of rate r a minute, counted from an
    empty bucket: N * 60 / r seconds. The last action's engine then drains and loads (the
    longest load, load_seconds * (1 + load_jitter)). A HalfOpen breaker first waits for
    its probes to load (one longest load and a tick), and the manager needs a tick to see
    the shortfall and one to act: 2 ticks. The fleet disruption budget is not counted
    (it holds an action only while engines are out, failed ones included)."""
    physics = scenario.physics
    longest_load = physics.load_seconds * (1 + physics.load_jitter)
    rates = [scenario.global_rate] + ([scenario.model_rate] if scenario.model_rate else [])
    per_minute = min(r.per_minute for r in rates)
    short = sum(max(0, m.covered - m.serving) for m in sample.models if m.covered is not None)
    half_open = sample.breaker == breaker_.BreakerState.HALF_OPEN.value
    probes = longest_load + scenario.tick_seconds if half_open else 0.0
    return (probes + short * 60.0 / per_minute + physics.drain_seconds + longest_load
            + 2 * scenario.tick_seconds)


def _uncovered(model: ModelSample) -> bool:
    return model.covered is not None and model.covered < model.floor


def _misreported(sample: Sample) -> bool:
    """A pool's floors above its usable supply by other than the allocation reports short,
    or a model reported short while it serves its floor."""
    pools = any(p.reported_short != p.short for p in sample.pools)
    return pools or any(_uncovered(m) and m.serving >= m.floor for m in sample.models)


def _model_measures(timeline: Timeline, *, index: int | None) -> dict[str, object]:
    """Measures of one model (``index``) or of the whole fleet (``None``)."""
    tick = timeline.scenario.tick_seconds
    name = None if index is None else timeline.scenario.model_names[index]
    ratios, below_ticks = [], 0
    for sample in timeline.samples:
        models = _pick(sample.models, index=index)
        ratios += [m.serving / m.desired for m in models if m.desired > 0]
        below_ticks += any(m.serving < m.floor for m in models)
    unserved, demand = _unserved(timeline, index=index)
    mine = [e for e in timeline.executed if name is None or name in (e.model, e.from_model)]
    return {
        "min_serving_ratio": round(min(ratios, default=1.0), 4),
        "minutes_below_floor": round(below_ticks * tick / 60, 3),
        "floor_breaking_actions": sum(
            1
            for e in timeline.executed
            if e.broke_floor and (name is None or name in e.broke_floor)
        ),
        "actions_executed": len(mine),
        "stale_actions_executed": sum(1 for e in mine if e.stale),
        "unserved_demand_share": round(unserved / demand, 4) if demand else 0.0,
    } | (_model_floor_measures(timeline, index=index) if timeline.scenario.floor_measures else {})


UNSERVED_WINDOW: Final = 1800.0  # seconds after the release: the incident's half hour


def _unserved(timeline: Timeline, *, index: int | None) -> tuple[float, float]:
    """Desired unit-seconds not served, and desired unit-seconds, over the window after the
    last release, each sample holding until the next. A fixed window, so that runs of
    different lengths (the simulator's, to the scenario's end; the demo's, to
    convergence) and sampling (ticks; real time) measure the same thing; a run that ends
    sooner counts the window's rest as it ended."""
    start = timeline.scenario.release_at
    end = start + UNSERVED_WINDOW
    window = [s for s in timeline.samples if start <= s.at < end]
    unserved = demand = 0.0
    for sample, after in zip(window, [*window[1:], None], strict=True):
        held = (after.at if after is not None else end) - sample.at
        models = _pick(sample.models, index=index)
        demand += held * sum(m.desired for m in models)
        unserved += held * sum(max(0, m.desired - m.serving) for m in models)
    return unserved, demand


def _model_floor_measures(timeline: Timeline, *, index: int | None) -> dict[str, object]:
    uncovered = sum(1 for s in timeline.samples for m in _pick(s.models, index=index)
                    if _uncovered(m))
    return {"uncovered_floor_minutes": round(uncovered * timeline.scenario.tick_seconds / 60, 3)}


def _pick(models: Sequence[ModelSample], *, index: int | None) -> Sequence[ModelSample]:
    return models if index is None else models[index : index + 1]
