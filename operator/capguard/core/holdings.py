"""Which breaker holds which actions, and which models each breaker selects (pure).

Breakers may overlap: an action governed by two of them waits while either holds it, so
releasing one of two does not release the work. Each breaker's status says what it holds
itself, the models those actions belong to and the other breakers holding them too; a
breaker that holds nothing but selects a model another breaker holds says who does; and
one whose selector matches no ModelCapacity says that, rather than a quiet `Closed`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from capguard.core import breaker, gate, pipeline
from capguard.core import fleet as fleet_


@dataclasses.dataclass(frozen=True)
class HeldModel:
    """The actions of one model a breaker holds, and who else holds them."""

    model: str
    actions: int
    also_held_by: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Holding:
    """What one breaker selects and holds after a step."""

    selected: tuple[str, ...]  # the models its selector matches, by name
    actions: int  # the actions it holds, each once whatever models it moves between
    models: tuple[HeldModel, ...]  # the models it selects whose actions it holds
    # Models it selects whose actions only other breakers hold: model -> those breakers.
    held_elsewhere: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def selects_nothing(self) -> bool:
        return not self.selected


def selected(fleet: fleet_.Fleet) -> dict[str, tuple[str, ...]]:
    """Breaker -> the models it governs (`specs.BreakerSpec.governs`, through the fleet's
    cache), every breaker of the fleet present."""
    found: dict[str, list[str]] = {name: [] for name in fleet.breakers}
    for model in sorted(fleet.models):
        for spec in fleet.breakers_for(model):
            found[spec.name].append(model)
    return {name: tuple(models) for name, models in found.items()}


def holders(
    decision: gate.Decision, *, states: Mapping[str, breaker.Snapshot]
) -> tuple[str, ...]:
    """The breakers holding an action: every Open one governing it; with none, the
    HalfOpen ones whose probe slots are taken (the gate's `_breaker_hold` order)."""
    if decision.verdict is not gate.Verdict.HOLD or decision.reason not in pipeline.BREAKER_HOLDS:
        return ()
    for state in (breaker.BreakerState.OPEN, breaker.BreakerState.HALF_OPEN):
        found = tuple(n for n in decision.breakers if n in states and states[n].state is state)
        if found:
            return found
    return ()


def of(result: pipeline.StepResult) -> dict[str, Holding]:
    """Every breaker's holding after a step, from the step's decisions."""
    fleet = result.fleet
    selects = selected(fleet)
    held: dict[str, set[str]] = {name: set() for name in selects}
    counts: dict[tuple[str, str], int] = {}  # (breaker, model) -> actions
    others: dict[tuple[str, str], set[str]] = {}  # (breaker, model) -> other holders
    by_model: dict[str, set[str]] = {}  # model -> the breakers holding its actions
    for decision in result.decisions:
        found = holders(decision, states=result.judged_by)
        intent = decision.action.intent
        moved = {m for m in (intent.model, intent.from_model)
                 if m is not None and m in fleet.models}
        for name in (n for n in found if n in held):
            held[name].add(decision.action.id)
            for model in moved & set(selects[name]):
                counts[name, model] = counts.get((name, model), 0) + 1
                others.setdefault((name, model), set()).update(set(found) - {name})
                by_model.setdefault(model, set()).add(name)
    return {
        name: Holding(
            selected=models,
            actions=len(held[name]),
            models=tuple(HeldModel(m, counts[name, m], tuple(sorted(others[name, m])))
                         for m in models if (name, m) in counts),
            held_elsewhere=tuple(_elsewhere(name, models=models, by_model=by_model)),
        )
        for name, models in selects.items()
    }


def _elsewhere(
    name: str, *, models: Iterable[str], by_model: Mapping[str, set[str]]
) -> Iterable[tuple[str, tuple[str, ...]]]:
    for model in models:
        holding = by_model.get(model, set())
        if holding and name not in holding:
            yield model, tuple(sorted(holding))
