"""A tiny Kopf operator against the embedded server: the real framework capguard is built
on must not be able to tell it from a kube-apiserver.

The operator runs standalone and namespace-scoped on its own event loop in a thread; its
handlers record what they saw, and the tests act on `Gizmo` objects over plain HTTP the
way a user or another controller would, then check both the records and the objects.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, Final

import kopf
import pytest

from capguard import localcluster

GROUP: Final = "kopf-test.capguard.dev"
VERSION: Final = "v1"
PLURAL: Final = "gizmos"
FINALIZER: Final = "kopf.zalando.org/KopfFinalizerMarker"
# Status is free-form so Kopf's own progress records survive pruning, as in most operators.
GIZMO_CRD: Final = f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {PLURAL}.{GROUP}
spec:
  group: {GROUP}
  scope: Namespaced
  names: {{plural: {PLURAL}, singular: gizmo, kind: Gizmo, listKind: GizmoList}}
  versions:
  - name: {VERSION}
    served: true
    storage: true
    subresources: {{status: {{}}}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {{type: string, enum: [small, large]}}
          status:
            type: object
            x-kubernetes-preserve-unknown-fields: true
"""
WAIT_SECONDS: Final = 15.0
QUIET_SECONDS: Final = 1.5   # long enough for Kopf to have reacted to an event if it would


# ---- what the handlers saw ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Call:
    handler: str
    name: str
    details: Any = None


class Calls:
    """Handler calls, appended from the operator's thread and read from the test's."""

    def __init__(self) -> None:
        self._calls: list[Call] = []
        self._lock = threading.Lock()

    def add(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)

    def of(self, handler: str, name: str) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if (c.handler, c.name) == (handler, name)]


def registry_for(calls: Calls, url: str) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, insecure=True)

    @kopf.on.create(GROUP, VERSION, PLURAL, id="created", registry=registry)
    async def created(name: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch,
                      **_: Any) -> dict[str, Any]:
        calls.add(Call("create", name, dict(spec)))
        patch.status["phase"] = "Ready"
        kopf.info(body, reason="Provisioned", message=f"{name} is ready")
        return {"size": spec.get("size")}   # Kopf stores it in status.created (the id)

    @kopf.on.update(GROUP, VERSION, PLURAL, id="updated", registry=registry)
    async def updated(name: str, diff: kopf.Diff, **_: Any) -> None:
        calls.add(Call("update", name, [tuple(item) for item in diff]))

    @kopf.on.delete(GROUP, VERSION, PLURAL, id="deleted", registry=registry)
    async def deleted(name: str, **_: Any) -> None:
        calls.add(Call("delete", name))

    return registry


# ---- running an operator ------------------------------------------------------------------------

class Operator:
    """`kopf.operator(...)` on an event loop of its own, in a daemon thread."""

    def __init__(self, *, url: str, namespace: str, calls: Calls,
                 server_timeout: int = 30) -> None:
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None
        settings = kopf.OperatorSettings()
        settings.watching.server_timeout = server_timeout
        self._coroutine = kopf.operator(
            registry=registry_for(calls, url), settings=settings, standalone=True,
            namespaces=[namespace], stop_flag=self._stop, ready_flag=self._ready)
        self._thread = threading.Thread(target=self._run, name=f"kopf-{namespace}",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=WAIT_SECONDS):
            self.stop()
            raise AssertionError(f"the Kopf operator did not get ready: {self.error!r}")

    def _run(self) -> None:
        try:
            asyncio.run(self._coroutine)
        except BaseException as error:   # reported to the test, never lost in the thread
            self.error = error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT_SECONDS)
        assert not self._thread.is_alive(), "the Kopf operator did not stop"
        assert self.error is None, f"the Kopf operator failed: {self.error!r}"


