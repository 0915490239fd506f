"""The fleet as observed: one frozen snapshot of engines, models and breakers.

Counts per model are computed once per snapshot (one pass over the engines), so the
gate can ask them thousands of times per triage for the price of a dict lookup.

A snapshot made with `Fleet.derive` from the last one carries over what was computed
for it (counts, the allocation, indexes, the planner's per-model work) for everything
the change does not touch: a change to one model of 50,000 engines costs work in
proportion to that model. Whatever way it was made, a snapshot answers the same.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

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

    @functools.cached_property
    def bound_names(self) -> dict[str, tuple[str, ...]]:
        """Engine names by the model their ``spec.modelRef`` names (any phase), by name."""
        found: dict[str, list[str]] = {}
        for name, engine in self.engines.items():
            if engine.spec.model_ref:
                found.setdefault(engine.spec.model_ref, []).append(name)
        return {model: tuple(sorted(names)) for model, names in found.items()}

    def bound_to(self, model: str) -> tuple[str, ...]:
        return self.bound_names.get(model, ())

    @functools.cached_property
    def idle_names(self) -> frozenset[str]:
        """Engines free to take a model: unbound, idle, not cordoned."""
        return frozenset(name for name, engine in self.engines.items() if _free(engine))

    @functools.cached_property
    def released_names(self) -> frozenset[str]:
        """Engines to release (`released`)."""
        return frozenset(name for name, engine in self.engines.items()
                         if self.released(engine))

    def released(self, engine: specs.Engine) -> bool:
        """Failed, or bound by capguard to a model that no longer exists: its binding is
        cleared. A silent engine (its agent unheard: `engines.heard`) is not released: it
        is out of service, and its model is filled from other engines meanwhile.

        A model that exists but does not parse is not gone: its engines are left alone. A
        modelRef capguard did not write that names no model is the user's
        (``Engine.waits``): it is never cleared."""
        model = engine.spec.model_ref
        if not model or model in self.unreadable_models or engine.waits(self.models):
            return False
        failed = engine.phase is specs.Phase.FAILED and not engine.silent
        return model not in self.models or failed

    @functools.cached_property
    def _memos(self) -> dict[str, dict[str, Any]]:
        return {}

    def memo(self, space: str) -> dict[str, Any]:
        """Per-model values the core computes from this fleet (``space`` names whose), kept
        by `derive` for the models a change does not touch. Valid only while the values
        depend on nothing but the model's spec, the engines it holds or is bound to, and
        its allocated share."""
        return self._memos.setdefault(space, {})

    def derive(
        self, *, engines: Mapping[str, specs.Engine | None] | None = None,
        models: Mapping[str, specs.ModelSpec | None] | None = None,
    ) -> Fleet:
        """This fleet with the given engines and models replaced (None: gone), carrying
        over what was computed for this one wherever the change does not reach. Breakers
        and unreadable models stay as they are (a change to those: `Fleet.of`)."""
        engines, models = engines or {}, models or {}
        new_models = _replaced(self.models, models)
        derived = Fleet(engines=_replaced(self.engines, engines), models=new_models,
                        breakers=self.breakers,
                        unreadable_models=self.unreadable_models - set(new_models))
        _Carry(self, derived, engines=frozenset(engines), models=frozenset(models)).carry()
        return derived

    def with_engine(self, engine: specs.Engine) -> Fleet:
        return self.with_engines((engine,))

    def with_engines(self, engines: Iterable[specs.Engine]) -> Fleet:
        """Engines replaced or added, in one copy of the map: a loop of `with_engine` over
        a pass's 4,000 assigns copied a 50,000-engine map 4,000 times."""
        changed = {engine.name: engine for engine in engines}
        if not changed:
            return self
        return dataclasses.replace(self, engines={**self.engines, **changed})

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


