"""Drift, measured (DESIGN.md #6): how far the fleet is from desired, and how old the plans are."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from capguard.core import breaker as breaker_
from capguard.core import fleet as fleet_
from capguard.core import queue as queue_
from capguard.core import specs


@dataclasses.dataclass(frozen=True)
class ModelDrift:
    desired: int
    serving: int
    floor: int
    loading: int = 0  # engines loading or bound but not yet serving
    draining: int = 0
    # Serving units of engines on another revision than the model's: refreshed, one by one.
    outdated: int = 0
    # What the allocation gives the model (core/allocation.py): scarcity, said out loud.
    # None: not measured (a drift built by hand), read as "no shortage".
    allocated: int | None = None  # units the planner moves it toward: desired unless short
    covered: int | None = None  # the part of the floor the supply covers
    pools: tuple[str, ...] | None = None  # pools of the engines its selector matches

    @property
    def floor_shortfall(self) -> int:
        """Floor units the supply cannot cover (0 when it can)."""
        return 0 if self.covered is None else max(0, self.floor - self.covered)

    @property
    def short(self) -> int:
        """Desired units the supply cannot give the model now."""
        return 0 if self.allocated is None else max(0, self.desired - self.allocated)

    @property
    def no_eligible_engines(self) -> bool:
        return self.pools == () and self.desired > 0

    @property
    def drift(self) -> int:
        """Units short of desired; never negative (surplus is not drift)."""
        return max(0, self.desired - self.serving)

    @property
    def drift_ratio(self) -> float:
        return self.drift / self.desired if self.desired else 0.0

    @property
    def reached_desired(self) -> bool:
        """Every desired unit serves at the model's revision and no engine is still on its
        way in or out: a scale or a rollout is complete (what `Ready` says)."""
        return (self.serving - self.outdated >= self.desired
                and not self.loading and not self.draining)

    @property
    def below_floor(self) -> bool:
        return self.serving < self.floor

    @property
    def available_percent(self) -> int:
        return 100 if not self.desired else min(100, self.serving * 100 // self.desired)


@dataclasses.dataclass(frozen=True)
class DriftReport:
    models: Mapping[str, ModelDrift]
    oldest_plan_age: float
    pending_actions: int
    # Queued actions whose engine changed since the plan: the planner's view vs the cluster.
    stale_view_engines: int

    def signals(self, models: Iterable[str] | None = None) -> breaker_.FleetSignals:
        """The auto-trip inputs for the given models (every model when None)."""
        chosen = (
            [self.models[m] for m in models if m in self.models]
            if models is not None
            else (list(self.models.values()))
        )
        return breaker_.FleetSignals(
            max_drift_ratio=max((d.drift_ratio for d in chosen), default=0.0),
            floor_breached=any(d.below_floor for d in chosen),
        )


@dataclasses.dataclass
class SignalTracker:
    """The auto-trip signals, from reports remembered between passes (the caller keeps it).

    A fleet being brought up is below every floor and fully drifted by design, and a
    scale-up drifts at once; tripping on that would hold the very actions that fix it.
    So a floor breach counts only for a model that has been available (at or above its
    floor in an earlier report, or said to be by the caller, e.g. ``Available=True`` in
    status before a restart), and drift only once it has lasted a breaker's
    ``autoTrip.window`` with no progress (its drift units never shrank meanwhile).
    """

    established: set[str] = dataclasses.field(default_factory=set)
    drifting_since: dict[str, float] = dataclasses.field(default_factory=dict)
    report: DriftReport | None = None
    _last_drift: dict[str, int] = dataclasses.field(default_factory=dict, init=False, repr=False)

    def observe(self, report: DriftReport, *, now: float, available: Iterable[str] = ()) -> None:
        self.report = report
        self.established &= set(report.models)  # a deleted model starts over if re-created
        self.established.update(m for m in available if m in report.models)
        for name, model in report.models.items():
            if not model.below_floor:
                self.established.add(name)
            drift, last = model.drift, self._last_drift.get(name)
            if not drift or (last is not None and drift < last):
                self.drifting_since.pop(name, None)  # converged, or progress: the clock restarts
            if drift:
                self.drifting_since.setdefault(name, now)
        self._last_drift = {n: m.drift for n, m in report.models.items()}
        self.drifting_since = {n: t for n, t in self.drifting_since.items() if n in report.models}

    def signals(
        self, *, breaker: specs.BreakerSpec, models: Iterable[str], now: float
    ) -> breaker_.FleetSignals:
        """The signals for one breaker over the models it governs, by the rules above."""
        if self.report is None:
            return breaker_.FleetSignals()
        window = breaker.auto_trip.window if breaker.auto_trip else 0.0
        ratio, breached = 0.0, False
        for name in models:
            found = self.report.models.get(name)
            if found is None:
                continue
            if now - self.drifting_since.get(name, now) >= window and found.drift:
                ratio = max(ratio, found.drift_ratio)
            breached = breached or (found.below_floor and name in self.established)
        return breaker_.FleetSignals(max_drift_ratio=ratio, floor_breached=breached)


def measure(fleet: fleet_.Fleet, queue: queue_.ActionQueue, now: float) -> DriftReport:
    pending = queue.pending()
    stale = sum(
        1
        for a in pending
        if (e := fleet.engines.get(a.intent.engine)) is None
        or e.resource_version != a.planned_from.engine_resource_version
    )
    known = fleet.memo(__name__)  # each model's drift, carried by `Fleet.derive`
    models = {}
    for name in sorted(fleet.models):
        found = known.get(name)
        if found is None:
            found = known[name] = _model_drift(fleet, name)
        models[name] = found
    return DriftReport(
        models=models,
        oldest_plan_age=queue.oldest_age(now),
        pending_actions=len(pending),
        stale_view_engines=stale,
    )


def _model_drift(fleet: fleet_.Fleet, name: str) -> ModelDrift:
    share = fleet.allocation.models[name]
    return dataclasses.replace(counts(fleet, name), allocated=share.target,
                               covered=min(share.covered, share.floor), pools=share.pools)


def counts(fleet: fleet_.Fleet, name: str) -> ModelDrift:
    """One model's numbers read from the engines alone, without the allocation (its
    three fields None): what the fast path measures from a fleet of the model's own
    engines, to which it adds the last full pass's allocation."""
    out = [fleet.engines[e] for e in fleet.unavailable_engines(name)]
    draining = sum(1 for e in out if e.spec.model_ref != name)  # leaving, whatever its phase
    revision = fleet.models[name].revision
    outdated = sum(fleet.engines[e].units for e in fleet.serving_engines(name)
                   if revision is not None and fleet.engines[e].revision != revision)
    return ModelDrift(
        desired=fleet.desired_units(name),
        serving=fleet.serving_units(name),
        floor=fleet.floor_units(name),
        loading=len(out) - draining,
        draining=draining,
        outdated=outdated,
    )
