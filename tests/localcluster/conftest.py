"""Fixtures that start the embedded API server on a free loopback port.

- `local_cluster`: an async `LocalCluster` for async tests (function scope).
- `threaded_local_cluster`: a `ThreadedCluster` serving from a background thread, for
  synchronous tests such as kubectl-driven ones (function scope); `.url`,
  `.kubeconfig_path`, `.audit`, `.stop()`.
- `widget_crd`: the reference `widget-crd.yaml` as a dict; `widgets`: a cluster serving it.
"""
from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import yaml

from capguard.localcluster import LocalCluster, ThreadedCluster, resources

REFERENCE_DIR = pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "k8s-reference"


@pytest.fixture
async def local_cluster(tmp_path: pathlib.Path) -> AsyncIterator[LocalCluster]:
    async with LocalCluster(kubeconfig_path=tmp_path / "kubeconfig") as cluster:
        yield cluster


@pytest.fixture
def threaded_local_cluster(tmp_path: pathlib.Path) -> Iterator[ThreadedCluster]:
    with LocalCluster.start_in_thread(kubeconfig_path=tmp_path / "kubeconfig") as cluster:
        yield cluster


@pytest.fixture
def widget_crd() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((REFERENCE_DIR / "widget-crd.yaml").read_text())
    return document


@pytest.fixture
async def widgets(local_cluster: LocalCluster, widget_crd: dict[str, Any]) -> LocalCluster:
    local_cluster.apply(resources.CRDS, widget_crd)
    return local_cluster
