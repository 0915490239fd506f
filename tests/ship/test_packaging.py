"""What `pip install capguard` gives a user without a checkout: the CRDs travel in the wheel.

crds/*.yaml is their one source; setup.py copies it into the wheel as capguard/crds/, so
nothing is mirrored in git. The wheel is built as the Dockerfile builds it (the session's
`capguard_wheel`), installed into an empty virtualenv with no index (its dependencies come
from the tests' own site-packages through a path line), and run from a folder outside the
checkout. About 20 s in all, most of it the demo (14 s at --speed 600).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml
from click import testing

from capguard import cli

from .manifests import ROOT

CRDS = sorted((ROOT / "crds").glob("*.yaml"))


def _stream() -> str:
    """crds/*.yaml as one YAML stream, each file as written: what `capguard crds` prints."""
    return "".join(f"---\n{path.read_text(encoding='utf-8')}" for path in CRDS)


def test_capguard_crds_prints_every_crd_of_crds_folder() -> None:
    printed = testing.CliRunner().invoke(cli.main, ["crds"])
    assert printed.exit_code == 0, printed.output
    assert printed.output == _stream()
    documents = list(yaml.safe_load_all(printed.output))
    assert [d["kind"] for d in documents] == ["CustomResourceDefinition"] * len(CRDS)
    assert len(CRDS) == 3


def test_the_wheel_carries_crds_folder_byte_for_byte(capguard_wheel: Path) -> None:
    with zipfile.ZipFile(capguard_wheel) as wheel:
        packaged = {Path(n).name: wheel.read(n) for n in wheel.namelist()
                    if n.startswith("capguard/crds/")}
        licenses = [n for n in wheel.namelist() if n.endswith("/LICENSE")]
    assert packaged == {path.name: path.read_bytes() for path in CRDS}
    assert licenses, "the wheel carries no LICENSE"


@pytest.fixture(scope="module")
def installed(capguard_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty virtualenv with only the wheel; returns its bin/."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "--quiet", "--no-deps", "--no-index", str(capguard_wheel)],
                   check=True)
    purelib = subprocess.run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True).stdout.strip()
    # A path line, so the editable capguard's own .pth stays out: `import capguard` is the wheel.
    (Path(purelib) / "capguard-dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


@pytest.fixture
def elsewhere(tmp_path: Path) -> dict[str, str]:
    """An environment whose working folder and PYTHONPATH know nothing of the checkout."""
    assert not tmp_path.resolve().is_relative_to(ROOT)
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KUBECONFIG")}


def _run(argv: list[str], *, cwd: Path, env: dict[str, str],
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          check=False, timeout=timeout)


@pytest.mark.slow
def test_installed_capguard_crds_prints_crds_folder(
        installed: Path, elsewhere: dict[str, str], tmp_path: Path) -> None:
    where = _run([str(installed / "python"), "-c",
                  "from capguard import manifests; print(manifests.crds_dir())"],
                 cwd=tmp_path, env=elsewhere)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed.parent), where.stdout
    printed = _run([str(installed / "capguard"), "crds"], cwd=tmp_path, env=elsewhere)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == _stream()
    helped = _run([str(installed / "capguard"), "demo", "--help"], cwd=tmp_path, env=elsewhere)
    assert helped.returncode == 0, helped.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_installed_capguard_demo_installs_its_crds_and_plays(
        installed: Path, elsewhere: dict[str, str], tmp_path: Path) -> None:
    # The demo's embedded server and the operator run as `python -m capguard...` children
    # of the installed interpreter, so every CRD lookup here is the wheel's.
    played = _run([str(installed / "capguard"), "demo", "--json", "--speed", "600",
                   "--plot", ""], cwd=tmp_path, env=elsewhere, timeout=100)
    assert played.returncode == 0, played.stdout[-3000:] + played.stderr[-3000:]
    measures = json.loads(played.stdout.strip().splitlines()[-1])
    assert measures["mode"] == "guarded"
    assert measures["floor_breaking_actions"] == 0
