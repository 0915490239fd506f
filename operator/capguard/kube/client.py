"""A small Kubernetes API client on the same aiohttp session Kopf uses.

Kopf's own client is private, so capguard's writes (actions, status, events, leases)
go through this one. The session is built once per login from Kopf's credentials, with
a connection limit: Kopf's default session has none, and an operator started on a large
backlog can otherwise open thousands of connections at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import aiohttp
import kopf

from capguard import defaults

MERGE_PATCH: Final = "application/merge-patch+json"
JSON: Final = "application/json"
DEFAULT_CONNECTION_LIMIT: Final = defaults.CONNECTION_LIMIT
DEFAULT_REQUEST_TIMEOUT: Final = 30.0

Body = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Resource:
    """A resource type as the API addresses it."""

    group: str
    version: str
    plural: str

    def path(self, *, namespace: str | None, name: str | None = None,
             subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        parts = [base]
        if namespace is not None:
            parts.append(f"namespaces/{urllib.parse.quote(namespace)}")
        parts.append(self.plural)
        if name is not None:
            parts.append(urllib.parse.quote(name))
        if subresource is not None:
            parts.append(subresource)
        return "/".join(parts)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


ENGINES: Final = Resource("capguard.dev", "v1alpha1", "inferenceengines")
MODELS: Final = Resource("capguard.dev", "v1alpha1", "modelcapacities")
BREAKERS: Final = Resource("capguard.dev", "v1alpha1", "circuitbreakers")
LEASES: Final = Resource("coordination.k8s.io", "v1", "leases")
EVENTS: Final = Resource("", "v1", "events")


class ApiError(Exception):
    """A non-2xx answer, with the metav1.Status reason when the server sent one."""

    def __init__(self, *, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class Conflict(ApiError):
    """409: the object changed since the resourceVersion we wrote with (or already exists)."""


class NotFound(ApiError):
    """404: the object (or its kind) is gone."""


def make_session(
    info: kopf.ConnectionInfo, *, connection_limit: int = DEFAULT_CONNECTION_LIMIT
) -> aiohttp.ClientSession:
    """An aiohttp session from Kopf's credentials, with a bounded connection pool."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connection_limit, ssl=info.as_ssl_context()),
        headers={"User-Agent": "capguard", **info.as_http_headers()},
        trust_env=info.trust_env,
    )


class Api:
    """Requests against one API server; waits for the first login before the first call."""

    def __init__(self, *, request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self._ready = asyncio.Event()
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)

    def connect(self, *, session: aiohttp.ClientSession, server: str) -> None:
        """Use this session from now on (called on every Kopf login)."""
        self._session = session
        self._server = server.rstrip("/")
        self._ready.set()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str = JSON,
    ) -> Body:
        await self._ready.wait()
        assert self._session is not None
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type, "Accept": JSON} if data else {"Accept": JSON}
        async with self._session.request(
            method, self._server + path, data=data, params=params, headers=headers,
            timeout=self._timeout,
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise _error(response.status, text)
            parsed: Body = json.loads(text) if text else {}
            return parsed

    async def get(self, resource: Resource, *, namespace: str | None, name: str) -> Body:
        return await self.request("GET", resource.path(namespace=namespace, name=name))

    async def create(self, resource: Resource, *, namespace: str | None, body: Body) -> Body:
        return await self.request("POST", resource.path(namespace=namespace), body=body)

    async def replace(
        self, resource: Resource, *, namespace: str | None, name: str, body: Body
    ) -> Body:
        return await self.request("PUT", resource.path(namespace=namespace, name=name), body=body)

    async def merge_patch(
        self,
        resource: Resource,
        *,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        subresource: str | None = None,
    ) -> Body:
        path = resource.path(namespace=namespace, name=name, subresource=subresource)
        return await self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)

    async def pages(
        self, resource: Resource, *, namespace: str | None = None, page_size: int = 500
    ) -> AsyncIterator[Body]:
        """A LIST, page by page (each a List body; the first one's resourceVersion is the
        version of the whole list)."""
        params = {"limit": str(page_size)}
        while True:
            page = await self.request("GET", resource.path(namespace=namespace), params=params)
            yield page
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return
            params = {"limit": str(page_size), "continue": token}

    async def list(
        self, resource: Resource, *, namespace: str | None = None, page_size: int = 500
    ) -> AsyncIterator[Body]:
        """Every object of a kind."""
        async for page in self.pages(resource, namespace=namespace, page_size=page_size):
            for item in page.get("items") or []:
                yield item


def _error(status: int, text: str) -> ApiError:
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = {}
    reason = str(parsed.get("reason") or "") if isinstance(parsed, dict) else ""
    message = str(parsed.get("message") or text[:200]) if isinstance(parsed, dict) else text[:200]
    kind = {409: Conflict, 404: NotFound}.get(status, ApiError)
    return kind(status=status, reason=reason, message=message)
