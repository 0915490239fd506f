"""Who gets the engines when there are not enough: floors first, then priority, then a
fair share. Pure and deterministic; the planner moves engines toward what it decides.

The rule, in capacity units, over the engines each model's selector matches (so it
applies per pool and accelerator, whatever the selectors pick):

1. **Floors first.** Every model keeps the engines it holds up to its floor
   (``minAvailable``). Then, highest priority first, models below their floor take idle
   engines and engines other models hold above their floor. When the floors of one
   priority still exceed the supply, they share it max-min fair: a model takes an engine
   from another model of its priority that already serves below its own floor (one it
   cannot reach), only while that model keeps at least as much as the taker then has. No
   model at or above its floor is taken below it, and a lower priority's floor is never
   taken.
2. **Then priority.** What is left goes to the highest priority first, up to each model's
   desired units (``replicas``); a higher priority takes a lower priority's surplus.
3. **Then max-min fair within a priority.** The model with the fewest units takes the
   next engine. Max-min, not proportional to desired: with a proportional share a model
   gets more by asking for more, which is exactly how one ``replicas: 100000`` model with
   an empty selector starved every other model's floor. Max-min gives no reward for
   inflating a number; a model that needs less than an equal share leaves the rest to
   the others.

Each model prefers the engines it already holds, then idle engines, then other models'
surplus (lowest priority first), so an allocation that was carried out is allocated the
same way again: nothing moves without a reason. ``covered`` is the part of each floor
the supply covers; the gate protects that (``Fleet.protected_units``), so restoring one
model's floor can take an engine from a model whose own floor cannot be met anyway, and
never from a floor that can be.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final

from capguard.core import specs

_Group = tuple[tuple[str, str], ...]  # an engine's labels, sorted: selectors match groups

FLOORS: Final = "floors"
SURPLUS: Final = "surplus"


@dataclasses.dataclass(frozen=True)
class ModelShare:
    """What one model gets, in capacity units."""

    desired: int
    floor: int
    covered: int  # the part of the floor the supply covers: the floor the gate protects
    target: int  # units allocated: what the planner moves the model toward
    pools: tuple[str, ...] = ()  # pools of the engines its selector matches, in any state

    @property
    def floor_shortfall(self) -> int:
        return self.floor - self.covered

    @property
    def short(self) -> int:
        """Desired units the supply cannot give this model now."""
        return self.desired - self.target

    @property
    def no_eligible_engines(self) -> bool:
        return not self.pools


@dataclasses.dataclass(frozen=True)
class PoolSupply:
    """One pool's engines in capacity units, and what the models that may use it want."""

    pool: str
    units: int  # every engine of the pool
    usable: int  # not failed, not cordoned unless bound, not leaving a deleted model
    serving: int
    idle: int
    floors: int  # floors of the models whose selector matches an engine of the pool
    desired: int  # desired units of those models (a model matching two pools counts in both)


@dataclasses.dataclass(frozen=True)
class Allocation:
    claims: Mapping[str, str]  # engine -> the model it should serve
    models: Mapping[str, ModelShare]
    pools: Mapping[str, PoolSupply]
    # Engines a user bound to a ModelCapacity that does not exist (Engine.waits): no supply.
    waiting: tuple[str, ...] = ()
    # When every model is covered by engines it holds (no scarcity, nothing to share): what
    # lets `derive` recompute only the models a change touches. None: derive cannot.
    basis: _Basis | None = dataclasses.field(default=None, compare=False, repr=False)

    def target(self, model: str) -> int:
        found = self.models.get(model)
        return found.target if found else 0

    def covered(self, model: str) -> int:
        found = self.models.get(model)
        return found.covered if found else 0


def allocate(
    *,
    engines: Mapping[str, specs.Engine],
    models: Mapping[str, specs.ModelSpec],
    unreadable: frozenset[str] = frozenset(),
) -> Allocation:
    state = _State.of(engines=engines, models=models, unreadable=unreadable)
    for model in models.values():
        state.reserve(model)
    covered = state.fill(phase=FLOORS)
    state.fill(phase=SURPLUS)
    shares = {
        name: ModelShare(
            desired=m.replicas, floor=m.floor_units, covered=covered[name],
            target=state.units[name], pools=state.pools_of(m),
        )
        for name, m in sorted(models.items())
    }
    found = Allocation(claims=dict(state.claims), models=shares,
                       pools=_pools(engines=engines, models=models, state=state),
                       waiting=tuple(sorted(state.waiting)))
    return dataclasses.replace(found, basis=_Basis.of(found, engines=engines, models=models,
                                                      unreadable=unreadable))


