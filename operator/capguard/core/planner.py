"""Desired vs observed -> intents. Make before break, deterministic, no I/O.

The planner only proposes. Whether an intent may run now is the gate's question; the
planner's promise is narrower: it never proposes taking serving capacity from a model
unless the model keeps at least its allocated units (``allocation``: its desired units
unless engines are scarce) serving without that engine.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Final

from capguard.core import fleet as fleet_
from capguard.core import specs

# Marks a resourceVersion in a cached view that was assumed, never observed.
EXPECTED: Final = "+expected"


class ActionType(enum.Enum):
    ASSIGN = "Assign"  # an idle engine starts serving a model
    DRAIN = "Drain"  # an engine leaves its model and becomes idle
    REASSIGN = "Reassign"  # an engine moves to another model, or reloads a new revision


@dataclasses.dataclass(frozen=True)
class Intent:
    kind: ActionType
    engine: str
    model: str | None = None  # where the engine goes; None for DRAIN
    from_model: str | None = None  # what the engine leaves; None for ASSIGN

    @property
    def disruptive(self) -> bool:
        """Whether executing it may take serving capacity away from a model."""
        return self.from_model is not None


@dataclasses.dataclass
class _Supply:
    """Engines that may go to a model: those the allocation claimed for it, then unclaimed
    ones by label group (so selectors match per group). One claimed for another model is
    never taken: that model needs it."""

    claimed: dict[str, list[specs.Engine]] = dataclasses.field(default_factory=dict)
    free: dict[tuple[tuple[str, str], ...], list[specs.Engine]] = dataclasses.field(
        default_factory=dict
    )
    origin: dict[str, str | None] = dataclasses.field(default_factory=dict)

    def add(self, engine: specs.Engine, *, origin: str | None, claim: str | None) -> None:
        if claim is not None and claim != origin:
            self.claimed.setdefault(claim, []).append(engine)
        else:
            self.free.setdefault(tuple(sorted(engine.labels.items())), []).append(engine)
        self.origin[engine.name] = origin

    def rank(self, first: Mapping[str, tuple[bool, int]]) -> None:
        """Offer the unclaimed engines of the origins that sort lowest in ``first`` first."""
        for engines in self.free.values():
            engines.sort(key=lambda e: first.get(self.origin[e.name] or "", (False, 0)))

    def take_claimed(self, model: str) -> specs.Engine | None:
        found = self.claimed.get(model)
        return found.pop(0) if found else None

    def take_free(self, selector: specs.LabelSelector, *, exclude: str) -> specs.Engine | None:
        for labels, engines in sorted(self.free.items()):
            if not engines or not selector.matches(dict(labels)):
                continue
            for i, engine in enumerate(engines):
                # A cordoned engine gets no new model (the CRD's rule refuses the write):
                # given up by its model, it is drained.
                if self.origin[engine.name] != exclude and not engine.spec.cordoned:
                    return engines.pop(i)
        return None

    def remaining(self) -> Iterator[specs.Engine]:
        for _, engines in sorted(self.free.items()):
            yield from engines
        for _, engines in sorted(self.claimed.items()):
            yield from engines


def plan(fleet: fleet_.Fleet) -> list[Intent]:
    """Intents that move the observed fleet toward every model's allocated units.

    The allocation (floors first, then priority, then max-min fair) says how many units
    each model gets and which engine goes where; without scarcity that is its desired
    units, from the engines it has and idle ones.
    """
    allocation = fleet.allocation
    claims = allocation.claims
    models = sorted(fleet.models.values(), key=lambda m: (-m.priority, m.name))
    intents = [Intent(ActionType.DRAIN, name, None, fleet.engines[name].spec.model_ref)
               for name in sorted(fleet.released_names)]
    idle, surplus, need, arriving = _Supply(), _Supply(), {}, {}
    for name in sorted(fleet.idle_names):
        idle.add(fleet.engines[name], origin=None, claim=claims.get(name))
    parts = fleet.memo(__name__)  # carried to the next fleet for the models it leaves alone
    for model in models:
        part = parts.get(model.name)
        if part is None:
            part = parts[model.name] = _part(fleet, model)
        intents += part.reassigns
        need[model.name] = part.need
        arriving[model.name] = part.arriving
        for engine in part.removable:
            surplus.add(engine, origin=model.name, claim=claims.get(engine.name))
    givers = {m for m in surplus.origin.values() if m is not None}
    surplus.rank({m: _giving_order(fleet, model=fleet.models[m]) for m in givers})
    needy = [m for m in models if need[m.name] > 0]
    for _, tier in itertools.groupby(needy, key=lambda m: m.priority):
        # Models with a surplus of their own to give are served last (see _fill).
        for _, group in itertools.groupby(
            sorted(tier, key=lambda m: (m.name in givers, arriving[m.name])),
            key=lambda m: m.name in givers,
        ):
            intents += _fill(list(group), need=need, idle=idle, surplus=surplus)
    for engine in surplus.remaining():
        intents.append(Intent(ActionType.DRAIN, engine.name, None, surplus.origin[engine.name]))
    return intents


def takes_left(fleet: fleet_.Fleet, *, model: specs.ModelSpec) -> int:
    """The takes the model needs before it is as its spec says, as far as the fleet
    shows: its serving engines on another revision or outside its engine selector, and
    its serving units past desired."""
    serving = [fleet.engines[e] for e in fleet.serving_engines(model.name)]
    moved = sum(1 for e in serving if not model.engine_selector.matches(e.labels)
                or model.revision not in (None, e.revision))
    return moved + max(0, fleet.serving_units(model.name) - model.replicas)


def _giving_order(fleet: fleet_.Fleet, *, model: specs.ModelSpec) -> tuple[bool, int]:
    """Whose surplus goes to the neediest models first: the order the gate takes it in.

    A model whose maxUnavailable is used up (a replacement loading for it counts) gives
    nothing until that load ends, so its surplus comes last; among the rest, the model
    with the most takes left first (`gate._order`). Without this the first targets of a
    round (those with nothing arriving) went to surplus the gate could not take yet, and
    the takes it ran sent engines to models with a load in flight: each such load holds
    back the target's own surplus for a whole load."""
    blocked = len(fleet.unavailable_engines(model.name)) >= fleet.max_unavailable_engines(
        model.name)
    return blocked, -takes_left(fleet, model=model)


