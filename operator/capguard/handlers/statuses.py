"""Status rendering for a pass: what each object's status should say, and which differ.

`status.py` renders one status (pure); this module walks a namespace's objects, renders
what the step's results say, and returns only the statuses worth a write. It remembers
what it found current, so a steady fleet of a thousand models costs no rendering.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Final

from capguard.core import drift, holdings, pipeline, specs
from capguard.handlers import records
from capguard.handlers import status as status_
from capguard.kube import client

# secondsInState is refreshed at most this often when nothing else changed.
BREAKER_STATUS_REFRESH: Final = 30.0


@dataclasses.dataclass(frozen=True)
class StatusWrite:
    resource: client.Resource
    meta: records.Meta
    status: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Invalid:
    kind: str
    meta: records.Meta
    error: specs.SpecError
    write: StatusWrite | None  # None: the status already says so


_Inputs = tuple[drift.ModelDrift, int, str | None]


class StatusBook:
    def __init__(self) -> None:
        # (namespace, model) -> (record, inputs) last found needing no write
        self._current: dict[tuple[str, str], tuple[records.ModelRecord, _Inputs]] = {}
        self._breaker_written_at: dict[tuple[str, str], float] = {}

    def models(
        self, namespace: str, found: Iterable[records.ModelRecord], *,
        drifts: Mapping[str, drift.ModelDrift], failed: Mapping[str, int],
        held_by: Mapping[str, str], now: float,
    ) -> list[StatusWrite]:
        writes = []
        for record in found:
            model = record.value
            if model is None:
                continue
            key = (namespace, model.name)
            inputs = (drifts[model.name], failed.get(model.name, 0), held_by.get(model.name))
            before = self._current.pop(key, None)
            if before is not None and before[0] is record and before[1] == inputs:
                self._current[key] = before  # same object, same numbers: still no write
                continue
            wanted = model_status(record, inputs=inputs, now=now)
            if status_.changed(record.status, wanted):
                writes.append(StatusWrite(client.MODELS, record.meta, wanted))
            else:
                self._current[key] = (record, inputs)
        return writes

    def forget(self, namespace: str, names: Iterable[str]) -> None:
        """These models' status is newer than what the book last saw: look again."""
        for name in names:
            self._current.pop((namespace, name), None)

    def breakers(
        self, namespace: str, found: Iterable[records.BreakerRecord], *,
        result: pipeline.StepResult,
    ) -> list[StatusWrite]:
        writes = []
        held = holdings.of(result)
        for record in found:
            name = record.meta.name
            snapshot = result.breakers.get(name)
            if snapshot is None:
                continue
            wanted = status_.breaker_status(
                record=record, snapshot=snapshot, plan=result.release_plans.get(name),
                refused=result.last_refused_batches.get(name), now=result.now,
                holding=held.get(name))
            key = (namespace, name)
            stale = result.now - self._breaker_written_at.get(key, 0.0) >= BREAKER_STATUS_REFRESH
            if status_.changed(record.status, wanted) or stale:
                self._breaker_written_at[key] = result.now
                writes.append(StatusWrite(client.BREAKERS, record.meta, wanted))
        return writes


def model_status(record: records.ModelRecord, *, inputs: _Inputs, now: float) -> dict[str, Any]:
    assert record.value is not None
    found, failed, held = inputs
    return status_.model_status(model=record.value, view=found, failed=failed,
                                existing=record.status, held_reason=held, now=now)


def invalid(
    engines: Iterable[records.EngineRecord], models: Iterable[records.ModelRecord],
    breakers: Iterable[records.BreakerRecord], *, now: float,
) -> list[Invalid]:
    """A bad spec: a False condition (when status does not say so yet) and an Event."""
    found: list[tuple[client.Resource, str, records.Record[Any]]] = []
    found += [(client.ENGINES, "InferenceEngine", r) for r in engines if r.error]
    found += [(client.MODELS, "ModelCapacity", r) for r in models if r.error]
    found += [(client.BREAKERS, "CircuitBreaker", r) for r in breakers if r.error]
    reports = []
    for resource, kind, record in found:
        assert record.error is not None
        builder = (status_.invalid_model_status if resource is client.MODELS
                   else status_.invalid_status)
        wanted = builder(error=record.error, existing=record.status,
                         generation=record.meta.generation, now=now)
        write = (StatusWrite(resource, record.meta, wanted)
                 if status_.changed(record.status, wanted) else None)
        reports.append(Invalid(kind, record.meta, record.error, write))
    return reports
