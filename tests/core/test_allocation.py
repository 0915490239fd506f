"""Capacity under scarcity: floors first, then priority, then max-min fair (issue 11).

Examples for each rule, then properties over random fleets: every claim is one the
model's selector allows, floors come before any surplus, no floor stays short while an
engine it could use serves someone's surplus, and an allocation that was carried out is
allocated the same way again (nothing moves without a reason).

The optimality properties use engines of one size. With mixed capacityUnits the rules
are followed engine by engine, and where selectors overlap an engine of another size
is not swapped in, so a unit can stay unplaced that an exact matching would place. The
strict fixed point is checked where each model selects one pool; with mixed sizes or
overlapping selectors, that the allocation settles after at most two rounds of moves.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.core.core_fleets import engine, model

from capguard.core import fleet as fleet_
from capguard.core import planner, specs

POOL_A = {"matchLabels": {"pool": "a"}}


def held(name: str, count: int, *, start: int = 0, pool: str = "a") -> list[specs.Engine]:
    return [engine(f"{name}-{i:03d}", model=name, pool=pool) for i in range(start, start + count)]


def idle(count: int, *, pool: str = "a") -> list[specs.Engine]:
    return [engine(f"idle-{pool}-{i:03d}", pool=pool) for i in range(count)]


def shares(found: fleet_.Fleet) -> dict[str, tuple[int, int]]:
    """(covered floor, target) per model."""
    return {m: (s.covered, s.target) for m, s in found.allocation.models.items()}


def carried_out(found: fleet_.Fleet) -> fleet_.Fleet:
    """The fleet once every engine serves the model the allocation claimed it for, and
    engines held past the allocation are idle (failed and draining ones stay as they are)."""
    claims = found.allocation.claims
    moved = []
    for e in found.engines.values():
        target = claims.get(e.name)
        held_by = e.spec.model_ref if e.spec.model_ref in found.models else None
        unchanged = target == held_by and (target is None or e.serves(target))
        # Outside its model's selector, a serving engine stays while its model has no
        # replacement for it (the planner drains it only once replacements serve).
        outside = (held_by is not None and e.serves(held_by)
                   and not found.models[held_by].engine_selector.matches(e.labels)
                   and found.allocation.target(held_by) < found.models[held_by].replicas)
        if unchanged or (target is None and (held_by is None or outside
                                             or e.phase is specs.Phase.FAILED)):
            moved.append(e)
            continue
        phase = specs.Phase.SERVING if target else specs.Phase.IDLE
        spec = dataclasses.replace(e.spec, model_ref=target,
                                   revision=found.models[target].revision if target else None)
        moved.append(dataclasses.replace(e, spec=spec, phase=phase, model=target,
                                         revision=spec.revision))
    return fleet_.Fleet.of(engines=moved, models=found.models.values())


def test_the_greedy_model_gives_the_legitimate_model_its_floor_and_then_its_desired() -> None:
    # An empty selector and a huge replicas took every engine; a model scaled up later
    # stays below its own floor (desired 4, floor 4, serving 3) unless the planner acts.
    found = fleet_.Fleet.of(
        engines=[*held("greedy", 10), *held("legit", 3)],
        models=[model("greedy", replicas=1000), model("legit", replicas=4)],
    )
    assert shares(found) == {"greedy": (9, 9), "legit": (4, 4)}
    assert found.protected_units("greedy") == 9  # 900 cannot be covered; 9 can
    intents = planner.plan(found)
    assert intents == [planner.Intent(planner.ActionType.REASSIGN, "greedy-009", "legit", "greedy")]
    assert planner.plan(carried_out(found)) == []


def test_a_higher_priority_takes_a_lower_prioritys_surplus_never_its_floor() -> None:
    found = fleet_.Fleet.of(
        engines=[*held("low", 6), *held("high", 2)],
        models=[model("low", replicas=6, minAvailable=4),
                model("high", replicas=8, minAvailable=2, priority=10)],
    )
    # high takes low's two surplus units; low keeps its floor of 4.
    assert shares(found) == {"high": (2, 4), "low": (4, 4)}


def test_a_lower_prioritys_floor_is_never_taken_for_a_higher_prioritys_floor() -> None:
    found = fleet_.Fleet.of(
        engines=[*held("low", 4), *held("high", 2)],
        models=[model("low", replicas=4), model("high", replicas=5, priority=10)],
    )
    assert shares(found) == {"high": (2, 2), "low": (4, 4)}
    assert found.allocation.models["high"].floor_shortfall == 3


def test_a_lower_priority_keeps_its_floor_on_the_engine_a_higher_priority_cannot_use(
) -> None:
    # low holds one engine in each pool and a floor of one; high may use only pool a. Its
    # floor kept on e00 (first by name), low held e01 as surplus while high went short;
    # low's floor moves onto e01 and high takes e00. Random fleets found it, rarely.
    found = fleet_.Fleet.of(
        engines=[engine("e00", model="low", pool="a"), engine("e01", model="low", pool="b")],
        models=[model("low", replicas=2, minAvailable=1),
                model("high", replicas=1, minAvailable=0, priority=10, engineSelector=POOL_A)])
    assert dict(found.allocation.claims) == {"e00": "high", "e01": "low"}
    assert shares(found) == {"high": (0, 1), "low": (1, 1)}
    assert at_rest(found, rounds_of(found, 4)[-1])


def test_a_higher_priority_that_took_the_shared_pool_moves_onto_a_lower_ones_surplus(
) -> None:
    # Two models of priority 10 share pool a's three idle engines; m3 may use only pool a,
    # m1 any pool. m1 took two of them while low's surplus in pool b (e07) waited, and m3
    # went short. m1 now takes e07 instead and m3 gets the engine it gave up.
    found = fleet_.Fleet.of(
        engines=[*(engine(f"e0{i}", pool="a") for i in range(3)),
                 engine("e04", model="low", pool="a"), engine("e07", model="low", pool="b")],
        models=[model("low", replicas=2, minAvailable=1),
                model("m1", replicas=2, minAvailable=0, priority=10),
                model("m3", replicas=2, minAvailable=0, priority=10, engineSelector=POOL_A)])
    assert shares(found) == {"low": (1, 1), "m1": (0, 2), "m3": (0, 2)}
    assert found.allocation.claims["e07"] == "m1"
    assert at_rest(found, rounds_of(found, 4)[-1])


def test_floors_come_before_any_surplus_whatever_the_priority() -> None:
    found = fleet_.Fleet.of(
        engines=[*held("high", 6), *idle(0)],
        models=[model("high", replicas=6, minAvailable=2, priority=10),
                model("low", replicas=3, minAvailable=3)],
    )
    assert shares(found) == {"high": (2, 3), "low": (3, 3)}


def test_models_of_one_priority_share_what_is_left_max_min() -> None:
    # Proportional to desired would give big 10/12 of the 6 engines and small 1; max-min
    # gives small what it asks (2) and big the rest: asking for more earns nothing.
    found = fleet_.Fleet.of(
        engines=idle(6),
        models=[model("big", replicas=10, minAvailable=0),
                model("small", replicas=2, minAvailable=0)],
    )
    assert shares(found) == {"big": (0, 4), "small": (0, 2)}


def test_floors_that_exceed_the_supply_are_said_and_a_met_floor_is_not_taken() -> None:
    found = fleet_.Fleet.of(
        engines=[*held("a", 5), *held("b", 1)],
        models=[model("a", replicas=5), model("b", replicas=5)],
    )
    # a serves its floor: taking from it would take it below; b says its shortfall.
    assert shares(found) == {"a": (5, 5), "b": (1, 1)}
    assert [found.allocation.models[m].floor_shortfall for m in "ab"] == [0, 4]


def test_floors_nobody_meets_share_the_supply_max_min() -> None:
    found = fleet_.Fleet.of(
        engines=[*held("a", 5), *held("b", 1)],
        models=[model("a", replicas=8), model("b", replicas=8)],
    )
    assert shares(found) == {"a": (3, 3), "b": (3, 3)}
    assert [found.allocation.models[m].floor_shortfall for m in "ab"] == [5, 5]


def test_pools_are_allocated_apart_and_reported() -> None:
    found = fleet_.Fleet.of(
        engines=[*held("a", 2), *idle(1), *held("b", 2, pool="b"), *idle(4, pool="b")],
        models=[model("a", replicas=5, engineSelector=POOL_A),
                model("b", replicas=3, engineSelector={"matchLabels": {"pool": "b"}})],
    )
    assert shares(found) == {"a": (3, 3), "b": (3, 3)}
    pools = found.allocation.pools
    assert (pools["a"].units, pools["a"].floors, pools["a"].desired) == (3, 5, 5)
    assert (pools["b"].units, pools["b"].idle, pools["b"].desired) == (6, 4, 3)
    assert found.allocation.models["a"].pools == ("a",)


def test_a_selector_that_matches_no_engine_is_said_to() -> None:
    found = fleet_.Fleet.of(
        engines=idle(3),
        models=[model("lost", replicas=2, engineSelector={"matchLabels": {"pool": "zz"}})],
    )
    share = found.allocation.models["lost"]
    assert share.no_eligible_engines and share.target == 0 and share.floor_shortfall == 2


def test_cordoned_and_failed_engines_are_not_supply() -> None:
    found = fleet_.Fleet.of(
        engines=[engine("c", cordoned=True), engine("f", model="m", phase="Failed"),
                 engine("kept", model="m", cordoned=True)],
        models=[model("m", replicas=3, minAvailable=0)],
    )
    assert shares(found) == {"m": (0, 1)}
    assert found.allocation.claims == {"kept": "m"}


def test_an_engine_bound_by_a_user_to_no_model_waits_but_not_one_of_an_unreadable_model(
) -> None:
    found = fleet_.Fleet.of(
        engines=[engine("typo", model="no-such-model", action_id=""),
                 engine("garbled", model="broken", action_id="")],
        models=[model("m", replicas=1)], unreadable_models=["broken"],
    )
    assert found.allocation.waiting == ("typo",)


def test_a_refresh_keeps_its_replacement() -> None:
    # The replacement on the new revision is kept before an old serving engine, so two
    # models refreshing at once do not pass a loading spare back and forth.
    engines = [*held("m", 3), engine("new", model="m", phase="Loading", revision="r2")]
    found = fleet_.Fleet.of(engines=engines, models=[model("m", replicas=3, revision="r2")])
    assert "new" in {e for e, m in found.allocation.claims.items() if m == "m"}


def test_a_floor_short_in_its_pool_swaps_for_a_spare_of_the_owners_size() -> None:
    # m0 can use any pool and holds a two-unit engine in pool a and one in pool b past
    # its replicas; m1 may use only pool a and is one unit short of its floor. m0 gives
    # the pool-a engine and keeps the pool-b one. (A swap used to look at m0's spare for
    # a one-unit engine first and lose it from the idle list: then m1 stayed short, and
    # the planner moved the pool-b engine in and out of m0 round after round.)
    engines = [engine("x-big-a", model="m0", pool="a", units=2),
               engine("y-big-b", model="m0", pool="b", units=2),
               *held("m0", 2), *held("m1", 5, start=2)]
    found = fleet_.Fleet.of(engines=engines, models=[
        model("m0", replicas=4, minAvailable=4),
        model("m1", replicas=6, minAvailable=6, engineSelector=POOL_A)])
    claims = found.allocation.claims
    assert claims["x-big-a"] == "m1" and claims["y-big-b"] == "m0"
    assert shares(found) == {"m0": (4, 4), "m1": (7, 7)}
    assert at_rest(found, rounds_of(found, 4)[-1])


@pytest.mark.parametrize(("holder", "replicas"), [("m1", (1, 0, 2, 2)), ("m2", (1, 2, 1, 2))])
def test_models_of_one_priority_are_not_given_engines_in_a_trade_of_two_that_serve(
    holder: str, replicas: tuple[int, ...],
) -> None:
    # m0 serves on a two-unit engine outside its pool (b); another model serves on a
    # two-unit engine in pool a, which m0 may use. Swapping the two is a trade of
    # engines that both serve, which neither model gives before the other's arrives: the
    # planner brought the holder a one-unit engine, drained it as surplus, brought it
    # back, round after round. Two random fleets that did so; m0 takes idle engines.
    engines = [engine("e00", model=holder, units=2, pool="a"),
               *(engine(f"e0{i}", pool="a") for i in range(1, 7)),
               engine("e07", pool="b"), engine("e08", pool="a", cordoned=True),
               engine("e09", model="m0", units=2, pool="b")]
    found = fleet_.Fleet.of(engines=engines, models=[
        model("m0", replicas=3, minAvailable=0, engineSelector=POOL_A),
        *(model(f"m{i}", replicas=r, minAvailable=0) for i, r in enumerate(replicas, 1))])
    assert found.allocation.claims["e00"] == holder
    assert at_rest(found, rounds_of(found, 6)[-1])


def test_a_floor_still_takes_an_engine_in_a_trade() -> None:
    # m1 may use only pool b and serves outside it; m0 serves on the only engine in b. A
    # floor is worth the trade a surplus is not: m1 gets m0's engine, m0 gets m1's.
    found = fleet_.Fleet.of(
        engines=[engine("e00", model="m0", pool="b"), engine("e01", model="m1", pool="a")],
        models=[model("m0", replicas=2, minAvailable=1),
                model("m1", replicas=1, minAvailable=1, engineSelector={
                    "matchLabels": {"pool": "b"}})])
    assert dict(found.allocation.claims) == {"e00": "m1", "e01": "m0"}

def test_a_short_model_keeps_an_engine_of_its_own_while_its_allocated_one_is_on_its_way(
) -> None:
    # m0 is allocated m1's two-unit engine in pool b, which m1 gives only once its own
    # replacement arrives. Meanwhile m0 holds a one-unit engine nobody was allocated: it
    # keeps it. (It drained it and took an idle one of the same kind for it, and the next
    # round the other way round, until the two-unit engine came: a random fleet.)
    cells = [("e00", "a", 1, None), ("e01", "b", 2, "m1"), ("e02", "a", 1, None),
             ("e03", "a", 1, "m0"), ("e04", "a", 1, "m0"), ("e05", "b", 1, None),
             ("e06", "a", 1, "m0"), ("e07", "a", 1, "m0"), ("e08", "a", 1, "m2"),
             ("e09", "a", 2, "m0"), *((f"e{i}", "a", 1, None) for i in range(10, 14)),
             ("e14", "b", 1, None), ("e15", "b", 1, None)]
    engines = [engine(name, model=held_by, units=units, pool=pool, cordoned=name == "e00")
               for name, pool, units, held_by in cells]
    found = fleet_.Fleet.of(engines=engines, models=[
        model("m0", replicas=3, minAvailable=3), model("m2", replicas=0),
        model("m1", replicas=6, minAvailable=0, priority=10, engineSelector=POOL_A),
        model("m3", replicas=6, minAvailable=0, engineSelector=POOL_A),
        model("m4", replicas=0)])
    rounds = rounds_of(found, 8)
    assert at_rest(found, rounds[-1])
    for name in ("e14", "e15"):  # each joins m0 once and stays
        held = [r.engines[name].spec.model_ref for r in rounds]
        assert held == [None] + ["m0"] * 8, (name, held)


# -- properties ------------------------------------------------------------------------

POOLS = ("a", "b")
SELECTORS = (None, "a", "b")


@st.composite
def scarce_fleets(
    draw: st.DrawFn, *, sizes: tuple[int, ...] = (1, 1, 2),
    selectors: tuple[str | None, ...] = SELECTORS,
) -> fleet_.Fleet:
    count = draw(st.integers(1, 5))
    models = []
    for i in range(count):
        replicas = draw(st.integers(0, 12))
        pool = draw(st.sampled_from(selectors))
        spec: dict[str, object] = {
            "minAvailable": draw(st.integers(0, replicas)),
            "priority": draw(st.sampled_from((0, 0, 10))),
        }
        if pool:
            spec["engineSelector"] = {"matchLabels": {"pool": pool}}
        models.append(model(f"m{i}", replicas=replicas, **spec))
    engines = []
    for j in range(draw(st.integers(0, 24))):
        holder = draw(st.sampled_from([None, *(m.name for m in models)]))
        phase = draw(st.sampled_from(("Serving", "Serving", "Loading", "Failed"))) if holder \
            else draw(st.sampled_from(("Idle", "Idle", "Draining")))
        engines.append(engine(f"e{j:02d}", model=holder, phase=phase,
                              pool=draw(st.sampled_from(POOLS)),
                              units=draw(st.sampled_from(sizes)),
                              cordoned=draw(st.booleans()) and draw(st.booleans())))
    return fleet_.Fleet.of(engines=engines, models=models)


def _usable(found: fleet_.Fleet, e: specs.Engine, m: specs.ModelSpec) -> bool:
    """Whether the allocation could give engine e to model m."""
    if not m.engine_selector.matches(e.labels) or e.phase is specs.Phase.FAILED:
        return False
    bound = e.spec.model_ref if e.spec.model_ref in found.models else None
    if e.spec.cordoned:
        return bound == m.name
    return bound is not None or (e.spec.model_ref is None and e.phase is specs.Phase.IDLE)


@settings(max_examples=300, deadline=None)
@given(scarce_fleets())
def test_claims_are_allowed_and_add_up(found: fleet_.Fleet) -> None:
    result = found.allocation
    claimed: dict[str, int] = {}
    for name, m in result.claims.items():
        e = found.engines[name]
        assert _usable(found, e, found.models[m]), (name, m)
        claimed[m] = claimed.get(m, 0) + e.units
    for name, share in result.models.items():
        assert share.target == claimed.get(name, 0)
        # A model may end up to one engine's units minus one past its desired (units
        # come in engines): the largest engine here has 2.
        assert share.covered <= share.target < max(share.desired, share.covered) + 2
        assert found.protected_units(name) <= share.floor


@settings(max_examples=300, deadline=None)
@given(scarce_fleets(sizes=(1,)))
def test_no_floor_stays_short_while_an_engine_it_could_use_serves_a_surplus(
    found: fleet_.Fleet,
) -> None:
    result = found.allocation
    for name, share in result.models.items():
        if share.floor_shortfall <= 0:
            continue
        m = found.models[name]
        for e in found.engines.values():
            if not _usable(found, e, m) or (e.spec.cordoned and e.spec.model_ref != name):
                continue
            owner = result.claims.get(e.name)
            assert owner is not None, f"{e.name} is unclaimed while {name}'s floor is short"
            other = result.models[owner]
            # The engine serves a floor: without it its owner would be below its covered floor.
            assert owner == name or other.target - e.units < other.covered, (name, e.name, owner)


@settings(max_examples=300, deadline=None)
@given(scarce_fleets(sizes=(1,)))
def test_a_lower_priority_never_keeps_a_surplus_a_higher_priority_could_use(
    found: fleet_.Fleet,
) -> None:
    result = found.allocation
    for name, share in result.models.items():
        m = found.models[name]
        if share.target >= share.desired:
            continue
        for e in found.engines.values():
            owner = result.claims.get(e.name)
            if owner is None or owner == name or not _usable(found, e, m):
                continue
            if e.spec.cordoned:
                continue
            other, other_spec = result.models[owner], found.models[owner]
            if other_spec.priority < m.priority:
                # Only a floor of the lower priority may hold it.
                assert other.target - e.units < other.covered, (name, e.name, owner)


def planned_and_done(found: fleet_.Fleet) -> fleet_.Fleet:
    """The fleet once the planner's intents ran and every engine settled (no gate)."""
    for intent in planner.plan(found):
        e = found.engines[intent.engine]
        target = intent.model
        spec = dataclasses.replace(e.spec, model_ref=target,
                                   revision=found.models[target].revision if target else None)
        phase = specs.Phase.SERVING if target else specs.Phase.IDLE
        if e.phase is specs.Phase.FAILED:  # released, still failed: repairs take time
            phase, target = specs.Phase.FAILED, None
        found = found.with_engine(dataclasses.replace(e, spec=spec, phase=phase, model=target,
                                                      revision=spec.revision))
    return found


