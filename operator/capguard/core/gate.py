"""The gate: the one place that decides, for every queued action, execute, hold or refuse.

``Gate.triage`` walks the queue in priority order and keeps a running tally, so an
action executed earlier in the same triage counts against the budgets and the floor
of every later one. Checks run cheapest first and refusals before holds: a refused
action leaves the queue, a held one waits for the next triage.

The gate reads the breaker machines and changes none of them: what a triage means for
them (probe slots taken, actions refused, a refused post-pause batch) comes
back in its `Triage`, for `capguard.core.pipeline` to apply. Its own memory is the
token buckets of the rate limits.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from capguard.core import breaker as breaker_
from capguard.core import fleet as fleet_
from capguard.core import planner, specs
from capguard.core import queue as queue_

# Refills add rate x elapsed in floating point: a token due exactly at a pass can come
# out a hair short of 1.0 (six 5 s refills at 2 a minute: 0.9999999999999999), which held
# it a whole pass too long.
_TOKEN_EPSILON: Final = 1e-9


class Verdict(enum.Enum):
    EXECUTE = "Execute"
    HOLD = "Hold"
    REFUSE = "Refuse"


class Reason(enum.Enum):
    """Stable strings: metric labels and Event reasons."""

    ALLOWED = "Allowed"
    BREAKER_OPEN = "BreakerOpen"
    HALF_OPEN_PROBE_LIMIT = "HalfOpenProbeLimit"
    POST_PAUSE_BATCH = "PostPauseBatch"
    RATE_LIMITED = "RateLimited"
    DISRUPTION_BUDGET = "DisruptionBudget"
    FLEET_DISRUPTION_BUDGET = "FleetDisruptionBudget"
    FLOOR = "Floor"
    STALE = "Stale"
    EXPIRED = "Expired"
    ALREADY_EXECUTED = "AlreadyExecuted"
    BACKOFF = "Backoff"  # the engine's last writes failed on an unwell API: it waits


@dataclasses.dataclass(frozen=True)
class Decision:
    action: queue_.Action
    verdict: Verdict
    reason: Reason
    message: str = ""
    batch: str | None = None  # the refused (or approved) post-pause batch it belongs to
    # The breakers governing the action (either side of the move), by name.
    breakers: tuple[str, ...] = ()
    # Executed under these HalfOpen breakers: it took a probe slot of each.
    probes: tuple[str, ...] = ()
    # Held by a rate limit: when its buckets hold a token again, with nothing else changed
    # (`pipeline.Pipeline` steps again then, rather than a pass later).
    retry_at: float | None = None

    @property
    def probe(self) -> bool:
        return bool(self.probes)


@dataclasses.dataclass(frozen=True)
class GateConfig:
    # False is the naive mode of the incident: only an Open breaker holds anything.
    guarded: bool = True
    # Engines out of service across the whole fleet, whatever the cause, as a percent.
    fleet_max_unavailable_percent: int = 10
    # One bucket for every disruptive action in the fleet (breakers and models add theirs).
    rate_limit: specs.RateLimit | None = None
    # A take whose token comes within this many seconds keeps its room from spares
    # (`_reserve`): about as long as an engine takes to load, after which a spare
    # started now would give the room back anyway. Later tokens keep nothing.
    reserve_for_tokens_within: float = 120.0


@dataclasses.dataclass(frozen=True)
class ReleasePlan:
    """The backlog a release would judge, published before the release so it can be approved."""

    breaker: str
    batch: str
    actions: tuple[queue_.Action, ...]
    guarded: bool  # True when the post-pause guard would refuse it without approval

    @property
    def size(self) -> int:
        return len(self.actions)


@dataclasses.dataclass(frozen=True)
class RefusedBatch:
    batch: str
    size: int
    oldest_plan_age: float
    time: float


@dataclasses.dataclass(frozen=True)
class Triage:
    """One triage's decisions and what they mean for each breaker."""

    decisions: tuple[Decision, ...]
    refused_batches: Mapping[str, RefusedBatch]  # breaker -> the backlog refused now
    refused: Mapping[str, int]  # breaker -> actions it governs refused now