@dataclasses.dataclass
class _State:
    """The allocation while it is computed: one engine claimed at a time."""

    models: Mapping[str, specs.ModelSpec]
    groups: dict[_Group, list[specs.Engine]]
    # Unbound idle engines and those bound outside their model's selector; taken from the end.
    idle: dict[_Group, list[specs.Engine]]
    held: dict[str, list[specs.Engine]]  # model -> engines it holds that its selector matches
    holders: dict[_Group, dict[str, list[specs.Engine]]]  # group -> holder -> given last first
    spare: dict[str, list[specs.Engine]]  # model -> engines it holds past its desired units
    waiting: list[str]  # engines a user bound to a model that does not exist
    claims: dict[str, str] = dataclasses.field(default_factory=dict)
    units: dict[str, int] = dataclasses.field(default_factory=dict)  # claimed, per model
    # Held units a model still has (claimed by it or by nobody): what fairness compares.
    keeps: dict[str, int] = dataclasses.field(default_factory=dict)
    own: set[str] = dataclasses.field(default_factory=set)  # engines in some model's `held`
    serving: dict[str, int] = dataclasses.field(default_factory=dict)  # units serving now
    floor_claims: dict[str, list[specs.Engine]] = dataclasses.field(default_factory=dict)
    eligible: dict[str, list[_Group]] = dataclasses.field(default_factory=dict)
    group_pools: dict[_Group, frozenset[str]] = dataclasses.field(default_factory=dict)
    group_of: dict[str, _Group] = dataclasses.field(default_factory=dict)  # engine -> group
    # Who gives surplus first: lowest priority, then the model that held the most.
    rank: dict[str, tuple[int, int, str]] = dataclasses.field(default_factory=dict)
    holder_order: dict[_Group, list[str]] = dataclasses.field(default_factory=dict)
    # Priority -> held engines (not cordoned) of its models that nobody claimed yet: is
    # there any below a taker for `_swap` to move an owner onto?
    unclaimed: dict[int, int] = dataclasses.field(default_factory=dict)
    # (owner, units) -> the highest taker priority `_outranked` found nothing for: what it
    # could find only shrinks as claims grow, and shrinks with the taker's priority.
    outranked_none: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(
        cls, *, engines: Mapping[str, specs.Engine], models: Mapping[str, specs.ModelSpec],
        unreadable: frozenset[str],
    ) -> _State:
        groups: dict[_Group, list[specs.Engine]] = {}
        idle: dict[_Group, list[specs.Engine]] = {}
        held: dict[str, list[specs.Engine]] = {name: [] for name in models}
        holders: dict[_Group, dict[str, list[specs.Engine]]] = {}
        spare: dict[str, list[specs.Engine]] = {}  # held past desired: its own, if it needs
        # Engines grouped by the labels selectors look at (a hostname label on every engine
        # would otherwise make every engine its own group).
        keys = _selector_keys(models.values())
        group_of = {name: tuple(sorted((k, v) for k, v in e.labels.items() if k in keys))
                    if keys else () for name, e in engines.items()}
        distinct = sorted(set(group_of.values()))
        by_selector: dict[specs.LabelSelector, list[_Group]] = {}
        eligible: dict[str, list[_Group]] = {}
        for name, model in models.items():
            found = by_selector.get(model.engine_selector)
            if found is None:
                found = by_selector[model.engine_selector] = [
                    g for g in distinct if model.engine_selector.matches(dict(g))]
            eligible[name] = list(found)
        fits = {name: set(found) for name, found in eligible.items()}
        serving: dict[str, int] = {}
        waiting: list[str] = []
        for engine in engines.values():
            group = group_of[engine.name]
            bound = engine.spec.model_ref
            if engine.phase is specs.Phase.SERVING and bound is not None and (
                    engine.model == bound):
                serving[bound] = serving.get(bound, 0) + engine.units
            groups.setdefault(group, []).append(engine)
            holder = _holder(engine, models=models, unreadable=unreadable)
            if holder is None:
                if _idle(engine):
                    idle.setdefault(group, []).append(engine)
                elif engine.spec.model_ref not in unreadable and engine.waits(models):
                    waiting.append(engine.name)
            elif group in fits[holder]:
                held[holder].append(engine)
            elif not engine.spec.cordoned:  # held outside its model's selector: as if idle
                idle.setdefault(group, []).append(engine)
        for name, own in held.items():
            own.sort(key=lambda e: _keep_order(e, model=models[name]))
            wanted, kept = 0, []
            for engine in own:
                # Past its desired units a model never claims an engine: it is as if idle.
                if wanted >= models[name].replicas and not engine.spec.cordoned:
                    idle.setdefault(group_of[engine.name], []).append(engine)
                    spare.setdefault(name, []).append(engine)
                    continue
                wanted += engine.units
                kept.append(engine)
                if not engine.spec.cordoned:
                    holders.setdefault(group_of[engine.name], {}).setdefault(
                        name, []).append(engine)
            held[name] = kept
        for engine_list in groups.values():
            engine_list.sort(key=lambda e: e.name)  # a swap looks at them in name order
        for engine_list in idle.values():
            # Popped from the end: unbound engines first (taking one disrupts nobody),
            # then those a model holds but will not keep, each by name.
            engine_list.sort(key=lambda e: (e.spec.model_ref is not None, e.name), reverse=True)
        for by_holder in holders.values():
            for given in by_holder.values():
                given.reverse()  # the last kept is given away first: popped from the end
        state = cls(models=models, groups=groups, idle=idle, held=held, holders=holders,
                    spare=spare, group_of=group_of, waiting=waiting,
                    group_pools={g: frozenset(e.spec.pool for e in found)
                                 for g, found in groups.items()})
        for name in models:
            state.units[name] = 0
            state.keeps[name] = sum(e.units for e in held[name])
            state.serving[name] = serving.get(name, 0)
            state.rank[name] = (models[name].priority, -state.keeps[name], name)
            state.own.update(e.name for e in held[name])
            state.eligible[name] = eligible[name]
            priority = models[name].priority
            state.unclaimed[priority] = state.unclaimed.get(priority, 0) + sum(
                1 for e in held[name] if not e.spec.cordoned)
        # Engines are taken from the least contested group first (desired units of the
        # models that may use it, per unit it has), so a model that can use any pool
        # leaves the contested one to those that cannot.
        demand = dict.fromkeys(groups, 0)
        for name, found in state.eligible.items():
            for group in found:
                demand[group] += models[name].replicas
        pressure = {g: demand[g] / max(1, sum(e.units for e in engines_))
                    for g, engines_ in groups.items()}
        for name in models:
            state.eligible[name].sort(key=lambda g: pressure[g])
        return state

    def reserve(self, model: specs.ModelSpec) -> None:
        """A model keeps what it holds, up to its floor."""
        claimed = self.floor_claims.setdefault(model.name, [])
        floor = model.floor_units
        for engine in self.held[model.name]:
            if self.units[model.name] >= floor:
                return
            self._claim(engine, model=model.name)
            claimed.append(engine)

    def fill(self, *, phase: str) -> dict[str, int]:
        """Water-fill each priority, highest first; returns the units claimed per model."""
        by_priority: dict[int, list[specs.ModelSpec]] = {}
        for model in self.models.values():
            by_priority.setdefault(model.priority, []).append(model)
        for priority in sorted(by_priority, reverse=True):
            self._water_fill(by_priority[priority], phase=phase)
        return dict(self.units)

    def _water_fill(self, tier: list[specs.ModelSpec], *, phase: str) -> None:
        goals = {m.name: m.floor_units if phase == FLOORS else m.replicas for m in tier}
        heap = [(self.units[m], m) for m in sorted(goals) if self.units[m] < goals[m]]
        heapq.heapify(heap)
        while heap:
            _, name = heapq.heappop(heap)
            # Take while still the lowest (a batch per pop keeps the heap work small).
            while self.units[name] < goals[name] and (not heap or (self.units[name], name)
                                                      < heap[0]):
                engine = self._take(name, phase=phase, tier=goals)
                if engine is None:
                    break
                self._claim(engine, model=name)
                if phase == FLOORS:
                    self.floor_claims[name].append(engine)
            else:
                if self.units[name] < goals[name]:
                    heapq.heappush(heap, (self.units[name], name))

    def _take(self, name: str, *, phase: str, tier: Mapping[str, int]) -> specs.Engine | None:
        need = tier[name] - self.units[name]
        return (self._own(name) or self._idle(name, need=need) or self._surplus(name, tier=tier)
                or self._swap(name, phase=phase)
                or (self._shared_floor(name, tier=tier) if phase == FLOORS else None))

    def _own(self, name: str) -> specs.Engine | None:
        """An engine it holds: one it keeps, or one past its desired units that nobody
        took (after a swap it may need it again, rather than an idle one)."""
        for engine in self.held[name]:
            if engine.name not in self.claims:
                return engine
        return self._spare(name)

    def _spare(self, name: str) -> specs.Engine | None:
        for engine in self.spare.get(name, ()):
            free = self.idle.get(self.group_of[engine.name], [])
            if engine.name not in self.claims and engine in free:
                free.remove(engine)
                return engine
        return None

    def _idle(self, name: str, *, need: int) -> specs.Engine | None:
        """An idle engine of the least contested group that has one; in it, one no larger
        than the need if there is one (no overshoot)."""
        for group in self.eligible[name]:
            free = self.idle.get(group)
            if not free:
                continue
            for i in range(len(free) - 1, -1, -1):
                if free[i].units <= need:
                    return free.pop(i)
            return free.pop()
        return None

    def _surplus(self, name: str, *, tier: Mapping[str, int]) -> specs.Engine | None:
        """An engine another model holds and has not claimed: lowest priority first; from
        a model of the same priority that still wants more only while it keeps as much as
        the taker then has."""
        mine = self.units[name]
        for holder, engine in self._held_by_others(name):
            wants = holder in tier and self.units[holder] < tier[holder]
            fair = self.keeps[holder] - engine.units >= mine + engine.units
            if not wants or engine.name not in self.own or fair:
                return engine
        return None

    def _held_by_others(self, name: str) -> Iterator[tuple[str, specs.Engine]]:
        """Unclaimed engines other models hold, lowest priority first (then the holder
        that held the most): one lazy walk per group, merged, so the first acceptable one
        costs little however many models hold engines."""
        walks = [self._walk(group, skip=name) for group in self.eligible[name]]
        for _, holder, engine in heapq.merge(*walks, key=lambda c: c[0]):
            if engine.name not in self.claims:
                yield holder, engine

    def _walk(self, group: _Group, *, skip: str
              ) -> Iterator[tuple[tuple[int, int, str], str, specs.Engine]]:
        by_holder = self.holders.get(group, {})
        order = self.holder_order.get(group)
        if order is None:
            order = self.holder_order[group] = sorted(by_holder, key=lambda h: self.rank[h])
        for holder in list(order):
            given = by_holder[holder]
            while given and given[-1].name in self.claims:
                given.pop()
            if not given:
                order.remove(holder)  # exhausted for good: claims only grow in a phase
                continue
            if holder != skip:
                yield self.rank[holder], holder, given[-1]

    def _shared_floor(self, name: str, *, tier: Mapping[str, int]) -> specs.Engine | None:
        """Max-min among floors of one priority that the supply cannot all cover: from a
        model of that priority already serving below its floor (so no action takes a model
        below a floor it has), the one with the most, while it keeps at least as much as
        the taker then has."""
        eligible = set(self.eligible[name])
        mine = self.units[name]
        short = [o for o in tier if o != name and self.serving[o] < self.models[o].floor_units]
        for other in sorted(short, key=lambda o: (-self.units[o], o)):
            claimed = self.floor_claims.get(other, [])
            for i in range(len(claimed) - 1, -1, -1):
                engine = claimed[i]
                if engine.spec.cordoned or self.group_of[engine.name] not in eligible:
                    continue
                if self.units[other] - engine.units < mine + engine.units:
                    break
                del claimed[i]
                self._release(engine)
                return engine
        return None

    def _swap(self, name: str, *, phase: str) -> specs.Engine | None:
        """An engine claimed by a model that can take another engine of the same size
        instead, one the taker cannot use: selectors overlap, so who takes first matters.
        The other engine is idle, or (for a floor) the owner's or another model's
        unclaimed surplus, or (for a surplus) what a lower priority would keep as its own
        (`_outranked`). Each owner is asked once per call and kind of engine (its answer
        holds for it)."""
        if phase != FLOORS and not any(self.idle.values()) and not self._below(name):
            return None
        stuck: set[tuple[str, int, bool]] = set()
        for group in self.eligible[name]:
            for engine in self.groups[group]:
                owner = self.claims.get(engine.name)
                if owner is None or owner == name or engine.spec.cordoned:
                    continue
                # A trade: the owner serves on the engine. For a surplus among equals it
                # is not worth the deadlock (see _instead); a floor, or a higher
                # priority, takes what it must.
                traded = (phase != FLOORS and engine.spec.model_ref == owner
                          and self.models[owner].priority >= self.models[name].priority)
                asked = (owner, engine.units, traded)
                if asked in stuck:
                    continue
                instead = self._instead(owner, units=engine.units, avoid=name, phase=phase,
                                        traded=traded)
                if instead is None:
                    stuck.add(asked)
                    continue
                self._release(engine)
                self._claim(instead, model=owner)
                floor = self.floor_claims.get(owner, [])
                if engine in floor:
                    floor[floor.index(engine)] = instead
                return engine
        return None

    def _instead(self, owner: str, *, units: int, avoid: str, phase: str,
                 traded: bool) -> specs.Engine | None:
        spare = self._spare(owner)  # its own engine, past its desired: moves nothing
        if spare is not None:
            if spare.units == units:
                return spare
            self.idle[self.group_of[spare.name]].append(spare)  # not that one: put back
        if phase == FLOORS:  # past its floor, an engine it holds is its to give
            for own in self.held[owner]:  # not _own: that takes a spare from idle for good
                if own.name not in self.claims and own.units == units:
                    return own
        for group in self.eligible[owner]:
            free = self.idle.get(group, [])
            for i in range(len(free) - 1, -1, -1):
                # In a trade, not one the taker holds (outside its selector): two
                # engines that both serve, which neither side gives before the other's
                # arrives.
                if free[i].units == units and not (traded and free[i].spec.model_ref == avoid):
                    return free.pop(i)
        if phase != FLOORS:
            return self._outranked(owner, units=units, taker=avoid)
        for holder, engine in self._held_by_others(owner):
            if holder != avoid and engine.units == units and not engine.spec.cordoned:
                return engine
        return None

    def _below(self, name: str) -> bool:
        """Whether a model of lower priority than this one holds an engine nobody claimed."""
        priority = self.models[name].priority
        return any(count for p, count in self.unclaimed.items() if p < priority)

    def _outranked(self, owner: str, *, units: int, taker: str) -> specs.Engine | None:
        """For a surplus: what the owner may claim instead of the engine the taker needs,
        taken from what a priority below the taker would otherwise keep as surplus: an
        engine the owner itself holds, when the owner is below the taker (its floor moves
        onto it), or an unclaimed engine a model below both holds. Without it, a floor
        claimed on the one engine a higher priority could use kept that engine from it,
        and the other engine went to the same model as surplus."""
        priority = self.models[taker].priority
        if self.outranked_none.get((owner, units), priority - 1) >= priority:
            return None
        if self.models[owner].priority < priority:
            for own in self.held[owner]:
                if own.name not in self.claims and own.units == units:
                    return own
        limit = min(priority, self.models[owner].priority)
        passed_over = False  # one the taker holds: another taker might get it
        for holder, engine in self._held_by_others(owner):
            if self.models[holder].priority >= limit:
                break  # lowest priority first: none lower is left
            if engine.units == units and not engine.spec.cordoned:
                if holder != taker:
                    return engine
                passed_over = True
        if not passed_over:
            self.outranked_none[(owner, units)] = priority
        return None

    def _claim(self, engine: specs.Engine, *, model: str) -> None:
        self.claims[engine.name] = model
        self.units[model] += engine.units
        holder = engine.spec.model_ref
        if engine.name in self.own:
            assert holder is not None
            if not engine.spec.cordoned:
                self.unclaimed[self.models[holder].priority] -= 1
            if holder != model:
                self.keeps[holder] -= engine.units

    def _release(self, engine: specs.Engine) -> None:
        model = self.claims.pop(engine.name)
        self.units[model] -= engine.units
        holder = engine.spec.model_ref
        if engine.name in self.own:
            assert holder is not None
            if not engine.spec.cordoned:
                self.unclaimed[self.models[holder].priority] += 1
            if holder != model:
                self.keeps[holder] += engine.units

    def pools_of(self, model: specs.ModelSpec) -> tuple[str, ...]:
        return tuple(sorted(set().union(*(self.group_pools[g]
                                          for g in self.eligible[model.name]))))


