#!/usr/bin/env bash
# Render deploy/ (CRDs, namespace capguard-system, RBAC, the operator) with the operator's
# image set to IMAGE, as `kustomize edit set image` would, without touching deploy/:
# `kubectl kustomize deploy/` goes into a temporary kustomization that sets `images:`.
#   hack/render.sh IMAGE                 # to stdout: make deploy pipes it to kubectl apply
#   hack/render.sh IMAGE FILE            # to FILE (make build-installer: dist/install.yaml)
# IMAGE is [REGISTRY[:PORT]/]NAME:TAG, NAME@sha256:DIGEST or NAME:TAG@sha256:DIGEST.
set -euo pipefail

usage_error() {
  echo "error: $*" >&2
  exit 2
}

if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage_error "usage: hack/render.sh IMAGE [FILE]"; fi
image=$1
output=${2:-}
case $output in
  "" | /*) ;;
  *) output=$PWD/$output ;;  # FILE is relative to where it was called from
esac
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=hack/kind-lib.sh
source hack/kind-lib.sh

# One path component of an image name, as the distribution reference grammar has it.
component='[a-z0-9]+([._-]+[a-z0-9]+)*'
name_pattern="^([A-Za-z0-9.-]+(:[0-9]+)?/)?$component(/$component)*\$"
tag_pattern='^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$'
digest_pattern='^[a-z0-9]+:[a-f0-9]{32,}$'
reference_help="give REGISTRY[:PORT]/NAME:TAG or NAME@sha256:DIGEST"

name=$image tag="" digest=""
if [[ $name == *@* ]]; then
  digest=${name#*@}
  name=${name%%@*}
fi
if [[ ${name##*/} == *:* ]]; then  # a colon after the last slash is a tag, not a port
  tag=${name##*:}
  name=${name%:*}
fi
[[ $name =~ $name_pattern ]] \
  || usage_error "IMAGE=$image: '$name' is not an image name (lowercase path components); $reference_help"
[ -z "$tag" ] || [[ $tag =~ $tag_pattern ]] \
  || usage_error "IMAGE=$image: ':$tag' is not a tag; $reference_help"
[ -z "$digest" ] || [[ $digest =~ $digest_pattern ]] \
  || usage_error "IMAGE=$image: '@$digest' is not a digest; $reference_help"
# Without either, the image would be :latest, which imagePullPolicy IfNotPresent never
# pulls again once a node has a copy: every node could run a different build.
[ -n "$tag$digest" ] || usage_error "IMAGE=$image names no tag or digest; $reference_help"

need_kubectl
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
kubectl kustomize deploy/ >"$scratch/deploy.yaml"
{
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources: [deploy.yaml]"
  echo "images:"
  echo "  - name: capguard"  # the name deploy/manager/deployment.yaml uses
  echo "    newName: \"$name\""
  [ -z "$tag" ] || echo "    newTag: \"$tag\""
  [ -z "$digest" ] || echo "    digest: \"$digest\""
} >"$scratch/kustomization.yaml"

if [ -z "$output" ]; then
  kubectl kustomize "$scratch"
  exit 0
fi
mkdir -p "$(dirname "$output")"
{
  echo "# capguard: the CRDs, namespace capguard-system, RBAC and the operator ($image)."
  echo "#   kubectl apply -f install.yaml"
  echo "# Written by make build-installer (hack/render.sh) from deploy/; docs/deploy.md."
  kubectl kustomize "$scratch"
} >"$scratch/install.yaml"
mv "$scratch/install.yaml" "$output"
echo "==> wrote $output (operator image $image)" >&2
