"""`capguard status`: the fleet, its models and breakers as tables, from any cluster.

It reads what the operator published (model and breaker status) and counts engines by
phase itself, so it works while the operator is down and shows what a person asks
first: is every model at its desired capacity, is a breaker holding anything.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import kopf
import yaml

from capguard.core import fleet as fleet_
from capguard.core import specs
from capguard.kube import client, credentials

if TYPE_CHECKING:  # the tables need the console extra; -o json and -o yaml do not
    from rich import console as rich_console
    from rich import table as rich_table

PHASES: Final = tuple(p.value for p in specs.Phase)
UNASSIGNED: Final = "(unassigned)"
BAD_WHEN_TRUE: Final = frozenset({"Degraded", "DriftDetected", "Paused"})

Body = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Fleet:
    """Every capguard object found, by kind."""

    engines: list[Body]
    models: list[Body]
    breakers: list[Body]


async def read(api: client.Api, *, namespace: str | None) -> Fleet:
    """Every engine, model and breaker in ``namespace`` (None: every namespace)."""

    async def every(resource: client.Resource) -> list[Body]:
        return [body async for body in api.list(resource, namespace=namespace)]

    engines, models, breakers = await asyncio.gather(
        every(client.ENGINES), every(client.MODELS), every(client.BREAKERS))
    return Fleet(engines, models, breakers)


def _table(**options: Any) -> rich_table.Table:
    from rich import table as rich_table

    return rich_table.Table(**options)


def tables(fleet: Fleet, *, all_namespaces: bool, now: datetime.datetime
           ) -> list[rich_table.Table]:
    return [
        models_table(fleet.models, all_namespaces=all_namespaces),
        breakers_table(fleet.breakers, all_namespaces=all_namespaces, now=now),
        engines_table(fleet.engines, by="model"),
        pools_table(fleet, all_namespaces=all_namespaces),
    ]


def pools_table(fleet: Fleet, *, all_namespaces: bool) -> rich_table.Table:
    """Supply against demand per pool, in capacity units, computed here with the core's
    allocation (floors first, then priority, then max-min fair), so it holds while the
    operator is down. A model whose selector matches two pools counts in both."""
    table = _table(title="pools: supply vs demand (capacity units)", title_justify="left")
    columns = ["pool", "engines", "usable", "serving", "idle", "floors", "desired",
               "floors short"]
    for column in (["namespace"] if all_namespaces else []) + columns:
        table.add_column(column, justify="right" if column in _NUMERIC else "left")
    for row in _pool_rows(fleet):
        short = [f"{m} {units}" for m, units in row["floorsShort"].items()]
        cells = [row["pool"], *(str(row[k]) for k in ("units", "usable", "serving", "idle",
                                                     "floors", "desired")),
                 ", ".join(short) or "-"]
        table.add_row(*([row["namespace"]] if all_namespaces else []), *cells,
                      style="bold red" if short else "")
    return table


def _pool_rows(fleet: Fleet) -> list[dict[str, Any]]:
    """Each pool's supply against demand, with the floors its engines cannot cover."""
    rows = []
    for namespace, found in sorted(_by_namespace(fleet).items()):
        shares = found.allocation.models
        for name, pool in found.allocation.pools.items():
            rows.append({
                "namespace": namespace, "pool": name, "units": pool.units,
                "usable": pool.usable, "serving": pool.serving, "idle": pool.idle,
                "floors": pool.floors, "desired": pool.desired,
                "floorsShort": {m: s.floor_shortfall for m, s in shares.items()
                                if s.floor_shortfall > 0 and name in s.pools}})
    return rows


def _by_namespace(fleet: Fleet) -> dict[str, fleet_.Fleet]:
    """The bodies read into the core's fleet, one per namespace (what does not parse is
    left out: the operator reports it in that object's status)."""
    grouped: dict[str, dict[str, list[Body]]] = collections.defaultdict(
        lambda: {"engines": [], "models": []})
    for kind, bodies in (("engines", fleet.engines), ("models", fleet.models)):
        for body in bodies:
            grouped[_namespace(body)][kind].append(body)
    return {ns: fleet_.Fleet.read(engines=found["engines"], models=found["models"]).fleet
            for ns, found in grouped.items()}