def _holder(
    engine: specs.Engine, *, models: Mapping[str, specs.ModelSpec], unreadable: frozenset[str]
) -> str | None:
    """The model an engine counts for; None for an engine that holds no model we allocate."""
    bound = engine.spec.model_ref
    if bound is None or bound in unreadable or bound not in models:
        return None
    return None if engine.phase is specs.Phase.FAILED else bound


def _keep_order(engine: specs.Engine, *, model: specs.ModelSpec) -> tuple[bool, bool, bool, str]:
    """Which of its engines a model keeps first (and gives away last): those on its
    revision, so a refresh's replacement is kept; cordoned ones, which can serve no other
    model; serving ones; then by name."""
    on_revision = model.revision is None or engine.spec.revision == model.revision
    return (not on_revision, not engine.spec.cordoned, not engine.serves(model.name),
            engine.name)


def _idle(engine: specs.Engine) -> bool:
    return (engine.spec.model_ref is None and engine.phase is specs.Phase.IDLE
            and not engine.spec.cordoned)


def _selector_keys(models: Iterable[specs.ModelSpec]) -> frozenset[str]:
    keys: set[str] = set()
    for model in models:
        selector = model.engine_selector
        keys.update(k for k, _ in selector.match_labels)
        keys.update(r.key for r in selector.match_expressions)
    return frozenset(keys)


