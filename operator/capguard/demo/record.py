"""The live run recorded as the simulator records a run: a `sim.measures.Timeline`.

So `capguard demo` reports the very measures of `capguard simulate` (same keys, same
code computing them) and draws the same plot. What the simulator takes from its ground
truth, the recorder takes from the cluster as a watcher sees it:

- samples (serving per model, engines out of service, breaker state) from the mirror,
  every `tick_seconds` of virtual time;
- executed actions from the engines: a new `capguard.dev/action-id` annotation is an
  action whose write landed; it broke a floor if a model it took serving capacity from
  was below its floor right after;
- refused, expired and conflicting actions, refused batches and the queue from the
  operator's /metrics (its counters are the only record of what it decided not to do).

Stale, as judged from outside: the write landed on an engine whose resourceVersion was
not the one the action was planned from (`status.lastAction.plannedFromResourceVersion`;
the server's precondition should make that impossible), or a model it took capacity
from served fewer units than at any moment since the engine last changed (so fewer
than whenever the plan was made), or the model it filled served more. That is a lower
bound: the operator does not publish when it planned (see NOTES.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from prometheus_client import parser

from capguard.core import fleet as fleet_
from capguard.demo import mirror as mirror_
from capguard.sim import manager, measures, run, scenarios


@dataclasses.dataclass(frozen=True)
class OperatorCounts:
    """What the operator's /metrics says it did (counters since it started)."""

    executed: int = 0
    refused: int = 0
    expired: int = 0
    conflicts: int = 0
    refused_batches: int = 0
    backlog: int = 0  # queued now: held by a breaker or pending on limits


def parse_metrics(text: str) -> OperatorCounts:
    actions: dict[str, float] = {}
    batches = backlog = 0.0
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "capguard_actions_total":
                result = sample.labels.get("result", "")
                actions[result] = actions.get(result, 0.0) + sample.value
            elif sample.name == "capguard_refused_batches_total":
                batches += sample.value
            elif sample.name == "capguard_queue_actions":
                backlog += sample.value
    return OperatorCounts(
        executed=int(actions.get("executed", 0)), refused=int(actions.get("refused", 0)),
        expired=int(actions.get("expired", 0)), conflicts=int(actions.get("conflict", 0)),
        refused_batches=int(batches), backlog=int(backlog))


