"""Engines driven by their agents (issue 12): `capguard run --driver agent` with one
`capguard engine` process per engine, each supervising a real model-server process.

What the operator reads is only what the agents report: an engine with no agent is
never given a model, and an engine whose agent dies is out of service within the
heartbeat bound and its model's capacity is placed elsewhere. With the gateway in
front, a move drains the engine without cutting a request and routes the new model to
it only once its server is loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from . import chaos, harness
from .conftest import _FAILED as FAILED
from .conftest import Operators, Target

HEARTBEAT_TIMEOUT = "2s"
# The stand-in model server, started by the agent for each model it is bound to.
MODEL_SERVER = (f"{sys.executable} -m capguard.serving.modelserver --model {{model}} "
                "--port {port} --units {units} --load-time 0.3s --name {engine}")


class Agents:
    """`capguard engine` processes of one test, killed with their servers when it ends."""

    def __init__(self, *, target: Target, namespace: str, log_dir: Path) -> None:
        self.target, self.namespace, self.log_dir = target, namespace, log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: list[Path] = []

    def start(self, engine: str, *, serve_command: str = MODEL_SERVER,
              flags: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"agent-{engine}-{len(self.logs)}.log").open("wb")
        self.logs.append(Path(log.name))
        process = subprocess.Popen(
            [sys.executable, "-m", "capguard.cli", "engine", "--name", engine,
             "--namespace", self.namespace, f"--kubeconfig={self.target.kubeconfig}",
             "--serve-command", serve_command, "--heartbeat-interval=0.5s",
             "--drain-grace=2s", "--retry-after=1s", *flags],
            stdout=log, stderr=subprocess.STDOUT, env=harness.clean_env())
        self.processes[engine] = process
        return process

    def servers_of(self, engine: str) -> list[int]:
        """The model-server processes an agent started (its children)."""
        found = subprocess.run(["pgrep", "-P", str(self.processes[engine].pid)],
                               capture_output=True, text=True, check=False)
        return [int(pid) for pid in found.stdout.split()]

    def kill(self, engine: str) -> None:
        """The agent and its server die at once, as a Pod whose node failed."""
        servers = self.servers_of(engine)
        self.processes[engine].kill()
        self.processes[engine].wait()
        for pid in servers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop_all(self, *, show_logs: bool) -> None:
        for engine, process in self.processes.items():
            servers = self.servers_of(engine) if process.poll() is None else []
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
            for pid in servers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for log in self.logs if show_logs else ():
            print(f"----- {log.stem} -----\n{log.read_text(errors='replace')[-3000:]}")


@contextlib.contextmanager
def running_agents(target: Target, kube: harness.Kubectl, tmp_path: Path,
                   request: pytest.FixtureRequest) -> Iterator[Agents]:
    """Agents in the test's namespace, stopped at its end (their logs shown if it failed)."""
    assert kube.namespace is not None
    started = Agents(target=target, namespace=kube.namespace, log_dir=tmp_path)
    try:
        yield started
    finally:
        started.stop_all(show_logs=request.node.stash.get(FAILED, False))


@pytest.fixture
def agents(target: Target, kube: harness.Kubectl, tmp_path: Path,
           request: pytest.FixtureRequest) -> Iterator[Agents]:
    if not target.embedded:
        pytest.skip("agents run on the host next to the embedded API server; on kind they "
                    "are Pods (deploy/demo)")
    with running_agents(target, kube, tmp_path, request) as started:
        yield started


def phase(kube: harness.Kubectl, engine: str) -> tuple[str, str, str]:
    status = kube.get("ie", engine).get("status") or {}
    return (str(status.get("phase")), str(status.get("model") or ""),
            str(status.get("message") or ""))