def _pools(
    *, engines: Mapping[str, specs.Engine], models: Mapping[str, specs.ModelSpec],
    state: _State,
) -> dict[str, PoolSupply]:
    units: dict[str, int] = {}
    usable: dict[str, int] = {}
    serving: dict[str, int] = {}
    idle: dict[str, int] = {}
    for engine in engines.values():
        pool, size = engine.spec.pool, engine.units
        units[pool] = units.get(pool, 0) + size
        if engine.phase is specs.Phase.FAILED:
            continue
        if engine.phase is specs.Phase.SERVING:
            serving[pool] = serving.get(pool, 0) + size
        if _idle(engine):
            idle[pool] = idle.get(pool, 0) + size
            usable[pool] = usable.get(pool, 0) + size
        elif engine.spec.model_ref is not None and engine.spec.model_ref in models:
            usable[pool] = usable.get(pool, 0) + size
    floors = dict.fromkeys(units, 0)
    desired = dict.fromkeys(units, 0)
    for model in models.values():
        for pool in state.pools_of(model):
            floors[pool] += model.floor_units
            desired[pool] += model.replicas
    return {pool: PoolSupply(pool=pool, units=units[pool], usable=usable.get(pool, 0),
                             serving=serving.get(pool, 0), idle=idle.get(pool, 0),
                             floors=floors[pool], desired=desired[pool])
            for pool in sorted(units)}


