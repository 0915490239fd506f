"""The real image in Docker, each Pod of deploy/ and deploy/demo/ as the kubelet would run
it (`container.Kubelet`): the operator's two replicas logging in with their service
account over TLS, electing a leader and reconciling the samples; the demo's eight engines
serving the models the operator binds them to, the gateway routing the load Job's
requests to them, through hack/kind-demo.sh's incident too; and the standby taking over
when the leader is killed.

The API server is the embedded one, on this machine's address on the test's Docker
network, as a cluster's serves: over TLS, each service account's token authenticated and
authorized by the manifests' RBAC; a request refused 401 or 403 fails the test. Skips
without a Docker daemon or without the image the manifests name (`make image-test` builds
both the image and, where no registry answers, a base).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from capguard import durations

from . import container, rbac
from .manifests import ROOT, by_kind, eventually, kustomize, require_tool, single

pytestmark = pytest.mark.slow

LEASE: Final = "capguard-leader"
SAMPLES: Final = "samples"
CAPGUARD_KINDS: Final = frozenset({"InferenceEngine", "ModelCapacity", "CircuitBreaker"})
REVISION: Final = "r2"  # what hack/kind-demo.sh bumps both models to
# Below Erlang's answered share at the floors: sampling noise and the swaps' own losses.
MARGIN: Final = 0.03


@functools.cache
def _kustomized(folder: str) -> str:
    return yaml.safe_dump_all(kustomize(ROOT / "deploy" / folder), sort_keys=False)


def _rendered(folder: str = "") -> list[dict[str, Any]]:
    """`kubectl kustomize deploy/FOLDER`, rendered once per run; a fresh copy each time."""
    return [doc for doc in yaml.safe_load_all(_kustomized(folder)) if doc]


class Cluster:
    """The embedded API server and the Kubelet that runs Pods against it."""

    def __init__(self, kubelet: container.Kubelet, kubeconfig: Path, audit: Path) -> None:
        self.kubelet, self.kubeconfig, self.audit = kubelet, kubeconfig, audit

    def requests(self) -> list[dict[str, Any]]:
        """Every request the API server answered so far (a watch when it opened)."""
        with self.audit.open() as lines:
            return [json.loads(line) for line in lines if line.strip()]

    def restarts(self) -> list[str]:
        """Restarts a kubelet would have made: a liveness (or startup) probe failing its
        failureThreshold times in a row."""
        return [f"{name}: {why}" for name, prober in self.kubelet.probers.items()
                for why in prober.restarts]

    def refused(self) -> list[str]:
        """Requests answered 401 or 403: a token not taken, or RBAC not allowing it."""
        return container.refused(self.requests())

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        kubectl = require_tool("kubectl", install="kubectl >= 1.28")
        done = subprocess.run([kubectl, f"--kubeconfig={self.kubeconfig}", *args],
                              input=stdin, capture_output=True, text=True, check=False,
                              timeout=30)
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done.stdout

    def apply(self, objects: list[dict[str, Any]], namespace: str) -> None:
        self.kubectl("apply", "-n", namespace, "-f", "-",
                     stdin=yaml.safe_dump_all(objects, sort_keys=False))

    def alive(self, name: str) -> None:
        """Fail at once, with its log, if the container stopped or was OOM-killed."""
        state = self.kubelet.state(name)
        if not state.get("Running") or state.get("OOMKilled"):
            pytest.fail(f"{name} stopped ({state}):\n{self.kubelet.logs(name)[-3000:]}",
                        pytrace=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    binary = container.docker()
    operator = single(_rendered(), "Deployment")
    (spec,) = operator["spec"]["template"]["spec"]["containers"]
    container.require_image(binary, spec["image"])
    folder = tmp_path_factory.mktemp("cluster")
    prefix = f"capguard-test-{os.getpid()}"
    with container.network(binary, prefix) as network:
        kubeconfig, audit = folder / "kubeconfig", folder / "audit.jsonl"
        ca, flags = container.security(folder, address=network.gateway)
        server = subprocess.Popen(
            [sys.executable, "-m", "capguard.localcluster", f"--host={network.gateway}",
             "--port=0", f"--crds={ROOT / 'crds'}", f"--kubeconfig={kubeconfig}",
             f"--audit-log={audit}", *flags],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert server.stdout is not None
            first = server.stdout.readline()
            assert "serving at https://" in first, f"the embedded API server: {first}"
            port = int(first.strip().rsplit(":", 1)[1].rstrip("/"))
            kubelet = container.Kubelet(
                binary=binary, network=network, prefix=prefix, api=(network.gateway, port),
                ca=ca, secrets=folder / "secrets", kubeconfig=kubeconfig)
            try:
                yield Cluster(kubelet, kubeconfig, audit)
            finally:
                kubelet.stop()
        finally:
            server.terminate()
            server.wait(timeout=10)


@pytest.fixture(scope="module")
def operators(cluster: Cluster) -> dict[str, str]:
    """The Deployment's replicas, running: Pod name -> address."""
    deployment = single(_rendered(), "Deployment")
    namespace = deployment["metadata"]["namespace"]
    cluster.kubectl("create", "namespace", namespace)
    cluster.apply([o for o in _rendered() if o["kind"] in container.ACCESS_KINDS], namespace)
    cluster.kubectl("create", "namespace", SAMPLES)
    cluster.kubectl("apply", "-k", str(ROOT / "deploy" / "samples"), "-n", SAMPLES)
    pods = {}
    for replica in range(deployment["spec"]["replicas"]):
        name = f"{deployment['metadata']['name']}-5d8f7c9b4-{'abcdefgh'[replica]}2k4q"
        ip = cluster.kubelet.network.address(replica)
        cluster.kubelet.start(deployment["spec"]["template"], name=name,
                              namespace=namespace, ip=ip)
        pods[name] = ip
    return pods


