"""What /metrics carries besides capguard's own gauges: the standard process and Python
series, build info, reconcile errors and the work queue, and no `_created` series."""

from __future__ import annotations

import pytest
from operator_harness import Kube, StartOperator, eventually, metric

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
