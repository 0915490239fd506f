"""Helpers for the shipping checks: the repository root, tools, rendered manifests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def require_tool(name: str, *, install: str) -> str:
    """The tool's path, or skip the test saying how to get it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed ({install}; hack/install-tools.sh does it)")
    return path


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = require_tool("kubectl", install="kubectl >= 1.27 with its built-in kustomize")
    done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]