def _leader(cluster: Cluster, namespace: str) -> str:
    return cluster.kubectl("get", "lease", LEASE, "-n", namespace, "--ignore-not-found",
                           "-o", "jsonpath={.spec.holderIdentity}")


def _held(cluster: Cluster, namespace: str) -> str:
    """The Lease's holder, once it has one."""
    return str(eventually(lambda: _leader(cluster, namespace), timeout=60,
                          what=f"the Lease {LEASE} has a holder"))


def _operator_namespace() -> str:
    return str(single(_rendered(), "Deployment")["metadata"]["namespace"])


def _metrics_port() -> int:
    (spec,) = single(_rendered(), "Deployment")["spec"]["template"]["spec"][
        "containers"]
    (port,) = [p["containerPort"] for p in spec["ports"] if p["name"] == "metrics"]
    return int(port)


def test_the_operator_image_runs_as_deployed_and_logs_in_as_its_service_account(
    cluster: Cluster, operators: dict[str, str],
) -> None:
    port = _metrics_port()

    probers = [cluster.kubelet.probers[f"{cluster.kubelet.prefix}-{name}"] for name in operators]
    assert all(set(p.probes) == {"startup", "readiness", "liveness"} for p in probers)

    def ready() -> bool:
        for name in operators:
            cluster.alive(f"{cluster.kubelet.prefix}-{name}")
        return all(prober.ready for prober in probers)

    eventually(ready, timeout=60, what="both replicas pass their readiness probes (the "
               "Deployment's, after its startup probe)", logs=lambda: [
                   cluster.kubelet.logs(f"{cluster.kubelet.prefix}-{name}") for name in operators])
    namespace = _operator_namespace()
    leader = _held(cluster, namespace)
    assert leader in operators, leader

    def reconciled() -> bool:
        listed = cluster.kubectl(
            "get", "modelcapacities", "-n", SAMPLES, "-o",
            "jsonpath={range .items[*]}{.metadata.generation}={.status.observedGeneration} "
            "{end}")
        pairs = [pair.split("=") for pair in listed.split()]
        return bool(pairs) and all(seen == generation for generation, seen in pairs)

    eventually(reconciled, timeout=30,
                what="every sample ModelCapacity has status.observedGeneration")
    with urllib.request.urlopen(f"http://{operators[leader]}:{port}/metrics",
                                timeout=5) as response:
        text = response.read().decode()
    assert re.search(r"^capguard_leader 1\.0$", text, flags=re.MULTILINE), text[:2000]
    # A person's look from inside the Pod, as its service account: `kubectl exec`.
    done = subprocess.run([cluster.kubelet.binary, "exec", f"{cluster.kubelet.prefix}-{leader}",
                           "capguard", "status", "-A", "-o", "json"],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert {m["namespace"] for m in json.loads(done.stdout)["models"]} == {SAMPLES}
    account = "system:serviceaccount:{}:{}".format(
        namespace, single(_rendered(), "ServiceAccount")["metadata"]["name"])
    users = {r.get("user", {}).get("username") for r in cluster.requests()
             if rbac.OPERATOR_AGENTS.match(r["user_agent"])}
    assert users == {account}, f"the operator's requests came from {users}, not {account}"
    assert not cluster.refused(), "\n".join(cluster.refused())
    assert not cluster.restarts(), "\n".join(cluster.restarts())
    for name in operators:
        log = cluster.kubelet.logs(f"{cluster.kubelet.prefix}-{name}")
        assert "Traceback" not in log, log[-3000:]


@dataclasses.dataclass(frozen=True)
class Demo:
    """deploy/demo/'s objects applied and its engines and gateway running, every model
    serving its replicas."""

    objects: list[dict[str, Any]]  # deploy/demo/ rendered
    namespace: str
    containers: tuple[str, ...]  # the engines' and the gateway's
    replicas: dict[str, int]  # model -> spec.replicas
    first: int  # the address index of the demo's first Pod


@pytest.fixture(scope="module")
def demo(cluster: Cluster, operators: dict[str, str]) -> Demo:
    objects = _rendered("demo")
    namespace = single(objects, "Namespace")["metadata"]["name"]
    cluster.kubectl("create", "namespace", namespace)
    cluster.apply([o for o in objects
                   if o["kind"] in CAPGUARD_KINDS | container.ACCESS_KINDS], namespace)
    engines = single(objects, "StatefulSet")
    first = len(operators)
    names = []
    for ordinal in range(engines["spec"]["replicas"]):
        name = f"{engines['metadata']['name']}-{ordinal}"
        names.append(cluster.kubelet.start(
            engines["spec"]["template"], name=name, namespace=namespace,
            ip=cluster.kubelet.network.address(first + ordinal)))
    gateway = single(objects, "Deployment")
    service = single(objects, "Service")["metadata"]["name"]
    names.append(cluster.kubelet.start(
        gateway["spec"]["template"], name=f"{gateway['metadata']['name']}-7c9d5b8f6-q8x2m",
        namespace=namespace, ip=cluster.kubelet.network.address(first + 20),
        aliases=[service]))
    replicas = {m["metadata"]["name"]: m["spec"]["replicas"]
                for m in by_kind(objects, "ModelCapacity")}

    def serving() -> bool:
        for name in names:
            cluster.alive(name)
        listed = cluster.kubectl("get", "modelcapacities", "-n", namespace, "-o",
                                 "jsonpath={range .items[*]}{.metadata.name}={.status.serving} "
                                 "{end}")
        found = dict(pair.split("=") for pair in listed.split())
        return all(found.get(model) == str(count) for model, count in replicas.items())

    eventually(serving, timeout=240, what=f"every model serving its replicas: {replicas}")
    eventually(lambda: cluster.kubelet.probers[names[-1]].ready, timeout=30,
               what="the gateway passes its readiness probe (the Service would route to it)")
    return Demo(objects, namespace, tuple(names), replicas, first)


def _load(cluster: Cluster, demo: Demo, *, name: str, index: int, seconds: float) -> str:
    """The load Job's Pod, sending for `seconds`, at the index-th address past the demo's
    first; its container's name."""
    load = single(demo.objects, "Job")
    (spec,) = load["spec"]["template"]["spec"]["containers"]
    args = [re.sub(r"^--duration=.*$", f"--duration={seconds:.0f}s", arg)
            for arg in spec["args"]]
    return cluster.kubelet.start(load["spec"]["template"], name=name,
                                 namespace=demo.namespace,
                                 ip=cluster.kubelet.network.address(demo.first + index),
                                 args=args)


def _no_traceback(cluster: Cluster, names: Iterable[str]) -> None:
    """Each container alive and no Traceback in its log; no request refused (401, 403):
    the manifests' RBAC allows what the processes do; and no restart due by a probe."""
    for name in names:
        cluster.alive(name)
        assert "Traceback" not in cluster.kubelet.logs(name), cluster.kubelet.logs(name)[-3000:]
    assert not cluster.refused(), "\n".join(cluster.refused())
    assert not cluster.restarts(), "\n".join(cluster.restarts())


def test_the_demo_engines_serve_the_load_through_the_gateway(
    cluster: Cluster, demo: Demo,
) -> None:
    job = _load(cluster, demo, name="capguard-load-x7k2p", index=21, seconds=10)
    eventually(lambda: not cluster.kubelet.state(job).get("Running"), timeout=90,
                what="the load Job's container finishes")
    state = cluster.kubelet.state(job)
    output = cluster.kubelet.logs(job)
    assert state.get("ExitCode") == 0, output[-3000:]
    (summary,) = [json.loads(line)["summary"] for line in output.splitlines()
                  if line.startswith('{"summary"')]
    assert summary["sent"] > 0, summary
    assert summary["success_rate"] >= 0.97, output  # Erlang: 99.5 % (load.yaml)
    assert set(summary["models"]) == set(demo.replicas), summary
    _no_traceback(cluster, demo.containers)


def _answered_at_floor(demo: Demo, model: str) -> float:
    """The share of the load's requests for `model` a fleet at the model's floor answers:
    Erlang's loss formula, offered the load's rate times the stand-in's latency, on the
    floor's units times each unit's concurrency (load.yaml's arithmetic)."""
    (load,) = single(demo.objects, "Job")["spec"]["template"]["spec"]["containers"]
    (engine,) = single(demo.objects, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    serve = " ".join(engine["args"])
    (rate,) = [float(a.split("=")[2]) for a in load["args"] if a.startswith(f"--rate={model}=")]
    latency = durations.parse(_flag(serve, "latency"))
    (floor,) = [m["spec"]["minAvailable"] for m in by_kind(demo.objects, "ModelCapacity")
                if m["metadata"]["name"] == model]
    lost = 1.0
    for servers in range(1, floor * int(_flag(serve, "concurrency-per-unit")) + 1):
        lost = rate * latency * lost / (servers + rate * latency * lost)
    return 1.0 - lost


def _flag(command: str, name: str) -> str:
    found = re.search(rf"--{name} (\S+)", command)
    assert found, f"no --{name} in {command}"
    return found[1]


class _Incident:
    """The demo's fleet sampled about every half second while the incident plays: the
    fewest units each model served (its status.serving) and when each mark was passed."""

    def __init__(self, cluster: Cluster, demo: Demo) -> None:
        self.cluster, self.demo = cluster, demo
        self.fewest = dict(demo.replicas)
        self.marks: dict[str, float] = {}  # phase -> when it began (UNIX time)

    def mark(self, phase: str) -> None:
        self.marks[phase] = time.time()

    def until(self, done: Callable[[list[dict[str, Any]]], bool], *, timeout: float,
              what: str) -> None:
        """Sample until `done` holds of the listed models, engines and breakers."""
        deadline = time.monotonic() + timeout
        while True:
            listed = json.loads(self.cluster.kubectl(
                "get", "modelcapacities,inferenceengines,circuitbreakers", "-n",
                self.demo.namespace, "-o", "json"))["items"]
            for model in by_kind(listed, "ModelCapacity"):
                name, serving = model["metadata"]["name"], model.get("status", {}).get("serving")
                self.fewest[name] = min(self.fewest[name], serving or 0)
            if done(listed):
                return
            assert time.monotonic() < deadline, (
                f"within {timeout:.0f}s: {what}; fewest serving {self.fewest}\n"
                f"{json.dumps([o.get('status') for o in listed])[:3000]}")
            time.sleep(0.5)


def _rolled(listed: list[dict[str, Any]], *, replicas: dict[str, int], revision: str) -> bool:
    """Each model serves its replicas, every serving engine of it at `revision`."""
    for model, count in replicas.items():
        (status,) = [m.get("status", {}) for m in by_kind(listed, "ModelCapacity")
                     if m["metadata"]["name"] == model]
        engines = [e for e in by_kind(listed, "InferenceEngine")
                   if e.get("status", {}).get("phase") == "Serving"
                   and e["status"].get("model") == model]
        if (status.get("serving") != count
                or sum(e["spec"]["capacityUnits"] for e in engines) != count
                or any(e["status"].get("revision") != revision for e in engines)):
            return False
    return True


def _answered(log: str, marks: dict[str, float]) -> dict[str, dict[str, float]]:
    """The load's success rate in each phase (from its mark to the next, the last one
    ending the incident) and over all of them, per model and of all models, from its
    per-second JSON lines."""
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    (started,) = [line["started"] for line in lines if "started" in line]
    seconds = [line for line in lines if "model" in line]
    bounds = [(phase, at - started) for phase, at in marks.items()]
    windows = {phase: (begin, end)
               for (phase, begin), (_, end) in itertools.pairwise(bounds)}
    windows["all"] = (bounds[0][1], bounds[-1][1])

    models = {s["model"] for s in seconds}

    def rate(begin: float, end: float, model: str) -> float:
        window = [s for s in seconds if begin <= s["second"] < end
                  and model in (s["model"], "all")]
        sent = sum(s["sent"] for s in window)
        return round(sum(s["succeeded"] for s in window) / sent, 4) if sent else 0.0

    return {phase: {model: rate(*window, model) for model in sorted(models | {"all"})}
            for phase, window in windows.items()}


@pytest.mark.timeout(600)  # the pause past the threshold, and a rate-limited rollout
def test_the_incident_refuses_the_backlog_and_rolls_to_r2_above_the_floors_under_load(
    cluster: Cluster, operators: dict[str, str], demo: Demo,
) -> None:
    """hack/kind-demo.sh's march-4 incident on the running demo, the load sending: the
    breaker opened, both models bumped to r2 while it is open (the refreshes queue), kept
    open past its pauseThreshold, released. The backlog is refused as one batch (a
    BatchRefused Event), the models roll to r2 one engine at a time, never below a floor,
    and the load is answered at least as a fleet at its floors answers it, less a margin."""
    breaker = single(demo.objects, "CircuitBreaker")["metadata"]["name"]
    threshold = durations.parse_go(
        single(demo.objects, "CircuitBreaker")["spec"]["pauseThreshold"])
    before, pause, rollout = 20.0, threshold + 10.0, 300.0
    job = _load(cluster, demo, name="capguard-load-m4r9t", index=22,
                seconds=before + 60 + pause + rollout)
    incident = _Incident(cluster, demo)
    eventually(lambda: '"started"' in cluster.kubelet.logs(job), timeout=30,
                what="the load starts")
    incident.mark("before")
    incident.until(lambda _: time.time() > incident.marks["before"] + before,
                   timeout=before + 30, what="normal traffic")

    def patch(kind: str, name: str, spec: dict[str, Any]) -> None:
        cluster.kubectl("patch", kind, name, "-n", demo.namespace, "--type=merge",
                        f"--patch={json.dumps({'spec': spec})}")

    incident.mark("open")
    patch("circuitbreaker", breaker, {"open": True})
    incident.until(lambda listed: by_kind(listed, "CircuitBreaker")[0].get("status", {}).get(
        "state") == "Open", timeout=60, what=f"breaker {breaker} is Open")
    for model in demo.replicas:
        patch("modelcapacity", model, {"revision": REVISION})
    incident.until(lambda _: time.time() > incident.marks["open"] + pause,
                   timeout=pause + 30, what=f"breaker {breaker} open past its threshold")
    incident.mark("rollout")
    patch("circuitbreaker", breaker, {"open": False})
    incident.until(functools.partial(_rolled, replicas=demo.replicas, revision=REVISION),
                   timeout=rollout, what=f"every model serves {REVISION} at its replicas")
    incident.mark("end")
    took = incident.marks["end"] - incident.marks["rollout"]
    ended = incident.marks["end"] - incident.marks["before"]
    eventually(lambda: f'"second": {ended + 1:.0f},' in cluster.kubelet.logs(job), timeout=60,
                what="the load reports the last second of the incident")
    log = cluster.kubelet.logs(job)
    subprocess.run([cluster.kubelet.binary, "kill", job], capture_output=True, check=True)
    answered = _answered(log, incident.marks)
    measured = (f"fewest serving {incident.fewest}, answered {answered}, "
                f"all {REVISION} {took:.0f}s after the release")
    refused = cluster.kubectl(
        "get", "events", "-n", demo.namespace, "-o", "name",
        f"--field-selector=involvedObject.name={breaker},reason=BatchRefused")
    assert refused.split(), f"no BatchRefused Event on breaker {breaker}; {measured}"
    floors = {m["metadata"]["name"]: m["spec"]["minAvailable"]
              for m in by_kind(demo.objects, "ModelCapacity")}
    assert all(incident.fewest[m] >= floors[m] for m in floors), f"floors {floors}; {measured}"
    for model in demo.replicas:
        least = _answered_at_floor(demo, model) - MARGIN
        assert all(rates[model] >= least for rates in answered.values()), (
            f"{model}: at least {least:.3f} answered in each phase; {measured}")
    _no_traceback(cluster, [*demo.containers,
                            *(f"{cluster.kubelet.prefix}-{name}" for name in operators)])
    assert "Traceback" not in log, log[-3000:]


def test_the_standby_takes_over_when_the_leader_is_killed(
    cluster: Cluster, operators: dict[str, str],
) -> None:
    namespace = _operator_namespace()
    leader = _held(cluster, namespace)
    subprocess.run([cluster.kubelet.binary, "kill", "--signal=KILL",
                    f"{cluster.kubelet.prefix}-{leader}"], capture_output=True, check=True)
    (standby,) = set(operators) - {leader}
    eventually(lambda: _leader(cluster, namespace) == standby, timeout=60,
                what=f"{standby} holds the Lease after {leader} was killed")
    cluster.alive(f"{cluster.kubelet.prefix}-{standby}")


def _stop(cluster: Cluster, name: str, template: dict[str, Any]) -> tuple[float, int]:
    """`docker stop` as the kubelet stops a Pod: SIGTERM, then SIGKILL after the template's
    terminationGracePeriodSeconds. How long it took, and the exit code (137: killed)."""
    grace = int(template["spec"].get("terminationGracePeriodSeconds", 30))
    started = time.monotonic()
    subprocess.run([cluster.kubelet.binary, "stop", f"--time={grace}", name],
                   capture_output=True, check=True, timeout=grace + 30)
    return time.monotonic() - started, int(cluster.kubelet.state(name)["ExitCode"])


def test_a_stopped_engine_drains_and_exits_within_its_grace_period(
    cluster: Cluster, operators: dict[str, str],
) -> None:
    """capguard is PID 1 in its container: SIGTERM must reach the agent's handler (PID 1
    has no default one), the agent drains its model server and exits 0, not SIGKILLed."""
    demo = _rendered("demo")
    namespace = single(demo, "Namespace")["metadata"]["name"]
    listed = cluster.kubectl("get", "inferenceengines", "-n", namespace, "-o",
                             "jsonpath={range .items[*]}{.metadata.name}={.status.phase} {end}")
    serving = sorted(name for name, phase in (p.split("=") for p in listed.split())
                     if phase == "Serving")
    assert serving, listed
    engines = single(demo, "StatefulSet")
    took, code = _stop(cluster, f"{cluster.kubelet.prefix}-{serving[0]}",
                       engines["spec"]["template"])
    log = cluster.kubelet.logs(f"{cluster.kubelet.prefix}-{serving[0]}")
    assert code == 0, f"exit {code} after {took:.1f}s:\n{log[-3000:]}"
    assert "Traceback" not in log, log[-3000:]
    phase = cluster.kubectl("get", "inferenceengine", serving[0], "-n", namespace, "-o",
                            "jsonpath={.status.phase}")
    assert phase != "Serving", f"{serving[0]} still says Serving after its agent stopped"


def test_a_stopped_leader_exits_at_once_and_gives_its_lease_up(
    cluster: Cluster, operators: dict[str, str],
) -> None:
    namespace = _operator_namespace()
    leader = _held(cluster, namespace)
    deployment = single(_rendered(), "Deployment")
    took, code = _stop(cluster, f"{cluster.kubelet.prefix}-{leader}",
                       deployment["spec"]["template"])
    log = cluster.kubelet.logs(f"{cluster.kubelet.prefix}-{leader}")
    assert code == 0, f"exit {code} after {took:.1f}s:\n{log[-3000:]}"
    assert took < 15, f"{took:.1f}s to stop:\n{log[-3000:]}"
    assert _leader(cluster, namespace) == "", "the Lease is given up, not left to expire"
