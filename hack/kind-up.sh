#!/usr/bin/env bash
# Create the kind cluster "capguard" (if absent), build the operator image and load it
# into the cluster, install the CRDs, deploy the operator and wait for its rollout.
#   hack/kind-up.sh                      # then: export KUBECONFIG=out/kind-capguard.kubeconfig
# Environment: CLUSTER (capguard), IMAGE (capguard:0.1.0), KIND_KUBECONFIG.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=hack/kind-lib.sh
source hack/kind-lib.sh

need_docker
need_kind
need_kubectl
mkdir -p "$(dirname "$KIND_KUBECONFIG")"

if cluster_exists; then
  echo "==> kind cluster $CLUSTER exists"
  kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KIND_KUBECONFIG" >/dev/null
else
  echo "==> creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --config hack/kind-config.yaml \
    --kubeconfig "$KIND_KUBECONFIG" --wait 120s
fi
export KUBECONFIG="$KIND_KUBECONFIG"
need_supported_cluster

echo "==> building $IMAGE"
docker build --tag "$IMAGE" --file operator/Dockerfile .

echo "==> loading $IMAGE into kind cluster $CLUSTER"
load_image "$IMAGE" "$CLUSTER"

echo "==> installing the CRDs"
kubectl apply -k crds/
kubectl wait --for=condition=Established --timeout=60s \
  crd/inferenceengines.capguard.dev crd/modelcapacities.capguard.dev \
  crd/circuitbreakers.capguard.dev

redeploy=false
if kubectl -n "$OPERATOR_NAMESPACE" get deployment/capguard-operator >/dev/null 2>&1; then
  redeploy=true
fi
echo "==> deploying the operator ($IMAGE)"
# What make deploy applies: deploy/ with the image just loaded.
bash hack/render.sh "$IMAGE" | kubectl apply --filename=-
if [ "$redeploy" = true ]; then
  # Same tag, new image: restart so the pods pick up what was just loaded.
  kubectl -n "$OPERATOR_NAMESPACE" rollout restart deployment/capguard-operator
fi
kubectl -n "$OPERATOR_NAMESPACE" rollout status deployment/capguard-operator --timeout=180s

cat <<DONE

capguard is running in kind cluster $CLUSTER. Try:
  export KUBECONFIG=$KIND_KUBECONFIG
  kubectl apply -k deploy/demo/
  kubectl get ie,mc,cb -n capguard-demo
DONE
