#!/usr/bin/env bash
# Refresh operator/requirements.lock, the image's pinned install: every distribution the
# base install (pyproject.toml's `dependencies`, no extras) needs, with `==` and the
# sha256 of each of its files on PyPI, resolved for the image's Python (operator/Dockerfile
# installs it with --require-hashes). Run it after changing `dependencies`, or to take
# newer releases; tests/ship/test_lock.py fails while the lock and pyproject.toml disagree.
# Arguments go to pip-compile (e.g. --upgrade-package aiohttp).
set -euo pipefail
cd "$(dirname "$0")/.."
image_python=$(sed -nE 's/^ARG PYTHON_IMAGE=python:([0-9]+\.[0-9]+)\..*/\1/p' operator/Dockerfile)
PYTHON=${PYTHON:-python$image_python}
found=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$found" != "$image_python" ]; then
  echo "hack/lock.sh: $PYTHON is Python $found; the image runs $image_python: PYTHON=python$image_python hack/lock.sh" >&2
  exit 2
fi
work=out/lock
if [ ! -x "$work/venv/bin/pip-compile" ]; then
  "$PYTHON" -m venv "$work/venv"
  "$work/venv/bin/python" -m pip install --quiet pip-tools==7.7.0
fi
# The lock is the public index's: this machine's own pip configuration (mirrors,
# find-links, constraints) stays out of it unless PIP_CONFIG_FILE names one.
export PIP_CONFIG_FILE=${PIP_CONFIG_FILE:-/dev/null}
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_CONSTRAINT
CUSTOM_COMPILE_COMMAND="hack/lock.sh" "$work/venv/bin/pip-compile" --quiet \
  --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
  --output-file operator/requirements.lock "$@" pyproject.toml
echo "==> operator/requirements.lock: $(grep -c '==' operator/requirements.lock) distributions"