@dataclasses.dataclass
class TokenBucket:
    per_second: float
    burst: int
    tokens: float
    updated_at: float

    def refill(self, now: float) -> float:
        elapsed = max(0.0, now - self.updated_at)
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.per_second)
        self.updated_at = now
        return self.tokens

    def wait(self, now: float) -> float:
        """Seconds from ``now`` until the bucket holds a whole token (0: it does)."""
        short = 1.0 - self.refill(now)
        if short <= _TOKEN_EPSILON:
            return 0.0
        return short / self.per_second if self.per_second > 0 else math.inf


def batch_id(actions: Iterable[queue_.Action]) -> str:
    """A stable name for a backlog: a hash of its intents, not of times or versions.

    Re-planning the same work keeps the name, so an approval given while the breaker
    is open still matches at release; any different work gets a different name.
    """
    lines = sorted(
        f"{a.intent.kind.value}|{a.intent.engine}|{a.intent.model}|{a.intent.from_model}"
        for a in actions
    )
    return "batch-" + hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]


def settle(queue: queue_.ActionQueue, decisions: Iterable[Decision]) -> None:
    """Drop what was executed or refused; held actions stay for the next triage."""
    queue.remove(d.action.id for d in decisions if d.verdict is not Verdict.HOLD)


_KIND_ORDER = {
    planner.ActionType.ASSIGN: 0,
    planner.ActionType.REASSIGN: 1,
    planner.ActionType.DRAIN: 2,
}


@dataclasses.dataclass
class _Tally:
    """What this triage has already executed: it counts against every later action."""

    fleet: fleet_.Fleet
    fleet_cap: int
    taken_units: dict[str, int] = dataclasses.field(default_factory=dict)
    extra_unavailable: dict[str, int] = dataclasses.field(default_factory=dict)
    extra_out_of_service: int = 0
    probe_slots: dict[str, int] = dataclasses.field(default_factory=dict)
    # Something in this triage would take capacity: the fleet cap is shared by every
    # action that puts an engine out (`_room_hold`).
    moving: bool = False
    failed: int = 0  # failed engines in the fleet: out of service, but no move's doing
    floors: set[str] = dataclasses.field(default_factory=set)  # ids of `_for_floors`
    granted: int | None = None  # takes left of a shard's grant (`Gate.triage`); None: no cap
    # Room kept for takes held by a rate limit alone (`_reserve`): what they will put out
    # once their token comes, which an assign may not use up meanwhile (`_room_hold`).
    reserved_out: int = 0
    reserved_unavailable: dict[str, int] = dataclasses.field(default_factory=dict)


