"""Conformance: replay every exchange recorded from a real kube-apiserver 1.24
(`shared/k8s-reference/`) against the embedded server and compare behaviour, not bytes,
as the reference README prescribes: status codes, Status reason/code/details, causes as a
set of (reason, field), kinds, the shape of every body (which keys exist), which
resourceVersions are equal or newer, generations, and watch event types in order.

Placeholders are mapped to what this server answers: `<rv:N>` binds N to the real
resourceVersion the first time it is seen, and every later `<rv:N>` must be that same
value; a larger N must be a larger resourceVersion. Where the embedded server follows a
newer Kubernetes on purpose, the adaptation is named in `ADAPTATIONS` and below.
"""
from __future__ import annotations

import dataclasses
import http.client
import itertools
import json
import pathlib
import re
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from capguard.localcluster import LocalCluster, ThreadedCluster

from . import reference_setup

REFERENCE_DIR = pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "k8s-reference"
CASES = sorted(REFERENCE_DIR.glob("[0-9][0-9][0-9]-*.json"))
RV = re.compile(r"<rv:(\d+)>")
# 383 records its large strings as "<N bytes of 'x'>"
BYTES = re.compile(r"<(\d+) bytes of '(.)'>")

# Deliberate differences from the 1.24 recording, each following a newer server.
ADAPTATIONS = {
    "000": "version.Info values: this server reports 1.30 (its behaviour's version)",
    "010": "events.k8s.io/v1beta1 is not served (removed in 1.25)",
    "011": "aggregated discovery is served (1.30+) instead of falling back or 406",
    "110": "OpenAPI is served as application/json like newer servers, and only for the "
           "groups this server has",
    "111": "OpenAPI is served as application/json like newer servers",
    "112": "OpenAPI is served as application/json like newer servers; its version is "
           "this server's; ObjectMeta is not duplicated as ObjectMeta_v2",
    "330": "a rule that does not compile is quoted with the six fields 1.30's "
           "apiextensions.ValidationRule has (1.24 had Rule and Message)",
    "335": "1.28+ keeps messageExpression and estimates its cost like the rule's: "
           "'...' + string(self.min) concatenates a string cel-go cannot bound, so the CRD "
           "is refused (its cost exceeds the budget) instead of stored without the key",
    "336": "as 330: the rule is quoted with 1.30's six ValidationRule fields",
    "381": "server-side field validation (GA 1.27): the default (Warn) and Warn answer 201 "
           "with one Warning header per unknown field, Strict refuses with 400 and a strict "
           "decoding error naming them; 1.24 pruned silently in all three",
    "384": "server-side field validation (GA 1.27): the unknown metadata key is still dropped "
           "and, by default (Warn), named in a Warning header",
    "370": "a stored version missing from spec.versions is explained as newer servers do "
           "(\"missing from spec.versions; v1 was previously a storage version, ...\"), "
           "not 1.24's \"must appear in spec.versions\"",
}


