"""The health endpoints mean something: /readyz once logged in and listed, /livez while
the reconcile loop moves; a replica that cannot reach the API server is not Ready and
says why in one log line."""

from __future__ import annotations

import http.client
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from . import harness
from .conftest import Operators


def _get(process: harness.OperatorProcess, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{process.port()}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_a_working_replica_is_ready_and_live(kube: harness.Kubectl,
                                             operators: Operators) -> None:
    kube.apply(*harness.engines("e", 2), harness.model("chat", replicas=1))
    operator = operators.start()
    harness.wait_until(lambda: _get(operator, "/readyz")[0] == 200, timeout=20,
                       what="/readyz to answer 200")
    assert _get(operator, "/livez") == (200, "ok\n")
    harness.wait_serving(kube, {"chat": 1})


def test_a_replica_that_cannot_reach_the_api_is_live_but_not_ready(
    kube: harness.Kubectl, operators: Operators, tmp_path: Path,
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens here once the socket closes
    kubeconfig = tmp_path / "unreachable.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "x", "user": {}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}]}))
    operator = operators.start(kubeconfig=kubeconfig)
    harness.wait_until(lambda: "Cannot list from the API server" in operator.log(),
                       timeout=15, what="the log to say why")
    status, text = _get(operator, "/readyz")
    assert status == 503 and "LIST" in text, (status, text)
    assert _get(operator, "/livez")[0] == 200  # waiting out the API is not being stuck
    assert operator.alive and "Traceback" not in operator.log()
    line = next(x for x in operator.log().splitlines() if "Cannot list from the API" in x)
    assert f"127.0.0.1:{port}" in line and "trying again in" in line, line


def test_sigterm_stops_at_once_while_a_scraper_keeps_its_connection(
    kube: harness.Kubectl, operators: Operators,
) -> None:
    """Prometheus keeps its connection between scrapes. A connection kept alive is a task
    Kopf does not know, and on SIGTERM Kopf waits 5 s for such tasks: the server closes
    each connection after answering, so a scraped replica stops as fast as any."""
    kube.apply(*harness.engines("e", 2), harness.model("chat", replicas=1))
    operator = operators.start()
    harness.wait_serving(kube, {"chat": 1})
    scraper = http.client.HTTPConnection("127.0.0.1", operator.port(), timeout=5)
    try:
        for path in ("/metrics", "/livez"):
            scraper.request("GET", path)  # HTTP/1.1: keep-alive unless the server says not
            response = scraper.getresponse()
            assert response.status == 200 and response.read()
            assert response.getheader("Connection") == "close", path
        stopped = time.monotonic()
        operator.process.send_signal(signal.SIGTERM)
        operator.process.wait(timeout=15)
        took = time.monotonic() - stopped
    finally:
        scraper.close()
    assert operator.process.returncode == 0, operator.log()[-2000:]
    assert took < 4.0, f"stopped {took:.1f}s after SIGTERM (Kopf waits 5 s for hung tasks)"
