#!/usr/bin/env bash
# Run the end-to-end suite as it runs against an existing cluster (CAPGUARD_E2E_KUBECONFIG,
# the path hack/e2e-kind.sh takes), without kind: the embedded API server is started on
# its own as that cluster, over HTTPS and authorizing by RBAC, and the suite is given its
# admin kubeconfig. What needs Pods or the embedded server's own options skips, as on kind
# without capguard deployed. Extra arguments go to pytest.
#   hack/e2e-external.sh -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || { echo "e2e-external: no $PYTHON: run make setup first" >&2; exit 1; }
command -v openssl >/dev/null || { echo "e2e-external: needs openssl (the server's certificate)" >&2; exit 1; }

work=$(mktemp -d)
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=127.0.0.1" \
  -addext "subjectAltName=IP:127.0.0.1" -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
"$PYTHON" -m capguard.localcluster --port=0 --kubeconfig="$work/kubeconfig" \
  --tls-cert-file="$work/cert.pem" --tls-private-key-file="$work/key.pem" \
  --authorization-mode=RBAC >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
  grep -q "serving at" "$work/server.log" && break
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.1
done
grep -q "serving at" "$work/server.log" || { echo "e2e-external: the server did not start" >&2; exit 1; }
echo "==> e2e against $(sed -n 's/.*serving at //p' "$work/server.log") as an existing cluster" >&2
CAPGUARD_E2E_KUBECONFIG="$work/kubeconfig" "$PYTHON" -m pytest tests/e2e "$@"
