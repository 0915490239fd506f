"""metav1.Status bodies and the exceptions that carry them to the HTTP layer.

Every failure a handler can produce is an `ApiError`; the server turns it into a JSON
Status with the same `reason`, `code` and `details` shape the real kube-apiserver uses
(see the reference exchanges 021, 023, 030, 040, 091).
"""
from __future__ import annotations

import json
from typing import Any

from capguard.localcluster import resources


class ApiError(Exception):
    """A request the API refuses: carries the Status body to answer with."""

    def __init__(self, status: dict[str, Any]) -> None:
        super().__init__(status.get("message", ""))
        self.status = status

    @property
    def code(self) -> int:
        return int(self.status["code"])


class PageNotFound(Exception):
    """A path no route serves: the real server answers plain text, not a Status (195)."""


def status_body(
    *, code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
    }
    if reason:   # StatusReasonUnknown is omitted
        body["reason"] = reason
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def success_body(*, details: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Success", "details": details}


def _details(rt: resources.ResourceType, name: str, *, by_kind: bool = False
             ) -> dict[str, Any]:
    # 404/409 name the plural resource in details.kind (021), schema failures and delete
    # preconditions the Kind (040, 091); the group is omitted for the core group.
    details: dict[str, Any] = {"name": name}
    if rt.group:
        details["group"] = rt.group
    details["kind"] = rt.kind if by_kind else rt.plural
    return details


def not_found(rt: resources.ResourceType, name: str) -> ApiError:
    return ApiError(status_body(
        code=404, reason="NotFound",
        message=f'{rt.group_resource} "{name}" not found',
        details=_details(rt, name)))


def namespace_not_found(namespace: str) -> ApiError:
    return ApiError(status_body(
        code=404, reason="NotFound", message=f'namespaces "{namespace}" not found',
        details={"name": namespace, "kind": "namespaces"}))


def already_exists(rt: resources.ResourceType, name: str) -> ApiError:
    return ApiError(status_body(
        code=409, reason="AlreadyExists",
        message=f'{rt.group_resource} "{name}" already exists',
        details=_details(rt, name)))


_MODIFIED = ("the object has been modified; please apply your changes to the latest version "
             "and try again")


def conflict(rt: resources.ResourceType, name: str, why: str = _MODIFIED) -> ApiError:
    return ApiError(status_body(
        code=409, reason="Conflict",
        message=f'Operation cannot be fulfilled on {rt.group_resource} "{name}": {why}',
        details=_details(rt, name)))


def precondition_conflict(rt: resources.ResourceType, name: str, *, field: str,
                          expected: str, actual: str) -> ApiError:
    label = "ResourceVersion" if field == "resourceVersion" else "UID"
    return ApiError(status_body(
        code=409, reason="Conflict",
        message=(f'Operation cannot be fulfilled on {rt.kind_group} "{name}": the {label} in '
                 f"the precondition ({expected}) does not match the {label} in record "
                 f"({actual}). The object might have been modified"),
        details=_details(rt, name, by_kind=True)))


def invalid(rt: resources.ResourceType, name: str, causes: list[dict[str, str]], *,
            by_resource: bool = False) -> ApiError:
    """422 Invalid; checks made before the schema (031) name the resource, not the Kind."""
    details = _details(rt, name, by_kind=not by_resource)
    details["causes"] = causes
    subject = rt.group_resource if by_resource else rt.kind_group
    return ApiError(status_body(
        code=422, reason="Invalid",
        message=f'{subject} "{name}" is invalid: {_summary(causes)}', details=details))


def _summary(causes: list[dict[str, str]]) -> str:
    """errors.NewInvalid's message: one cause as it is, several as a bracketed list."""
    parts = [f"{cause['field']}: {cause['message']}" for cause in causes]
    return parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"


def invalid_cause(field: str, value: Any, problem: str) -> dict[str, str]:
    """field.Invalid: the value as Go's %#v shows a string or a number."""
    return {"reason": "FieldValueInvalid", "field": field,
            "message": f"Invalid value: {json.dumps(value)}: {problem}"}


def required_cause(field: str) -> dict[str, str]:
    return {"reason": "FieldValueRequired", "field": field, "message": "Required value"}


def forbidden_cause(field: str, detail: str) -> dict[str, str]:
    return {"reason": "FieldValueForbidden", "field": field, "message": f"Forbidden: {detail}"}


def invalid_options(kind: str, causes: list[dict[str, str]]) -> ApiError:
    """Query options a real server refuses: 422 on e.g. CreateOptions.meta.k8s.io."""
    return ApiError(status_body(
        code=422, reason="Invalid",
        message=f'{kind}.meta.k8s.io "" is invalid: {_summary(causes)}',
        details={"group": "meta.k8s.io", "kind": kind, "causes": causes}))


def invalid_generic() -> ApiError:
    # What a failing JSON-patch `test` answers: no cause, empty details (035).
    return ApiError(status_body(
        code=422, reason="Invalid",
        message="the server rejected our request due to an error in our request", details={}))


def cannot_handle(rt: resources.ResourceType, problem: str) -> ApiError:
    """A body that does not decode into its kind (400), as the real codec words it."""
    return bad_request(f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                       f"{problem}")


def strict_decoding(rt: resources.ResourceType, problems: list[str]) -> ApiError:
    """What a body with unknown or duplicate fields answers under fieldValidation=Strict."""
    return cannot_handle(rt, "strict decoding error: " + ", ".join(problems))


def invalid_patch(patched: str, problem: str) -> ApiError:
    """A patch whose result does not decode: 422 on `patch`, naming no kind (the real
    patcher's errors.NewInvalid(schema.GroupKind{}, "", ...))."""
    cause = {"reason": "FieldValueInvalid", "field": "patch",
             "message": f"Invalid value: {json.dumps(patched)}: {problem}"}
    return ApiError(status_body(
        code=422, reason="Invalid", message=f' "" is invalid: patch: {cause["message"]}',
        details={"causes": [cause]}))


def strict_patch(patched: str, problems: list[str]) -> ApiError:
    """A patch whose result is not strictly decodable (unknown or duplicate fields)."""
    return invalid_patch(patched, "strict decoding error: " + ", ".join(problems))


def bad_request(message: str) -> ApiError:
    return ApiError(status_body(code=400, reason="BadRequest", message=message))


def forbidden(message: str, *, details: dict[str, Any] | None = None) -> ApiError:
    return ApiError(status_body(code=403, reason="Forbidden", message=message,
                                details=details))


def method_not_allowed(method: str) -> ApiError:
    return ApiError(status_body(
        code=405, reason="MethodNotAllowed",
        message=f"the server does not allow this method on the requested resource ({method})",
        details={}))


PATCH_TYPES_MESSAGE = ("the body of the request was in an unknown format - accepted media "
                       "types include: application/json-patch+json, "
                       "application/merge-patch+json, application/apply-patch+yaml")


def unsupported_media_type(message: str = PATCH_TYPES_MESSAGE) -> ApiError:
    return ApiError(status_body(code=415, reason="UnsupportedMediaType", message=message))


def not_acceptable() -> ApiError:
    return ApiError(status_body(
        code=406, reason="NotAcceptable",
        message=("only the following media types are accepted: application/json, "
                 "application/yaml, application/vnd.kubernetes.protobuf")))


def too_large(limit: int) -> ApiError:
    return ApiError(status_body(
        code=413, reason="RequestEntityTooLarge",
        message=f"Request entity too large: limit is {limit}"))


def timeout() -> ApiError:
    # WithTimeoutForNonLongRunningRequests: the request outlived --request-timeout.
    return ApiError(status_body(
        code=504, reason="Timeout", details={},
        message="Timeout: request did not complete within the allotted timeout"))


def etcd_too_large() -> ApiError:
    # etcd's own error passed through as it is: a 500 with no reason (383).
    return ApiError(status_body(code=500, reason="", message="etcdserver: request is too large"))


def expired(message: str) -> ApiError:
    return ApiError(status_body(code=410, reason="Expired", message=message))


def internal(error: str) -> ApiError:
    # apierrors.NewInternalError: the message prefixes the error, the cause is the error (343).
    return ApiError(status_body(code=500, reason="InternalError",
                                message=f"Internal error occurred: {error}",
                                details={"causes": [{"message": error}]}))