# ---- talking to the server as a client -------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Api:
    url: str
    namespace: str

    def path(self, name: str = "", subresource: str = "") -> str:
        base = f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}"
        return "/".join(part for part in (base, name, subresource) if part)

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": content_type,
                                                  "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            payload = error.read()
            return error.code, json.loads(payload) if payload.startswith(b"{") else payload

    def create(self, name: str, size: str) -> dict[str, Any]:
        code, body = self.request("POST", self.path(), {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Gizmo",
            "metadata": {"name": name}, "spec": {"size": size}})
        assert code == 201, body
        return dict(body)

    def get(self, name: str) -> dict[str, Any] | None:
        code, body = self.request("GET", self.path(name))
        if code == 404:
            return None
        assert code == 200, body
        return dict(body)

    def merge(self, name: str, patch: dict[str, Any], *, subresource: str = "") -> None:
        code, body = self.request("PATCH", self.path(name, subresource), patch,
                                  content_type="application/merge-patch+json")
        assert code == 200, body

    def delete(self, name: str) -> None:
        code, body = self.request("DELETE", self.path(name))
        assert code in (200, 202), body

    def events_about(self, name: str) -> list[dict[str, Any]]:
        code, body = self.request("GET", f"/api/v1/namespaces/{self.namespace}/events")
        assert code == 200, body
        return [event for event in body["items"]
                if event.get("involvedObject", {}).get("name") == name]


def eventually(check: Callable[[], Any], *, what: str, timeout: float = WAIT_SECONDS) -> Any:
    """Poll until `check()` returns something truthy, and return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting until {what}")


# ---- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[localcluster.ThreadedCluster]:
    crds = tmp_path_factory.mktemp("crds")
    (crds / "gizmos.yaml").write_text(GIZMO_CRD)
    with localcluster.LocalCluster.start_in_thread(crds_dir=crds) as running:
        yield running


def new_namespace(cluster: localcluster.ThreadedCluster, name: str) -> Api:
    api = Api(url=cluster.url, namespace=name)
    code, body = api.request("POST", "/api/v1/namespaces",
                             {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    assert code == 201, body
    return api


@dataclasses.dataclass(frozen=True)
class Running:
    api: Api
    calls: Calls


@pytest.fixture(scope="module")
def operator(cluster: localcluster.ThreadedCluster) -> Iterator[Running]:
    """One operator for the handler tests; each test works on gizmos of its own."""
    api = new_namespace(cluster, "kopf-handlers")
    calls = Calls()
    running = Operator(url=cluster.url, namespace=api.namespace, calls=calls)
    yield Running(api=api, calls=calls)
    running.stop()


@pytest.fixture(autouse=True)
def no_kopf_complaints(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Kopf warns when the server surprises it (a patch that did not stick, a refused
    event, a watch error); against a faithful server it has nothing to say."""
    yield
    complaints = [f"{record.name}: {record.getMessage()}" for record in caplog.records
                  if record.name.startswith("kopf") and record.levelno >= logging.WARNING
                  and "OS signals are ignored" not in record.getMessage()]
    assert complaints == []


def handled(api: Api, name: str) -> dict[str, Any]:
    """The gizmo once the create handler's status is in place."""
    def ready() -> dict[str, Any] | None:
        gizmo = api.get(name)
        return gizmo if gizmo and gizmo.get("status", {}).get("phase") == "Ready" else None
    result: dict[str, Any] = eventually(ready, what=f"{name} has status.phase Ready")
    return result


# ---- the tests --------------------------------------------------------------------------------

def test_create_handler_runs_once_and_writes_status_through_the_subresource(
        cluster: localcluster.ThreadedCluster, operator: Running) -> None:
    api, calls = operator.api, operator.calls
    api.create("alpha", "small")
    gizmo = handled(api, "alpha")

    assert FINALIZER in gizmo["metadata"]["finalizers"]
    assert gizmo["status"]["created"] == {"size": "small"}
    assert [call.details for call in calls.of("create", "alpha")] == [{"size": "small"}]
    status_writes = [record for record in cluster.audit
                     if record.get("name") == "alpha" and record["verb"] == "patch"
                     and record.get("subresource") == "status"]
    assert status_writes, "Kopf wrote status without the /status subresource"
    assert gizmo["metadata"]["generation"] == 1, "finalizer and status writes bump no generation"

    time.sleep(QUIET_SECONDS)
    assert len(calls.of("create", "alpha")) == 1
    assert calls.of("update", "alpha") == []


