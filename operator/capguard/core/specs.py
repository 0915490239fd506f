"""The one parser: CR bodies in, frozen values out, or a SpecError a person can act on.

Every body from the API server (or the simulator) enters the core here, so nothing
past this module ever sees a ``dict``. The CRD schemas in ``crds/`` are the one source of
fields, defaults and enums; this module mirrors them for bodies the API server never
defaulted (a test's, the simulator's). Each default is written once, on its dataclass
field, and the parser reads it from there (``default=ModelSpec.priority``), so a value
built in code and a parsed body agree; tests/crds/test_one_source.py fails when a default,
an enum or the duration syntax here drifts from the schemas.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import re
from collections.abc import Mapping
from typing import Final

from capguard import durations

ENGINE: Final = "InferenceEngine"
MODEL: Final = "ModelCapacity"
BREAKER: Final = "CircuitBreaker"
ACTION_ID_ANNOTATION: Final = "capguard.dev/action-id"

_PERCENT: Final = re.compile(r"^([0-9]+)%$")
# Kubernetes' label syntax (apimachinery's IsQualifiedName and IsValidLabelValue), written
# once: the selector rules of crds/*.yaml quote these patterns, and tests/crds/
# test_one_source.py fails when theirs differ. A name is at most 63 characters ({0,61}
# between its two ends); a key's prefix, a DNS subdomain, at most 253 (checked apart, as
# the CRDs do, since a regex cannot bound it and keep its shape).
_LABEL_NAME: Final = r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]"
LABEL_KEY: Final = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?" + _LABEL_NAME + "$")
LABEL_VALUE: Final = re.compile(f"^({_LABEL_NAME})?$")
LABEL_PREFIX_TOO_LONG: Final = re.compile(r"^[^/]{254}")
_LABEL_KEY_FIX: Final = (
    "write an optional prefix, a lowercase DNS subdomain of at most 253 characters, and "
    "'/', then a name of at most 63 characters of letters, digits, '-', '_' or '.', "
    "beginning and ending with a letter or digit, for example capguard.dev/pool or tier")
_LABEL_VALUE_FIX: Final = (
    "leave it empty or write at most 63 characters of letters, digits, '-', '_' or '.', "
    "beginning and ending with a letter or digit")


class Phase(enum.Enum):
    IDLE = "Idle"
    LOADING = "Loading"
    SERVING = "Serving"
    DRAINING = "Draining"
    FAILED = "Failed"


class SpecError(ValueError):
    """A body the core cannot understand; the message says which field and what to change."""

    def __init__(self, *, kind: str, name: str, field: str, problem: str, fix: str) -> None:
        self.kind = kind
        self.name = name
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(f"{kind} {name!r}: {field}: {problem}; {fix}")


@dataclasses.dataclass(frozen=True)
class IntOrPercent:
    """An absolute count or a percent of some total (Kubernetes int-or-string)."""

    value: int
    percent: bool = False

    def of(self, total: int, *, round_up: bool) -> int:
        if not self.percent:
            return self.value
        exact = self.value * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)


class SelectorOperator(enum.Enum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    operator: SelectorOperator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator is SelectorOperator.EXISTS:
            return self.key in labels
        if self.operator is SelectorOperator.DOES_NOT_EXIST:
            return self.key not in labels
        found = labels.get(self.key)
        if self.operator is SelectorOperator.IN:
            return found in self.values
        return found not in self.values


@dataclasses.dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector; the empty selector matches everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )


@dataclasses.dataclass(frozen=True)
class RateLimit:
    actions_per_minute: float
    burst: int = 1


@dataclasses.dataclass(frozen=True)
class AutoTrip:
    max_drift_ratio: float | None = None
    on_floor_breach: bool = True
    max_action_failure_rate: float | None = None
    window: float = 300.0


@dataclasses.dataclass(frozen=True)
class Approval:
    batch: str
    approved_by: str


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    pool: str
    accelerator: str | None = None
    capacity_units: int = 1
    model_ref: str | None = None
    cordoned: bool = False
    revision: str | None = None


@dataclasses.dataclass(frozen=True)
class Engine:
    """An engine as observed: what it should do (spec) and what it does (status)."""

    name: str
    spec: EngineSpec
    phase: Phase = Phase.IDLE
    model: str | None = None
    revision: str | None = None
    resource_version: str = ""
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    since: float | None = None
    last_action_id: str | None = None
    namespace: str = "default"
    # When the engine's agent last said it is alive (status.lastHeartbeatTime); None when
    # no agent ever did (the simulated driver writes none).
    heartbeat: float | None = None
    # Set by `engines.heard`: counted Failed because its agent is silent, not because it
    # said so. Its binding is kept (the engine may well still serve: an agent cut off
    # from the API server is not a dead engine), so the agent, back, finds it unchanged.
    silent: bool = False

    @property
    def units(self) -> int:
        return self.spec.capacity_units

    def serves(self, model: str) -> bool:
        """Serving this model now and staying with it (a rebound engine is about to leave)."""
        return self.phase is Phase.SERVING and self.model == model and self.spec.model_ref == model

    def waits(self, models: Mapping[str, object]) -> bool:
        """Bound by someone else than capguard (no action of capguard's wrote it) to a
        ModelCapacity that does not exist: capguard leaves the binding alone, the engine
        serves nothing until that model is created, and an Event says so (issue 11: a
        user's or a GitOps tool's modelRef is never silently overwritten)."""
        bound = self.spec.model_ref
        return bool(bound) and bound not in models and self.last_action_id is None

    def belongs_to(self, model: str) -> bool:
        """Bound to the model, or still holding it (loading or draining it)."""
        return self.spec.model_ref == model or self.model == model


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    replicas: int
    revision: str | None = None
    min_available: IntOrPercent = IntOrPercent(90, percent=True)
    max_unavailable: IntOrPercent = IntOrPercent(1)
    rate_limit: RateLimit | None = None
    priority: int = 0
    engine_selector: LabelSelector = LabelSelector()
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    resource_version: str = ""
    generation: int = 0
    namespace: str = "default"

    @property
    def floor_units(self) -> int:
        # A percent floor rounds up: 90% of 8 units keeps all 8, never 7.2 -> 7.
        return min(self.min_available.of(self.replicas, round_up=True), self.replicas)

    def max_unavailable_engines(self, engine_count: int) -> int:
        if not self.max_unavailable.percent:
            return self.max_unavailable.value
        # A percent budget rounds down but never to zero, or a small model could never move.
        return max(1, self.max_unavailable.of(engine_count, round_up=False))


@dataclasses.dataclass(frozen=True)
class BreakerSpec:
    name: str
    selector: LabelSelector = LabelSelector()
    open: bool = False
    auto_trip: AutoTrip | None = None
    pause_threshold: float = 300.0
    max_batch_after_pause: int = 3
    half_open_probes: int = 2
    max_plan_age: float = 600.0
    rate_limit: RateLimit | None = None
    approval: Approval | None = None
    resource_version: str = ""
    generation: int = 0
    namespace: str = "default"

    def governs(self, model: ModelSpec | None) -> bool:
        """The one governing rule: whether this breaker pauses actions for ``model``.

        An action is governed by every breaker that governs either side of its move.
        ``None`` is a departed model (the engines of a deleted ModelCapacity, drained as
        orphans): it is judged as unlabelled, so a breaker that selects every model still
        pauses it, and one that selects by label cannot tell.
        """
        return self.selector.matches(model.labels if model is not None else {})


def parse_duration(text: str) -> float:
    """Go-style durations (``90s``, ``5m``, ``1h30m``, ``250ms``) to seconds."""
    return durations.parse_go(text)


@dataclasses.dataclass(frozen=True)
class _Fields:
    """One object of a body, with enough context to blame the right field."""

    kind: str
    name: str
    path: str
    data: Mapping[str, object]

    def error(self, key: str, problem: str, fix: str) -> SpecError:
        field = f"{self.path}.{key}" if self.path else key
        return SpecError(kind=self.kind, name=self.name, field=field, problem=problem, fix=fix)

    def child(self, key: str) -> _Fields | None:
        raw = self.data.get(key)
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            raise self.error(key, f"is {_type(raw)}, not an object", "write it as a mapping")
        path = f"{self.path}.{key}" if self.path else key
        return _Fields(kind=self.kind, name=self.name, path=path, data=raw)

    def string(self, key: str, *, default: str | None = None, required: bool = False) -> str | None:
        raw = self.data.get(key)
        if raw is None or raw == "":
            if required:
                raise self.error(key, "is missing", "set it to a non-empty string")
            return default
        if not isinstance(raw, str):
            raise self.error(key, f"is {_type(raw)}, not a string", "write it as a string")
        return raw

    def required_string(self, key: str) -> str:
        found = self.string(key, required=True)
        assert found is not None  # required=True raised otherwise
        return found

    def integer(self, key: str, *, default: int | None, minimum: int | None = None) -> int:
        raw = self.data.get(key)
        if raw is None:
            if default is None:
                raise self.error(key, "is missing", "set it to an integer")
            return default
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise self.error(key, f"is {_type(raw)}, not an integer", "write a whole number")
        if minimum is not None and raw < minimum:
            raise self.error(key, f"is {raw}, below {minimum}", f"set it to {minimum} or more")
        return raw

    def number(self, key: str, *, default: float | None, low: float, high: float | None) -> float:
        raw = self.data.get(key)
        if raw is None:
            if default is None:
                raise self.error(key, "is missing", "set it to a number")
            return default
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise self.error(key, f"is {_type(raw)}, not a number", "write a number")
        if raw < low or (high is not None and raw > high):
            span = f"between {low:g} and {high:g}" if high is not None else f"above {low:g}"
            raise self.error(key, f"is {raw}, out of range", f"set it {span}")
        return float(raw)

    def boolean(self, key: str, *, default: bool) -> bool:
        raw = self.data.get(key)
        if raw is None:
            return default
        if not isinstance(raw, bool):
            raise self.error(key, f"is {_type(raw)}, not a boolean", "write true or false")
        return raw

    def duration(self, key: str, *, default: float) -> float:
        raw = self.string(key)
        if raw is None:
            return default
        try:
            return parse_duration(raw)
        except ValueError:
            raise self.error(
                key, f"{raw!r} is not a duration", "write it like 90s, 5m or 1h30m"
            ) from None

    def int_or_percent(self, key: str, *, default: IntOrPercent) -> IntOrPercent:
        raw = self.data.get(key)
        if raw is None:
            return default
        if isinstance(raw, int) and not isinstance(raw, bool):
            if raw < 0:
                raise self.error(key, f"is {raw}, negative", "set a count of 0 or more")
            return IntOrPercent(raw)
        found = _PERCENT.match(raw) if isinstance(raw, str) else None
        if found is None:
            fix = "write a whole number like 2 or a percent like '90%'"
            raise self.error(key, f"{raw!r} is neither a count nor a percent", fix)
        percent = int(found.group(1))
        if percent > 100:
            raise self.error(key, f"is {raw}, above 100%", "set a percent from 0% to 100%")
        return IntOrPercent(percent, percent=True)

    def labels(self, key: str) -> dict[str, str]:
        raw = self.data.get(key) or {}
        if not isinstance(raw, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
        ):
            raise self.error(key, "is not a map of strings", "write it as key: value strings")
        return dict(raw)


def _type(raw: object) -> str:
    return {
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        list: "a list",
        dict: "an object",
    }.get(type(raw), type(raw).__name__)


def _top(body: Mapping[str, object], *, kind: str) -> tuple[_Fields, _Fields, _Fields]:
    """Split a body into metadata, spec and status readers, naming the object for errors."""
    if not isinstance(body, Mapping):
        raise SpecError(
            kind=kind,
            name="?",
            field="(body)",
            problem="is not an object",
            fix="pass the resource as a JSON object",
        )
    root = _Fields(kind=kind, name="?", path="", data=body)
    meta = root.child("metadata") or _Fields(kind=kind, name="?", path="metadata", data={})
    name = meta.required_string("name")
    root = dataclasses.replace(root, name=name)
    meta = dataclasses.replace(meta, name=name)
    empty = {}  # type: dict[str, object]
    spec = root.child("spec") or _Fields(kind=kind, name=name, path="spec", data=empty)
    status = root.child("status") or _Fields(kind=kind, name=name, path="status", data=empty)
    return meta, spec, status


def _generation(meta: _Fields) -> int:
    return meta.integer("generation", default=0, minimum=0)


def is_label_key(text: str) -> bool:
    return LABEL_KEY.match(text) is not None and LABEL_PREFIX_TOO_LONG.match(text) is None


def is_label_value(text: str) -> bool:
    return LABEL_VALUE.match(text) is not None


def parse_selector(fields: _Fields | None) -> LabelSelector:
    if fields is None:
        return LabelSelector()
    match_labels = tuple(sorted(fields.labels("matchLabels").items()))
    for label, value in match_labels:
        if not is_label_key(label):
            raise fields.error("matchLabels", f"key {label!r} is not a label key",
                               _LABEL_KEY_FIX)
        if not is_label_value(value):
            raise fields.error(f"matchLabels[{label}]", f"{value!r} is not a label value",
                               _LABEL_VALUE_FIX)
    raw = fields.data.get("matchExpressions") or []
    if not isinstance(raw, list):
        raise fields.error("matchExpressions", "is not a list", "write a list of requirements")
    return LabelSelector(match_labels, tuple(_requirement(fields, i, r) for i, r in enumerate(raw)))


def _requirement(fields: _Fields, index: int, raw: object) -> Requirement:
    key = f"matchExpressions[{index}]"
    if not isinstance(raw, Mapping):
        raise fields.error(key, "is not an object", "write {key, operator, values}")
    item = _Fields(kind=fields.kind, name=fields.name, path=f"{fields.path}.{key}", data=raw)
    operators = ", ".join(o.value for o in SelectorOperator)
    try:
        operator = SelectorOperator(item.required_string("operator"))
    except ValueError:
        raise item.error("operator", "is not a known operator", f"use one of {operators}") from None
    values = item.data.get("values") or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise item.error("values", "is not a list of strings", "write a list of label values")
    label = item.required_string("key")
    if not is_label_key(label):
        raise item.error("key", f"{label!r} is not a label key", _LABEL_KEY_FIX)
    for position, value in enumerate(values):
        if not is_label_value(value):
            raise item.error(f"values[{position}]", f"{value!r} is not a label value",
                             _LABEL_VALUE_FIX)
    return Requirement(label, operator, tuple(values))


def _rate_limit(fields: _Fields | None) -> RateLimit | None:
    if fields is None:
        return None
    per_minute = fields.number("actionsPerMinute", default=None, low=1e-9, high=None)
    return RateLimit(per_minute, fields.integer("burst", default=RateLimit.burst, minimum=1))


def _phase(status: _Fields) -> Phase:
    raw = status.string("phase", default=Phase.IDLE.value)
    try:
        return Phase(raw)
    except ValueError:
        known = ", ".join(p.value for p in Phase)
        raise status.error("phase", f"{raw!r} is not a phase", f"use one of {known}") from None


def _timestamp(fields: _Fields, key: str) -> float | None:
    raw = fields.string(key)
    if raw is None:
        return None
    try:
        return datetime.datetime.fromisoformat(raw).timestamp()
    except ValueError:
        raise fields.error(
            key, f"{raw!r} is not a date-time", "write RFC 3339, like 2024-03-04T12:00:00Z"
        ) from None


def parse_engine(body: Mapping[str, object]) -> Engine:
    meta, spec, status = _top(body, kind=ENGINE)
    annotations = meta.labels("annotations")
    return Engine(
        name=meta.required_string("name"),
        spec=EngineSpec(
            pool=spec.required_string("pool"),
            accelerator=spec.string("accelerator"),
            capacity_units=spec.integer(
                "capacityUnits", default=EngineSpec.capacity_units, minimum=1
            ),
            model_ref=spec.string("modelRef"),
            cordoned=spec.boolean("cordoned", default=EngineSpec.cordoned),
            revision=spec.string("revision"),
        ),
        phase=_phase(status),
        model=status.string("model"),
        revision=status.string("revision"),
        resource_version=meta.string("resourceVersion", default="") or "",
        labels=meta.labels("labels"),
        since=_timestamp(status, "since"),
        last_action_id=annotations.get(ACTION_ID_ANNOTATION),
        namespace=meta.string("namespace", default="default") or "default",
        heartbeat=_timestamp(status, "lastHeartbeatTime"),
    )


def parse_model(body: Mapping[str, object]) -> ModelSpec:
    meta, spec, _ = _top(body, kind=MODEL)
    replicas = spec.integer("replicas", default=None, minimum=0)
    floor = spec.int_or_percent("minAvailable", default=ModelSpec.min_available)
    if not floor.percent and floor.value > replicas:
        raise spec.error(
            "minAvailable",
            f"floor {floor.value} is above replicas {replicas}",
            f"lower minAvailable to {replicas} or less, or raise replicas",
        )
    return ModelSpec(
        name=meta.required_string("name"),
        replicas=replicas,
        revision=spec.string("revision"),
        min_available=floor,
        max_unavailable=spec.int_or_percent("maxUnavailable", default=ModelSpec.max_unavailable),
        rate_limit=_rate_limit(spec.child("rateLimit")),
        priority=spec.integer("priority", default=ModelSpec.priority),
        engine_selector=parse_selector(spec.child("engineSelector")),
        labels=meta.labels("labels"),
        resource_version=meta.string("resourceVersion", default="") or "",
        generation=_generation(meta),
        namespace=meta.string("namespace", default="default") or "default",
    )


def _auto_trip(fields: _Fields | None) -> AutoTrip | None:
    if fields is None:
        return None
    return AutoTrip(
        max_drift_ratio=_optional_ratio(fields, "maxDriftRatio"),
        on_floor_breach=fields.boolean("onFloorBreach", default=AutoTrip.on_floor_breach),
        max_action_failure_rate=_optional_ratio(fields, "maxActionFailureRate"),
        window=fields.duration("window", default=AutoTrip.window),
    )


def _optional_ratio(fields: _Fields, key: str) -> float | None:
    if fields.data.get(key) is None:
        return None
    return fields.number(key, default=None, low=0.0, high=1.0)


def _approval(fields: _Fields | None) -> Approval | None:
    if fields is None or fields.string("batch") is None:
        return None
    approved_by = fields.string("approvedBy")
    if approved_by is None:
        raise fields.error(
            "approvedBy",
            "is missing while batch is set",
            "name the second person who approved the batch",
        )
    return Approval(fields.required_string("batch"), approved_by)


def parse_breaker(body: Mapping[str, object]) -> BreakerSpec:
    meta, spec, _ = _top(body, kind=BREAKER)
    return BreakerSpec(
        name=meta.required_string("name"),
        selector=parse_selector(spec.child("selector")),
        open=spec.boolean("open", default=BreakerSpec.open),
        auto_trip=_auto_trip(spec.child("autoTrip")),
        pause_threshold=spec.duration("pauseThreshold", default=BreakerSpec.pause_threshold),
        max_batch_after_pause=spec.integer(
            "maxBatchAfterPause", default=BreakerSpec.max_batch_after_pause, minimum=0
        ),
        half_open_probes=spec.integer(
            "halfOpenProbes", default=BreakerSpec.half_open_probes, minimum=1
        ),
        max_plan_age=spec.duration("maxPlanAge", default=BreakerSpec.max_plan_age),
        rate_limit=_rate_limit(spec.child("rateLimit")),
        approval=_approval(spec.child("approval")),
        resource_version=meta.string("resourceVersion", default="") or "",
        generation=_generation(meta),
        namespace=meta.string("namespace", default="default") or "default",
    )
