#!/usr/bin/env bash
# Run the end-to-end suite (tests/e2e/) against the kind cluster hack/kind-up.sh made, with
# capguard running IN the cluster as users run it: from its image, with its ServiceAccount,
# RBAC, probes and two replicas (tests/e2e/test_in_cluster.py). The suite never scales it;
# tests that would start an operator of their own on this machine skip there.
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

operator=deployment/capguard-operator
kubectl -n "$OPERATOR_NAMESPACE" get "$operator" >/dev/null 2>&1 \
  || die "capguard is not deployed in kind cluster $CLUSTER: run hack/kind-up.sh"
declared=$(sed -n 's/^  replicas: \([0-9][0-9]*\)$/\1/p' deploy/manager/deployment.yaml)
[ -n "$declared" ] || die "cannot read spec.replicas from deploy/manager/deployment.yaml"

# Put the operator back at the replicas deploy/ declares, should anything have scaled it
# (an older suite paused it at 0 for the session): before the run, and after it however
# it ends, so that a killed run never leaves the cluster without its operator.
restore_replicas() {
  local now
  now=$(kubectl -n "$OPERATOR_NAMESPACE" get "$operator" \
    --output=jsonpath='{.spec.replicas}' 2>/dev/null) || return 0
  if [ "$now" != "$declared" ]; then
    echo "==> $operator has ${now:-no} replicas; restoring the $declared deploy/ declares" >&2
    kubectl -n "$OPERATOR_NAMESPACE" scale "$operator" --replicas="$declared" || true
  fi
}
restore_replicas
trap restore_replicas EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
kubectl -n "$OPERATOR_NAMESPACE" rollout status "$operator" --timeout=180s

echo "==> e2e against kind cluster $CLUSTER, capguard running in it"
CAPGUARD_E2E_KUBECONFIG="$KIND_KUBECONFIG" .venv/bin/python -m pytest tests/e2e "$@"