def models_table(models: Iterable[Body], *, all_namespaces: bool) -> rich_table.Table:
    table = _table(title="models (ModelCapacity)", title_justify="left")
    columns = ["name", "desired", "serving", "loading", "draining", "floor", "drift",
               "available", "conditions"]
    # desired falls back to spec.replicas: the rest is the operator's to publish.
    for column in (["namespace"] if all_namespaces else []) + columns:
        table.add_column(column, justify="right" if column in _NUMERIC else "left")
    for body in _sorted(models):
        status = body.get("status") or {}
        serving, floor = status.get("serving"), status.get("floor")
        style = "bold red" if _below(serving, floor) else ""
        desired = status.get("desired", (body.get("spec") or {}).get("replicas"))
        cells = [_name(body), _cell(desired), *(_cell(status.get(k)) for k in
                                                ("serving", "loading", "draining", "floor",
                                                 "drift")),
                 _percent(status.get("availablePercent")), _conditions(status)]
        table.add_row(*([_namespace(body)] if all_namespaces else []), *cells, style=style)
    return table


def breakers_table(breakers: Iterable[Body], *, all_namespaces: bool,
                   now: datetime.datetime) -> rich_table.Table:
    table = _table(title="breakers (CircuitBreaker)", title_justify="left")
    columns = ["name", "state", "since", "held", "refused", "last refused batch"]
    for column in (["namespace"] if all_namespaces else []) + columns:
        table.add_column(column, justify="right" if column in _NUMERIC else "left")
    for body in _sorted(breakers):
        status = body.get("status") or {}
        state = str(status.get("state") or "?")
        style = {"Open": "bold red", "HalfOpen": "bold yellow"}.get(state, "")
        cells = [_name(body), state, _age(status.get("since"), now=now),
                 _cell(status.get("heldActions")), _cell(status.get("refusedActions")),
                 _refused_batch(status.get("lastRefusedBatch"), now=now)]
        table.add_row(*([_namespace(body)] if all_namespaces else []), *cells, style=style)
    return table


def engines_table(engines: Iterable[Body], *, by: str) -> rich_table.Table:
    """Engines counted by phase, one row per model (what they hold) or per pool."""
    counts = _phases(engines, by=by)
    table = _table(title=f"engines by {by} (InferenceEngine)", title_justify="left")
    table.add_column(by)
    phases = [*PHASES, "Unknown"] if any(c.get("Unknown") for c in counts.values()) else [
        *PHASES]
    for column in ["total", *phases]:
        table.add_column(column, justify="right")
    for key, found in sorted(counts.items()):
        table.add_row(key, str(sum(found.values())), *(_count(found.get(p, 0)) for p in phases))
    return table


def document(fleet: Fleet) -> dict[str, Any]:
    """What the tables show, as data (`-o json|yaml`): models and breakers as the
    operator published them, engines counted by phase per model and per pool, and the
    pools' supply against demand computed with the core."""
    def model_row(body: Body) -> dict[str, Any]:
        status = body.get("status") or {}
        return {"namespace": _namespace(body), "name": _name(body),
                "desired": status.get("desired", (body.get("spec") or {}).get("replicas")),
                **{k: status.get(k) for k in ("serving", "loading", "draining", "floor",
                                              "drift", "availablePercent")},
                "conditions": {str(c.get("type")): str(c.get("status"))
                               for c in status.get("conditions") or []}}

    def breaker_row(body: Body) -> dict[str, Any]:
        status = body.get("status") or {}
        return {"namespace": _namespace(body), "name": _name(body), "state": status.get("state"),
                "since": status.get("since"), "held": status.get("heldActions"),
                "refused": status.get("refusedActions"),
                "lastRefusedBatch": status.get("lastRefusedBatch")}

    return {"models": [model_row(b) for b in _sorted(fleet.models)],
            "breakers": [breaker_row(b) for b in _sorted(fleet.breakers)],
            "enginesByModel": _phases(fleet.engines, by="model"),
            "pools": _pool_rows(fleet)}


