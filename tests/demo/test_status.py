"""`capguard status` against the embedded API server with the samples applied by kubectl."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

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
