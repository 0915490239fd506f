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
- unless `automountServiceAccountToken: false`, the service account's token, CA and
  namespace where the kubelet mounts them, and KUBERNETES_SERVICE_HOST and _PORT: the
  process logs in as in a cluster, over TLS, to the API server behind `TlsFront`.

What it does not do: schedule, restart, probe, or enforce RBAC (the embedded API server
does not authorize).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import re
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import pytest

from .manifests import downward_env, expand

SECRETS: Final = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN: Final = "capguard-test-service-account-token"
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


class TlsFront:
    """TLS in front of the embedded API server (plain HTTP), as a real one serves: each
    connection's first request must carry the service account's bearer token, or the
    connection is answered 401 and closed (`refused` counts them)."""

    def __init__(self, *, host: str, upstream: tuple[str, int], cert: Path, key: Path):
        self.host, self.upstream = host, upstream
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.port = 0
        self.accepted = self.refused = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> TlsFront:
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(asyncio.start_server(
            self._serve, self.host, 0, ssl=self.context), self._loop).result(timeout=10)
        self.port = server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        if f"authorization: bearer {TOKEN}".encode() not in head.lower():
            self.refused += 1
            writer.write(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n"
                         b"connection: close\r\n\r\n")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        up_writer.write(head)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@dataclasses.dataclass(frozen=True)
class Kubelet:
    """Starts the Pods of templates as containers; `stop` removes every one it started."""

    binary: str
    network: Network
    prefix: str  # container names start with it: several runs never meet
    api: tuple[str, int]  # the TLS front, as KUBERNETES_SERVICE_HOST and _PORT
    ca: Path
    secrets: Path  # a folder per namespace: token, ca.crt, namespace
    started: list[str] = dataclasses.field(default_factory=list)

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
            docker += ["--volume", f"{self._secrets(namespace)}:{SECRETS}:ro",
                       "--env", f"KUBERNETES_SERVICE_HOST={self.api[0]}",
                       "--env", f"KUBERNETES_SERVICE_PORT={self.api[1]}"]
        for key, value in env.items():
            docker += ["--env", f"{key}={value}"]
        docker += [container["image"], *argv]
        # Removed by `stop` even if the run fails: Docker may have created it all the same.
        self.started.append(f"{self.prefix}-{name}")
        done = subprocess.run(docker, capture_output=True, text=True, check=False, timeout=60)
        assert done.returncode == 0, f"docker run {name}: {done.stderr}"
        return f"{self.prefix}-{name}"

    def _secrets(self, namespace: str) -> Path:
        folder = self.secrets / namespace
        if not folder.exists():
            folder.mkdir(parents=True)
            (folder / "token").write_text(TOKEN)
            (folder / "namespace").write_text(namespace)
            shutil.copy(self.ca, folder / "ca.crt")
            for path in (folder, *folder.iterdir()):
                path.chmod(0o755 if path.is_dir() else 0o644)
        return folder

    def state(self, container: str) -> dict[str, Any]:
        done = subprocess.run([self.binary, "inspect", "--format", "{{json .State}}",
                               container], capture_output=True, text=True, check=True)
        return dict(json.loads(done.stdout))

    def logs(self, container: str) -> str:
        done = subprocess.run([self.binary, "logs", container], capture_output=True,
                              text=True, check=False)
        return done.stdout + done.stderr

    def stop(self) -> None:
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