@dataclasses.dataclass
class Replay:
    """One file's comparison state: bound placeholders and the differences found."""

    trimmed: bool
    rvs: dict[int, str] = dataclasses.field(default_factory=dict)
    generated_names: dict[str, str] = dataclasses.field(default_factory=dict)
    continue_token: str = ""
    problems: list[str] = dataclasses.field(default_factory=list)

    def problem(self, where: str, text: str) -> None:
        self.problems.append(f"{where}: {text}")

    # ---- placeholders ----------------------------------------------------------------------

    def bind_rv(self, rank: int, actual: Any, where: str) -> None:
        if not isinstance(actual, str) or not actual.isdigit():
            self.problem(where, f"<rv:{rank}> expected a resourceVersion, got {actual!r}")
        elif self.rvs.setdefault(rank, actual) != actual:
            self.problem(where, f"<rv:{rank}> was {self.rvs[rank]}, now {actual}: versions "
                         "the recording shows equal differ here")

    def check_rv_order(self) -> None:
        ranked = sorted(self.rvs.items())
        for (low, low_rv), (high, high_rv) in itertools.pairwise(ranked):
            if int(low_rv) >= int(high_rv):
                self.problem("resourceVersions", f"<rv:{low}>={low_rv} is not older than "
                             f"<rv:{high}>={high_rv}")

    def fill(self, text: str) -> str:
        """A recorded request string with placeholders replaced by the values seen."""
        text = RV.sub(lambda match: self.rvs.get(int(match.group(1)), match.group(0)), text)
        for recorded, actual in self.generated_names.items():
            text = text.replace(recorded, actual)
        return text.replace("<continue>", urllib.parse.quote(self.continue_token))

    def fill_body(self, body: Any) -> Any:
        if isinstance(body, dict):
            # Server-set values the recorder sent back masked; the server ignores them.
            return {key: self.fill_body(value) for key, value in body.items()
                    if value not in ("<uid>", "<time>")}
        if isinstance(body, list):
            return [self.fill_body(item) for item in body]
        if isinstance(body, str) and (match := BYTES.fullmatch(body)):
            return match.group(2) * int(match.group(1))
        return self.fill(body) if isinstance(body, str) else body

    # ---- comparing --------------------------------------------------------------------------

    def compare(self, recorded: Any, actual: Any, where: str) -> None:
        if isinstance(recorded, dict):
            self._compare_dict(recorded, actual, where)
        elif isinstance(recorded, list):
            self._compare_list(recorded, actual, where)
        elif isinstance(recorded, str):
            self._compare_string(recorded, actual, where)
        elif recorded != actual or type(recorded) is not type(actual):
            self.problem(where, f"expected {recorded!r}, got {actual!r}")

    def _compare_dict(self, recorded: dict[str, Any], actual: Any, where: str) -> None:
        if not isinstance(actual, dict):
            self.problem(where, f"expected an object, got {actual!r}")
            return
        if recorded.get("kind") == "Status" and "status" in recorded:
            self._compare_status(recorded, actual, where)
            return
        missing = recorded.keys() - actual.keys()
        extra = actual.keys() - recorded.keys() - {"managedFields", "selfLink"}
        if missing:
            self.problem(where, f"keys missing: {sorted(missing)}")
        if extra and not self.trimmed:
            self.problem(where, f"unexpected keys: {sorted(extra)}")
        for key in recorded.keys() & actual.keys():
            self.compare(recorded[key], actual[key], f"{where}.{key}")

    def _compare_list(self, recorded: list[Any], actual: Any, where: str) -> None:
        if not isinstance(actual, list):
            self.problem(where, f"expected a list, got {actual!r}")
            return
        if self.trimmed and recorded and all(isinstance(item, dict) for item in recorded):
            by_name = {_identity(item): item for item in actual if isinstance(item, dict)}
            for item in recorded:
                if _identity(item) not in by_name:
                    self.problem(where, f"missing entry {_identity(item)}")
                else:
                    self.compare(item, by_name[_identity(item)], f"{where}[{_identity(item)}]")
            return
        if len(recorded) != len(actual):
            self.problem(where, f"expected {len(recorded)} items, got {len(actual)}: {actual!r}")
            return
        for index, (left, right) in enumerate(zip(recorded, actual, strict=True)):
            self.compare(left, right, f"{where}[{index}]")

    def _compare_string(self, recorded: str, actual: Any, where: str) -> None:
        if match := RV.fullmatch(recorded):
            self.bind_rv(int(match.group(1)), actual, where)
        elif recorded in ("<uid>", "<time>", "<age>", "<continue>", "<hash>", "<any>"):
            if not isinstance(actual, str) or not actual:
                self.problem(where, f"expected a value for {recorded}, got {actual!r}")
            if recorded == "<continue>" and isinstance(actual, str):
                self.continue_token = actual
        elif match := BYTES.fullmatch(recorded):
            if actual != match.group(2) * int(match.group(1)):
                self.problem(where, f"expected {recorded}, got {len(str(actual))} characters")
        elif recorded.endswith("<suffix>"):
            prefix = recorded.removesuffix("<suffix>")
            if not (isinstance(actual, str) and actual.startswith(prefix)
                    and len(actual) == len(prefix) + 5):
                self.problem(where, f"expected {prefix} + 5 characters, got {actual!r}")
            else:
                self.generated_names[recorded] = actual
        elif "<hash>" in recorded:
            pattern = re.escape(recorded).replace(re.escape("<hash>"), "[^&]+")
            if not isinstance(actual, str) or not re.fullmatch(pattern, actual):
                self.problem(where, f"expected {recorded!r}, got {actual!r}")
        elif RV.search(recorded):
            pass   # a message quoting versions: compared with the Status, below
        elif recorded != actual:
            self.problem(where, f"expected {recorded!r}, got {actual!r}")

    def _compare_status(self, recorded: dict[str, Any], actual: dict[str, Any],
                        where: str) -> None:
        for key in ("kind", "apiVersion", "status", "reason", "code"):
            if actual.get(key) != recorded.get(key):
                self.problem(where, f"Status {key}: expected {recorded.get(key)!r}, got "
                             f"{actual.get(key)!r} ({actual.get('message')!r})")
        details, got = recorded.get("details"), actual.get("details")
        if (details is None) != (got is None):
            self.problem(where, f"Status details: expected {details!r}, got {got!r}")
        elif isinstance(details, dict) and isinstance(got, dict):
            for key in ("kind", "group", "name"):
                if (key in details) != (key in got):
                    self.problem(where, f"details.{key}: expected {details.get(key)!r}, got "
                                 f"{got.get(key)!r}")
                elif key in details:
                    self.compare(details[key], got[key], f"{where} details.{key}")
            if ("uid" in details) != ("uid" in got):
                self.problem(where, "details.uid presence differs")
            wanted, found = _causes(details), _causes(got)
            if wanted != found:
                self.problem(where, f"causes: expected {sorted(wanted)}, got {sorted(found)}")
        if ("message" in recorded) != ("message" in actual):
            self.problem(where, f"message presence differs: {actual.get('message')!r}")
        elif "message" in recorded and _message_is_shown(recorded):
            expected = self.fill(recorded["message"])
            if expected != actual.get("message"):
                self.problem(where, f"message: expected {expected!r}, got "
                             f"{actual.get('message')!r}")


