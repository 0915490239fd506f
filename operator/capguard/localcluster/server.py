"""The aiohttp application: routing requests to discovery, OpenAPI and objects, turning
every refusal into a metav1.Status, and recording each request for audits.

The audit: one dict per request (`method`, `path`, `query`, `user_agent`, `content_type`,
`verb`, `code`, and for resource requests `apiGroup`, `apiVersion`, `resource`,
`subresource`, `namespace`, `name`; and `user`, its `username` and `groups`, where requests
are authenticated: `authz`). `Server.audit` keeps only the last `audit_buffer`
of them (a `collections.deque`, `DEFAULT_AUDIT_BUFFER` by default, about 560 bytes each)
so a long-running server does not grow; the audit file, when there is one, gets every
record as a JSON line. A request is recorded when it is answered, except a watch: it is
recorded when its stream opens, with code 200, so the log is complete while watches run
(a watch refused before streaming, say for a bad selector, is recorded with its error).
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections.abc import Callable
from typing import IO, Any, Final

import yaml
from aiohttp import web

from capguard.localcluster import (
    authz,
    decoding,
    discovery,
    errors,
    negotiation,
    objects,
    openapi,
    openapi_protobuf,
    protobuf,
    rbac,
    resources,
    routing,
    selectors,
    store,
    tables,
    tokens,
    watch,
)

logger = logging.getLogger(__name__)

# The real server's limit for a JSON or YAML body (3 MiB); larger bodies answer 413.
MAX_BODY_BYTES: Final = 3 * 1024 * 1024
JSON_TYPE: Final = "application/json"
PATCH_TYPES: Final = ("application/merge-patch+json", "application/json-patch+json",
                      "application/strategic-merge-patch+json", "application/apply-patch+yaml")
_TRUE: Final = ("true", "1", "True")
# The real server's --request-timeout: a request that is not a watch (one whose body never
# arrives in full, say) is answered 504 after it, and its connection closed.
REQUEST_TIMEOUT: Final = 60.0
# Requests `Server.audit` keeps in memory (about 5.6 MB); the audit file gets them all.
DEFAULT_AUDIT_BUFFER: Final = 10_000


class Server:
    def __init__(self, *, api: objects.Objects, server_address: Callable[[], str],
                 audit_file: IO[str] | None = None,
                 audit_buffer: int = DEFAULT_AUDIT_BUFFER,
                 authorizer: authz.Authorizer | None = None,
                 issuer: tokens.Issuer | None = None) -> None:
        self.api = api
        self.authorizer = authorizer
        self.tokens = issuer or tokens.Issuer(api)
        self.server_address = server_address
        self.audit: collections.deque[dict[str, Any]] = collections.deque(maxlen=audit_buffer)
        self.audit_file = audit_file
        self.record_audit = True
        self.request_timeout = REQUEST_TIMEOUT

    def application(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    # ---- the one entry point --------------------------------------------------------------

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        record: dict[str, Any] = {"method": request.method, "path": request.path,
                                  "query": request.query_string,
                                  "user_agent": request.headers.get("User-Agent", ""),
                                  "content_type": request.headers.get("Content-Type", ""),
                                  "verb": request.method.lower()}
        try:
            if self.authorizer is not None:  # the real server's filters come before routing
                user = self.authorizer.authenticate(request.headers.get("Authorization"))
                record["user"] = user.audit()
                acting = self.authorizer.impersonate(
                    user, name=request.headers.get("Impersonate-User"),
                    groups=request.headers.getall("Impersonate-Group", ()),
                    uid=request.headers.get("Impersonate-Uid"))
                if acting is not user:
                    record["impersonatedUser"] = acting.audit()
                self.authorizer.authorize(acting, method=request.method, path=request.path,
                                          query=request.query_string)
                # Who writes, for the RBAC kinds' escalation check; this request's task alone.
                rbac.REQUESTER.set(acting)
            async with asyncio.timeout(None if _long_running(request) else self.request_timeout):
                response = await self._route(request, record)
        except TimeoutError:
            # The handler may still be reading a body: answer, and close the connection.
            response = _json_response(errors.timeout().status, status=504)
            response.force_close()
        except store.RequestTooLarge:
            response = _json_response(errors.etcd_too_large().status, status=500)
        except errors.ApiError as error:
            response = _json_response(error.status, status=error.code)
        except errors.PageNotFound:
            response = web.Response(status=404, text="404 page not found\n",
                                    content_type="text/plain")
        except web.HTTPRequestEntityTooLarge:
            response = _json_response(errors.too_large(MAX_BODY_BYTES).status, status=413)
        except Exception as error:   # a bug of ours: logged, answered, the server lives on
            logger.exception("internal error serving %s %s", request.method, request.path)
            status = errors.internal(f"{type(error).__name__}: {error}").status
            response = _json_response(status, status=500)
        if "code" not in record:   # else a watch, recorded when it opened
            record["code"] = response.status
            self._record(record)
        return response

    def _record(self, record: dict[str, Any]) -> None:
        if not self.record_audit:
            return
        self.audit.append(record)
        if self.audit_file is not None:
            self.audit_file.write(json.dumps(record) + "\n")
            self.audit_file.flush()

    async def _route(self, request: web.Request, record: dict[str, Any]
                     ) -> web.StreamResponse:
        parts = [part for part in request.path.split("/") if part]
        if parts[:1] == ["api"] and len(parts) >= 2 and parts[1] == "v1" and len(parts) > 2:
            return await self._resource(request, record, group="", version="v1",
                                        rest=parts[2:])
        if parts[:1] == ["apis"] and len(parts) > 3:
            return await self._resource(request, record, group=parts[1], version=parts[2],
                                        rest=parts[3:])
        if request.method != "GET":
            raise errors.method_not_allowed(request.method)
        return self._non_resource(request, parts)

    # ---- discovery, OpenAPI, health -------------------------------------------------------

    def _non_resource(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        registry = self.api.registry
        accept = request.headers.get("Accept")
        if parts in (["healthz"], ["livez"], ["readyz"]):
            return web.Response(text="ok", content_type="text/plain")
        if parts == ["version"]:
            return _json_response(discovery.VERSION_INFO)
        if parts in (["api"], ["apis"]):
            fmt = negotiation.choose(accept, discovery=True)
            if fmt in (negotiation.Format.DISCOVERY_V2, negotiation.Format.DISCOVERY_V2BETA1):
                body = discovery.aggregated(registry, legacy=parts == ["api"],
                                            version=fmt.value)
                return _json_response(body,
                                      content_type=discovery.aggregated_content_type(fmt.value))
            if parts == ["api"]:
                return _json_response(discovery.api_versions(self.server_address()))
            return _json_response(discovery.api_group_list(registry))
        document: dict[str, Any] | None = None
        if parts == ["api", "v1"]:
            document = discovery.api_resource_list(registry, "", "v1")
        elif len(parts) == 2 and parts[0] == "apis":
            document = discovery.api_group(registry, parts[1])
        elif len(parts) == 3 and parts[0] == "apis":
            document = discovery.api_resource_list(registry, parts[1], parts[2])
        elif parts[:1] == ["openapi"]:
            return self._openapi(parts[1:], accept)
        if document is None:
            raise errors.PageNotFound()
        negotiation.choose(accept)
        return _json_response(document)

    def _openapi(self, parts: list[str], accept: str | None) -> web.Response:
        crds = self.established_crds()
        if parts == ["v2"]:
            # kubectl asks for v2 only as protobuf (openapi_protobuf.py says when).
            media = negotiation.choose_openapi(accept, protobuf=(
                openapi_protobuf.MEDIA_TYPE, openapi_protobuf.MEDIA_TYPE_DEPRECATED))
            document = openapi.openapi_v2(crds)
            if media != negotiation.OPENAPI_JSON:
                response = web.Response(body=openapi_protobuf.encode_document(document))
                response.headers["Content-Type"] = media
                return response
            return _json_response(document)
        found: dict[str, Any] | None = None
        if parts == ["v3"]:
            found = openapi.openapi_v3_root(crds)
        elif len(parts) == 4 and parts[:2] == ["v3", "apis"]:
            found = openapi.openapi_v3_group_version(crds, parts[2], parts[3])
        elif parts == ["v3", "api", "v1"]:
            found = openapi.openapi_v3_group_version(crds, "", "v1")
        if found is None:
            raise errors.PageNotFound()
        negotiation.choose_openapi(accept)   # no v3 protobuf: JSON or 406
        return _json_response(found)

    def established_crds(self) -> list[dict[str, Any]]:
        db = self.api.db
        found = []
        for key in db.keys(resources.CRDS.storage_key):
            entry = db.get(resources.CRDS.storage_key, key)
            conditions = (entry.obj.get("status") or {}).get("conditions") or [] if entry else []
            if entry is not None and any(c.get("type") == "Established"
                                         and c.get("status") == "True" for c in conditions):
                found.append(entry.obj)
        return found

    # ---- resources --------------------------------------------------------------------------

    async def _resource(self, request: web.Request, record: dict[str, Any], *, group: str,
                        version: str, rest: list[str]) -> web.StreamResponse:
        target = routing.resource_target(self.api.registry, group=group, version=version,
                                         parts=rest)
        query = request.query
        record.update({"apiGroup": group, "apiVersion": version, "resource": target.rt.plural,
                       "subresource": target.subresource, "namespace": target.namespace,
                       "name": target.name})
        verb = _verb(request.method, target, watching=query.get("watch") in _TRUE)
        record["verb"] = verb
        if verb not in target.rt.verbs and target.subresource is None:
            raise errors.method_not_allowed(request.method)
        if target.subresource is not None:
            allowed = target.rt.subresource(target.subresource)
            if allowed is None or verb not in allowed.verbs:
                raise errors.method_not_allowed(request.method)
        if verb == "watch":
            def opened() -> None:
                record["code"] = 200
                self._record(record)
            return await self._watch(request, target, opened=opened)
        handler = getattr(self, "_" + verb)
        result: web.StreamResponse = await handler(request, target)
        return result

    async def _get(self, request: web.Request, target: routing.Target) -> web.StreamResponse:
        rt, name = target.rt, target.name or ""
        fmt = negotiation.choose(request.headers.get("Accept"), table=True)
        if target.subresource == "scale":
            body = self.api.get_scale(rt, namespace=target.scope_namespace, name=name)
            return _json_response(body)
        entry = self.api.get(rt, namespace=target.scope_namespace, name=name)
        return self._render(request, rt, objects.Reply(200, entry=entry), fmt)

    async def _list(self, request: web.Request, target: routing.Target) -> web.StreamResponse:
        rt = target.rt
        fmt = negotiation.choose(request.headers.get("Accept"), table=True)
        listing = self.api.list_objects(rt, _list_options(request, target))
        if fmt is negotiation.Format.TABLE:
            body = tables.table(rt, [rt.external(e.obj) for e in listing.entries],
                                resource_version=str(listing.rv),
                                include_object=request.query.get("includeObject", "Metadata"),
                                continue_token=listing.continue_token,
                                remaining=listing.remaining)
            return _json_response(body)
        return _respond(_list_bytes(rt, listing), fmt)

    async def _watch(self, request: web.Request, target: routing.Target, *,
                     opened: Callable[[], None]) -> web.StreamResponse:
        rt, query = target.rt, request.query
        fmt = negotiation.choose(request.headers.get("Accept"), table=True)
        list_options = _list_options(request, target)
        options = watch.WatchOptions(
            namespace=target.namespace, labels=list_options.labels, fields=list_options.fields,
            resource_version=query.get("resourceVersion", ""),
            timeout=_number(query.get("timeoutSeconds"), default=watch.DEFAULT_TIMEOUT),
            bookmarks=query.get("allowWatchBookmarks") in _TRUE)
        include = query.get("includeObject", "Metadata")

        def encode(obj: dict[str, Any]) -> bytes:
            external = rt.external(obj)
            if fmt is negotiation.Format.TABLE:
                return store.dumps(tables.table(
                    rt, [external], resource_version=external["metadata"]["resourceVersion"],
                    include_object=include))
            return store.dumps(external)

        stream = watch.Stream(db=self.api.db, rt=rt, options=options, encode_object=encode,
                              raw_ok=fmt is not negotiation.Format.TABLE and not rt.to_external)
        return await stream.serve(request, opened=opened)

    async def _create(self, request: web.Request, target: routing.Target) -> web.StreamResponse:
        if target.subresource == "token":   # a TokenRequest: answered, not stored
            asked = await _read_object(request, resources.TOKEN_REQUESTS)
            answer = self.tokens.request(namespace=target.scope_namespace,
                                         name=target.name or "", body=asked.value)
            return _json_response(answer, status=201)
        if target.rt in resources.REVIEWS:   # asked, answered, not stored
            asked = await _read_object(request, target.rt)
            answer = rbac.review(target.rt, asked.value, user=rbac.REQUESTER.get(),
                                 authorizer=self.authorizer)
            return _json_response(answer, status=201)
        body = await _read_object(request, target.rt)
        fmt = negotiation.choose(request.headers.get("Accept"), table=True)
        reply = self.api.create(target.rt, body.value, namespace=target.scope_namespace,
                                options=_write_options(request, body.problems))
        return self._render(request, target.rt, reply, fmt)

    async def _update(self, request: web.Request, target: routing.Target) -> web.StreamResponse:
        rt, name = target.rt, target.name or ""
        decoded = await _read_object(request, rt if target.subresource != "scale" else None)
        fmt = negotiation.choose(request.headers.get("Accept"), table=True)
        options = _write_options(request, decoded.problems)
        body = decoded.value
        if target.subresource == "scale":
            reply = self.api.update_scale(rt, body, namespace=target.scope_namespace, name=name,
                                          options=options)
        else:
            reply = self.api.update(rt, body, namespace=target.scope_namespace, name=name,
                                    subresource=target.subresource, options=options)
        return self._render(request, rt, reply, fmt)

    async def _patch(self, request: web.Request, target: routing.Target) -> web.StreamResponse:
        rt, name = target.rt, target.name or ""
        content_type = request.content_type
        if content_type not in PATCH_TYPES:
            raise errors.unsupported_media_type()
        decoded = await _read_patch(request)
        fmt = negotiation.choose(request.headers.get("Accept"), table=True)
        options = _write_options(request, decoded.problems)
        patch = decoded.value
        if target.subresource == "scale":
            reply = self.api.update_scale(rt, patch, namespace=target.scope_namespace,
                                          name=name, options=options, patch_type=content_type)
        else:
            reply = self.api.patch(rt, patch, content_type=content_type,
                                   namespace=target.scope_namespace, name=name,
                                   subresource=target.subresource, options=options)
        return self._render(request, rt, reply, fmt)

    async def _delete(self, request: web.Request, target: routing.Target) -> web.StreamResponse:
        options = await _delete_options(request)
        fmt = negotiation.choose(request.headers.get("Accept"), table=True)
        reply = self.api.delete(target.rt, namespace=target.scope_namespace,
                                name=target.name or "", options=options)
        return self._render(request, target.rt, reply, fmt)

    async def _deletecollection(self, request: web.Request, target: routing.Target
                                ) -> web.StreamResponse:
        options = await _delete_options(request)
        listing = self.api.delete_collection(target.rt, _list_options(request, target), options)
        return _respond(_list_bytes(target.rt, listing), negotiation.Format.JSON)

    def _render(self, request: web.Request, rt: resources.ResourceType, reply: objects.Reply,
                fmt: negotiation.Format) -> web.StreamResponse:
        obj: dict[str, Any] | None = reply.entry.obj if reply.entry else reply.body
        if fmt is negotiation.Format.TABLE and obj is not None and obj.get("kind") == (
                "Event" if rt.storage_key == "events" else rt.kind) and reply.entry is not None:
            external = rt.external(reply.entry.obj)
            body = store.dumps(tables.table(
                rt, [external], resource_version=str(reply.entry.rv),
                include_object=request.query.get("includeObject", "Metadata")))
        elif reply.entry is not None:
            body = reply.entry.raw if rt.to_external is None else store.dumps(
                rt.external(reply.entry.obj))
        else:
            body = store.dumps(reply.body)
        response = _respond(body, fmt, status=reply.code)
        for warning in reply.warnings:
            response.headers.add("Warning", "299 - " + json.dumps(warning))
        return response


# ---- request parsing ----------------------------------------------------------------------------

def _verb(method: str, target: routing.Target, *, watching: bool) -> str:
    if target.name is None:
        verbs = {"GET": "watch" if watching else "list", "POST": "create",
                 "DELETE": "deletecollection"}
    else:
        verbs = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
        if target.subresource is not None:
            verbs["POST"] = "create"   # e.g. a ServiceAccount's token
    verb = verbs.get(method)
    if verb is None:
        raise errors.method_not_allowed(method)
    return verb


def _number(raw: str | None, *, default: float) -> float:
    if raw in (None, ""):
        return default
    try:
        return max(0.0, float(raw))
    except ValueError as error:
        raise errors.bad_request(f"invalid number: {raw!r}") from error


def _list_options(request: web.Request, target: routing.Target) -> objects.ListOptions:
    query = request.query
    try:
        limit = int(query.get("limit") or 0)
    except ValueError as error:
        raise errors.bad_request(f"invalid limit: {query.get('limit')!r}") from error
    return objects.ListOptions(
        namespace=target.namespace,
        labels=selectors.parse_labels(query.get("labelSelector")),
        fields=selectors.parse_fields(query.get("fieldSelector"),
                                      extra_fields=target.rt.field_labels),
        limit=max(limit, 0), continue_token=query.get("continue", ""),
        resource_version=query.get("resourceVersion", ""),
        resource_version_match=query.get("resourceVersionMatch", ""))


def _long_running(request: web.Request) -> bool:
    """Watches stream for as long as they are asked to: no request timeout (as in Go)."""
    return request.method == "GET" and request.query.get("watch") in _TRUE


def _write_options(request: web.Request, problems: tuple[str, ...] = ()
                   ) -> objects.WriteOptions:
    """Create/Update/PatchOptions from the query, refused as ValidateCreateOptions does."""
    query = request.query
    dry_run = query.getall("dryRun", [])
    validation = query.get("fieldValidation", "")
    manager = query.get("fieldManager", "")
    causes = []
    if any(value != "All" for value in dry_run):
        shown = "[]string{" + ", ".join(json.dumps(value) for value in dry_run) + "}"
        causes.append({"reason": "FieldValueNotSupported", "field": "dryRun",
                       "message": f'Unsupported value: {shown}: supported values: "All"'})
    if validation not in ("", "Ignore", "Warn", "Strict"):
        causes.append({"reason": "FieldValueNotSupported", "field": "fieldValidation",
                       "message": f"Unsupported value: {json.dumps(validation)}: supported "
                                  'values: "", "Ignore", "Strict", "Warn"'})
    if len(manager) > 128:
        causes.append({"reason": "FieldValueTooLong", "field": "fieldManager",
                       "message": "Too long: must have at most 128 bytes"})
    if causes:
        kind = {"POST": "CreateOptions", "PUT": "UpdateOptions"}.get(request.method,
                                                                     "PatchOptions")
        raise errors.invalid_options(kind, causes)
    return objects.WriteOptions(dry_run=bool(dry_run), field_validation=validation or "Warn",
                                decode_problems=problems)


async def _delete_options(request: web.Request) -> objects.DeleteOptions:
    body: Any = {}
    raw = await request.read()
    if raw.strip():
        body = _decode(raw, request.content_type, what="DeleteOptions").value
    if not isinstance(body, dict):
        raise errors.bad_request("the body of a delete must be DeleteOptions")
    preconditions = body.get("preconditions") or {}
    if not isinstance(preconditions, dict):
        raise errors.bad_request("preconditions must be an object")
    dry_run = request.query.getall("dryRun", []) or body.get("dryRun") or []
    return objects.DeleteOptions(
        precondition_rv=_optional_str(preconditions.get("resourceVersion")),
        precondition_uid=_optional_str(preconditions.get("uid")),
        propagation=str(request.query.get("propagationPolicy")
                        or body.get("propagationPolicy") or "Background"),
        dry_run="All" in dry_run)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


async def _read_object(request: web.Request, rt: resources.ResourceType | None
                       ) -> decoding.Decoded:
    raw = await request.read()
    content_type = request.content_type
    if content_type == "application/vnd.kubernetes.protobuf":
        return decoding.Decoded(protobuf.decode(raw))   # kubectl's typed clients, built-ins
    if content_type not in (JSON_TYPE, "application/yaml", "application/octet-stream", "*/*"):
        raise errors.unsupported_media_type(
            "the body of the request was in an unknown format - accepted media types include: "
            "application/json, application/yaml")
    return _decode(raw, content_type, what=rt.kind if rt else "Scale")


async def _read_patch(request: web.Request) -> decoding.Decoded:
    raw = await request.read()
    yaml_body = request.content_type == "application/apply-patch+yaml"
    decoded = _decode(raw, "application/yaml" if yaml_body else JSON_TYPE, what="patch")
    if request.content_type == "application/json-patch+json":
        # Duplicates inside the operations themselves, as the real patcher words them.
        return decoding.Decoded(decoded.value, tuple(f"json patch {problem}"
                                                     for problem in decoded.problems))
    return decoded


def _decode(raw: bytes, content_type: str, *, what: str) -> decoding.Decoded:
    try:
        if content_type == "application/yaml":
            return decoding.loads_yaml(raw.decode())
        return decoding.loads_json(raw)
    except (ValueError, UnicodeDecodeError, RecursionError, yaml.YAMLError) as error:
        preview = raw[:30].decode(errors="replace")
        raise errors.bad_request(
            f"the object provided is unrecognized (must be of type {what}): couldn't get "
            f"version/kind; json parse error: {error} ({preview} ...)") from error


# ---- responses --------------------------------------------------------------------------------

def _list_bytes(rt: resources.ResourceType, listing: objects.Listing) -> bytes:
    list_meta: dict[str, Any] = {}
    if rt.custom or listing.continue_token:
        list_meta["continue"] = listing.continue_token
    if listing.remaining is not None:
        list_meta["remainingItemCount"] = listing.remaining
    list_meta["resourceVersion"] = str(listing.rv)
    if rt.to_external is None:
        items = b",".join(entry.raw for entry in listing.entries)
    else:
        items = b",".join(store.dumps(rt.external(entry.obj)) for entry in listing.entries)
    head = store.dumps({"kind": rt.list_kind, "apiVersion": rt.api_version,
                        "metadata": list_meta})
    return head[:-1] + b',"items":[' + items + b"]}"


def _respond(body: bytes, fmt: negotiation.Format, *, status: int = 200) -> web.Response:
    if fmt is negotiation.Format.YAML:
        text = yaml.safe_dump(json.loads(body), sort_keys=False)
        return web.Response(body=text.encode(), status=status, content_type="application/yaml")
    return web.Response(body=body, status=status, content_type=JSON_TYPE)


def _json_response(body: Any, *, status: int = 200, content_type: str = JSON_TYPE
                   ) -> web.Response:
    response = web.Response(body=store.dumps(body), status=status)
    response.headers["Content-Type"] = content_type
    return response


