"""An engine's heartbeat: a `coordination.k8s.io/v1` Lease its agent renews.

The kubelet's answer to the same problem (a Node's heartbeat once rewrote its whole
status): each engine has a Lease of the same name in the same namespace, labelled
`capguard.dev/heartbeat=inferenceengine` and owned by the engine (deleting the engine
deletes it), and its agent renews `spec.renewTime` every --heartbeat-interval. A renewal
is a small write that moves the Lease's resourceVersion, not the engine's: the engine's
status is written only when its phase changes, so the operator's writes to an engine,
preconditioned on its resourceVersion, no longer lose to a heartbeat with a 409, and
nobody watching engines wakes for one.

The operator and the gateway read both: an engine is heard at the later of its Lease's
`renewTime` and its `status.lastHeartbeatTime` (which an agent writes with each phase
report, and which agents from before the Lease write every interval).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, Final

from capguard.core import clock

LABEL: Final = "capguard.dev/heartbeat"
OF_ENGINES: Final = "inferenceengine"
SELECTOR: Final = f"{LABEL}={OF_ENGINES}"  # the label selector of every engine's Lease
# How long a Lease says it lasts, in renewals: informational (the operator and the
# gateway judge silence by their own --heartbeat-timeout, 4 intervals by default).
DURATION_RENEWALS: Final = 4
# The Ready reason the operator writes on an engine it no longer hears (as the node
# controller marks a Node whose Lease expired); its agent, alive, reports again.
EXPIRED: Final = "HeartbeatExpired"


def micro_time(epoch: float) -> str:
    """metav1.MicroTime: RFC 3339 with exactly six fractional digits, as a real API server
    requires of a Lease's times."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def renewed(lease: Mapping[str, Any]) -> float | None:
    """When the Lease was last renewed (epoch seconds), or None if it says nothing usable:
    no readable renewTime, or not the heartbeat of the engine of its name (`speaks_for`:
    what an agent never writes, no reader believes)."""
    spec = lease.get("spec")
    if not isinstance(spec, Mapping):
        return None
    if not speaks_for(lease, str((lease.get("metadata") or {}).get("name") or "")):
        return None
    return clock.parse_timestamp(spec.get("renewTime"))


def speaks_for(lease: Mapping[str, Any], engine: str) -> bool:
    """Whether a Lease of the engine's name is its heartbeat: labelled as one, and owned by
    nothing but an InferenceEngine of that name (one deleted and created again keeps its
    name, not its uid; the garbage collector deletes the old one's Lease). Any other
    Lease of that name is another component's, never to be written."""
    meta = lease.get("metadata") or {}
    if (meta.get("labels") or {}).get(LABEL) != OF_ENGINES:
        return False
    return all(o.get("kind") == "InferenceEngine" and o.get("name") == engine
               for o in meta.get("ownerReferences") or [])


def lease(engine: Mapping[str, Any], *, holder: str, interval: float,
          now: float) -> dict[str, Any]:
    """A new Lease for an engine (its body as read: name, namespace and uid)."""
    meta = engine.get("metadata") or {}
    owner = {"apiVersion": str(engine.get("apiVersion") or "capguard.dev/v1alpha1"),
             "kind": "InferenceEngine", "name": meta.get("name"), "uid": meta.get("uid")}
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": meta.get("name"), "labels": {LABEL: OF_ENGINES},
                         "ownerReferences": [owner] if meta.get("uid") else []},
            "spec": renewal(holder=holder, interval=interval, now=now, acquired=True)["spec"]}


def renewal(*, holder: str, interval: float, now: float, acquired: bool = False,
            resource_version: str | None = None) -> dict[str, Any]:
    """The merge patch that renews a Lease (``acquired``: this agent's first, which also
    says who holds it and since when). With ``resource_version`` (the Lease as the agent
    last read or wrote it) the patch is preconditioned: if anything wrote the Lease since,
    or deleted it and created another of that name, the API server answers 409 Conflict
    and writes nothing."""
    spec: dict[str, Any] = {"renewTime": micro_time(now)}
    if acquired:
        spec.update(holderIdentity=holder, acquireTime=micro_time(now),
                    leaseDurationSeconds=max(1, round(DURATION_RENEWALS * interval)))
    if resource_version:
        return {"metadata": {"resourceVersion": resource_version}, "spec": spec}
    return {"spec": spec}