# -- the same allocation, worked out again for what a change touches -------------------------


@dataclasses.dataclass(frozen=True)
class _Own:
    """One model's share and the engines claimed for it (`_Basis.rebase`)."""

    share: ModelShare
    claims: tuple[str, ...]
    # The label groups of engines it holds that `allocate` puts with the idle ones (past its
    # desired units, or outside its selector), one entry per engine.
    loose: tuple[_Group, ...] = ()
    keeps: int = 0  # units of the engines it keeps (`allocate`'s ``keeps``)


@dataclasses.dataclass(frozen=True)
class _Basis:
    """An allocation in which every model is covered by engines it holds but those in
    ``short``: one, which idle engines nobody holds cover, or any number that can take
    nothing (no idle engine anywhere, no lower priority to take from, and no model of its
    priority holding enough more for max-min fairness to give it one): then no model
    takes from another, each share depends on the model's own engines and, for a short
    one, on the idle engines and how contested their groups are, so a change is allocated
    again for the models it touches. Made only when it reproduces `allocate` exactly."""

    keys: frozenset[str]  # the label keys selectors look at
    key_uses: Mapping[str, int]  # how many models' selectors look at each
    owns: Mapping[str, _Own]
    short: frozenset[str]
    group_pools: Mapping[_Group, Mapping[str, int]]  # label group -> pool -> engines
    group_units: Mapping[_Group, int]  # every engine of the group, in units
    demand: Mapping[_Group, int]  # desired units of the models whose selector matches it
    pool_counts: Mapping[str, tuple[int, int, int, int]]  # pool -> units, usable, serving, idle
    waiting: frozenset[str]
    loose: Mapping[_Group, int] = dataclasses.field(default_factory=dict)  # `_Own.loose`

    @classmethod
    def of(cls, found: Allocation, *, engines: Mapping[str, specs.Engine],
           models: Mapping[str, specs.ModelSpec], unreadable: frozenset[str]) -> _Basis | None:
        keys = _selector_keys(models.values())
        group_pools: dict[_Group, dict[str, int]] = {}
        group_units: dict[_Group, int] = {}
        held: dict[str, list[specs.Engine]] = {name: [] for name in models}
        idle = []
        for engine in engines.values():
            group = _group(engine, keys)
            _count_group(group_pools, group, engine.spec.pool, 1)
            group_units[group] = group_units.get(group, 0) + engine.units
            holder = _holder(engine, models=models, unreadable=unreadable)
            if holder is not None:
                held[holder].append(engine)
            elif _idle(engine):
                idle.append(engine)
        demand = dict.fromkeys(group_pools, 0)
        for model in models.values():
            _count_demand(demand, model, sign=1)
        key_uses: dict[str, int] = {}
        for model in models.values():
            _count_keys(key_uses, model, sign=1)
        basis = cls(keys=keys, key_uses=key_uses, owns={}, short=frozenset(),
                    group_pools=group_pools,
                    group_units=group_units, demand=demand,
                    pool_counts=_pool_counts(engines.values(), models=models),
                    waiting=frozenset(found.waiting))
        shorts = sum(1 for share in found.models.values() if share.target < share.desired)
        if shorts > 1 and any(pool.idle for pool in found.pools.values()):
            return None  # idle engines shared out among models: not of this kind
        rebased = basis.rebase(models, held=held.__getitem__, touched=models.keys(),
                               idle=lambda: idle)
        return rebased if rebased is not None and rebased.allocation(models) == found else None

    def rebase(self, models: Mapping[str, specs.ModelSpec], *,
               held: Callable[[str], list[specs.Engine]], touched: Iterable[str],
               idle: Callable[[], Iterable[specs.Engine]]) -> _Basis | None:
        """This basis with the touched models' shares worked out again (and the short
        one's, whatever touched it); None when the allocation is not of that kind."""
        owns = dict(self.owns)
        loose = dict(self.loose)

        def put(name: str, own: _Own | None) -> None:
            for group in owns[name].loose if name in owns else ():
                loose[group] -= 1
            if own is None:
                owns.pop(name, None)
                return
            owns[name] = own
            for group in own.loose:
                loose[group] = loose.get(group, 0) + 1

        for name in set(owns) - models.keys():
            put(name, None)
        short = set(self.short) & models.keys()
        for name in touched:
            if name not in models:
                continue
            if models[name].floor_units > models[name].replicas:
                return None  # a floor past desired: `allocate` alone says how it is claimed
            own = _covered(models[name], held(name), basis=self)
            if own.share.target < models[name].replicas:
                short.add(name)
            else:
                short.discard(name)
            put(name, own)
        rebased = dataclasses.replace(self, owns=owns, short=frozenset(), loose=loose)
        if not short:
            return rebased
        # One short model may take idle engines; several, only if none can take anything
        # (who would get which idle engine is the water-fill's to say).
        free = list(idle())
        if len(short) > 1 and (free or any(loose.values())):
            return None
        rivals = _Rivals.of(models, owns)
        for name in sorted(short):
            topped = rebased._from_idle(models[name], held(name), idle=free, rivals=rivals)
            if topped is None:
                return None
            put(name, topped)
        return dataclasses.replace(rebased, owns=owns, short=frozenset(short), loose=loose)

    def _from_idle(self, model: specs.ModelSpec, held: list[specs.Engine], *,
                   idle: Iterable[specs.Engine], rivals: _Rivals) -> _Own | None:
        """The share of the one model its own engines do not cover, as `allocate` gives it:
        its own engines, then idle engines nobody holds from the least contested group that
        has one (the smallest name first; one no larger than the need). None when they do
        not cover it, or `allocate` could choose anything else."""
        if model.floor_units > model.replicas:
            return None
        selector = model.engine_selector
        mine, loose = _kept(model, held, keys=self.keys)
        keeps = sum(e.units for e in mine)
        kept = iter(mine)
        pressure = {g: self.demand[g] / max(1, self.group_units[g]) for g in self.group_pools}
        eligible = sorted((g for g in sorted(self.group_pools) if selector.matches(dict(g))),
                          key=lambda g: pressure[g])
        free: dict[_Group, list[specs.Engine]] = {}
        for engine in idle:
            free.setdefault(_group(engine, self.keys), []).append(engine)
        for found in free.values():
            found.sort(key=lambda e: e.name, reverse=True)  # popped from the end

        def take(need: int) -> specs.Engine | None:
            own = next(kept, None)
            if own is not None:
                return own
            for group in eligible:
                found = free.get(group)
                if found:
                    for i in range(len(found) - 1, -1, -1):
                        if found[i].units <= need:
                            return found.pop(i)
                if found or self.loose.get(group):
                    # `allocate` would take an engine someone holds (in the idle list after
                    # those nobody holds): not this path's to say which.
                    return None
            return None

        claims, units, covered = [], 0, 0
        for goal in (model.floor_units, model.replicas):
            while units < goal:
                taken = take(goal - units)
                if taken is None:
                    if goal == model.floor_units or free or any(self.loose.values()) or \
                            not rivals.leave(model, units=units):
                        return None
                    break
                claims.append(taken.name)
                units += taken.units
            if goal == model.floor_units:
                covered = units
        share = ModelShare(desired=model.replicas, floor=model.floor_units, covered=covered,
                           target=units, pools=_pools_matching(selector, self.group_pools))
        return _Own(share=share, claims=tuple(claims), loose=loose, keeps=keeps)

    def allocation(self, models: Mapping[str, specs.ModelSpec]) -> Allocation:
        claims = {engine: name for name, own in self.owns.items() for engine in own.claims}
        return self.with_claims(claims, models)

    def with_claims(self, claims: dict[str, str], models: Mapping[str, specs.ModelSpec]
                    ) -> Allocation:
        floors: dict[str, int] = dict.fromkeys(self.pool_counts, 0)
        desired: dict[str, int] = dict.fromkeys(self.pool_counts, 0)
        for name, own in self.owns.items():
            for pool in own.share.pools:
                floors[pool] += models[name].floor_units
                desired[pool] += models[name].replicas
        pools = {pool: PoolSupply(pool=pool, units=units, usable=usable, serving=serving,
                                  idle=idle, floors=floors[pool], desired=desired[pool])
                 for pool, (units, usable, serving, idle) in sorted(self.pool_counts.items())}
        return Allocation(claims=claims,
                          models={name: self.owns[name].share for name in sorted(models)},
                          pools=pools, waiting=tuple(sorted(self.waiting)), basis=self)