class _Carry:
    """What `Fleet.derive` carries from one fleet to the next: each value the old fleet
    computed, worked out again only for the engines and models the change touches."""

    def __init__(self, old: Fleet, new: Fleet, *, engines: frozenset[str],
                 models: frozenset[str]) -> None:
        self.old, self.new, self.engines, self.models = old, new, engines, models
        touched = set(models)
        for name in engines:
            for engine in (old.engines.get(name), new.engines.get(name)):
                if engine is not None:
                    touched |= _held_models(engine)
        self.touched = frozenset(touched)
        self.computed = old.__dict__  # where functools.cached_property keeps its values

    def carry(self) -> None:
        for name in ("bound_names", "idle_names", "_counts", "out_of_service_engines",
                     "_breakers_by_model", "released_names", "allocation"):
            if name in self.computed:
                self.new.__dict__[name] = getattr(self, name)()

    def bound_names(self) -> dict[str, tuple[str, ...]]:
        found = dict(self.old.bound_names)
        moved: dict[str, set[str]] = {}  # model -> changed engines bound to it before or now
        for name in self.engines:
            for engine in (self.old.engines.get(name), self.new.engines.get(name)):
                if engine is not None and engine.spec.model_ref:
                    moved.setdefault(engine.spec.model_ref, set()).add(name)
        for model, changed in moved.items():
            names = {n for n in found.get(model, ()) if n not in changed}
            names.update(n for n in changed if (e := self.new.engines.get(n)) is not None
                         and e.spec.model_ref == model)
            if names:
                found[model] = tuple(sorted(names))
            else:
                found.pop(model, None)
        return found

    def _counts(self) -> dict[str, ModelCounts]:
        counts = dict(self.old._counts)
        arrived: dict[str, set[str]] = {}  # model -> changed engines holding it now
        for name in self.engines:
            engine = self.new.engines.get(name)
            for model in _held_models(engine) if engine is not None else ():
                arrived.setdefault(model, set()).add(name)
        for model in self.touched:
            before = counts.pop(model, _NOTHING)
            names = {*before.serving_engines, *before.unavailable_engines,
                     *arrived.get(model, ())}
            serving, unavailable, units = [], [], 0
            for name in names:
                engine = self.new.engines.get(name)
                if engine is None or model not in _held_models(engine):
                    continue
                if engine.serves(model):
                    serving.append(name)
                    units += engine.units
                else:
                    unavailable.append(name)
            if serving or unavailable or model in self.new.models:
                counts[model] = ModelCounts(
                    serving_units=units, serving_engines=tuple(sorted(serving)),
                    unavailable_engines=tuple(sorted(unavailable)),
                    engine_count=len(serving) + len(unavailable))
        return counts

    def out_of_service_engines(self) -> int:
        count = self.old.out_of_service_engines
        for name in self.engines:
            old, new = self.old.engines.get(name), self.new.engines.get(name)
            count += (new is not None and out_of_service(new)) - (
                old is not None and out_of_service(old))
        return count

    def _breakers_by_model(self) -> dict[str, tuple[specs.BreakerSpec, ...]]:
        found = {m: b for m, b in self.old._breakers_by_model.items() if m in self.new.models}
        ordered = [b for _, b in sorted(self.new.breakers.items())]
        for name in self.models & self.new.models.keys():
            found[name] = tuple(b for b in ordered if b.governs(self.new.models[name]))
        return found

    def idle_names(self) -> frozenset[str]:
        idle = set(self.old.idle_names)
        for name in self.engines:
            engine = self.new.engines.get(name)
            if engine is not None and _free(engine):
                idle.add(name)
            else:
                idle.discard(name)
        return frozenset(idle)

    def released_names(self) -> frozenset[str]:
        # Whether an engine is released depends on it and on its model existing.
        again = set(self.engines)
        for model in self.models:
            again.update(self.new.bound_to(model))
        released = set(self.old.released_names) - again
        released.update(n for n in again if n in self.new.engines
                        and self.new.released(self.new.engines[n]))
        return frozenset(released)

    def allocation(self) -> allocation_.Allocation:
        found, again = allocation_.derive(
            self.old.allocation, old=(self.old.engines, self.old.models),
            engines=self.new.engines, models=self.new.models,
            unreadable=self.new.unreadable_models, changed=self.engines,
            touched=self.touched, bound=self.new.bound_to,
            idle=lambda: [self.new.engines[n] for n in sorted(self.new.idle_names)])
        if again is not None and "_memos" in self.computed:
            # The other models' shares and claims are as they were: so is what the core
            # computed for them alone.
            gone = self.touched | again
            self.new.__dict__["_memos"] = {
                space: {m: v for m, v in memo.items() if m not in gone}
                for space, memo in self.old._memos.items()}
        return found


def _replaced(found: Mapping[str, _Parsed], changes: Mapping[str, _Parsed | None]
              ) -> dict[str, _Parsed]:
    """``found`` with the changed values (None: gone)."""
    replaced = dict(found)
    for name, value in changes.items():
        if value is None:
            replaced.pop(name, None)
        else:
            replaced[name] = value
    return replaced


def _free(engine: specs.Engine) -> bool:
    return (engine.spec.model_ref is None and engine.phase is specs.Phase.IDLE
            and not engine.spec.cordoned)


def _held_models(engine: specs.Engine) -> set[str]:
    return {m for m in (engine.spec.model_ref, engine.model) if m}


def out_of_service(engine: specs.Engine) -> bool:
    """Holding or awaiting a model without serving it, or failed."""
    if engine.phase is specs.Phase.FAILED:
        return True
    bound = engine.spec.model_ref
    return bool(bound or engine.model) and not (bound and engine.serves(bound))