@dataclasses.dataclass(frozen=True)
class _Part:
    """What one model's own engines say, before engines are shared out."""

    reassigns: tuple[Intent, ...]  # kept engines refreshed in place to the model's revision
    need: int  # units it still needs
    arriving: int  # engines on their way to serving it
    removable: tuple[specs.Engine, ...]  # engines it can give up


def _part(fleet: fleet_.Fleet, model: specs.ModelSpec) -> _Part:
    """A function of the model, the engines bound to it, its allocated share and their
    claims alone (so `fleet_.Fleet.memo` may keep it across fleets)."""
    claims = fleet.allocation.claims
    target = fleet.allocation.target(model.name)
    engines = [e for e in (fleet.engines[n] for n in fleet.bound_to(model.name))
               if e.phase is not specs.Phase.FAILED]
    kept = [e for e in engines if claims.get(e.name) == model.name]
    good = _refreshed([e for e in kept if _fits(e, model)], engines=kept, target=target)
    # While it is short, a model keeps the engines it has that fit it and nobody was
    # allocated (its allocated ones are on their way from another model): draining one
    # and taking an idle one for it would only trade them, round after round.
    short = target - sum(e.units for e in good)
    for engine in engines:
        if short <= 0:
            break
        if engine.name not in claims and engine.units <= short and _fits(engine, model):
            good.append(engine)
            short -= engine.units
    return _Part(
        reassigns=tuple(Intent(ActionType.REASSIGN, e.name, model.name, model.name)
                        for e in good if not _fits(e, model)),
        need=target - sum(e.units for e in good),
        arriving=sum(1 for e in good if not e.serves(model.name)),
        removable=tuple(_removable(fleet, model=model, engines=engines, good=good,
                                   target=target, claims=claims)))


def _refreshed(
    fits: list[specs.Engine], *, engines: list[specs.Engine], target: int
) -> list[specs.Engine]:
    """The engines that will serve the model: those that fit, plus in-place refreshes.

    Reloading an engine that serves nothing yet costs no capacity, so a kept engine on an
    old revision that is not serving is refreshed in place while the model needs it.
    """
    committed = sum(e.units for e in fits)
    good = list(fits)
    fit_names = {e.name for e in fits}
    for engine in engines:
        if committed >= target:
            break
        if engine.name not in fit_names and not engine.serves(engine.spec.model_ref or ""):
            good.append(engine)
            committed += engine.units
    return good


def _fits(engine: specs.Engine, model: specs.ModelSpec) -> bool:
    """On the model's revision and inside its engine selector (its pool)."""
    revision_ok = model.revision is None or engine.spec.revision == model.revision
    return revision_ok and model.engine_selector.matches(engine.labels)


def _removable(
    fleet: fleet_.Fleet,
    *,
    model: specs.ModelSpec,
    engines: list[specs.Engine],
    good: list[specs.Engine],
    target: int,
    claims: Mapping[str, str],
) -> Iterator[specs.Engine]:
    """Engines the model can give up, make before break: a serving engine another model
    was allocated leaves while the model keeps its allocated units serving; any other
    (outside its selector or revision, or past its desired units) only while it keeps its
    desired units serving, since draining it would gain nobody anything."""
    serving = fleet.serving_units(model.name)
    good_names = {e.name for e in good}
    candidates = [e for e in engines if e.name not in good_names]
    # Non-serving engines cost no capacity, so they go before serving ones (a stable sort).
    for engine in sorted(candidates, key=lambda e: e.serves(model.name)):
        if engine.serves(model.name):
            wanted = claims.get(engine.name) not in (None, model.name)
            keep = target if wanted else max(target, model.replicas)
            if serving - engine.units < keep:
                continue
            serving -= engine.units
        yield engine


