"""Simulator benchmarks: printed numbers, not timed tests.

    .venv/bin/python bench/bench_sim.py

Goal (issue 2): one virtual hour of a 1,000-engine fleet in under 5 s of wall time.
Also the wall time of march-4 (both modes), the replay the tests run 20 times.
"""

from __future__ import annotations

import dataclasses
import time

from capguard.sim import manager, run, scenarios

# 100 models x 9 units + 100 spares = 1,000 engines; 20 models get a new revision
# during a 20-minute pause, then the fleet works for the rest of the hour.
LARGE = dataclasses.replace(
    scenarios.MARCH_4,
    name="large-fleet",
    models=100,
    units_per_model=9,
    spare_engines=100,
    pools=("h100-a", "h100-b", "h100-c", "h100-d"),
    refreshes=20,
    duration=3600.0,
    global_rate=scenarios.Rate(per_minute=20.0, burst=5),
)


def timed(scenario: scenarios.Scenario, *, mode: manager.Mode, seed: int = 0) -> float:
    start = time.perf_counter()
    run.simulate(scenario, mode=mode, seed=seed)
    return time.perf_counter() - start


def main() -> None:
    hours = LARGE.duration / 3600
    print(
        f"{LARGE.engine_count} engines, {LARGE.models} models, {hours:g} virtual hour(s), "
        f"tick {LARGE.tick_seconds:g} s"
    )
    for mode in manager.Mode:
        print(f"  {mode.value:8} {timed(LARGE, mode=mode):6.2f} s wall   (goal < 5 s)")
    print(
        f"march-4 ({scenarios.MARCH_4.engine_count} engines, "
        f"{scenarios.MARCH_4.duration / 60:g} virtual minutes)"
    )
    for mode in manager.Mode:
        best = min(timed(scenarios.MARCH_4, mode=mode, seed=s) for s in range(3))
        print(f"  {mode.value:8} {best:6.3f} s wall (best of 3 seeds)")


if __name__ == "__main__":
    main()
