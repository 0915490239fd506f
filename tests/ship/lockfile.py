"""operator/requirements.lock read as data: its pins, their hashes, and why each is there.

hack/lock.sh writes it with pip-compile: a `name==version \\` line, its `--hash=sha256:`
lines, then `# via` comments naming what needs it (`capguard (pyproject.toml)` for the
base requirements themselves).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from typing import Final

from .manifests import ROOT

LOCK: Final = ROOT / "operator" / "requirements.lock"
CAPGUARD: Final = "capguard (pyproject.toml)"


@dataclasses.dataclass(frozen=True)
class Pin:
    name: str  # normalized as PEP 503 does: lower case, runs of -_. as one -
    version: str
    hashes: tuple[str, ...]
    needed_by: frozenset[str]


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, Pin]:
    """The lock's pins by normalized name."""
    found: dict[str, Pin] = {}
    for block in re.split(r"\n(?=\S)", LOCK.read_text()):
        head = re.match(r"([A-Za-z0-9._-]+)==(\S+)", block)
        if head is None:
            assert block.startswith("#"), f"not a pin: {block[:80]!r}"
            continue
        hashes = tuple(re.findall(r"--hash=(sha256:[0-9a-f]{64})", block))
        comments = re.findall(r"^\s+#\s*(.*?)\s*$", block, flags=re.MULTILINE)
        via = [re.sub(r"^via\b\s*", "", comment) for comment in comments]
        needed_by = frozenset(v if v == CAPGUARD else normalized(v) for v in via if v)
        name = normalized(head[1])
        found[name] = Pin(name=name, version=head[2], hashes=hashes, needed_by=needed_by)
    return found


def base_requirements() -> dict[str, str]:
    """pyproject.toml's `dependencies`: normalized name -> lower bound."""
    bounds: dict[str, str] = {}
    for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
            "dependencies"]:
        found = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+)\s*", requirement)
        assert found, f"pyproject.toml: {requirement!r} has no plain >= lower bound"
        bounds[normalized(found[1])] = found[2]
    return bounds