def _phases(engines: Iterable[Body], *, by: str) -> dict[str, dict[str, int]]:
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for body in engines:
        status, spec = body.get("status") or {}, body.get("spec") or {}
        key = spec.get("pool") if by == "pool" else status.get("model") or spec.get("modelRef")
        counts[str(key or UNASSIGNED)][str(status.get("phase") or "Unknown")] += 1
    return {key: dict(found) for key, found in sorted(counts.items())}


async def show(*, namespace: str | None, all_namespaces: bool, output: str = "table",
               console: rich_console.Console | None = None) -> int:
    """Log in as the operator does (`credentials.login`), read, print; the exit code. The
    tables print on ``console`` (rich: the console extra); JSON and YAML need none."""
    def say(text: str) -> None:
        if console is not None:
            console.print(text)
        else:
            print(text)

    info = credentials.login(None, settings=kopf.OperatorSettings())
    if info is None:
        say("capguard status: no kubeconfig found; pass --kubeconfig FILE")
        return 2
    api = client.Api()
    async with client.make_session(info) as session:
        api.connect(session=session, server=info.server)
        chosen = None if all_namespaces else namespace or info.default_namespace or "default"
        try:
            fleet = await read(api, namespace=chosen)
        except client.NotFound:
            say("capguard status: the capguard CRDs are not installed "
                "(kubectl apply -f crds/)")
            return 1
    if output == "json":
        print(json.dumps(document(fleet), indent=2))
        return 0
    if output == "yaml":
        print(yaml.safe_dump(document(fleet), sort_keys=False), end="")
        return 0
    assert console is not None, "the tables print on a rich console"
    if not (fleet.engines or fleet.models or fleet.breakers):
        where = "any namespace" if chosen is None else f"namespace {chosen}"
        console.print(f"no capguard objects in {where}")
        return 0
    now = datetime.datetime.now(datetime.UTC)
    for table in tables(fleet, all_namespaces=all_namespaces, now=now):
        console.print(table)
    return 0


_NUMERIC: Final = frozenset({"desired", "serving", "loading", "draining", "floor", "drift",
                             "available", "held", "refused", "engines", "usable", "idle",
                             "floors"})


def _sorted(bodies: Iterable[Body]) -> list[Body]:
    return sorted(bodies, key=lambda b: (_namespace(b), _name(b)))


def _name(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("name") or "")


def _namespace(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("namespace") or "")


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _count(value: int) -> str:
    return str(value) if value else "·"


def _percent(value: object) -> str:
    return "-" if value is None else f"{value}%"


def _below(serving: object, floor: object) -> bool:
    return isinstance(serving, int) and isinstance(floor, int) and serving < floor


def _conditions(status: Mapping[str, Any]) -> str:
    """The conditions that hold, by type; those that mean trouble in red."""
    shown = []
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        kind = str(condition.get("type") or "")
        shown.append(f"[red]{kind}[/red]" if kind in BAD_WHEN_TRUE else kind)
    return " ".join(shown) or "-"


def _age(stamp: object, *, now: datetime.datetime) -> str:
    if not isinstance(stamp, str) or not stamp:
        return "-"
    try:
        then = datetime.datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    seconds = int(max(0.0, (now - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    return f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h"


def _refused_batch(batch: object, *, now: datetime.datetime) -> str:
    if not isinstance(batch, Mapping) or not batch.get("batch"):
        return "-"
    return (f"{batch.get('batch')}: {batch.get('size')} actions, oldest plan "
            f"{batch.get('oldestPlanAgeSeconds')}s old, {_age(batch.get('time'), now=now)} ago")
