"""A small world for property tests: a fleet, engine physics, a breaker and the core.

Not the simulator (that is ``capguard.sim``): just enough physics to let hypothesis
attack the core with pauses, demand changes, failures, stale views and restarts, and
a record of every triage so each invariant test can check its own property.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from hypothesis import strategies as st

from capguard.core import breaker, clock, drift, fleet, gate, planner, queue, specs

LOAD_SECONDS = 120.0
DRAIN_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class Shape:
    """The fleet a run starts from."""

    replicas: tuple[int, ...]  # per model; each starts serving exactly this many
    spares: int
    floor_percent: int
    max_unavailable: int
    rate_per_minute: float
    pause_threshold: float
    max_batch: int
    probes: int


# Events. Ticks move time and physics, then triage; the others change the world.
@dataclasses.dataclass(frozen=True)
class Tick:
    seconds: float


@dataclasses.dataclass(frozen=True)
class Plan:
    from_stale_view: bool  # plan from the snapshot taken at the last Look, like the incident


@dataclasses.dataclass(frozen=True)
class Look:
    """The planner's cache catches up with the cluster."""


@dataclasses.dataclass(frozen=True)
class Demand:
    model: int
    replicas: int


@dataclasses.dataclass(frozen=True)
class Revise:
    model: int  # roll the model to a new revision: every engine needs a refresh


@dataclasses.dataclass(frozen=True)
class Delete:
    model: int  # the ModelCapacity is deleted: its engines become orphans


@dataclasses.dataclass(frozen=True)
class Garble:
    model: int  # the model's spec stops parsing (a typo), or parses again if it did not


@dataclasses.dataclass(frozen=True)
class Fail:
    engine: int


@dataclasses.dataclass(frozen=True)
class Trip:
    open: bool


@dataclasses.dataclass(frozen=True)
class Approve:
    """A second person approves the release plan published while open."""


@dataclasses.dataclass(frozen=True)
class Restart:
    """The operator dies: queue, gate and breaker memory are rebuilt from the cluster."""


Event = Tick | Plan | Look | Demand | Revise | Delete | Garble | Fail | Trip | Approve | Restart


@dataclasses.dataclass(frozen=True)
class BreakerBefore:
    state: breaker.BreakerState
    probe_slots: int
    released_at: float | None
    last_pause_seconds: float


@dataclasses.dataclass(frozen=True)
class Triage:
    now: float
    before: fleet.Fleet
    after: fleet.Fleet
    decisions: tuple[gate.Decision, ...]
    breaker: BreakerBefore
    config: gate.GateConfig


shapes = st.builds(
    Shape,
    replicas=st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple),
    spares=st.integers(0, 4),
    floor_percent=st.sampled_from([50, 75, 90, 100]),
    max_unavailable=st.integers(1, 6),
    rate_per_minute=st.sampled_from([0.5, 1.0, 6.0, 60.0]),
    pause_threshold=st.sampled_from([60.0, 300.0]),
    max_batch=st.integers(0, 4),
    probes=st.integers(1, 3),
)

ticks = st.builds(Tick, st.sampled_from([5.0, 30.0, 60.0, 150.0, 600.0]))
plans = st.builds(Plan, st.booleans())
# Weighted by repetition: time passes and the planner plans far more often than people act.
events = st.one_of(
    ticks,
    ticks,
    ticks,
    plans,
    plans,
    plans,
    st.builds(Demand, st.integers(0, 3), st.integers(0, 8)),
    st.just(Look()),
    st.builds(Demand, st.integers(0, 3), st.integers(0, 8)),
    st.builds(Revise, st.integers(0, 3)),
    st.builds(Fail, st.integers(0, 40)),
    st.builds(Delete, st.integers(0, 3)),
    st.builds(Garble, st.integers(0, 3)),
    st.builds(Trip, st.booleans()),
    st.just(Approve()),
    st.just(Restart()),
)

runs = st.tuples(shapes, st.lists(events, min_size=20, max_size=80), st.lists(st.booleans()))


