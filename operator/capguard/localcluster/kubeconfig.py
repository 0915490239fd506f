"""A kubeconfig for the local cluster: plain HTTP on loopback and a bearer token (a dummy
nothing checks, unless the cluster authenticates: then its admin's, `cluster.ADMIN`)."""
from __future__ import annotations

import base64
import os
import pathlib
from typing import Any, Final

import yaml

NAME: Final = "capguard-local"
TOKEN: Final = "capguard-local-token"


def document(url: str, *, namespace: str = "default", token: str = TOKEN,
             authority: bytes | None = None) -> dict[str, Any]:
    """`authority`: the PEM certificates an HTTPS server is trusted by."""
    cluster: dict[str, Any] = {"server": url}
    if authority is not None:
        cluster["certificate-authority-data"] = base64.b64encode(authority).decode()
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": NAME, "cluster": cluster}],
        "users": [{"name": NAME, "user": {"token": token}}],
        "contexts": [{"name": NAME, "context": {"cluster": NAME, "user": NAME,
                                                "namespace": namespace}}],
        "current-context": NAME,
        "preferences": {},
    }


def write(path: str | os.PathLike[str], url: str, *, token: str = TOKEN,
          authority: bytes | None = None) -> pathlib.Path:
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(document(url, token=token, authority=authority),
                                     sort_keys=False))
    target.chmod(0o600)  # it may carry the admin's token
    return target
