"""RBAC served as a cluster serves it: Roles, ClusterRoles and their bindings are objects
of the API (`kubectl apply -k deploy/`, `kubectl get clusterroles`), authorization follows
them as they change, and the reviews `kubectl auth can-i` sends are answered.

- **Admission** of the four kinds, as kube-apiserver's rbac defaulting and validation do
  it: a binding's `roleRef.apiGroup` and a subject's `apiGroup` are defaulted; a rule needs
  verbs, a resource rule groups and resources; non-resource URLs only in a ClusterRole and
  never beside resources; a binding's role is a Role or ClusterRole of this group and its
  `roleRef` cannot change (delete and create the binding again, as `kubectl auth
  reconcile` does); a subject is a User, Group or ServiceAccount, and a
  ClusterRoleBinding's service account names its namespace.
- **Escalation prevention**, as the RBAC registry's: a user may write a role only holding
  every permission it grants (or with `escalate` on roles), and bind a role only holding
  its permissions (or with `bind` on it). `system:masters` may do anything; objects the
  server seeds itself (`LocalCluster(rbac=...)`) are not checked, as bootstrap policy is
  not. Only while RBAC is enforced: with every request allowed, so is every write.
- **Reviews**: SelfSubjectAccessReview (`kubectl auth can-i`), SelfSubjectRulesReview
  (`kubectl auth can-i --list`) and SubjectAccessReview, answered from the same rules the
  authorizer uses, and SelfSubjectReview (`kubectl auth whoami`); they are created, never
  stored.
"""
from __future__ import annotations

import contextvars
import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from capguard.localcluster import authz, errors, objects, resources, store

# Who is asking, for the admission of RBAC's kinds (set by the server for each request).
REQUESTER: contextvars.ContextVar[authz.User | None] = contextvars.ContextVar(
    "capguard_localcluster_requester", default=None)
_BY_KIND: Final = {rt.kind: rt for rt in resources.RBAC_TYPES}
_KEYS: Final = frozenset(rt.storage_key for rt in resources.RBAC_TYPES)
_ROLE_KINDS: Final = ("Role", "ClusterRole")
_SUBJECT_KINDS: Final = ("Group", "ServiceAccount", "User")
# What only the garbage collector changes: a write of these alone is never an escalation.
_GC_FIELDS: Final = ("ownerReferences", "finalizers", "resourceVersion", "generation",
                     "managedFields")