def rounds_of(found: fleet_.Fleet, count: int) -> list[fleet_.Fleet]:
    rounds = [found]
    for _ in range(count):
        rounds.append(planned_and_done(rounds[-1]))
    return rounds


def at_rest(found: fleet_.Fleet, last: fleet_.Fleet) -> bool:
    failed = {n for n, e in found.engines.items() if e.phase is specs.Phase.FAILED}
    return not [i for i in planner.plan(last) if i.engine not in failed]


@settings(max_examples=300, deadline=None)
@given(scarce_fleets(sizes=(1,)))
def test_the_planners_moves_carried_out_come_to_rest_without_ping_pong(
    found: fleet_.Fleet,
) -> None:
    # No churn: the plan's moves carried out round after round come to rest (equal
    # shares may tip once engines moved where selectors overlap; a stale engine leaves
    # once its replacement serves), and no engine goes back to a model it left.
    rounds = rounds_of(found, 10)  # swaps run one make-before-break step per round
    assert at_rest(found, rounds[-1])
    for name in found.engines:
        held = [r.engines[name].spec.model_ref for r in rounds]
        models = [m for i, m in enumerate(held) if m and (i == 0 or m != held[i - 1])]
        assert len(models) == len(set(models)), (name, held)


def test_a_cordoned_engine_given_up_is_not_moved_where_another_is_on_its_way() -> None:
    # A random fleet (1 in 5,000) that went e10: m1, m1, m3, m1. Round 1 moved e12,
    # cordoned and serving m0 outside m0's pool, to m2, which the CRD's rule refuses; m2
    # then had enough without e05, and m1 took e10 back from m3. A cordoned engine
    # given up is drained: e10 moves once.
    pool_b = {"matchLabels": {"pool": "b"}}
    models = [
        model("m0", replicas=4, minAvailable=4, engineSelector=pool_b),
        model("m1", replicas=2, minAvailable=0, priority=10),
        model("m2", replicas=4, minAvailable=0, priority=10, engineSelector=POOL_A),
        model("m3", replicas=3, minAvailable=2, engineSelector=POOL_A),
        model("m4", replicas=1, minAvailable=0, priority=10, engineSelector=POOL_A),
    ]
    engines = [
        engine("e10", model="m1", phase="Loading"), engine("e11", model="m2"),
        engine("e17", model="m0"), engine("e12", model="m0", cordoned=True),
        *(engine(n) for n in ("e01", "e03", "e04", "e05", "e13", "e15")),
        *(engine(n, cordoned=True) for n in ("e00", "e02", "e14")),
        engine("e08", phase="Draining"), engine("e18", model="m2", pool="b"),
        *(engine(n, pool="b") for n in ("e06", "e07", "e09", "e16")),
    ]
    found = fleet_.Fleet.of(engines=engines, models=models)
    rounds = rounds_of(found, 10)
    assert at_rest(found, rounds[-1])
    for name in found.engines:
        held = [r.engines[name].spec.model_ref for r in rounds]
        models_held = [m for i, m in enumerate(held) if m and (i == 0 or m != held[i - 1])]
        assert len(models_held) == len(set(models_held)), (name, held)
        if found.engines[name].spec.cordoned:
            assert set(held) <= {None, found.engines[name].spec.model_ref}, (name, held)


@settings(max_examples=300, deadline=None)
@given(scarce_fleets())
def test_no_plan_gives_a_cordoned_engine_a_new_model(found: fleet_.Fleet) -> None:
    # The CRD's rule refuses it, so the operator's write would fail round after round.
    for intent in planner.plan(found):
        bound = found.engines[intent.engine].spec
        if bound.cordoned:
            assert intent.model in (None, bound.model_ref), intent


@settings(max_examples=300, deadline=None)
@given(scarce_fleets())
def test_with_engines_of_mixed_sizes_the_moves_come_to_rest(found: fleet_.Fleet) -> None:
    # A model may take a larger engine than it needs and give a unit back. Known limit:
    # with mixed sizes and overlapping selectors an engine can, rarely, go back once to
    # a model it left (1 random fleet in 600 here) before it rests.
    assert at_rest(found, rounds_of(found, 10)[-1])
