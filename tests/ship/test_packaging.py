"""What `pip install capguard` gives a user without a checkout: the CRDs travel in the wheel,
and the base install (the image's) runs the operator's commands and names the extra that
any other command needs.

crds/*.yaml is their one source; setup.py copies it into the wheel as capguard/crds/, so
nothing is mirrored in git. The wheel is built as the Dockerfile builds it (the session's
`capguard_wheel`) and run from a folder outside the checkout, installed two ways:

- `installed`: into an empty virtualenv with no index, its dependencies (every extra's)
  from the tests' own site-packages through a path line: what `capguard[demo]` gives;
- `base`: as the Dockerfile installs it, operator/requirements.lock from the package
  index with --require-hashes, then the wheel with no dependencies: the image's install.

About two minutes in all, most of it the default demo from the installed wheel (both
modes on real engines at --speed 120) and the lock's download (a few seconds from pip's
cache).
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

import capguard
from capguard import cli

from . import lockfile
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


@pytest.fixture(scope="module")
def base(capguard_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty virtualenv given the lock, then the wheel, as the image's build stage does;
    returns its bin/."""
    venv = tmp_path_factory.mktemp("base") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    for step in (["install", "--only-binary=:all:", "--require-hashes",
                  "--requirement", str(lockfile.LOCK)],
                 ["install", "--no-deps", "--no-index", str(capguard_wheel)]):
        done = subprocess.run([*pip, "--quiet", "--disable-pip-version-check", *step],
                              capture_output=True, text=True, check=False, timeout=300)
        assert done.returncode == 0, f"pip {' '.join(step)}:\n{done.stderr[-3000:]}"
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
@pytest.mark.timeout(420)
def test_installed_default_demo_shows_the_incident_in_requests_and_guarded_holds(
        installed: Path, elsewhere: dict[str, str], tmp_path: Path) -> None:
    """The default demo as `pip install 'capguard[demo]' && capguard demo` plays it: both
    modes on real engines (agents, model servers, gateway, load), naive's success rate
    collapses after the release and guarded's holds at every minute.

    The embedded server, the operator, the agents, their model servers, the gateway and
    the load run as `python -m capguard...` children of the installed interpreter, so
    every CRD lookup and every process here is the wheel's."""
    plot = tmp_path / "timeline.png"
    played = _run([str(installed / "capguard"), "demo", "--json", "--speed", "120",
                   "--plot", str(plot)], cwd=tmp_path, env=elsewhere, timeout=400)
    assert played.returncode == 0, played.stdout[-3000:] + played.stderr[-3000:]
    both = json.loads(played.stdout.strip().splitlines()[-1])
    simulated = _run([str(installed / "capguard"), "simulate", "--mode", "naive", "--json"],
                     cwd=tmp_path, env=elsewhere)
    assert simulated.returncode == 0, simulated.stderr
    guarded, naive = both["guarded"], both["naive"]
    for found in (guarded, naive):  # every key of the replay's report, and the requests
        assert set(json.loads(simulated.stdout)) <= set(found)
        assert found["requests_total"] > 1000
        assert set(found["min_success_rate_by_model"]) == set(found["per_model"])
    assert guarded["min_success_rate"] >= 0.95, guarded["success_rate_by_minute"]
    assert guarded["refused_batches"] >= 1 and guarded["floor_breaking_actions"] == 0
    assert guarded["min_serving_ratio"] >= guarded["floor_ratio"]
    assert guarded["max_engines_out_of_service"] <= guarded["disruption_budget"]
    # The incident: the queue flushes at once, floors break, the budget is blown.
    assert naive["refused_batches"] == 0 and naive["floor_breaking_actions"] > 0
    assert naive["min_serving_ratio"] < naive["floor_ratio"] - 0.2
    assert naive["max_engines_out_of_service"] > naive["disruption_budget"]
    release = 25  # march-4's breaker is released at minute 25
    after = [rate for minute, rate in naive["success_rate_by_minute"].items()
             if int(minute) >= release]
    assert min(after) < 0.5 and naive["error_minutes"] >= 2, naive["success_rate_by_minute"]
    for found in (guarded, naive):  # the requests are measured to the incident's end
        last = max(int(minute) for minute in found["success_rate_by_minute"])
        assert last >= release + found["converge_seconds"] / 60 + 1, found
    assert naive["requests_failed"] > 10 * guarded["requests_failed"]
    assert plot.stat().st_size > 0
    assert "guarded: worst model" in played.stdout and "naive: worst model" in played.stdout


@pytest.mark.slow
def test_the_lock_is_exactly_what_the_base_install_needs(base: Path) -> None:
    pip = [sys.executable, "-m", "pip", "--python", str(base / "python"),
           "--disable-pip-version-check"]
    checked = subprocess.run([*pip, "check"], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, f"the lock does not meet the wheel's needs: {checked.stdout}"
    listed = subprocess.run([*pip, "list", "--format=json"], capture_output=True, text=True,
                            check=True)
    installed = {lockfile.normalized(d["name"]): d["version"] for d in json.loads(listed.stdout)}
    assert installed.pop("capguard") == capguard.__version__
    installed.pop("pip", None)  # the virtualenv's own tool, uninstalled in the image
    assert installed == {name: pin.version for name, pin in lockfile.pins().items()}


@pytest.mark.slow
def test_the_base_install_runs_the_operator_commands(
        base: Path, elsewhere: dict[str, str], tmp_path: Path) -> None:
    for argv in (["--help"], ["run", "--help"], ["demo", "--help"]):
        helped = _run([str(base / "capguard"), *argv], cwd=tmp_path, env=elsewhere)
        assert helped.returncode == 0, f"capguard {' '.join(argv)}: {helped.stderr}"
    printed = _run([str(base / "capguard"), "crds"], cwd=tmp_path, env=elsewhere)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == _stream()


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "says"), [
    (["demo"], "capguard demo: needs the demo extra: pip install 'capguard[demo]'"),
    (["localcluster", "--port", "0"],
     "capguard localcluster: needs the localcluster extra: pip install 'capguard[localcluster]'"),
    (["simulate", "--plot", "timeline.png"], "capguard simulate: needs the console and plot "
     "extras: pip install 'capguard[console,plot]'"),
    (["status"], "capguard status: needs the console extra: pip install 'capguard[console]'"),
], ids=lambda v: v[0] if isinstance(v, list) else "")
def test_the_base_install_names_the_extra_a_command_needs(
        base: Path, elsewhere: dict[str, str], tmp_path: Path, argv: list[str], says: str,
) -> None:
    done = _run([str(base / "capguard"), *argv], cwd=tmp_path, env=elsewhere)
    assert (done.returncode, done.stderr, done.stdout) == (2, says + "\n", "")