def test_agents_serve_what_is_assigned_and_a_silent_engine_is_replaced_not_released(
    kube: harness.Kubectl, operators: Operators, agents: Agents,
) -> None:
    kube.apply(*harness.engines("ie", 4), harness.model("chat", replicas=2, min_available=1))
    for name in ("ie-0", "ie-1", "ie-2"):  # ie-3 has no agent: nobody vouches for it
        agents.start(name)
    operators.start(flags=("--driver=agent", f"--heartbeat-timeout={HEARTBEAT_TIMEOUT}"))
    harness.wait_serving(kube, {"chat": 2}, timeout=30)
    serving = sorted(e["metadata"]["name"] for e in kube.items("ie")
                     if (e.get("status") or {}).get("phase") == "Serving")
    assert len(serving) == 2 and "ie-3" not in serving, serving
    for name in serving:  # what an agent reports is what its server really does
        status = kube.get("ie", name)["status"]
        assert status["endpoint"].startswith("http://127.0.0.1:")
        assert status["lastHeartbeatTime"]
        assert agents.servers_of(name), f"{name} reports Serving with no server process"
    # Heartbeats go to each engine's Lease, owned by the engine; the engine's status is
    # written only when something changes, so its resourceVersion stands still.
    engine = kube.get("ie", serving[0])
    lease = kube.get("lease", serving[0])
    assert lease["metadata"]["labels"] == {"capguard.dev/heartbeat": "inferenceengine"}
    [owner] = lease["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "InferenceEngine", serving[0], engine["metadata"]["uid"])
    renewed = lease["spec"]["renewTime"]
    time.sleep(1.5)  # three heartbeat intervals
    assert kube.get("lease", serving[0])["spec"]["renewTime"] > renewed
    assert kube.get("ie", serving[0])["metadata"]["resourceVersion"] == (
        engine["metadata"]["resourceVersion"])

    victim = serving[0]
    agents.kill(victim)
    killed_at = time.monotonic()
    # Out of service within the bound: the spare is bound in its place and serves.
    spare = next(n for n in ("ie-0", "ie-1", "ie-2") if n not in serving)
    harness.wait_until(lambda: kube.get("ie", spare)["spec"].get("modelRef") == "chat",
                       timeout=15, what=f"{spare} bound to chat in place of {victim}")
    replaced_after = time.monotonic() - killed_at
    harness.wait_until(lambda: phase(kube, spare)[:2] == ("Serving", "chat"), timeout=30,
                       what=f"{spare} serves chat")
    harness.wait_until(lambda: harness.serving(kube, "chat") == 2, timeout=30,
                       what="chat serving 2 units again")
    # Its status still says Serving (its agent's last word); Ready says nobody vouches.
    ready = harness.condition(kube.get("ie", victim), "Ready") or {}
    assert (ready.get("status"), ready.get("reason")) == ("Unknown", "HeartbeatExpired")
    # Silence counts from the last heartbeat, at most one interval (0.5 s) before the kill.
    assert replaced_after >= 2.0 - 0.5, "replaced before the heartbeat bound passed"
    # The silent engine keeps its binding: nothing drains what may still be serving.
    assert kube.get("ie", victim)["spec"].get("modelRef") == "chat"
    assert not kube.get("ie", "ie-3")["spec"].get("modelRef"), "an engine with no agent got work"

    # Its agent is back: it serves chat again, and the surplus leaves through the gate.
    agents.start(victim)
    harness.wait_until(lambda: sum(1 for e in kube.items("ie")
                                   if e["spec"].get("modelRef") == "chat") == 2,
                       timeout=30, what="chat back to two bound engines")
    harness.wait_serving(kube, {"chat": 2}, timeout=30)


def test_an_agent_that_was_not_heard_for_a_while_says_ready_again(
    kube: harness.Kubectl, operators: Operators, agents: Agents,
) -> None:
    """An agent frozen past the heartbeat bound (SIGSTOP: a stalled node, its server still
    up) is marked unheard; thawed, it renews its Lease, sees the mark on its engine and
    writes its status again, Ready as it is."""
    kube.apply(harness.engine("ie-0"), harness.model("chat", replicas=1, min_available=0))
    agent = agents.start("ie-0")
    operators.start(flags=("--driver=agent", f"--heartbeat-timeout={HEARTBEAT_TIMEOUT}"))
    harness.wait_serving(kube, {"chat": 1}, timeout=30)
    agent.send_signal(signal.SIGSTOP)
    try:
        harness.wait_until(
            lambda: (harness.condition(kube.get("ie", "ie-0"), "Ready") or {}).get("reason")
            == "HeartbeatExpired", timeout=15, what="ie-0 marked unheard")
        assert harness.serving(kube, "chat") == 0
    finally:
        agent.send_signal(signal.SIGCONT)
    harness.wait_until(
        lambda: (harness.condition(kube.get("ie", "ie-0"), "Ready") or {}).get("status")
        == "True", timeout=15, what="ie-0 Ready again, said by its agent")
    assert phase(kube, "ie-0")[:2] == ("Serving", "chat")
    harness.wait_serving(kube, {"chat": 1}, timeout=30)


# A leader election's Lease named like engine ie-0: no heartbeat label, no owner.
OTHER_LEASE = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "ie-0"},
               "spec": {"holderIdentity": "another-controller", "leaseDurationSeconds": 15,
                        "renewTime": "2026-01-01T00:00:00.000000Z"}}


