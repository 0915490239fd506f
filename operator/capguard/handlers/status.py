"""Status and conditions, built from the core's view; pure (no I/O, time passed in).

Conditions follow the Kubernetes convention: `lastTransitionTime` moves only when a
condition's status flips, and every condition carries the generation it describes.
`changed` decides whether a status is worth a write, so a steady fleet costs no writes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from capguard.core import breaker, clock, drift, gate, holdings, specs
from capguard.core import fleet as fleet_
from capguard.handlers import records

TRUE: Final = "True"
FALSE: Final = "False"
UNKNOWN: Final = "Unknown"
INVALID_SPEC: Final = "InvalidSpec"

# Fields that tick with the clock: refreshed when something else changes, never alone.
VOLATILE: Final = frozenset({"secondsInState", "secondsInStateAt"})


@dataclasses.dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str = ""


VALID: Final = Condition("Valid", TRUE, "SpecValid", "")
INSUFFICIENT_CAPACITY: Final = "InsufficientCapacity"
NO_ELIGIBLE_ENGINES: Final = "NoEligibleEngines"
# The summary conditions kstatus (and so Argo CD, Flux, kpt) reads.
READY: Final = "Ready"
RECONCILING: Final = "Reconciling"
STALLED: Final = "Stalled"
NO_MODELS_SELECTED: Final = "NoModelsSelected"
# What only a person can fix: a spec the parser refuses, a supply the selector cannot find.
STALLED_REASONS: Final = frozenset({INVALID_SPEC, INSUFFICIENT_CAPACITY, NO_ELIGIBLE_ENGINES})


# Time as status writes it: one definition, in the core (the breaker status format uses it).
timestamp = clock.timestamp
precise_timestamp = clock.precise_timestamp
parse_timestamp = clock.parse_timestamp


def merge_conditions(
    existing: object, wanted: Iterable[Condition], *, generation: int, now: float
) -> list[dict[str, Any]]:
    """The wanted conditions, keeping each one's lastTransitionTime unless its status flips."""
    old = {c.get("type"): c for c in existing if isinstance(c, Mapping)} if isinstance(
        existing, list) else {}
    merged = []
    for c in wanted:
        before = old.get(c.type)
        flipped = before is None or before.get("status") != c.status
        since = "" if before is None or flipped else str(before.get("lastTransitionTime") or "")
        merged.append({
            "type": c.type, "status": c.status, "reason": c.reason, "message": c.message,
            "lastTransitionTime": since or timestamp(now), "observedGeneration": generation,
        })
    return merged


