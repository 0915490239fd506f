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

A Lease speaks for one engine *object*, not for a name (`belongs`): an engine deleted and
created again keeps its name, not its uid, and the old one's Lease lives on until the
garbage collector deletes it. Its renewals say nothing of the new engine; the new
engine's agent takes it over (`renewal` with ``engine``).
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Heartbeat:
    """What a heartbeat Lease says, as the operator and the gateway keep it."""

    renewed: float  # its last renewal, epoch seconds
    owner: str  # the uid of the engine it is the heartbeat of ("": its agent did not know)


def read(lease: Mapping[str, Any]) -> Heartbeat | None:
    """The Lease's heartbeat, or None if it says nothing usable (`renewed`)."""
    renewed_at = renewed(lease)
    return None if renewed_at is None else Heartbeat(renewed_at, owner_uid(lease))


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
    """Whether a Lease of the engine's name is the heartbeat of an engine of that name:
    labelled as one, and owned by nothing but an InferenceEngine of that name. Of which
    one (an engine deleted and created again keeps its name, not its uid) is `belongs`'s
    to say. Any other Lease of that name is another component's, never to be written."""
    meta = lease.get("metadata") or {}
    if (meta.get("labels") or {}).get(LABEL) != OF_ENGINES:
        return False
    return all(o.get("kind") == "InferenceEngine" and o.get("name") == engine
               for o in meta.get("ownerReferences") or [])


def owner_uid(lease: Mapping[str, Any]) -> str:
    """The uid of the InferenceEngine a heartbeat Lease is owned by, "" if none is named
    (an agent that did not know its engine's uid)."""
    owners = (lease.get("metadata") or {}).get("ownerReferences") or []
    return next((str(o["uid"]) for o in owners
                 if o.get("kind") == "InferenceEngine" and o.get("uid")), "")


def belongs(owner: str, *, uid: str) -> bool:
    """Whether a heartbeat Lease owned by ``owner`` (`owner_uid`) is the heartbeat of the
    engine object of ``uid``, not of an earlier engine of its name: the one rule the
    operator, the gateway and the agent read a Lease by. A Lease naming no uid is taken
    as the engine's, as before owners carried one."""
    return not owner or owner == uid


def uid_of(engine: Mapping[str, Any]) -> str:
    """An engine's uid, from its body as read ("" if it has none)."""
    return str((engine.get("metadata") or {}).get("uid") or "")


def _owners(engine: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ownerReferences that make a Lease the heartbeat of the engine (its body as read),
    none when its uid is unknown."""
    if not uid_of(engine):
        return []
    return [{"apiVersion": str(engine.get("apiVersion") or "capguard.dev/v1alpha1"),
             "kind": "InferenceEngine", "name": (engine.get("metadata") or {}).get("name"),
             "uid": uid_of(engine)}]


def lease(engine: Mapping[str, Any], *, holder: str, interval: float,
          now: float) -> dict[str, Any]:
    """A new Lease for an engine (its body as read: name, namespace and uid)."""
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": (engine.get("metadata") or {}).get("name"),
                         "labels": {LABEL: OF_ENGINES}, "ownerReferences": _owners(engine)},
            "spec": renewal(holder=holder, interval=interval, now=now, acquired=True)["spec"]}


def renewal(*, holder: str, interval: float, now: float, acquired: bool = False,
            resource_version: str | None = None,
            engine: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The merge patch that renews a Lease (``acquired``: this agent's first, which also
    says who holds it and since when). With ``resource_version`` (the Lease as the agent
    last read or wrote it) the patch is preconditioned: if anything wrote the Lease since,
    or deleted it and created another of that name, the API server answers 409 Conflict
    and writes nothing. With ``engine`` (its body as read) the Lease is made that engine's
    heartbeat: its ownerReferences, replaced whole by the merge patch, name it alone (an
    earlier engine's of the same name, awaiting the garbage collector, is taken over)."""
    spec: dict[str, Any] = {"renewTime": clock.precise_timestamp(now)}
    if acquired:
        spec.update(holderIdentity=holder, acquireTime=clock.precise_timestamp(now),
                    leaseDurationSeconds=max(1, round(DURATION_RENEWALS * interval)))
    meta: dict[str, Any] = {}
    if resource_version:
        meta["resourceVersion"] = resource_version
    owners = _owners(engine) if engine is not None else []
    if owners:
        meta["ownerReferences"] = owners
    return {"metadata": meta, "spec": spec} if meta else {"spec": spec}