def test_an_unrelated_status_change_runs_no_handler(operator: Running) -> None:
    api, calls = operator.api, operator.calls
    api.create("bravo", "small")
    handled(api, "bravo")

    api.merge("bravo", {"status": {"lastProbe": "ok"}}, subresource="status")
    time.sleep(QUIET_SECONDS)
    assert len(calls.of("create", "bravo")) == 1
    assert calls.of("update", "bravo") == []
    gizmo = api.get("bravo")
    assert gizmo is not None and gizmo["status"]["lastProbe"] == "ok"
    assert gizmo["status"]["phase"] == "Ready"


def test_update_handler_sees_the_spec_diff(operator: Running) -> None:
    api, calls = operator.api, operator.calls
    api.create("charlie", "small")
    handled(api, "charlie")

    api.merge("charlie", {"spec": {"size": "large"}})
    updates = eventually(lambda: calls.of("update", "charlie"), what="the update handler ran")
    assert updates[0].details == [("change", ("spec", "size"), "small", "large")]
    time.sleep(QUIET_SECONDS)
    assert len(calls.of("update", "charlie")) == 1
    assert len(calls.of("create", "charlie")) == 1


def test_delete_handler_runs_and_the_finalizer_lets_the_object_go(operator: Running) -> None:
    api, calls = operator.api, operator.calls
    api.create("delta", "small")
    handled(api, "delta")

    api.delete("delta")
    eventually(lambda: api.get("delta") is None, what="delta is gone")
    assert len(calls.of("delete", "delta")) == 1
    assert len(calls.of("create", "delta")) == 1


def test_an_event_posted_by_a_handler_is_stored(operator: Running) -> None:
    api = operator.api
    api.create("echo", "small")
    gizmo = handled(api, "echo")
    events = eventually(lambda: api.events_about("echo"), what="Kopf posted an event for echo")
    assert [(e["type"], e["reason"], e["message"]) for e in events] == [
        ("Normal", "Provisioned", "echo is ready")]
    assert events[0]["involvedObject"]["kind"] == "Gizmo"
    assert events[0]["involvedObject"]["uid"] == gizmo["metadata"]["uid"]


def test_a_restarted_operator_does_not_repeat_the_create_handler(
        cluster: localcluster.ThreadedCluster) -> None:
    api = new_namespace(cluster, "kopf-restart")
    first_calls = Calls()
    first = Operator(url=cluster.url, namespace=api.namespace, calls=first_calls)
    try:
        api.create("foxtrot", "small")
        handled(api, "foxtrot")
    finally:
        first.stop()
    assert len(first_calls.of("create", "foxtrot")) == 1

    second_calls = Calls()
    second = Operator(url=cluster.url, namespace=api.namespace, calls=second_calls)
    with contextlib.ExitStack() as stack:
        stack.callback(second.stop)
        api.merge("foxtrot", {"spec": {"size": "large"}})
        eventually(lambda: second_calls.of("update", "foxtrot"),
                   what="the restarted operator handled the update")
        assert second_calls.of("create", "foxtrot") == []


def test_kopf_resumes_its_watch_when_the_server_ends_it(
        cluster: localcluster.ThreadedCluster) -> None:
    api = new_namespace(cluster, "kopf-rewatch")
    calls = Calls()
    running = Operator(url=cluster.url, namespace=api.namespace, calls=calls, server_timeout=1)
    try:
        api.create("golf", "small")
        handled(api, "golf")
        time.sleep(2.5)   # the server has ended Kopf's watches twice by now (timeoutSeconds=1)
        api.merge("golf", {"spec": {"size": "large"}})
        updates = eventually(lambda: calls.of("update", "golf"), what="the update was seen")
        assert updates[0].details == [("change", ("spec", "size"), "small", "large")]
        assert len(calls.of("create", "golf")) == 1
        # The audit records a watch when it opens: the first one and each resumption, all
        # from a resourceVersion.
        opened = [record for record in cluster.audit
                  if record["verb"] == "watch" and record.get("namespace") == api.namespace
                  and record.get("resource") == PLURAL]
        assert len(opened) >= 3, "the server did not end Kopf's watches after timeoutSeconds"
        assert all("resourceVersion=" in record["query"] for record in opened)
    finally:
        running.stop()
