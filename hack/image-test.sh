#!/usr/bin/env bash
# Build the operator image and run it in Docker as a kubelet would run deploy/'s and
# deploy/demo/'s Pods (tests/ship/test_image_container.py): each Pod logging in as its
# service account over TLS to an API server that enforces the manifests' RBAC, probed as
# its manifest says; the operator's replicas, the demo's engines, gateway and load. Needs
# Docker (a running daemon) and the tests' .venv (hack/setup.sh).
#
# The image is the one the manifests name (capguard:0.1.0). Where the Dockerfile's base
# cannot be pulled (no registry), a stand-in is built from Debian's archive first
# (hack/base-image.sh: needs root and debootstrap) and the build uses the host's network,
# so that pip reaches the index as this machine's pip does.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/setup.sh
image=$(.venv/bin/python -c 'import sys; sys.path[:0] = ["tests"]
from ship.manifests import ROOT, kustomize, single
(c,) = single(kustomize(ROOT / "deploy"), "Deployment")["spec"]["template"]["spec"]["containers"]
print(c["image"])')
base=$(sed -n 's/^ARG PYTHON_IMAGE=//p' operator/Dockerfile)
build=(docker build --tag "$image" --file operator/Dockerfile)
if ! docker image inspect "$base" >/dev/null 2>&1 && ! docker pull "$base" >/dev/null 2>&1; then
  echo "==> $base cannot be pulled here: building a stand-in from Debian (hack/base-image.sh)"
  build+=(--network host --build-arg "PYTHON_IMAGE=$(bash hack/base-image.sh)")
fi
echo "==> ${build[*]} ."
"${build[@]}" .
echo "==> the image in Docker, as the kubelet runs it"
.venv/bin/python -m pytest -p no:cacheprovider -v -rs tests/ship/test_image_container.py "$@"
