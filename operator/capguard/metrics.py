"""Every Prometheus metric capguard exports, defined in one place.

The names are a contract: the alert rules in ``deploy/`` and the dashboard are written
against them. Base units, ``_total`` on counters, and no engine names in labels (a
fleet has thousands of engines; it has tens or hundreds of models and breakers).

Each operator owns one ``Metrics`` (with its own ``CollectorRegistry``), so two
operators in one test process never share a counter. Each registry also carries the
standard ``process_*``, ``python_gc_*`` and ``python_info`` series, and where a
controller-runtime operator has a metric for the same thing (reconcile errors, work-queue
depth, build info), capguard's name follows it with the ``capguard_`` prefix.

Counters export no ``_created`` series: Prometheus reads them as gauges of start times
(one more series per label set, useless in a query), so they are off for the process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import importlib.metadata
import platform
from collections.abc import Callable, Iterable, Mapping
from typing import Final

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import utils as prometheus_utils

import capguard

# Process-global in prometheus_client: every registry in the process, once, at import.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream

ACTION_TYPES: Final = ("assign", "drain", "reassign")
ACTION_RESULTS: Final = ("executed", "refused", "expired", "conflict", "failed")
QUEUE_STATES: Final = ("pending", "held")
BREAKER_STATES: Final = ("Closed", "Open", "HalfOpen")
CONTENT_TYPE: Final = prometheus_client.CONTENT_TYPE_LATEST
# One thread renders every page of the process: a scrape never holds the event loop, and
# scrapes never take more than one core's turn from it (the GIL is shared either way).
_RENDERER: Final = concurrent.futures.ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="capguard-metrics")

# A gateway answers in milliseconds from a model server and in tens of seconds from a slow one.
_GATEWAY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Reconciles are milliseconds when healthy and seconds when the API server struggles.
_RECONCILE_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

ModelKey = tuple[str, str]  # (namespace, model)
BreakerKey = tuple[str, str]  # (namespace, breaker)
PoolKey = tuple[str, str]  # (namespace, pool)


def version() -> str:
    """The installed distribution's version; the source tree's when not installed."""
    try:
        return importlib.metadata.version("capguard")
    except importlib.metadata.PackageNotFoundError:
        return capguard.__version__


def _registry() -> CollectorRegistry:
    """A fresh registry carrying the standard process_*, python_gc_* and python_info series."""
    registry = CollectorRegistry(auto_describe=True)
    prometheus_client.ProcessCollector(registry=registry)
    prometheus_client.PlatformCollector(registry=registry)
    prometheus_client.GCCollector(registry=registry)
    return registry


class Metrics:
    """The operator's metrics; a fresh registry per instance."""

    def __init__(self) -> None:
        self.registry = _registry()
        r = self.registry
        self.build_info = Gauge(
            "capguard_build_info", "Always 1; the labels say which capguard and Python run.",
            ("version", "python_version"), registry=r)
        self.build_info.labels(version(), platform.python_version()).set(1)
        self.reconcile_errors_total = Counter(
            "capguard_reconcile_errors_total",
            "Reconcile passes that failed with an error (logged with its traceback).",
            registry=r)
        self.workqueue_depth = Gauge(
            "capguard_workqueue_depth",
            "Models whose status awaits the fast path (changed since it last looked).",
            ("name",), registry=r)
        breaker_labels = ("namespace", "breaker")
        self.queue_actions = Gauge(
            "capguard_queue_actions",
            "Queued actions: held by a breaker, or pending on rate limits, budget or floor.",
            ("state",), registry=r)
        self.queue_oldest_plan_age_seconds = Gauge(
            "capguard_queue_oldest_plan_age_seconds",
            "Age of the oldest plan still in the action queue (0 when empty).", registry=r)
        self.actions_total = Counter(
            "capguard_actions_total", "Actions by type and what became of them.",
            ("type", "result"), registry=r)
        self.refusals_total = Counter(
            "capguard_refusals_total", "Actions the gate refused, by the core's reason.",
            ("reason",), registry=r)
        self.refused_batches_total = Counter(
            "capguard_refused_batches_total",
            "Post-pause backlogs refused as a whole on a breaker's release.",
            breaker_labels, registry=r)
        self.breaker_state = Gauge(
            "capguard_breaker_state", "1 for the breaker's current state, 0 for the others.",
            (*breaker_labels, "state"), registry=r)
        self.breaker_state_seconds = Gauge(
            "capguard_breaker_state_seconds", "Seconds the breaker has been in its current state.",
            breaker_labels, registry=r)
        self.reconcile_duration_seconds = Histogram(
            "capguard_reconcile_duration_seconds",
            "One reconcile pass: snapshot, plan, gate, write.",
            buckets=_RECONCILE_BUCKETS, registry=r)
        self.leader = Gauge(
            "capguard_leader", "1 when this replica holds the leader lease and acts.", registry=r)
        self.planner_view_stale_engines = Gauge(
            "capguard_planner_view_stale_engines",
            "Engines whose queued plan was made from a resourceVersion they no longer have.",
            registry=r)
        self.pool_supply_units = Gauge(
            "capguard_pool_supply_units",
            "Capacity units of the pool's usable engines (not failed, not cordoned idle).",
            ("namespace", "pool"), registry=r)
        self.pool_floor_units = Gauge(
            "capguard_pool_floor_units",
            "Floors of the models whose selector matches an engine of the pool.",
            ("namespace", "pool"), registry=r)
        self.pool_desired_units = Gauge(
            "capguard_pool_desired_units",
            "Desired units of the models whose selector matches an engine of the pool.",
            ("namespace", "pool"), registry=r)
        self._rendering: asyncio.Future[bytes] | None = None
        self._models = _ModelSeries()
        self._pools: set[PoolKey] = set()
        self._breakers: set[BreakerKey] = set()
        # Pre-create the bounded label sets so a dashboard shows 0, not "no data".
        for kind in ACTION_TYPES:
            for result in ACTION_RESULTS:
                self.actions_total.labels(type=kind, result=result)
        for state in QUEUE_STATES:
            self.queue_actions.labels(state=state).set(0)

    def measure_workqueue(self, *, name: str, depth: Callable[[], int]) -> None:
        """Read the queue's depth at each scrape: it empties in milliseconds, so a value
        set by the loop would show only what the loop last left behind."""
        self.workqueue_depth.labels(name=name).set_function(depth)

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry) + self._models.render()

    async def render_aside(self) -> bytes:
        """The page, rendered in the metrics thread while the loop goes on reacting to events.

        Scrapes that arrive during a render share it (two Prometheus replicas, or one
        scraping faster than a page renders, cost one render, not a queue of them). Safe
        to read from that thread: prometheus-client copies each metric's series under its
        lock, and a value set meanwhile shows either before or after, never torn."""
        if self._rendering is None or self._rendering.done():
            self._rendering = asyncio.get_running_loop().run_in_executor(_RENDERER, self.render)
        # A scraper that hangs up does not cancel the render the others wait for.
        return await asyncio.shield(self._rendering)

    def set_model(self, *, key: ModelKey, desired: int, serving: int, floor: int) -> None:
        ratio = serving / desired if desired > 0 else 1.0
        self._models.set(key, 0, (desired, serving, floor, max(0, desired - serving), ratio))

    def set_shortfall(self, *, key: ModelKey, allocated: int, shortfall: int, pool: str) -> None:
        self._models.set(key, _SHORTFALL_AT, (allocated, shortfall), pool=pool)

    def forget_models_except(self, keep: Iterable[ModelKey]) -> None:
        """Drop the series of models that are gone, so a deleted model does not alert forever."""
        self._models.forget_except(keep)

    def set_pool(self, *, key: PoolKey, supply: int, floors: int, desired: int) -> None:
        self._pools.add(key)
        self.pool_supply_units.labels(*key).set(supply)
        self.pool_floor_units.labels(*key).set(floors)
        self.pool_desired_units.labels(*key).set(desired)

    def forget_pools_except(self, keep: Iterable[PoolKey]) -> None:
        gone = self._pools - set(keep)
        for key in gone:
            for gauge in (self.pool_supply_units, self.pool_floor_units, self.pool_desired_units):
                gauge.remove(*key)
        self._pools -= gone

    def set_breaker(self, *, key: BreakerKey, state: str, seconds_in_state: float) -> None:
        namespace, breaker = key
        self._breakers.add(key)
        for known in BREAKER_STATES:
            self.breaker_state.labels(namespace, breaker, known).set(1 if known == state else 0)
        self.breaker_state_seconds.labels(namespace, breaker).set(seconds_in_state)

    def forget_breakers_except(self, keep: Iterable[BreakerKey]) -> None:
        gone = self._breakers - set(keep)
        for namespace, breaker in gone:
            for known in BREAKER_STATES:
                self.breaker_state.remove(namespace, breaker, known)
            self.breaker_state_seconds.remove(namespace, breaker)
        self._breakers -= gone

    def set_queue(self, *, held: int, pending: int, oldest_plan_age: float) -> None:
        self.queue_actions.labels(state="held").set(held)
        self.queue_actions.labels(state="pending").set(pending)
        self.queue_oldest_plan_age_seconds.set(oldest_plan_age)

    def count_action(self, *, kind: str, result: str, amount: int = 1) -> None:
        self.actions_total.labels(type=kind, result=result).inc(amount)

    def count_refusals(self, by_reason: Mapping[str, int]) -> None:
        for reason, amount in by_reason.items():
            self.refusals_total.labels(reason=reason).inc(amount)