@dataclasses.dataclass(frozen=True)
class _Rivals:
    """What decides whether a short model can take from anyone, once per allocation
    rather than a walk over every model per short one: the lowest priority, and per
    priority the two models keeping the most units (None: a model not worked out)."""

    lowest: int
    most: Mapping[int, tuple[tuple[float, str], ...]]

    @classmethod
    def of(cls, models: Mapping[str, specs.ModelSpec], owns: Mapping[str, _Own]) -> _Rivals:
        most: dict[int, list[tuple[float, str]]] = {}
        for name, model in models.items():
            own = owns.get(name)
            keeps = float("inf") if own is None else float(own.keeps)
            top = most.setdefault(model.priority, [])
            top.append((keeps, name))
            top.sort(reverse=True)
            del top[2:]
        return cls(lowest=min((m.priority for m in models.values()), default=0),
                   most={p: tuple(top) for p, top in most.items()})

    def leave(self, model: specs.ModelSpec, *, units: int) -> bool:
        """Whether `allocate` gives the model nothing past its ``units`` (its own, at or
        above its floor) with no idle engine anywhere: no model of a lower priority to take
        from, and none of its own priority keeping more than one unit past it (max-min
        takes from a model only while it keeps at least as much as the taker then has)."""
        if self.lowest < model.priority:
            return False
        others = [keeps for keeps, name in self.most.get(model.priority, ())
                  if name != model.name]
        return not others or others[0] <= units + 1


