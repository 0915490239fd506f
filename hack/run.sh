#!/usr/bin/env bash
# Run the operator on this machine against the current kubectl context (make run), as the
# deployed one runs: the agent driver (engines report through their `capguard engine`
# agents, docs/engines.md) and leader election on the Lease capguard-leader. Extra
# arguments go to `capguard run`: --driver=simulated for a cluster with no agents,
# --namespace=NS to watch one namespace, --metrics-port=N.
# The Lease is the deployed operator's (namespace capguard-system) when that namespace
# exists, so the two never act at once: while a deployed replica leads, this one is the
# standby (make undeploy first to watch this one act).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=hack/kind-lib.sh
source hack/kind-lib.sh

PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || die "no $PYTHON: run make setup first"
need_kubectl
context=$(kubectl config current-context 2>/dev/null) \
  || die "kubectl has no current context: set KUBECONFIG or run kubectl config use-context NAME"
lease_namespace=default
if kubectl get namespace "$OPERATOR_NAMESPACE" >/dev/null 2>&1; then
  lease_namespace=$OPERATOR_NAMESPACE
fi
echo "==> capguard run against context $context (Lease capguard-leader in $lease_namespace)" >&2
exec "$PYTHON" -m capguard.cli run --driver=agent --leader-election \
  --lease-namespace="$lease_namespace" "$@"
