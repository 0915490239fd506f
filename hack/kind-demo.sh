#!/usr/bin/env bash
# Play the march-4 incident on kind with real traffic (deploy/demo/): engines as the Pods
# of a StatefulSet (an agent and a stand-in model server each), the gateway, and a load
# Job sending open-loop requests through it. Then the incident: open the breaker, bump
# both models' revision while it is open (the refreshes the pause queues), keep it open
# past its pauseThreshold, release, and watch capguard refuse the queued backlog as one
# batch (the BatchRefused Event) while the load keeps counting answered requests.
#   hack/kind-demo.sh                    # creates or reuses kind cluster capguard
# Each run starts from a fresh namespace capguard-demo. Environment: CLUSTER (capguard),
# KIND_KUBECONFIG, WATCH_SECONDS (how long to watch after the release: 120).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=hack/kind-lib.sh
source hack/kind-lib.sh

# What deploy/demo/ makes (tests/ship/test_kind_demo.py checks these names against it).
DEMO_NAMESPACE=capguard-demo
BREAKER=capacity
MODELS=(chat code)
ENGINE_PODS=app.kubernetes.io/name=capguard-engine
GATEWAY=deployment/capguard-gateway
LOAD_JOB=job/capguard-load
WATCH_SECONDS="${WATCH_SECONDS:-120}"

need_docker
need_kind
need_kubectl
need_tool python3 "Install Python 3 (it reads the load's JSON lines)."
# deploy/demo/ names the image capguard:0.1.0, the one hack/kind-up.sh loads by default.
[ "$IMAGE" = "$DEFAULT_IMAGE" ] \
  || die "deploy/demo/ runs $DEFAULT_IMAGE; unset IMAGE (it is $IMAGE) to play the demo"

bash hack/kind-up.sh
export KUBECONFIG="$KIND_KUBECONFIG"
demo() { kubectl --namespace="$DEMO_NAMESPACE" "$@"; }
say() { printf '\n==> %s %s\n' "$(date +%H:%M:%S)" "$*"; }

# The load's JSON lines (stdin) as text: `last` prints the last second of each model;
# `phases NAME=EPOCH...` the requests answered per model from each moment to the next.
LOAD_REPORT=$(cat <<'PY'
import json, sys
mode, marks = sys.argv[1], [m.split("=", 1) for m in sys.argv[2:]]
started, seconds = None, {}
for line in sys.stdin:
    try:
        doc = json.loads(line)
    except ValueError:
        continue
    if "started" in doc:
        started = doc["started"]
    elif "summary" in doc:
        s = doc["summary"]
        print(f"  load finished: {s['succeeded']}/{s['sent']} answered "
              f"({100 * s['success_rate']:.2f} %), failed {s['failed']}")
    elif "model" in doc:
        seconds.setdefault(doc["model"], []).append(doc)
if started is None:
    print("  the load has printed nothing yet")
    sys.exit()
if mode == "last":
    for model, found in sorted(seconds.items()):
        s = found[-1]
        print(f"  {model}: second {s['second']}: {s['succeeded']}/{s['sent']} answered, "
              f"failed {s['failed'] or '-'}")
    sys.exit()
bounds = [(name, float(at) - started) for name, at in marks]
print(f"  {'phase':<22}" + "".join(f"{m:>18}" for m in sorted(seconds)))
for (name, begin), (_, end) in zip(bounds, bounds[1:]):
    cells = []
    for model in sorted(seconds):
        window = [s for s in seconds[model] if begin <= s["second"] < end]
        sent = sum(s["sent"] for s in window)
        answered = sum(s["succeeded"] for s in window)
        cells.append(f"{answered}/{sent} {100 * answered / sent:5.1f}%" if sent else "-")
    print(f"  {name:<22}" + "".join(f"{c:>18}" for c in cells))
PY
)
load_report() {
  demo logs "$LOAD_JOB" | python3 -c "$LOAD_REPORT" "$@" \
    || echo "  (the load's log cannot be read now)"
}

if kubectl get namespace "$DEMO_NAMESPACE" >/dev/null 2>&1; then
  say "deleting namespace $DEMO_NAMESPACE from an earlier run (its engines drain first)"
  kubectl delete namespace "$DEMO_NAMESPACE" --wait=true --timeout=180s
fi
say "applying deploy/demo/: engines, gateway, load"
kubectl apply -k deploy/demo/

say "waiting for the engine Pods to run (spare engines serve nothing, so are never Ready)"
for _ in $(seq 60); do
  [ -n "$(demo get pods --selector="$ENGINE_PODS" --output=name)" ] && break
  sleep 2
done
demo wait --for=jsonpath='{.status.phase}'=Running pod --selector="$ENGINE_PODS" \
  --timeout=300s
say "waiting for each model's engines to be Serving (the stand-in loads in 20s)"
for model in "${MODELS[@]}"; do
  replicas=$(demo get mc "$model" --output=jsonpath='{.spec.replicas}')
  demo wait --for=jsonpath='{.status.serving}'="$replicas" "mc/$model" --timeout=300s
done
demo get ie
demo rollout status "$GATEWAY" --timeout=180s
demo wait --for=jsonpath='{.status.active}'=1 "$LOAD_JOB" --timeout=180s
serving_at=$(date +%s)
say "the load runs; a minute of normal traffic"
sleep 60
load_report last

say "the incident: breaker $BREAKER opened"
opened_at=$(date +%s)
demo patch cb "$BREAKER" --type=merge --patch='{"spec":{"open":true}}'
demo wait --for=jsonpath='{.status.state}'=Open "cb/$BREAKER" --timeout=60s
for model in "${MODELS[@]}"; do
  demo patch mc "$model" --type=merge --patch='{"spec":{"revision":"r2"}}'
done
threshold=$(demo get cb "$BREAKER" --output=jsonpath='{.spec.pauseThreshold}')
pause=$(python3 -c 'import re, sys; n, u = re.fullmatch(r"(\d+)([smh])", sys.argv[1]).groups(); print(int(n) * {"s": 1, "m": 60, "h": 3600}[u] + 15)' "$threshold")
say "revisions bumped to r2 while open: the refreshes queue; open for ${pause}s (pauseThreshold $threshold)"
sleep "$pause"
demo get cb "$BREAKER"
load_report last

say "released: the backlog is one post-pause batch"
released_at=$(date +%s)
demo patch cb "$BREAKER" --type=merge --patch='{"spec":{"open":false}}'
for ((waited = 0; waited < WATCH_SECONDS; waited += 20)); do
  sleep 20
  say "$((waited + 20))s after the release"
  demo get cb,mc
  load_report last
done
ended_at=$(date +%s)

say "events on breaker $BREAKER"
demo get events --field-selector="involvedObject.name=$BREAKER" \
  --sort-by=.lastTimestamp --output=custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message
refused=$(demo get events --field-selector="involvedObject.name=$BREAKER,reason=BatchRefused" \
  --output=name | wc -l | tr -d ' ')
say "summary: BatchRefused events: $refused; requests answered per phase"
load_report phases "before the incident=$serving_at" \
  "breaker open=$opened_at" "after the release=$released_at" "end=$ended_at"
cat <<DONE

The load keeps running (30 minutes, then its summary): kubectl -n $DEMO_NAMESPACE logs -f $LOAD_JOB
The fleet: kubectl -n $DEMO_NAMESPACE get ie,mc,cb (KUBECONFIG=$KIND_KUBECONFIG)
DONE
