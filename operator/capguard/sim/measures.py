"""What a run measured: a timeline of samples and executed actions, and its summary.

Every number here comes from the simulator's ground truth (the world), never from
what the gate believed, so a gate bug shows up as a bad number instead of hiding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from capguard.sim import scenarios as scenarios_


@dataclasses.dataclass(frozen=True)
class ModelSample:
    serving: int  # capacity units serving the model right now
    desired: int
    floor: int
    settled: bool  # at desired on its current revision and pool, nothing moving


@dataclasses.dataclass(frozen=True)
class Sample:
    """The fleet at the end of one tick."""

    at: float
    models: tuple[ModelSample, ...]  # in scenario.model_names order
    out_of_service: int  # engines holding or awaiting a model but not serving, or failed
    breaker: str  # the breaker state's CRD string
    backlog: int  # actions in the queue


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

    def summary(self) -> dict[str, object]:
        """The report's JSON object: the keys other tools read (see docs)."""
        overall = _model_measures(self, index=None)
        return {
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
            "per_model": {
                name: _model_measures(self, index=i)
                for i, name in enumerate(self.scenario.model_names)
            },
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


def _model_measures(timeline: Timeline, *, index: int | None) -> dict[str, object]:
    """Measures of one model (``index``) or of the whole fleet (``None``)."""
    tick = timeline.scenario.tick_seconds
    name = None if index is None else timeline.scenario.model_names[index]
    ratios, below_ticks, unserved, demand = [], 0, 0, 0
    for sample in timeline.samples:
        models = _pick(sample.models, index=index)
        ratios += [m.serving / m.desired for m in models if m.desired > 0]
        below_ticks += any(m.serving < m.floor for m in models)
        if sample.at >= timeline.scenario.release_at:
            demand += sum(m.desired for m in models)
            unserved += sum(max(0, m.desired - m.serving) for m in models)
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
    }


def _pick(models: Sequence[ModelSample], *, index: int | None) -> Sequence[ModelSample]:
    return models if index is None else models[index : index + 1]