def derive(
    before: Allocation, *, old: tuple[Mapping[str, specs.Engine], Mapping[str, specs.ModelSpec]],
    engines: Mapping[str, specs.Engine], models: Mapping[str, specs.ModelSpec],
    unreadable: frozenset[str], changed: frozenset[str], touched: frozenset[str],
    bound: Callable[[str], Iterable[str]], idle: Callable[[], Iterable[specs.Engine]],
) -> tuple[Allocation, frozenset[str] | None]:
    """The allocation of a fleet (``engines``, ``models``) that differs from the one
    ``before`` was made for (``old``) in the engines ``changed`` names and the models
    ``touched`` (a spec, or the engines holding it); ``bound(model)`` names the engines
    bound to a model now, ``idle()`` the idle engines nobody holds. Exactly `allocate`'s
    answer: worked out again for the touched models alone while the allocation stays of
    the kind `_Basis` describes and no label group gains or loses a pool, from scratch
    otherwise. Also the models whose share or claims can differ from ``before``'s (the
    touched ones and the short ones; None: any)."""
    basis = before.basis
    old_engines, old_models = old
    key_uses = dict(basis.key_uses) if basis is not None else {}
    for model in touched:
        for spec, sign in ((old_models.get(model), -1), (models.get(model), 1)):
            if spec is not None:
                _count_keys(key_uses, spec, sign=sign)
    if basis is None or {k for k, n in key_uses.items() if n} != basis.keys:
        # Engines are grouped by the label keys selectors look at: other groups, other
        # answers (which group is least contested, say).
        return allocate(engines=engines, models=models, unreadable=unreadable), None
    # Engines whose counts may differ: those that changed, and those bound to a touched
    # model (whether a binding is usable supply, or waits, depends on the model existing).
    recount = set(changed)
    for model in touched:
        recount.update(bound(model))
    group_pools = {g: dict(p) for g, p in basis.group_pools.items()}
    group_units = dict(basis.group_units)
    pool_counts = dict(basis.pool_counts)
    waiting = set(basis.waiting)
    for name in recount:
        for engine, known, sign in ((old_engines.get(name), old_models, -1),
                                    (engines.get(name), models, 1)):
            if engine is None:
                continue
            if name in changed:
                group = _group(engine, basis.keys)
                _count_group(group_pools, group, engine.spec.pool, sign)
                group_units[group] = group_units.get(group, 0) + sign * engine.units
            _count_pool(pool_counts, engine, models=known, sign=sign)
        waiting.discard(name)
        new = engines.get(name)
        if new is not None and _waits(new, models=models, unreadable=unreadable):
            waiting.add(name)
    if group_pools.keys() != basis.group_pools.keys() or any(
            p.keys() != basis.group_pools[g].keys() for g, p in group_pools.items()):
        return allocate(engines=engines, models=models, unreadable=unreadable), None
    demand = dict(basis.demand)
    for model in touched:
        for spec, sign in ((old_models.get(model), -1), (models.get(model), 1)):
            if spec is not None:
                _count_demand(demand, spec, sign=sign)

    def held(model: str) -> list[specs.Engine]:
        return [e for e in (engines[n] for n in bound(model))
                if _holder(e, models=models, unreadable=unreadable) == model]

    counted = dataclasses.replace(
        basis, key_uses=key_uses, group_pools=group_pools, group_units=group_units, demand=demand,
        pool_counts={p: c for p, c in pool_counts.items()
                     if any(p in found for found in group_pools.values())},
        waiting=frozenset(waiting))
    rebased = counted.rebase(models, held=held, touched=touched, idle=idle)
    if rebased is None:
        return allocate(engines=engines, models=models, unreadable=unreadable), None
    again = {*touched, *basis.short, *rebased.short}
    claims = dict(before.claims)
    for model in again:
        previous = basis.owns.get(model)
        for claimed in previous.claims if previous else ():
            if claims.get(claimed) == model:
                del claims[claimed]
    for model in again:
        own = rebased.owns.get(model)
        if own is not None:
            claims.update(dict.fromkeys(own.claims, model))
    return rebased.with_claims(claims, models), frozenset(again)