@dataclasses.dataclass(frozen=True)
class _Family:
    name: str
    help: str
    labels: tuple[str, ...] = ("namespace", "model")


# A model's series, in the order `_ModelSeries` keeps their lines.
_MODEL_FAMILIES: Final = (
    _Family("capguard_model_desired_units", "Capacity units the model asks for (spec.replicas)."),
    _Family("capguard_model_serving_units", "Capacity units serving the model now."),
    _Family("capguard_model_floor_units", "Capacity units that must stay serving (minAvailable)."),
    _Family("capguard_model_drift_units", "Desired minus serving capacity units (0 or more)."),
    _Family("capguard_model_serving_ratio",
            "Serving over desired units (1 when nothing desired)."),
    _Family("capguard_model_allocated_units",
            "Capacity units the model is allocated: desired, unless engines are scarce "
            "(floors first, then priority, then max-min fair)."),
    _Family("capguard_model_floor_shortfall_units",
            "Floor units the supply cannot cover; pool lists the pools its selector matches.",
            ("namespace", "model", "pool")),
)
_SHORTFALL_AT: Final = 5  # allocated and shortfall: set only when engines are scarce


class _ModelSeries:
    """Every model's gauges as exposition lines, written when a value changes.

    A fleet has thousands of models and a scrape reads every one of their series: through
    prometheus-client's labelled gauges that cost ~50 us of CPU per model per scrape (its
    collect and format, per sample), here it is a join. Each model's lines are one
    immutable tuple, replaced whole, so the metrics thread reads a snapshot of the dict's
    values (copied in one C call) while the loop goes on changing them, and a model's
    series on a page always come from one moment."""

    def __init__(self) -> None:
        self._lines: dict[ModelKey, tuple[str, ...]] = {}

    def set(self, key: ModelKey, at: int, values: tuple[float, ...], *, pool: str = "") -> None:
        namespace, model = key
        lines = list(self._lines.get(key, ("",) * len(_MODEL_FAMILIES)))
        for offset, value in enumerate(values):
            family = _MODEL_FAMILIES[at + offset]
            labels = {"namespace": namespace, "model": model, "pool": pool}
            lines[at + offset] = _sample(family, {k: labels[k] for k in family.labels}, value)
        self._lines[key] = tuple(lines)

    def forget_except(self, keep: Iterable[ModelKey]) -> None:
        for key in self._lines.keys() - set(keep):
            del self._lines[key]

    def render(self) -> bytes:
        rows = tuple(self._lines.values())  # one C call: no loop write lands half way
        parts: list[str] = []
        for at, family in enumerate(_MODEL_FAMILIES):
            parts.append(f"# HELP {family.name} {_escape_help(family.help)}\n"
                         f"# TYPE {family.name} gauge\n")
            parts.extend(row[at] for row in rows if row[at])
        return "".join(parts).encode()


