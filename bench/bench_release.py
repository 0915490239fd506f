"""The release at the physical limit: march-4 guarded convergence against the rate limits.

    .venv/bin/python bench/bench_release.py [--seeds 20]

For each seed: converge_seconds over converge_lower_bound_seconds (the fastest the rate
limits allow after the release) and every safety measure of the replay, then the ratio's
min/median/max. Goal (issue 14): ratio <= 1.05 for seeds 0-19, safety measures unchanged.
"""

from __future__ import annotations

import argparse
import statistics

from capguard.sim import manager, run, scenarios

SAFETY = (
    "min_serving_ratio",
    "minutes_below_floor",
    "floor_breaking_actions",
    "stale_actions_executed",
    "max_engines_out_of_service",
    "disruption_budget",
    "refused_batches",
)


def ratio(summary: dict[str, object]) -> float | None:
    converged, bound = summary["converge_seconds"], summary["converge_lower_bound_seconds"]
    if not isinstance(converged, float | int) or not isinstance(bound, float | int) or not bound:
        return None
    return converged / bound


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    seeds = range(parser.parse_args().seeds)
    print(f"{'seed':>4} {'converge':>9} {'bound':>8} {'ratio':>6}  " + " ".join(SAFETY))
    ratios = []
    for seed in seeds:
        summary = run.simulate(scenarios.MARCH_4, mode=manager.Mode.GUARDED, seed=seed).summary()
        found = ratio(summary)
        if found is not None:
            ratios.append(found)
        shown = f"{found:6.3f}" if found is not None else "  none"
        print(f"{seed:>4} {summary['converge_seconds']!s:>9} "
              f"{summary['converge_lower_bound_seconds']!s:>8} {shown}  "
              + " ".join(str(summary[k]) for k in SAFETY))
    if ratios:
        print(f"ratio over {len(ratios)} of {len(seeds)} seeds: min {min(ratios):.3f} "
              f"median {statistics.median(ratios):.3f} max {max(ratios):.3f}")


if __name__ == "__main__":
    main()
