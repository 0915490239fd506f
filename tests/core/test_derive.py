"""`Fleet.derive` answers exactly what `Fleet.of` answers on the same objects.

A derived fleet carries over what its parent computed (counts, indexes, the allocation,
the planner's per-model parts) for everything a change does not touch; these properties
check every one of those against a fleet built from scratch, after chains of random
changes: engines that come, go, change phase, get bound or unbound; models whose
replicas, floor or selector change, that come and go. Fleets are drawn both scarce and
covered (every model served by engines it holds), so both ways the allocation can be
worked out again are exercised.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from capguard.core import drift, planner, queue, specs
from capguard.core import fleet as fleet_

from .core_fleets import engine, model

POOLS = ("a", "b")
PHASES = ("Serving", "Serving", "Serving", "Loading", "Failed", "Draining")


@st.composite
def models_(draw: st.DrawFn, name: str) -> specs.ModelSpec:
    replicas = draw(st.integers(0, 6))
    spec: dict[str, object] = {"minAvailable": draw(st.integers(0, replicas)),
                               "priority": draw(st.sampled_from((0, 0, 10)))}
    pool = draw(st.sampled_from((None, None, *POOLS)))
    if pool:
        spec["engineSelector"] = {"matchLabels": {"pool": pool}}
    return model(name, replicas=replicas, **spec)


@st.composite
def engines_(draw: st.DrawFn, name: str, models: list[str]) -> specs.Engine:
    holder = draw(st.sampled_from([None, None, *models, "gone"]))
    phase = draw(st.sampled_from(PHASES)) if holder else draw(
        st.sampled_from(("Idle", "Idle", "Idle", "Draining")))
    return engine(name, model=holder, phase=phase, pool=draw(st.sampled_from(POOLS)),
                  units=draw(st.sampled_from((1, 1, 2))),
                  cordoned=draw(st.booleans()) and draw(st.booleans()),
                  action_id=draw(st.sampled_from((None, None, ""))))


@st.composite
def fleets(draw: st.DrawFn) -> fleet_.Fleet:
    names = [f"m{i}" for i in range(draw(st.integers(1, 4)))]
    models = [draw(models_(n)) for n in names]
    full = draw(st.booleans())  # every engine serving its model: no idle engine anywhere
    engines = [] if full else [draw(engines_(f"e{j:02d}", names))
                               for j in range(draw(st.integers(0, 16)))]
    if full or draw(st.booleans()):
        # Covered: each model first gets serving engines of its own, in its pool.
        for m in models:
            pool = dict(m.engine_selector.match_labels).get("pool", "a")
            engines += [engine(f"{m.name}-own{k}", model=m.name, pool=pool)
                        for k in range(m.replicas)]
    return fleet_.Fleet.of(engines=engines, models=models)


@st.composite
def changes(draw: st.DrawFn, found: fleet_.Fleet, step: int
            ) -> tuple[dict[str, specs.Engine | None], dict[str, specs.ModelSpec | None]]:
    names = sorted(found.models)
    engines: dict[str, specs.Engine | None] = {}
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(("new", "gone", "phase", "bind", "unbind")))
        existing = sorted(found.engines)
        if kind == "new" or not existing:
            name = f"n{step}-{len(engines)}"
            engines[name] = draw(engines_(name, names))
            continue
        name = draw(st.sampled_from(existing))
        current = found.engines[name]
        if kind == "gone":
            engines[name] = None
        elif kind == "phase":
            phase = specs.Phase(draw(st.sampled_from(PHASES)))
            engines[name] = dataclasses.replace(current, phase=phase)
        elif kind == "bind" and names:
            target = draw(st.sampled_from(names))
            engines[name] = dataclasses.replace(
                current, spec=dataclasses.replace(current.spec, model_ref=target),
                last_action_id=f"a{step}")
        else:
            engines[name] = dataclasses.replace(
                current, spec=dataclasses.replace(current.spec, model_ref=None))
    models: dict[str, specs.ModelSpec | None] = {}
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from([*names, f"m{step + 10}"]))
        models[name] = None if draw(st.integers(0, 4)) == 0 else draw(models_(name))
    return engines, models


def compute_everything(found: fleet_.Fleet) -> None:
    """What a pass computes, so that derive has it all to carry over."""
    planner.plan(found)
    drift.measure(found, queue.ActionQueue(), 0.0)
    _ = found.out_of_service_engines, found.idle_names, found.released_names
    for name in found.models:
        found.breakers_for(name)


def assert_same(derived: fleet_.Fleet, fresh: fleet_.Fleet) -> None:
    assert derived.engines == fresh.engines and derived.models == fresh.models
    for name in {*fresh.models, *(e.spec.model_ref or "" for e in fresh.engines.values())}:
        assert derived.counts(name) == fresh.counts(name), name
        assert derived.bound_to(name) == fresh.bound_to(name), name
    assert derived.out_of_service_engines == fresh.out_of_service_engines
    assert derived.idle_names == fresh.idle_names
    assert derived.released_names == fresh.released_names
    assert derived.allocation == fresh.allocation
    assert planner.plan(derived) == planner.plan(fresh)
    assert drift.measure(derived, queue.ActionQueue(), 0.0) == drift.measure(
        fresh, queue.ActionQueue(), 0.0)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_a_chain_of_changes_derives_what_a_fleet_built_afresh_has(data: st.DataObject) -> None:
    found = data.draw(fleets())
    for step in range(data.draw(st.integers(1, 5))):
        compute_everything(found)
        engines, models = data.draw(changes(found, step))
        derived = found.derive(engines=engines, models=models)
        fresh = fleet_.Fleet.of(engines=derived.engines.values(),
                                models=derived.models.values())
        assert_same(derived, fresh)
        found = derived


def test_a_change_to_one_covered_model_is_allocated_without_the_others() -> None:
    """The point of it: the other models' shares, claims and plan parts are carried."""
    models = [model(f"m{i}", replicas=2) for i in range(3)]
    engines = [engine(f"m{i}-e{k}", model=f"m{i}") for i in range(3) for k in range(2)]
    found = fleet_.Fleet.of(engines=engines, models=models)
    compute_everything(found)
    assert found.allocation.basis is not None
    derived = found.derive(models={"m0": model("m0", replicas=1)})
    assert derived.allocation.basis is not None
    assert derived.allocation.basis.owns["m1"] is found.allocation.basis.owns["m1"]
    assert derived.allocation.basis.owns["m0"] is not found.allocation.basis.owns["m0"]
    assert derived.memo(planner.__name__).keys() == {"m1", "m2"}
    assert derived.allocation.target("m0") == 1
    assert [i.kind for i in planner.plan(derived)] == [planner.ActionType.DRAIN]
