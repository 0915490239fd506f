"""The supported Kubernetes versions, said once and held to everywhere.

MIN_KUBERNETES_VERSION in hack/kind-lib.sh is the one source: the CRDs need nothing newer,
README.md and docs/deploy.md state it, the kind node image is pinned at or above it, and
the kind scripts refuse a kind, kubectl or cluster older than it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from .manifests import ROOT

KIND_LIB: Final = ROOT / "hack" / "kind-lib.sh"
# Since when the API server accepts each key of x-kubernetes-validations.
CEL_KEYS_SINCE: Final = {"messageExpression": (1, 27), "reason": (1, 28), "fieldPath": (1, 28),
                         "optionalOldSelf": (1, 29)}
PINNED_NODE: Final = re.compile(r"kindest/node:v(\d+)\.(\d+)\.(\d+)@sha256:[0-9a-f]{64}")


def _setting(name: str) -> str:
    found = re.search(rf"^{name}=([\d.]+)$", KIND_LIB.read_text(), flags=re.MULTILINE)
    assert found, f"hack/kind-lib.sh sets no {name}"
    return found.group(1)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


MINIMUM: Final = _setting("MIN_KUBERNETES_VERSION")


def _validation_keys(schema: Any) -> set[str]:
    """Every key used in x-kubernetes-validations anywhere in a schema."""
    keys: set[str] = set()
    if isinstance(schema, dict):
        for rule in schema.get("x-kubernetes-validations", []):
            keys |= set(rule)
        for value in schema.values():
            keys |= _validation_keys(value)
    elif isinstance(schema, list):
        for value in schema:
            keys |= _validation_keys(value)
    return keys


def test_the_crds_need_no_newer_kubernetes_than_the_minimum() -> None:
    used: set[str] = set()
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        used |= _validation_keys(yaml.safe_load(path.read_text()))
    needed = {key: CEL_KEYS_SINCE[key] for key in used if key in CEL_KEYS_SINCE}
    too_new = {key: since for key, since in needed.items() if since > _version(MINIMUM)}
    assert not too_new, f"the CRDs use {too_new}, newer than MIN_KUBERNETES_VERSION={MINIMUM}"


def test_the_kind_node_image_is_pinned_at_or_above_the_minimum() -> None:
    config = yaml.safe_load((ROOT / "hack" / "kind-config.yaml").read_text())
    for node in config["nodes"]:
        pinned = PINNED_NODE.fullmatch(node.get("image", ""))
        assert pinned, f"pin the node image by digest, as kind's release notes ask: {node}"
        assert tuple(int(part) for part in pinned.groups())[:2] >= _version(MINIMUM)


@pytest.mark.parametrize("doc", ["README.md", "docs/deploy.md"])
def test_the_docs_state_the_minimum(doc: str) -> None:
    text = (ROOT / doc).read_text()
    assert f"Kubernetes {MINIMUM} and newer" in text, f"{doc} does not state the minimum"
    for stated in re.findall(r"(?:Kubernetes|kubectl)`? (1\.\d+) or newer", text):
        assert stated == MINIMUM, f"{doc} names {stated}, not {MINIMUM}"
    if doc == "README.md":
        assert "## Supported Kubernetes versions" in text


FAKE_KIND: Final = """#!/bin/sh
case "$1" in
  version) echo "kind $FAKE_KIND go1.22.2 linux/amd64" ;;
  get) echo capguard ;;
esac
"""
FAKE_KUBECTL: Final = """#!/bin/sh
case "$*" in
  "version --client --output=json")
    printf '{"clientVersion": {"major": "1", "gitVersion": "%s"}}\\n' "$FAKE_KUBECTL" ;;
  "get --raw /version") printf '{"major": "1", "gitVersion": "%s"}\\n' "$FAKE_CLUSTER" ;;
