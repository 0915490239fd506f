"""Who is asking, and may they: bearer-token authentication and RBAC authorization, as a
kube-apiserver started with `--token-auth-file` and `--authorization-mode=RBAC` does it.

Off unless asked for (`capguard localcluster --token-auth-file F --authorization-mode
RBAC`): then every request is authenticated and authorized before it is routed, as the
real server's filter chain does, so a request no rule allows is refused 403 even where
the path would be 404.

- **Authentication.** The static token file of kube-apiserver (`token,user,uid,"g1,g2"`
  a line). A request without a bearer token is `system:anonymous` (kube-apiserver's
  default `--anonymous-auth=true`); one with a token nobody has is 401 Unauthorized. Every
  authenticated user is in `system:authenticated`; a service account's user name
  `system:serviceaccount:NS:NAME` also puts it in `system:serviceaccounts` and
  `system:serviceaccounts:NS`, as the token authenticator does.
- **Service-account tokens** the server issued (`tokens`, the TokenRequest API that
  `kubectl create token` and kubelets use) authenticate as their account, until they
  expire or the account is deleted.
- **Impersonation.** `Impersonate-User`, `-Group` and `-Uid` (kubectl's `--as`,
  `--as-group`) make the request another user's, each first authorized as the verb
  `impersonate` on users (or the service account), groups and uids.
- **Authorization.** The Roles, ClusterRoles, RoleBindings and ClusterRoleBindings served
  (`rbac.Served`, as they stand at each request), matched as the RBAC authorizer matches
  them (`*`, `resource/subresource`, `*/subresource`, resourceNames, nonResourceURLs with a
  trailing `*`; a RoleBinding's service account without a namespace is of the binding's),
  and the bootstrap policy every cluster has: `system:masters` may do anything,
  `system:discovery` and `system:public-info-viewer` let users read discovery, OpenAPI,
  health and version, `system:basic-user` lets them ask what they may do. A `Policy` is
  also made from a file's objects (`Policy.of`), for the offline checks of the tests.
- **The request's attributes** are resolved from the request line the way the API server's
  RequestInfoFactory does (`request_info`): a GET without a name is list or watch, a
  DELETE without one deletecollection, and a list or watch with `fieldSelector=
  metadata.name=X` is a request for X, so resourceNames can allow it.

A refusal is the real server's Status, word for word: `leases.coordination.k8s.io
"engine-0" is forbidden: User "system:serviceaccount:demo:capguard-engine" cannot update
resource "leases" in API group "coordination.k8s.io" in the namespace "demo"`.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import io
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

from capguard.localcluster import errors

ANONYMOUS: Final = "system:anonymous"
MASTERS: Final = "system:masters"
AUTHENTICATED: Final = "system:authenticated"
UNAUTHENTICATED: Final = "system:unauthenticated"
_SERVICE_ACCOUNT_PREFIX: Final = "system:serviceaccount:"
_METHOD_VERBS: Final = {"POST": "create", "PUT": "update", "PATCH": "patch"}
RBAC_KINDS: Final = ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
# The bootstrap policy's read-only non-resource paths (system:discovery for authenticated
# users, system:public-info-viewer for everyone): kube-apiserver's defaults.
_DISCOVERY: Final = ("/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/readyz",
                     "/openapi", "/openapi/*", "/version", "/version/")
_PUBLIC_INFO: Final = ("/healthz", "/livez", "/readyz", "/version", "/version/")


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""

    def audit(self) -> dict[str, Any]:
        """As an audit event's `user`."""
        return {"username": self.name, "groups": list(self.groups)}


def service_account(namespace: str, name: str) -> User:
    """The user a service account's token authenticates as."""
    return User(f"{_SERVICE_ACCOUNT_PREFIX}{namespace}:{name}",
                ("system:serviceaccounts", f"system:serviceaccounts:{namespace}",
                 AUTHENTICATED))


