#!/usr/bin/env bash
# Set up a virtualenv from nothing (idempotent) and run every check CI runs:
# ruff, mypy --strict on the whole package, the import contract, and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=hack/setup.sh
source hack/setup.sh
# promtool and shellcheck for the shipping checks; never fails (their tests skip).
bash hack/install-tools.sh
echo "==> ruff"
.venv/bin/ruff check operator tests bench
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
.venv/bin/python -m pytest -q "$@"
