"""The chaos tools themselves: the proxy injects what it is set to, in the shape a real API
server answers (read back by kubectl and by the `kubernetes` client, not only by eye), and
records it; the watcher's verdicts see a floor drop, a repeated action and a write without
the Lease (and see none where there is none). No operator runs here."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from capguard.core import clock

from . import chaos, harness, kube_client


@pytest.fixture
def proxy(kube: harness.Kubectl, tmp_path: Path) -> Iterator[chaos.FaultProxy]:
    with chaos.FaultProxy(kube, directory=tmp_path, name="faulty", seed=1) as found:
        yield found


def _url(proxy: chaos.FaultProxy) -> str:
    config = yaml.safe_load(proxy.kubeconfig.read_text())
    return str(config["clusters"][0]["cluster"]["server"])


def _engines_url(proxy: chaos.FaultProxy, kube: harness.Kubectl) -> str:
    return f"{_url(proxy)}{chaos.GROUP_PATH}/namespaces/{kube.namespace}/{chaos.ENGINES}"


def _refused(call: Callable[[], object]) -> tuple[client.ApiException, client.V1Status]:
    with pytest.raises(client.ApiException) as refused:
        call()
    return refused.value, kube_client.status_of(refused.value)


def _details(call: Callable[[], object]) -> client.V1StatusDetails:
    details = _refused(call)[1].details
    assert details is not None, "a Status without details"
    return details


def test_each_fault_is_answered_as_a_real_api_server_answers_it(
    kube: harness.Kubectl, proxy: chaos.FaultProxy,
) -> None:
    kube.apply(*harness.engines("e", 1))
    custom = kube_client.Custom(kube_client.connect(proxy.kubeconfig), str(kube.namespace))

    def listed() -> harness.Body:
        return custom.list(chaos.ENGINES)

    def patched() -> harness.Body:
        return custom.patch(chaos.ENGINES, "e-0", {"metadata": {"labels": {"x": "1"}}})

    def from_version() -> harness.Body:  # a version long compacted on a real cluster
        return custom.list(chaos.ENGINES, resource_version="1")

    assert listed()["items"]
    for faults, call, code, reason in (
        (chaos.Faults(outage=True), listed, 503, "ServiceUnavailable"),
        (chaos.Faults(conflict=1.0), patched, 409, "Conflict"),
        (chaos.Faults(error=1.0), listed, 500, "InternalError"),
        # Retry-After 0: the client's urllib3 waits it out three times before it raises.
        (chaos.Faults(throttle=1.0, retry_after=0), listed, 429, "TooManyRequests"),
        (chaos.Faults(gone=1.0), from_version, 410, "Expired"),
    ):
        proxy.set(faults)
        error, status = _refused(call)
        assert (error.status, status.kind, status.status, status.reason, status.code) == (
            code, "Status", "Failure", reason, code), (faults, error.body)
    proxy.set(chaos.Faults(throttle=1.0, retry_after=3))
    with pytest.raises(urllib.error.HTTPError) as throttled:
        urllib.request.urlopen(_engines_url(proxy, kube), timeout=10)
    assert throttled.value.code == 429 and throttled.value.headers["Retry-After"] == "3"
    assert json.loads(throttled.value.read())["details"] == {"retryAfterSeconds": 3}
    proxy.set(chaos.Faults(error=1.0))
    assert [c.message for c in _details(listed).causes or []] == ["injected"]
    # A conflict names the object as kube-apiserver does (shared/k8s-reference 034), and
    # kubectl, a client-go program, reads it as one.
    proxy.set(chaos.Faults(conflict=1.0))
    details = _details(patched)
    assert (details.name, details.group, details.kind) == ("e-0", "capguard.dev", chaos.ENGINES)
    through = harness.Kubectl(kubeconfig=proxy.kubeconfig, namespace=kube.namespace)
    done = through.run("label", "ie", "e-0", "y=1", check=False)
    assert done.returncode != 0
    assert ('Error from server (Conflict): Operation cannot be fulfilled on '
            'inferenceengines.capguard.dev "e-0": the object has been modified') in done.stderr
    assert listed()["items"]  # a read never meets a write's conflict
    proxy.set(chaos.Faults(gone=1.0))
    assert custom.list(chaos.ENGINES, resource_version="0")["items"]  # "0" is never too old
    proxy.set(chaos.Faults())
    assert patched()["metadata"]["labels"]["x"] == "1"


def test_a_watch_from_a_compacted_version_gets_one_error_event_as_kube_apiserver_sends(
    kube: harness.Kubectl, proxy: chaos.FaultProxy,
) -> None:
    """Not an HTTP 410: a 200 whose only event is ERROR with the 410 Expired Status
    (shared/k8s-reference 081), which the `kubernetes` client raises as a 410."""
    kube.apply(*harness.engines("e", 1))
    proxy.set(chaos.Faults(gone=1.0))
    url = f"{_engines_url(proxy, kube)}?watch=true&resourceVersion=1"
    with urllib.request.urlopen(url, timeout=10) as stream:
        assert stream.status == 200
        events = [json.loads(line) for line in stream.read().splitlines()]
    assert [e["type"] for e in events] == ["ERROR"]
    assert {k: events[0]["object"][k] for k in ("kind", "status", "reason", "code")} == {
        "kind": "Status", "status": "Failure", "reason": "Expired", "code": 410}
    custom = kube_client.Custom(kube_client.connect(proxy.kubeconfig), str(kube.namespace))
    with pytest.raises(client.ApiException) as expired:
        list(custom.watch(chaos.ENGINES, resource_version="1", timeout=5))
    assert expired.value.status == 410


def _watch_ends_within(url: str, seconds: float) -> bool:
    started = time.monotonic()
    with (urllib.request.urlopen(url, timeout=10) as stream,
          contextlib.suppress(http.client.IncompleteRead, ConnectionError)):
        while stream.read(1):
            pass
    return time.monotonic() - started < seconds


def test_watches_are_cut_latency_is_added_and_a_hung_request_is_dropped(
    kube: harness.Kubectl, proxy: chaos.FaultProxy,
) -> None:
    engines = _engines_url(proxy, kube)
    watch = f"{engines}?watch=true&resourceVersion=0"
    proxy.set(chaos.Faults(cut_watch=1.0))
    assert _watch_ends_within(watch, 5), "the watch was not cut"
    proxy.set(chaos.Faults())
    outage = threading.Timer(0.5, proxy.set, args=(chaos.Faults(outage=True),))
    outage.start()  # while the watch below is open: an outage ends it too
    assert _watch_ends_within(watch, 5), "the outage left a watch open"
    outage.join()
    proxy.set(chaos.Faults(latency=0.5))
    started = time.monotonic()
    with urllib.request.urlopen(engines, timeout=10):
        pass
    assert time.monotonic() - started >= 0.5
    proxy.set(chaos.Faults(timeout=1.0, hang=0.5))
    started = time.monotonic()
    with pytest.raises((ConnectionError, http.client.HTTPException, urllib.error.URLError)):
        urllib.request.urlopen(engines, timeout=10)
    assert 0.5 <= time.monotonic() - started < 5, "held, but not dropped after `hang`"
    hung = proxy.requests()[-1]
    assert (hung.fault, hung.status) == ("timeout", 0)


def test_the_proxy_records_every_request_and_each_write_with_its_body(
    kube: harness.Kubectl, proxy: chaos.FaultProxy,
) -> None:
    kube.apply(*harness.engines("e", 1))
    through = harness.Kubectl(kubeconfig=proxy.kubeconfig, namespace=kube.namespace)
    through.get("ie", "e-0")
    window = time.monotonic()
    wall = time.time()
    binding = {"metadata": {"annotations": {harness.ACTION_ID: "act-1"}},
               "spec": {"modelRef": "chat"}}
    through.patch("ie", "e-0", binding)
    proxy.set(chaos.Faults(error=1.0))
    through.run("get", "ie", "e-0", check=False)
    proxy.set(chaos.Faults())
    later = proxy.requests(since=window)
    assert later and all(r.monotonic >= window and r.wall >= wall - 0.01 for r in later)
    assert len(proxy.requests()) > len(later)  # the first GET is outside the window
    (write,) = proxy.writes()
    assert (write.method, write.status, write.fault, write.action, write.action_id) == (
        "PATCH", 200, "", True, "act-1")
    assert write.path.endswith(f"/namespaces/{kube.namespace}/inferenceengines/e-0")
    assert write.body == binding
    assert proxy.writes(since=time.monotonic()) == []
    refused = [r for r in later if r.fault]
    assert refused and {(r.method, r.status) for r in refused} == {("GET", 500)}
    assert all("e-0" in r.path for r in refused)


def _serving(kube: harness.Kubectl, name: str, model: str, *, action: str = "") -> None:
    meta = {"annotations": {harness.ACTION_ID: action}} if action else {}
    kube.patch("ie", name, {"metadata": meta, "spec": {"modelRef": model}})
    kube.patch("ie", name, {"status": {"phase": "Serving", "model": model}},
               subresource="status")


def test_the_verdicts_see_floor_drops_and_repeated_actions_and_none_before(
    kube: harness.Kubectl, tmp_path: Path,
) -> None:
    kube.apply(*harness.engines("e", 5), harness.model("chat", replicas=2, min_available="100%"),
               harness.model("code", replicas=1), harness.breaker("guard"))
    with chaos.Watcher(kube, directory=tmp_path) as watcher:
        _serving(kube, "e-0", "chat", action="a1")
        _serving(kube, "e-1", "chat", action="a2")
        _serving(kube, "e-3", "code", action="a3")
        kube.patch("ie", "e-4", {"metadata": {"annotations": {harness.ACTION_ID: "a4"}},
                                 "spec": {"modelRef": "code"}})  # bound, not serving yet
        harness.wait_until(lambda: chaos.converged(watcher.seen()), timeout=10,
                           what="the watcher to see every model serving its replicas")
        assert chaos.converged(watcher.seen(), {"chat": 2}) is not None
        assert chaos.time_to_converge(watcher.seen(), after=time.time()) == 0.0
        assert {s.name for s in watcher.seen() if s.kind == "breaker"} == {"guard"}
        assert chaos.floor_drops(watcher.seen()) == []
        assert chaos.duplicate_actions(watcher.seen()) == {}
        # Scaled up past what serves: below the floor of 3, but nothing dropped.
        kube.run("scale", "mc/chat", "--replicas=3")
        harness.wait_until(lambda: chaos.converged(watcher.seen()) is None, timeout=10,
                           what="the watcher to see chat short of its replicas")
        assert chaos.floor_drops(watcher.seen()) == []
        # A unit lost while below the floor is a drop; so is the same id bound again.
        kube.patch("ie", "e-1", {"status": {"phase": "Draining"}}, subresource="status")
        kube.patch("ie", "e-2", {"metadata": {"annotations": {harness.ACTION_ID: "a1"}},
                                 "spec": {"modelRef": "chat"}})
        # A binding changed under an unchanged id: the action a4 written a second time.
        kube.patch("ie", "e-4", {"spec": {"modelRef": "chat"}})

        def judged() -> bool:
            seen = watcher.seen()
            return bool(chaos.floor_drops(seen)) and len(chaos.duplicate_actions(seen)) == 2

        harness.wait_until(judged, timeout=10, what="the watcher to see the drop and both")
        (drop,) = chaos.floor_drops(watcher.seen())
        assert (drop.model, drop.serving, drop.floor, drop.engine) == ("chat", 1, 3, "e-1")
        assert chaos.duplicate_actions(watcher.seen()) == {"a1": 2, "a4": 2}
        assert chaos.converged(watcher.seen(), {"chat": 2}) is None


def _lease(kube: harness.Kubectl, *, holder: str, duration: int) -> float:
    renewed = time.time()
    kube.apply({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "scripted"},
                "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration,
                         "renewTime": clock.precise_timestamp(renewed)}})
    return renewed


def test_writes_through_a_replicas_proxy_without_its_lease_are_found(
    kube: harness.Kubectl, proxy: chaos.FaultProxy, tmp_path: Path,
) -> None:
    """Replica "a" writes through its proxy while it holds the Lease, after its term ran
    out, and after "b" took the Lease: the last two are found, by the Lease versions the
    watcher recorded and the arrival times the proxy recorded."""
    kube.apply(*harness.engines("e", 1))
    as_a = harness.Kubectl(kubeconfig=proxy.kubeconfig, namespace=kube.namespace)

    def act(action: str) -> None:
        as_a.patch("ie", "e-0", {"metadata": {"annotations": {harness.ACTION_ID: action}}})

    with chaos.Watcher(kube, directory=tmp_path, lease_namespace=str(kube.namespace)) as watcher:
        renewed = _lease(kube, holder="a", duration=2)
        act("held")
        time.sleep(max(0.0, renewed + 2.2 - time.time()))
        act("expired")
        _lease(kube, holder="b", duration=10)
        act("taken")
        harness.wait_until(lambda: len(chaos.lease_history(watcher.seen(), name="scripted")) == 2,
                           timeout=10, what="the watcher to see both Lease versions")
        leases = chaos.lease_history(watcher.seen(), name="scripted")
        started = watcher.started
    assert [(v.holder, v.duration) for v in leases] == [("a", 2.0), ("b", 10.0)]
    assert leases[0].renewed == pytest.approx(renewed, abs=1e-3)
    late = chaos.writes_without_the_lease(proxy.actions(), leases, identity="a", since=started)
    assert [r.action_id for r in late] == ["expired", "taken"]
    held = chaos.writes_without_the_lease(proxy.actions()[:1], leases, identity="a",
                                          since=started)
    assert held == []


def _action(at: float) -> chaos.Request:
    path = f"{chaos.GROUP_PATH}/namespaces/ns/inferenceengines/e-0"
    body = {"metadata": {"annotations": {harness.ACTION_ID: f"id-{at}"}}}
    return chaos.Request(at, at, "PATCH", path, "", "", 200, body)


def test_a_write_after_the_lease_passed_to_another_replica_is_found() -> None:
    leases = [chaos.LeaseVersion(100.0, "a", renewed=100.0, duration=3.0),
              chaos.LeaseVersion(102.0, "a", renewed=102.0, duration=3.0),
              chaos.LeaseVersion(106.0, "b", renewed=106.0, duration=3.0)]
    writes = [_action(101.0), _action(104.5), _action(105.5), _action(107.0)]
    bad = chaos.writes_without_the_lease(writes, leases, identity="a")
    # 104.5: a's renewal of 102 still holds; 105.5: it ran out at 105; 107: b holds it.
    assert [r.wall for r in bad] == [105.5, 107.0]
    assert chaos.writes_without_the_lease(writes[-1:], leases, identity="b") == []
    status = dataclasses.replace(writes[0], path=writes[0].path + "/status")
    assert not status.action  # a /status write is not an action
