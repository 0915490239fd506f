"""operator/Dockerfile read as data: its stages, the files they copy, the final user and
environment."""

from __future__ import annotations

import re
import shlex

from .manifests import ROOT

DOCKERFILE = ROOT / "operator" / "Dockerfile"


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), split by FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            found.append([])
        if found:
            found[-1].append(line)
    return found


def copied(stage: list[str]) -> list[str]:
    """What the stage COPYs from the build context (not from another stage)."""
    sources: list[str] = []
    for line in stage:
        if line.upper().startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    return sources


def final_user() -> tuple[int, int]:
    """The final stage's USER as (uid, gid); a missing group is the uid's, as Docker has it."""
    users = [line.split()[1] for line in stages()[-1] if line.upper().startswith("USER ")]
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and (not gid or gid.isdigit()), f"USER {users[-1]} is not numeric"
    return int(uid), int(gid or uid)


def final_env() -> dict[str, str]:
    """The final stage's ENV, with `$VAR` references left as written."""
    env: dict[str, str] = {}
    for line in stages()[-1]:
        if line.upper().startswith("ENV "):
            for token in shlex.split(line[4:]):
                name, _, value = token.partition("=")
                env[name] = value
    return env
