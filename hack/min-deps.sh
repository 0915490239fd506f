#!/usr/bin/env bash
# Install capguard with every dependency at the lowest version pyproject.toml allows
# (its `>=` bounds, pinned with `==` in a constraints file) into out/min-deps/venv, then
# run the unit tests there. A bound that is not true fails here. Arguments go to pytest.
# The unit tests exercise every subcommand, so the demo extra (all the others) is installed;
# of the dev extra only the test runners are installed: ruff and mypy are not run here,
# and kubernetes (the e2e suite's client) would lift aiohttp and PyYAML above capguard's
# own minimum.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
work=out/min-deps
mkdir -p "$work"
"$PYTHON" - >"$work/constraints.txt" <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
requirements = project["dependencies"] + [
    r for extra in project["optional-dependencies"].values() for r in extra]
for requirement in requirements:
    if requirement.startswith("capguard["):  # an extra made of others, bounded there
        continue
    found = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([^,;\s]+)\s*", requirement)
    if found is None:
        raise SystemExit(f"pyproject.toml: {requirement!r} has no plain >= lower bound")
    print(f"{found[1]}=={found[2]}")
PY
echo "==> constraints ($work/constraints.txt): $(tr "\n" " " <"$work/constraints.txt")"
rm -rf "$work/venv"
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet --prefer-binary \
  --constraint "$work/constraints.txt" -e '.[demo]' pytest pytest-asyncio pytest-timeout hypothesis
"$work/venv/bin/python" -m pip list --format=freeze >"$work/installed.txt"
if [ $# -eq 0 ]; then
  set -- tests --ignore=tests/e2e --ignore=tests/demo --ignore=tests/ship
fi
echo "==> pytest $*"
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