def _kept(model: specs.ModelSpec, held: list[specs.Engine], *, keys: frozenset[str]
          ) -> tuple[list[specs.Engine], tuple[_Group, ...]]:
    """(the engines a model keeps, in keep order; the groups of those `allocate` puts with
    the idle ones) from the engines it holds (bound, not failed), as `allocate` sorts them."""
    selector = model.engine_selector
    mine = sorted((e for e in held if selector.matches(e.labels)),
                  key=lambda e: _keep_order(e, model=model))
    loose = [_group(e, keys) for e in held
             if not e.spec.cordoned and not selector.matches(e.labels)]
    kept, wanted = [], 0
    for engine in mine:
        if wanted >= model.replicas and not engine.spec.cordoned:
            loose.append(_group(engine, keys))  # past its desired units: as if idle
            continue
        wanted += engine.units
        kept.append(engine)
    return kept, tuple(loose)


def _covered(model: specs.ModelSpec, held: list[specs.Engine], *, basis: _Basis) -> _Own:
    """The model's share from the engines it holds: when they cover its desired units,
    `allocate` claims them in keep order up to the floor and on up to desired, and takes
    nothing from anyone (a target short of desired: they do not cover it)."""
    kept, loose = _kept(model, held, keys=basis.keys)
    claims, target, covered = [], 0, None
    for engine in kept:
        if covered is None and target >= model.floor_units:
            covered = target
        if target >= model.replicas:
            break
        claims.append(engine.name)
        target += engine.units
    share = ModelShare(desired=model.replicas, floor=model.floor_units,
                       covered=target if covered is None else covered, target=target,
                       pools=_pools_matching(model.engine_selector, basis.group_pools))
    return _Own(share=share, claims=tuple(claims), loose=loose,
                keeps=sum(e.units for e in kept))


def _pools_matching(selector: specs.LabelSelector,
                    group_pools: Mapping[_Group, Mapping[str, int]]) -> tuple[str, ...]:
    return tuple(sorted({pool for group, found in group_pools.items()
                         if selector.matches(dict(group)) for pool in found}))


def _count_keys(uses: dict[str, int], model: specs.ModelSpec, *, sign: int) -> None:
    for key in _selector_keys((model,)):
        uses[key] = uses.get(key, 0) + sign


def _count_demand(demand: dict[_Group, int], model: specs.ModelSpec, *, sign: int) -> None:
    for group in demand:
        if model.engine_selector.matches(dict(group)):
            demand[group] += sign * model.replicas


def _group(engine: specs.Engine, keys: frozenset[str]) -> _Group:
    return tuple(sorted((k, v) for k, v in engine.labels.items() if k in keys)) if keys else ()


def _count_group(found: dict[_Group, dict[str, int]], group: _Group, pool: str,
                 sign: int) -> None:
    pools = found.setdefault(group, {})
    pools[pool] = pools.get(pool, 0) + sign
    if not pools[pool]:
        del pools[pool]
    if not pools:
        del found[group]


def _count_pool(found: dict[str, tuple[int, int, int, int]], engine: specs.Engine, *,
                models: Mapping[str, specs.ModelSpec], sign: int) -> None:
    """Add (or with sign -1 take away) what one engine counts in its pool's supply."""
    units, usable, serving, idle = found.get(engine.spec.pool, (0, 0, 0, 0))
    size = sign * engine.units
    units += size
    if engine.phase is not specs.Phase.FAILED:
        if engine.phase is specs.Phase.SERVING:
            serving += size
        if _idle(engine):
            idle += size
            usable += size
        elif engine.spec.model_ref is not None and engine.spec.model_ref in models:
            usable += size
    found[engine.spec.pool] = (units, usable, serving, idle)


def _pool_counts(engines: Iterable[specs.Engine], *, models: Mapping[str, specs.ModelSpec]
                 ) -> dict[str, tuple[int, int, int, int]]:
    found: dict[str, tuple[int, int, int, int]] = {}
    for engine in engines:
        _count_pool(found, engine, models=models, sign=1)
    return found


def _waits(engine: specs.Engine, *, models: Mapping[str, specs.ModelSpec],
           unreadable: frozenset[str]) -> bool:
    """Bound by a user to a model that does not exist (`allocate`'s ``waiting``)."""
    return (_holder(engine, models=models, unreadable=unreadable) is None
            and not _idle(engine) and engine.spec.model_ref not in unreadable
            and engine.waits(models))
