"""Is capguard's RBAC sufficient and minimal? Checked against what the operator really did.

Given the rendered RBAC objects (`kubectl kustomize deploy/`) and an audit log of the
requests the operator made, report

- the requests no rule allows (the RBAC is not sufficient: the operator would get 403), and
- the permissions no request used (the RBAC is not minimal), one per (rule, verb, resource).

The audit log is JSON lines in either of two shapes:

- the embedded API server's (``capguard localcluster --audit-log``): ``method``,
  ``path``, ``query`` and ``user_agent`` (the resolved ``verb``, ``resource``, ... are
  there too, but the request line is resolved here the way the real server does it);
- a Kubernetes audit event (``kind: Event`` from kind's audit backend): ``verb``,
  ``objectRef`` and ``user.username``.

Only the operator's requests count: by default those whose user agent is
``kopf/…`` or ``capguard`` (the two HTTP clients in the operator process, not the engine
agent's ``capguard-engine/…``), or whose user
is the operator's service account. Non-resource requests (discovery: ``/api``,
``/apis/...``, ``/version``) are allowed to every authenticated user by the built-in
``system:discovery`` role and are not checked against capguard's rules.

    python tests/ship/rbac.py --rendered rendered.yaml --audit-log audit.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import yaml

from capguard.localcluster import authz

OPERATOR_AGENTS: Final = re.compile(r"^(kopf|capguard)(/|$)")  # not capguard-engine
SERVICE_ACCOUNT: Final = ("capguard-system", "capguard-operator")


# A request as the authorizer sees it, and one PolicyRule scoped by its binding: the
# embedded server's authorizer's (one resolver, one matcher for both).
Request = authz.Attributes
Rule = authz.Rule


@dataclasses.dataclass(frozen=True)
class Unused:
    rule: Rule
    api_group: str
    resource: str
    verb: str

    def __str__(self) -> str:
        return f"{self.verb} {self.api_group or 'core'}/{self.resource}  ({self.rule.source})"


@dataclasses.dataclass(frozen=True)
class Report:
    denied: tuple[Request, ...]
    unused: tuple[Unused, ...]
    checked: int

    @property
    def ok(self) -> bool:
        return not self.denied and not self.unused

    def __str__(self) -> str:
        lines = [f"{self.checked} operator requests checked"]
        lines += [f"DENIED (no rule allows it): {request}" for request in self.denied]
        lines += [f"UNUSED (no request needed it): {unused}" for unused in self.unused]
        return "\n".join(lines)


def check(*, rules: Iterable[Rule], requests: Iterable[Request]) -> Report:
    """Every request against every rule: what is denied, and what is never used."""
    rules = list(rules)
    used: set[tuple[Rule, str, str, str]] = set()
    denied: dict[Request, None] = {}
    count = 0
    for request in requests:
        count += 1
        allowing = [rule for rule in rules if rule.allows(request)]
        if not allowing:
            denied.setdefault(dataclasses.replace(request, name=""), None)
        for rule in allowing:
            used.add((rule, request.api_group, request.full_resource, request.verb))
    unused = [
        Unused(rule=rule, api_group=group, resource=resource, verb=verb)
        for rule in rules
        for group, resource, verb in rule.permissions()
        if (rule, group, resource, verb) not in used
    ]
    return Report(denied=tuple(denied), unused=tuple(unused), checked=count)


def rules_for(
    objects: Iterable[Mapping[str, Any]], *, service_account: tuple[str, str] = SERVICE_ACCOUNT,
) -> list[Rule]:
    """The rules bound to the service account, each scoped as its binding scopes it."""
    policy = authz.Policy.of(objects)
    dangling = policy.dangling()
    if dangling:
        raise ValueError("; ".join(dangling))
    return list(policy.rules_for(authz.service_account(*service_account), bootstrap=False))


def operator_requests(
    records: Iterable[Mapping[str, Any]], *, agents: re.Pattern[str] = OPERATOR_AGENTS,
    service_account: tuple[str, str] = SERVICE_ACCOUNT,
) -> Iterator[Request]:
    """The operator's resource requests among the audit records."""
    username = "system:serviceaccount:{}:{}".format(*service_account)
    for record in records:
        agent = (record.get("userAgent") or record.get("user_agent")
                 or record.get("user-agent") or "")
        user = record.get("user")
        user = user.get("username", "") if isinstance(user, dict) else ""
        if not (agents.match(agent) or user == username):
            continue
        request = parse_record(record)
        if request is not None:
            yield request


def parse_record(record: Mapping[str, Any]) -> Request | None:
    """A resource request from one audit record; None for a non-resource request."""
    if isinstance(record.get("objectRef"), dict):  # a Kubernetes audit event
        ref = record["objectRef"]
        return Request(verb=record["verb"], api_group=ref.get("apiGroup", ""),
                       resource=ref["resource"], subresource=ref.get("subresource", ""),
                       namespace=ref.get("namespace", ""), name=ref.get("name", ""))
    if record.get("path"):  # the request line is the ground truth, as for the real server
        path = record["path"]
        if record.get("query") and "?" not in path:
            path = f"{path}?{record['query']}"
        return parse_path(method=record.get("method", "GET"), path=path)
    if record.get("resource"):
        return Request(verb=record["verb"], api_group=record.get("apiGroup") or "",
                       resource=record["resource"], subresource=record.get("subresource") or "",
                       namespace=record.get("namespace") or "", name=record.get("name") or "")
    return None


def parse_path(*, method: str, path: str) -> Request | None:
    """Resolve a request line the way the API server's RequestInfo resolver does; None for
    a request that is not for a resource (discovery)."""
    request = authz.request_info(method, path)
    return request if request.resource_request else None


def read_audit_log(path: Path) -> Iterator[dict[str, Any]]:
    with path.open() as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def read_rendered(path: Path) -> list[dict[str, Any]]:
    with path.open() as text:
        return [doc for doc in yaml.safe_load_all(text) if doc]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rendered", type=Path, required=True,
                        help="the rendered manifests: kubectl kustomize deploy/ > FILE")
    parser.add_argument("--audit-log", type=Path, required=True, help="JSON lines of requests")
    parser.add_argument("--allow-unused", action="store_true",
                        help="report unused permissions but do not fail on them")
    args = parser.parse_args(argv)
    report = check(rules=rules_for(read_rendered(args.rendered)),
                   requests=operator_requests(read_audit_log(args.audit_log)))
    print(report)
    return 0 if not report.denied and (args.allow_unused or not report.unused) else 1


if __name__ == "__main__":
    sys.exit(main())