class World:
    def __init__(self, shape: Shape, *, guarded: bool = True) -> None:
        self.shape = shape
        self.clock = clock.FakeClock(1_000.0)
        self.config = gate.GateConfig(guarded=guarded, fleet_max_unavailable_percent=50)
        self.fleet = _initial_fleet(shape)
        self.view = self.fleet
        self.queue = queue.ActionQueue()
        self.gate = gate.Gate(self.config)
        self.machine = breaker.BreakerMachine(self.fleet.breakers["cb"], now=self.clock.now())
        self.tracker = drift.SignalTracker()
        self.triages: list[Triage] = []
        self.epochs: list[int] = []  # which gate (restarts counted) made each triage
        self._epoch = 0
        self.executed_ids: list[str] = []
        self.outcomes: list[bool] = []
        self._revision = 1
        self._garbled: dict[str, specs.ModelSpec] = {}  # the spec a typo hides, to restore

    def run(self, script: Sequence[Event], *, outcomes: Sequence[bool] = ()) -> World:
        self.outcomes = list(outcomes)
        for event in script:
            self.apply(event)
        return self

    def apply(self, event: Event) -> None:
        match event:
            case Tick(seconds):
                self.tick(seconds)
            case Plan(from_stale_view):
                # A stale view: engines as last looked at, desired capacity as it is now.
                seen = dataclasses.replace(self.fleet, engines=self.view.engines)
                seen = seen if from_stale_view else self.fleet
                self.queue.enqueue(planner.plan(seen), seen, self.clock.now())
            case Look():
                self.view = self.fleet
            case Demand(index, replicas):
                self._set_model(index, replicas=replicas)
            case Revise(index):
                self._revision += 1
                self._set_model(index, revision=f"v{self._revision}")
            case Delete(index):
                self._delete(index)
            case Garble(index):
                self._garble(index)
            case Fail(index):
                self._fail(index)
            case Trip(open_):
                spec = dataclasses.replace(self.fleet.breakers["cb"], open=open_)
                self.fleet = self.fleet.with_breaker(spec)
            case Approve():
                self._approve()
            case Restart():
                self.restart()

    def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)
        now = self.clock.now()
        for engine in list(self.fleet.engines.values()):
            moved = _physics(engine, now=now, revisions=self.fleet.models)
            if moved is not engine:
                self.fleet = self.fleet.with_engine(moved)
        spec = self.fleet.breakers["cb"]
        self.tracker.observe(drift.measure(self.fleet, self.queue, now), now=now)
        signals = self.tracker.signals(breaker=spec, models=self.fleet.models, now=now)
        self.machine.observe(spec, signals, now)
        self.triage()

    def triage(self) -> Triage:
        now = self.clock.now()
        before = self.fleet
        state = BreakerBefore(
            self.machine.state,
            self.machine.probe_slots(),
            self.machine.released_at,
            self.machine.last_pause_seconds,
        )
        decisions = self.gate.triage(self.queue, before, {"cb": self.machine}, now)
        for decision in decisions:
            if decision.verdict is gate.Verdict.EXECUTE:
                self._execute(decision)
        gate.settle(self.queue, decisions)
        record = Triage(now, before, self.fleet, tuple(decisions), state, self.config)
        self.triages.append(record)
        self.epochs.append(self._epoch)
        return record

    def restart(self) -> None:
        """Everything in memory is lost; the breaker comes back from its status."""
        self.queue = queue.ActionQueue()
        self.gate = gate.Gate(self.config)
        self._epoch += 1
        self.machine = restored(self.machine, spec=self.fleet.breakers["cb"], now=self.clock.now())
        # Models said Available in status stay established; drift clocks start over.
        self.tracker = drift.SignalTracker(established=set(self.tracker.established))

    def _execute(self, decision: gate.Decision) -> None:
        action = decision.action
        self.executed_ids.append(action.id)
        engine = self.fleet.engines[action.intent.engine]
        self.fleet = self.fleet.bind(
            engine.name,
            model=action.intent.model,
            action_id=action.id,
            resource_version=_bump(engine.resource_version),
        )
        if decision.probe:
            success = self.outcomes.pop(0) if self.outcomes else True
            self.machine.record_probe(success, self.clock.now())

    def _set_model(self, index: int, **changes: object) -> None:
        names = sorted(self.fleet.models)
        if not names:
            return
        current = self.fleet.models[names[index % len(names)]]
        changed = dataclasses.replace(current, **changes)  # type: ignore[arg-type]
        if "replicas" in changes:
            floor = specs.IntOrPercent(self.shape.floor_percent, percent=True)
            changed = dataclasses.replace(changed, min_available=floor)
        self.fleet = self.fleet.with_model(changed)

    def _delete(self, index: int) -> None:
        names = sorted(self.fleet.models)
        if len(names) > 1:  # keep one model, or the rest of the script has nothing to do
            gone = names[index % len(names)]
            models = {n: m for n, m in self.fleet.models.items() if n != gone}
            self.fleet = dataclasses.replace(self.fleet, models=models)

    def _garble(self, index: int) -> None:
        names = sorted({*self.fleet.models, *self._garbled})
        name = names[index % len(names)]
        if name in self._garbled:
            self.fleet = self.fleet.with_model(self._garbled.pop(name))
        elif len(self.fleet.models) > 1:
            self._garbled[name] = self.fleet.models[name]
            models = {n: m for n, m in self.fleet.models.items() if n != name}
            unreadable = self.fleet.unreadable_models | {name}
            self.fleet = dataclasses.replace(
                self.fleet, models=models, unreadable_models=unreadable
            )

    def _fail(self, index: int) -> None:
        names = sorted(self.fleet.engines)
        engine = self.fleet.engines[names[index % len(names)]]
        failed = dataclasses.replace(
            engine,
            phase=specs.Phase.FAILED,
            since=self.clock.now(),
            resource_version=_bump(engine.resource_version),
        )
        self.fleet = self.fleet.with_engine(failed)

    def _approve(self) -> None:
        plan = self.gate.release_plan(self.queue, self.fleet, self.machine, self.clock.now())
        approval = specs.Approval(plan.batch, "second-person")
        spec = dataclasses.replace(self.fleet.breakers["cb"], approval=approval)
        self.fleet = self.fleet.with_breaker(spec)


