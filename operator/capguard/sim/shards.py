"""Past one process: K shards, each the core's pipeline over its own namespace's fleet,
sharing one budget object (docs/scale.md, "Past one process").

Each shard is a `world.World` (its namespace: its models, engines and a copy of the
breaker) and a `pipeline.Pipeline` of its own, as a shard operator would run. What they
share is the budget object, simulated as an API object with a resourceVersion: the
global token bucket (level and refill time), each shard's disruptions in flight as it
last wrote them, and the grants, tokens a holder (one shard's incarnation) took and has
not yet turned into takes, each with an expiry.

A pass, every tick (all shards on the same tick, as passes after a shared release):

1. Each shard that wants tokens, or whose share changed, reads the object and writes it
   back preconditioned on the resourceVersion it read. The reads and writes of the
   shards interleave on a sub-second timeline (a random start and an API latency for
   each), so a shard that read before another wrote gets 409, reads again and retries.
2. Each live shard steps its pipeline with ``Observed.granted``: the gate executes at
   most that many takes (`gate.Gate.triage`), and the shard's grant shrinks by the
   takes actually written.

The bucket's level plus every grant held never exceeds the burst, so a holder that
saves tokens cannot later spend more than the bucket allows in any window. A grant
past its expiry is dropped by the next writer and its count is added to its shard's
share of disruptions: its holder may have spent it just before it died, and those
engines stay out until the shard (its successor) writes its share from its engines.
The tokens are lost, never returned to the bucket.

Not simulated: the API server's real latency and load, a real Lease hand-over (a
shard's successor here simply starts ``lease_seconds`` after the death), namespaces
moving between shards.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import math
import random
import time
from collections.abc import Iterable, Mapping
from typing import Final

from capguard.core import breaker as breaker_
from capguard.core import fleet as fleet_
from capguard.core import gate as gate_
from capguard.core import pipeline as pipeline_
from capguard.sim import physics as physics_
from capguard.sim import scenarios as scenarios_
from capguard.sim import world as world_

RATE_WINDOW: Final = 60.0  # the global rate limit is judged over any window this long
GLOBAL_RATE: Final = scenarios_.Rate(per_minute=60.0, burst=10)
PAUSE: Final = scenarios_.Pause(60.0, 420.0)  # 6 minutes: over the pause threshold


@dataclasses.dataclass(frozen=True, kw_only=True)
class Setup:
    """The sharded fleet and the incident that hits every shard at once."""

    shards: int = 10
    models: int = 1000  # per shard
    units_per_model: int = 9
    spare_engines: int = 1000  # per shard
    refreshes: int = 4  # models per shard that get a new revision during the pause
    rate: scenarios_.Rate = GLOBAL_RATE  # the global bucket
    budget: int = 50  # engines out of service fleet-wide that grants may count on
    grant_seconds: float = 30.0  # a grant's expiry after its write
    lease_seconds: float = 15.0  # a dead shard's successor starts this much later
    dies_at: float | None = 480.0  # shard 0 dies after its first grant from then on
    pause: scenarios_.Pause = PAUSE
    duration: float = 3600.0  # at most; the run ends once every shard has converged
    spread: float = 1.0  # the shards' passes start within this many seconds
    latency: tuple[float, float] = (0.005, 0.05)  # one read or write of the object

    @property
    def engines(self) -> int:
        return self.shards * (self.models * self.units_per_model + self.spare_engines)

    def scenario(self) -> scenarios_.Scenario:
        """One shard's namespace: its models and engines, the pause and the refreshes."""
        return scenarios_.Scenario(
            name="shards", summary="one shard of a sharded fleet",
            models=self.models, units_per_model=self.units_per_model,
            spare_engines=self.spare_engines, max_unavailable=2,
            global_rate=self.rate, pauses=(self.pause,), refreshes=self.refreshes,
            physics=physics_.Physics(drain_seconds=60.0), duration=self.duration,
        )


# -- the budget object ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Grant:
    shard: str
    count: int  # tokens held, not yet turned into takes
    expires_at: float


@dataclasses.dataclass(frozen=True)
class Budget:
    """The budget object's status; every write replaces it whole."""

    tokens: float  # bucket level at refilled_at
    refilled_at: float
    unavailable: Mapping[str, int]  # shard -> its disruptions in flight, as last written
    grants: Mapping[str, Grant]  # holder -> its grant

    def held(self) -> int:
        return sum(g.count for g in self.grants.values())