def read_tokens(text: str) -> dict[str, User]:
    """kube-apiserver's `--token-auth-file`: `token,user,uid[,"group1,group2"]` a line.
    A service account's user name gets its service-account groups, as a real token would."""
    tokens: dict[str, User] = {}
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) < 3 or not row[0] or not row[1]:
            raise ValueError(f"line {number} of the token file: want token,user,uid"
                             f'[,"group1,group2"], got {",".join(row)!r}')
        token, name, uid = (field.strip() for field in row[:3])
        groups = [g.strip() for g in (row[3] if len(row) > 3 else "").split(",") if g.strip()]
        if name.startswith(_SERVICE_ACCOUNT_PREFIX) and name.count(":") == 3:
            namespace, account = name[len(_SERVICE_ACCOUNT_PREFIX):].split(":")
            groups += [g for g in service_account(namespace, account).groups if g not in groups]
        if AUTHENTICATED not in groups:
            groups.append(AUTHENTICATED)
        tokens[token] = User(name, tuple(groups), uid)
    return tokens


@dataclasses.dataclass(frozen=True)
class Attributes:
    """One request as the authorizer sees it (RequestInfo, and the path of a request that
    is not for a resource)."""

    verb: str
    api_group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""  # empty: cluster-scoped, or across all namespaces
    name: str = ""
    path: str = dataclasses.field(default="", compare=False)
    resource_request: bool = True

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    def __str__(self) -> str:
        if not self.resource_request:
            return f"{self.verb} {self.path}"
        where = f" in {self.namespace}" if self.namespace else " (cluster-wide)"
        name = f" {self.name}" if self.name else ""
        return f"{self.verb} {self.api_group or 'core'}/{self.full_resource}{name}{where}"


# Clients ask for the same paths again and again (lists, watches, a collection's creates,
# their own Lease): each is resolved once (Attributes are immutable).
@functools.lru_cache(maxsize=4096)
def request_info(method: str, path: str, query: str = "") -> Attributes:
    """Resolve a request line the way the API server's RequestInfoFactory does."""
    url = urllib.parse.urlsplit(path)
    query = query or url.query
    params = urllib.parse.parse_qs(query)
    method = method.upper()
    parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, rest = parts[1], parts[3:]
    else:  # /api, /apis, /apis/group[/version], /version, /openapi...: not a resource
        return Attributes(verb=_NON_RESOURCE_VERBS.get(method, method.lower()),
                          path=url.path, resource_request=False)
    watching = False
    if rest[0] == "watch":  # the deprecated /watch/ prefix
        watching, rest = True, rest[1:] or [""]
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]  # not a Namespace's own subresource
    resource = rest[0]
    name = rest[1] if len(rest) >= 2 else ""
    subresource = rest[2] if len(rest) >= 3 else ""
    if resource == "namespaces" and not namespace and name:
        namespace = name  # /api/v1/namespaces/NAME is the namespace itself
    if method == "GET":
        # ?watch= makes a list a watch; a GET of one name stays a get (the /watch/ prefix
        # makes either a watch)
        asked = params.get("watch", ["false"])[0] in ("true", "1", "True")
        verb = "watch" if watching or (asked and not name) else ("get" if name else "list")
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = _METHOD_VERBS.get(method, method.lower())
    if verb in ("list", "watch") and not name:
        for selector in params.get("fieldSelector", []):
            for term in selector.split(","):
                key, _, value = term.partition("=")
                if key.strip() == "metadata.name" and value and not value.startswith("="):
                    name = value.strip()
    return Attributes(verb=verb, path=url.path, api_group=group, resource=resource,
                      subresource=subresource, namespace=namespace, name=name)


_NON_RESOURCE_VERBS: Final = {"GET": "get", "HEAD": "get", "POST": "post", "PUT": "put",
                              "PATCH": "patch", "DELETE": "delete"}