def _identity(item: dict[str, Any]) -> str:
    if isinstance(item.get("metadata"), dict) and "name" in item["metadata"]:
        return str(item["metadata"]["name"])
    for key in ("name", "groupVersion", "version", "type"):   # type: conditions
        value = item.get(key)
        if isinstance(value, str):
            return value
    return json.dumps(item, sort_keys=True)


def _causes(details: dict[str, Any]) -> set[tuple[str, str]]:
    return {(cause.get("reason", ""), cause.get("field", ""))
            for cause in details.get("causes") or []}


def _message_is_shown(status: dict[str, Any]) -> bool:
    """Messages kubectl prints, where this server means to say the same thing.

    Parse errors (BadRequest) are Go's words; Expired quotes cache internals; a message
    joining several causes has no stable order (045).
    """
    if status.get("reason") in ("BadRequest", "Expired"):
        return False
    return len(_causes(status.get("details") or {})) <= 1


# ---- talking to the server -------------------------------------------------------------------

@dataclasses.dataclass
class Answer:
    status: int
    content_type: str
    body: Any
    warnings: list[str] = dataclasses.field(default_factory=list)


def _send(base: str, request: dict[str, Any], replay: Replay) -> http.client.HTTPResponse:
    url = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
    body = request.get("body")
    if isinstance(body, str):
        data = body.encode()
    elif body is None:
        data = None
    else:
        data = json.dumps(replay.fill_body(body)).encode()
    connection.request(request["method"], replay.fill(request["path"]), body=data,
                       headers=request.get("headers") or {})
    return connection.getresponse()


def _answer(response: http.client.HTTPResponse) -> Answer:
    raw = response.read()
    content_type = response.getheader("Content-Type", "")
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode(errors="replace")
    warnings = [_warning_text(header) for header in response.headers.get_all("Warning") or []]
    return Answer(response.status, content_type, body, warnings)


