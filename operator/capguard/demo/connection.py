"""Talking to the cluster the demo plays on: any kubeconfig, the operator's own client.

CRUD and watches go through `capguard.kube.client.Api` (the operator's client, on a session
built from the kubeconfig by the operator's login, `capguard.kube.credentials`).
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from collections.abc import Iterable
from typing import Any, Final

import aiohttp
import kopf
import yaml

from capguard.kube import client, credentials

CRDS: Final = client.Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
NAMESPACES: Final = client.Resource("", "v1", "namespaces")
WATCH_TIMEOUT: Final = 290  # seconds: the server ends a watch; the mirror resumes it


class Connection:
    """One session to one API server; close it with `aclose`."""

    def __init__(self, *, session: aiohttp.ClientSession, server: str) -> None:
        self.session = session
        self.server = server.rstrip("/")
        self.api = client.Api()
        self.api.connect(session=session, server=server)

    async def aclose(self) -> None:
        await self.session.close()

    async def list_with_version(
        self, resource: client.Resource, *, namespace: str
    ) -> tuple[list[dict[str, Any]], str]:
        """Every object of a kind and the list's resourceVersion (where a watch resumes)."""
        page = await self.api.request("GET", resource.path(namespace=namespace))
        version = str((page.get("metadata") or {}).get("resourceVersion") or "")
        return list(page.get("items") or []), version

    async def get_text(self, url: str) -> str:
        """A plain GET of any URL (the operator's /metrics) on this session."""
        async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
            return await response.text()


async def connect(kubeconfig: pathlib.Path) -> Connection:
    """A connection from a kubeconfig file (tokens, client certificates, CA data)."""
    info = _login(kubeconfig)
    session = client.make_session(info, connection_limit=16)
    return Connection(session=session, server=info.server)


def _login(kubeconfig: pathlib.Path) -> kopf.ConnectionInfo:
    info = credentials.login(str(kubeconfig), settings=kopf.OperatorSettings())
    if info is None:
        raise kopf.LoginError(f"no usable credentials in {kubeconfig}")
    return info


async def ensure_crds(connection: Connection, *, directory: pathlib.Path) -> list[str]:
    """Create the CRDs that are missing (an existing cluster keeps its own); names created."""
    created = []
    for body in crd_documents(directory):
        name = body["metadata"]["name"]
        with contextlib.suppress(client.Conflict):
            await connection.api.create(CRDS, namespace=None, body=body)
            created.append(name)
    return created


def crd_documents(directory: pathlib.Path) -> Iterable[dict[str, Any]]:
    """The CustomResourceDefinitions in a folder's YAML files (other documents skipped)."""
    for path in sorted(directory.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
                yield document


async def wait_for_crds(connection: Connection, *, names: Iterable[str], timeout: float) -> None:
    """Until every CRD is Established (the kinds are served), or TimeoutError."""
    async def established(name: str) -> bool:
        body = await connection.api.get(CRDS, namespace=None, name=name)
        conditions = (body.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Established" and c.get("status") == "True"
                   for c in conditions)

    async def poll() -> None:
        pending = list(names)
        while pending:
            pending = [n for n in pending if not await established(n)]
            if pending:
                await asyncio.sleep(0.1)

    await asyncio.wait_for(poll(), timeout=timeout)
