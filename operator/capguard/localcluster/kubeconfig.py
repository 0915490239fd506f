"""A kubeconfig for the local cluster: plain HTTP on loopback and a dummy bearer token
(nothing checks it; there is no authentication or RBAC enforcement)."""
from __future__ import annotations

import os
import pathlib
from typing import Any, Final

import yaml

NAME: Final = "capguard-local"
TOKEN: Final = "capguard-local-token"


def document(url: str, *, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": NAME, "cluster": {"server": url}}],
        "users": [{"name": NAME, "user": {"token": TOKEN}}],
        "contexts": [{"name": NAME, "context": {"cluster": NAME, "user": NAME,
                                                "namespace": namespace}}],
        "current-context": NAME,
        "preferences": {},
    }


def write(path: str | os.PathLike[str], url: str) -> pathlib.Path:
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(document(url), sort_keys=False))
    return target
