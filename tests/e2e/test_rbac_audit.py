"""RBAC proven by the requests the operator made (issue 5): the operator runs as the
deployment runs it (cluster-wide, leader election on the Lease in capguard-system,
logged in as its service account) through a representative scenario on an embedded API
server that enforces `kubectl kustomize deploy/`'s RBAC, applied with kubectl, and records
every request: none may be refused (sufficient), and every rule must have been used
(minimal).

The operator's requests (user agent `capguard`/`kopf`) are written as JSON lines to
`CAPGUARD_AUDIT_LOG` when it is set, for `tests/ship/test_rbac.py` and CI to check again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from ship import container, manifests, rbac

from . import harness
from .conftest import Operators, Target, embedded_cluster

AUDIT_LOG_VARIABLE = "CAPGUARD_AUDIT_LOG"


def _scenario(kube: harness.Kubectl) -> None:
    """Bring a fleet up, scale it, trip and release a breaker after a long pause (the batch
    is refused), delete a model: every kind of write the operator makes."""
    kube.apply(*harness.engines("e", 4), harness.model("chat", replicas=2),
               harness.breaker("maint", pause_threshold="1s", max_batch_after_pause=0))
    harness.wait_serving(kube, {"chat": 2})
    kube.patch("cb", "maint", {"spec": {"open": True}})
    harness.wait_until(lambda: kube.get("cb", "maint")["status"]["state"] == "Open",
                       timeout=10, what="breaker Open")
    tripped = time.monotonic()
    kube.run("scale", "mc/chat", "--replicas=3")
    harness.wait_until(lambda: kube.get("cb", "maint")["status"].get("heldActions", 0) >= 1,
                       timeout=10, what="the scale-up held")
    time.sleep(max(0.0, tripped + 1.5 - time.monotonic()))
    kube.patch("cb", "maint", {"spec": {"open": False}})
    harness.wait_until(lambda: kube.events(reason="BatchRefused"), timeout=10,
                       what="the batch refused")
    harness.wait_serving(kube, {"chat": 3})
    kube.run("scale", "mc/chat", "--replicas=2")
    harness.wait_serving(kube, {"chat": 2})


@pytest.mark.slow
def test_every_request_the_operator_made_is_allowed_by_deploy_rbac(
    target: Target, kube: harness.Kubectl, operators: Operators, tmp_path: Path,
) -> None:
    if not target.embedded:
        pytest.skip("the request log comes from the embedded API server's audit option")
    assert kube.namespace is not None
    binary = shutil.which("kubectl") or "kubectl"
    deployed_objects = manifests.kustomize(harness.DEPLOY)
    with embedded_cluster(tmp_path, binary=binary, rbac=True) as (cluster, audit_log):
        cluster.run("create", "namespace", kube.namespace)
        access = tmp_path / "access.yaml"   # deploy/'s, as to a cluster
        access.write_text(yaml.safe_dump_all(
            [o for o in deployed_objects if o["kind"] in container.ACCESS_KINDS]))
        cluster.run("apply", "-n", harness.OPERATOR_NAMESPACE, f"--filename={access}")
        account = next(o for o in deployed_objects if o["kind"] == "ServiceAccount")
        as_operator = container.kubeconfig_as(cluster.kubeconfig,
                                              account["metadata"]["namespace"],
                                              account["metadata"]["name"])
        operator = operators.start(kubeconfig=as_operator, cluster_wide=True,
                                   leader_election=True)
        harness.wait_until(operator.leading, timeout=15, what="the operator to lead")
        _scenario(cluster.in_namespace(kube.namespace))
        operator.stop()  # graceful: it releases the Lease, its watches end and are recorded
        assert operator.process.returncode == 0, operator.log()[-3000:]
        # As deployed (--driver agent, heartbeats counted), it also lists and watches the
        # engines' heartbeat Leases: that is recorded too.
        deployed = operators.start(kubeconfig=as_operator, cluster_wide=True,
                                   leader_election=True,
                                   flags=("--driver=agent", "--heartbeat-timeout=40s"))
        harness.wait_until(deployed.leading, timeout=15, what="the deployed operator to lead")
        time.sleep(1.0)  # its watches are open
        deployed.stop()
        assert deployed.process.returncode == 0, deployed.log()[-3000:]
    # The server has stopped: every request, watches included, is in the log now.
    records = [json.loads(line) for line in audit_log.read_text().splitlines() if line]
    assert container.refused(records) == [], "deploy/'s RBAC did not allow what the operator did"
    ours = [r for r in records if rbac.OPERATOR_AGENTS.match(r.get("user_agent", ""))]
    destination = Path(os.environ.get(AUDIT_LOG_VARIABLE) or tmp_path / "operator-audit.jsonl")
    destination.write_text("".join(json.dumps(r) + "\n" for r in ours))

    requests = list(rbac.operator_requests(ours))
    assert len(requests) > 20, f"too few operator requests recorded: {len(requests)}"
    rules = rbac.rules_for(manifests.kustomize(harness.DEPLOY))
    report = rbac.check(rules=rules, requests=requests)
    print(report)
    assert not report.denied, str(report)
    touched = {(r.api_group, r.full_resource) for r in requests}
    never = sorted({f"{u.api_group or 'core'}/{u.resource} ({u.rule.source})"
                    for u in report.unused if (u.api_group, u.resource) not in touched})
    assert not never, f"rules grant resources the operator never touched: {never}"
    # Minimal down to the verb: every verb of every rule was needed by some request.
    assert not report.unused, f"rules grant verbs the operator never used:\n{report}"