def restored(
    old: breaker.BreakerMachine, *, spec: specs.BreakerSpec, now: float
) -> breaker.BreakerMachine:
    """The machine a restarted operator rebuilds from what the old one wrote in status."""
    return breaker.BreakerMachine.restore(
        spec,
        now=now,
        state=old.state,
        since=old.since,
        reason=old.reason,
        opened_at=old.opened_at,
        last_pause_seconds=old.last_pause_seconds,
        seconds_in_state=old.seconds_in_state(now),
        probes_succeeded=old.probes_succeeded,
        refused=old.refused,
    )


def _initial_fleet(shape: Shape) -> fleet.Fleet:
    engines = []
    models = []
    for m, replicas in enumerate(shape.replicas):
        name = f"model-{m}"
        models.append(
            specs.ModelSpec(
                name=name,
                replicas=replicas,
                revision="v1",
                min_available=specs.IntOrPercent(shape.floor_percent, percent=True),
                max_unavailable=specs.IntOrPercent(shape.max_unavailable),
                rate_limit=specs.RateLimit(shape.rate_per_minute, burst=2),
                labels={"app": name},
            )
        )
        engines += [
            specs.Engine(
                name=f"{name}-e{i}",
                spec=specs.EngineSpec(pool="a", model_ref=name, revision="v1"),
                phase=specs.Phase.SERVING,
                model=name,
                revision="v1",
                resource_version="1",
                labels={"pool": "a"},
                since=0.0,
            )
            for i in range(replicas)
        ]
    engines += [
        specs.Engine(
            name=f"spare-{i}",
            spec=specs.EngineSpec(pool="a"),
            resource_version="1",
            labels={"pool": "a"},
            since=0.0,
        )
        for i in range(shape.spares)
    ]
    cb = specs.BreakerSpec(
        name="cb",
        pause_threshold=shape.pause_threshold,
        max_batch_after_pause=shape.max_batch,
        half_open_probes=shape.probes,
        max_plan_age=3_600.0,
        auto_trip=specs.AutoTrip(max_drift_ratio=0.75, on_floor_breach=False, window=300.0),
    )
    return fleet.Fleet.of(engines=engines, models=models, breakers=[cb])


def _bump(resource_version: str) -> str:
    return str(int(resource_version) + 1)


def _physics(
    engine: specs.Engine, *, now: float, revisions: dict[str, specs.ModelSpec] | object
) -> specs.Engine:
    """One step of the engine driver: Idle -> Loading -> Serving -> Draining -> Idle."""
    elapsed = now - (engine.since or 0.0)
    bound = engine.spec.model_ref
    P = specs.Phase
    nxt: tuple[specs.Phase, str | None] | None = None
    if engine.phase is P.FAILED:
        nxt = (P.IDLE, None) if bound is None and elapsed >= DRAIN_SECONDS else None
    elif engine.phase is P.SERVING and (
        bound != engine.model or engine.spec.revision != engine.revision
    ):
        nxt = (P.DRAINING, engine.model)
    elif engine.phase is P.DRAINING and elapsed >= DRAIN_SECONDS:
        nxt = (P.LOADING, bound) if bound else (P.IDLE, None)
    elif engine.phase is P.IDLE and bound:
        nxt = (P.LOADING, bound)
    elif engine.phase is P.LOADING and bound != engine.model:
        nxt = (P.LOADING, bound) if bound else (P.IDLE, None)
    elif engine.phase is P.LOADING and elapsed >= LOAD_SECONDS:
        nxt = (P.SERVING, bound)
    if nxt is None:
        return engine
    phase, model = nxt
    return dataclasses.replace(
        engine,
        phase=phase,
        model=model,
        revision=engine.spec.revision if phase is not P.IDLE else None,
        since=now,
        resource_version=_bump(engine.resource_version),
    )
