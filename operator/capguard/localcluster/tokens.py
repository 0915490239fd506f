"""Service-account tokens as a cluster issues them: the TokenRequest API
(`POST .../serviceaccounts/NAME/token`, `kubectl create token NAME`), the way a kubelet
gets the token it mounts into a Pod.

A token authenticates as `system:serviceaccount:NS:NAME` with the groups
`system:serviceaccounts`, `system:serviceaccounts:NS` and `system:authenticated`, until it
expires (`spec.expirationSeconds`: 1 hour by default, 10 minutes at least, as the real
server's defaults) or its ServiceAccount is deleted (a token is bound to the account's
uid, so one made again under the same name does not bring old tokens back). The tokens are
opaque and kept in memory, not JWTs: nothing outside this server can verify them, and they
go when it stops.
"""
from __future__ import annotations

import dataclasses
import datetime
import secrets
import time
from collections.abc import Callable
from typing import Any, Final

from capguard.localcluster import authz, errors, gotypes, objects, resources, store

DEFAULT_SECONDS: Final = 3600
MIN_SECONDS: Final = 600
MAX_SECONDS: Final = 1 << 32


@dataclasses.dataclass(frozen=True)
class _Issued:
    user: authz.User
    namespace: str
    name: str
    account_uid: str
    expires: float  # on the issuer's clock


class Issuer:
    """Issues tokens for the store's ServiceAccounts and says whose a token is."""

    def __init__(self, api: objects.Objects, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.api = api
        self.clock = clock
        self._issued: dict[str, _Issued] = {}

    def request(self, *, namespace: str, name: str, body: Any) -> dict[str, Any]:
        """Answer a TokenRequest for the ServiceAccount `name` (404 if it is not there)."""
        account = self.api.get(resources.SERVICE_ACCOUNTS, namespace=namespace, name=name).obj
        spec = body.get("spec") if isinstance(body, dict) else None
        spec = dict(spec) if isinstance(spec, dict) else {}
        seconds = spec.get("expirationSeconds", DEFAULT_SECONDS)
        problem = ("less than 10 minutes" if not isinstance(seconds, int)
                   or isinstance(seconds, bool) or seconds < MIN_SECONDS else
                   "larger than 2^32 seconds" if seconds > MAX_SECONDS else "")
        if problem:
            raise errors.invalid(resources.TOKEN_REQUESTS, name, [{
                "reason": "FieldValueInvalid", "field": "spec.expirationSeconds",
                "message": f"Invalid value: {seconds}: may not specify a duration {problem}"}])
        token = f"capguard-localcluster.{secrets.token_urlsafe(32)}"
        expires = self.clock() + seconds
        self._issued[token] = _Issued(
            authz.service_account(namespace, name), namespace, name,
            account["metadata"]["uid"], expires)
        spec["expirationSeconds"] = seconds
        spec.setdefault("audiences", ["https://kubernetes.default.svc.cluster.local"])
        stamp = datetime.datetime.fromtimestamp(expires, datetime.UTC)
        return {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": name, "namespace": namespace,
                             "creationTimestamp": None},
                "spec": spec,
                "status": {"token": token,
                           "expirationTimestamp": gotypes.written_time(stamp)}}

    def user(self, token: str) -> authz.User | None:
        """Whose `token` is; None if it is not one of ours, has expired, or its account is
        gone."""
        issued = self._issued.get(token)
        if issued is None:
            return None
        entry = self.api.db.get(resources.SERVICE_ACCOUNTS.storage_key,
                                (issued.namespace, issued.name))
        if issued.expires <= self.clock() or entry is None or (
                entry.obj["metadata"].get("uid") != issued.account_uid):
            del self._issued[token]
            return None
        return issued.user


class DefaultAccounts:
    """The service account controller of kube-controller-manager, its one duty here: every
    Namespace gets a ServiceAccount `default` (what a Pod without `serviceAccountName`
    runs as), made again if deleted while the Namespace lives."""

    def __init__(self, api: objects.Objects) -> None:
        self.api = api
        api.hooks.append(self.on_change)

    def on_change(self, rt: resources.ResourceType, change: store.Change) -> None:
        obj = change.entry.obj
        if change.storage_key == resources.NAMESPACES.storage_key and change.type != "DELETED":
            namespace = obj["metadata"]["name"]
        elif (change.storage_key == resources.SERVICE_ACCOUNTS.storage_key
              and change.type == "DELETED" and obj["metadata"]["name"] == "default"):
            namespace = obj["metadata"]["namespace"]
        else:
            return
        self.api.soon(lambda: self._ensure(namespace))   # after the write, as a controller

    def _ensure(self, namespace: str) -> None:
        db = self.api.db
        entry = db.get(resources.NAMESPACES.storage_key, ("", namespace))
        if (entry is None or entry.obj["metadata"].get("deletionTimestamp")
                or db.get(resources.SERVICE_ACCOUNTS.storage_key, (namespace, "default"))):
            return
        self.api.create(resources.SERVICE_ACCOUNTS,
                        {"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": {"name": "default"}},
                        namespace=namespace, options=objects.WriteOptions())
