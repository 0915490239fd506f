# shellcheck shell=bash
# Shared by hack/kind-*.sh, hack/e2e-kind.sh, hack/render.sh and hack/run.sh: names, and
# checks for the tools they need. Sourced, not run.

CLUSTER="${CLUSTER:-capguard}"
# A fixed tag (not :latest), so the Deployment uses the copy kind loaded instead of
# pulling. It must match deploy/manager/kustomization.yaml (a test checks it).
DEFAULT_IMAGE=capguard:0.1.0
IMAGE="${IMAGE:-$DEFAULT_IMAGE}"
# Where deploy/ puts the operator, its RBAC and its Lease (read by the scripts that source this).
# shellcheck disable=SC2034
OPERATOR_NAMESPACE=capguard-system
# kind writes this cluster's kubeconfig here instead of changing ~/.kube/config.
KIND_KUBECONFIG="${KIND_KUBECONFIG:-$PWD/out/kind-$CLUSTER.kubeconfig}"
# The oldest Kubernetes capguard supports, for the cluster and for kubectl: the CRDs' CEL
# rules use fieldPath (1.28: under kubectl's strict field validation a 1.27 server
# refuses the CRDs). The one source of the minimum: README.md, docs/deploy.md and the
# node image hack/kind-config.yaml pins are checked against it
# (tests/ship/test_kubernetes_versions.py).
MIN_KUBERNETES_VERSION=1.28
# The kind release that built the node image hack/kind-config.yaml pins.
MIN_KIND_VERSION=0.23.0

die() {
  echo "error: $*" >&2
  exit 1
}

# load_image IMAGE CLUSTER: the image into the kind cluster's nodes. `kind load
# docker-image` exports every platform the image names; with Docker's containerd image
# store (the default since Docker 29) that can fail with "content digest ... not found"
# (kind issue 3795). Then only this machine's platform is saved and loaded as an
# archive, the workaround kind documents.
load_image() {
  local image=$1 cluster=$2 archive status=0
  if kind load docker-image "$image" --name "$cluster"; then
    return 0
  fi
  echo "==> kind load docker-image failed; loading $image as a single-platform archive"
  archive=$(mktemp "${TMPDIR:-/tmp}/capguard-image.XXXXXX")
  docker image save --platform "linux/$(docker version --format '{{.Server.Arch}}')" \
    --output "$archive" "$image" \
    && kind load image-archive "$archive" --name "$cluster" || status=$?
  rm -f "$archive"
  [ "$status" -eq 0 ] || die "cannot load $image into kind cluster $cluster. With Docker's containerd image store, kind's other workaround is to turn it off: \"features\": {\"containerd-snapshotter\": false} in /etc/docker/daemon.json."
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

# version_at_least HAVE WANT: whether version HAVE (v1.30.0, 1.29+, 0.23.0) is WANT or newer.
version_at_least() {
  local -a have want
  local i part
  IFS=. read -r -a have <<<"${1#v}"
  IFS=. read -r -a want <<<"${2#v}"
  for i in "${!want[@]}"; do
    part=${have[i]:-0}
    part=${part%%[!0-9]*}  # 29+ on some managed clusters, 0-rc.1
    if ((10#${part:-0} > 10#${want[i]})); then return 0; fi
    if ((10#${part:-0} < 10#${want[i]})); then return 1; fi
  done
  return 0
}

# need_version WHAT VERSION MINIMUM HOW: die unless VERSION is MINIMUM or newer.
need_version() {
  local what=$1 version=$2 minimum=$3 how=$4
  [ -n "$version" ] || die "cannot tell which version $what is. $how"
  version_at_least "$version" "$minimum" \
    || die "$what is $version; capguard needs $minimum or newer. $how"
}

# The first "gitVersion" of a Kubernetes version.Info in JSON (kubectl's, the API server's).
git_version() {
  sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p' | head -n 1
}

need_kind() {
  local how="Install kind >= $MIN_KIND_VERSION (https://kind.sigs.k8s.io/docs/user/quick-start/#installation), e.g. 'go install sigs.k8s.io/kind@v$MIN_KIND_VERSION'."
  need_tool kind "$how"
  local _ version
  read -r _ version _ <<<"$(kind version 2>/dev/null)"
  need_version kind "$version" "$MIN_KIND_VERSION" "$how"
}

need_kubectl() {
  local how="Install kubectl >= $MIN_KUBERNETES_VERSION (https://kubernetes.io/docs/tasks/tools/)."
  need_tool kubectl "$how"
  need_version kubectl "$(kubectl version --client --output=json 2>/dev/null | git_version)" \
    "$MIN_KUBERNETES_VERSION" "$how"
}

# The cluster KUBECONFIG points at runs a supported Kubernetes.
need_supported_cluster() {
  need_version "the cluster's Kubernetes" "$(kubectl get --raw /version | git_version)" \
    "$MIN_KUBERNETES_VERSION" \
    "Recreate it with the node image hack/kind-config.yaml pins: hack/kind-down.sh, then hack/kind-up.sh."
}

cluster_exists() {
  kind get clusters 2>/dev/null | grep -qx "$CLUSTER"
}