@dataclasses.dataclass(frozen=True)
class Take:
    """One holder's write: the status it writes and what that write did."""

    budget: Budget
    given: int  # tokens newly taken from the bucket
    returned: int  # tokens of its own grant it no longer wants, back in the bucket
    lost: Mapping[str, int]  # holder -> tokens of its expired grant, dropped now


def take(
    budget: Budget, *, holder: str, shard: str, want: int, used: int, unavailable: int,
    rate: scenarios_.Rate, room: int, ttl: float, now: float,
) -> Take:
    """What ``holder`` writes: the bucket refilled to ``now``, expired grants dropped (their
    count joins their shard's share), its own grant less ``used``, topped up to ``want`` as
    far as the level, the burst and the fleet-wide ``room`` allow (what it holds past
    ``want`` goes back: only a live holder may say it will not spend a token)."""
    expired = {h: g for h, g in budget.grants.items() if g.expires_at <= now}  # its own too
    shares = dict(budget.unavailable)
    for grant in expired.values():
        shares[grant.shard] = shares.get(grant.shard, 0) + grant.count
    shares[shard] = unavailable
    mine = budget.grants.get(holder) if holder not in expired else None
    unspent = max(0, (mine.count if mine else 0) - used)
    kept = min(unspent, want)
    others = {h: g for h, g in budget.grants.items() if h not in expired and h != holder}
    held = sum(g.count for g in others.values()) + kept
    refilled = budget.tokens + (now - budget.refilled_at) * rate.per_minute / 60.0
    level = min(refilled, float(rate.burst - held - (unspent - kept))) + unspent - kept
    free = room - sum(shares.values()) - held
    given = max(0, min(want - kept, math.floor(level + 1e-9), free))
    if kept + given:
        others[holder] = Grant(shard, kept + given, now + ttl)
    written = Budget(level - given, now, shares, others)
    return Take(written, given, unspent - kept, {h: g.count for h, g in expired.items()})


class BudgetObject:
    """The object as the API server holds it: a write carries the version it read."""

    def __init__(self, *, rate: scenarios_.Rate, now: float) -> None:
        self.version = 1
        self.status = Budget(float(rate.burst), now, {}, {})
        self.writes = 0
        self.conflicts = 0

    def write(self, status: Budget, *, expect: int | None) -> bool:
        """False (409) when ``expect`` is not the current version; None: unconditional."""
        if expect is not None and expect != self.version:
            self.conflicts += 1
            return False
        self.writes += 1
        self.version += 1
        self.status = status
        return True


# -- one shard --------------------------------------------------------------------------


@dataclasses.dataclass
class Ledger:
    """The simulator's ground truth of tokens: never what the object or a shard says."""

    given: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    returned: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    used: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    lost: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    over_issued: float = 0.0  # most tokens given beyond burst + rate x elapsed: double spent

    def overspent(self) -> int:
        """Takes beyond the tokens given to their holder, summed over holders."""
        return sum(max(0, n - self.given[h] + self.returned[h]) for h, n in self.used.items())

    def outstanding(self) -> int:
        """Tokens taken from the bucket and not given back."""
        return sum(self.given.values()) - sum(self.returned.values())


class Shard:
    """One shard operator: its namespace's world and a pipeline of its own."""

    def __init__(self, *, name: str, world: world_.World, max_plan_age: float) -> None:
        self.name = name
        self.world = world
        self.max_plan_age = max_plan_age
        self.incarnation = 0
        self.alive = True
        self.dead_at: float | None = None
        self.granted = 0  # tokens this incarnation holds
        self.expires_at = 0.0  # its grant's expiry: no take on it from then (a fence)
        self.used = 0  # takes since its last write
        self.written_share = 0
        self.want = 0
        self.takes: dict[str, str] = {}  # engine -> the take's action id, while it is out
        self.pipeline = self._start()

    @property
    def holder(self) -> str:
        return f"{self.name}#{self.incarnation}"

    def _start(self) -> pipeline_.Pipeline:
        """A new incarnation: all state rebuilt from the cluster, no grant of the old one."""
        self.incarnation += 1
        self.granted = self.used = 0
        return pipeline_.Pipeline(pipeline_.Config(
            gate=gate_.GateConfig(), max_plan_age=self.max_plan_age,
            cached_view_while_paused=True,
        ))

    def restart(self) -> None:
        self.pipeline, self.alive, self.dead_at = self._start(), True, None

    def share(self) -> int:
        """Its disruptions in flight, from its engines: takes not back in service."""
        engines = self.world.fleet().engines
        self.takes = {e: a for e, a in self.takes.items()
                      if engines[e].last_action_id == a and fleet_.out_of_service(engines[e])}
        return len(self.takes)

    def step(self, now: float) -> int:
        """One pass with its grant; the takes written."""
        fleet = self.world.fleet()
        granted = self.granted if now < self.expires_at else 0
        result = self.pipeline.step(pipeline_.Observed(fleet, granted=granted), now)
        taken, written = 0, []
        for execution in result.executions:
            intent = execution.action.intent
            takes = intent.from_model is not None and fleet.engines[intent.engine].serves(
                intent.from_model)
            done = self.world.bind(
                engine=intent.engine, model=intent.model, action_id=execution.action.id,
                expect_version=execution.action.planned_from.engine_resource_version,
            ) is world_.Write.DONE
            self.pipeline.written(execution.action.id, engine=intent.engine, ok=done, now=now)
            if done:
                written.append(intent.engine)
            if done and takes:
                self.takes[intent.engine] = execution.action.id
                taken += 1
        self.world.advance(now=now, only=written)
        self.granted -= taken
        self.used += taken
        self.want = self._wanted()
        return taken

    def _wanted(self) -> int:
        """Tokens its next pass could use: its queued disruptive actions, none while a
        breaker holds them."""
        if any(m.state is breaker_.BreakerState.OPEN for m in self.pipeline.machines.values()):
            return 0
        return sum(1 for a in self.pipeline.queue.pending() if a.intent.disruptive)

    def converged(self, now: float) -> bool:
        return not self.pipeline.queue and self.world.next_change(now=now) is None