class Recorder:
    """Samples the mirror on the virtual clock and watches engines for executed actions."""

    def __init__(self, *, scenario: scenarios.Scenario, mode: str, seed: int,
                 mirror: mirror_.Mirror, clock: Callable[[], float]) -> None:
        self.mirror = mirror
        self.clock = clock  # virtual seconds since the script's zero
        self.timeline = measures.Timeline(scenario=scenario, mode=mode, seed=seed,
                                          disruption_budget=0)
        self.counts = OperatorCounts()
        # action id -> (its place in timeline.executed, the engine's rv just before its write)
        self._awaiting_record: dict[str, tuple[int, str]] = {}
        mirror.listeners.append(self._on_engine)

    def start(self) -> None:
        """The fleet as it is before the incident fixes the disruption budget (as in the sim)."""
        self.timeline.disruption_budget = run.disruption_budget(self.mirror.fleet())

    def sample(self) -> measures.Sample:
        fleet = self.mirror.fleet()
        names = self.timeline.scenario.model_names
        sample = measures.Sample(
            at=round(self.clock(), 3),
            models=tuple(model_sample(fleet, name=n) for n in names),
            out_of_service=fleet.out_of_service_engines,
            breaker=self._breaker_state(),
            backlog=self.counts.backlog,
        )
        self.timeline.samples.append(sample)
        return sample

    def released(self) -> None:
        """At the release: the backlog held and the disruptions the fleet needs from here."""
        self.timeline.backlog_at_release = self.counts.backlog
        self.timeline.needed_after_release = manager.needed_disruptions(self.mirror.fleet())

    def update_counts(self, counts: OperatorCounts) -> None:
        self.counts = counts
        self.timeline.refused = counts.refused
        self.timeline.expired = counts.expired
        self.timeline.conflicts = counts.conflicts
        self.timeline.refused_batches = counts.refused_batches

    def _breaker_state(self) -> str:
        states = [str((b.get("status") or {}).get("state") or "Closed")
                  for b in self.mirror.breakers.values()]
        return states[0] if states else "Closed"

    def _on_engine(self, change: mirror_.EngineChange) -> None:
        new_id = mirror_.action_id(change.new)
        if new_id and new_id != mirror_.action_id(change.old):
            self._executed(change, action=new_id)
        recorded = mirror_.last_action(change.new)
        if recorded and recorded != mirror_.last_action(change.old):
            self._planned_from(recorded)

    def _executed(self, change: mirror_.EngineChange, *, action: str) -> None:
        name = str(change.new["metadata"]["name"])
        old_spec = (change.old or {}).get("spec") or {}
        new_spec = change.new.get("spec") or {}
        source, target = old_spec.get("modelRef"), new_spec.get("modelRef")
        seen = str(((change.old or {}).get("metadata") or {}).get("resourceVersion") or "")
        self._awaiting_record[action] = (len(self.timeline.executed), seen)
        self.timeline.executed.append(measures.Executed(
            at=round(self.clock(), 3), engine=name, kind=_kind(source, target),
            model=target, from_model=source,
            stale=self._stale_counts(change, source=source, target=target),
            broke_floor=_broken_floors(change, engine=name),
        ))

    def _planned_from(self, recorded: Mapping[str, object]) -> None:
        """The status record of an action: was it planned from the engine's version?"""
        action, planned = str(recorded.get("id") or ""), recorded.get("plannedFromResourceVersion")
        found = self._awaiting_record.pop(action, None)
        if found is None or planned is None or str(planned) == found[1]:
            return
        index = found[0]
        self.timeline.executed[index] = dataclasses.replace(self.timeline.executed[index],
                                                            stale=True)

    def _stale_counts(self, change: mirror_.EngineChange, *, source: object,
                      target: object) -> bool:
        """Whether the counts the plan relied on provably changed before the write."""
        window = _since(self.mirror.serving_history[:change.history_before],
                        moment=change.previous_change_at)
        now = change.before
        if isinstance(source, str) and source in now.models:
            seen = [w[source] for w in window if source in w]
            if seen and now.serving_units(source) < min(seen):
                return True  # the source can no longer spare the engine
        if isinstance(target, str) and target != source and target in now.models:
            seen = [w[target] for w in window if target in w]
            return bool(seen) and now.serving_units(target) > max(seen)  # the need is gone
        return False


def model_sample(fleet: fleet_.Fleet, *, name: str) -> measures.ModelSample:
    """One model in a sample, as `sim.run` measures it (settled: right revision and pool)."""
    model = fleet.models.get(name)
    if model is None:  # deleted, or its spec does not parse: nothing to measure
        return measures.ModelSample(serving=0, desired=0, floor=0, settled=False)
    serving = [fleet.engines[e] for e in fleet.serving_engines(name)]
    settled = not fleet.unavailable_engines(name) and all(manager.fits(e, model) for e in serving)
    units = fleet.serving_units(name)
    return measures.ModelSample(serving=units, desired=model.replicas, floor=model.floor_units,
                                settled=settled and units == model.replicas)


def _since(history: list[tuple[float, dict[str, int]]], *,
           moment: float) -> list[dict[str, int]]:
    """Serving units by model at every moment from ``moment`` on (the entry then in force too)."""
    start = 0
    for i, (at, _) in enumerate(history):
        if at <= moment:
            start = i
    return [units for _, units in history[start:]]


def _kind(source: object, target: object) -> str:
    if not source:
        return "Assign"
    return "Drain" if not target else "Reassign"


def _broken_floors(change: mirror_.EngineChange, *, engine: str) -> tuple[str, ...]:
    """Models the engine served before the write that are below their floor after it."""
    was = change.before.engines.get(engine)
    now = change.after.engines.get(engine)
    if was is None or now is None or not was.model or not was.serves(was.model):
        return ()
    model = was.model
    if now.serves(model) or model not in change.after.models:
        return ()
    below = change.after.serving_units(model) < change.after.floor_units(model)
    return (model,) if below else ()
