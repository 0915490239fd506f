#!/usr/bin/env bash
# Delete the kind cluster "capguard" and its kubeconfig (a no-op when it is not there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=hack/kind-lib.sh
source hack/kind-lib.sh

need_kind
if cluster_exists; then
  echo "==> deleting kind cluster $CLUSTER"
  kind delete cluster --name "$CLUSTER"
else
  echo "==> no kind cluster named $CLUSTER"
fi
rm -f "$KIND_KUBECONFIG"
