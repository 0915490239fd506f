"""One namespace as the index shows it, and the core's inputs built from it."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Mapping

from capguard.core import fleet as fleet_
from capguard.core import pipeline, specs
from capguard.handlers import index, narrator, records
from capguard.handlers import status as status_


@dataclasses.dataclass
class View:
    """One namespace as the index shows it now."""

    engines: list[records.EngineRecord] = dataclasses.field(default_factory=list)
    models: list[records.ModelRecord] = dataclasses.field(default_factory=list)
    breakers: list[records.BreakerRecord] = dataclasses.field(default_factory=list)
    # What changed since the last snapshot (None: gone), to derive the fleet from the last.
    changed_engines: dict[str, records.EngineRecord | None] = dataclasses.field(
        default_factory=dict)
    changed_models: dict[str, records.ModelRecord | None] = dataclasses.field(
        default_factory=dict)
    rebuild: bool = True  # a change `Fleet.derive` does not take: build the fleet afresh

    def metas(self, namespace: str) -> narrator.Metas:
        return narrator.Metas(namespace, lambda: [
            *((narrator.ENGINE, r.meta) for r in self.engines),
            *((narrator.MODEL, r.meta) for r in self.models),
            *((narrator.BREAKER, r.meta) for r in self.breakers)])

    def observed(self, fleet: fleet_.Fleet, *, established: set[str]) -> pipeline.Observed:
        return pipeline.Observed(
            fleet,
            saved_breakers={r.meta.name: r.status for r in self.breakers},
            unreadable_breakers=frozenset(r.meta.name for r in self.breakers if r.value is None),
            available_models=frozenset(available_models(self, known=established)))


def _as_is(engine: specs.Engine) -> specs.Engine:
    return engine


def snapshot(found: index.Index) -> dict[str, View]:
    views: dict[str, View] = collections.defaultdict(View)
    for namespace, engines_ in found.engines.by_namespace().items():
        views[namespace].engines = engines_
    for namespace, models in found.models.by_namespace().items():
        views[namespace].models = models
    for namespace, breakers in found.breakers.by_namespace().items():
        views[namespace].breakers = breakers
    for namespace, view in views.items():
        changes = found.take_changes(namespace)
        view.changed_engines = {name: found.engines.records.get((namespace, name))
                                for name in changes.engines}
        view.changed_models = {name: found.models.records.get((namespace, name))
                               for name in changes.models}
        view.rebuild = changes.rebuild
    return dict(views)


def derive_fleet(
    last: fleet_.Fleet, view: View, *, heard: Callable[[specs.Engine], specs.Engine] = _as_is,
    also: Mapping[str, records.EngineRecord | None] | None = None,
) -> fleet_.Fleet:
    """`build_fleet`'s answer, from the fleet of the last snapshot and what changed since
    (the view's changes, and ``also``: engines whose hearing changed). Valid only while
    the view says no rebuild is needed."""
    changed = {**view.changed_engines, **(also or {})}
    return last.derive(
        engines={name: heard(r.value) if r is not None and r.value is not None else None
                 for name, r in changed.items()},
        models={name: r.value if r is not None else None
                for name, r in view.changed_models.items()})


def build_fleet(
    view: View, *, heard: Callable[[specs.Engine], specs.Engine] = _as_is
) -> fleet_.Fleet:
    """The core's snapshot. A model whose spec is invalid is kept by name: its engines stay
    in the fleet (they count fleet-wide) and nothing moves them, so a typo drains nothing.
    ``heard`` is how an engine counts (`capguard.core.engines.heard`: a silent agent's
    engine is out of service)."""
    return fleet_.Fleet.of(
        engines=[heard(r.value) for r in view.engines if r.value is not None],
        models=[r.value for r in view.models if r.value is not None],
        breakers=[r.value for r in view.breakers if r.value is not None],
        unreadable_models=[r.meta.name for r in view.models if r.value is None],
    )


def available_models(view: View, *, known: set[str]) -> list[str]:
    """Models not yet known to have been available whose status says they were (a restart)."""
    return [r.meta.name for r in view.models if r.meta.name not in known
            and status_.condition_since(r.status, "Available") is not None]