def _warning_text(header: str) -> str:
    """The text of a `299 - "..."` Warning header (Go quotes it as JSON does)."""
    match = re.fullmatch(r'\d{3} \S+ (".*")', header)
    return str(json.loads(match.group(1))) if match else header


class WatchReader:
    """Reads a watch stream's lines in a thread until the server closes it."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.content_type = response.getheader("Content-Type", "")
        self.events: list[dict[str, Any]] = []
        self._response = response
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._response:
            if line.strip():
                self.events.append(json.loads(line))

    def join(self) -> None:
        self._thread.join(timeout=15)


def _compare_answer(replay: Replay, recorded: dict[str, Any], actual: Answer, where: str,
                    *, case_id: str) -> None:
    if recorded["status"] != actual.status:
        replay.problem(where, f"status {actual.status}, expected {recorded['status']}: "
                       f"{str(actual.body)[:300]}")
    wanted_type = recorded["content_type"].split(";")[0]
    if case_id not in ("110", "111", "112") and actual.content_type.split(";")[0] != wanted_type:
        replay.problem(where, f"content type {actual.content_type!r}, expected {wanted_type!r}")
    if "body" in recorded:
        replay.compare(recorded["body"], actual.body, where + " body")
    # The recorder of 300-384 keeps `warnings` when there are any; none means none.
    if case_id >= "300" and recorded.get("warnings", []) != actual.warnings:
        replay.problem(where, f"warnings {actual.warnings}, expected "
                       f"{recorded.get('warnings', [])}")


def _compare_events(replay: Replay, recorded: list[dict[str, Any]],
                    actual: list[dict[str, Any]], where: str) -> None:
    wanted = [event for event in recorded if event["type"] != "BOOKMARK"]
    got = [event for event in actual if event["type"] != "BOOKMARK"]
    if any(event["type"] == "BOOKMARK" for event in recorded) and len(got) == len(actual):
        replay.problem(where, "expected BOOKMARK events, got none")
    if [event["type"] for event in wanted] != [event["type"] for event in got]:
        replay.problem(where, f"event types {[e['type'] for e in got]}, expected "
                       f"{[e['type'] for e in wanted]}")
        return
    if wanted and all(event["type"] == "ADDED" for event in wanted):
        # Synthetic ADDED events of a watch from resourceVersion 0 come in no stable order.
        order = {event["object"]["metadata"]["name"]: event for event in got}
        got = [order.get(event["object"]["metadata"]["name"], {}) for event in wanted]
    for index, (left, right) in enumerate(zip(wanted, got, strict=True)):
        replay.compare(left, right, f"{where} event[{index}]")
    for event in actual:
        if event["type"] == "BOOKMARK" and set(event["object"]["metadata"]) != {
                "resourceVersion"}:
            replay.problem(where, f"a BOOKMARK carries only a resourceVersion: {event}")


# ---- adaptations to newer servers ------------------------------------------------------------

def _adapt(case_id: str, index: int, exchange: dict[str, Any]) -> dict[str, Any]:
    """The recorded answer, changed where this server deliberately follows newer ones."""
    response: dict[str, Any] = json.loads(json.dumps(exchange["response"]))
    body: Any = response.get("body")
    if case_id == "000":
        # Newer version.Info: compare the keys, not 1.24's values.
        response["body"] = {key: "<any>" for key in body}
    if case_id == "001":
        body["serverAddressByClientCIDRs"][0]["serverAddress"] = "<any>"
    if case_id in ("010", "011") and isinstance(body, dict) and "groups" in body:
        for group in body["groups"]:
            group["versions"] = [v for v in group["versions"] if v["version"] != "v1beta1"]
    if case_id == "011":
        # Aggregated discovery as 1.30+ serves it, for both requests (v2beta1 was asked);
        # the groups are those 1.24 listed in its fallback answer to the first one.
        groups = recording_groups(exchange) or _GROUPS_011
        _GROUPS_011[:] = groups
        response = {"status": 200, "content_type": "application/json", "body": {
            "kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2beta1",
            "metadata": {}, "items": [_aggregated_group(group) for group in groups]}}
    if case_id in ("330", "336") and response["status"] == 422:
        _quote_rule_as_130(body)
    if case_id == "335":
        response = _refused_335(index, response)
    if case_id == "381":
        response = _field_validation_381(index, response)
    if case_id == "384" and index == 0:
        response["warnings"] = ['unknown field "metadata.madeUp"']
    if case_id == "370" and response["status"] == 422:
        # Newer apiextensions (ValidateCustomResourceDefinitionStoredVersions) says why.
        cause = body["details"]["causes"][0]
        cause["message"] = cause["message"].replace("must appear in spec.versions", (
            "missing from spec.versions; v1 was previously a storage version, and must remain "
            "in spec.versions until a storage migration ensures no data remains persisted in "
            "v1 and removes v1 from status.storedVersions"))
        body["message"] = body["message"].replace('Invalid value: "v1": must appear in '
                                                  'spec.versions', cause["message"])
    if case_id == "110":
        # Not `api` (the core group's own, empty document): nothing reads it.
        served = ("api/v1", "apis/apiextensions.k8s.io/v1", "apis/coordination.k8s.io/v1",
                  "apis/events.k8s.io/v1", "apis/widgets.example.dev/v1")
        body["paths"] = {path: value for path, value in body["paths"].items() if path in served}
    if case_id == "112":
        body["info"]["version"] = "<any>"
        widget = body["definitions"]["dev.example.widgets.v1.Widget"]
        # 1.24 points at a `_v2`-suffixed copy of ObjectMeta; one ObjectMeta serves here.
        widget["properties"]["metadata"]["$ref"] = (
            "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
    return response


_GROUPS_011: list[dict[str, Any]] = []
_RULE_FIELDS_130 = (', MessageExpression:"", Reason:(*apiextensions.FieldValueErrorReason)(nil), '
                    'FieldPath:"", OptionalOldSelf:(*bool)(nil)}: compilation failed')


def _quote_rule_as_130(status: dict[str, Any]) -> None:
    """Go's %#v of a 1.30 ValidationRule: the four fields added since 1.24, unset."""
    def widen(text: str) -> str:
        return re.sub(r'(Message:"[^"]*")\}: compilation failed', lambda match: match.group(1)
                      + _RULE_FIELDS_130, text)
    status["message"] = widen(status["message"])
    for cause in status["details"]["causes"]:
        cause["message"] = widen(cause["message"])


