"""What happens to the fleet during the demo, in virtual seconds: the incident's script.

The breaker's trip and release and the routine revision refreshes are the simulator's
own `march-4` timeline for the seed (`Scenario.timeline`), so the moments match
`capguard simulate --seed N`, and nothing is added: in both modes the refreshes alone
make the demo meaningful. With `--naive` the operator is the incident's capacity
manager (it plans from a cached view while the breaker is open, assuming what it queued
has run, and writes without preconditions), so plans build on plans and the release
flushes them all at once. Guarded, the live planner queues the refreshes' assigns of
spares, a backlog above `maxBatchAfterPause`, which the guard refuses as a batch.
"""

from __future__ import annotations

import dataclasses
import random

from capguard.sim import scenarios


@dataclasses.dataclass(frozen=True)
class Step:
    """One scripted change, with the line a person reads when it happens."""

    event: scenarios.Event
    says: str


def steps(scenario: scenarios.Scenario, *, seed: int) -> list[Step]:
    """Every scripted change in time order."""
    found = [Step(e, _say(e)) for e in scenario.timeline(random.Random(seed))]
    return sorted(found, key=lambda s: s.event.at)


def _say(event: scenarios.Event) -> str:
    match event:
        case scenarios.Breaker(open=True):
            return "breaker tripped (spec.open: true): capacity operations pause"
        case scenarios.Breaker(open=False):
            return "breaker released (spec.open: false)"
        case scenarios.Refresh(model=model):
            return f"routine refresh: {model} gets a new revision"
        case scenarios.Rebalance(model=model, pool=pool):
            return f"routine rebalance: {model} moves to pool {pool}"
        case scenarios.Demand(model=model, replicas=replicas):
            return f"demand: {model} now wants {replicas} units"
        case scenarios.Failures(count=count):
            return f"{count} serving engines fail"
    return str(event)
