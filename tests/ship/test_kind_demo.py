"""hack/kind-demo.sh: the incident on kind with traffic (issue 12).

Without kind it cannot play, so what can be proven here is: it is shellcheck clean and
strict, every name it acts on is one that deploy/demo/ really makes (renamed in one place,
a stale name here would only fail minutes into a run on kind), and without Docker or
kind it stops at once saying what to install. With kind, Docker and
CAPGUARD_KIND_DEMO=1 it is played for real.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .manifests import ROOT, by_kind, kustomize, require_tool

SCRIPT = ROOT / "hack" / "kind-demo.sh"


@pytest.fixture(scope="module")
def demo() -> list[dict[str, Any]]:
    return kustomize(ROOT / "deploy" / "demo")


def _assignments() -> dict[str, list[str]]:
    """The script's top-level NAME=value and NAME=(a b) lines, as words."""
    found: dict[str, list[str]] = {}
    for name, value in re.findall(r"^([A-Z_]+)=(.*)$", SCRIPT.read_text(), flags=re.MULTILINE):
        found[name] = shlex.split(value.strip("()"))
    return found


def _names(objects: list[dict[str, Any]], kind: str) -> set[str]:
    return {o["metadata"]["name"] for o in by_kind(objects, kind)}


def test_kind_demo_is_shellcheck_clean_and_strict() -> None:
    shellcheck = require_tool("shellcheck", install="apt-get install shellcheck")
    done = subprocess.run([shellcheck, "-x", str(SCRIPT.relative_to(ROOT))],
                          capture_output=True, text=True, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^set -euo pipefail$", SCRIPT.read_text(), flags=re.MULTILINE)


def test_kind_demo_acts_only_on_what_deploy_demo_makes(demo: list[dict[str, Any]]) -> None:
    names = _assignments()
    [namespace] = by_kind(demo, "Namespace")
    assert names["DEMO_NAMESPACE"] == [namespace["metadata"]["name"]]
    assert names["BREAKER"] == sorted(_names(demo, "CircuitBreaker"))
    assert sorted(names["MODELS"]) == sorted(_names(demo, "ModelCapacity"))
    assert names["GATEWAY"] == [f"deployment/{n}" for n in _names(demo, "Deployment")]
    assert names["LOAD_JOB"] == [f"job/{n}" for n in _names(demo, "Job")]
    [engines] = by_kind(demo, "StatefulSet")
    label, value = names["ENGINE_PODS"][0].split("=")
    assert engines["spec"]["template"]["metadata"]["labels"][label] == value
    # The revision it bumps to is a new one, and the breaker it opens has the pause it reads.
    assert all(o["spec"]["revision"] != "r2" for o in by_kind(demo, "ModelCapacity"))
    [breaker] = by_kind(demo, "CircuitBreaker")
    assert re.fullmatch(r"\d+[smh]", breaker["spec"]["pauseThreshold"])


def test_kind_demo_says_what_to_install_without_docker_or_kind(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash
    bin_dir = tmp_path / "bin"  # the basics, but neither docker nor kind
    bin_dir.mkdir()
    for tool in ("dirname", "mkdir", "grep", "cat", "rm", "id", "date"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    done = subprocess.run([bash, str(SCRIPT)], capture_output=True, text=True, check=False,
                          env={"PATH": str(bin_dir), "HOME": str(tmp_path)}, timeout=30)
    assert done.returncode == 1
    assert re.search(r"error: (docker|kind) is not installed\. Install", done.stderr), done.stderr


def test_kind_demo_plays_the_incident_on_kind() -> None:
    """Minutes long and it builds an image: only on demand, where kind and Docker are."""
    if not (shutil.which("kind") and shutil.which("docker")):
        pytest.skip("kind and Docker are not installed (hack/kind-demo.sh needs both)")
    if os.environ.get("CAPGUARD_KIND_DEMO") != "1":
        pytest.skip("set CAPGUARD_KIND_DEMO=1 to play the demo on kind (about 10 minutes)")
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, check=False,
                          cwd=ROOT, env={**os.environ, "WATCH_SECONDS": "60"}, timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    refused = re.search(r"BatchRefused events: (\d+)", done.stdout)
    assert refused and int(refused.group(1)) >= 1, done.stdout[-4000:]
    assert "after the release" in done.stdout