@dataclasses.dataclass(frozen=True)
class Rule:
    """One PolicyRule, and where its binding makes it apply ("" = every namespace)."""

    verbs: tuple[str, ...]
    api_groups: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    resource_names: tuple[str, ...] = ()
    non_resource_urls: tuple[str, ...] = ()
    namespace: str = ""
    source: str = ""  # e.g. "ClusterRole/capguard-operator"
    # The binding that grants it, as the RBAC authorizer's reason names it:
    # `ClusterRoleBinding "x" of ClusterRole "y" to ServiceAccount "name/namespace"`.
    granted_by: str = dataclasses.field(default="", compare=False)

    @classmethod
    def of(cls, raw: Mapping[str, Any], *, namespace: str = "", source: str = "",
           granted_by: str = "") -> Rule:
        return cls(verbs=tuple(raw.get("verbs") or ()),
                   api_groups=tuple(raw.get("apiGroups") or ()),
                   resources=tuple(raw.get("resources") or ()),
                   resource_names=tuple(raw.get("resourceNames") or ()),
                   non_resource_urls=tuple(raw.get("nonResourceURLs") or ()),
                   namespace=namespace, source=source, granted_by=granted_by)

    def allows(self, request: Attributes) -> bool:
        if not _matches(self.verbs, request.verb):
            return False
        if not request.resource_request:  # only a ClusterRoleBinding grants these
            return not self.namespace and any(
                url in ("*", request.path)
                or (url.endswith("*") and request.path.startswith(url[:-1]))
                for url in self.non_resource_urls)
        return (
            (not self.namespace or request.namespace == self.namespace)
            and _matches(self.api_groups, request.api_group)
            and self._resource_matches(request)
            and (not self.resource_names or request.name in self.resource_names)
        )

    def permissions(self) -> Iterator[tuple[str, str, str]]:
        """(group, resource, verb) for each the rule names."""
        for group in self.api_groups:
            for resource in self.resources:
                for verb in self.verbs:
                    yield group, resource, verb

    def __str__(self) -> str:
        names = f" names={list(self.resource_names)}" if self.resource_names else ""
        where = f" in {self.namespace}" if self.namespace else ""
        return (f"{self.source}: groups={list(self.api_groups)} resources={list(self.resources)}"
                f" verbs={list(self.verbs)}{names}{where}")

    def _resource_matches(self, request: Attributes) -> bool:
        for resource in self.resources:
            if resource in ("*", request.full_resource):
                return True
            if request.subresource and resource == f"*/{request.subresource}":
                return True
        return False


def _matches(allowed: Iterable[str], value: str) -> bool:
    return any(item in ("*", value) for item in allowed)


def _describe(binding: Mapping[str, Any], subject: Mapping[str, Any]) -> str:
    """The RBAC authorizer's words for a binding granting a subject a role."""
    metadata, ref = binding.get("metadata") or {}, binding.get("roleRef") or {}
    namespace = _binding_namespace(binding)
    name = f"{metadata.get('name')}/{namespace}" if namespace else str(metadata.get("name"))
    who = str(subject.get("name"))
    if subject.get("kind") == "ServiceAccount":
        who = f"{who}/{subject.get('namespace') or namespace}"
    return (f"{binding['kind']} {quote(name)} of {ref.get('kind')} {quote(str(ref.get('name')))}"
            f" to {subject.get('kind')} {quote(who)}")


def _applies(subject: Mapping[str, Any], user: User, binding_namespace: str) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return bool(name == user.name)
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return user.name == f"{_SERVICE_ACCOUNT_PREFIX}{namespace}:{name}"
    return False


def _binding_namespace(binding: Mapping[str, Any]) -> str:
    if binding["kind"] == "ClusterRoleBinding":
        return ""
    return str((binding.get("metadata") or {}).get("namespace", ""))


BOOTSTRAP: Final = (
    (Rule(verbs=("get",), non_resource_urls=_DISCOVERY, source="ClusterRole/system:discovery"),
     AUTHENTICATED),
    # system:basic-user: anyone may ask what they themselves may do (`kubectl auth can-i`).
    (Rule(verbs=("create",), api_groups=("authorization.k8s.io",),
          resources=("selfsubjectaccessreviews", "selfsubjectrulesreviews"),
          source="ClusterRole/system:basic-user"), AUTHENTICATED),
    (Rule(verbs=("create",), api_groups=("authentication.k8s.io",),
          resources=("selfsubjectreviews",), source="ClusterRole/system:basic-user"),
     AUTHENTICATED),
    (Rule(verbs=("get",), non_resource_urls=_PUBLIC_INFO,
          source="ClusterRole/system:public-info-viewer"), AUTHENTICATED),
    (Rule(verbs=("get",), non_resource_urls=_PUBLIC_INFO,
          source="ClusterRole/system:public-info-viewer"), UNAUTHENTICATED),
)


