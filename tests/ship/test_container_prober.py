"""The image test's prober runs a manifest's httpGet probes as the kubelet does: checked
here against a real HTTP server on loopback, without Docker, so the image test's "no
restart was due" cannot pass for want of probing."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .container import Probe, Prober
from .manifests import eventually


class _Health(http.server.BaseHTTPRequestHandler):
    answers: dict[str, int] = {}

    def do_GET(self) -> None:
        self.send_response(self.answers.get(self.path, 404))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    _Health.answers = {"/readyz": 200, "/livez": 200}
    running = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=running.serve_forever, daemon=True).start()
    yield running
    running.shutdown()


def _container(port: int) -> dict[str, Any]:
    fast = {"periodSeconds": 0.2, "timeoutSeconds": 1, "failureThreshold": 2}
    return {"ports": [{"name": "metrics", "containerPort": port}],
            "startupProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, **fast},
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, **fast},
            "livenessProbe": {"httpGet": {"path": "/livez", "port": port}, **fast}}


def test_probes_are_read_from_the_manifest_with_the_kubelets_defaults() -> None:
    probes = Probe.of({"ports": [{"name": "http", "containerPort": 8000}],
                       "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}}})
    assert probes == {"liveness": Probe("liveness", "/healthz", 8000, 10.0, 1.0, 3)}
    with pytest.raises(AssertionError, match="is no port of the container"):
        Probe.of({"readinessProbe": {"httpGet": {"path": "/", "port": "web"}}})


def test_a_failing_liveness_probe_is_a_restart_and_readiness_follows_its_probe(
        server: http.server.ThreadingHTTPServer) -> None:
    alive = [True]
    prober = Prober(ip="127.0.0.1", probes=Probe.of(_container(server.server_address[1])),
                    running=lambda: alive[0]).start()
    try:
        eventually(lambda: prober.ready and prober.started is not None, timeout=10,
                   what="ready after the startup probe")
        assert prober.restarts == []
        _Health.answers["/readyz"] = 503
        eventually(lambda: not prober.ready, timeout=10, what="not ready after 2 failures")
        assert prober.restarts == []  # readiness never restarts
        _Health.answers["/livez"] = 500
        eventually(lambda: prober.restarts, timeout=10, what="a restart due")
        assert "liveness probe /livez failed 2 times: HTTP 500" in prober.restarts[0]
        alive[0] = False  # stopped on purpose: its failures are not the kubelet's business
        time.sleep(0.3)
        seen = len(prober.restarts)
        time.sleep(1.0)
        assert len(prober.restarts) == seen
    finally:
        prober.stop()