class Gate:
    def __init__(self, config: GateConfig | None = None) -> None:
        self.config = config or GateConfig()
        self._buckets: dict[str, TokenBucket] = {}
        # Engines this gate took from a model that are not back in service yet.
        self._taken: set[str] = set()

    def triage(
        self,
        queue: queue_.ActionQueue | Iterable[queue_.Action],
        fleet: fleet_.Fleet,
        breakers: Mapping[str, breaker_.BreakerMachine],
        now: float,
        granted: int | None = None,
    ) -> Triage:
        """``granted``: takes this triage may execute at most, the tokens a shard holds from
        a budget shared with other shards (None: no cap); a take past it is held."""
        pending = queue.pending() if isinstance(queue, queue_.ActionQueue) else list(queue)
        floors = _for_floors(pending, fleet=fleet)
        left = _takes_left(pending, fleet=fleet)
        actions = sorted(pending, key=lambda a: _order(a, fleet=fleet, floors=floors, left=left))
        governing = _Governing(breakers=breakers, fleet=fleet)
        refused_batches: dict[str, RefusedBatch] = {}
        if not self.config.guarded:
            decisions = [_naive(a, governing=governing) for a in actions]
        else:
            batches = _post_pause_batches(
                actions, governing=governing, now=now, refused=refused_batches
            )
            moving = self._moving(actions, fleet=fleet)
            failed = sum(1 for e in fleet.engines.values()
                         if e.phase is specs.Phase.FAILED) if moving else 0
            tally = _Tally(fleet=fleet, fleet_cap=self._fleet_cap(fleet), floors=floors,
                           moving=moving, failed=failed, granted=granted)
            tally.probe_slots = {n: m.probe_slots() for n, m in breakers.items()}
            decisions = [
                self._decide(a, tally=tally, governing=governing, batches=batches, now=now)
                for a in actions
            ]
        return Triage(tuple(decisions), refused_batches, _refused(decisions, breakers=breakers))

    def release_plan(
        self,
        queue: queue_.ActionQueue | Iterable[queue_.Action],
        fleet: fleet_.Fleet,
        breaker: breaker_.BreakerMachine,
        now: float,
    ) -> ReleasePlan:
        """What a release now would face; publish ``batch`` so a person can approve it."""
        pending = queue.pending() if isinstance(queue, queue_.ActionQueue) else list(queue)
        governing = _Governing(breakers={breaker.name: breaker}, fleet=fleet)
        backlog = tuple(a for a in pending if governing.of(a) and a.planned_at <= now)
        return ReleasePlan(
            breaker=breaker.name,
            batch=batch_id(backlog),
            actions=backlog,
            guarded=len(backlog) > breaker.spec.max_batch_after_pause,
        )

    def _decide(
        self,
        action: queue_.Action,
        *,
        tally: _Tally,
        governing: _Governing,
        batches: Mapping[str, str],
        now: float,
    ) -> Decision:
        machines = governing.of(action)
        names = tuple(m.name for m in machines)
        batch = batches.get(action.id)
        if batch is not None:
            message = f"refused with post-pause batch {batch}; the planner re-plans from now"
            reason = Reason.POST_PAUSE_BATCH
            return Decision(action, Verdict.REFUSE, reason, message, batch, names)
        refusal = _refusal(action, fleet=tally.fleet, now=now)
        if refusal is not None:
            return Decision(action, Verdict.REFUSE, refusal[0], refusal[1], None, names)
        hold = _breaker_hold(machines, tally=tally)
        engine = tally.fleet.engines[action.intent.engine]
        takes = _takes(action, fleet=tally.fleet)
        if hold is None and takes:
            hold = _capacity_hold(action, engine=engine, tally=tally)
            if hold is None and tally.granted is not None and tally.granted < 1:
                message = "the shard's grant of shared tokens is spent"
                return Decision(action, Verdict.HOLD, Reason.RATE_LIMITED, message, None, names)
            if hold is None:
                short = self._token_wait(action, tally=tally, machines=machines, now=now)
                if short is not None:
                    key, wait = short
                    if wait <= self.config.reserve_for_tokens_within:
                        _reserve(action, tally=tally)
                    message = f"{key} token bucket is empty (a token in {wait:.0f}s)"
                    return Decision(action, Verdict.HOLD, Reason.RATE_LIMITED, message, None,
                                    names, retry_at=now + wait)
        elif hold is None:
            hold = _room_hold(action, tally=tally)
        if hold is not None:
            return Decision(action, Verdict.HOLD, hold[0], hold[1], None, names)
        probes = self._execute(
            action, engine=engine, takes=takes, tally=tally, machines=machines, now=now
        )
        return Decision(action, Verdict.EXECUTE, Reason.ALLOWED, "", None, names, probes)

    def _token_wait(
        self,
        action: queue_.Action,
        *,
        tally: _Tally,
        machines: Sequence[breaker_.BreakerMachine],
        now: float,
    ) -> tuple[str, float] | None:
        """None when every bucket the action draws on holds a token; else the bucket that
        refills last and the seconds until it does (infinity if it never refills)."""
        buckets = self._buckets_for(action, fleet=tally.fleet, machines=machines, now=now)
        wait, key = max(((b.wait(now), k) for k, b in buckets), default=(0.0, ""))
        return (key, wait) if wait > 0 else None

    def _buckets_for(
        self,
        action: queue_.Action,
        *,
        fleet: fleet_.Fleet,
        machines: Sequence[breaker_.BreakerMachine],
        now: float,
    ) -> list[tuple[str, TokenBucket]]:
        limits: list[tuple[str, specs.RateLimit | None]] = [("fleet", self.config.rate_limit)]
        limits += [(f"breaker {m.name}", m.spec.rate_limit) for m in machines]
        model = fleet.models.get(action.intent.from_model or "")
        if model is not None:
            limits.append((f"model {model.name}", model.rate_limit))
        return [(k, self._bucket(k, limit=r, now=now)) for k, r in limits if r is not None]

    def _bucket(self, key: str, *, limit: specs.RateLimit, now: float) -> TokenBucket:
        per_second = limit.actions_per_minute / 60.0
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(per_second, limit.burst, float(limit.burst), now)
            self._buckets[key] = bucket
        bucket.per_second, bucket.burst = per_second, limit.burst  # follow spec edits
        return bucket

    def _execute(
        self,
        action: queue_.Action,
        *,
        engine: specs.Engine,
        takes: bool,
        tally: _Tally,
        machines: Sequence[breaker_.BreakerMachine],
        now: float,
    ) -> tuple[str, ...]:
        """Count an executed action against everything later in this triage; the HalfOpen
        breakers whose probe slot it takes."""
        intent = action.intent
        if takes:
            assert intent.from_model is not None
            for _, bucket in self._buckets_for(
                action, fleet=tally.fleet, machines=machines, now=now
            ):
                bucket.tokens -= 1.0  # tokens are spent only here, on EXECUTE
            if tally.granted is not None:
                tally.granted -= 1
            self._taken.add(intent.engine)
            tally.taken_units[intent.from_model] = (
                tally.taken_units.get(intent.from_model, 0) + engine.units
            )
        out = _puts_out(intent, takes=takes)
        for model in out:
            _add(tally.extra_unavailable, model)
        tally.extra_out_of_service += 1 if out else 0
        probes = tuple(m.name for m in machines if m.state is breaker_.BreakerState.HALF_OPEN)
        for name in probes:
            tally.probe_slots[name] -= 1
        return probes

    def _moving(self, actions: Sequence[queue_.Action], *, fleet: fleet_.Fleet) -> bool:
        """Whether capacity is being moved: an engine this gate took is still out of
        service, or an action of this triage would take one."""
        self._taken = {e for e in self._taken
                       if e in fleet.engines and fleet_.out_of_service(fleet.engines[e])}
        return bool(self._taken) or any(_takes(a, fleet=fleet) for a in actions)

    def _fleet_cap(self, fleet: fleet_.Fleet) -> int:
        share = self.config.fleet_max_unavailable_percent * len(fleet.engines) / 100
        return max(1, math.floor(share))