@dataclasses.dataclass(frozen=True)
class Policy:
    """The RBAC objects, and who they grant what."""

    objects: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def of(cls, documents: Iterable[Any]) -> Policy:
        """The RBAC kinds among `documents` (others are ignored); a namespaced one without a
        namespace is an error, as it would apply nowhere."""
        found = []
        for document in documents:
            if not isinstance(document, Mapping) or document.get("kind") not in RBAC_KINDS:
                continue
            metadata = document.get("metadata") or {}
            if document["kind"] in ("Role", "RoleBinding") and not metadata.get("namespace"):
                raise ValueError(f"{document['kind']}/{metadata.get('name')} has no "
                                 f"metadata.namespace; give each Role and RoleBinding the "
                                 f"namespace it is for (kustomize's namespace: does)")
            found.append(document)
        return cls(tuple(found))

    def rules_for(self, user: User, *, bootstrap: bool = True) -> Iterator[Rule]:
        """Every rule that applies to `user`, each scoped as its binding scopes it (and,
        with `bootstrap`, the bootstrap policy's for its groups)."""
        if bootstrap:
            for rule, group in BOOTSTRAP:
                if group in user.groups:
                    yield rule
        for binding, role in self._bound():
            namespace = _binding_namespace(binding)
            subject = next((subject for subject in binding.get("subjects") or ()
                            if _applies(subject, user, namespace)), None)
            if role is None or subject is None:
                continue
            ref = binding.get("roleRef") or {}
            for raw in role.get("rules") or ():
                yield Rule.of(raw, namespace=namespace,
                              source=f"{ref.get('kind')}/{ref.get('name')}",
                              granted_by=_describe(binding, subject))

    def dangling(self) -> list[str]:
        """Bindings whose role is not among the objects (they grant nothing)."""
        return [f"{binding['kind']}/{(binding.get('metadata') or {}).get('name')} refers to "
                f"{(binding.get('roleRef') or {}).get('kind')}/"
                f"{(binding.get('roleRef') or {}).get('name')}, which is not there"
                for binding, role in self._bound() if role is None]

    def _bound(self) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any] | None]]:
        roles = {(o["kind"], (o.get("metadata") or {}).get("namespace", ""),
                  (o.get("metadata") or {}).get("name")): o
                 for o in self.objects if o["kind"] in ("Role", "ClusterRole")}
        for binding in self.objects:
            if binding["kind"] in ("RoleBinding", "ClusterRoleBinding"):
                ref = binding.get("roleRef") or {}
                scope = _binding_namespace(binding) if ref.get("kind") == "Role" else ""
                yield binding, roles.get((ref.get("kind"), scope, ref.get("name")))

    def allows(self, user: User, request: Attributes, *,
               rules: Iterable[Rule] | None = None) -> bool:
        """`rules`: the user's, as `rules_for` worked them out before."""
        return self.decide(user, request, rules=rules)[0]

    def decide(self, user: User, request: Attributes, *,
               rules: Iterable[Rule] | None = None) -> tuple[bool, str]:
        """Allowed or not, and the RBAC authorizer's reason for an allow (`system:masters`
        is allowed before RBAC, with no reason)."""
        if MASTERS in user.groups:
            return True, ""
        for rule in self.rules_for(user) if rules is None else rules:
            if rule.allows(request):
                return True, f"RBAC: allowed by {rule.granted_by or rule.source}"
        return False, ""


