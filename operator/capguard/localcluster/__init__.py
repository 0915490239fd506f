"""An embedded, Kubernetes-API-compatible server: the local cluster that capguard's tests,
its demo and `kubectl` run against, with no Docker and no real kube-apiserver.

It serves, over plain HTTP on loopback: discovery (including aggregated discovery as
Kubernetes 1.30 does), CustomResourceDefinitions whose resources appear and disappear
with them, Namespaces, core and events.k8s.io Events, Leases, ConfigMaps,
ServiceAccounts (each namespace gets its `default` one, and `kubectl create token` its
tokens: `tokens`) and RBAC's Roles, ClusterRoles and bindings (`rbac`: enforced as they
change where RBAC is on, and the reviews `kubectl auth can-i` and `whoami` send); object
CRUD with resourceVersion preconditions, generation, status and scale subresources,
finalizers, ownerReference cascades, label and field selectors, pagination, watches with
bookmarks, Tables for `kubectl get`, schema defaulting, pruning and validation (CEL
included), server-side field validation and dry runs; OpenAPI v3 in JSON and v2 in JSON
or the protobuf kubectl asks for (client-side validation of a `kind: List`).

Like kube-controller-manager, it gives each Namespace a `default` ServiceAccount and runs a
namespace lifecycle controller (`namespaces.py`):
a deleted Namespace shows phase Terminating with the `NamespaceContentRemaining` and
`NamespaceFinalizersRemaining` conditions while every object in it, built-in or custom,
is deleted (objects with finalizers get a deletionTimestamp and are waited for; watchers
see each DELETED), then its `kubernetes` finalizer is removed and it goes, so `kubectl
delete namespace` returns as on kind. `LocalCluster(namespace_controller=False)` or
`--no-namespace-controller` turns both off: a deleted Namespace then stays Terminating
until its `/finalize` is called, as on a bare apiserver (reference 199).

Its ground truth is `shared/k8s-reference/`, recorded from a real kube-apiserver 1.24;
where newer servers differ (aggregated discovery, CEL, field validation) it follows them.

What it deliberately does not do:

- no scheduler, no kubelet, no controllers beyond those the API itself implies (CRD
  establishment and cleanup, background garbage collection of ownerReferences) and the
  namespace controller; that one only empties and finalizes: it does not honour
  namespace finalizers other than `kubernetes` (a Namespace with others waits for whoever
  owns them), does not wait out grace periods (there are no pods), and reports no
  discovery or content-deletion failures beyond refusals of its own deletes;
- authentication and authorization only when asked for (`authz`: bearer tokens from a
  static token file, impersonation, RBAC by the served objects); no bootstrap roles
  beyond what `authz.BOOTSTRAP` lists (no `admin`, `edit`, `view`: `system:masters` is
  allowed everything without a `cluster-admin` object), no aggregated ClusterRoles;
  no admission webhooks, no conversion webhooks (a multi-version CRD is served with
  strategy None: only apiVersion changes);
- no protobuf beyond reading what kubectl posts for Namespaces and ConfigMaps and
  writing the OpenAPI v2 document; no server-side apply field ownership (apply patches
  merge), no managedFields;
- strategic merge patch for built-ins is an approximation (see `patching.py`);
- a `continue` token resumes after its key in the current state, not a snapshot.

Memory: everything lives in memory, each object once as a dict and once as its JSON
bytes (about 3 KiB for a small custom resource, so 10,000 objects take tens of MiB); the
watch window keeps the last `store.DEFAULT_WINDOW` (100,000) changes, and a watch from
an older resourceVersion gets 410 Expired. Request bodies are limited to 3 MiB (413).
The request audit (`LocalCluster.audit`) keeps the last `audit_buffer` requests (10,000,
about 5.6 MB; none under `capguard localcluster`); `--audit-log FILE` gets them all.

Use it as `capguard localcluster`, `python -m capguard.localcluster`, `async with
LocalCluster(...)`, or `LocalCluster.start_in_thread(...)` from synchronous code.
"""
from capguard.localcluster.cluster import LocalCluster, ThreadedCluster
from capguard.localcluster.command import main

__all__ = ["LocalCluster", "ThreadedCluster", "main"]
