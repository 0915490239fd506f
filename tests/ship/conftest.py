"""Fixtures for the shipping checks: deploy/ rendered as `kubectl apply -k` would."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from . import pod
from .manifests import ROOT, kustomize


@pytest.fixture(scope="session")
def rendered() -> list[dict[str, Any]]:
    """`kubectl kustomize deploy/`: what `kubectl apply -k deploy/` installs."""
    return kustomize(ROOT / "deploy")


@pytest.fixture(scope="session")
def rendered_with_prometheus(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """deploy/ with the prometheus component, rendered from an overlay in a copy.

    Kustomize refuses absolute paths and an overlay inside deploy/ would contain its own
    base, so the overlay lives beside a copy of crds/ and deploy/.
    """
    tree = tmp_path_factory.mktemp("kustomize")
    for part in ("crds", "deploy"):
        shutil.copytree(ROOT / part, tree / part)
    overlay = tree / "with-prometheus"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../deploy]\ncomponents: [../deploy/prometheus]\n")
    return kustomize(overlay)



@pytest.fixture(scope="session")
def capguard_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The capguard wheel, built once per session as the Dockerfile builds it."""
    return pod.build_wheel(tmp_path_factory.mktemp("wheel"))