class _Governing:
    """Which breakers govern an action (either side of the move), cached per triage.

    The rule itself is `specs.BreakerSpec.governs`; this only remembers its answers.
    """

    def __init__(
        self, *, breakers: Mapping[str, breaker_.BreakerMachine], fleet: fleet_.Fleet
    ) -> None:
        self.fleet = fleet
        self.breakers = breakers
        self._by_model: dict[str | None, tuple[breaker_.BreakerMachine, ...]] = {None: ()}
        self._by_pair: dict[tuple[str | None, str | None], tuple[breaker_.BreakerMachine, ...]] = {}

    def of(self, action: queue_.Action) -> tuple[breaker_.BreakerMachine, ...]:
        pair = (action.intent.model, action.intent.from_model)
        found = self._by_pair.get(pair)
        if found is None:
            found = tuple(dict.fromkeys(self._model(pair[0]) + self._model(pair[1])))
            self._by_pair[pair] = found
        return found

    def _model(self, name: str | None) -> tuple[breaker_.BreakerMachine, ...]:
        found = self._by_model.get(name)
        if found is None:
            model = self.fleet.models.get(name) if name else None
            found = tuple(m for _, m in sorted(self.breakers.items()) if m.spec.governs(model))
            self._by_model[name] = found
        return found


def _order(
    action: queue_.Action, *, fleet: fleet_.Fleet, floors: set[str], left: Mapping[str, int]
) -> tuple[bool, int, bool, int, int, float, str]:
    """Floors first (an action that brings a model toward a floor it is below goes before
    any surplus, whatever the priorities: tokens and budgets go to floors first), then
    higher priority; within it, what takes capacity before what only adds some (except
    toward a floor), takes from the model with the most takes left first, then assign
    before drain, oldest first.

    Takes first, because a take spends a rate-limit token and the bucket holds only its
    burst: a token not spent when a take could run is gone, while an assign costs none
    and loses nothing by waiting a pass. Make before break still holds action by action
    (a take runs only while its model keeps its floor without the engine), and an action
    after a take may not use up the room the take counted on (`_room_hold`).

    Most takes left first, because a model gives engines only a few at a time (its
    maxUnavailable, which the replacements loading for it count against) and only once
    they serve: a model left with many takes at the end is a queue of its own that no
    token shortens (longest first, as a scheduler balances machines)."""
    intent = action.intent
    model = fleet.models.get(intent.model or intent.from_model or "")
    priority = model.priority if model else 0
    floor = action.id in floors  # among these, assigns first: each floor take counts them
    takes = _takes(action, fleet=fleet)
    remaining = left.get(intent.from_model or "", 0) if takes else 0
    return (not floor, -priority, floor or not takes, -remaining,
            _KIND_ORDER[intent.kind], action.planned_at, intent.engine)