class Served:
    """The RBAC objects in the store, their admission, and the policy they make."""

    def __init__(self, api: objects.Objects) -> None:
        self.api = api
        self.enforcing = False   # the cluster turns it on with RBAC authorization
        self._policy: authz.Policy | None = None
        for rt in resources.RBAC_TYPES:
            api.preparers[rt.storage_key] = self._prepare
        api.hooks.append(self._changed)

    def policy(self) -> authz.Policy:
        """Every Role, ClusterRole and binding as it stands (made again after a change)."""
        if self._policy is None:
            db = self.api.db
            self._policy = authz.Policy(tuple(
                entry.obj for rt in resources.RBAC_TYPES for key in db.keys(rt.storage_key)
                if (entry := db.get(rt.storage_key, key)) is not None))
        return self._policy

    def seed(self, policy: authz.Policy,
             create: Callable[[resources.ResourceType, dict[str, Any]], Any]) -> None:
        """Create `policy`'s objects (and the namespaces they name) with `create(rt, obj)`;
        an object the server refuses is a ValueError naming it."""
        for obj in policy.objects:
            rt = _BY_KIND[obj["kind"]]
            namespace = (obj.get("metadata") or {}).get("namespace")
            try:
                if rt.namespaced and namespace:
                    create(resources.NAMESPACES, {"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": namespace}})
                create(rt, json.loads(json.dumps(obj)))
            except errors.ApiError as error:
                raise ValueError(f"{obj['kind']}/{obj['metadata'].get('name')}: "
                                 f"{error}") from None

    def _changed(self, rt: resources.ResourceType, change: store.Change) -> None:
        if change.storage_key in _KEYS:
            self._policy = None

    # ---- admission ------------------------------------------------------------------------

    def _prepare(self, rt: resources.ResourceType, obj: dict[str, Any],
                 old: dict[str, Any] | None) -> list[dict[str, str]]:
        if rt.kind in _ROLE_KINDS:
            causes = list(_rule_causes(obj.get("rules"), namespaced=rt.namespaced))
        else:
            _default_binding(obj)
            causes = list(_binding_causes(rt, obj, old))
        user = REQUESTER.get()
        if not causes and self.enforcing and user is not None and not _only_gc(obj, old):
            self._confirm_no_escalation(rt, obj, old, user)
        return causes

    def _confirm_no_escalation(self, rt: resources.ResourceType, obj: dict[str, Any],
                               old: dict[str, Any] | None, user: authz.User) -> None:
        if authz.MASTERS in user.groups:
            return
        policy = self.policy()
        metadata = obj["metadata"]
        namespace = metadata.get("namespace", "") if rt.namespaced else ""
        if rt.kind in _ROLE_KINDS:
            escalate = authz.Attributes(verb="escalate", api_group=rt.group,
                                        resource=rt.plural, namespace=namespace,
                                        name="" if old is None else metadata["name"])
            if policy.allows(user, escalate):
                return
            granted = obj.get("rules") or []
        else:
            ref = obj["roleRef"]
            bind = authz.Attributes(verb="bind", api_group=rt.group,
                                    resource="roles" if ref["kind"] == "Role" else "clusterroles",
                                    namespace=namespace, name=ref["name"])
            if policy.allows(user, bind):
                return
            granted = self._role_rules(ref, namespace)
        held = [rule for rule in policy.rules_for(user)
                if not rule.namespace or rule.namespace == namespace]
        missing = uncovered(held, granted)
        if missing:
            raise errors.forbidden(
                f'{rt.group_resource} "{metadata["name"]}" is forbidden: user '
                f"{authz.quote(user.name)} (groups={_go_strings(user.groups)}) is attempting "
                f"to grant RBAC permissions not currently held:\n" + "\n".join(missing),
                details={"name": metadata["name"], "group": rt.group, "kind": rt.plural})

    def _role_rules(self, ref: dict[str, Any], namespace: str) -> list[Any]:
        """The rules of a binding's role; 404 if it is not there (as GetRoleReferenceRules)."""
        rt = resources.ROLES if ref["kind"] == "Role" else resources.CLUSTER_ROLES
        role = self.api.get(rt, namespace=namespace if rt.namespaced else "", name=ref["name"])
        return list(role.obj.get("rules") or [])


# ---- validation (pkg/apis/rbac/validation) ---------------------------------------------------

def _cause(reason: str, field: str, message: str) -> dict[str, str]:
    return {"reason": reason, "field": field, "message": message}


def _rule_causes(rules: Any, *, namespaced: bool) -> Iterator[dict[str, str]]:
    for index, rule in enumerate(rules or []):
        path = f"rules[{index}]"   # each a dict of string lists (decoded: `gotypes`)
        if not rule.get("verbs"):
            yield _cause("FieldValueRequired", f"{path}.verbs",
                         "Required value: verbs must contain at least one value")
        urls = rule.get("nonResourceURLs")
        if urls:
            value = _go_slice(urls)
            if namespaced:
                yield _cause("FieldValueInvalid", f"{path}.nonResourceURLs",
                             f"Invalid value: {value}: namespaced rules cannot apply to "
                             f"non-resource URLs")
            if rule.get("apiGroups") or rule.get("resources") or rule.get("resourceNames"):
                yield _cause("FieldValueInvalid", f"{path}.nonResourceURLs",
                             f"Invalid value: {value}: rules cannot apply to both regular "
                             f"resources and non-resource URLs")
            continue
        if not rule.get("apiGroups"):
            yield _cause("FieldValueRequired", f"{path}.apiGroups",
                         "Required value: resource rules must supply at least one api group")
        if not rule.get("resources"):
            yield _cause("FieldValueRequired", f"{path}.resources",
                         "Required value: resource rules must supply at least one resource")


