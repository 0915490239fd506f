"""Probes and scrapes leave no trace in the log: a kubelet probes every few seconds and
Prometheus scrapes every replica, so a line per hit is thousands of lines a day per pod.

`capguard run` as a user starts it, with both HTTP servers it can have: the metrics port
(/metrics, /readyz, /livez: what deploy/manager/deployment.yaml probes) and Kopf's
liveness endpoint (--liveness, /healthz).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiohttp
import pytest
from operator_harness import Kube, eventually

from capguard.demo import processes
from capguard.localcluster import LocalCluster

HITS = 20
PATHS = ("/metrics", "/readyz", "/livez", "/healthz")


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_probes_and_scrapes_write_no_log_line(
    cluster: LocalCluster, kube: Kube, log_format: str,
) -> None:
    await kube.engines("e0")
    await kube.model("chat", 1, minAvailable=0)
    metrics_port, liveness_port = processes.free_port(), processes.free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "capguard.cli", "run", "--kubeconfig",
        str(cluster.kubeconfig_path), "--namespace", "default", "--metrics-host", "127.0.0.1",
        "--metrics-port", str(metrics_port), "--driver", "simulated", "--load-time", "300ms",
        "--liveness", f"http://127.0.0.1:{liveness_port}/healthz",
        "--no-leader-election", "--log-format", log_format, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "KUBECONFIG": ""})
    urls = [f"http://127.0.0.1:{metrics_port}{path}" for path in PATHS[:3]]
    urls.append(f"http://127.0.0.1:{liveness_port}/healthz")
    try:
        async with aiohttp.ClientSession() as session:
            async def answered(url: str) -> int | None:
                try:
                    async with session.get(url) as response:
                        await response.read()
                        return response.status
                except aiohttp.ClientError:
                    return None

            async def all_ok() -> bool:
                return [await answered(url) for url in urls] == [200] * len(urls)

            await eventually(all_ok, timeout=20, interval=0.2)  # up and ready: then count
            statuses = [await answered(url) for _ in range(HITS) for url in urls]
            assert statuses == [200] * HITS * len(urls)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 0, output.decode()[-2000:]
    lines = output.decode().splitlines()
    assert lines, "the operator logged nothing at all: the check below would prove nothing"
    noisy = [line for line in lines if any(path in line for path in PATHS)
             and "Serving /metrics on port" not in line]  # said once, at the start
    assert noisy == [], noisy[:5]

