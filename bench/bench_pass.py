"""Time the parts of one full reconcile pass in-process, and how each grows with size.

No server and no HTTP: the operator's index (`handlers.index.Index`) is fed object
bodies as a LIST page brings them (the shapes `bench_operator.py` seeds: engines Serving
the model they are bound to, in pools pool-0..pool-9 with one capacity unit each, models
with `spec.replicas`, one CircuitBreaker), and one namespace's pass is run the way
`handlers.reconcile.Reconciler` runs it: `view.snapshot`, `view.build_fleet` or
`view.derive_fleet` (only when a planning input changed: a steady pass reuses the fleet,
a change is applied to the last one, as the operator does), the
pipeline's `step` (the operator's own `reconcile.Config().pipeline()`: guarded, at most
1,000 assigns a step), `statuses.StatusBook.models`, the gauges (`narrator.models` and
`pools`) and the engine and breaker writes (`driver.writes`, `StatusBook.breakers`,
`statuses.invalid`). Status writes a pass returns are applied back to the index, as the
watch would bring them. Not timed: the HTTP writes themselves, and waiting for events.

Per size it prints ms per part (median of `--repeats`) for:

- the first pass after the LIST (every status written for the first time);
- the second pass (the first one's status writes came back: each model looked at again);
- a steady pass (nothing changed);
- a one-model change (one model's `spec.replicas` + 1, a new generation);
- a one-engine change (one engine's status phase Serving -> Loading);
- and `planner.plan` alone for the one-model change, on the fleet derived from the last
  (the allocation it reads computed first, then the planning itself).

Then the growth exponent of each between consecutive sizes, log(t2/t1) / log(n2/n1) with
n the engines: ~1 is linear, ~0 constant, and above 1.2 is flagged as superlinear (parts
under 0.5 ms are timer noise and get none).

    python bench/bench_pass.py [--sizes 10000:1000,30000:3000,50000:5000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import math
import statistics
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any, Final

from capguard import metrics as metrics_
from capguard.core import fleet as fleet_
from capguard.core import pipeline, planner
from capguard.handlers import driver, index, narrator, reconcile, statuses
from capguard.handlers import status as status_
from capguard.handlers import view as view_
from capguard.kube import client, events

NAMESPACE: Final = "bench"
API_VERSION: Final = "capguard.dev/v1alpha1"
POOLS: Final = 10
SUPERLINEAR: Final = 1.2
NOISE_MS: Final = 0.5  # a part this short has no growth worth showing
PARTS: Final = ("snapshot", "build_fleet", "step", "statuses", "gauges", "engine writes")
SCENARIOS: Final = ("first pass", "second pass", "steady pass", "one-model change",
                    "one-engine change")
PLAN_PARTS: Final = ("allocation", "plan")


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """"10000:1000,30000:3000" -> [(10000, 1000), (30000, 3000)] (engines:models)."""
    sizes = []
    for pair in text.split(","):
        engines, models = pair.split(":")
        sizes.append((int(engines), int(models)))
    return sizes


def growth(t1: float, t2: float, *, n1: int, n2: int) -> float | None:
    """The exponent k in t ~ n^k between two sizes (None when a time is ~0 or n equal)."""
    if t1 <= 0 or t2 <= 0 or n1 == n2:
        return None
    return math.log(t2 / t1) / math.log(n2 / n1)


def shown_growth(k: float | None) -> str:
    if k is None:
        return "n/a"
    return f"{k:.2f}" + (" SUPERLINEAR" if k > SUPERLINEAR else "")


# ---- the cluster as LIST pages bring it -------------------------------------------------------

class Cluster:
    """The objects' bodies, each apply with the next resourceVersion (as the server does)."""

    def __init__(self, *, engines: int, models: int) -> None:
        self.per_model = engines // models
        self.version = 0
        self.since = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.breakers = [self._body("CircuitBreaker", "fleet", spec={})]
        self.models = {f"m{m}": self._body("ModelCapacity", f"m{m}", labels={"app": "bench"},
                                           spec={"replicas": self.per_model})
                       for m in range(models)}
        self.engines = {f"e{e}": self._engine(e) for e in range(engines)}

    def _next_version(self) -> str:
        self.version += 1
        return str(self.version)

    def _body(self, kind: str, name: str, *, spec: dict[str, Any],
              labels: dict[str, str] | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "namespace": NAMESPACE, "uid": f"{kind}/{name}",
                                "generation": 1, "resourceVersion": self._next_version()}
        if labels:
            meta["labels"] = labels
        return {"apiVersion": API_VERSION, "kind": kind, "metadata": meta, "spec": spec}

    def _engine(self, e: int) -> dict[str, Any]:
        model = f"m{e // self.per_model}"
        body = self._body("InferenceEngine", f"e{e}",
                          spec={"pool": f"pool-{e % POOLS}", "capacityUnits": 1,
                                "modelRef": model})
        body["status"] = {"phase": "Serving", "model": model, "since": self.since,
                          "observedGeneration": 1, "message": "seeded"}
        return body

    def changed(self, body: dict[str, Any], *, spec: Mapping[str, Any] | None = None,
                status: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A new version of `body` (a merge of spec and status), as a watch would bring it."""
        meta = {**body["metadata"], "resourceVersion": self._next_version()}
        new = {**body, "metadata": meta}
        if spec is not None:
            new["spec"] = {**body["spec"], **spec}
            meta["generation"] = meta["generation"] + 1
        if status is not None:
            new["status"] = {**(body.get("status") or {}), **status}
        return new


# ---- one pass, as the reconcile loop runs it --------------------------------------------------

@dataclasses.dataclass
class Operator:
    """The reconcile loop's state for one namespace."""

    cluster: Cluster
    found: index.Index = dataclasses.field(default_factory=index.Index)
    core: pipeline.Pipeline = dataclasses.field(
        default_factory=lambda: pipeline.Pipeline(reconcile.Config().pipeline()))
    book: statuses.StatusBook = dataclasses.field(default_factory=statuses.StatusBook)
    narrate: narrator.Narrator = dataclasses.field(default_factory=lambda: narrator.Narrator(
        recorder=events.Recorder(api=client.Api(), instance="bench"),
        metrics=metrics_.Metrics(), leading=True))
    fleet: tuple[int, fleet_.Fleet] | None = None  # (planning version, fleet) as cached

    def list_all(self) -> float:
        """Seconds to apply the LIST of every kind to the index."""
        started = time.perf_counter()
        self.found.engines.listed(self.cluster.engines.values())
        self.found.models.listed(self.cluster.models.values())
        self.found.breakers.listed(self.cluster.breakers)
        return time.perf_counter() - started

    def one_pass(self, now: float) -> dict[str, float]:
        """ms per part of one full pass; its model status writes are then applied back."""
        parts: dict[str, float] = {}
        with timed(parts, "snapshot"):
            views = view_.snapshot(self.found)
        view = views[NAMESPACE]
        version = self.found.planning_versions.get(NAMESPACE, 0)
        with timed(parts, "build_fleet"):  # as `Reconciler._fleet` does it
            if self.fleet is None or view.rebuild:
                self.fleet = (version, view_.build_fleet(view))
            elif self.fleet[0] != version:
                self.fleet = (version, view_.derive_fleet(self.fleet[1], view))
        fleet = self.fleet[1]
        with timed(parts, "step"):
            step = self.core.step(view.observed(fleet, established=self.core.signals.established),
                                  now)
        with timed(parts, "statuses"):
            writes = self.book.models(NAMESPACE, view.models, drifts=step.report.models,
                                      failed=status_.failed_engines(fleet),
                                      held_by=step.held_by, now=now)
        with timed(parts, "gauges"):
            self.narrate.models(NAMESPACE, step.report.models)
            self.narrate.pools(NAMESPACE, fleet.allocation.pools)
        with timed(parts, "engine writes"):
            driver.writes(fleet, found=view.engines, executed={}, config=None, now=now,
                          roll=lambda: 0.5)
            self.book.breakers(NAMESPACE, view.breakers, result=step)
            statuses.invalid(view.engines, view.models, view.breakers, now=now)
        parts["total"] = sum(parts.values())
        self.write_back(writes)
        return parts

    def write_back(self, writes: list[statuses.StatusWrite]) -> None:
        for write in writes:
            if write.resource is client.MODELS:
                name = write.meta.name
                self.cluster.models[name] = self.cluster.changed(self.cluster.models[name],
                                                                 status=write.status)
                self.found.models.apply(self.cluster.models[name])

    def scale(self, name: str, *, by: int) -> None:
        body = self.cluster.models[name]
        self.cluster.models[name] = self.cluster.changed(
            body, spec={"replicas": body["spec"]["replicas"] + by})
        self.found.models.apply(self.cluster.models[name])

    def set_phase(self, name: str, phase: str) -> None:
        body = self.cluster.engines[name]
        self.cluster.engines[name] = self.cluster.changed(body, status={"phase": phase})
        self.found.engines.apply(self.cluster.engines[name])


@contextlib.contextmanager
def timed(parts: dict[str, float], part: str) -> Iterator[None]:
    """Adds the block's ms to parts[part]."""
    started = time.perf_counter()
    yield
    parts[part] = parts.get(part, 0.0) + (time.perf_counter() - started) * 1000


# ---- the measurements -------------------------------------------------------------------------

Table = dict[str, dict[str, float]]  # scenario -> part -> ms


def median_parts(samples: list[dict[str, float]]) -> dict[str, float]:
    return {part: statistics.median(s[part] for s in samples) for part in samples[0]}


def started(*, engines: int, models: int) -> tuple[Operator, float, dict[str, float],
                                                    dict[str, float]]:
    """A fresh operator after its LIST: (it, LIST ms, first pass, second pass)."""
    operator = Operator(Cluster(engines=engines, models=models))
    listed = operator.list_all() * 1000
    gc.collect()
    gc.freeze()  # as the operator does after its first LIST
    now = time.time()
    return operator, listed, operator.one_pass(now), operator.one_pass(now + 1)


def measure(*, engines: int, models: int, repeats: int) -> tuple[Table, float]:
    """ms per part of each scenario (median of `repeats`), and the LIST's ms."""
    runs = []
    for _ in range(repeats):
        gc.unfreeze()
        runs.append(started(engines=engines, models=models))
    operator = runs[-1][0]
    table: Table = {"first pass": median_parts([r[2] for r in runs]),
                    "second pass": median_parts([r[3] for r in runs])}
    listed = statistics.median(r[1] for r in runs)
    now = time.time() + 10
    table["steady pass"] = median_parts([operator.one_pass(now + i) for i in range(repeats)])
    now += repeats
    changes: dict[str, list[dict[str, float]]] = {"one-model change": [],
                                                  "one-engine change": []}
    for i in range(repeats):
        now += 3
        operator.scale(f"m{i + 1}", by=1)
        changes["one-model change"].append(operator.one_pass(now))
        operator.one_pass(now + 1)  # its status write came back
        operator.set_phase(f"e{i * operator.cluster.per_model}", "Loading")
        changes["one-engine change"].append(operator.one_pass(now + 2))
        operator.set_phase(f"e{i * operator.cluster.per_model}", "Serving")
        operator.scale(f"m{i + 1}", by=-1)  # back: each change meets the fleet as it was
        operator.one_pass(now + 2.5)
        operator.one_pass(now + 2.6)
    table.update({name: median_parts(samples) for name, samples in changes.items()})
    planned = []
    for i in range(repeats):
        planned.append(planning(operator, model=f"m{repeats + 1 + i}"))
        operator.scale(f"m{repeats + 1 + i}", by=-1)
        operator.one_pass(now + 3 + i)
    table["planner.plan (one-model change)"] = median_parts(planned)
    gc.unfreeze()
    return table, listed


def planning(operator: Operator, *, model: str) -> dict[str, float]:
    """`planner.plan` on the fleet after one model's change, derived from the last one as
    the operator does: the allocation it reads first, then the planning itself."""
    operator.scale(model, by=1)
    assert operator.fleet is not None
    view = view_.snapshot(operator.found)[NAMESPACE]
    fleet = view_.derive_fleet(operator.fleet[1], view)
    operator.fleet = (operator.found.planning_versions.get(NAMESPACE, 0), fleet)
    parts: dict[str, float] = {}
    with timed(parts, "allocation"):
        fleet.allocation  # noqa: B018 (a cached property: computed here, read by plan)
    with timed(parts, "plan"):
        planner.plan(fleet)
    parts["total"] = sum(parts.values())
    return parts


# ---- the tables -------------------------------------------------------------------------------

def print_grid(title: str, rows: Mapping[str, Mapping[str, str]]) -> None:
    columns = [*PARTS, *PLAN_PARTS, "total"]
    columns = [c for c in columns if any(c in cells for cells in rows.values())]
    header = ["", *columns]
    lines = [header, *([name, *(cells.get(c, "") for c in columns)]
                       for name, cells in rows.items())]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    print(f"\n{title}")
    for line in lines:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(line, widths, strict=True))).rstrip())


