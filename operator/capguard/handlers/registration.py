"""The Kopf registrations: indexes of the three kinds, the view-complete signal, login.

Deliberately no `on.create/on.update/on.delete`: those make Kopf keep per-object state
in annotations (and finalizers for deletions) and run a handler task per object, which
for 10,000 engines costs memory and a write storm on a cold start. Indexes are enough:
Kopf keeps them current from the watch streams, and it runs no other handler until
every watched kind has been listed, so the first `on.event` call means the view is
complete. The reconcile loop does the rest, level-triggered.
"""

from __future__ import annotations

import os
from typing import Any, Final

import kopf

from capguard.handlers import reconcile, records
from capguard.kube import client

GROUP: Final = "capguard.dev"
VERSION: Final = "v1alpha1"
SERVICE_ACCOUNT_TOKEN: Final = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def build(
    reconciler: reconcile.Reconciler,
    *,
    kubeconfig: str | None = None,
    connection_limit: int = client.DEFAULT_CONNECTION_LIMIT,
) -> kopf.OperatorRegistry:
    """A fresh registry bound to one reconciler (importing this module registers nothing)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry, id="login")
    async def login(**kwargs: Any) -> kopf.AiohttpSession | None:
        info = _credentials(kubeconfig, **kwargs)
        if info is None:
            return None
        session = client.make_session(info, connection_limit=connection_limit)
        reconciler.api.connect(session=session, server=info.server)
        return kopf.AiohttpSession(aiohttp_session=session, server=info.server,
                                   default_namespace=info.default_namespace,
                                   priority=info.priority)

    @kopf.index(GROUP, VERSION, "inferenceengines", registry=registry, id="engines_by_model")
    async def engines_by_model(
        body: kopf.Body, **_: Any
    ) -> dict[tuple[str, str], records.EngineRecord]:
        record = records.engine_record(body)
        reconciler.wake()
        return {(record.meta.namespace, records.engine_model(record)): record}

    @kopf.index(GROUP, VERSION, "modelcapacities", registry=registry,
                id="models_by_namespace")
    async def models_by_namespace(body: kopf.Body, **_: Any) -> dict[str, records.ModelRecord]:
        record = records.model_record(body)
        reconciler.wake()
        return {record.meta.namespace: record}

    @kopf.index(GROUP, VERSION, "circuitbreakers", registry=registry,
                id="breakers_by_namespace")
    async def breakers_by_namespace(
        body: kopf.Body, **_: Any
    ) -> dict[str, records.BreakerRecord]:
        record = records.breaker_record(body)
        reconciler.wake()
        return {record.meta.namespace: record}

    def not_yet_complete(**_: Any) -> bool:
        return not reconciler.view_complete.is_set()

    for plural in ("inferenceengines", "modelcapacities", "circuitbreakers"):
        @kopf.on.event(GROUP, VERSION, plural, registry=registry, when=not_yet_complete,
                       id=f"view-complete-{plural}")
        async def view_complete(**_: Any) -> None:
            # Kopf calls this only after every indexed kind has been listed in full.
            reconciler.view_complete.set()
            reconciler.wake()

    @kopf.on.startup(registry=registry, id="capture_indexes")
    async def capture_indexes(**kwargs: Any) -> None:
        # Kopf passes each index by its handler's name; they are live views, filled later.
        reconciler.indexes = reconcile.Indexes(
            engines=kwargs["engines_by_model"], models=kwargs["models_by_namespace"],
            breakers=kwargs["breakers_by_namespace"])

    return registry


def _credentials(kubeconfig: str | None, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """--kubeconfig, else KUBECONFIG or ~/.kube/config, else the pod's service account."""
    if kubeconfig:
        # Kopf's kubeconfig login reads only the environment; no await happens in between.
        saved = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = kubeconfig
        try:
            return kopf.login_with_kubeconfig(**kwargs)
        finally:
            if saved is None:
                del os.environ["KUBECONFIG"]
            else:
                os.environ["KUBECONFIG"] = saved
    in_cluster = os.path.exists(SERVICE_ACCOUNT_TOKEN) and not os.environ.get("KUBECONFIG")
    if in_cluster:
        return kopf.login_with_service_account(**kwargs)
    return kopf.login_with_kubeconfig(**kwargs)