def _sample(family: _Family, labels: Mapping[str, str], value: float) -> str:
    """One line as prometheus-client writes it: labels sorted, values as Go prints them."""
    pairs = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(labels.items()))
    value_text: str = prometheus_utils.floatToGoString(value)  # type: ignore[no-untyped-call]
    return f"{family.name}{{{pairs}}} {value_text}\n"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class GatewayMetrics:
    """`capguard gateway`'s series (a process of its own, so a registry of its own).

    Labelled by model; a model no engine names is counted as one `_unknown` model, so a
    client cannot grow the label set."""

    def __init__(self) -> None:
        self.registry = _registry()
        r = self.registry
        self.requests = Counter(
            "capguard_gateway_requests", "Requests answered, by model and HTTP status code.",
            ("model", "code"), registry=r)
        self.duration = Histogram(
            "capguard_gateway_request_duration_seconds",
            "Time from a request's arrival to its answer.", ("model",),
            buckets=_GATEWAY_BUCKETS, registry=r)
        self.routable = Gauge(
            "capguard_gateway_routable_engines",
            "Engines a request for the model can be sent to.", ("model",), registry=r)
        self.retries = Counter(
            "capguard_gateway_upstream_retries",
            "Requests sent to another engine after one answered 429/503 or could not be "
            "reached.", registry=r)

    def render(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)
