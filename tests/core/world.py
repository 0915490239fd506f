"""A small world for property tests: a fleet, engine physics, and the core's pipeline.

Not the simulator (that is ``capguard.sim``): just enough of a cluster to let hypothesis
attack the code users run (`capguard.core.pipeline`, the step the operator and the
simulator run; `capguard.core.engines`, the phase machine of every driver) with pauses,
demand changes, failures, stale views and restarts, and a record of every triage so
each invariant test can check its own property.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from hypothesis import strategies as st

from capguard.core import breaker, clock, engines, fleet, gate, pipeline, queue, specs

TIMING = engines.Timing(load=120.0, drain=30.0, repair=600.0)


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
class Prioritize:
    model: int  # who gets engines first when they are scarce
    priority: int


@dataclasses.dataclass(frozen=True)
class Trip:
    open: bool


@dataclasses.dataclass(frozen=True)
class Approve:
    """A second person approves the release plan published while open."""


@dataclasses.dataclass(frozen=True)
class Restart:
    """The operator dies: queue, gate and breaker memory are rebuilt from the cluster."""


Event = (Tick | Plan | Look | Demand | Revise | Delete | Garble | Fail | Prioritize | Trip
         | Approve | Restart)


@dataclasses.dataclass(frozen=True)
class Triage:
    now: float
    before: fleet.Fleet
    after: fleet.Fleet
    decisions: tuple[gate.Decision, ...]
    breaker: breaker.Snapshot  # as the gate saw it
    config: gate.GateConfig
    # Probe slots each breaker counts as taken, and the probes the pipeline tracks.
    probes_counted: dict[str, int]
    probes_tracked: dict[str, int]


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
    st.builds(Prioritize, st.integers(0, 3), st.sampled_from([0, 10])),
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
        self.pipeline = pipeline.Pipeline(pipeline.Config(gate=self.config))
        self.saved: dict[str, dict[str, object]] = {}  # each breaker's status as written
        self.published: dict[str, gate.ReleasePlan] = {}  # status.releasePlan, as written
        self._available: frozenset[str] = frozenset()  # Available=True in status (restarts)
        self.triages: list[Triage] = []
        self.epochs: list[int] = []  # which pipeline (restarts counted) made each triage
        self._epoch = 0
        self.executed_ids: list[str] = []
        self.outcomes: list[bool] = []
        self._revision = 1
        self._garbled: dict[str, specs.ModelSpec] = {}  # the spec a typo hides, to restore

    @property
    def queue(self) -> queue.ActionQueue:
        return self.pipeline.queue

    @property
    def machine(self) -> breaker.BreakerMachine:
        """The breaker's machine (as a restart would restore it, before the first step)."""
        found = self.pipeline.machines.get("cb")
        spec = self.fleet.breakers["cb"]
        return found or breaker.restore(spec, self.saved.get("cb", {}), now=self.clock.now())

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
                self.step(plan=True, view=seen if from_stale_view else None)
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
            case Prioritize(index, priority):
                self._set_model(index, priority=priority)
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
            moved = _drive(engine, now=now)
            if moved is not engine:
                self.fleet = self.fleet.with_engine(moved)
        self.step(plan=False)

    def step(self, *, plan: bool, view: fleet.Fleet | None = None) -> Triage:
        """One pipeline step on the world as it is now; the world executes its writes."""
        now = self.clock.now()
        before = self.fleet
        observed = pipeline.Observed(
            before,
            saved_breakers=self.saved,
            available_models=self._available,
            plan=plan,
            view=view,
        )
        result = self.pipeline.step(observed, now)
        self._available = frozenset()
        for execution in result.executions:
            self._execute(execution)
        self.saved = {n: breaker.saved_status(b, now=now) for n, b in result.breakers.items()}
        self.published = dict(result.release_plans)
        record = Triage(
            now,
            before,
            self.fleet,
            result.decisions,
            result.judged_by["cb"],
            self.config,
            {n: m.probes_in_flight for n, m in self.pipeline.machines.items()},
            {n: self.pipeline.probes_in_flight(n) for n in self.pipeline.machines},
        )
        self.triages.append(record)
        self.epochs.append(self._epoch)
        return record

    def settle(self, *, seconds: float = 4 * 3600.0) -> World:
        """The breaker closed and the planner left to work for a while, nobody else
        acting: failed engines are repaired, rate limits refill, floors restored."""
        self.apply(Trip(False))
        self.apply(Look())
        for _ in range(int(seconds // 60)):
            self.apply(Plan(False))
            self.apply(Tick(60.0))
        return self

    def restart(self) -> None:
        """Everything in memory is lost; the breaker comes back from its status."""
        # Models said Available in status stay established; drift clocks start over.
        self._available = frozenset(self.pipeline.signals.established)
        self.pipeline = pipeline.Pipeline(self.pipeline.config)
        self._epoch += 1

    def _execute(self, execution: pipeline.Execution) -> None:
        action = execution.action
        self.executed_ids.append(action.id)
        engine = self.fleet.engines[action.intent.engine]
        self.fleet = self.fleet.bind(
            engine.name,
            model=action.intent.model,
            action_id=action.id,
            resource_version=_bump(engine.resource_version),
        )
        success = self.outcomes.pop(0) if execution.probes and self.outcomes else True
        if not success:  # the probe's engine fails: the next step sees it and reopens
            bound = self.fleet.engines[engine.name]
            self.fleet = self.fleet.with_engine(
                engines.fail(bound, now=self.clock.now(), resource_version=_bump(
                    bound.resource_version))
            )

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
        failed = engines.fail(
            engine, now=self.clock.now(), resource_version=_bump(engine.resource_version)
        )
        self.fleet = self.fleet.with_engine(failed)

    def _approve(self) -> None:
        """A second person approves the release plan the breaker's status publishes."""
        plan = self.published.get("cb")
        if plan is None:
            return  # published only while the breaker is Open
        approval = specs.Approval(plan.batch, "second-person")
        spec = dataclasses.replace(self.fleet.breakers["cb"], approval=approval)
        self.fleet = self.fleet.with_breaker(spec)


def restored(
    old: breaker.BreakerMachine, *, spec: specs.BreakerSpec, now: float
) -> breaker.BreakerMachine:
    """The machine a restarted operator rebuilds from what the old one wrote in status."""
    return breaker.restore(spec, breaker.saved_status(old.snapshot(now), now=now), now=now)


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
                last_action_id=f"bound-{name}-e{i}",  # capguard bound it: not the user's
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


def _drive(engine: specs.Engine, *, now: float) -> specs.Engine:
    """The engine driver: the core's phase machine, every move due at ``now``."""
    for _ in range(engines.MAX_MOVES_AT_ONCE):
        move = engines.step(engine, timing=TIMING, now=now).transition
        if move is None:
            break
        engine = engines.moved(engine, move, now=now, resource_version=_bump(
            engine.resource_version))
    return engine
