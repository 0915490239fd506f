"""Helpers for the shipping checks: the repository root, tools, rendered manifests."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
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
    kubectl = require_tool("kubectl", install="kubectl >= 1.28 with its built-in kustomize")
    done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind]


def single(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def operator_container(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    """The one container of the operator's Deployment."""
    (container,) = single(rendered, "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(container)


def writable_mounts(pod: dict[str, Any]) -> list[str]:
    """Where the operator's container may write: its emptyDir mounts not marked readOnly."""
    (container,) = pod["containers"]
    empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    return [m["mountPath"] for m in container.get("volumeMounts", [])
            if m["name"] in empty_dirs and not m.get("readOnly")]


def security_context(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    """The operator container's effective securityContext: the pod's, overridden by its own."""
    pod = single(rendered, "Deployment")["spec"]["template"]["spec"]
    return {**pod.get("securityContext", {}), **operator_container(rendered)["securityContext"]}


def eventually(check: Callable[[], Any], *, timeout: float, what: str,
               logs: Callable[[], list[str]] = list) -> Any:
    """The first truthy result of `check`, polled until `timeout` seconds have passed; else
    fail saying what did not happen, with the last words of `logs` (the processes')."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    said = "\n".join(log[-2000:] for log in logs())
    raise AssertionError(f"within {timeout:.0f}s: {what}\n{said}".rstrip())


def downward_env(container: Mapping[str, Any], *, name: str, namespace: str,
                 ip: str = "") -> dict[str, str]:
    """A container's env as the kubelet fills it in for Pod `name`: values as written, the
    downward API's metadata.name, metadata.namespace and status.podIP."""
    fields = {"metadata.name": name, "metadata.namespace": namespace, "status.podIP": ip}
    return {entry["name"]: entry["value"] if "value" in entry
            else fields[entry["valueFrom"]["fieldRef"]["fieldPath"]]
            for entry in container.get("env", [])}


def expand(args: Iterable[str], env: Mapping[str, str]) -> list[str]:
    """A container's args with each $(VAR) of its env expanded, as the kubelet does."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in args]
