"""Shards past one process, simulated: printed numbers, not timed tests.

    .venv/bin/python bench/bench_shards.py [--shards 10] [--models 1000] [--seed 1]

Issue 14: the design of docs/scale.md ("Past one process") checked at 100,000 engines:
10 shards, each the core's pipeline over 1,000 models x 9 units + 1,000 spares, one
budget object holding the global token bucket and the grants. A pause of every shard's
breaker (6 minutes, over the pause threshold) while 4 models a shard get a new
revision, then the release; shard ns-00 dies holding a grant 60 s after it. The bounds
(budget, rate) must never be exceeded and nothing may be double spent.
"""

from __future__ import annotations

import argparse
import dataclasses

from capguard.sim import shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--models", type=int, default=1000, help="per shard (9 engines each)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    setup = dataclasses.replace(shards.Setup(), shards=args.shards, models=args.models,
                                spare_engines=args.models)
    r = shards.simulate(setup, seed=args.seed)
    rate = setup.rate
    converged = "never" if r.converge_seconds is None else f"{r.converge_seconds:.0f} s"
    print(f"engines {r.engines:,} in {r.shards} shards ({r.models:,} models), "
          f"{r.sim_seconds:.0f} virtual s, converged {converged} after the release")
    print(f"  wall {r.wall_seconds:.1f} s; {r.shard_steps} shard steps, "
          f"{r.step_wall_mean * 1000:.1f} ms mean, {r.step_wall_max * 1000:.0f} ms max each")
    print(f"  takes in flight max {r.max_in_flight} vs budget {r.budget} "
          f"(engines out of service, every cause, max {r.max_out_of_service})")
    print(f"  takes in any 60 s max {r.max_takes_per_window} vs bound {r.rate_bound} "
          f"({rate.per_minute:g}/min burst {rate.burst}); {r.takes} takes in all")
    print(f"  budget object: {r.writes} writes ({r.writes_per_second:.2f}/s), "
          f"{r.conflicts} 409s ({r.conflict_rate:.1%} of tries)")
    print(f"  tokens: {r.given} taken, dead shard held {r.dead_grant}, lost {r.lost}; "
          f"takes beyond grants {r.overspent}, tokens beyond the bucket {r.over_issued:.2f}")


if __name__ == "__main__":
    main()
