"""The narrator: a step's results told as Events, metrics and log lines.

It decides nothing: everything it says comes from `pipeline.StepResult` and from what
the writer reports about the writes. Events and the per-model and per-pool gauges are
the leader's: a standby would tell the same story twice, and every alert on a model would
fire once per replica. A standby exports the breaker states the leader wrote, its own
counters, and whether it leads.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from capguard import metrics as metrics_
from capguard.core import allocation, breaker, drift, gate, holdings, pipeline, planner
from capguard.core import fleet as fleet_
from capguard.handlers import records, writer
from capguard.handlers import status as status_
from capguard.kube import events

logger = logging.getLogger(__name__)

API_VERSION: Final = "capguard.dev/v1alpha1"
ENGINE: Final = "InferenceEngine"
MODEL: Final = "ModelCapacity"
BREAKER: Final = "CircuitBreaker"
UNKNOWN_MODEL: Final = "UnknownModel"
_TRANSITION_EVENTS: Final = {
    breaker.BreakerState.OPEN: ("BreakerOpened", events.WARNING),
    breaker.BreakerState.HALF_OPEN: ("BreakerHalfOpen", events.NORMAL),
    breaker.BreakerState.CLOSED: ("BreakerClosed", events.NORMAL),
}


_WRITTEN: Final = {
    writer.Outcome.EXECUTED: "executed",
    writer.Outcome.CONFLICT: "lost to a newer write; re-planning",
    writer.Outcome.FAILED: "failed; retried after a backoff",
    writer.Outcome.NOT_LEADING: "not written: this replica no longer leads",
    writer.Outcome.LATE: "not written: decided too long ago; re-planning",
}


def describe(intent: planner.Intent) -> str:
    """An intent as a person reads it: `Assign to llama`, `Drain from llama`,
    `Reassign from llama to qwen`, `Reassign (refresh) llama`."""
    kind = intent.kind.value
    if intent.from_model is None:
        return f"{kind} to {intent.model}"
    if intent.model is None:
        return f"{kind} from {intent.from_model}"
    if intent.model == intent.from_model:
        return f"{kind} (refresh) {intent.model}"
    return f"{kind} from {intent.from_model} to {intent.model}"


class Metas:
    """Object metadata by kind and name: `kubectl describe` finds Events by uid.

    Indexed on the first look only: most passes tell nothing, and 10,000 engines cost."""

    def __init__(self, namespace: str,
                 found: Callable[[], Iterable[tuple[str, records.Meta]]]) -> None:
        self.namespace = namespace
        self._found = found
        self._by_key: dict[tuple[str, str], records.Meta] | None = None

    def of(self, kind: str, name: str) -> records.Meta:
        if self._by_key is None:
            self._by_key = {(k, meta.name): meta for k, meta in self._found()}
        return self._by_key.get((kind, name)) or records.Meta(self.namespace, name, "", 0)


class Narrator:
    def __init__(
        self, *, recorder: events.Recorder, metrics: metrics_.Metrics, leading: bool
    ) -> None:
        self.recorder = recorder
        self.metrics = metrics
        self.leading = leading
        self._exported: dict[metrics_.ModelKey, drift.ModelDrift] = {}
        self._capacity_told: dict[metrics_.ModelKey, tuple[bool, bool]] = {}
        self._pools_seen: set[metrics_.PoolKey] = set()
        self._models_seen: set[metrics_.ModelKey] = set()  # by the last `forget_except`
        self._waiting_told: set[tuple[str, str]] = set()
        self._nothing_told: set[tuple[str, str]] = set()  # breakers told to select nothing

    def lead(self, leading: bool) -> None:
        """Whether this replica leads now; one that stops drops its model and pool gauges
        at once (the new leader's appear with its first look)."""
        if self.leading and not leading:
            self.metrics.forget_models_except(())
            self.metrics.forget_pools_except(())
            self._exported = {}
            self._pools_seen = set()
            self._models_seen = set()
        self.leading = leading

    def event(self, meta: records.Meta, kind: str, type_: str, reason: str, message: str) -> None:
        if not self.leading:
            return
        ref = events.ObjectRef(API_VERSION, kind, meta.namespace, meta.name, meta.uid)
        self.recorder.record(events.Event(ref, type_, reason, message))

    def step(self, result: pipeline.StepResult, *, metas: Metas,
             changed: Mapping[str, drift.ModelDrift] | None = None) -> None:
        """Breaker transitions, refusals, expiries, floor holds and refused batches.
        ``changed``: the models whose numbers moved since the last step (default: all);
        only those can start or end a shortfall."""
        for t in result.transitions:
            reason, kind = _TRANSITION_EVENTS[t.after]
            self.event(metas.of(BREAKER, t.breaker), BREAKER, kind, reason, t.message)
            logger.info("Breaker %s/%s: %s.", metas.namespace, t.breaker, t.message)
        refusals: collections.Counter[str] = collections.Counter()
        for decision in result.refusals:
            intent = decision.action.intent
            refusals[decision.reason.value] += 1
            logger.info("Engine %s/%s: %s refused (%s): %s.", metas.namespace, intent.engine,
                        describe(intent), decision.reason.value, decision.message)
            expired = decision.reason is gate.Reason.EXPIRED
            self.metrics.count_action(kind=intent.kind.value.lower(),
                                      result="expired" if expired else "refused")
            if expired:
                self.event(metas.of(ENGINE, intent.engine), ENGINE, events.WARNING,
                           "ActionExpired", f"action {decision.action.id} "
                           f"({intent.kind.value}) expired: {decision.message}")
        self.metrics.count_refusals(refusals)
        for decision in result.floor_holds:
            model = decision.action.intent.from_model or ""
            if model in result.fleet.models:
                self.event(metas.of(MODEL, model), MODEL, events.NORMAL, "FloorProtected",
                           decision.message)
        for name, batch in result.refused_batches.items():
            self.metrics.refused_batches_total.labels(metas.namespace, name).inc()
            self.event(metas.of(BREAKER, name), BREAKER, events.WARNING, "BatchRefused",
                       f"refused post-pause batch {batch.batch}: {batch.size} actions, oldest "
                       f"planned {batch.oldest_plan_age:.0f}s ago; re-planning from the cluster")
            logger.warning("Breaker %s/%s refused post-pause batch %s (%d actions).",
                           metas.namespace, name, batch.batch, batch.size)
        for name, found in (result.report.models if changed is None else changed).items():
            self._tell_capacity(metas, name, found)
        self._tell_selecting(metas, result.fleet)
        self._tell_waiting(metas, result.fleet)
        for name, snapshot in result.breakers.items():
            self.metrics.set_breaker(key=(metas.namespace, name), state=snapshot.state.value,
                                     seconds_in_state=result.now - snapshot.since)

    def _tell_capacity(self, metas: Metas, name: str, found: drift.ModelDrift) -> None:
        """One Warning Event when a floor cannot be covered or a selector matches nothing,
        one Normal Event when that ends: said when it starts or ends, not when the number
        of units short moves (the condition and the metric follow that)."""
        key = (metas.namespace, name)
        now = (found.floor_shortfall > 0, found.no_eligible_engines)
        before = self._capacity_told.get(key, (False, False))
        self._capacity_told[key] = now
        if now == before:
            return
        if found.no_eligible_engines:
            self.event(metas.of(MODEL, name), MODEL, events.WARNING,
                       status_.NO_ELIGIBLE_ENGINES, status_.no_eligible_message())
            logger.warning("Model %s/%s: no engine matches its selector.", *key)
        elif found.floor_shortfall:
            message = status_.shortfall_message(found)
            self.event(metas.of(MODEL, name), MODEL, events.WARNING,
                       status_.INSUFFICIENT_CAPACITY, message)
            logger.warning("Model %s/%s: %s.", *key, message)
        else:
            message = f"the floor of {found.floor} units is covered again"
            self.event(metas.of(MODEL, name), MODEL, events.NORMAL, "FloorCovered", message)
            logger.info("Model %s/%s: %s.", *key, message)

    def _tell_selecting(self, metas: Metas, fleet: fleet_.Fleet) -> None:
        """One Warning Event when a breaker's selector comes to match no model, one
        Normal Event when it matches one again (its `SelectsNothing` condition says so
        all along)."""
        selects = holdings.selected(fleet)
        now = {(metas.namespace, name) for name, models in selects.items() if not models}
        mine = {k for k in self._nothing_told if k[0] == metas.namespace}
        for key in sorted(now - mine):
            message = status_.selects_nothing_message(fleet.breakers[key[1]].selector)
            self.event(metas.of(BREAKER, key[1]), BREAKER, events.WARNING,
                       status_.NO_MODELS_SELECTED, message)
            logger.warning("Breaker %s/%s: %s.", *key, message)
        for key in sorted(k for k in mine - now if k[1] in selects):
            message = f"spec.selector matches {len(selects[key[1]])} models again"
            self.event(metas.of(BREAKER, key[1]), BREAKER, events.NORMAL, "ModelsSelected",
                       message)
            logger.info("Breaker %s/%s: %s.", *key, message)
        self._nothing_told = (self._nothing_told - mine) | now

    def _tell_waiting(self, metas: Metas, fleet: fleet_.Fleet) -> None:
        """One Warning Event per engine a user bound to a model that does not exist."""
        now = {(metas.namespace, name) for name in fleet.allocation.waiting}
        mine = {k for k in self._waiting_told if k[0] == metas.namespace}
        for key in sorted(now - mine):
            model = fleet.engines[key[1]].spec.model_ref
            message = (f"spec.modelRef names ModelCapacity {model}, which does not exist in "
                       f"namespace {key[0]}: capguard leaves the binding alone and the engine "
                       f"serves nothing until that model is created; create it or clear "
                       f"spec.modelRef")
            self.event(metas.of(ENGINE, key[1]), ENGINE, events.WARNING, UNKNOWN_MODEL, message)
            logger.warning("Engine %s/%s: %s.", *key, message)
        self._waiting_told = (self._waiting_told - mine) | now

    def writes(self, written: Iterable[writer.Written], *, metas: Metas) -> None:
        late = []
        for w in written:
            action = w.execution.action
            self.metrics.count_action(kind=action.intent.kind.value.lower(),
                                      result=w.outcome.value)
            if w.outcome is writer.Outcome.LATE:
                # Thousands at once when a pass is more than the server takes in time:
                # one line for them all (the slow start halves the next pass).
                late.append(action.intent.engine)
                continue
            log = logger.info if w.outcome is writer.Outcome.EXECUTED else logger.warning
            log("Engine %s/%s: %s %s (action %s).", metas.namespace, action.intent.engine,
                describe(action.intent), _WRITTEN[w.outcome], action.id)
            if w.outcome is writer.Outcome.CONFLICT:
                self.event(metas.of(ENGINE, action.intent.engine), ENGINE, events.NORMAL,
                           "ActionConflict",
                           f"action {action.id} ({action.intent.kind.value}) lost to a newer "
                           f"write (planned from resourceVersion "
                           f"{action.planned_from.engine_resource_version}); re-planning")
        if late:
            logger.warning("%d actions in namespace %s %s (engines %s).", len(late),
                           metas.namespace, _WRITTEN[writer.Outcome.LATE],
                           ", ".join(late[:5]) + (", and more" if len(late) > 5 else ""))

    def invalid(self, meta: records.Meta, kind: str, error: Exception) -> None:
        """A bad spec: one Event (the recorder counts repeats instead of sending them)."""
        self.event(meta, kind, events.WARNING, status_.INVALID_SPEC, str(error))

    def observed_breakers(self, namespace: str, found: Iterable[records.BreakerRecord], *,
                          now: float) -> None:
        """A standby exports the breaker states the leader wrote."""
        for record in found:
            saved = record.status.get("state")
            if saved in metrics_.BREAKER_STATES:
                since = status_.parse_timestamp(record.status.get("since")) or now
                self.metrics.set_breaker(key=(namespace, record.meta.name), state=str(saved),
                                         seconds_in_state=max(0.0, now - since))

    def models(self, namespace: str, found: Mapping[str, drift.ModelDrift]) -> None:
        for name, model in found.items():
            self.model((namespace, name), model)

    def model(self, key: metrics_.ModelKey, model: drift.ModelDrift) -> None:
        if not self.leading or self._exported.get(key) == model:
            return  # a thousand models' gauges cost more than comparing them
        self._exported[key] = model
        self.metrics.set_model(key=key, desired=model.desired, serving=model.serving,
                               floor=model.floor)
        if model.allocated is not None:
            self.metrics.set_shortfall(key=key, allocated=model.allocated,
                                       shortfall=model.floor_shortfall,
                                       pool=",".join(model.pools or ()))

    def pools(self, namespace: str, found: Mapping[str, allocation.PoolSupply]) -> None:
        if not self.leading:
            return
        for name, pool in found.items():
            self._pools_seen.add((namespace, name))
            self.metrics.set_pool(key=(namespace, name), supply=pool.usable, floors=pool.floors,
                                  desired=pool.desired)

    def forget_except(self, models: set[metrics_.ModelKey],
                      breakers: Iterable[metrics_.BreakerKey]) -> None:
        if models != self._models_seen:  # at 5,000 models, a pass changes none mostly
            self._models_seen = set(models)
            self.metrics.forget_models_except(models)
            self._exported = {k: v for k, v in self._exported.items() if k in models}
            self._capacity_told = {k: v for k, v in self._capacity_told.items()
                                   if k in models}
        self.metrics.forget_breakers_except(breakers)
        self.metrics.forget_pools_except(self._pools_seen)  # the pools this pass saw
        self._pools_seen = set()
