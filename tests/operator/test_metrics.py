"""What /metrics carries besides capguard's own gauges: the standard process and Python
series, build info, reconcile errors and the work queue, and no `_created` series."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import aiohttp
import pytest
from operator_harness import Kube, StartOperator, eventually, metric
from prometheus_client import core, parser

from capguard import metrics as metrics_
from capguard.core import drift
from capguard.handlers import narrator, reconcile
from capguard.kube import events


def _names(text: str) -> set[str]:
    """The series names of the samples (HELP and TYPE lines left out)."""
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
            if line and not line.startswith("#")}


async def test_metrics_carry_process_python_and_build_info_and_no_created_series(
    kube: Kube, start_operator: StartOperator
) -> None:
    await kube.engines("e0")
    await kube.model("chat", 1, minAvailable=0)
    started = await start_operator()
    text = await eventually(started.metrics)
    names = _names(text)
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes",
            "process_open_fds", "python_gc_collections_total", "python_info"} <= names
    assert metric(text, "capguard_build_info", version=metrics_.version()) == 1
    assert metric(text, "capguard_reconcile_errors_total") == 0
    assert 'capguard_workqueue_depth{name="models"}' in text
    assert not [n for n in names if n.endswith("_created")], "counters export _created"


async def test_a_failed_pass_counts_as_a_reconcile_error(
    kube: Kube, start_operator: StartOperator, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def fail(self: reconcile.Reconciler) -> reconcile.PassResult:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(reconcile.Reconciler, "reconcile_once", fail)
    started = await start_operator()

    async def errors() -> float:
        return metric(await started.metrics(), "capguard_reconcile_errors_total") or 0.0

    assert await eventually(errors) >= 1


class _Recorder:
    def record(self, event: events.Event) -> None:
        pass


def test_a_replica_that_stops_leading_drops_its_model_and_pool_gauges() -> None:
    metrics = metrics_.Metrics()
    told = narrator.Narrator(recorder=_Recorder(), metrics=metrics,  # type: ignore[arg-type]
                             leading=False)
    found = drift.ModelDrift(desired=2, serving=1, floor=1)
    told.model(("default", "chat"), found)
    assert not _model_series(metrics), "a standby exported a model"
    told.lead(True)
    told.model(("default", "chat"), found)
    assert metric(metrics.render().decode(), "capguard_model_serving_units", model="chat") == 1
    told.lead(False)
    assert not _model_series(metrics)


def _model_series(metrics: metrics_.Metrics) -> set[str]:
    return {n for n in _names(metrics.render().decode()) if n.startswith("capguard_model_")}


class _HeldCollector:
    """A collector that holds the scrape until released: a page that takes forever."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def describe(self) -> Iterator[core.Metric]:
        # Registering asks a collector without describe() to collect: that would hold the
        # test itself for the whole timeout, and set `entered` before any scrape.
        yield core.GaugeMetricFamily("capguard_test_held", "Held until released.")

    def collect(self) -> Iterator[core.Metric]:
        self.entered.set()
        self.release.wait(timeout=30)  # bounded, so a broken test cannot hang the suite
        yield core.GaugeMetricFamily("capguard_test_held", "Held until released.", value=1)


async def test_the_loop_answers_probes_while_a_scrape_renders(
    start_operator: StartOperator,
) -> None:
    started = await start_operator()
    held = _HeldCollector()
    started.handles.metrics.registry.register(held)
    base = f"http://127.0.0.1:{started.handles.metrics_port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        scrape = asyncio.create_task(_get(session, f"{base}/metrics"))
        assert await asyncio.to_thread(held.entered.wait, 10), "the scrape never rendered"
        # The page is being rendered right now; the operator's loop still answers.
        assert await _get(session, f"{base}/livez") == (200, "ok\n")
        assert await _get(session, f"{base}/readyz") in ((200, "ok\n"), (
            503, "the first LIST of the cluster is not done\n"))
        assert not scrape.done(), "the scrape ended before it was released"
        held.release.set()
        status, page = await scrape
    assert status == 200
    assert metric(page, "capguard_test_held") == 1


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


def test_a_models_series_are_the_labelled_gauges_they_always_were() -> None:
    metrics = metrics_.Metrics()
    metrics.set_model(key=("default", "chat"), desired=4, serving=1, floor=2)
    metrics.set_model(key=("default", "gone"), desired=1, serving=1, floor=0)
    metrics.set_model(key=("team-b", "idle"), desired=0, serving=0, floor=0)
    metrics.set_shortfall(key=("default", "chat"), allocated=3, shortfall=2, pool="a")
    metrics.set_shortfall(key=("default", "chat"), allocated=3, shortfall=1, pool='h100,"x"')
    metrics.forget_models_except([("default", "chat"), ("team-b", "idle")])
    families = {f.name: f for f in parser.text_string_to_metric_families(
        metrics.render().decode()) if f.name.startswith("capguard_model_")}
    assert {(f.type, bool(f.documentation)) for f in families.values()} == {("gauge", True)}
    found = {(s.name, tuple(sorted(s.labels.items())), s.value)
             for f in families.values() for s in f.samples}
    chat, idle = (("model", "chat"), ("namespace", "default")), (("model", "idle"),
                                                                 ("namespace", "team-b"))
    assert found == {
        ("capguard_model_desired_units", chat, 4), ("capguard_model_serving_units", chat, 1),
        ("capguard_model_floor_units", chat, 2), ("capguard_model_drift_units", chat, 3),
        ("capguard_model_serving_ratio", chat, 0.25),
        ("capguard_model_allocated_units", chat, 3),
        ("capguard_model_floor_shortfall_units", (*chat, ("pool", 'h100,"x"')), 1),
        ("capguard_model_desired_units", idle, 0), ("capguard_model_serving_units", idle, 0),
        ("capguard_model_floor_units", idle, 0), ("capguard_model_drift_units", idle, 0),
        ("capguard_model_serving_ratio", idle, 1),
    }