def _takes(action: queue_.Action, *, fleet: fleet_.Fleet) -> bool:
    """Whether the action takes an engine that serves the model it leaves."""
    source = action.intent.from_model
    engine = fleet.engines.get(action.intent.engine)
    return source is not None and engine is not None and engine.serves(source)


def _takes_left(actions: Sequence[queue_.Action], *, fleet: fleet_.Fleet) -> dict[str, int]:
    """For each model a queued take leaves: the takes it needs (`planner.takes_left`)."""
    sources = {a.intent.from_model or "" for a in actions if _takes(a, fleet=fleet)}
    return {name: planner.takes_left(fleet, model=fleet.models[name])
            for name in sorted(sources & fleet.models.keys())}


def _for_floors(actions: Sequence[queue_.Action], *, fleet: fleet_.Fleet) -> set[str]:
    """The actions that fill a floor: toward a model, as many units as its floor lacks
    once what serves it and what is already loading for it count."""
    gaps: dict[str, int] = {}
    for name in fleet.models:
        found = fleet.counts(name)
        loading = sum(fleet.engines[e].units for e in found.unavailable_engines
                      if fleet.engines[e].spec.model_ref == name)
        gap = fleet.floor_units(name) - found.serving_units - loading
        if gap > 0:
            gaps[name] = gap
    chosen: set[str] = set()
    if not gaps:
        return chosen
    toward = sorted((a for a in actions if a.intent.model in gaps
                     and a.intent.model != a.intent.from_model),
                    key=lambda a: (_KIND_ORDER[a.intent.kind], a.planned_at, a.intent.engine))
    for action in toward:
        model = action.intent.model
        assert model is not None
        if gaps[model] > 0:
            chosen.add(action.id)
            engine = fleet.engines.get(action.intent.engine)
            gaps[model] -= engine.units if engine else 1
    return chosen


def _naive(action: queue_.Action, *, governing: _Governing) -> Decision:
    machines = governing.of(action)
    names = tuple(m.name for m in machines)
    if any(m.state is breaker_.BreakerState.OPEN for m in machines):
        return Decision(action, Verdict.HOLD, Reason.BREAKER_OPEN, "breaker open", None, names)
    return Decision(action, Verdict.EXECUTE, Reason.ALLOWED, "", None, names)


def _post_pause_batches(
    actions: Sequence[queue_.Action],
    *,
    governing: _Governing,
    now: float,
    refused: dict[str, RefusedBatch],
) -> dict[str, str]:
    """Action id -> batch, for every backlog the post-pause guard refuses as a whole
    (each refused backlog goes into ``refused`` under its breaker's name)."""
    batches: dict[str, str] = {}
    for machine in governing.breakers.values():
        backlog = _backlog_after_pause(machine, actions=actions, governing=governing)
        if len(backlog) <= machine.spec.max_batch_after_pause:
            continue
        batch = batch_id(backlog)
        approval = machine.spec.approval
        if approval is not None and approval.batch == batch:
            continue  # a person approved exactly this work; it still meets every other check
        oldest = max(a.age(now) for a in backlog)
        refused[machine.name] = RefusedBatch(batch, len(backlog), oldest, now)
        batches.update((a.id, batch) for a in backlog)
    return batches