def _default_binding(obj: dict[str, Any]) -> None:
    """SetDefaults_RoleBinding, _ClusterRoleBinding and _Subject."""
    ref = obj.get("roleRef")
    if isinstance(ref, dict) and not ref.get("apiGroup"):
        ref["apiGroup"] = resources.RBAC_GROUP
    for subject in obj.get("subjects") or []:   # dicts (decoded: `gotypes`)
        for key in ("apiGroup", "namespace"):   # omitempty: "" is not written
            if subject.get(key) == "":
                del subject[key]
        if not subject.get("apiGroup") and subject.get("kind") in ("User", "Group"):
            subject["apiGroup"] = resources.RBAC_GROUP


def _binding_causes(rt: resources.ResourceType, obj: dict[str, Any],
                    old: dict[str, Any] | None) -> Iterator[dict[str, str]]:
    ref = obj.get("roleRef")
    if not isinstance(ref, dict):
        yield _cause("FieldValueRequired", "roleRef.name", "Required value")
        return
    if ref.get("apiGroup") != resources.RBAC_GROUP:
        yield _cause("FieldValueNotSupported", "roleRef.apiGroup",
                     f'Unsupported value: {json.dumps(ref.get("apiGroup"))}: supported '
                     f'values: "{resources.RBAC_GROUP}"')
    kinds = _ROLE_KINDS if rt.namespaced else ("ClusterRole",)
    if ref.get("kind") not in kinds:
        yield _cause("FieldValueNotSupported", "roleRef.kind",
                     f"Unsupported value: {json.dumps(ref.get('kind'))}: supported values: "
                     + ", ".join(f'"{kind}"' for kind in kinds))
    if not ref.get("name"):
        yield _cause("FieldValueRequired", "roleRef.name", "Required value")
    old_ref = (old or {}).get("roleRef")
    if old is not None and old_ref != ref:
        yield _cause("FieldValueInvalid", "roleRef",
                     f"Invalid value: {_go_role_ref(ref)}: cannot change roleRef")
    for index, subject in enumerate(obj.get("subjects") or []):
        path = f"subjects[{index}]"
        kind = subject.get("kind")
        if not subject.get("name"):
            yield _cause("FieldValueRequired", f"{path}.name", "Required value")
        if kind == "ServiceAccount":
            if subject.get("apiGroup"):
                yield _cause("FieldValueNotSupported", f"{path}.apiGroup",
                             f'Unsupported value: {json.dumps(subject["apiGroup"])}: '
                             f'supported values: ""')
            if not rt.namespaced and not subject.get("namespace"):
                yield _cause("FieldValueRequired", f"{path}.namespace", "Required value")
        elif kind in ("User", "Group"):
            if subject.get("apiGroup") != resources.RBAC_GROUP:
                yield _cause("FieldValueNotSupported", f"{path}.apiGroup",
                             f'Unsupported value: {json.dumps(subject.get("apiGroup"))}: '
                             f'supported values: "{resources.RBAC_GROUP}"')
        else:
            yield _cause("FieldValueNotSupported", f"{path}.kind",
                         f"Unsupported value: {json.dumps(kind)}: supported values: "
                         + ", ".join(f'"{k}"' for k in _SUBJECT_KINDS))