@dataclasses.dataclass
class Authorizer:
    """Tokens and policy: who is asking (`authenticate`, `impersonate`), and may they
    (`authorize`); each raises the real server's refusal."""

    tokens: Mapping[str, User]
    # The policy as it stands now (the served RBAC objects); None: every authenticated
    # request is allowed.
    policy: Callable[[], Policy] | None
    # Tokens the server issued itself (TokenRequest): whose one is, or None.
    issued: Callable[[str], User | None] | None = None
    # Each user's rules, worked out once for the policy they were worked out from.
    _rules: dict[User, tuple[Rule, ...]] = dataclasses.field(default_factory=dict,
                                                              compare=False, repr=False)
    _rules_of: Policy | None = dataclasses.field(default=None, compare=False, repr=False)

    def authenticate(self, authorization: str | None) -> User:
        """As the bearer-token authenticator: no header, another scheme or an empty token
        is anonymous; a token nobody has is 401."""
        parts = (authorization or "").strip().split(" ", 2)
        if len(parts) < 2 or parts[0].lower() != "bearer" or not parts[1]:
            return User(ANONYMOUS, (UNAUTHENTICATED,))
        user = self.tokens.get(parts[1])
        if user is None and self.issued is not None:
            user = self.issued(parts[1])
        if user is None:
            raise unauthorized()
        return user

    def impersonate(self, user: User, *, name: str | None, groups: Iterable[str] = (),
                    uid: str | None = None) -> User:
        """The user `user` acts as through the Impersonate-User, -Group and -Uid headers,
        each first authorized (`impersonate` on users or a service account, groups, uids),
        as kube-apiserver's impersonation filter does; `user` itself without them."""
        groups = list(groups)
        if not name:
            if groups or uid:
                raise errors.bad_request(
                    "requested impersonation of groups or a uid without impersonating a "
                    "user; add the Impersonate-User header (kubectl --as)")
            return user
        asked: list[Attributes] = []
        prefix = name[len(_SERVICE_ACCOUNT_PREFIX):] if name.startswith(
            _SERVICE_ACCOUNT_PREFIX) else ""
        if prefix.count(":") == 1:
            namespace, account = prefix.split(":")
            asked.append(Attributes(verb="impersonate", resource="serviceaccounts",
                                    namespace=namespace, name=account))
            if not groups:  # a service account's groups are known
                groups = list(service_account(namespace, account).groups[:2])
        else:
            asked.append(Attributes(verb="impersonate", resource="users", name=name))
        asked += [Attributes(verb="impersonate", resource="groups", name=group)
                  for group in groups]
        if uid:
            asked.append(Attributes(verb="impersonate", api_group="authentication.k8s.io",
                                    resource="uids", name=uid))
        for request in asked:
            if not self.decide(user, request)[0]:
                raise forbidden(user, request)
        extra = UNAUTHENTICATED if name == ANONYMOUS else AUTHENTICATED
        if extra not in groups:
            groups.append(extra)
        return User(name, tuple(groups), uid or "")

    def authorize(self, user: User, *, method: str, path: str, query: str = "") -> None:
        request = request_info(method, path, query)
        if not self.decide(user, request)[0]:
            raise forbidden(user, request)

    def decide(self, user: User, request: Attributes) -> tuple[bool, str]:
        """Allowed or not, and why (`Policy.decide`); every request is allowed without a
        policy."""
        if self.policy is None:
            return True, ""
        policy = self.policy()
        if policy is not self._rules_of:
            self._rules.clear()
            self._rules_of = policy
        rules = self._rules.get(user)
        if rules is None:
            rules = self._rules[user] = tuple(policy.rules_for(user))
        return policy.decide(user, request, rules=rules)


def unauthorized() -> errors.ApiError:
    return errors.ApiError(errors.status_body(code=401, reason="Unauthorized",
                                              message="Unauthorized"))


def forbidden(user: User, request: Attributes) -> errors.ApiError:
    """The real server's words (responsewriters.forbiddenMessage and NewForbidden)."""
    if not request.resource_request:
        return errors.forbidden(f"forbidden: User {quote(user.name)} cannot "
                                f"{request.verb} path {quote(request.path)}", details={})
    where = (f"in the namespace {quote(request.namespace)}" if request.namespace
             else "at the cluster scope")
    why = (f"User {quote(user.name)} cannot {request.verb} resource "
           f"{quote(request.full_resource)} in API group {quote(request.api_group)} {where}")
    qualified = f"{request.resource}.{request.api_group}" if request.api_group else request.resource
    subject = f"{qualified} {quote(request.name)}" if request.name else qualified
    details: dict[str, Any] = {"name": request.name} if request.name else {}
    if request.api_group:
        details["group"] = request.api_group
    details["kind"] = request.resource
    return errors.forbidden(f"{subject} is forbidden: {why}", details=details)


def quote(text: str) -> str:
    """Go's %q for the plain strings these are."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
