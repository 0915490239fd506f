"""The image's runtime conditions, without Docker: the capguard wheel in a fresh virtualenv,
run as the Deployment runs the image.

That is: as the numeric uid and gid of `securityContext` with no passwd entry and no
supplementary groups, with the image's ENV and the Deployment's `env` and nothing else (no
USER), in a private mount namespace where every mount is read-only
(`readOnlyRootFilesystem`) and only a fresh tmpfs at /tmp (the `emptyDir`) is writable.

The virtualenv gets the wheel as the Dockerfile's build stage makes it (from the files that
stage copies, with the same `pip wheel`); its dependencies are those the image's lock pins,
as already installed for the tests (a `.pth` file points at links to them and to nothing
else, so an extra's package is missing here as in the image), so no index is needed.
What this cannot show (the base image, the build, Docker's own flags) the real image
shows: tests/ship/test_image_container.py.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import pytest

from . import dockerfile, lockfile
from .manifests import ROOT

# Run by root in the new mount namespace, then exec'd into the restricted command:
#   $1 the directories to keep visible, ':'-separated (the stage with the virtualenv and
#   kubeconfig, and the tests' site-packages the virtualenv's .pth points at), $2 an empty
#   directory to mount the new /tmp on first, $3 uid, $4 gid; the rest is the command.
# They stay visible, read-only, at their own paths; one that lies under /tmp (a checkout
# there, say) is bound
# into the new tmpfs before that replaces /tmp, the way the image's /opt/capguard sits
# beside its emptyDir.
LOCK_DOWN: Final = r"""
set -eu
stage=$1 hold=$2 uid=$3 gid=$4
shift 4
mount -n -o remount,bind,ro /
for target in $(cut -d' ' -f5 /proc/self/mountinfo | sort -u); do
  case $target in
    / | /proc | /proc/*) ;;
    *) mount -n -o remount,bind,ro "$target" ;;
  esac
done
mount -n -t tmpfs -o mode=1777,size=64m tmpfs "$hold"
IFS=:
for keep in $stage; do
  case $keep in
    /tmp/*)
      mkdir -p "$hold${keep#/tmp}"
      mount -n --bind "$keep" "$hold${keep#/tmp}"
      mount -n -o remount,bind,ro "$hold${keep#/tmp}"
      ;;
  esac
done
unset IFS
mount -n --move "$hold" /tmp
exec setpriv --reuid "$uid" --regid "$gid" --clear-groups env -i "$@"
"""


PURELIB: Final = "import sysconfig; print(sysconfig.get_paths()['purelib'])"


def require_isolation() -> None:
    """Skip unless this machine can set up the Pod's conditions (root, unshare, setpriv)."""
    if os.geteuid() != 0:
        pytest.skip("the image's runtime conditions need root (a mount namespace, setpriv)")
    for tool in ("unshare", "setpriv", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (util-linux); it sets up the Pod's conditions")
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.strip()}")


def build_wheel(directory: Path) -> Path:
    """The capguard wheel as the Dockerfile's build stage makes it, from what it copies."""
    source = directory / "src"
    for path in dockerfile.copied(dockerfile.stages()[0]):
        if (ROOT / path).is_dir():
            shutil.copytree(ROOT / path, source / path,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (source / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / path, source / path)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir",
         str(directory / "wheels"), str(source)],
        capture_output=True, text=True, check=False,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    (wheel,) = (directory / "wheels").glob("capguard-*.whl")
    return wheel


def readable_by_anyone(path: Path) -> bool:
    """Whether a uid that owns nothing here and has no groups can reach and read `path`."""
    path = path.resolve()
    for parent in path.parents:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
    mode = os.stat(path).st_mode
    return bool(mode & stat.S_IROTH) and (not stat.S_ISDIR(mode) or bool(mode & stat.S_IXOTH))


def base_python() -> str:
    """An interpreter of this Python's version that any uid can run, stdlib included.

    The tests' own base interpreter may live under a home only root may enter; then a
    system one of the same minor version serves (the installed dependencies' binary
    wheels need that version).
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [getattr(sys, "_base_executable", sys.executable),
                  f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
    for candidate in candidates:
        if not Path(candidate).exists() or not readable_by_anyone(Path(candidate)):
            continue
        done = subprocess.run(
            [candidate, "-c", "import sys, sysconfig; "
             "print('%d.%d' % sys.version_info[:2], sysconfig.get_paths()['stdlib'])"],
            capture_output=True, text=True, check=False)
        found, _, stdlib = done.stdout.strip().partition(" ")
        if done.returncode == 0 and found == version and readable_by_anyone(Path(stdlib)):
            return candidate
    pytest.skip(f"no Python {version} whose files any uid may read (tried {candidates})")


def install(stage: Path, *, wheel: Path) -> Path:
    """A fresh virtualenv in `stage` with the wheel; returns its `bin/`."""
    site_packages = _dependencies()
    if not readable_by_anyone(site_packages):
        pytest.skip(f"the installed dependencies ({site_packages}) are not readable by "
                    "an unprivileged uid")
    venv = stage / "venv"
    subprocess.run([base_python(), "-m", "venv", "--without-pip", str(venv)], check=True)
    locked = _locked_only(stage / "dependencies", site_packages)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "--quiet", "--no-deps", "--no-index", str(wheel)], check=True)
    purelib = subprocess.run([venv / "bin" / "python", "-c", PURELIB], capture_output=True,
                             text=True, check=True).stdout.strip()
    # A path line adds the folder after the venv's own site-packages and processes none of
    # its .pth files, so the tests' editable capguard stays out: `import capguard` is the wheel.
    (Path(purelib) / "capguard-dependencies.pth").write_text(f"{locked}\n")
    return venv / "bin"


def _locked_only(folder: Path, site_packages: Path) -> Path:
    """A folder of links to what the distributions operator/requirements.lock pins installed
    in the tests' site-packages, and to nothing else: the image's packages (at the tests'
    versions), none of an extra's. A command that needs an extra fails here as in the image.
    """
    folder.mkdir()
    for name in lockfile.pins():
        files = importlib.metadata.distribution(name).files or []
        tops = {file.parts[0] for file in files if file.parts and file.parts[0] != ".."}
        for top in sorted(tops):
            if (site_packages / top).exists() and not (folder / top).exists():
                (folder / top).symlink_to(site_packages / top)
    return folder


@dataclasses.dataclass(frozen=True)
class Pod:
    """Where and as whom the restricted commands run."""

    stage: Path  # the virtualenv and the kubeconfig, read-only inside
    hold: Path  # an empty directory, the new /tmp's first mount point
    uid: int
    gid: int
    env: Mapping[str, str]  # the whole environment of the command
    capguard: Path  # the virtualenv's console script, the image's entrypoint

    def command(self, argv: Sequence[str]) -> list[str]:
        assignments = [f"{name}={value}" for name, value in self.env.items()]
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", LOCK_DOWN,
                "lock-down", f"{self.stage}:{_dependencies()}", str(self.hold),
                str(self.uid), str(self.gid),
                *assignments, *argv]

    def run(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(argv), capture_output=True, text=True, check=False,
                              cwd="/", timeout=60)

    def start(self, argv: Sequence[str], *, log: Path) -> subprocess.Popen[bytes]:
        # unshare, sh, setpriv and env all exec: the process is the command itself.
        with log.open("wb") as sink:
            return subprocess.Popen(self.command(argv), stdout=sink, stderr=subprocess.STDOUT,
                                    cwd="/")


def _dependencies() -> Path:
    """The site-packages the virtualenv's .pth file points at (see `install`)."""
    return Path(sysconfig.get_paths()["purelib"])