def _refused_335(index: int, response: dict[str, Any]) -> dict[str, Any]:
    """1.30: the messageExpression's cost is over budget, so the CRD is never created."""
    if index > 0:
        return {"status": 404, "content_type": "text/plain", "body": "404 page not found\n"}
    rule = ("spec.validation.openAPIV3Schema.properties[spec].x-kubernetes-validations[0]"
            ".messageExpression")
    causes = [{"reason": "FieldValueForbidden", "field": rule},
              {"reason": "FieldValueForbidden", "field": rule},
              {"reason": "FieldValueForbidden", "field": "spec.validation.openAPIV3Schema"}]
    return {"status": 422, "content_type": "application/json", "body": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "<several causes>", "reason": "Invalid", "code": 422,
        "details": {"name": "celnewers.crdref.example.dev", "group": "apiextensions.k8s.io",
                    "kind": "CustomResourceDefinition", "causes": causes}}}


def _field_validation_381(index: int, response: dict[str, Any]) -> dict[str, Any]:
    """1.27+: Warn (also the default) warns about each unknown field, Strict refuses."""
    unknown = ['unknown field "extra"', 'unknown field "spec.colour"']
    if index != 1:
        return {**response, "warnings": unknown}
    return {"status": 400, "content_type": "application/json", "body": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'Unknown in version "v1" cannot be handled as a Unknown: strict decoding '
                   "error: " + ", ".join(unknown), "reason": "BadRequest", "code": 400}}


def recording_groups(exchange: dict[str, Any]) -> list[dict[str, Any]]:
    body = exchange["response"].get("body")
    return list(body["groups"]) if isinstance(body, dict) and "groups" in body else []


