"""operator/requirements.lock: the image's install, pinned and hashed, and nothing else.

Checked here without an index: every pin has `==` and sha256 hashes, the lock pins the
base requirements of pyproject.toml (no extra's) within their bounds and nothing that
they do not need, and the Dockerfile installs from it alone. tests/ship/test_packaging.py
installs it into an empty virtualenv and finds the wheel's needs met by exactly these
pins.
"""

from __future__ import annotations

import re

from . import dockerfile, lockfile


def test_every_pin_is_exact_and_hashed() -> None:
    pins = lockfile.pins()
    assert pins, f"{lockfile.LOCK} pins nothing"
    for pin in pins.values():
        assert re.fullmatch(r"\d+(\.\d+)*(\.post\d+)?", pin.version), pin
        assert pin.hashes, f"{pin.name}=={pin.version} has no --hash: run hack/lock.sh"


def test_the_lock_pins_pyproject_base_requirements_within_their_bounds() -> None:
    pins = lockfile.pins()
    bounds = lockfile.base_requirements()
    direct = {name for name, pin in pins.items() if lockfile.CAPGUARD in pin.needed_by}
    assert direct == set(bounds), (
        "pyproject.toml's dependencies and the lock differ: run hack/lock.sh")
    for name, lowest in bounds.items():
        assert _release(pins[name].version) >= _release(lowest), (
            f"{name}=={pins[name].version} is below pyproject.toml's >={lowest}")


def test_the_lock_holds_nothing_the_base_requirements_do_not_need() -> None:
    pins = lockfile.pins()
    needed = {lockfile.CAPGUARD}
    for _ in pins:  # the `via` graph from capguard, one level a round
        needed |= {name for name, pin in pins.items() if pin.needed_by & needed}
    assert set(pins) <= needed, f"pinned for nothing: {sorted(set(pins) - needed)}"
    for extra_only in ("matplotlib", "numpy", "cel-python", "rich"):
        assert extra_only not in pins, f"{extra_only} is an extra's, not the image's"


def test_the_image_installs_the_lock_with_hashes_and_the_wheel_without_dependencies() -> None:
    build = dockerfile.stages()[0]
    assert "operator/requirements.lock" in dockerfile.copied(build)
    run = " ".join(line for line in build if line.upper().startswith("RUN "))
    installs = [step for step in run.split("&&") if " install " in step]
    assert installs, "the build stage installs nothing"
    for step in installs:
        locked = "--require-hashes" in step and re.search(
            r"(-r|--requirement)\s+operator/requirements\.lock\b", step)
        assert locked or ("--no-deps" in step and "--no-index" in step), (
            f"an install that can bring in an unlocked distribution: {step.strip()}")
    assert re.search(r"\bpip check\b", run), "nothing checks the lock meets the wheel's needs"


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("post")[0]))