def changed(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether writing `wanted` would change anything a reader cares about."""
    return any(current.get(k) != v for k, v in wanted.items() if k not in VOLATILE)


def progress_only(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether `wanted` tells nothing new but progress: the same generation observed, and
    every condition with the status and reason it has (counts and messages may move)."""
    def states(status: Mapping[str, Any]) -> dict[object, tuple[object, object]]:
        return {c.get("type"): (c.get("status"), c.get("reason"))
                for c in status.get("conditions") or () if isinstance(c, Mapping)}
    return (current.get("observedGeneration") == wanted.get("observedGeneration")
            and states(current) == states(wanted))


def condition_of(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The condition of that type in a status, if there is one."""
    for c in status.get("conditions") or ():
        if isinstance(c, Mapping) and c.get("type") == kind:
            return c
    return None


def condition_since(status: Mapping[str, Any], kind: str) -> float | None:
    """When a condition last flipped (restores what memory lost on a restart)."""
    for c in status.get("conditions") or ():
        if isinstance(c, Mapping) and c.get("type") == kind and c.get("status") == TRUE:
            return parse_timestamp(c.get("lastTransitionTime"))
    return None


def selector_string(selector: specs.LabelSelector) -> str:
    """A label selector as `kubectl` and the /scale subresource write it."""
    parts = [f"{k}={v}" for k, v in selector.match_labels]
    for r in selector.match_expressions:
        op = r.operator
        if op is specs.SelectorOperator.EXISTS:
            parts.append(r.key)
        elif op is specs.SelectorOperator.DOES_NOT_EXIST:
            parts.append(f"!{r.key}")
        else:
            word = "in" if op is specs.SelectorOperator.IN else "notin"
            parts.append(f"{r.key} {word} ({','.join(r.values)})")
    return ",".join(parts)


def failed_engines(fleet: fleet_.Fleet) -> dict[str, int]:
    """Failed engines per model they belong to, in one pass over the fleet."""
    failed: dict[str, int] = {}
    for engine in fleet.engines.values():
        if engine.phase is specs.Phase.FAILED:
            for model in {engine.spec.model_ref, engine.model} - {None}:
                assert model is not None
                failed[model] = failed.get(model, 0) + 1
    return failed


def model_conditions(
    view: drift.ModelDrift, *, failed: int, held_reason: str | None
) -> list[Condition]:
    numbers = f"serving {view.serving} of {view.desired} units (floor {view.floor})"
    available = (
        Condition("Available", FALSE, "BelowFloor", numbers) if view.below_floor
        else Condition("Available", TRUE, "FloorMet", numbers))
    if view.no_eligible_engines:
        progressing = Condition("Progressing", FALSE, NO_ELIGIBLE_ENGINES, no_eligible_message())
    elif view.floor_shortfall:
        progressing = Condition("Progressing", FALSE, INSUFFICIENT_CAPACITY,
                                shortfall_message(view))
    elif held_reason and view.drift:
        progressing = Condition("Progressing", FALSE, "Held",
                                f"actions for this model are held: {held_reason}")
    elif view.short and not (view.loading or view.draining) and view.serving >= (
            view.allocated or 0):
        progressing = Condition("Progressing", FALSE, INSUFFICIENT_CAPACITY,
                                shortfall_message(view))
    elif view.loading or view.draining or view.drift:
        progressing = Condition(
            "Progressing", TRUE, "Converging",
            f"{view.loading} engines loading, {view.draining} draining, drift {view.drift}")
    else:
        progressing = Condition("Progressing", FALSE, "Converged", numbers)
    degraded = (
        Condition("Degraded", TRUE, "EnginesFailed", f"{failed} engines failed")
        if failed else Condition("Degraded", FALSE, "NoFailures", ""))
    drifted = (
        Condition("DriftDetected", TRUE, "BelowDesired",
                  f"{view.drift} units short of {view.desired}")
        if view.drift else Condition("DriftDetected", FALSE, "NoDrift", numbers))
    return [VALID, available, progressing, degraded, drifted,
            *summary_conditions(view, progressing=progressing)]


def summary_conditions(view: drift.ModelDrift, *, progressing: Condition) -> list[Condition]:
    """`Ready`, `Reconciling` and `Stalled`, as kstatus, Argo CD and `kubectl wait` read them.

    Ready: the desired units serve at the model's revision (`ModelDrift.reached_desired`);
    Stalled: only a person can get it there (no engine matches, or the supply is short);
    Reconciling: the operator is on its way (or a breaker holds the way).
    """
    stalled = progressing.status == FALSE and progressing.reason in STALLED_REASONS
    if stalled:
        return [Condition(READY, FALSE, progressing.reason, progressing.message),
                Condition(RECONCILING, FALSE, progressing.reason, progressing.message),
                Condition(STALLED, TRUE, progressing.reason, progressing.message)]
    not_stalled = Condition(STALLED, FALSE, "Progressing", "")
    if view.reached_desired:
        message = f"serving {view.serving} of {view.desired} units at the model's revision"
        return [Condition(READY, TRUE, "DesiredServing", message),
                Condition(RECONCILING, FALSE, "DesiredServing", message), not_stalled]
    if progressing.reason == "Held":
        reason, message = progressing.reason, progressing.message
    elif view.outdated:
        reason, message = "OutdatedRevision", (
            f"{view.outdated} serving units are on another revision than the model's; "
            f"they are reloaded one by one")
    else:
        reason = "Converging"
        message = (f"serving {view.serving - view.outdated} of {view.desired} units at the "
                   f"model's revision, {view.loading} engines loading, "
                   f"{view.draining} draining")
    return [Condition(READY, FALSE, reason, message),
            Condition(RECONCILING, TRUE, reason, message), not_stalled]


def no_eligible_message() -> str:
    return ("spec.engineSelector matches no InferenceEngine in this namespace: label engines "
            "to match it (kubectl label inferenceengine NAME KEY=VALUE) or change the selector")


def shortfall_message(view: drift.ModelDrift) -> str:
    """What the supply cannot give, with the pools it looked in (the Event says the same)."""
    pools = ", ".join(view.pools or ()) or "none"
    if view.floor_shortfall:
        return (f"the floor is {view.floor} units and the engines of pool {pools} cover "
                f"{view.covered}: {view.floor_shortfall} units short; add engines to the pool, "
                f"lower minAvailable, or raise this model's priority")
    return (f"allocated {view.allocated} of {view.desired} desired units: pool {pools} has no "
            f"more engines for it (floor {view.floor} met); add engines or lower replicas")


def model_status(
    *, model: specs.ModelSpec, view: drift.ModelDrift, failed: int,
    existing: Mapping[str, Any], held_reason: str | None, now: float,
) -> dict[str, Any]:
    wanted = model_conditions(view, failed=failed, held_reason=held_reason)
    return {
        "desired": view.desired, "serving": view.serving, "loading": view.loading,
        "draining": view.draining, "floor": view.floor, "drift": view.drift,
        "availablePercent": view.available_percent,
        "selector": selector_string(model.engine_selector),
        "observedGeneration": model.generation,
        "conditions": merge_conditions(
            existing.get("conditions"), wanted, generation=model.generation, now=now),
    }


def invalid_status(
    *, error: specs.SpecError, existing: Mapping[str, Any], generation: int, now: float,
    extra: Sequence[Condition] = (),
) -> dict[str, Any]:
    """A bad spec as a status a person can act on (the message names the field and the fix)."""
    wanted = [Condition("Valid", FALSE, INVALID_SPEC, str(error)), *extra]
    return {
        "observedGeneration": generation,
        "conditions": merge_conditions(
            existing.get("conditions"), wanted, generation=generation, now=now),
    }


def invalid_model_status(
    *, error: specs.SpecError, existing: Mapping[str, Any], generation: int, now: float
) -> dict[str, Any]:
    unavailable = Condition("Available", FALSE, INVALID_SPEC, str(error))
    stuck = [Condition(kind, status, INVALID_SPEC, str(error)) for kind, status in
             ((READY, FALSE), (RECONCILING, FALSE), (STALLED, TRUE))]
    return invalid_status(error=error, existing=existing, generation=generation, now=now,
                          extra=[unavailable, *stuck])


RELEASE_PLAN_SHOWN: Final = 50  # actions listed in status.releasePlan; `size` has them all


def batch_refused_condition(
    snapshot: breaker.Snapshot, refused: gate.RefusedBatch | None
) -> Condition:
    """True when the last release met the post-pause guard: its backlog was refused."""
    released = snapshot.released_at
    if refused is not None and released is not None and refused.time >= released:
        return Condition("BatchRefused", TRUE, "PostPauseBatch",
                         f"batch {refused.batch} of {refused.size} actions refused after a "
                         f"{snapshot.last_pause_seconds:.0f}s pause; re-planned from the cluster")
    return Condition("BatchRefused", FALSE, "NoRefusal", "the last release ran its backlog")


HELD_MODELS_SHOWN: Final = 50  # models listed in status.heldModels; heldActions counts all
NAMES_SHOWN: Final = 5  # model names a condition message lists before "and N more"


def names(found: Sequence[str]) -> str:
    shown = ", ".join(found[:NAMES_SHOWN])
    return shown + (f" and {len(found) - NAMES_SHOWN} more" if len(found) > NAMES_SHOWN else "")


def holding_condition(holding: holdings.Holding) -> Condition:
    """What the breaker holds itself and who else holds it, or who holds what it selects."""
    if holding.models:
        held = names([f"{m.model} ({m.actions})" for m in holding.models])
        shared = [f"breaker {', '.join(m.also_held_by)} also holds those of {m.model}"
                  for m in holding.models if m.also_held_by]
        message = f"holds {holding.actions} actions of models {held}"
        return Condition("Holding", TRUE, "ActionsHeld",
                         "; ".join([message, *shared[:NAMES_SHOWN]]))
    if holding.held_elsewhere:
        elsewhere = [f"those of {model} are held by breaker {', '.join(by)}"
                     for model, by in holding.held_elsewhere[:NAMES_SHOWN]]
        return Condition("Holding", FALSE, "HeldByOtherBreakers",
                         "holds no action; " + "; ".join(elsewhere))
    return Condition("Holding", FALSE, "NothingHeld", "holds no action")


def selection_condition(holding: holdings.Holding, *, selector: specs.LabelSelector) -> Condition:
    if holding.selects_nothing:
        return Condition("SelectsNothing", TRUE, NO_MODELS_SELECTED,
                         selects_nothing_message(selector))
    return Condition("SelectsNothing", FALSE, "ModelsSelected",
                     f"selects {len(holding.selected)} models: {names(holding.selected)}")


def selects_nothing_message(selector: specs.LabelSelector) -> str:
    chosen = selector_string(selector) or "{} (every model)"
    return (f"spec.selector {chosen} matches no ModelCapacity in this namespace, so this "
            f"breaker pauses nothing: label models to match it (kubectl label modelcapacity "
            f"NAME KEY=VALUE) or change the selector")


def holding_status(
    holding: holdings.Holding, *, selector: specs.LabelSelector
) -> tuple[dict[str, Any], list[Condition]]:
    """The holding's status fields and its two conditions."""
    fields = {
        "heldActions": holding.actions,
        "selectedModels": len(holding.selected),
        "heldModels": [{"model": m.model, "heldActions": m.actions,
                        "alsoHeldBy": list(m.also_held_by)}
                       for m in holding.models[:HELD_MODELS_SHOWN]],
    }
    return fields, [holding_condition(holding), selection_condition(holding, selector=selector)]


def breaker_status(
    *, record: records.BreakerRecord, snapshot: breaker.Snapshot,
    plan: gate.ReleasePlan | None, refused: gate.RefusedBatch | None, now: float,
    holding: holdings.Holding | None = None,
) -> dict[str, Any]:
    """The machine's saved fields (`breaker.saved_status`, read back on a restart), with
    the conditions, what it holds (None: not measured, left as written), the release
    plan and the last refused batch around them."""
    paused = snapshot.state is not breaker.BreakerState.CLOSED
    why = snapshot.reason.value if snapshot.reason else ""
    if snapshot.state is breaker.BreakerState.HALF_OPEN:
        paused_reason, message = "Probing", f"{snapshot.probes_succeeded} probes succeeded"
    elif paused:
        paused_reason, message = why or "Open", "capacity operations are held"
    else:
        paused_reason, message = "Closed", "capacity operations run"
    conditions = [
        VALID,
        Condition("Paused", TRUE if paused else FALSE, paused_reason, message),
        batch_refused_condition(snapshot, refused),
    ]
    held: dict[str, Any] = {}
    if holding is not None and record.value is not None:
        held, more = holding_status(holding, selector=record.value.selector)
        conditions += more
    wanted: dict[str, Any] = {
        **breaker.saved_status(snapshot, now=now),
        **held,
        "observedGeneration": snapshot.generation,
        "releasePlan": None if plan is None else {
            "batch": plan.batch, "size": plan.size,
            "actions": [{"engine": a.intent.engine, "type": a.intent.kind.value,
                         "model": a.intent.model or a.intent.from_model or ""}
                        for a in plan.actions[:RELEASE_PLAN_SHOWN]],
        },
        "conditions": merge_conditions(
            record.status.get("conditions"), conditions, generation=snapshot.generation,
            now=now),
    }
    if refused is not None:
        wanted["lastRefusedBatch"] = {
            "batch": refused.batch, "size": refused.size,
            "oldestPlanAgeSeconds": round(refused.oldest_plan_age, 1),
            "time": timestamp(refused.time),
        }
    return wanted
