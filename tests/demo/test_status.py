"""`capguard status` against the embedded API server with the samples applied by kubectl."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml

from capguard.localcluster import LocalCluster

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.kubectl


def status(kubeconfig: pathlib.Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "capguard.cli", "status", "--kubeconfig", str(kubeconfig),
         *flags], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on the PATH")
def test_status_shows_the_sample_models_breaker_and_engines(tmp_path: pathlib.Path) -> None:
    with LocalCluster.start_in_thread(crds_dir=ROOT / "crds",
                                      kubeconfig_path=tmp_path / "kubeconfig") as cluster:
        config = cluster.kubeconfig_path
        subprocess.run(["kubectl", "apply", "-f", str(ROOT / "deploy" / "samples")],
                       env={**os.environ, "KUBECONFIG": str(config)}, check=True,
                       capture_output=True, timeout=60)
        shown = status(config)
        every = status(config, "-A")
        empty = status(config, "-n", "nowhere")
    assert shown.returncode == 0, shown.stderr
    for name in ("llama-70b-chat", "mistral-7b-instruct", "bge-large-embed", "assistant",
                 "h100-a", "l40s-b", "(unassigned)"):
        assert name in shown.stdout
    assert "default" in every.stdout
    assert "no capguard objects in namespace nowhere" in empty.stdout


SCARCE = """
apiVersion: capguard.dev/v1alpha1
kind: InferenceEngine
metadata: {name: ie-1, labels: {capguard.dev/pool: small}}
spec: {pool: small}
---
apiVersion: capguard.dev/v1alpha1
kind: InferenceEngine
metadata: {name: ie-2, labels: {capguard.dev/pool: small}}
spec: {pool: small, capacityUnits: 2}
---
apiVersion: capguard.dev/v1alpha1
kind: ModelCapacity
metadata: {name: wants-five}
spec: {replicas: 5, minAvailable: 4, engineSelector: {matchLabels: {capguard.dev/pool: small}}}
"""


@contextlib.contextmanager
def scarce_cluster(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """An embedded cluster with SCARCE applied by kubectl; yields its kubeconfig."""
    with LocalCluster.start_in_thread(crds_dir=ROOT / "crds",
                                      kubeconfig_path=tmp_path / "kubeconfig") as cluster:
        config = cluster.kubeconfig_path
        subprocess.run(["kubectl", "apply", "-f", "-"], input=SCARCE, text=True,
                       env={**os.environ, "KUBECONFIG": str(config)}, check=True,
                       capture_output=True, timeout=60)
        yield config


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on the PATH")
def test_status_shows_supply_against_demand_per_pool(tmp_path: pathlib.Path) -> None:
    with scarce_cluster(tmp_path) as config:
        shown = status(config)
    assert shown.returncode == 0, shown.stderr
    table = shown.stdout.split("pools: supply vs demand")[1]
    row = next(line for line in table.splitlines() if "small" in line)
    # pool, engines, usable, serving, idle, floors, desired (units), floors short: the
    # engines are 1 + 2 units, idle (no operator runs here); the floor of 4 is 1 unit short.
    assert [c for c in row.split() if c != "│"] == [
        "small", "3", "3", "0", "3", "4", "5", "wants-five", "1"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on the PATH")
def test_status_prints_json_or_yaml_and_follows_context(tmp_path: pathlib.Path) -> None:
    with scarce_cluster(tmp_path) as config:
        as_json = status(config, "-o", "json")
        as_yaml = status(config, "-o", "yaml")
        context = yaml.safe_load(config.read_text())["current-context"]
        named = status(config, "--context", context, "-o", "json")
        wrong = status(config, "--context", "no-such-context")
    assert as_json.returncode == 0, as_json.stderr
    found = json.loads(as_json.stdout)
    assert [m["name"] for m in found["models"]] == ["wants-five"]
    assert found["pools"] == [{
        "namespace": "default", "pool": "small", "units": 3, "usable": 3, "serving": 0,
        "idle": 3, "floors": 4, "desired": 5, "floorsShort": {"wants-five": 1}}]
    assert yaml.safe_load(as_yaml.stdout) == found
    assert json.loads(named.stdout) == found
    assert wrong.returncode == 2
    assert wrong.stderr.strip().startswith(
        "capguard status: Invalid value for '--context': 'no-such-context' is not a context")
    assert list(config.parent.glob(".capguard-*")) == []  # the copy is gone