# -- the run ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Report:
    engines: int
    shards: int
    models: int
    sim_seconds: float
    shard_steps: int
    step_wall_mean: float
    step_wall_max: float
    wall_seconds: float
    budget: int
    max_in_flight: int  # takes out of service at once, fleet-wide (ground truth)
    max_out_of_service: int  # every cause, fleet-wide (for scale: no bound)
    rate_bound: int  # burst + per_minute: the most a bucket admits in a minute
    max_takes_per_window: int  # takes in any RATE_WINDOW
    takes: int
    writes: int
    conflicts: int
    given: int  # tokens taken from the bucket and not given back
    lost: int  # tokens of expired grants (the dead holder's)
    dead_grant: int  # tokens the shard held when it died
    overspent: int  # takes beyond their holder's grants (must be 0)
    over_issued: float  # tokens given beyond what the bucket made (must be <= 0)
    converge_seconds: float | None  # from the release until every shard converged

    @property
    def writes_per_second(self) -> float:
        return self.writes / self.sim_seconds if self.sim_seconds else 0.0

    @property
    def conflict_rate(self) -> float:
        tries = self.writes + self.conflicts
        return self.conflicts / tries if tries else 0.0


class Run:
    """The shards, the budget object and the ledger, stepped on one virtual clock."""

    def __init__(self, setup: Setup, *, seed: int, precondition: bool = True) -> None:
        self.setup = setup
        self.rng = random.Random(seed)
        self.precondition = precondition
        scenario = setup.scenario()
        self.shards = [
            Shard(name=f"ns-{k:02d}", max_plan_age=scenario.max_plan_age,
                  world=world_.World(scenario=scenario, rng=random.Random(seed * 1000 + k)))
            for k in range(setup.shards)
        ]
        self.events = [collections.deque(scenario.timeline(s.world.rng)) for s in self.shards]
        self.budget = BudgetObject(rate=setup.rate, now=0.0)
        self.ledger = Ledger()
        self.takes_at: list[float] = []  # every take's time, for the rate measure
        self.walls: list[float] = []  # every shard step's wall time
        self.max_in_flight = self.max_out_of_service = 0
        self.dead_grant: tuple[str, int] | None = None

    def play(self) -> Report:
        started, tick, now = time.perf_counter(), 5.0, 0.0
        converged = None
        while now <= self.setup.duration:
            self.round(now)
            if now > self.setup.pause.closes_at and self._done(now):
                converged = now - self.setup.pause.closes_at
                break
            now += tick
        return self._report(min(now, self.setup.duration), converged=converged,
                            wall=time.perf_counter() - started)

    def round(self, now: float) -> None:
        for shard, events in zip(self.shards, self.events, strict=True):
            while events and events[0].at <= now:
                shard.world.apply(events.popleft(), now=now)
            shard.world.advance(now=now)
        self._negotiate(now)
        for shard in self.shards:
            if not shard.alive:
                if shard.dead_at is not None and now >= shard.dead_at + self.setup.lease_seconds:
                    shard.restart()
                continue
            begun = time.perf_counter()
            taken = shard.step(now)
            self.walls.append(time.perf_counter() - begun)
            self.ledger.used[shard.holder] += taken
            self.takes_at += [now] * taken
        self.max_in_flight = max(self.max_in_flight, sum(s.share() for s in self.shards))
        self.max_out_of_service = max(
            self.max_out_of_service,
            sum(s.world.fleet().out_of_service_engines for s in self.shards))

    def _negotiate(self, now: float) -> None:
        """Every shard with something to write reads, then writes on a sub-second timeline;
        a 409 re-reads and writes again."""
        due: list[tuple[float, int, int, int]] = []  # (at, shard, 0 read / 1 write, version)
        for k, shard in enumerate(self.shards):
            if shard.alive and (shard.want or shard.used or shard.granted
                                or shard.share() != shard.written_share):
                heapq.heappush(due, (now + self.rng.uniform(0, self.setup.spread), k, 0, 0))
        pending: dict[int, Take] = {}
        while due:
            at, k, phase, version = heapq.heappop(due)
            shard = self.shards[k]
            if phase == 0:  # read: compute the write from what was read
                pending[k] = self._take(shard, self.budget.status, now=at)
                heapq.heappush(due, (at + self._latency(), k, 1, self.budget.version))
                continue
            expect = version if self.precondition else None
            if not self.budget.write(pending[k].budget, expect=expect):
                heapq.heappush(due, (at + self._latency(), k, 0, 0))  # 409: read again
                continue
            self._written(shard, pending.pop(k), now=at)

    def _take(self, shard: Shard, status: Budget, *, now: float) -> Take:
        return take(
            status, holder=shard.holder, shard=shard.name, want=shard.want, used=shard.used,
            unavailable=shard.share(), rate=self.setup.rate, room=self.setup.budget,
            ttl=self.setup.grant_seconds, now=now,
        )

    def _written(self, shard: Shard, done: Take, *, now: float) -> None:
        grant = done.budget.grants.get(shard.holder)
        shard.granted = grant.count if grant else 0
        shard.expires_at = grant.expires_at if grant else now
        shard.used, shard.written_share = 0, done.budget.unavailable[shard.name]
        self.ledger.given[shard.holder] += done.given
        self.ledger.returned[shard.holder] += done.returned
        self.ledger.lost.update(done.lost)
        made = self.setup.rate.burst + now * self.setup.rate.per_minute / 60.0
        self.ledger.over_issued = max(self.ledger.over_issued, self.ledger.outstanding() - made)
        dies = self.setup.dies_at
        if shard.name == self.shards[0].name and dies is not None and now >= dies \
                and shard.granted and self.dead_grant is None:
            shard.alive, shard.dead_at = False, now  # dies holding its grant, before its step
            self.dead_grant = (shard.holder, shard.granted)

    def _latency(self) -> float:
        return self.rng.uniform(*self.setup.latency)

    def _done(self, now: float) -> bool:
        return all(s.alive and s.converged(now) for s in self.shards)

    def _report(self, now: float, *, converged: float | None, wall: float) -> Report:
        setup, ledger, walls = self.setup, self.ledger, self.walls
        return Report(
            engines=setup.engines, shards=setup.shards, models=setup.models * setup.shards,
            sim_seconds=now, shard_steps=len(walls),
            step_wall_mean=sum(walls) / len(walls) if walls else 0.0,
            step_wall_max=max(walls, default=0.0), wall_seconds=wall, budget=setup.budget,
            max_in_flight=self.max_in_flight, max_out_of_service=self.max_out_of_service,
            rate_bound=int(setup.rate.burst + setup.rate.per_minute),
            max_takes_per_window=max_in_window(self.takes_at, window=RATE_WINDOW),
            takes=len(self.takes_at), writes=self.budget.writes,
            conflicts=self.budget.conflicts, given=ledger.outstanding(),
            lost=sum(ledger.lost.values()),
            dead_grant=self.dead_grant[1] if self.dead_grant else 0,
            overspent=ledger.overspent(), over_issued=ledger.over_issued,
            converge_seconds=converged,
        )


def max_in_window(times: Iterable[float], *, window: float) -> int:
    """The most of ``times`` (sorted) inside any half-open window ``window`` long."""
    found, start, ordered = 0, 0, sorted(times)
    for end, at in enumerate(ordered):
        while ordered[start] <= at - window:
            start += 1
        found = max(found, end - start + 1)
    return found


def simulate(setup: Setup, *, seed: int = 1, precondition: bool = True) -> Report:
    return Run(setup, seed=seed, precondition=precondition).play()