def test_an_agent_never_writes_another_components_lease_of_its_engines_name(
    kube: harness.Kubectl, operators: Operators, agents: Agents,
) -> None:
    """A Lease named like the engine that is not its heartbeat (here a leader election's:
    no heartbeat label) is left as it is, so that component keeps its leader. The agent
    says so in its log and heartbeats on the engine's status, which keeps it heard."""
    kube.apply(harness.engine("ie-0"), harness.model("chat", replicas=1, min_available=0),
               OTHER_LEASE)
    before = kube.get("lease", "ie-0")
    agents.start("ie-0")
    operators.start(flags=("--driver=agent", f"--heartbeat-timeout={HEARTBEAT_TIMEOUT}"))
    harness.wait_serving(kube, {"chat": 1}, timeout=30)
    beat = kube.get("ie", "ie-0")["status"]["lastHeartbeatTime"]
    harness.wait_until(
        lambda: kube.get("ie", "ie-0")["status"]["lastHeartbeatTime"] != beat, timeout=10,
        what="ie-0's heartbeat renewed on its status")
    after = kube.get("lease", "ie-0")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["spec"]["holderIdentity"] == "another-controller"
    log = agents.logs[0].read_text()
    assert "Lease" in log and "is not the heartbeat of InferenceEngine ie-0" in log
    time.sleep(2.5)  # past the heartbeat bound: heard on its status all along
    assert harness.serving(kube, "chat") == 1


