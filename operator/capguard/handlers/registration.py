"""The Kopf registrations: the watch feed of the three kinds into the index, and login.

Deliberately no `on.create/on.update/on.delete`: those make Kopf keep per-object state
in annotations (and finalizers for deletions) and run handlers per object, which for
10,000 engines costs memory and a write storm on a cold start. And no `@kopf.index`:
its startup barrier is quadratic in the number of objects (see `index.py`). `on.event`
only reads; the reconcile loop does the rest, level-triggered.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import kopf

from capguard.handlers import index, reconcile, writer
from capguard.kube import client, credentials

logger = logging.getLogger(__name__)

GROUP: Final = "capguard.dev"
VERSION: Final = "v1alpha1"


def build(
    reconciler: reconcile.Reconciler,
    *,
    kubeconfig: str | None = None,
    connection_limit: int = client.DEFAULT_CONNECTION_LIMIT,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> kopf.OperatorRegistry:
    """A fresh registry bound to one reconciler (importing this module registers nothing).

    `on_stop` runs first when the operator is asked to stop (SIGTERM): the Lease is given
    up while the API can still be reached, so a standby takes over at once.
    """
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry, id="login")
    async def login(**kwargs: Any) -> kopf.AiohttpSession | None:
        try:
            info = credentials.login(kubeconfig, **kwargs)
        except Exception as error:  # a kubeconfig Kopf cannot read: one line, not a trace
            logger.error("Cannot log in to the API server: %s", writer.one_line(error))
            raise kopf.TemporaryError(writer.one_line(error), delay=10) from None
        if info is None:
            logger.error("Cannot log in to the API server: no credentials in %s",
                         kubeconfig or "KUBECONFIG, ~/.kube/config or the service account")
            return None
        # The reconciler's requests go through a session of their own: Kopf closes its
        # session when it logs in again, and a request of ours must never meet a closed one.
        reconciler.api.login(info, connection_limit=connection_limit,
                             relogin=lambda: credentials.login(kubeconfig, **kwargs))
        session = client.make_session(info, connection_limit=connection_limit)
        return kopf.AiohttpSession(aiohttp_session=session, server=info.server,
                                   default_namespace=info.default_namespace,
                                   priority=info.priority)

    if on_stop is not None:
        stop = on_stop

        @kopf.on.cleanup(registry=registry, id="hand-over")
        async def hand_over(**_: Any) -> None:
            await stop()

    stores: dict[str, index.Store[Any]] = {
        "inferenceengines": reconciler.index.engines,
        "modelcapacities": reconciler.index.models,
        "circuitbreakers": reconciler.index.breakers,
    }
    for plural, store in stores.items():
        register_feed(registry, reconciler, plural=plural, store=store)

    return registry


def register_feed(
    registry: kopf.OperatorRegistry, reconciler: reconcile.Reconciler, *, plural: str,
    store: index.Store[Any],
) -> None:
    """Every watch event of a kind goes into the operator's index; nothing is written back."""

    @kopf.on.event(GROUP, VERSION, plural, registry=registry, id=f"index-{plural}")
    async def feed(type: str | None, body: kopf.Body, **_: Any) -> None:
        raw = dict(body)
        if type == "DELETED":
            store.delete(raw)
        else:
            store.apply(raw)
        reconciler.wake()