def _backlog_after_pause(
    machine: breaker_.BreakerMachine,
    *,
    actions: Sequence[queue_.Action],
    governing: _Governing,
) -> list[queue_.Action]:
    """The actions planned before a long pause ended, once the breaker has been released."""
    released = machine.released_at
    if machine.state is breaker_.BreakerState.OPEN or released is None:
        return []
    if machine.last_pause_seconds <= machine.spec.pause_threshold:
        return []
    # Strictly before: a plan stamped at the release instant was made from the view of
    # that instant (a manager that sees the release re-plans in the same pass), so it is
    # as fresh as any later plan and no part of what piled up during the pause. Counting
    # it would refuse the fresh re-plan together with the stale backlog. (release_plan
    # keeps <= now: published while open, it must name what a later release will judge.)
    return [a for a in actions if a.planned_at < released and machine in governing.of(a)]


def _refusal(
    action: queue_.Action, *, fleet: fleet_.Fleet, now: float
) -> tuple[Reason, str] | None:
    """No stale action (DESIGN.md #2): the state it was planned from must still hold."""
    intent = action.intent
    engine = fleet.engines.get(intent.engine)
    if engine is not None and engine.last_action_id == action.id:
        return Reason.ALREADY_EXECUTED, "the engine already carries this action's id"
    if action.expired(now):
        return Reason.EXPIRED, f"planned {action.age(now):.0f}s ago, max age {action.max_age:.0f}s"
    if engine is None:
        return Reason.STALE, "the engine no longer exists"
    if engine.resource_version != action.planned_from.engine_resource_version:
        return Reason.STALE, "the engine changed since the plan (resourceVersion)"
    for model in (intent.model, intent.from_model):
        if model in fleet.unreadable_models:
            return Reason.STALE, f"model {model} has an invalid spec; its engines wait for a fix"
    if intent.model is not None and intent.model not in fleet.models:
        return Reason.STALE, f"model {intent.model} no longer exists"
    if intent.from_model is not None:
        serving = fleet.serving_units(intent.from_model)
        if serving < action.planned_from.model_serving_units:
            planned = action.planned_from.model_serving_units
            return Reason.STALE, f"{intent.from_model} serves {serving} units, planned at {planned}"
    return _filled_since(action, fleet=fleet)


def _filled_since(action: queue_.Action, *, fleet: fleet_.Fleet) -> tuple[Reason, str] | None:
    """An engine sent to fill a model's need is stale once that need was filled without it."""
    intent = action.intent
    planned = (
        action.planned_from.model_serving_units
        if intent.from_model is None
        else action.planned_from.target_serving_units
    )
    if intent.model is None or planned is None:
        return None
    serving = fleet.serving_units(intent.model)
    if serving > planned:
        return Reason.STALE, f"{intent.model} serves {serving} units, planned at {planned}"
    return None


def _breaker_hold(
    machines: Sequence[breaker_.BreakerMachine], *, tally: _Tally
) -> tuple[Reason, str] | None:
    for machine in machines:
        if machine.state is breaker_.BreakerState.OPEN:
            return Reason.BREAKER_OPEN, f"breaker {machine.name} is open"
        if machine.state is breaker_.BreakerState.HALF_OPEN and tally.probe_slots[machine.name] < 1:
            return Reason.HALF_OPEN_PROBE_LIMIT, f"breaker {machine.name} waits for its probes"
    return None


def _capacity_hold(
    action: queue_.Action, *, engine: specs.Engine, tally: _Tally
) -> tuple[Reason, str] | None:
    """Floor (DESIGN.md #1) and disruption budgets (#4) for an action that takes capacity."""
    model = action.intent.from_model
    assert model is not None
    fleet = tally.fleet
    # An orphan drain (its model was deleted) takes capacity from nobody: no floor and no
    # budget of a departed model applies, only the fleet-wide cap (and the rate limits).
    if model in fleet.models:
        hold = _model_hold(model, engine=engine, tally=tally)
        if hold is not None:
            return hold
    fleet_out = fleet.out_of_service_engines + tally.extra_out_of_service
    if fleet_out + 1 > tally.fleet_cap:
        message = f"{fleet_out} engines out in the fleet, cap {tally.fleet_cap}"
        return Reason.FLEET_DISRUPTION_BUDGET, message
    return None


