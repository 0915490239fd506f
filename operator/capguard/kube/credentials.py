"""Logging in as kubectl would: --kubeconfig, else KUBECONFIG or ~/.kube/config, else the
pod's service account. One place for the operator, the engine agent and the gateway.
"""

from __future__ import annotations

import os
from typing import Any, Final

import kopf

SERVICE_ACCOUNT_TOKEN: Final = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def login(kubeconfig: str | None, **kwargs: Any) -> kopf.ConnectionInfo | None:
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