def _only_gc(obj: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """IsOnlyMutatingGCFields: an update that changes nothing but what the GC writes."""
    if old is None:
        return False

    def without(candidate: dict[str, Any]) -> dict[str, Any]:
        metadata = {k: v for k, v in (candidate.get("metadata") or {}).items()
                    if k not in _GC_FIELDS}
        return {**candidate, "metadata": metadata}

    return without(obj) == without(old)


# ---- coverage (pkg/registry/rbac/validation: Covers, BreakdownRule, CompactRules) ------------


def uncovered(held: Iterable[authz.Rule], granted: Iterable[Any]) -> list[str]:
    """The permissions of `granted` (raw PolicyRules) no rule of `held` covers, compacted
    and written as the real server lists them, sorted."""
    owners = list(held)
    missing = [sub for rule in granted for sub in _breakdown(rule)
               if not any(_covers(o, sub) for o in owners)]
    return sorted(set(_compact_string(rule) for rule in _compact(missing)))


@dataclasses.dataclass(frozen=True)
class _Sub:
    """One permission: a verb on one group's resource (one name, or any), or on one URL."""

    verb: str
    group: str = ""
    resource: str = ""
    name: str = ""
    url: str = ""


def _breakdown(rule: dict[str, Any]) -> Iterator[_Sub]:
    verbs = list(rule.get("verbs") or [])
    for group in rule.get("apiGroups") or []:
        for resource in rule.get("resources") or []:
            for verb in verbs:
                for name in rule.get("resourceNames") or [""]:
                    yield _Sub(verb, group, resource, name)
    for url in rule.get("nonResourceURLs") or []:
        for verb in verbs:
            yield _Sub(verb, url=url)


def _covers(owner: authz.Rule, sub: _Sub) -> bool:
    if "*" not in owner.verbs and sub.verb not in owner.verbs:
        return False
    if sub.url:
        return any(url == sub.url or (url.endswith("*") and sub.url.startswith(url.rstrip("*")))
                   for url in owner.non_resource_urls)
    if "*" not in owner.api_groups and sub.group not in owner.api_groups:
        return False
    subresource = sub.resource.partition("/")[2]
    if not ("*" in owner.resources or sub.resource in owner.resources
            or (subresource and f"*/{subresource}" in owner.resources)):
        return False
    if not owner.resource_names:
        return True
    return bool(sub.name) and sub.name in owner.resource_names


def _compact(missing: list[_Sub]) -> list[dict[str, list[str]]]:
    """CompactRules: one rule per group and resource (without names), its verbs merged."""
    merged: dict[tuple[str, str], dict[str, list[str]]] = {}
    rules: list[dict[str, list[str]]] = []
    for sub in missing:
        if sub.url:
            rules.append({"NonResourceURLs": [sub.url], "Verbs": [sub.verb]})
        elif sub.name:
            rules.append({"APIGroups": [sub.group], "Resources": [sub.resource],
                          "ResourceNames": [sub.name], "Verbs": [sub.verb]})
        elif (sub.group, sub.resource) in merged:
            verbs = merged[(sub.group, sub.resource)]["Verbs"]
            if sub.verb not in verbs:
                verbs.append(sub.verb)
        else:
            rule = {"APIGroups": [sub.group], "Resources": [sub.resource], "Verbs": [sub.verb]}
            merged[(sub.group, sub.resource)] = rule
            rules.append(rule)
    return rules


def _compact_string(rule: dict[str, list[str]]) -> str:
    """rbacv1helpers.CompactString: `{APIGroups:["capguard.dev"], Verbs:["get"]}`."""
    return "{" + ", ".join(f"{key}:{_go_strings(values)}" for key, values in rule.items()) + "}"


def _go_strings(values: Iterable[str]) -> str:
    """Go's %q of a []string: `["a" "b"]`."""
    return "[" + " ".join(authz.quote(value) for value in values) + "]"


def _go_slice(values: Iterable[Any]) -> str:
    """Go's %#v of a []string: `[]string{"a", "b"}`."""
    return "[]string{" + ", ".join(authz.quote(str(value)) for value in values) + "}"


def _go_role_ref(ref: dict[str, Any]) -> str:
    """Go's %#v of an rbac.RoleRef."""
    return (f'rbac.RoleRef{{APIGroup:{authz.quote(str(ref.get("apiGroup", "")))}, '
            f'Kind:{authz.quote(str(ref.get("kind", "")))}, '
            f'Name:{authz.quote(str(ref.get("name", "")))}}}')


# ---- reviews (authorization.k8s.io/v1) -------------------------------------------------------


def review(rt: resources.ResourceType, body: Any, *, user: authz.User | None,
           authorizer: authz.Authorizer | None) -> dict[str, Any]:
    """Answer a SelfSubjectAccessReview, SelfSubjectRulesReview or SubjectAccessReview
    asked by `user` (None: nobody authenticates, every request is allowed)."""
    if not isinstance(body, dict) or body.get("kind") not in (None, rt.kind):
        raise errors.bad_request(f"the object provided is unrecognized (must be of type "
                                 f"{rt.kind})")
    spec: dict[str, Any] = body["spec"] if isinstance(body.get("spec"), dict) else {}
    asker = user or authz.User(authz.ANONYMOUS, (authz.UNAUTHENTICATED,))
    if rt is resources.SUBJECT_ACCESS_REVIEWS:
        if not spec.get("user") and not spec.get("groups"):
            raise errors.invalid(rt, "", [_cause(
                "FieldValueRequired", "spec.user",
                "Invalid value: \"\": at least one of user or group must be specified")])
        asker = authz.User(str(spec.get("user") or ""), tuple(spec.get("groups") or ()),
                           str(spec.get("uid") or ""))
    answer = {"kind": rt.kind, "apiVersion": rt.api_version,
              "metadata": {"creationTimestamp": None}, "spec": spec}
    if rt is resources.SELF_SUBJECT_REVIEWS:   # who am I: no spec, the user as authenticated
        info: dict[str, Any] = {"username": asker.name, "groups": list(asker.groups)}
        if asker.uid:
            info["uid"] = asker.uid
        return {"kind": rt.kind, "apiVersion": rt.api_version,
                "metadata": {"creationTimestamp": None}, "status": {"userInfo": info}}
    if rt is resources.SELF_SUBJECT_RULES_REVIEWS:
        answer["status"] = _rules_review(asker, str(spec.get("namespace") or ""), authorizer)
        return answer
    request = _attributes(rt, spec)
    if authorizer is None:
        allowed, reason = True, ""
    else:
        allowed, reason = authorizer.decide(asker, request)
    answer["status"] = {"allowed": allowed, **({"reason": reason} if reason else {})}
    if rt is resources.SELF_SUBJECT_ACCESS_REVIEWS:
        answer["spec"] = {key: spec[key] for key in ("resourceAttributes",
                                                      "nonResourceAttributes") if key in spec}
    return answer


def _attributes(rt: resources.ResourceType, spec: dict[str, Any]) -> authz.Attributes:
    resource, non_resource = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    if isinstance(resource, dict) == isinstance(non_resource, dict):
        raise errors.invalid(rt, "", [_cause(
            "FieldValueInvalid", "spec.resourceAttributes",
            "Invalid value: \"null\": exactly one of nonResourceAttributes or "
            "resourceAttributes must be specified")])
    if isinstance(non_resource, dict):
        return authz.Attributes(verb=str(non_resource.get("verb") or ""),
                                path=str(non_resource.get("path") or ""),
                                resource_request=False)
    assert isinstance(resource, dict)
    return authz.Attributes(verb=str(resource.get("verb") or ""),
                            api_group=str(resource.get("group") or ""),
                            resource=str(resource.get("resource") or ""),
                            subresource=str(resource.get("subresource") or ""),
                            namespace=str(resource.get("namespace") or ""),
                            name=str(resource.get("name") or ""))


def _rules_review(user: authz.User, namespace: str,
                  authorizer: authz.Authorizer | None) -> dict[str, Any]:
    """What `user` may do in `namespace` (and cluster-wide), as RBAC's RulesFor lists it."""
    everything = {"resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                  "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                  "incomplete": False}
    if authorizer is None or authorizer.policy is None or authz.MASTERS in user.groups:
        return everything
    found: dict[str, Any] = {"resourceRules": [], "nonResourceRules": [], "incomplete": False}
    for rule in authorizer.policy().rules_for(user):
        if rule.namespace and rule.namespace != namespace:
            continue
        if rule.non_resource_urls:
            found["nonResourceRules"].append({"verbs": list(rule.verbs),
                                              "nonResourceURLs": list(rule.non_resource_urls)})
            continue
        entry: dict[str, Any] = {"verbs": list(rule.verbs), "apiGroups": list(rule.api_groups),
                                 "resources": list(rule.resources)}
        if rule.resource_names:
            entry["resourceNames"] = list(rule.resource_names)
        found["resourceRules"].append(entry)
    return found
