"""Core benchmarks: printed numbers, not timed tests.

    .venv/bin/python bench/bench_core.py

Goals (issue 2): a gate decision at most 20 us median per action; a 10,000-action
post-pause backlog triaged in under 100 ms. Also the planner on 10,000 engines and
1,000 models, with the allocation (floors first, priority, max-min) it plans toward.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

from capguard.core import breaker, fleet, gate, planner, queue, specs

MODELS = 1_000
ENGINES_PER_MODEL = 10


def fleet_of(*, models: int, per_model: int, replicas: int, spares: int = 0) -> fleet.Fleet:
    """Every model serving ``per_model`` engines; desired ``replicas`` (below = surplus)."""
    engines = [
        specs.Engine(
            name=f"m{m:04d}-e{i:02d}",
            spec=specs.EngineSpec(pool=f"p{m % 4}", model_ref=f"m{m:04d}"),
            phase=specs.Phase.SERVING,
            model=f"m{m:04d}",
            resource_version="1",
            labels={"pool": f"p{m % 4}"},
        )
        for m in range(models)
        for i in range(per_model)
    ]
    engines += [
        specs.Engine(name=f"spare-{i:05d}", spec=specs.EngineSpec(pool="p0"), labels={"pool": "p0"})
        for i in range(spares)
    ]
    model_specs = [
        specs.ModelSpec(
            name=f"m{m:04d}",
            replicas=replicas,
            min_available=specs.IntOrPercent(50, percent=True),
            max_unavailable=specs.IntOrPercent(per_model),
            priority=m % 3,
            labels={"app": f"m{m:04d}"},
        )
        for m in range(models)
    ]
    return fleet.Fleet.of(engines=engines, models=model_specs)


def timed(run: Callable[[], object], *, repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return samples


def bench_decision() -> tuple[float, float]:
    """Per-action decision time: triage a 10,000-action backlog that passes every check."""
    found = fleet_of(models=MODELS, per_model=ENGINES_PER_MODEL, replicas=0)
    intents = planner.plan(found)
    q = queue.ActionQueue()
    q.enqueue(intents, found, 0.0)
    config = gate.GateConfig(fleet_max_unavailable_percent=100)
    per_action = []
    for _ in range(15):
        g = gate.Gate(config)  # fresh buckets: every decision walks every check
        start = time.perf_counter()
        decisions = g.triage(q, found, {}, 0.0).decisions
        per_action.append((time.perf_counter() - start) / len(decisions))
    # A single decision, measured alone, for the distribution's tail.
    one = q.pending()[:1]
    singles = timed(lambda: gate.Gate(config).triage(one, found, {}, 0.0).decisions, repeat=5_000)
    return statistics.median(per_action) * 1e6, _p99(singles) * 1e6


def bench_post_pause() -> tuple[float, int]:
    found = fleet_of(models=MODELS, per_model=ENGINES_PER_MODEL, replicas=0)
    q = queue.ActionQueue(max_age=86_400.0)
    q.enqueue(planner.plan(found), found, 0.0)
    spec = specs.BreakerSpec(name="cb", open=True, max_plan_age=86_400.0)
    released = specs.BreakerSpec(name="cb", open=False, max_plan_age=86_400.0)

    def release_and_triage() -> list[gate.Decision]:
        cb = breaker.BreakerMachine(spec, now=0.0)
        cb.observe(released, breaker.FleetSignals(), 1_800.0)
        return gate.Gate().triage(q, found, {"cb": cb}, 1_800.0).decisions

    decisions = release_and_triage()
    refused = sum(d.reason is gate.Reason.POST_PAUSE_BATCH for d in decisions)
    return statistics.median(timed(release_and_triage, repeat=9)) * 1e3, refused


def bench_planner() -> tuple[float, int]:
    # Demand shifted: half the models want 12, half 8; 1,000 spares to go around.
    found = fleet_of(models=MODELS, per_model=ENGINES_PER_MODEL, replicas=10, spares=1_000)
    shifted = [
        specs.ModelSpec(**{**m.__dict__, "replicas": 12 if i % 2 else 8})
        for i, m in enumerate(found.models.values())
    ]
    found = fleet.Fleet.of(engines=found.engines.values(), models=shifted)
    intents = planner.plan(found)
    # A fresh snapshot each time: the allocation is cached on the snapshot, and a pass
    # always plans from a new one.
    return statistics.median(timed(lambda: planner.plan(dataclasses.replace(found)),
                                   repeat=5)) * 1e3, len(intents)


def _p99(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.99)]


def main() -> None:
    median_us, p99_us = bench_decision()
    print(f"gate decision per action: median {median_us:.1f} us, p99 {p99_us:.1f} us (goal 20)")
    post_pause_ms, refused = bench_post_pause()
    print(
        f"post-pause backlog of {refused} actions refused as one batch: {post_pause_ms:.1f} ms"
        " (goal 100)"
    )
    planner_ms, intents = bench_planner()
    engines = MODELS * ENGINES_PER_MODEL + 1_000
    print(f"planner, {engines} engines / {MODELS} models: {planner_ms:.1f} ms ({intents} intents)")


if __name__ == "__main__":
    main()