def test_an_agent_takes_over_the_lease_of_an_earlier_engine_of_its_name(
    kube: harness.Kubectl, operators: Operators, agents: Agents,
) -> None:
    """An engine deleted and created again keeps its name, not its uid, and the earlier
    engine's Lease lives until the garbage collector deletes it (here never: it names an
    engine this server never had). That Lease is no heartbeat of the new engine, nor
    another component's: the new engine's agent takes it over, making it its engine's
    (owner and holder), and the engine is heard through it."""
    earlier = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "ie-0", "labels": {"capguard.dev/heartbeat":
                                                       "inferenceengine"},
                            "ownerReferences": [{
                                "apiVersion": harness.API_VERSION, "kind": "InferenceEngine",
                                "name": "ie-0", "uid": "uid-of-an-earlier-ie-0"}]},
               "spec": {"holderIdentity": "earlier-agent", "leaseDurationSeconds": 2,
                        "renewTime": "2026-01-01T00:00:00.000000Z"}}
    kube.apply(harness.engine("ie-0"), harness.model("chat", replicas=1, min_available=0),
               earlier)
    agents.start("ie-0")
    operators.start(flags=("--driver=agent", f"--heartbeat-timeout={HEARTBEAT_TIMEOUT}"))
    harness.wait_serving(kube, {"chat": 1}, timeout=30)
    lease = kube.get("lease", "ie-0")
    [owner] = lease["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "InferenceEngine", "ie-0", kube.get("ie", "ie-0")["metadata"]["uid"])
    assert lease["spec"]["holderIdentity"] != "earlier-agent"
    assert "is the heartbeat of an earlier InferenceEngine ie-0" in agents.logs[0].read_text()
    time.sleep(2.5)  # past the heartbeat bound: heard through the Lease it took over
    ready = harness.condition(kube.get("ie", "ie-0"), "Ready") or {}
    assert (ready.get("status"), ready.get("reason")) == ("True", "Serving"), ready
    assert harness.serving(kube, "chat") == 1


class LeaseRace(harness.ReverseProxy):
    """Between an agent and the API server: before the agent's first request of
    ``method`` on Leases goes on, another component's Lease takes the name.

    - POST (the agent's create, after its read found none): another component creates a
      Lease of that name, so the create meets a 409.
    - PATCH (a renewal of the agent's own Lease): the agent's Lease is deleted and another
      component creates one of that name between two renewals."""

    def __init__(self, kubectl: harness.Kubectl, *, lease: dict[str, object],
                 directory: Path, method: str = "POST") -> None:
        self._kubectl, self._lease, self._method, self.raced = kubectl, lease, method, 0
        super().__init__(kubectl, directory=directory, name="lease-race")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if (request.method == self._method and "/leases" in request.path
                and not self.raced):
            self.raced += 1
            if self._method == "PATCH":
                await asyncio.to_thread(self._kubectl.run, "delete", "lease",
                                        str(self._lease["metadata"]["name"]))  # type: ignore[index]
            await asyncio.to_thread(self._kubectl.apply, self._lease)
        return await self.forward(request, body)


def test_a_lease_created_between_an_agents_read_and_its_create_is_read_before_written(
    kube: harness.Kubectl, operators: Operators, agents: Agents, tmp_path: Path,
) -> None:
    """The agent read no Lease, and its create met one that another component made
    meanwhile: it reads that Lease before it writes it, so it leaves it alone too."""
    kube.apply(harness.engine("ie-0"), harness.model("chat", replicas=1, min_available=0))
    with LeaseRace(kube, lease=OTHER_LEASE, directory=tmp_path) as race:
        agents.start("ie-0", flags=(f"--kubeconfig={race.kubeconfig}",))
        operators.start(flags=("--driver=agent", f"--heartbeat-timeout={HEARTBEAT_TIMEOUT}"))
        harness.wait_serving(kube, {"chat": 1}, timeout=30)
        assert race.raced == 1
        before = kube.get("lease", "ie-0")
        time.sleep(2.5)  # five heartbeat intervals, past the heartbeat bound
        after = kube.get("lease", "ie-0")
        assert after["spec"]["holderIdentity"] == "another-controller"
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
        assert "is not the heartbeat of InferenceEngine ie-0" in agents.logs[0].read_text()
        assert harness.serving(kube, "chat") == 1  # heard on its status all along


def test_a_lease_replaced_between_two_renewals_is_not_renewed(
    kube: harness.Kubectl, operators: Operators, agents: Agents, tmp_path: Path,
) -> None:
    """Between two renewals the agent's Lease is deleted and another component creates
    one of that name. The renewal carries the resourceVersion the agent last wrote, so
    it meets a 409 instead of writing that Lease; the agent reads it, and leaves it."""
    kube.apply(harness.engine("ie-0"), harness.model("chat", replicas=1, min_available=0))
    with LeaseRace(kube, lease=OTHER_LEASE, directory=tmp_path, method="PATCH") as race:
        agents.start("ie-0", flags=(f"--kubeconfig={race.kubeconfig}",))
        operators.start(flags=("--driver=agent", f"--heartbeat-timeout={HEARTBEAT_TIMEOUT}"))
        harness.wait_serving(kube, {"chat": 1}, timeout=30)
        harness.wait_until(lambda: race.raced == 1, timeout=10, what="a renewal raced")
        time.sleep(2.5)  # five heartbeat intervals, past the heartbeat bound
        after = kube.get("lease", "ie-0")
        assert after["spec"] == OTHER_LEASE["spec"], after  # never renewed by the agent
        assert "is not the heartbeat of InferenceEngine ie-0" in agents.logs[0].read_text()
        assert harness.serving(kube, "chat") == 1  # heard on its status all along


class HeldRenewal(harness.ReverseProxy):
    """Between an agent and the API server: once ``armed``, the agent's next renewal of its
    Lease gets no answer (held, then its connection dropped), as over a dead connection."""

    def __init__(self, kubectl: harness.Kubectl, *, directory: Path, hold: float) -> None:
        self.armed, self.held, self._hold = False, 0, hold
        super().__init__(kubectl, directory=directory, name="held-renewal")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.armed and request.method == "PATCH" and "/leases/" in request.path:
            self.armed, self.held = False, self.held + 1
            await asyncio.sleep(self._hold)
            if request.transport is not None:
                request.transport.close()
            return web.StreamResponse()
        return await self.forward(request, body)


def test_a_renewal_that_never_answers_is_given_up_and_the_engine_stays_heard(
    kube: harness.Kubectl, operators: Operators, agents: Agents, tmp_path: Path,
) -> None:
    """A renewal with no answer is given up after two heartbeat intervals and tried again
    at once: the engine is never silent for the operator's heartbeat bound (4 intervals),
    so it stays Ready and serving. Held for the client's 30 s request timeout instead, the
    renewal left the engine unheard and out of service."""
    kube.apply(harness.engine("ie-0"), harness.model("chat", replicas=1, min_available=0))
    with HeldRenewal(kube, directory=tmp_path, hold=20.0) as held:
        agents.start("ie-0", flags=(f"--kubeconfig={held.kubeconfig}",
                                    "--heartbeat-interval=1s"))
        operators.start(flags=("--driver=agent", "--heartbeat-timeout=4s"))
        harness.wait_serving(kube, {"chat": 1}, timeout=30)
        before = harness.condition(kube.get("ie", "ie-0"), "Ready") or {}
        assert before.get("status") == "True", before
        with chaos.Watcher(kube, directory=tmp_path) as watcher:  # every version written
            held.armed = True
            harness.wait_until(lambda: held.held == 1, timeout=10, what="a renewal held")
            time.sleep(8)  # twice the heartbeat bound
            seen = watcher.seen()
        readies = {((harness.condition(s.body, "Ready") or {}).get("status"),
                    (harness.condition(s.body, "Ready") or {}).get("reason"))
                   for s in seen if s.kind == "engine" and s.name == "ie-0"}
        assert readies == {("True", "Serving")}, readies  # never unheard, not even briefly
        assert harness.serving(kube, "chat") == 1
        assert "had no answer within 2s; trying again now" in agents.logs[0].read_text()


class RefusedReports(harness.ReverseProxy):
    """Between an agent and the API server: while ``armed``, the agent's status writes are
    answered 503 (an API server restarting); its reads and its watch go through."""

    def __init__(self, kubectl: harness.Kubectl, *, directory: Path) -> None:
        self.armed, self.refused = False, 0
        super().__init__(kubectl, directory=directory, name="refused-reports")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.armed and request.method == "PATCH" and request.path.endswith("/status"):
            self.refused += 1
            return web.json_response(
                {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "message": "the API server is restarting", "reason": "ServiceUnavailable",
                 "code": 503}, status=503)
        return await self.forward(request, body)


def test_a_report_the_api_refuses_is_written_once_it_answers_and_the_agent_lives_on(
    kube: harness.Kubectl, operators: Operators, agents: Agents, tmp_path: Path,
) -> None:
    """The engine is drained while the API server refuses the agent's status writes: the
    agent drains its server all the same, stays up (it used to exit, killing its server,
    on the first refused report), and writes where it is once the API answers."""
    kube.apply(harness.engine("ie-0"), harness.model("chat", replicas=1, min_available=0))
    with RefusedReports(kube, directory=tmp_path) as refusing:
        agent = agents.start("ie-0", flags=(f"--kubeconfig={refusing.kubeconfig}",))
        operators.start(flags=("--driver=agent", "--heartbeat-timeout=5s"))
        harness.wait_serving(kube, {"chat": 1}, timeout=30)
        server = agents.servers_of("ie-0")
        assert len(server) == 1, server
        refusing.armed = True
        kube.run("scale", "mc/chat", "--replicas=0")
        harness.wait_until(lambda: refusing.refused >= 1, timeout=15,
                           what="the drain's report refused")
        harness.wait_until(lambda: not agents.servers_of("ie-0"), timeout=15,
                           what="the server drained while the reports are refused")
        assert agent.poll() is None, agents.logs[0].read_text()[-3000:]
        harness.wait_until(lambda: refusing.refused >= 2, timeout=15,
                           what="the refused report tried again")
        assert phase(kube, "ie-0")[:2] == ("Serving", "chat")  # not written yet
        refusing.armed = False
        harness.wait_until(lambda: phase(kube, "ie-0")[0] == "Idle", timeout=45,
                           what="ie-0 reported Idle once the API answers")
        assert agent.poll() is None
        log = agents.logs[0].read_text()
        assert "Could not report ie-0 Draining" in log and "Traceback" not in log, log[-3000:]


def test_a_watch_whose_resource_version_expired_is_opened_from_now_not_polled(
    kube: harness.Kubectl, operators: Operators, agents: Agents, tmp_path: Path,
) -> None:
    """A real API server answers a watch from a resourceVersion older than its window with
    410 Expired (k8s-reference 081), as it would for an engine unchanged for a while or
    after it restarted, however often it is asked again from there. The agent then
    watches from resourceVersion 0 (the engine as it is, then its changes: 081), instead
    of reading the engine and watching from the same expired version every second."""
    kube.apply(harness.engine("ie-0"), harness.model("chat", replicas=1, min_available=0))
    with chaos.FaultProxy(kube, directory=tmp_path, name="agent", seed=5) as proxy:
        proxy.set(chaos.Faults(gone=1.0))  # every watch or list from a version: 410
        began = time.monotonic()
        agents.start("ie-0", flags=(f"--kubeconfig={proxy.kubeconfig}",))
        operators.start(flags=("--driver=agent", "--heartbeat-timeout=5s"))
        harness.wait_serving(kube, {"chat": 1}, timeout=30)
        time.sleep(3)
        engine = "/inferenceengines"
        seen = [r for r in proxy.requests(since=began) if engine in r.path]
        expired = [r for r in seen if r.watch and r.fault == "gone"]
        reads = [r for r in seen if not r.watch and r.method == "GET"]
        opened = [r for r in seen if r.watch and not r.fault]
    assert len(expired) == 1, [(r.query, r.fault) for r in expired]
    assert len(reads) == 1, [r.path for r in reads]  # its first read, not one a second
    assert opened and "resourceVersion=0&" in opened[0].query + "&", opened
    assert "has expired; watching from the engine as it is now" in \
        agents.logs[0].read_text()


def test_watches_that_end_at_once_are_backed_off_not_opened_in_a_loop(
    kube: harness.Kubectl, agents: Agents, tmp_path: Path,
) -> None:
    """A proxy that does not hold streams ends every watch at once with no event: the
    agent reads its engine and watches again after a second, not as fast as they end."""
    kube.apply(harness.engine("ie-0"))
    with chaos.FaultProxy(kube, directory=tmp_path, name="agent", seed=6) as proxy:
        proxy.set(chaos.Faults(end_watch=1.0))
        agents.start("ie-0", flags=(f"--kubeconfig={proxy.kubeconfig}",))
        harness.wait_until(lambda: phase(kube, "ie-0")[0] == "Idle", timeout=15,
                           what="ie-0 Idle, said by its agent")
        began = time.monotonic()
        time.sleep(4)
        watches = [r for r in proxy.requests(since=began) if r.watch]
    assert 2 <= len(watches) <= 8, len(watches)  # about one a second (without: thousands)
    assert "the stream ended at once with no event" in agents.logs[0].read_text()


def test_a_load_that_fails_is_failed_with_the_servers_reason(
    kube: harness.Kubectl, agents: Agents,
) -> None:
    kube.apply(harness.engine("ie-0"))
    crash = (f"{sys.executable} -c \"import sys; sys.stderr.write('CUDA out of memory "
             "loading {model}\\n'); sys.exit(3)\"")
    agents.start("ie-0", serve_command=crash, flags=("--retry-after=60s",))
    harness.wait_until(lambda: phase(kube, "ie-0")[0] == "Idle", timeout=15,
                       what="the agent reports its engine")
    kube.patch("ie", "ie-0", {"spec": {"modelRef": "chat"}})
    harness.wait_until(lambda: phase(kube, "ie-0")[0] == "Failed", timeout=15,
                       what="a crashing server makes the engine Failed")
    _, model, message = phase(kube, "ie-0")
    assert model == "chat"
    assert "exited with code 3" in message and "CUDA out of memory loading chat" in message
    ready = harness.condition(kube.get("ie", "ie-0"), "Ready") or {}
    assert (ready.get("status"), ready.get("reason")) == ("False", "Failed")


def test_an_unknown_placeholder_in_the_serve_command_is_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "capguard.cli", "engine", "--name", "e", "--serve-command",
         "vllm serve {modle} --port {port}"], capture_output=True, text=True, check=False,
        env=harness.clean_env(), timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "capguard engine: --serve-command has an unknown placeholder 'modle'; use {model}, "
        "{revision}, {port}, {units}, {engine}, {host}"]


