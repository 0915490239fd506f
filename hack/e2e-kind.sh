#!/usr/bin/env bash
# Run the end-to-end suite (tests/e2e/) against the kind cluster hack/kind-up.sh made.
# The suite touches a real cluster only through CAPGUARD_E2E_KUBECONFIG, never merely
# because KUBECONFIG is set. Extra arguments go to pytest.
#   hack/kind-up.sh && hack/e2e-kind.sh -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=hack/kind-lib.sh
source hack/kind-lib.sh

need_kind
need_kubectl
cluster_exists || die "no kind cluster named $CLUSTER: run hack/kind-up.sh first"
[ -x .venv/bin/python ] || die "no .venv: run hack/setup.sh first"
mkdir -p "$(dirname "$KIND_KUBECONFIG")"
kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KIND_KUBECONFIG" >/dev/null
export KUBECONFIG="$KIND_KUBECONFIG"
need_supported_cluster
kubectl -n capguard-system rollout status deployment/capguard-operator --timeout=120s

echo "==> e2e against kind cluster $CLUSTER"
CAPGUARD_E2E_KUBECONFIG="$KIND_KUBECONFIG" .venv/bin/python -m pytest tests/e2e "$@"
