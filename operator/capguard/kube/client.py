"""A small Kubernetes API client on the same aiohttp session Kopf uses.

Kopf's own client is private, so capguard's writes (actions, status, events, leases)
go through this one. The session is built once per login from Kopf's credentials, with
a connection limit: Kopf's default session has none, and an operator started on a large
backlog can otherwise open thousands of connections at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

import aiohttp
import kopf

from capguard import defaults

MERGE_PATCH: Final = "application/merge-patch+json"
JSON: Final = "application/json"
DEFAULT_CONNECTION_LIMIT: Final = defaults.CONNECTION_LIMIT
DEFAULT_REQUEST_TIMEOUT: Final = 30.0
# A read (a GET or a LIST page, never a watch: those have their own) that receives nothing
# for this long is on a dead connection: given up, so a re-list after a broken watch waits
# this, not the whole request timeout, before it is tried again. Longer than API Priority
# and Fairness holds a request in its queue (a quarter of the server's 60 s request
# timeout, then a 429), so a busy server is not asked twice. Writes keep the whole
# timeout: an admission webhook may hold one silent for up to 30 s.
READ_IDLE_TIMEOUT: Final = 20.0
USER_AGENT: Final = "capguard"

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

    def __init__(self, *, status: int, reason: str, message: str,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after  # the server's Retry-After, in seconds

    @property
    def transient(self) -> bool:
        """The server is unwell or busy (5xx, 429): worth a retry later, not a re-plan."""
        return self.status >= 500 or self.status == 429


class Conflict(ApiError):
    """409: the object changed since the resourceVersion we wrote with (or already exists)."""


class NotFound(ApiError):
    """404: the object (or its kind) is gone."""


class Unauthorized(ApiError):
    """401: the credentials no longer work (an expired or rotated token)."""


def make_session(
    info: kopf.ConnectionInfo, *, connection_limit: int = DEFAULT_CONNECTION_LIMIT,
    user_agent: str = USER_AGENT,
) -> aiohttp.ClientSession:
    """An aiohttp session from Kopf's credentials, with a bounded connection pool. The
    user agent names the process in audit logs (the operator, an engine agent, ...)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connection_limit, ssl=info.as_ssl_context()),
        headers={"User-Agent": user_agent, **info.as_http_headers()},
        trust_env=info.trust_env,
    )


