"""Logging in as kubectl would: --kubeconfig, else KUBECONFIG or ~/.kube/config, else the
pod's service account. One place for the operator, the engine agent and the gateway.

In a Pod the API server is the address the kubelet puts in KUBERNETES_SERVICE_HOST and
KUBERNETES_SERVICE_PORT, as client-go's in-cluster config reads it, not the name
kubernetes.default.svc Kopf's own service-account login asks the cluster's DNS for: a
control plane whose DNS is down (CoreDNS restarting, say) must not cut the operator off.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, Final

import kopf

SERVICE_ACCOUNT_TOKEN: Final = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def login(kubeconfig: str | None, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """--kubeconfig, else KUBECONFIG, else the Pod's service account, else ~/.kube/config:
    controller-runtime's order (a Pod prefers its own account to a stray kubeconfig)."""
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
        info = kopf.login_with_service_account(**kwargs)
        server = in_cluster_server(os.environ)
        if info is None or server is None:
            return info
        return dataclasses.replace(info, server=server)
    return kopf.login_with_kubeconfig(**kwargs)


def in_cluster_server(environ: Mapping[str, str]) -> str | None:
    """The API server's URL from the kubelet's KUBERNETES_SERVICE_HOST and _PORT (an IPv6
    address in brackets), or None where either is unset."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"

