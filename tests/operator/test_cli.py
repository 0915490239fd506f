"""`capguard run` as a user starts it: a separate process, flags, /metrics, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys

import aiohttp
import pytest
from operator_harness import Kube, eventually, metric

from capguard.localcluster import LocalCluster


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_capguard_run_serves_metrics_and_stops_on_sigterm(
    cluster: LocalCluster, kube: Kube, log_format: str,
) -> None:
    await kube.engines("e0", "e1")
    await kube.model("chat", 2, minAvailable=0)
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "capguard.cli", "run", "--kubeconfig",
        str(cluster.kubeconfig_path), "--namespace", "default", "--metrics-host", "127.0.0.1",
        "--metrics-port", str(port), "--driver", "simulated", "--load-time", "300ms",
        "--reconcile-interval", "200ms",
        "--no-leader-election", "--log-format", log_format, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "KUBECONFIG": ""})
    try:
        async def scraped() -> str | None:
            try:
                async with aiohttp.ClientSession() as session, session.get(
                        f"http://127.0.0.1:{port}/metrics") as response:
                    text = await response.text()
            except aiohttp.ClientError:
                return None
            serving = metric(text, "capguard_model_serving_units", model="chat")
            return text if serving == 2 else None

        text = await eventually(scraped, timeout=20, interval=0.2)
        assert metric(text, "capguard_model_desired_units", namespace="default",
                      model="chat") == 2
        assert metric(text, "capguard_actions_total", type="assign", result="executed") == 2
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 0, output.decode()[-2000:]
    assert b"Traceback" not in output, output.decode()[-2000:]
    lines = output.decode().splitlines()
    executed = [line for line in lines if "Assign to chat executed (action " in line]
    assert len(executed) == 2, lines
    if log_format == "json":
        records = [json.loads(line) for line in lines if line.strip()]  # every line
        assert all(set(r) >= {"time", "level", "logger", "message"} for r in records)
        assert {r["level"] for r in records} <= {"INFO", "WARNING", "ERROR", "DEBUG"}


@pytest.mark.parametrize(("args", "says"), [
    (["run", "--kubeconfig", "/nonexistent/kubeconfig"], "--kubeconfig"),
    (["run", "--lease-duration", "5x"], "--lease-duration"),
    (["run", "--lease-duration", "400ms"], "400ms is shorter than a Lease can say"),
    (["demo", "--speed", "5"], "--speed"),
    (["status", "--bogus"], "--bogus"),
    (["simulate", "--seed", "x"], "--seed"),
    (["crds", "extra"], "extra"),
    (["status", "--context", "no-such-context"], "--context"),
    (["gateway", "--context", "no-such-context"], "--context"),
    (["engine", "--name", "e0", "--serve-command", "serve {port}", "--context",
      "no-such-context"], "--context"),
    (["engine", "--name", "e0", "--serve-command", "serve {port}", "--drain-grace", "soon"],
     "'soon' is not a duration like 5s, 200ms or 1m30s"),
])
def test_every_subcommand_says_a_users_mistake_in_one_line_with_exit_2(
    args: list[str], says: str,
) -> None:
    done = subprocess.run([sys.executable, "-m", "capguard.cli", *args], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"capguard {args[0]}: "), done.stderr
    assert says in lines[0]


def test_a_busy_metrics_port_is_one_line_not_a_traceback() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "capguard.cli", "run", "--metrics-host", "127.0.0.1",
             "--metrics-port", str(port)], capture_output=True, text=True, timeout=60,
            check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"capguard run: Invalid value for '--metrics-port': 127.0.0.1:{port} is not free "
        "(Address already in use): stop what listens there or choose another port")


# What only some subcommands need; `capguard --help` (and a typo) must not wait for them.
HEAVY_FOR_HELP = ("kopf", "aiohttp", "prometheus_client", "rich", "matplotlib")


def test_capguard_help_imports_no_subcommand_wings() -> None:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "capguard.cli", "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    imported = {line.rpartition("|")[2].strip().split(".")[0]
                for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "capguard" in imported  # the measurement saw the imports at all
    assert sorted(imported.intersection(HEAVY_FOR_HELP)) == []
    for name in ("engine", "model-server", "gateway", "load"):
        assert f"\n  {name} " in done.stdout, done.stdout  # the serving commands stay listed