def print_size(engines: int, models: int, table: Table, listed: float) -> None:
    print_grid(f"one reconcile pass, {engines:,} engines / {models:,} models, ms "
               f"(LIST into the index: {listed:,.0f} ms)",
               {name: {part: f"{ms:.2f}" if ms < 1 else f"{ms:.1f}" for part, ms in parts.items()}
                for name, parts in table.items()})


def print_growth(sizes: list[tuple[int, int]], tables: list[Table]) -> list[str]:
    """Growth exponents between consecutive sizes; returns the superlinear cells."""
    flagged = []
    for (n1, _), (n2, _), t1, t2 in zip(sizes, sizes[1:], tables, tables[1:], strict=False):
        rows: dict[str, dict[str, str]] = {}
        for name, parts in t2.items():
            rows[name] = {}
            for part, ms in parts.items():
                before = t1[name][part]
                # Below NOISE_MS a part is timer noise (a reused fleet, a cached answer).
                k = None if max(before, ms) < NOISE_MS else growth(before, ms, n1=n1, n2=n2)
                rows[name][part] = shown_growth(k).replace(" SUPERLINEAR", "!")
                if k is not None and k > SUPERLINEAR:
                    flagged.append(f"{name} / {part}: {k:.2f} ({n1:,} -> {n2:,} engines)")
        print_grid(f"growth exponent {n1:,} -> {n2:,} engines (1 = linear, ! = above "
                   f"{SUPERLINEAR}: superlinear)", rows)
    return flagged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=parse_sizes,
                        default=parse_sizes("10000:1000,30000:3000,50000:5000"),
                        help="engines:models,... (default 10000:1000,30000:3000,50000:5000)")
    parser.add_argument("--repeats", type=int, default=3, help="median of this many")
    args = parser.parse_args()
    tables = []
    for engines, models in args.sizes:
        table, listed = measure(engines=engines, models=models, repeats=args.repeats)
        print_size(engines, models, table, listed)
        tables.append(table)
    flagged = print_growth(args.sizes, tables)
    if flagged:
        print("\nsuperlinear:\n  " + "\n  ".join(flagged))
    return 0


if __name__ == "__main__":
    sys.exit(main())
