"""The Kopf registrations: login, and the hand-over of the Lease on stop.

Kopf watches nothing: the reconcile loop keeps its index from its own LIST and watch
streams (`reconcile.Reconciler._follow`). Not `on.create/on.update/on.delete`: those
make Kopf keep per-object state in annotations (and finalizers for deletions) and run
handlers per object, which for 10,000 engines costs memory and a write storm on a cold
start. Not `@kopf.index`: its startup barrier is quadratic in the number of objects (see
`index.py`). And no longer `on.event`: Kopf's per-event machinery cost about 1 ms an
event, the largest part of the operator's CPU at 10,000 engines.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from capguard.handlers import reconcile, writer
from capguard.kube import client, credentials

logger = logging.getLogger(__name__)



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
        # Its pool is `connection_limit` for reads and writes, plus one connection per watch,
        # which each holds for minutes: with many namespaces the watches alone would take
        # the whole pool, and every write would wait for one of them to end.
        reconciler.api.login(info, connection_limit=connection_limit + reconciler.streams(),
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

    return registry