esac
"""
FAKE_DOCKER: Final = """#!/bin/sh
[ "$1" = build ] && { echo "docker build reached" >&2; exit 3; }
exit 0
"""
SUPPORTED: Final = {"FAKE_KIND": f"v{_setting('MIN_KIND_VERSION')}",
                    "FAKE_KUBECTL": f"v{MINIMUM}.0", "FAKE_CLUSTER": f"v{MINIMUM}.2+k3s1"}


def _run_with_fakes(
    script: str, tmp_path: Path, **versions: str,
) -> subprocess.CompletedProcess[str]:
    """A hack/ script with fake kind, kubectl and docker that report the given versions."""
    bash = shutil.which("bash")
    assert bash
    fakes = tmp_path / "bin"
    fakes.mkdir()
    for name, body in (("kind", FAKE_KIND), ("kubectl", FAKE_KUBECTL), ("docker", FAKE_DOCKER)):
        (fakes / name).write_text(body)
        (fakes / name).chmod(0o755)
    env = {"PATH": f"{fakes}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "KIND_KUBECONFIG": str(tmp_path / "kubeconfig"), **SUPPORTED, **versions}
    return subprocess.run([bash, str(ROOT / "hack" / script)], capture_output=True, text=True,
                          check=False, env=env, timeout=30)


def test_kind_up_goes_on_with_supported_versions(tmp_path: Path) -> None:
    done = _run_with_fakes("kind-up.sh", tmp_path)
    assert done.returncode == 3 and "docker build reached" in done.stderr, done.stderr


@pytest.mark.parametrize(("script", "versions", "refusal"), [
    ("kind-up.sh", {"FAKE_KUBECTL": "v1.27.3"}, "kubectl is v1.27.3; capguard needs"),
    ("kind-up.sh", {"FAKE_KIND": "v0.22.0"}, "kind is v0.22.0; capguard needs"),
    ("kind-up.sh", {"FAKE_CLUSTER": "v1.27.3"}, "the cluster's Kubernetes is v1.27.3; capguard"),
    ("e2e-kind.sh", {"FAKE_CLUSTER": "v1.26.15-eks"}, "the cluster's Kubernetes is v1.26.15-eks"),
    ("kind-down.sh", {"FAKE_KIND": "v0.19.0"}, "kind is v0.19.0; capguard needs"),
], ids=["kind-up-old-kubectl", "kind-up-old-kind", "kind-up-old-cluster",
        "e2e-kind-old-cluster", "kind-down-old-kind"])
def test_the_kind_scripts_refuse_what_is_too_old(
    script: str, versions: dict[str, str], refusal: str, tmp_path: Path,
) -> None:
    done = _run_with_fakes(script, tmp_path, **versions)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"error: {refusal}" in done.stderr
    assert "docker build reached" not in done.stderr


FAKE_LOADING_KIND: Final = """#!/bin/sh
echo "kind $*" >> "$CALLS"
[ "$2" = docker-image ] && exit "$DOCKER_IMAGE_EXIT"
[ "$2" = image-archive ] && { [ -s "$3" ] || exit 9; exit "$ARCHIVE_EXIT"; }
exit 0
"""
FAKE_SAVING_DOCKER: Final = """#!/bin/sh
echo "docker $*" >> "$CALLS"
[ "$1" = version ] && { echo arm64; exit 0; }
while [ $# -gt 0 ]; do [ "$1" = --output ] && echo tar > "$2"; shift; done
exit 0
"""


def _load_image(tmp_path: Path, **exits: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """kind-lib.sh's load_image with a fake kind and docker; what ran, in order."""
    bash = shutil.which("bash")
    assert bash
    fakes = tmp_path / "bin"
    fakes.mkdir()
    for name, body in (("kind", FAKE_LOADING_KIND), ("docker", FAKE_SAVING_DOCKER)):
        (fakes / name).write_text(body)
        (fakes / name).chmod(0o755)
    calls = tmp_path / "calls"
    env = {"PATH": f"{fakes}:{os.environ['PATH']}", "CALLS": str(calls),
           "TMPDIR": str(tmp_path), "DOCKER_IMAGE_EXIT": "0", "ARCHIVE_EXIT": "0", **exits}
    done = subprocess.run([bash, "-c", f"set -euo pipefail; source {KIND_LIB}; "
                           "load_image capguard:0.1.0 capguard"],
                          capture_output=True, text=True, check=False, env=env, timeout=30)
    return done, calls.read_text()


def test_an_image_kind_cannot_export_is_loaded_as_this_platforms_archive(
        tmp_path: Path) -> None:
    done, calls = _load_image(tmp_path)
    assert done.returncode == 0 and calls == \
        "kind load docker-image capguard:0.1.0 --name capguard\n", calls
    (tmp_path / "calls").unlink()
    (tmp_path / "bin").rename(tmp_path / "first")
    done, calls = _load_image(tmp_path, DOCKER_IMAGE_EXIT="1")  # kind issue 3795
    assert done.returncode == 0, done.stderr
    lines = calls.splitlines()
    assert lines[0] == "kind load docker-image capguard:0.1.0 --name capguard"
    assert lines[2].startswith("docker image save --platform linux/arm64 --output ")
    archive = lines[2].split("--output ")[1].split()[0]
    assert lines[3] == f"kind load image-archive {archive} --name capguard"
    assert not Path(archive).exists(), "the archive is removed"
    (tmp_path / "calls").unlink()
    (tmp_path / "bin").rename(tmp_path / "second")
    done, _ = _load_image(tmp_path, DOCKER_IMAGE_EXIT="1", ARCHIVE_EXIT="1")
    assert done.returncode == 1 and "error: cannot load capguard:0.1.0" in done.stderr
    assert "containerd-snapshotter" in done.stderr
