"""The chaos tools themselves: the proxy injects what it is set to, and the watcher's
verdicts see a floor drop, a repeated action and a write without the Lease (and see none
where there is none). No operator runs here."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from . import chaos, harness


@pytest.fixture
def proxy(kube: harness.Kubectl, tmp_path: Path) -> Iterator[chaos.FaultProxy]:
    with chaos.FaultProxy(kube, directory=tmp_path, name="faulty", seed=1) as found:
        yield found


def _url(proxy: chaos.FaultProxy) -> str:
    config = yaml.safe_load(proxy.kubeconfig.read_text())
    return str(config["clusters"][0]["cluster"]["server"])


def _call(url: str, *, method: str = "GET", body: object = None,
          timeout: float = 10) -> tuple[int, dict[str, str], str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/merge-patch+json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def test_the_proxy_injects_each_fault_as_a_real_api_server_answers_it(
    kube: harness.Kubectl, proxy: chaos.FaultProxy,
) -> None:
    kube.apply(*harness.engines("e", 1))
    engines = f"{_url(proxy)}{chaos.GROUP_PATH}/namespaces/{kube.namespace}/inferenceengines"
    assert _call(engines)[0] == 200
    patch = {"metadata": {"labels": {"x": "1"}}}
    for faults, method, url, code, reason in (
        (chaos.Faults(outage=True), "GET", engines, 503, "ServiceUnavailable"),
        (chaos.Faults(conflict=1.0), "PATCH", f"{engines}/e-0", 409, "Conflict"),
        (chaos.Faults(error=1.0), "GET", engines, 500, "InternalError"),
        (chaos.Faults(throttle=1.0, retry_after=3), "GET", engines, 429, "TooManyRequests"),
        (chaos.Faults(gone=1.0), "GET", f"{engines}?watch=true&resourceVersion=1", 410,
         "Expired"),
    ):
        proxy.set(faults)
        status, headers, text = _call(url, method=method,
                                      body=patch if method == "PATCH" else None)
        answer = json.loads(text)
        assert (status, answer["kind"], answer["reason"], answer["code"]) == (
            code, "Status", reason, code), (faults, text)
        if code == 429:
            assert headers["Retry-After"] == "3"
            assert answer["details"]["retryAfterSeconds"] == 3
    proxy.set(chaos.Faults(conflict=1.0))
    assert _call(engines)[0] == 200  # a read never meets a write's conflict
    proxy.set(chaos.Faults(latency=0.5))
    started = time.monotonic()
    assert _call(engines)[0] == 200 and time.monotonic() - started >= 0.5
    proxy.set(chaos.Faults(timeout=1.0))
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        _call(engines, timeout=1.0)
    proxy.set(chaos.Faults(cut_watch=1.0))
    started = time.monotonic()
    with (urllib.request.urlopen(f"{engines}?watch=true&resourceVersion=0", timeout=10) as w,
          contextlib.suppress(http.client.IncompleteRead, ConnectionError)):
        while w.read(1):  # the stream ends (cut) long before the server would end it
            pass
    assert time.monotonic() - started < 5, "the watch was not cut"
    faults = [r.fault for r in proxy.requests()]
    assert faults[:1] == [""] and {"outage", "conflict", "error", "throttle", "gone",
                                    "timeout", "cut_watch"} <= set(faults)
    writes = [r for r in proxy.requests() if r.method == "PATCH"]
    assert writes and writes[0].body == patch and not writes[0].action_id


def _serving(kube: harness.Kubectl, name: str, model: str, *, action: str = "") -> None:
    meta = {"annotations": {harness.ACTION_ID: action}} if action else {}
    kube.patch("ie", name, {"metadata": meta, "spec": {"modelRef": model}})
    kube.patch("ie", name, {"status": {"phase": "Serving", "model": model}},
               subresource="status")


def test_the_verdicts_see_a_floor_drop_and_a_repeated_action(
    kube: harness.Kubectl, tmp_path: Path,
) -> None:
    kube.apply(*harness.engines("e", 3), harness.model("chat", replicas=2, min_available=2))
    with chaos.Watcher(kube, directory=tmp_path) as watcher:
        _serving(kube, "e-0", "chat", action="a1")
        _serving(kube, "e-1", "chat", action="a2")
        harness.wait_until(lambda: chaos.converged(watcher.seen(), {"chat": 2}), timeout=10,
                           what="the watcher to see chat serving 2")
        assert chaos.floor_drops(watcher.seen()) == []
        assert chaos.duplicate_actions(watcher.seen()) == {}
        kube.patch("ie", "e-1", {"status": {"phase": "Draining"}}, subresource="status")
        # The same action id written again with a new binding: an action run twice.
        kube.patch("ie", "e-2", {"metadata": {"annotations": {harness.ACTION_ID: "a1"}},
                                 "spec": {"modelRef": "chat"}})

        def seen_both() -> bool:
            seen = watcher.seen()
            return bool(chaos.floor_drops(seen)) and bool(chaos.duplicate_actions(seen))

        harness.wait_until(seen_both, timeout=10, what="the watcher to see both")
        (drop,) = chaos.floor_drops(watcher.seen())
        assert (drop.model, drop.serving, drop.floor, drop.engine) == ("chat", 1, 2, "e-1")
        assert chaos.duplicate_actions(watcher.seen()) == {"a1": 2}
        assert chaos.converged(watcher.seen(), {"chat": 2}) is None


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