def _aggregated_group(group: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": group["name"], "creationTimestamp": None},
            "versions": [{"version": v["version"]} for v in group["versions"]
                         if v["version"] != "v1beta1"]}


# ---- the test ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_cluster() -> Iterator[ThreadedCluster]:
    # The recorded server was a bare kube-apiserver with no kube-controller-manager: no
    # namespace controller emptied and finalized its namespaces, and 199 records a deleted
    # Namespace staying Terminating until /finalize. Ours would finalize it at once.
    with LocalCluster.start_in_thread(namespace_controller=False) as cluster:
        yield cluster


def _case_id(path: pathlib.Path) -> str:
    return path.name[:3]


def test_reference_is_present() -> None:
    assert len(CASES) >= 50, f"expected the recorded exchanges in {REFERENCE_DIR}"


@pytest.mark.parametrize("case", CASES, ids=[path.stem for path in CASES])
def test_replay(reference_cluster: ThreadedCluster, case: pathlib.Path) -> None:
    recording = json.loads(case.read_text())
    case_id = _case_id(case)
    replay = Replay(trimmed="TRIMMED" in recording["why"] or case_id in ADAPTATIONS)
    open_watch: tuple[WatchReader, dict[str, Any], str] | None = None
    reference_setup.prepare(reference_cluster.url, case_id)
    for index, exchange in enumerate(recording["exchanges"]):
        where = f"{case.stem} #{index} {exchange['request']['method']} " \
                f"{exchange['request']['path']}"
        response = _send(reference_cluster.url, exchange["request"], replay)
        if "events" in exchange["response"]:
            _finish_watch(replay, open_watch)
            open_watch = (WatchReader(response), exchange["response"], where)
            continue
        _compare_answer(replay, _adapt(case_id, index, exchange), _answer(response), where,
                        case_id=case_id)
    _finish_watch(replay, open_watch)
    replay.check_rv_order()
    assert not replay.problems, "\n".join(replay.problems)


def _finish_watch(replay: Replay,
                  open_watch: tuple[WatchReader, dict[str, Any], str] | None) -> None:
    if open_watch is None:
        return
    reader, recorded, where = open_watch
    reader.join()
    if reader.status != recorded["status"]:
        replay.problem(where, f"watch status {reader.status}, expected {recorded['status']}")
    _compare_events(replay, recorded["events"], reader.events, where)


# ---- the comparison itself must be able to fail ---------------------------------------------

def _problems(recorded: Any, actual: Any) -> list[str]:
    replay = Replay(trimmed=False)
    replay.compare(recorded, actual, "body")
    replay.check_rv_order()
    return replay.problems


def test_comparison_flags_a_wrong_reason_or_cause() -> None:
    recorded = json.loads((REFERENCE_DIR / "042-invalid-enum.json").read_text())
    status = recorded["exchanges"][0]["response"]["body"]
    assert not _problems(status, status)
    assert _problems(status, {**status, "reason": "BadRequest"})
    wrong_field = json.loads(json.dumps(status))
    wrong_field["details"]["causes"][0]["field"] = "spec.color"
    assert _problems(status, wrong_field)


def test_comparison_flags_shape_and_version_differences() -> None:
    recorded = {"metadata": {"resourceVersion": "<rv:1>"}, "spec": {"a": 1},
                "items": [{"metadata": {"resourceVersion": "<rv:1>"}}]}
    good = {"metadata": {"resourceVersion": "7"}, "spec": {"a": 1},
            "items": [{"metadata": {"resourceVersion": "7"}}]}
    assert not _problems(recorded, good)
    assert _problems(recorded, {**good, "status": {}})                     # unexpected key
    assert _problems(recorded, {**good, "spec": {"a": 2}})                 # value
    assert _problems(recorded, {**good, "items": [{"metadata": {"resourceVersion": "8"}}]})
    newer = {"a": {"resourceVersion": "<rv:1>"}, "b": {"resourceVersion": "<rv:2>"}}
    assert _problems(newer, {"a": {"resourceVersion": "9"}, "b": {"resourceVersion": "3"}})
