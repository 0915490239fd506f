"""The image run as a kubelet runs it, with Docker: the real image, not the wheel.

Each Pod of a rendered manifest becomes one container (`Kubelet.start`) on a Docker
network of the test's own: its own address, as a Pod has, and the network's DNS answers
the names given as aliases (a Service's name). From the Pod template it takes:

- `securityContext` (the Pod's, then the container's): the numeric user and group,
  `readOnlyRootFilesystem` (`--read-only`), `allowPrivilegeEscalation: false`
  (`no-new-privileges`), `capabilities.drop: [ALL]`; `runAsNonRoot` is checked as the
  kubelet checks it (a uid, not 0);
- each emptyDir mount: a tmpfs of its `sizeLimit`, the only writable places;
- `resources.limits`: memory (the cgroup limit that OOM-kills) and CPU;
- `env`, the downward API's `metadata.name`, `metadata.namespace` and `status.podIP`
  filled in, and `args` with `$(VAR)` expanded from it;
- unless `automountServiceAccountToken: false`, its service account's (`serviceAccountName`,
  else `default`) own token, the CA and the namespace where the kubelet mounts them, and
  KUBERNETES_SERVICE_HOST and _PORT: the process logs in as in a cluster, over TLS, to
  the embedded API server, which issued the token (TokenRequest, as a kubelet asks for
  it), authenticates it as its service account and authorizes it by RBAC (`security`: the
  manifests' Roles and bindings, applied with kubectl as to a cluster), as a real one does;
- the httpGet probes (`Prober`): startup, then readiness and liveness, each on its period
  with its timeout; where liveness fails `failureThreshold` times in a row, the kubelet
  would have restarted the container, and `Prober.restarts` says when and why.

What it does not do: schedule, or restart (a test asserts no restart was due instead).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from capguard.localcluster import authz

from .manifests import downward_env, expand, require_tool

SECRETS: Final = "/var/run/secrets/kubernetes.io/serviceaccount"
_UNITS: Final = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}


def docker() -> str:
    """The docker command, or skip saying what is missing."""
    found = shutil.which("docker")
    if found is None:
        pytest.skip("Docker is not installed: the image runs in containers here")
    done = subprocess.run([found, "info", "--format", "{{.ServerVersion}}"],
                          capture_output=True, text=True, check=False, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"no Docker daemon answers: {done.stderr.strip()[:200]}")
    return found


def require_image(binary: str, image: str) -> None:
    done = subprocess.run([binary, "image", "inspect", image], capture_output=True,
                          check=False, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"no image {image} in Docker: `make image` builds it (on a machine "
                    "that reaches no registry, `make image-test` builds a base first)")


def quantity(value: str | int) -> int:
    """A Kubernetes quantity in bytes (memory) or, for CPU, in millicores via `cpus`."""
    text = str(value)
    found = re.fullmatch(r"(\d+)([KMG]i?|k)?", text)
    assert found, f"a quantity this helper does not read: {text!r}"
    return int(found[1]) * _UNITS.get(found[2] or "", 1)


def cpus(value: str | int) -> str:
    text = str(value)
    return str(int(text[:-1]) / 1000) if text.endswith("m") else text


@dataclasses.dataclass(frozen=True)
class Network:
    name: str
    subnet: ipaddress.IPv4Network
    gateway: str  # this machine's address on the network

    def address(self, index: int) -> str:
        """The index-th address past the first hundred (Docker hands out the low ones)."""
        return str(self.subnet.network_address + 100 + index)


@contextlib.contextmanager
def network(binary: str, name: str) -> Iterator[Network]:
    """A bridge network on a subnet Docker picks as free, made again with that subnet
    given (only then may a container be given its address, as a Pod's is known to it)."""
    def inspect() -> dict[str, str]:
        found = json.loads(subprocess.run(
            [binary, "network", "inspect", name], capture_output=True, text=True,
            check=True).stdout)[0]["IPAM"]["Config"][0]
        return dict(found)

    subprocess.run([binary, "network", "rm", name], capture_output=True, check=False)
    subprocess.run([binary, "network", "create", name], capture_output=True, check=True)
    picked = inspect()
    subprocess.run([binary, "network", "rm", name], capture_output=True, check=True)
    subprocess.run([binary, "network", "create", f"--subnet={picked['Subnet']}",
                    f"--gateway={picked['Gateway']}", name], capture_output=True, check=True)
    try:
        yield Network(name, ipaddress.IPv4Network(picked["Subnet"]), picked["Gateway"])
    finally:
        subprocess.run([binary, "network", "rm", name], capture_output=True, check=False)


def certificates(folder: Path, *, address: str) -> tuple[Path, Path, Path]:
    """A CA, and a serving certificate it signs for `address`: (ca.crt, server.crt, .key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: it makes the API server's test certificate")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, capture_output=True, check=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
        "ca.crt", "-days", "1", "-subj", "/CN=capguard-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
        "server.csr", "-subj", "/CN=kube-apiserver")
    (folder / "san.cnf").write_text(f"subjectAltName=IP:{address}\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "san.cnf")
    return folder / "ca.crt", folder / "server.crt", folder / "server.key"


# What a manifest grants access with: applied before its Pods start, as to a cluster.
ACCESS_KINDS: Final = frozenset({"ServiceAccount", *authz.RBAC_KINDS})


def token_request(kubeconfig: Path, namespace: str, account: str) -> str:
    """A token of the ServiceAccount, from the API server's TokenRequest API (`kubectl
    create token`), as a kubelet gets the one it mounts: a Pod of an account that is not
    there does not start."""
    kubectl = require_tool("kubectl", install="kubectl >= 1.28")
    done = subprocess.run([kubectl, f"--kubeconfig={kubeconfig}", "create", "token", account,
                           "-n", namespace], capture_output=True, text=True, check=False,
                          timeout=30)
    assert done.returncode == 0, (f"no token for ServiceAccount {account} in {namespace}: "
                                  f"a Pod of it would not start: {done.stderr}")
    return done.stdout.strip()


def kubeconfig_as(admin: Path, namespace: str, account: str) -> Path:
    """A kubeconfig like the admin's (next to it), with a token of the ServiceAccount from
    `token_request` in place of the admin's: what a Pod of the account logs in with."""
    config = yaml.safe_load(admin.read_text())
    config["users"][0]["user"]["token"] = token_request(admin, namespace, account)
    path = admin.with_name(f"kubeconfig-{namespace}-{account}")
    path.write_text(yaml.safe_dump(config))
    return path


def refused(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """The audited requests answered 401 or 403: a token not taken, or RBAC not allowing."""
    return [f"{r.get('user', {}).get('username')} {r['method']} {r['path']}?"
            f"{r.get('query', '')}: {r['code']}" for r in records if r["code"] in (401, 403)]


def security(folder: Path, *, address: str) -> tuple[Path, list[str]]:
    """The embedded API server's flags to serve as a cluster's does: HTTPS with a
    certificate for `address` that the mounted CA signs, and RBAC authorization by the
    Roles and bindings applied to it (`ACCESS_KINDS`); service accounts log in with the
    tokens it issues (`token_request`). Returns the CA and the flags."""
    ca, cert, key = certificates(folder, address=address)
    chain = folder / "chain.crt"  # the kubeconfig the server writes trusts what it serves
    chain.write_bytes(cert.read_bytes() + ca.read_bytes())
    return ca, [f"--tls-cert-file={chain}", f"--tls-private-key-file={key}",
                "--authorization-mode=RBAC"]


@dataclasses.dataclass(frozen=True)
class Probe:
    """One httpGet probe of a container, as its manifest gives it (the kubelet's defaults
    where it is silent)."""

    kind: str  # startup, readiness or liveness
    path: str
    port: int
    period: float
    timeout: float
    failure_threshold: int

    @classmethod
    def of(cls, container: Mapping[str, Any]) -> dict[str, Probe]:
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
        found = {}
        for kind in ("startup", "readiness", "liveness"):
            probe = container.get(f"{kind}Probe")
            if probe is None:
                continue
            assert "httpGet" in probe, f"a {kind} probe this helper does not run: {probe}"
            port = probe["httpGet"]["port"]
            assert isinstance(port, int) or port in ports, (
                f"the {kind} probe's port {port!r} is no port of the container: {ports}")
            found[kind] = cls(kind, probe["httpGet"].get("path", "/"),
                              port if isinstance(port, int) else ports[port],
                              float(probe.get("periodSeconds", 10)),
                              float(probe.get("timeoutSeconds", 1)),
                              int(probe.get("failureThreshold", 3)))
        return found

    def once(self, ip: str) -> str | None:
        """Probe once: None where it succeeded (2xx or 3xx within the timeout), else why."""
        try:
            with urllib.request.urlopen(f"http://{ip}:{self.port}{self.path}",
                                        timeout=self.timeout) as response:
                code = int(response.status)
        except urllib.error.HTTPError as error:
            code = int(error.code)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            return f"{type(error).__name__}: {error}"
        return None if 200 <= code < 400 else f"HTTP {code}"


@dataclasses.dataclass
class Prober:
    """A container's probes, each on its period in a thread, as the kubelet runs them:
    the startup probe until it first succeeds, then readiness and liveness. Counts only
    while the container runs (a test stops and kills some on purpose)."""

    ip: str
    probes: Mapping[str, Probe]
    running: Callable[[], bool]
    started: float | None = None  # when the startup probe (or the first probe) succeeded
    ready: bool = False
    restarts: list[str] = dataclasses.field(default_factory=list)  # when and why, each
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)

    def start(self) -> Prober:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        begun = time.monotonic()
        due = {kind: begun for kind in self.probes}
        failures = dict.fromkeys(self.probes, 0)
        while not self._stop.is_set():
            now = time.monotonic()
            for kind, probe in self.probes.items():
                starting = "startup" in self.probes and self.started is None
                if now < due[kind] or (kind == "startup") != starting:
                    continue
                due[kind] = now + probe.period
                failed = probe.once(self.ip)
                if failed is not None and not self.running():
                    continue  # stopped or killed: the kubelet's restart is not the question
                failures[kind] = failures[kind] + 1 if failed else 0
                if failed is None and self.started is None:
                    self.started = now - begun
                if kind == "readiness":
                    self.ready = failed is None or (self.ready
                                                    and failures[kind] < probe.failure_threshold)
                if failures[kind] >= probe.failure_threshold and kind != "readiness":
                    self.restarts.append(f"{now - begun:.0f}s after start: {kind} probe "
                                         f"{probe.path} failed {failures[kind]} times: {failed}")
                    failures[kind] = 0
            self._stop.wait(0.2)


@dataclasses.dataclass(frozen=True)
class Kubelet:
    """Starts the Pods of templates as containers; `stop` removes every one it started."""

    binary: str
    network: Network
    prefix: str  # container names start with it: several runs never meet
    api: tuple[str, int]  # the API server, as KUBERNETES_SERVICE_HOST and _PORT
    ca: Path
    secrets: Path  # a folder per service account: token, ca.crt, namespace
    kubeconfig: Path  # the admin's: the kubelet asks for each Pod's token with it
    started: list[str] = dataclasses.field(default_factory=list)
    probers: dict[str, Prober] = dataclasses.field(default_factory=dict)  # by container

    def start(self, template: Mapping[str, Any], *, name: str, namespace: str, ip: str,
              aliases: Sequence[str] = (), args: Sequence[str] | None = None) -> str:
        """Run the Pod `name` of a Pod template at `ip`; ``args``: in place of its own
        (already expanded). Returns the container's name."""
        spec = template["spec"]
        (container,) = spec["containers"]
        env = downward_env(container, name=name, namespace=namespace, ip=ip)
        argv = expand(container.get("args", []), env) if args is None else list(args)
        security = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
        docker = [self.binary, "run", "--detach", "--name", f"{self.prefix}-{name}",
                  "--hostname", name, "--network", self.network.name, "--ip", ip,
                  *(f"--network-alias={alias}" for alias in aliases),
                  *_security(security), *_writable(spec, container),
                  *_limits(container.get("resources", {}).get("limits", {}))]
        if spec.get("automountServiceAccountToken", True):
            account = spec.get("serviceAccountName") or "default"
            docker += ["--volume", f"{self._secrets(namespace, account)}:{SECRETS}:ro",
                       "--env", f"KUBERNETES_SERVICE_HOST={self.api[0]}",
                       "--env", f"KUBERNETES_SERVICE_PORT={self.api[1]}"]
        for key, value in env.items():
            docker += ["--env", f"{key}={value}"]
        docker += [container["image"], *argv]
        # Removed by `stop` even if the run fails: Docker may have created it all the same.
        self.started.append(f"{self.prefix}-{name}")
        done = subprocess.run(docker, capture_output=True, text=True, check=False, timeout=60)
        assert done.returncode == 0, f"docker run {name}: {done.stderr}"
        probes = Probe.of(container)
        if probes:
            self.probers[f"{self.prefix}-{name}"] = Prober(
                ip=ip, probes=probes, running=lambda: bool(
                    self.state(f"{self.prefix}-{name}").get("Running"))).start()
        return f"{self.prefix}-{name}"

    def _secrets(self, namespace: str, account: str) -> Path:
        folder = self.secrets / namespace / account
        if not folder.exists():
            folder.mkdir(parents=True)
            (folder / "token").write_text(token_request(self.kubeconfig, namespace, account))
            (folder / "namespace").write_text(namespace)
            shutil.copy(self.ca, folder / "ca.crt")
            for path in (folder, *folder.iterdir()):
                path.chmod(0o755 if path.is_dir() else 0o644)
        return folder

    def state(self, container: str) -> dict[str, Any]:
        """Docker's State of the container; empty once it is removed (a prober may ask
        while `stop` removes it)."""
        done = subprocess.run([self.binary, "inspect", "--format", "{{json .State}}",
                               container], capture_output=True, text=True, check=False)
        if done.returncode != 0 and "no such" in done.stderr.lower():
            return {}
        assert done.returncode == 0, f"docker inspect {container}: {done.stderr}"
        return dict(json.loads(done.stdout))

    def logs(self, container: str) -> str:
        done = subprocess.run([self.binary, "logs", container], capture_output=True,
                              text=True, check=False)
        return done.stdout + done.stderr

    def stop(self) -> None:
        for prober in self.probers.values():
            prober.stop()
        for name in self.started:
            subprocess.run([self.binary, "rm", "--force", name], capture_output=True,
                           check=False)


def _security(context: Mapping[str, Any]) -> list[str]:
    uid, gid = context.get("runAsUser"), context.get("runAsGroup")
    if context.get("runAsNonRoot"):
        assert isinstance(uid, int) and uid != 0, "runAsNonRoot needs a numeric non-root uid"
    found = [] if uid is None else ["--user", f"{uid}:{gid if gid is not None else uid}"]
    if context.get("readOnlyRootFilesystem"):
        found.append("--read-only")
    if context.get("allowPrivilegeEscalation") is False:
        found += ["--security-opt", "no-new-privileges"]
    for capability in (context.get("capabilities") or {}).get("drop", []):
        found += ["--cap-drop", capability]
    return found


def _writable(spec: Mapping[str, Any], container: Mapping[str, Any]) -> list[str]:
    empty = {v["name"]: v["emptyDir"] for v in spec.get("volumes", []) if "emptyDir" in v}
    found = []
    for mount in container.get("volumeMounts", []):
        if mount["name"] in empty:
            size = empty[mount["name"]].get("sizeLimit")
            options = "rw,mode=1777" + (f",size={quantity(size)}" if size else "")
            found += ["--tmpfs", f"{mount['mountPath']}:{options}"]
    return found


def _limits(limits: Mapping[str, Any]) -> list[str]:
    found = []
    if "memory" in limits:
        found += ["--memory", str(quantity(limits["memory"]))]
    if "cpu" in limits:
        found += ["--cpus", cpus(limits["cpu"])]
    return found
