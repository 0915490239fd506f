"""What the operator's index keeps per object: the parsed value, or why it did not parse.

An index value is small and frozen: the core's parsed spec plus the few metadata and
status fields the operator compares against (uid for Events, generation for
observedGeneration, the current status to avoid rewriting an unchanged one). The raw
body is not kept: 10,000 engines must fit in well under 200 MB.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from capguard.core import specs
from capguard.kube import heartbeats

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Meta:
    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str = ""


@dataclasses.dataclass(frozen=True)
class Record(Generic[T]):
    """One object: its parsed spec (`value`), or the error that kept it from parsing."""

    meta: Meta
    value: T | None
    error: specs.SpecError | None
    status: Mapping[str, Any]


EngineRecord = Record[specs.Engine]
ModelRecord = Record[specs.ModelSpec]
BreakerRecord = Record[specs.BreakerSpec]


def _record(body: Mapping[str, Any], parse: Callable[[Mapping[str, Any]], T],
            status: Mapping[str, Any]) -> Record[T]:
    try:
        return Record(meta_of(body), parse(body), None, status)
    except specs.SpecError as error:
        return Record(meta_of(body), None, error, status)


def meta_of(body: Mapping[str, Any]) -> Meta:
    metadata = body.get("metadata") or {}
    return Meta(
        namespace=str(metadata.get("namespace") or "default"),
        name=str(metadata.get("name") or ""),
        uid=str(metadata.get("uid") or ""),
        generation=int(metadata.get("generation") or 0),
        resource_version=str(metadata.get("resourceVersion") or ""),
    )


def _status(body: Mapping[str, Any]) -> Mapping[str, Any]:
    status = body.get("status")
    return dict(status) if isinstance(status, Mapping) else {}


def engine_record(body: Mapping[str, Any]) -> EngineRecord:
    # Engines keep only the status fields the driver and the invalid-spec report compare.
    status = _status(body)
    kept = {k: status[k] for k in ("observedGeneration", "conditions", "message") if k in status}
    return _record(body, _parse_engine, kept)


def _parse_engine(body: Mapping[str, Any]) -> specs.Engine:
    engine = specs.parse_engine(body)
    if (body.get("metadata") or {}).get("deletionTimestamp") and not engine.spec.cordoned:
        # An engine on its way out (held by a finalizer) gets no new model: as if cordoned.
        return dataclasses.replace(
            engine, spec=dataclasses.replace(engine.spec, cordoned=True))
    return engine


def model_record(body: Mapping[str, Any]) -> ModelRecord:
    return _record(body, specs.parse_model, _status(body))


def breaker_record(body: Mapping[str, Any]) -> BreakerRecord:
    return _record(body, specs.parse_breaker, _status(body))


def lease_record(body: Mapping[str, Any]) -> Record[heartbeats.Heartbeat]:
    """An engine's Lease: when its agent last renewed it, and for which engine object
    (None: it says nothing usable)."""
    return Record(meta_of(body), heartbeats.read(body), None, {})


def engine_models(record: EngineRecord) -> frozenset[str]:
    """The models an engine holds (bound to, or loading, serving, draining): the engines a
    model's status counts are exactly those holding it."""
    engine = record.value
    if engine is None:
        return frozenset()
    return frozenset(m for m in (engine.spec.model_ref, engine.model) if m)
