"""The simulated cluster: the ground truth the capacity manager observes and writes to.

Engines are values with a resourceVersion that changes on every write, models and the
breaker are CR bodies parsed by the core's own parser. The world knows nothing about
plans: it applies spec changes, lets the engine physics run, and accepts binding
writes with (or, for the naive manager, without) a resourceVersion precondition.
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Iterable

from capguard.core import engines as engines_
from capguard.core import fleet as fleet_
from capguard.core import specs
from capguard.sim import physics as physics_
from capguard.sim import scenarios as scenarios_

BREAKER_NAME = "capacity"


class Write(enum.Enum):
    DONE = "Done"
    CONFLICT = "Conflict"  # 409: the engine changed since the plan was made
    DUPLICATE = "Duplicate"  # the action id is already on the engine: not run twice


class World:
    """Mutable holder of immutable engine and spec values; one per simulation run."""

    def __init__(self, *, scenario: scenarios_.Scenario, rng: random.Random) -> None:
        self.scenario = scenario
        self.rng = rng
        self._version = 0
        self._revisions: dict[str, int] = {}
        # What a person wrote in each ModelCapacity's spec; parsed by the core's parser.
        self._model_specs = {
            name: _model_spec(scenario=scenario, index=i)
            for i, name in enumerate(scenario.model_names)
        }
        self._generations = dict.fromkeys(self._model_specs, 1)
        self.models = {name: self._parse_model(name) for name in self._model_specs}
        self.breaker_open = False
        self.breaker = specs.parse_breaker(self._breaker_body())
        self.engines = {e.engine.name: e for e in self._initial_engines()}
        self._fleet: fleet_.Fleet | None = None

    def stamp(self) -> str:
        """The next resourceVersion: one counter for every write, like etcd's revision."""
        self._version += 1
        return str(self._version)

    def fleet(self) -> fleet_.Fleet:
        """The cluster as a watch-fed index sees it now (rebuilt only after a write)."""
        if self._fleet is None:
            self._fleet = fleet_.Fleet.of(
                engines=[e.engine for e in self.engines.values()],
                models=self.models.values(),
                breakers=[self.breaker],
            )
        return self._fleet

    def advance(self, *, now: float, only: Iterable[str] | None = None) -> None:
        """Let the engine driver move every engine (or only ``only``) as far as ``now``."""
        physics = self.scenario.physics
        timing = physics_.timing_of(physics)
        for name in sorted(self.engines) if only is None else only:
            before = self.engines[name]
            after = physics_.advance(
                before, now=now, physics=physics, rng=self.rng, stamp=self.stamp, timing=timing
            )
            if after is not before:
                self._put(after)

    def next_change(self, *, now: float) -> float | None:
        """When the driver moves an engine next (a load or a drain ends, a repair is
        done) with nothing else changed: the moment a watch would show it."""
        timing = physics_.timing_of(self.scenario.physics)
        due = (engines_.step(e.engine, timing=e.timing(timing), now=now).due
               for e in self.engines.values() if not engines_.settled(e.engine))
        return min((t for t in due if t is not None and t > now), default=None)

    def bind(
        self, *, engine: str, model: str | None, action_id: str, expect_version: str | None
    ) -> Write:
        """Execute an action: write the engine's binding (and the model's revision)."""
        current = self.engines[engine].engine
        if current.last_action_id == action_id:
            return Write.DUPLICATE
        if expect_version is not None and current.resource_version != expect_version:
            return Write.CONFLICT
        revision = self.models[model].revision if model in self.models else None
        spec = dataclasses.replace(current.spec, model_ref=model, revision=revision)
        written = dataclasses.replace(
            current, spec=spec, last_action_id=action_id, resource_version=self.stamp()
        )
        self._put(dataclasses.replace(self.engines[engine], engine=written))
        return Write.DONE

    def apply(self, event: scenarios_.Event, *, now: float) -> None:
        """A spec change or a failure from the scenario's timeline."""
        match event:
            case scenarios_.Breaker(open=is_open):
                self.breaker_open = is_open
                self.breaker = specs.parse_breaker(self._breaker_body())
                self._fleet = None
            case scenarios_.Refresh(model=model):
                self._revisions[model] = self._revisions.get(model, 1) + 1
                self._set_model(model, revision=f"r{self._revisions[model]}")
            case scenarios_.Rebalance(model=model, pool=pool):
                self._set_model(
                    model, engineSelector={"matchLabels": {scenarios_.POOL_LABEL: pool}}
                )
            case scenarios_.Demand(model=model, replicas=replicas):
                self._set_model(model, replicas=replicas)
            case scenarios_.Failures(count=count):
                self._fail(count=count, now=now)

    def _fail(self, *, count: int, now: float) -> None:
        serving = [
            n for n, e in sorted(self.engines.items()) if e.engine.phase is specs.Phase.SERVING
        ]
        for name in self.rng.sample(serving, k=min(count, len(serving))):
            failed = physics_.fail(self.engines[name], now=now, stamp=self.stamp)
            self._put(failed)

    def _set_model(self, name: str, **changes: object) -> None:
        self._model_specs[name] = {**self._model_specs[name], **changes}
        self._generations[name] += 1
        self.models[name] = self._parse_model(name)
        self._fleet = None

    def _parse_model(self, name: str) -> specs.ModelSpec:
        metadata = {
            "name": name,
            "generation": self._generations[name],
            "resourceVersion": self.stamp(),
        }
        return specs.parse_model(
            {
                "apiVersion": "capguard.dev/v1alpha1",
                "kind": "ModelCapacity",
                "metadata": metadata,
                "spec": self._model_specs[name],
            }
        )

    def _put(self, engine: physics_.SimEngine) -> None:
        self.engines[engine.engine.name] = engine
        self._fleet = None

    def _breaker_body(self) -> dict[str, object]:
        s = self.scenario
        return {
            "apiVersion": "capguard.dev/v1alpha1",
            "kind": "CircuitBreaker",
            "metadata": {"name": BREAKER_NAME, "resourceVersion": self.stamp()},
            "spec": {
                "open": self.breaker_open,
                "pauseThreshold": f"{s.pause_threshold:g}s",
                "maxBatchAfterPause": s.max_batch_after_pause,
                "halfOpenProbes": s.half_open_probes,
                "maxPlanAge": f"{s.max_plan_age:g}s",
                "rateLimit": _rate_body(s.global_rate),
            },
        }

    def _initial_engines(self) -> Iterable[physics_.SimEngine]:
        """Every model serving its desired units on revision r1, spares idle, all settled."""
        s = self.scenario
        counters = {pool: 0 for pool in s.pools}
        for i, model in enumerate(s.model_names):
            for _ in range(s.units_per_model):
                yield self._engine(pool=s.pool_of(i), counters=counters, model=model)
        for k in range(s.spare_engines):
            yield self._engine(pool=s.pools[k % len(s.pools)], counters=counters, model=None)

    def _engine(
        self, *, pool: str, counters: dict[str, int], model: str | None
    ) -> physics_.SimEngine:
        counters[pool] += 1
        revision = self.models[model].revision if model else None
        engine = specs.Engine(
            name=f"ie-{pool}-{counters[pool]:03d}",
            spec=specs.EngineSpec(pool=pool, model_ref=model, revision=revision),
            phase=specs.Phase.SERVING if model else specs.Phase.IDLE,
            model=model,
            revision=revision,
            resource_version=self.stamp(),
            labels={scenarios_.POOL_LABEL: pool},
            since=0.0,
        )
        return physics_.SimEngine(engine)


def _model_spec(*, scenario: scenarios_.Scenario, index: int) -> dict[str, object]:
    spec: dict[str, object] = {
        "replicas": scenario.units_per_model,
        "revision": "r1",
        "minAvailable": f"{scenario.floor_percent}%",
        "maxUnavailable": scenario.max_unavailable,
        "engineSelector": {"matchLabels": {scenarios_.POOL_LABEL: scenario.pool_of(index)}},
    }
    if scenario.priority_of(index):
        spec["priority"] = scenario.priority_of(index)
    if scenario.model_rate is not None:
        spec["rateLimit"] = _rate_body(scenario.model_rate)
    return spec


def _rate_body(rate: scenarios_.Rate) -> dict[str, object]:
    return {"actionsPerMinute": rate.per_minute, "burst": rate.burst}
