"""Where the embedded server used to be softer than a real one, over real HTTP: duplicate
fields under server-side field validation, unknown metadata keys, bodies that never
arrive in full, objects larger than etcd takes, and metadata a real server refuses.

The expected answers are those of kube-apiserver 1.30 (its field-validation integration
test, test/integration/apiserver/field_validation_test.go, and its validation code).
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

from capguard.localcluster import LocalCluster

from .widget_api import JSON, MERGE, WIDGETS, call, widget

STRICT = "?fieldValidation=Strict"
YAML = {"Content-Type": "application/yaml"}


def warnings_of(response: Any) -> list[str]:
    return [json.loads(header.split(" ", 2)[2]) for header in response.headers.getall(
        "Warning", [])]


# ---- duplicate fields --------------------------------------------------------------------

DUPLICATED = ('{"apiVersion": "widgets.example.dev/v1", "kind": "Widget",'
              ' "metadata": {"name": "dup", "name": "dup", "madeUp": 1},'
              ' "spec": {"size": "small", "extra": 1, "size": "large"}}')


async def test_duplicate_fields_are_refused_under_strict(widgets: LocalCluster) -> None:
    status, answer, _ = await call(widgets, "POST", WIDGETS + STRICT, DUPLICATED)
    assert status == 400 and answer["reason"] == "BadRequest"
    # Duplicates first, in document order, then unknown metadata, then pruned fields.
    assert answer["message"] == (
        'Widget in version "v1" cannot be handled as a Widget: strict decoding error: '
        'duplicate field "metadata.name", duplicate field "spec.size", '
        'unknown field "metadata.madeUp", unknown field "spec.extra"')
    assert (await call(widgets, "GET", WIDGETS + "/dup"))[0] == 404


async def test_duplicate_fields_take_the_last_value_and_warn_by_default(
        widgets: LocalCluster) -> None:
    status, created, response = await call(widgets, "POST", WIDGETS, DUPLICATED)
    assert status == 201 and created["spec"] == {"size": "large", "replicas": 1}
    assert "madeUp" not in created["metadata"]
    assert warnings_of(response) == [
        'duplicate field "metadata.name"', 'duplicate field "spec.size"',
        'unknown field "metadata.madeUp"', 'unknown field "spec.extra"']


async def test_ignore_takes_the_last_value_without_a_word(widgets: LocalCluster) -> None:
    status, created, response = await call(widgets, "POST", WIDGETS + "?fieldValidation=Ignore",
                                           DUPLICATED)
    assert status == 201 and created["spec"]["size"] == "large"
    assert warnings_of(response) == []


async def test_yaml_duplicates_are_named_by_line(widgets: LocalCluster) -> None:
    body = ("apiVersion: widgets.example.dev/v1\nkind: Widget\nmetadata:\n  name: y\n"
            "spec:\n  size: small\n  size: large\n")
    status, answer, _ = await call(widgets, "POST", WIDGETS + STRICT, body, headers=YAML)
    assert status == 400
    assert answer["message"].endswith('strict decoding error: yaml: unmarshal errors:\n'
                                      '  line 7: key "size" already set in map')
    status, created, response = await call(widgets, "POST", WIDGETS, body, headers=YAML)
    assert status == 201 and created["spec"]["size"] == "large"
    assert warnings_of(response) == ['line 7: key "size" already set in map']


async def test_a_merge_patch_with_duplicates_is_invalid_under_strict(
        widgets: LocalCluster) -> None:
    assert (await call(widgets, "POST", WIDGETS, widget("p")))[0] == 201
    patch = '{"spec": {"size": "medium", "size": "large", "extra": true}}'
    status, answer, _ = await call(widgets, "PATCH", WIDGETS + "/p" + STRICT, patch,
                                   headers=MERGE)
    # The real patcher: errors.NewInvalid(schema.GroupKind{}, "", [patch: Invalid value]).
    assert status == 422 and answer["reason"] == "Invalid"
    [cause] = answer["details"]["causes"]
    assert cause["field"] == "patch" and cause["message"].endswith(
        'strict decoding error: duplicate field "spec.size", unknown field "spec.extra"')
    status, patched, response = await call(widgets, "PATCH", WIDGETS + "/p", patch,
                                           headers=MERGE)
    assert status == 200 and patched["spec"]["size"] == "large"
    assert warnings_of(response) == ['duplicate field "spec.size"',
                                     'unknown field "spec.extra"']


# ---- bodies that never arrive in full ----------------------------------------------------

async def test_a_body_shorter_than_its_length_times_out_and_closes(
        widgets: LocalCluster) -> None:
    widgets.server.request_timeout = 0.5
    reader, writer = await asyncio.open_connection(widgets.host, widgets.port)
    body = json.dumps(widget("slow")).encode()
    writer.write(f"POST {WIDGETS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body) + 100}\r\n\r\n".encode() + body)
    await writer.drain()
    # Meanwhile other requests are served.
    assert (await call(widgets, "GET", WIDGETS))[0] == 200
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    status = json.loads(await reader.readexactly(length))
    writer.close()
    # The connection is not reused: the rest of the body would be read as a request.
    assert head.startswith(b"HTTP/1.1 504 ") and b"Connection: close" in head
    assert status["reason"] == "Timeout" and status["code"] == 504
    assert status["message"] == "Timeout: request did not complete within the allotted timeout"
    assert (await call(widgets, "GET", WIDGETS + "/slow"))[0] == 404


async def test_a_watch_is_not_cut_by_the_request_timeout(widgets: LocalCluster) -> None:
    widgets.server.request_timeout = 0.3
    async with asyncio.timeout(10):
        status, _, _ = await call(widgets, "GET", WIDGETS + "?watch=true&timeoutSeconds=1")
    assert status == 200


# ---- sizes ---------------------------------------------------------------------------------

async def test_an_object_etcd_cannot_take_is_a_500_without_reason(
        widgets: LocalCluster) -> None:
    big = widget("big")
    big["spec"]["config"] = {"blob": "x" * 1_600_000}
    status, answer, _ = await call(widgets, "POST", WIDGETS, big)
    assert status == 500 and "reason" not in answer
    assert answer["message"] == "etcdserver: request is too large"
    # An update that grows an object past the limit is refused the same way.
    assert (await call(widgets, "POST", WIDGETS, widget("grows")))[0] == 201
    grown = {"spec": {"config": {"blob": "x" * 1_600_000}}}
    status, answer, _ = await call(widgets, "PATCH", WIDGETS + "/grows", grown, headers=MERGE)
    assert status == 500 and answer["message"] == "etcdserver: request is too large"
    status, kept, _ = await call(widgets, "GET", WIDGETS + "/grows")
    assert status == 200 and "config" not in kept["spec"]


async def test_unknown_metadata_is_dropped_on_update_too(widgets: LocalCluster) -> None:
    status, created, _ = await call(widgets, "POST", WIDGETS, widget("m"))
    assert status == 201
    created["metadata"]["clusterName"] = "gone-since-1.25"
    status, updated, response = await call(widgets, "PUT", WIDGETS + "/m", created,
                                           headers=JSON)
    assert status == 200 and "clusterName" not in updated["metadata"]
    assert warnings_of(response) == ['unknown field "metadata.clusterName"']


# ---- metadata a real server refuses (ValidateObjectMeta) ----------------------------------

def with_metadata(name: str, **metadata: Any) -> dict[str, Any]:
    body = widget(name)
    body["metadata"].update(metadata)
    return body


async def refusal(cluster: LocalCluster, body: dict[str, Any]) -> set[tuple[str, str]]:
    status, answer, _ = await call(cluster, "POST", WIDGETS, body)
    assert status == 422 and answer["reason"] == "Invalid", answer
    return {(cause["field"], cause["message"]) for cause in answer["details"]["causes"]}


async def test_label_keys_need_a_valid_prefix_too(widgets: LocalCluster) -> None:
    causes = await refusal(widgets, with_metadata("l", labels={"Bad_Prefix/app": "x"}))
    assert causes == {("metadata.labels", 'Invalid value: "Bad_Prefix/app": prefix part a '
                       "lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                       "characters, '-' or '.', and must start and end with an alphanumeric "
                       "character (e.g. 'example.com', regex used for validation is "
                       "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")}
    causes = await refusal(widgets, with_metadata("l", labels={"a/b/c": "x", "ok": "-x"}))
    assert {message.split(": ", 2)[1] for _, message in causes} == {'"a/b/c"', '"-x"'}


async def test_annotation_keys_and_their_total_size(widgets: LocalCluster) -> None:
    # Case does not matter in annotation keys; the shape of a qualified name does.
    status, _, _ = await call(widgets, "POST", WIDGETS,
                              with_metadata("a", annotations={"Example.COM/Note": "x"}))
    assert status == 201
    causes = await refusal(widgets, with_metadata("b", annotations={"no spaces": "x"}))
    assert [field for field, _ in causes] == ["metadata.annotations"]
    status, answer, _ = await call(widgets, "POST", WIDGETS, with_metadata(
        "c", annotations={"big": "x" * (256 * 1024)}))
    assert status == 422
    assert answer["details"]["causes"] == [{
        "reason": "FieldValueTooLong", "field": "metadata.annotations",
        "message": "Too long: must have at most 262144 bytes"}]


async def test_finalizers_must_be_qualified_names(widgets: LocalCluster) -> None:
    causes = await refusal(widgets, with_metadata("f", finalizers=["example.com/ok", "not ok"]))
    assert [(field, message.split(": ", 2)[1]) for field, message in causes] == [
        ("metadata.finalizers", '"not ok"')]


async def test_generate_name_is_validated_as_a_prefix(widgets: LocalCluster) -> None:
    assert (await call(widgets, "POST", WIDGETS, with_metadata("", generateName="ok-")))[0] \
        == 201
    causes = await refusal(widgets, with_metadata("", generateName="Bad_"))
    assert {field for field, _ in causes} == {"metadata.generateName", "metadata.name"}


async def test_owner_references_need_version_kind_name_and_uid(widgets: LocalCluster) -> None:
    causes = await refusal(widgets, with_metadata("o", ownerReferences=[
        {"apiVersion": "a/b/c", "kind": "", "name": "owner"}]))
    assert causes == {
        ("metadata.ownerReferences.apiVersion",
         'Invalid value: "a/b/c": version must not be empty'),
        ("metadata.ownerReferences.kind", 'Invalid value: "": kind must not be empty'),
        ("metadata.ownerReferences.uid", 'Invalid value: "": uid must not be empty')}


async def test_a_different_uid_is_a_failed_precondition_or_immutable(
        widgets: LocalCluster) -> None:
    status, created, _ = await call(widgets, "POST", WIDGETS, widget("u"))
    uid = created["metadata"]["uid"]
    created["metadata"]["uid"] = "0000"
    status, answer, _ = await call(widgets, "PUT", WIDGETS + "/u", created)
    assert status == 409 and answer["message"] == (
        'Operation cannot be fulfilled on widgets.widgets.example.dev "u": Precondition '
        f"failed: UID in precondition: 0000, UID in object meta: {uid}")
    status, answer, _ = await call(widgets, "PATCH", WIDGETS + "/u",
                                   {"metadata": {"uid": "0000"}}, headers=MERGE)
    assert status == 422 and answer["details"]["causes"] == [{
        "reason": "FieldValueInvalid", "field": "metadata.uid",
        "message": 'Invalid value: "0000": field is immutable'}]


# ---- query options (ValidateCreateOptions and its kin) -----------------------------------

async def test_unsupported_options_are_invalid_options_objects(widgets: LocalCluster) -> None:
    status, answer, _ = await call(widgets, "POST", WIDGETS + "?dryRun=Some", widget("d"))
    assert status == 422 and answer["details"]["kind"] == "CreateOptions"
    assert answer["message"] == ('CreateOptions.meta.k8s.io "" is invalid: dryRun: Unsupported '
                                 'value: []string{"Some"}: supported values: "All"')
    status, answer, _ = await call(widgets, "PATCH", WIDGETS + "/d?fieldValidation=strict",
                                   {}, headers=MERGE)
    assert status == 422 and answer["details"] == {
        "group": "meta.k8s.io", "kind": "PatchOptions", "causes": [{
            "reason": "FieldValueNotSupported", "field": "fieldValidation",
            "message": 'Unsupported value: "strict": supported values: "", "Ignore", '
                       '"Strict", "Warn"'}]}
    status, _, _ = await call(widgets, "POST", WIDGETS + "?fieldManager=" + "m" * 129,
                              widget("d"))
    assert status == 422
    # Unknown query parameters are ignored, as the real parameter codec ignores them.
    assert (await call(widgets, "POST", WIDGETS + "?noSuchOption=1", widget("d")))[0] == 201


async def test_duplicates_inside_json_patch_operations_are_named_so(
        widgets: LocalCluster) -> None:
    assert (await call(widgets, "POST", WIDGETS, widget("j")))[0] == 201
    patch = '[{"op": "add", "path": "/spec/color", "path": "/spec/size", "value": "large"}]'
    status, answer, _ = await call(widgets, "PATCH", WIDGETS + "/j" + STRICT, patch,
                                   headers={"Content-Type": "application/json-patch+json"})
    assert status == 422 and answer["details"]["causes"][0]["message"].endswith(
        'strict decoding error: json patch duplicate field "[0].path"')
    status, patched, response = await call(
        widgets, "PATCH", WIDGETS + "/j", patch,
        headers={"Content-Type": "application/json-patch+json"})
    assert status == 200 and patched["spec"]["size"] == "large"
    assert warnings_of(response) == ['json patch duplicate field "[0].path"']
