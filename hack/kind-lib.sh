# shellcheck shell=bash
# Shared by hack/kind-*.sh and hack/e2e-kind.sh: names, and checks for the tools kind needs.
# Sourced, not run.

CLUSTER="${CLUSTER:-capguard}"
# A fixed tag (not :latest), so the Deployment uses the copy kind loaded instead of
# pulling. It must match deploy/manager/kustomization.yaml (a test checks it).
DEFAULT_IMAGE=capguard:0.1.0
IMAGE="${IMAGE:-$DEFAULT_IMAGE}"
# kind writes this cluster's kubeconfig here instead of changing ~/.kube/config.
KIND_KUBECONFIG="${KIND_KUBECONFIG:-$PWD/out/kind-$CLUSTER.kubeconfig}"

die() {
  echo "error: $*" >&2
  exit 1
}

need_tool() {
  local tool=$1 how=$2
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed. $how"
}

need_docker() {
  need_tool docker "Install Docker Engine or Docker Desktop (https://docs.docker.com/get-docker/) and start it."
  docker info >/dev/null 2>&1 \
    || die "docker is installed but its daemon does not answer (is Docker running, and may this user use it?)"
}

need_kind() {
  need_tool kind "Install kind >= 0.20 (https://kind.sigs.k8s.io/docs/user/quick-start/#installation), e.g. 'go install sigs.k8s.io/kind@latest'."
}

need_kubectl() {
  need_tool kubectl "Install kubectl >= 1.27 (https://kubernetes.io/docs/tasks/tools/)."
}

cluster_exists() {
  kind get clusters 2>/dev/null | grep -qx "$CLUSTER"
}
