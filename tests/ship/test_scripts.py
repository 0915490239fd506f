"""hack/ scripts and the Makefile: shellcheck clean, strict, and `make help` is the map."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .manifests import ROOT, require_tool

SCRIPTS = sorted((ROOT / "hack").glob("*.sh"))
MAKE_TARGETS = ("setup", "test", "demo", "lint", "e2e", "bench", "image", "kind-up",
                "kind-down", "e2e-kind", "deploy", "undeploy", "install", "uninstall", "run",
                "docker-push", "build-installer", "lock")


def test_shellcheck_finds_nothing_in_hack() -> None:
    shellcheck = require_tool("shellcheck", install="apt-get install shellcheck")
    done = subprocess.run([shellcheck, "-x", *[str(p.relative_to(ROOT)) for p in SCRIPTS]],
                          capture_output=True, text=True, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("script", [p for p in SCRIPTS if p.read_text().startswith("#!")],
                         ids=lambda p: p.name)
def test_every_script_stops_at_the_first_error(script: Path) -> None:
    assert re.search(r"^set -euo pipefail$", script.read_text(), flags=re.MULTILINE)


@pytest.mark.parametrize("script", ["kind-up.sh", "kind-down.sh", "e2e-kind.sh"])
def test_kind_scripts_say_what_to_install_when_tools_are_missing(
    script: str, tmp_path: Path,
) -> None:
    bash = shutil.which("bash")
    assert bash
    # A PATH with the basics but neither docker nor kind.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "mkdir", "grep", "cat", "rm", "id"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    done = subprocess.run([bash, str(ROOT / "hack" / script)], capture_output=True, text=True,
                          check=False, env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
                          timeout=30)
    assert done.returncode == 1
    assert re.search(r"error: (docker|kind) is not installed\. Install", done.stderr), done.stderr


def test_make_help_lists_every_target_with_one_line() -> None:
    make = require_tool("make", install="apt-get install make")
    done = subprocess.run([make, "--no-print-directory", "help"], capture_output=True,
                          text=True, check=True, cwd=ROOT)
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")}
    for target in MAKE_TARGETS:
        assert target in listed, f"make help does not list {target}"
    defined = set(re.findall(r"^([a-zA-Z0-9_-]+):", (ROOT / "Makefile").read_text(),
                             flags=re.MULTILINE))
    assert defined == listed, "every target has a ## line, and every ## line a target"