def _room_hold(action: queue_.Action, *, tally: _Tally) -> tuple[Reason, str] | None:
    """An action that puts an engine out without taking capacity (an assign) while
    capacity is being moved (`Gate._moving`): it may not push the fleet past its cap nor
    its model past maxUnavailable, budgets the takes count on and had first (`_order`),
    so it waits a pass instead. Adding capacity alone (a cold start, a scale-up) and
    restoring a floor are never held.

    The room kept for takes that wait for their token (`_reserve`) holds only a spare:
    an assign to a model that serves its desired units already (a replacement to be made
    before a later break), never one that brings a model toward its desired count."""
    to = action.intent.model
    moves = to is not None and to != action.intent.from_model
    if not moves or not tally.moving or action.id in tally.floors:
        return None
    assert to is not None
    fleet = tally.fleet
    # Once a take ran in this triage, everything out counts, as it did for the take.
    # Before, failed engines are left out: the room kept is the room moves use, and an
    # assign that replaces failed capacity is no reason to wait.
    ignore_failed = not tally.taken_units
    model = fleet.models.get(to)
    spare = model is not None and fleet.serving_units(to) >= model.replicas
    kept = tally.reserved_out if spare else 0
    fleet_out = fleet.out_of_service_engines + tally.extra_out_of_service
    fleet_out -= tally.failed if ignore_failed else 0
    if fleet_out + kept + 1 > tally.fleet_cap:
        message = (f"{fleet_out} engines out in the fleet{_kept(kept)}, cap {tally.fleet_cap}, "
                   "takes first")
        return Reason.FLEET_DISRUPTION_BUDGET, message
    out = tally.extra_unavailable.get(to, 0) + sum(
        1 for e in fleet.unavailable_engines(to)
        if not (ignore_failed and fleet.engines[e].phase is specs.Phase.FAILED)
    )
    kept = tally.reserved_unavailable.get(to, 0) if spare else 0
    budget = fleet.max_unavailable_engines(to)
    if to in fleet.models and out + kept + 1 > budget:
        message = f"{to} has {out} engines out{_kept(kept)}, maxUnavailable {budget}, takes first"
        return Reason.DISRUPTION_BUDGET, message
    return None


def _kept(kept: int) -> str:
    return f" and {kept} kept for takes waiting for a token" if kept else ""


def _puts_out(intent: planner.Intent, *, takes: bool) -> tuple[str, ...]:
    """The models whose maxUnavailable an executed action counts against: the model a take
    leaves, and the model the engine loads for (it loads before it serves). Empty when it
    puts no engine out of service; otherwise one engine of the fleet's cap."""
    left = (intent.from_model,) if takes and intent.from_model is not None else ()
    if intent.model is not None and intent.model != intent.from_model:
        return (*left, intent.model)
    return left


def _reserve(action: queue_.Action, *, tally: _Tally) -> None:
    """Keep room for a take that only waits for its token: what it will put out once it
    runs (`_puts_out`, as `Gate._execute` counts it). An assign loads for minutes, while
    the token comes sooner (`GateConfig.reserve_for_tokens_within`); had the assign the
    room meanwhile, the take would find the fleet cap or a maxUnavailable used up and its
    token would go unspent."""
    tally.reserved_out += 1
    for model in _puts_out(action.intent, takes=True):
        _add(tally.reserved_unavailable, model)


def _model_hold(model: str, *, engine: specs.Engine, tally: _Tally) -> tuple[Reason, str] | None:
    fleet = tally.fleet
    after = fleet.serving_units(model) - tally.taken_units.get(model, 0) - engine.units
    floor = fleet.protected_units(model)
    if after < floor:
        short = fleet.floor_units(model) - floor
        covered = f" (of {floor + short}; the supply covers {floor})" if short else ""
        return Reason.FLOOR, (f"floor protected: {model} would serve {after} units, "
                              f"floor {floor}{covered}")
    out = len(fleet.unavailable_engines(model)) + tally.extra_unavailable.get(model, 0)
    budget = fleet.max_unavailable_engines(model)
    if out + 1 > budget:
        return Reason.DISRUPTION_BUDGET, f"{model} has {out} engines out, maxUnavailable {budget}"
    return None


def _add(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def _refused(
    decisions: Sequence[Decision], *, breakers: Mapping[str, breaker_.BreakerMachine]
) -> dict[str, int]:
    """Refused actions per breaker that governs them."""
    refused = dict.fromkeys(breakers, 0)
    for decision in decisions:
        if decision.verdict is Verdict.REFUSE:
            for name in decision.breakers:
                refused[name] += 1
    return refused
