"""Alerts and dashboard: valid, unit-tested, one source of truth, real metric names."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
from typing import Any

import pytest
import yaml

from .manifests import ROOT, require_tool

PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "capguard-dashboard.json"
METRICS = ROOT / "operator" / "capguard" / "metrics.py"
METRIC_NAME = re.compile(r"\bcapguard_[a-z0-9_]+\b")
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
# The runbook links' base in alerts.yaml: RUNBOOK_BASE_URL replaces it in the rule.
RUNBOOK_PLACEHOLDER = "https://capguard.example/docs/deploy.md"
# Every replica is scraped: a rule's outermost operation aggregates them away.
AGGREGATED = re.compile(r"^\(?\s*(max|sum|min|count)\b")


def _alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = require_tool("promtool", install="apt-get install prometheus")
    return subprocess.run([promtool, *args], capture_output=True, text=True, check=False,
                          cwd=PROMETHEUS, timeout=120)


def test_promtool_accepts_the_rules() -> None:
    done = _promtool("check", "rules", "alerts.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_each_alert_fires_and_stays_quiet_as_its_unit_tests_say() -> None:
    done = _promtool("test", "rules", "alerts_test.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yaml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]
              if case.get("exp_alerts")}
    assert tested == {rule["alert"] for rule in _alert_rules()}


def test_the_alerts_the_issue_asks_for_are_there() -> None:
    rules = {rule["alert"]: rule for rule in _alert_rules()}
    assert {"CapguardDriftNoProgress", "CapguardBreakerOpenTooLong", "CapguardBatchRefused",
            "CapguardModelBelowFloor", "CapguardQueueStale"} <= rules.keys()
    assert rules["CapguardDriftNoProgress"]["for"] == "15m"


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda rule: rule["alert"])
def test_an_alert_tells_the_person_on_call_what_and_where_to_look(
    rule: dict[str, Any],
) -> None:
    assert rule["labels"]["severity"] in ("warning", "critical")
    assert {"summary", "description", "runbook", "runbook_url"} <= rule["annotations"].keys()
    anchor = rule["annotations"]["runbook"].split(":", 1)[0]
    assert anchor == f"docs/deploy.md#{rule['alert'].lower()}"
    assert rule["annotations"]["runbook_url"] == (
        f"{RUNBOOK_PLACEHOLDER}#{rule['alert'].lower()}")
    deploy_doc = (ROOT / "docs" / "deploy.md").read_text()
    assert re.search(rf"^#+ {rule['alert']}$", deploy_doc, flags=re.MULTILINE), (
        f"docs/deploy.md has no runbook heading for {rule['alert']}")


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda rule: rule["alert"])
def test_an_alert_fires_once_however_many_replicas_are_scraped(rule: dict[str, Any]) -> None:
    """The leader and the standby are both scraped; alerts_test.yaml has two replicas'
    series for each alert on model or breaker series."""
    assert AGGREGATED.match(rule["expr"]), rule["expr"]


def test_the_runbook_links_point_where_the_docs_live() -> None:
    base = "https://docs.internal.example/capguard/deploy"
    done = subprocess.run(["bash", "hack/gen-prometheusrule.sh"], cwd=ROOT, check=True,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "RUNBOOK_BASE_URL": base + "/", "OUTPUT": "-"})
    rule = yaml.safe_load(done.stdout)
    expected = yaml.safe_load(ALERTS.read_text().replace(RUNBOOK_PLACEHOLDER, base))
    assert rule["spec"] == expected
    urls = [r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert urls and all(url.startswith(base + "#capguard") for url in urls)
    assert not (ROOT / "-").exists()


def test_the_prometheus_rule_carries_exactly_alerts_yaml() -> None:
    rule = yaml.safe_load((PROMETHEUS / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text()), (
        "prometheusrule.yaml is stale: run `make prometheusrule`")


def _exported_metric_names() -> set[str]:
    """Names the operator defines in metrics.py, with a histogram's series (the per-model
    gauges are `_Family` lines the operator renders itself, off the event loop)."""
    if not METRICS.exists():
        pytest.skip("operator/capguard/metrics.py is not there yet")
    names: set[str] = set()
    for node in ast.walk(ast.parse(METRICS.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("Gauge", "Counter", "Histogram", "Summary", "_Family")
                and node.args and isinstance(node.args[0], ast.Constant)):
            name = str(node.args[0].value)
            names.add(name)
            if node.func.id in ("Histogram", "Summary"):
                names.update(name + suffix for suffix in HISTOGRAM_SERIES)
    assert names, "no metric definitions found in metrics.py"
    return names


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"]
             for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") == "query":
            exprs.append(variable["definition"])
    return exprs


def test_alerts_use_only_metrics_the_operator_exports() -> None:
    exported = _exported_metric_names()
    used = {name for rule in _alert_rules() for name in METRIC_NAME.findall(rule["expr"])}
    assert used and used <= exported, f"unknown: {sorted(used - exported)}"


def test_the_dashboard_uses_only_metrics_the_operator_exports() -> None:
    exported = _exported_metric_names()
    used = {name for expr in _dashboard_exprs() for name in METRIC_NAME.findall(expr)}
    assert used and used <= exported, f"unknown: {sorted(used - exported)}"


def test_the_dashboard_has_the_panels_a_person_on_call_wants() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = " ".join(_dashboard_exprs())
    for metric in ("capguard_model_serving_units", "capguard_model_desired_units",
                   "capguard_model_drift_units", "capguard_queue_actions",
                   "capguard_queue_oldest_plan_age_seconds", "capguard_refusals_total",
                   "capguard_refused_batches_total", "capguard_breaker_state",
                   "capguard_leader"):
        assert metric in exprs, metric
    assert any(p["type"] == "state-timeline" and "breaker" in p["title"].lower() for p in panels)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel.get("description"), panel["title"]
