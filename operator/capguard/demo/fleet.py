"""The demo's fleet as CR bodies, generated from a simulator scenario and compressed in time.

The bodies say what `capguard.sim.world` says for the same scenario (names, pools,
revisions, floors, budgets, the breaker's limits), so a live run and `capguard simulate`
describe one fleet. Time compression: every duration the operator or the breaker reads
is divided by ``speed`` (virtual seconds per real second), and every rate multiplied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Final

from capguard.core import specs
from capguard.sim import scenarios

API_VERSION: Final = "capguard.dev/v1alpha1"
BREAKER_NAME: Final = "capacity"  # as in the simulator's world
FIRST_REVISION: Final = "r1"  # every model starts on it (sim.world)
DEMO_LABEL: Final = "capguard.dev/demo"  # marks what the demo created, for cleanup and kubectl

Body = dict[str, Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Compressed:
    """A scenario played at ``speed`` virtual seconds per real second."""

    scenario: scenarios.Scenario
    speed: float

    def real(self, virtual_seconds: float) -> float:
        return virtual_seconds / self.speed

    def duration(self, virtual_seconds: float) -> str:
        """A Go-style duration the CRDs accept, in real seconds."""
        return f"{self.real(virtual_seconds):.3f}s"

    def per_minute(self, virtual_rate: float) -> float:
        return round(virtual_rate * self.speed, 3)


@dataclasses.dataclass(frozen=True)
class Engine:
    """One engine: what to create, and the status it starts with (settled, as in the sim)."""

    body: Body
    status: Body


def namespace(name: str) -> Body:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {DEMO_LABEL: "true"}}}


def models(plan: Compressed) -> list[Body]:
    s = plan.scenario
    return [_model(plan, name=name, pool=s.pool_of(i)) for i, name in enumerate(s.model_names)]


def breaker(plan: Compressed, *, is_open: bool = False) -> Body:
    s = plan.scenario
    return {
        "apiVersion": API_VERSION, "kind": "CircuitBreaker",
        "metadata": {"name": BREAKER_NAME, "labels": {DEMO_LABEL: "true"}},
        "spec": {
            "open": is_open,
            "pauseThreshold": plan.duration(s.pause_threshold),
            "maxBatchAfterPause": s.max_batch_after_pause,
            "halfOpenProbes": s.half_open_probes,
            "maxPlanAge": plan.duration(s.max_plan_age),
            "rateLimit": _rate(plan, s.global_rate),
        },
    }


def engines(plan: Compressed, *, now: str) -> list[Engine]:
    """Every model serving its desired units on revision r1, the spares idle (sim.world)."""
    return list(_engines(plan.scenario, now=now))


def _engines(s: scenarios.Scenario, *, now: str) -> Iterator[Engine]:
    counters = dict.fromkeys(s.pools, 0)
    for i, model in enumerate(s.model_names):
        for _ in range(s.units_per_model):
            yield _engine(pool=s.pool_of(i), counters=counters, model=model, now=now)
    for k in range(s.spare_engines):
        yield _engine(pool=s.pools[k % len(s.pools)], counters=counters, model=None, now=now)


def _engine(*, pool: str, counters: dict[str, int], model: str | None, now: str) -> Engine:
    counters[pool] += 1
    spec: Body = {"pool": pool}
    if model:
        spec |= {"modelRef": model, "revision": FIRST_REVISION}
    phase = specs.Phase.SERVING if model else specs.Phase.IDLE
    body = {
        "apiVersion": API_VERSION, "kind": "InferenceEngine",
        "metadata": {"name": f"ie-{pool}-{counters[pool]:03d}",
                     "labels": {scenarios.POOL_LABEL: pool, DEMO_LABEL: "true"}},
        "spec": spec,
    }
    status = {"phase": phase.value, "model": model, "revision": FIRST_REVISION if model else None,
              "since": now, "message": "settled before the incident"}
    return Engine(body, status)


def _model(plan: Compressed, *, name: str, pool: str) -> Body:
    s = plan.scenario
    spec: Body = {
        "replicas": s.units_per_model,
        "revision": FIRST_REVISION,
        "minAvailable": f"{s.floor_percent}%",
        "maxUnavailable": s.max_unavailable,
        "engineSelector": {"matchLabels": {scenarios.POOL_LABEL: pool}},
    }
    if s.model_rate is not None:
        spec["rateLimit"] = _rate(plan, s.model_rate)
    return {"apiVersion": API_VERSION, "kind": "ModelCapacity",
            "metadata": {"name": name, "labels": {DEMO_LABEL: "true"}}, "spec": spec}


def _rate(plan: Compressed, rate: scenarios.Rate) -> Body:
    return {"actionsPerMinute": plan.per_minute(rate.per_minute), "burst": rate.burst}
