"""The Argo CD health checks docs/deploy.md gives, run as Argo CD runs them (Lua 5.1, the
language of its gopher-lua) on the statuses the operator writes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from capguard.core import breaker, drift, holdings, specs
from capguard.handlers import records
from capguard.handlers import status as status_

lua51 = pytest.importorskip("lupa.lua51")

DEPLOY = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
T0 = 1_800_000_000.0
KEY = "resource.customizations.health.capguard.dev_"


def health_checks() -> dict[str, str]:
    """Kind -> the Lua script, from the YAML block of docs/deploy.md that holds them."""
    blocks = re.findall(r"```yaml\n(.*?)```", DEPLOY.read_text(), re.DOTALL)
    (found,) = [yaml.safe_load(b)["data"] for b in blocks if KEY in b]
    return {key.removeprefix(KEY): script for key, script in found.items()}


def health(kind: str, body: dict[str, Any]) -> tuple[str, str]:
    lua = lua51.LuaRuntime()
    check = lua.eval(f"function(obj)\n{health_checks()[kind]}\nend")
    found = check(lua.table_from(body, recursive=True))
    return str(found["status"]), str(found["message"])


def model(view: drift.ModelDrift, *, held: str | None = None,
          generation: int = 2) -> dict[str, Any]:
    body = {"metadata": {"name": "chat", "generation": 2}, "spec": {"replicas": view.desired}}
    spec = specs.parse_model(body)
    status = status_.model_status(model=spec, view=view, failed=0, existing={},
                                  held_reason=held, now=T0)
    return {**body, "metadata": {"name": "chat", "generation": generation}, "status": status}


def test_a_model_is_healthy_when_ready_and_degraded_when_stalled() -> None:
    assert health("ModelCapacity", model(drift.ModelDrift(4, 4, 3)))[0] == "Healthy"
    moving = health("ModelCapacity", model(drift.ModelDrift(4, 2, 3, loading=2)))
    assert moving == ("Progressing", "Converging: serving 2 of 4 units at the model's "
                                     "revision, 2 engines loading, 0 draining")
    held = model(drift.ModelDrift(4, 2, 3), held="breaker maint is Open")
    assert health("ModelCapacity", held)[0] == "Suspended"
    nowhere = drift.ModelDrift(2, 0, 1, allocated=0, covered=0, pools=())
    status, message = health("ModelCapacity", model(nowhere))
    assert status == "Degraded" and message.startswith("NoEligibleEngines: ")


def test_a_model_status_older_than_its_spec_or_missing_is_progressing() -> None:
    stale = model(drift.ModelDrift(4, 4, 3), generation=3)
    assert health("ModelCapacity", stale) == (
        "Progressing", "waiting for capguard to observe generation 3")
    assert health("ModelCapacity", {"metadata": {"generation": 1}})[0] == "Progressing"


def breaker_body(*, open_: bool, selector: dict[str, Any] | None = None,
                 holding: holdings.Holding) -> dict[str, Any]:
    body = {"metadata": {"name": "maint", "namespace": "ns", "resourceVersion": "1",
                         "generation": 1},
            "spec": {"open": open_, **({"selector": selector} if selector else {})}}
    record = records.breaker_record(body)
    assert record.value is not None
    machine = breaker.BreakerMachine(record.value, now=T0)
    status = status_.breaker_status(record=record, snapshot=machine.snapshot(T0), plan=None,
                                    refused=None, now=T0, holding=holding)
    return {**body, "status": status}


def test_a_breaker_is_suspended_while_open_and_degraded_when_it_selects_nothing() -> None:
    held = holdings.Holding(("chat",), 2, (holdings.HeldModel("chat", 2, ()),))
    assert health("CircuitBreaker", breaker_body(open_=True, holding=held)) == (
        "Suspended", "Open: 2 actions held")
    idle = holdings.Holding(("chat",), 0, ())
    assert health("CircuitBreaker", breaker_body(open_=False, holding=idle)) == (
        "Healthy", "Closed")
    nothing = breaker_body(open_=False, selector={"matchLabels": {"app": "chatt"}},
                           holding=holdings.Holding((), 0, ()))
    status, message = health("CircuitBreaker", nothing)
    assert status == "Degraded" and "matches no ModelCapacity" in message