@contextlib.contextmanager
def gateway(target: Target, namespace: str, log: Path) -> Iterator[str]:
    """`capguard gateway` for the namespace; yields its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "capguard.cli", "gateway", "--namespace", namespace,
         f"--kubeconfig={target.kubeconfig}", "--port=0", "--heartbeat-timeout=5s"],
        stdout=subprocess.PIPE, stderr=log.open("wb"), env=harness.clean_env())
    try:
        assert process.stdout is not None
        yield process.stdout.readline().decode().split()[-1]
    finally:
        process.terminate()
        process.wait(timeout=10)


def complete(url: str, model: str) -> int:
    """One completion through the gateway: its HTTP status."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{url}/v1/completions", data=f'{{"model": "{model}", "prompt": "hi"}}'.encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def in_flight_on(endpoint: str) -> float:
    """Requests a model server is answering now, from its /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"{endpoint}/metrics", timeout=5) as response:
        page = harness.MetricsPage.parse(response.read().decode())
    return page.total("capguard_model_server_requests_in_flight")


def test_a_reassigned_engine_drains_then_serves_its_new_model_only_once_loaded(
    kube: harness.Kubectl, agents: Agents, target: Target, tmp_path: Path,
) -> None:
    """The operator's part (a move from chat to code) played by kubectl: the requests in
    flight on chat all finish, chat has no capacity while the engine is away (503), and
    the gateway sends code requests to it only once its server is loaded."""
    from concurrent import futures

    assert kube.namespace is not None
    kube.apply(harness.engine("ie-0"))
    slow = (f"{sys.executable} -m capguard.serving.modelserver --model {{model}} "
            "--port {port} --units {units} --load-time 1.5s --latency 1.5s "
            "--concurrency-per-unit 8 --grace 5s")
    agents.start("ie-0", serve_command=slow, flags=("--drain-grace=6s",))
    kube.patch("ie", "ie-0", {"spec": {"modelRef": "chat"}})
    harness.wait_until(lambda: phase(kube, "ie-0")[:2] == ("Serving", "chat"), timeout=20,
                       what="ie-0 serving chat")
    with gateway(target, kube.namespace, tmp_path / "gateway.log") as url, \
            futures.ThreadPoolExecutor(max_workers=8) as pool:
        harness.wait_until(lambda: complete(url, "chat") == 200, timeout=15,
                           what="the gateway routes chat to ie-0")
        in_flight = [pool.submit(complete, url, "chat") for _ in range(6)]
        endpoint = kube.get("ie", "ie-0")["status"]["endpoint"]
        harness.wait_until(lambda: in_flight_on(endpoint) == 6, timeout=10,
                           what="all six requests on ie-0's server (each takes 1.5 s)")
        kube.patch("ie", "ie-0", {"spec": {"modelRef": "code"}})
        harness.wait_until(lambda: phase(kube, "ie-0")[0] == "Draining", timeout=10,
                           what="ie-0 draining chat")
        assert complete(url, "chat") == 503  # nobody else serves chat: no capacity
        assert [f.result() for f in in_flight] == [200] * 6  # the drain cut none of them
        served_while: list[str] = []
        while len(served_while) < 3:
            status = complete(url, "code")
            now = phase(kube, "ie-0")[0]
            if status == 200:
                served_while.append(now)
            else:
                assert status == 503, status
                assert now != "Serving" or served_while == [], now
            time.sleep(0.05)
    # A success means the engine said Serving by then (Serving is never left but by a move).
    assert served_while == ["Serving"] * 3, served_while
