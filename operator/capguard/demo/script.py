"""What happens to the fleet during the demo, in virtual seconds: the incident's script.

The breaker's trip and release and the routine revision refreshes are the simulator's
own `march-4` timeline for the seed (`Scenario.timeline`), so the moments match
`capguard simulate --seed N`.

One thing is added, because the live operator plans from its watch-fed view and never
from an aging cache (the simulator's manager does; see NOTES.md): a scale-in taken back
while the breaker is open. A few minutes into the pause a quiet spell lets an
autoscaler scale half the models in; traffic comes back and they are scaled out to
where they were before the release, so desired capacity at the release is what it was
before the pause. The drains planned for the quiet spell are still queued when the
breaker closes: adjustments computed from a view of the fleet that no longer holds, the
incident's exact shape. A queue that flushes runs them all at once; the guard refuses
them as a batch.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from typing import Final

from capguard.sim import scenarios

SCALE_IN_UNITS: Final = 3  # 7 -> 4 units: 57 % of desired once the drains run, below 90 %
SCALE_IN_AFTER: Final = 120.0  # virtual seconds into the pause: the quiet spell
SCALE_OUT_AFTER: Final = 720.0  # virtual seconds into the pause: traffic is back


@dataclasses.dataclass(frozen=True)
class Step:
    """One scripted change, with the line a person reads when it happens."""

    event: scenarios.Event
    says: str


def steps(scenario: scenarios.Scenario, *, seed: int) -> list[Step]:
    """Every scripted change in time order (the sim's events first at equal times)."""
    found = [Step(e, _say(e)) for e in scenario.timeline(random.Random(seed))]
    found += list(_scale_in_and_back(scenario))
    return sorted(found, key=lambda s: s.event.at)


def _scale_in_and_back(scenario: scenarios.Scenario) -> Iterator[Step]:
    units = scenario.units_per_model
    for pause in scenario.pauses:
        if pause.closes_at - pause.opens_at <= SCALE_OUT_AFTER:
            continue  # too short to hold a quiet spell and its end
        quiet, back = pause.opens_at + SCALE_IN_AFTER, pause.opens_at + SCALE_OUT_AFTER
        for name in _scaled(scenario):
            yield Step(scenarios.Demand(quiet, name, units - SCALE_IN_UNITS),
                       f"quiet spell: {name} scaled in to {units - SCALE_IN_UNITS} units")
            yield Step(scenarios.Demand(back, name, units),
                       f"traffic is back: {name} scaled out to {units} units")


def _scaled(scenario: scenarios.Scenario) -> list[str]:
    """Half the models, from every pool alike (model i lives in pool i % pools)."""
    pools = len(scenario.pools)
    return [n for i, n in enumerate(scenario.model_names) if (i // pools) % 2 == 0]


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