def _fill(
    models: list[specs.ModelSpec], *, need: dict[str, int], idle: _Supply, surplus: _Supply
) -> Iterator[Intent]:
    """Cover the needs of one priority, an engine per model per round: the engines claimed
    for it, then unclaimed idle engines, then unclaimed surplus.

    Rounds, not one model after another, because every engine a model receives holds its
    own gives back while it loads (its disruption budget counts the engine), and a model
    gives only from a serving surplus: spreading spares and surplus over the models puts
    each of them in a position to give sooner, which is what keeps a rate-limited release
    busy. For the same reason the caller serves the models with a surplus of their own to
    give only after the others, and a round serves first those with the fewest engines on
    their way.
    """
    waiting = [m for m in models if need[m.name] > 0]
    while waiting:
        for model in waiting:
            engine = _take(model, idle=idle, surplus=surplus)
            if engine is None:
                need[model.name] = 0  # nothing left that fits it in this plan
                continue
            origin = surplus.origin.get(engine.name) if engine.spec.model_ref else None
            if origin is None:
                yield Intent(ActionType.ASSIGN, engine.name, model.name, None)
            else:
                yield Intent(ActionType.REASSIGN, engine.name, model.name, origin)
            need[model.name] -= engine.units
        waiting = [m for m in waiting if need[m.name] > 0]


def _take(model: specs.ModelSpec, *, idle: _Supply, surplus: _Supply) -> specs.Engine | None:
    """The engine the model gets next: claimed for it, then idle, then surplus."""
    engine = idle.take_claimed(model.name) or surplus.take_claimed(model.name)
    if engine is None:
        engine = idle.take_free(model.engine_selector, exclude=model.name)
    if engine is None:
        engine = surplus.take_free(model.engine_selector, exclude=model.name)
    return engine


# -- the incident's view: what a naive capacity manager plans from while paused ---------


class CachedView:
    """The view the incident's capacity manager planned from: the cluster while the
    breaker is closed; while it is open, the view it cached when it opened, with every
    queued intent assumed to have run (the "expectations" any controller keeps), so each
    plan builds on plans that never ran. Model specs still arrive (a new revision, a new
    selector); engines go stale.

    The simulator's manager plans from it in both modes (the guard must hold even against
    this planner); the operator only with `--naive`, to be the incident's manager live.
    """

    def __init__(self) -> None:
        self.fleet: fleet_.Fleet | None = None

    def current(self, live: fleet_.Fleet, *, paused: bool) -> fleet_.Fleet:
        """The view to plan from now."""
        if not paused or self.fleet is None:
            self.fleet = live
            return live
        if _same(self.fleet.models.values(), live.models.values()):
            return self.fleet
        self.fleet = dataclasses.replace(self.fleet, models=dict(live.models),
                                         breakers=live.breakers,
                                         unreadable_models=live.unreadable_models)
        return self.fleet

    def assume(self, view: fleet_.Fleet, intents: Iterable[Intent], *, paused: bool) -> None:
        """Remember `view` with `intents` done, when paused (plans build on plans)."""
        if paused:
            self.fleet = expect(view, intents)


def expect(view: fleet_.Fleet, intents: Iterable[Intent]) -> fleet_.Fleet:
    """The view as a manager expects it once its intents have run (they have not)."""
    expected_by: dict[str, specs.Engine] = {}  # put in the view at once: one copy of it
    for intent in intents:
        engine = expected_by.get(intent.engine) or view.engines[intent.engine]
        target = view.models.get(intent.model) if intent.model else None
        revision = target.revision if target else None
        expected = dataclasses.replace(
            engine,
            spec=dataclasses.replace(engine.spec, model_ref=intent.model, revision=revision),
            phase=specs.Phase.SERVING if intent.model else specs.Phase.IDLE,
            model=intent.model,
            revision=revision,
            # Assumed, not observed: a preconditioned write from this view cannot succeed.
            resource_version=engine.resource_version.removesuffix(EXPECTED) + EXPECTED,
        )
        expected_by[intent.engine] = expected
    return view.with_engines(expected_by.values())


def _same(a: Iterable[object], b: Iterable[object]) -> bool:
    """The same objects in the same order (identity, not equality: cheap and exact)."""
    left, right = list(a), list(b)
    return len(left) == len(right) and all(x is y for x, y in zip(left, right, strict=True))
