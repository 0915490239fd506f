"""The narrator: a step's results told as Events, metrics and log lines.

It decides nothing: everything it says comes from `pipeline.StepResult` and from what
the writer reports about the writes. Events are the leader's (a standby would tell the
same story twice); metrics are every replica's.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from capguard import metrics as metrics_
from capguard.core import breaker, drift, gate, pipeline
from capguard.handlers import records, writer
from capguard.handlers import status as status_
from capguard.kube import events

logger = logging.getLogger(__name__)

API_VERSION: Final = "capguard.dev/v1alpha1"
ENGINE: Final = "InferenceEngine"
MODEL: Final = "ModelCapacity"
BREAKER: Final = "CircuitBreaker"
_TRANSITION_EVENTS: Final = {
    breaker.BreakerState.OPEN: ("BreakerOpened", events.WARNING),
    breaker.BreakerState.HALF_OPEN: ("BreakerHalfOpen", events.NORMAL),
    breaker.BreakerState.CLOSED: ("BreakerClosed", events.NORMAL),
}


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

    def event(self, meta: records.Meta, kind: str, type_: str, reason: str, message: str) -> None:
        if not self.leading:
            return
        ref = events.ObjectRef(API_VERSION, kind, meta.namespace, meta.name, meta.uid)
        self.recorder.record(events.Event(ref, type_, reason, message))

    def step(self, result: pipeline.StepResult, *, metas: Metas) -> None:
        """Breaker transitions, refusals, expiries, floor holds and refused batches."""
        for t in result.transitions:
            reason, kind = _TRANSITION_EVENTS[t.after]
            self.event(metas.of(BREAKER, t.breaker), BREAKER, kind, reason, t.message)
            logger.info("Breaker %s/%s: %s.", metas.namespace, t.breaker, t.message)
        refusals: collections.Counter[str] = collections.Counter()
        for decision in result.refusals:
            intent = decision.action.intent
            refusals[decision.reason.value] += 1
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
        for name, snapshot in result.breakers.items():
            self.metrics.set_breaker(key=(metas.namespace, name), state=snapshot.state.value,
                                     seconds_in_state=result.now - snapshot.since)

    def writes(self, written: Iterable[writer.Written], *, metas: Metas) -> None:
        for w in written:
            action = w.execution.action
            self.metrics.count_action(kind=action.intent.kind.value.lower(),
                                      result=w.outcome.value)
            if w.outcome is writer.Outcome.CONFLICT:
                self.event(metas.of(ENGINE, action.intent.engine), ENGINE, events.NORMAL,
                           "ActionConflict",
                           f"action {action.id} ({action.intent.kind.value}) lost to a newer "
                           f"write (planned from resourceVersion "
                           f"{action.planned_from.engine_resource_version}); re-planning")

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
        if self._exported.get(key) == model:
            return  # a thousand models' gauges cost more than comparing them
        self._exported[key] = model
        self.metrics.set_model(key=key, desired=model.desired, serving=model.serving,
                               floor=model.floor)

    def forget_except(self, models: set[metrics_.ModelKey],
                      breakers: Iterable[metrics_.BreakerKey]) -> None:
        self.metrics.forget_models_except(models)
        self._exported = {k: v for k, v in self._exported.items() if k in models}
        self.metrics.forget_breakers_except(breakers)
