"""Builders for core tests: CR bodies shaped like the CRDs, parsed by the one parser."""

from __future__ import annotations

from collections.abc import Mapping

from capguard.core import fleet, specs


def engine_body(
    name: str,
    *,
    model: str | None = None,
    phase: str | None = None,
    units: int = 1,
    rv: str = "1",
    pool: str = "a",
    labels: Mapping[str, str] | None = None,
    revision: str | None = None,
    cordoned: bool = False,
    action_id: str | None = None,
) -> dict[str, object]:
    status_phase = phase or ("Serving" if model else "Idle")
    meta: dict[str, object] = {
        "name": name,
        "resourceVersion": rv,
        "labels": dict(labels or {"pool": pool}),
    }
    # A bound engine is one capguard bound (its action id says so) unless a test says
    # otherwise with action_id="": a modelRef nobody wrote through capguard is the user's.
    if action_id is None and model:
        action_id = f"bound-{name}"
    if action_id:
        meta["annotations"] = {specs.ACTION_ID_ANNOTATION: action_id}
    spec: dict[str, object] = {"pool": pool, "capacityUnits": units, "cordoned": cordoned}
    status: dict[str, object] = {"phase": status_phase}
    if model:
        spec["modelRef"] = model
        status["model"] = model
    if revision:
        spec["revision"] = revision
        status["revision"] = revision
    return {"metadata": meta, "spec": spec, "status": status}


def engine(name: str, **kwargs: object) -> specs.Engine:
    return specs.parse_engine(engine_body(name, **kwargs))  # type: ignore[arg-type]


def model_body(name: str, *, replicas: int, **spec: object) -> dict[str, object]:
    labels = spec.pop("labels", {"app": name})
    return {
        "metadata": {"name": name, "resourceVersion": "1", "labels": labels},
        "spec": {"replicas": replicas, **spec},
    }


def model(name: str, *, replicas: int, **spec: object) -> specs.ModelSpec:
    return specs.parse_model(model_body(name, replicas=replicas, **spec))


def breaker_body(name: str = "cb", **spec: object) -> dict[str, object]:
    return {"metadata": {"name": name, "resourceVersion": "1"}, "spec": dict(spec)}


def breaker(name: str = "cb", **spec: object) -> specs.BreakerSpec:
    return specs.parse_breaker(breaker_body(name, **spec))


def serving_fleet(
    models: Mapping[str, int], *, spares: int = 0, **model_spec: object
) -> fleet.Fleet:
    """Every model serving exactly its replicas (one unit per engine), plus idle spares."""
    engines = [engine(f"{m}-{i:03d}", model=m) for m, count in models.items() for i in range(count)]
    engines += [engine(f"spare-{i:03d}") for i in range(spares)]
    return fleet.Fleet.of(
        engines=engines,
        models=[model(m, replicas=n, **model_spec) for m, n in models.items()],
    )
