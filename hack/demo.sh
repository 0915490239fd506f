#!/usr/bin/env bash
# Set up (idempotent) and run the demo on the embedded default: the march-4 incident
# played live against the embedded API server by the real operator.
# Extra arguments go to `capguard demo` (e.g. --naive, --json, --kubeconfig FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=hack/setup.sh
source hack/setup.sh
mkdir -p out
exec .venv/bin/capguard demo "$@"
