"""The fleet as observed: one frozen snapshot of engines, models and breakers.

Counts per model are computed once per snapshot (one pass over the engines), so the
gate can ask them thousands of times per triage for the price of a dict lookup.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from capguard.core import allocation as allocation_
from capguard.core import specs

_Parsed = TypeVar("_Parsed")


@dataclasses.dataclass(frozen=True)
class ModelCounts:
    """What one model has right now, in engines and in capacity units."""

    serving_units: int = 0
    serving_engines: tuple[str, ...] = ()
    unavailable_engines: tuple[str, ...] = ()
    # Bound or still holding the model (loading it, draining it): the budget's denominator.
    engine_count: int = 0


@dataclasses.dataclass(frozen=True)
class Fleet:
    engines: Mapping[str, specs.Engine] = dataclasses.field(default_factory=dict)
    models: Mapping[str, specs.ModelSpec] = dataclasses.field(default_factory=dict)
    breakers: Mapping[str, specs.BreakerSpec] = dataclasses.field(default_factory=dict)
    # Models that exist but whose spec does not parse: their engines are not orphans, so
    # nothing plans or executes a move of them until the spec is fixed (a typo drains nothing).
    unreadable_models: frozenset[str] = frozenset()

    @classmethod
    def from_bodies(
        cls,
        *,
        engines: Iterable[Mapping[str, object]] = (),
        models: Iterable[Mapping[str, object]] = (),
        breakers: Iterable[Mapping[str, object]] = (),
    ) -> Fleet:
        return cls.of(
            engines=[specs.parse_engine(b) for b in engines],
            models=[specs.parse_model(b) for b in models],
            breakers=[specs.parse_breaker(b) for b in breakers],
        )

    @classmethod
    def read(
        cls,
        *,
        engines: Iterable[Mapping[str, object]] = (),
        models: Iterable[Mapping[str, object]] = (),
        breakers: Iterable[Mapping[str, object]] = (),
    ) -> Reading:
        """Like ``from_bodies``, but a body that does not parse is reported, not raised.

        An unreadable model is kept by name in ``unreadable_models``; an unreadable engine
        or breaker is left out. What that means for the user is the caller's to say (the
        errors carry the field and the fix).
        """
        errors: list[specs.SpecError] = []
        parsed_models = _parse_each(models, parse=specs.parse_model, errors=errors)
        unreadable = frozenset(e.name for e in errors if e.name != "?")  # "?": no name at all
        fleet = cls.of(
            engines=_parse_each(engines, parse=specs.parse_engine, errors=errors),
            models=parsed_models,
            breakers=_parse_each(breakers, parse=specs.parse_breaker, errors=errors),
            unreadable_models=unreadable,
        )
        return Reading(fleet=fleet, errors=tuple(errors))

    @classmethod
    def of(
        cls,
        *,
        engines: Iterable[specs.Engine] = (),
        models: Iterable[specs.ModelSpec] = (),
        breakers: Iterable[specs.BreakerSpec] = (),
        unreadable_models: Iterable[str] = (),
    ) -> Fleet:
        parsed = {m.name: m for m in models}
        return cls(
            engines={e.name: e for e in engines},
            models=parsed,
            breakers={b.name: b for b in breakers},
            unreadable_models=frozenset(unreadable_models) - set(parsed),
        )

    @functools.cached_property
    def _counts(self) -> dict[str, ModelCounts]:
        serving: dict[str, list[str]] = {}
        units: dict[str, int] = {}
        unavailable: dict[str, list[str]] = {}
        for engine in self.engines.values():
            for model in _held_models(engine):
                if engine.serves(model):
                    serving.setdefault(model, []).append(engine.name)
                    units[model] = units.get(model, 0) + engine.units
                else:
                    unavailable.setdefault(model, []).append(engine.name)
        names = set(serving) | set(unavailable) | set(self.models)
        return {
            m: ModelCounts(
                serving_units=units.get(m, 0),
                serving_engines=tuple(sorted(serving.get(m, ()))),
                unavailable_engines=tuple(sorted(unavailable.get(m, ()))),
                engine_count=len(serving.get(m, ())) + len(unavailable.get(m, ())),
            )
            for m in names
        }

    def counts(self, model: str) -> ModelCounts:
        return self._counts.get(model, _NOTHING)

    def serving_units(self, model: str) -> int:
        return self.counts(model).serving_units

    def serving_engines(self, model: str) -> tuple[str, ...]:
        return self.counts(model).serving_engines

    def unavailable_engines(self, model: str) -> tuple[str, ...]:
        """Engines of the model not serving it, whatever the cause (loading, draining, failed)."""
        return self.counts(model).unavailable_engines

    def assigned_engines(self, model: str) -> tuple[specs.Engine, ...]:
        """Engines bound to the model by ``spec.modelRef`` (serving or on their way)."""
        return tuple(e for _, e in sorted(self.engines.items()) if e.spec.model_ref == model)

    def desired_units(self, model: str) -> int:
        found = self.models.get(model)
        return found.replicas if found else 0

    def floor_units(self, model: str) -> int:
        found = self.models.get(model)
        return found.floor_units if found else 0

    def protected_units(self, model: str) -> int:
        """The floor the gate keeps: the model's floor, or the part of it the supply covers
        when the floors of its pool cannot all be met (``allocation`` says how it is shared)."""
        return min(self.floor_units(model), self.allocation.covered(model))

    @functools.cached_property
    def allocation(self) -> allocation_.Allocation:
        """Who should get which engine: floors first, then priority, then max-min fair."""
        return allocation_.allocate(engines=self.engines, models=self.models,
                                    unreadable=self.unreadable_models)

    def max_unavailable_engines(self, model: str) -> int:
        found = self.models.get(model)
        if found is None:
            return 0
        return found.max_unavailable_engines(self.counts(model).engine_count)

    @functools.cached_property
    def out_of_service_engines(self) -> int:
        """Engines across the fleet that hold or await a model but do not serve it, or failed."""
        return sum(1 for e in self.engines.values() if out_of_service(e))

    def breakers_for(self, model: str) -> tuple[specs.BreakerSpec, ...]:
        """The breakers governing ``model``; a name no model has is a departed one."""
        found = self._breakers_by_model.get(model)
        if found is None:
            found = tuple(b for _, b in sorted(self.breakers.items()) if b.governs(None))
        return found

    @functools.cached_property
    def _breakers_by_model(self) -> dict[str, tuple[specs.BreakerSpec, ...]]:
        ordered = [b for _, b in sorted(self.breakers.items())]
        return {
            name: tuple(b for b in ordered if b.governs(model))
            for name, model in self.models.items()
        }

    def with_engine(self, engine: specs.Engine) -> Fleet:
        return dataclasses.replace(self, engines={**self.engines, engine.name: engine})

    def with_model(self, model: specs.ModelSpec) -> Fleet:
        return dataclasses.replace(
            self,
            models={**self.models, model.name: model},
            unreadable_models=self.unreadable_models - {model.name},
        )

    def with_breaker(self, breaker: specs.BreakerSpec) -> Fleet:
        return dataclasses.replace(self, breakers={**self.breakers, breaker.name: breaker})

    def bind(
        self, engine: str, *, model: str | None, action_id: str, resource_version: str
    ) -> Fleet:
        """What executing an action writes: the binding, the revision and the action id.

        Only the spec changes; the engine driver (or the simulator) moves the phase.
        """
        current = self.engines[engine]
        target = self.models.get(model) if model else None
        spec = dataclasses.replace(
            current.spec, model_ref=model, revision=target.revision if target else None
        )
        return self.with_engine(
            dataclasses.replace(
                current, spec=spec, last_action_id=action_id, resource_version=resource_version
            )
        )


@dataclasses.dataclass(frozen=True)
class Reading:
    """A fleet read from bodies, with what could not be read."""

    fleet: Fleet
    errors: tuple[specs.SpecError, ...] = ()


_NOTHING = ModelCounts()


def _parse_each(
    bodies: Iterable[Mapping[str, object]],
    *,
    parse: Callable[[Mapping[str, object]], _Parsed],
    errors: list[specs.SpecError],
) -> list[_Parsed]:
    parsed = []
    for body in bodies:
        try:
            parsed.append(parse(body))
        except specs.SpecError as error:
            errors.append(error)
    return parsed


def _held_models(engine: specs.Engine) -> set[str]:
    return {m for m in (engine.spec.model_ref, engine.model) if m}


def out_of_service(engine: specs.Engine) -> bool:
    """Holding or awaiting a model without serving it, or failed."""
    if engine.phase is specs.Phase.FAILED:
        return True
    bound = engine.spec.model_ref
    return bool(bound or engine.model) and not (bound and engine.serves(bound))