class Api:
    """Requests against one API server; waits for the first login before the first call.

    With `login`, the Api owns its session, made from the credentials: one that was
    closed under it is made again, and a 401 logs in again with `relogin` (a rotated
    service-account token, say) before the request is tried once more.
    """

    def __init__(self, *, request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 read_idle_timeout: float = READ_IDLE_TIMEOUT,
                 user_agent: str = USER_AGENT) -> None:
        self.user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self._ready = asyncio.Event()
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._read_timeout = aiohttp.ClientTimeout(
            total=request_timeout, sock_read=min(read_idle_timeout, request_timeout))
        self._info: kopf.ConnectionInfo | None = None
        self._connection_limit = DEFAULT_CONNECTION_LIMIT
        self._relogin: Callable[[], kopf.ConnectionInfo | None] | None = None

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    def connect(self, *, session: aiohttp.ClientSession, server: str) -> None:
        """Use this session from now on (the caller owns it)."""
        self._session = session
        self._server = server.rstrip("/")
        self._ready.set()

    def login(
        self, info: kopf.ConnectionInfo, *, connection_limit: int = DEFAULT_CONNECTION_LIMIT,
        relogin: Callable[[], kopf.ConnectionInfo | None] | None = None,
    ) -> None:
        """Use these credentials from now on, in a session of the Api's own."""
        old = self._session if self._info is not None else None
        self._info, self._connection_limit = info, connection_limit
        self._relogin = relogin or self._relogin
        self.connect(session=make_session(info, connection_limit=connection_limit,
                                          user_agent=self.user_agent), server=info.server)
        if old is not None and not old.closed:
            asyncio.get_running_loop().create_task(old.close())

    async def close(self) -> None:
        """Close the session the Api owns (a session given to `connect` is the caller's)."""
        if self._info is not None and self._session is not None:
            await self._session.close()

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
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type, "Accept": JSON} if data else {"Accept": JSON}
        for last in (False, True):
            session = self._own_session()
            try:
                async with session.request(
                    method, self._server + path, data=data, params=params, headers=headers,
                    timeout=self._read_timeout if method == "GET" else self._timeout,
                ) as response:
                    text = await response.text()
                    if response.status >= 400:
                        raise _error(response.status, text, headers=response.headers)
                    parsed: Body = json.loads(text) if text else {}
                    return parsed
            except Unauthorized:
                if last or not self._logged_in_again():
                    raise
            except RuntimeError:
                if last or not session.closed or self._info is None:
                    raise  # not a closed session, or not one the Api can make again
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _own_session(self) -> aiohttp.ClientSession:
        assert self._session is not None
        if self._session.closed and self._info is not None:
            self.connect(session=make_session(self._info, connection_limit=self._connection_limit,
                                              user_agent=self.user_agent),
                         server=self._info.server)
        return self._session

    def log_in_again(self) -> bool:
        """After a 401: log in again with `relogin` (a rotated token); False if it cannot."""
        return self._logged_in_again()

    def _logged_in_again(self) -> bool:
        info = self._relogin() if self._relogin is not None else None
        if info is None:
            return False
        self.login(info, connection_limit=self._connection_limit)
        return True

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
        self, resource: Resource, *, namespace: str | None = None, page_size: int = 500,
        label_selector: str | None = None,
    ) -> AsyncIterator[Body]:
        """A LIST, page by page (each a List body; the first one's resourceVersion is the
        version of the whole list)."""
        selected = {"labelSelector": label_selector} if label_selector else {}
        params = {"limit": str(page_size), **selected}
        while True:
            page = await self.request("GET", resource.path(namespace=namespace), params=params)
            yield page
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return
            params = {"limit": str(page_size), "continue": token, **selected}

    async def list(
        self, resource: Resource, *, namespace: str | None = None, page_size: int = 500
    ) -> AsyncIterator[Body]:
        """Every object of a kind."""
        async for page in self.pages(resource, namespace=namespace, page_size=page_size):
            for item in page.get("items") or []:
                yield item


    async def watch(
        self, resource: Resource, *, namespace: str | None, resource_version: str,
        field_selector: str | None = None, label_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[Body]:
        """The events of one watch from ``resource_version`` (``{"type", "object"}``), until the
        server ends it. BOOKMARKs come through (their object carries only the resourceVersion
        to resume from). A resourceVersion the server no longer keeps raises `Expired`: a real
        API server says so with a 200 and one ERROR event holding a 410 Status, not an HTTP
        410 (k8s-reference 081); both are handled. A stream that ends at once with no event
        raises `EmptyWatch`, to be backed off from."""
        params = {"watch": "true", "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(timeout_seconds)}
        if resource_version:  # none: from now, the objects as they are first (synthetic ADDED)
            params["resourceVersion"] = resource_version
        if field_selector:
            params["fieldSelector"] = field_selector
        if label_selector:
            params["labelSelector"] = label_selector
        await self._ready.wait()
        session = self._own_session()
        # No total timeout: the server ends the stream after timeoutSeconds; a stream that
        # goes quiet far longer than that is dead.
        timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout_seconds + 30)
        opened, heard = time.monotonic(), False
        async with session.get(self._server + resource.path(namespace=namespace), params=params,
                               headers={"Accept": JSON}, timeout=timeout) as response:
            if response.status >= 400:
                raise _error(response.status, await response.text(), headers=response.headers)
            async for line in _lines(response.content):
                if not line.strip():
                    continue
                event: Body = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise _error(int(status.get("code") or 500), json.dumps(status))
                heard = True
                yield event
        if not heard and time.monotonic() - opened < SHORT_WATCH:
            raise EmptyWatch()


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """A watch stream's lines, however long: one event carries a whole object, up to the
    ~1.5 MiB etcd takes, where aiohttp's own line reader gives up past 512 KiB."""
    pending = b""
    async for chunk in content.iter_any():
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            yield line
    if pending:
        yield pending


# A watch that ends sooner than this with no event (a proxy that does not hold streams; a
# real server holds one for its timeoutSeconds) is a failure to back off from, or a loop
# would watch again as fast as the streams end.
SHORT_WATCH: Final = 1.0


class EmptyWatch(Exception):
    def __str__(self) -> str:
        return "the stream ended at once with no event"


class Expired(ApiError):
    """410: the watch's resourceVersion is older than the server keeps; LIST again."""


def _error(status: int, text: str, *, headers: Mapping[str, str] | None = None) -> ApiError:
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = {}
    reason = str(parsed.get("reason") or "") if isinstance(parsed, dict) else ""
    message = str(parsed.get("message") or text[:200]) if isinstance(parsed, dict) else text[:200]
    kind = {409: Conflict, 404: NotFound, 401: Unauthorized, 410: Expired}.get(status, ApiError)
    return kind(status=status, reason=reason, message=message,
                retry_after=retry_after(headers or {}, parsed))


def retry_after(headers: Mapping[str, str], status: object) -> float | None:
    """The server's Retry-After (seconds), or the Status' details.retryAfterSeconds."""
    value = headers.get("Retry-After")
    if value is not None:
        with contextlib.suppress(ValueError):
            return max(0.0, float(value))
    details = status.get("details") if isinstance(status, dict) else None
    seconds = details.get("retryAfterSeconds") if isinstance(details, dict) else None
    return float(seconds) if isinstance(seconds, int | float) else None
