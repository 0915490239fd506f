"""The image's runtime conditions, tested without Docker (see `pod.py` for how).

`capguard run` with the Deployment's args and env, as the Deployment's uid with no passwd
entry, the image's ENV, a read-only root and /tmp its only writable place, against an
embedded API server that serves HTTPS and enforces RBAC: it logs in with its service
account's token, deploy/'s RBAC applied with kubectl as to a cluster, and must become
Ready, take the Lease, reconcile the samples and serve /metrics with no request refused.
Then every other command a user may run in the container, and those that need an extra the
image does not install.
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from . import container, dockerfile, pod
from .manifests import (
    ROOT,
    downward_env,
    eventually,
    expand,
    operator_container,
    require_tool,
    security_context,
    single,
    writable_mounts,
)

POD_NAME: Final = "capguard-operator-6f9c8d7b5-x2k4q"
SAMPLES_NAMESPACE: Final = "samples"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except (urllib.error.URLError, ConnectionError) as error:
        return 0, str(error)


def _downward(rendered: list[dict[str, Any]]) -> dict[str, str]:
    """The container's env as the kubelet fills it in for pod POD_NAME."""
    return downward_env(operator_container(rendered), name=POD_NAME,
                        namespace=single(rendered, "Deployment")["metadata"]["namespace"])


@pytest.fixture(scope="module")
def the_pod(rendered: list[dict[str, Any]], capguard_wheel: Path,
            tmp_path_factory: pytest.TempPathFactory) -> pod.Pod:
    """The Deployment's conditions, as far as `pod.LOCK_DOWN` reproduces them."""
    spec = single(rendered, "Deployment")["spec"]["template"]["spec"]
    security = security_context(rendered)
    assert security["readOnlyRootFilesystem"] is True, "LOCK_DOWN makes every mount read-only"
    assert writable_mounts(spec) == ["/tmp"], "LOCK_DOWN has one writable place, /tmp"
    pod.require_isolation()
    stage = tmp_path_factory.mktemp("image")
    stage.chmod(0o755)
    bin_dir = pod.install(stage, wheel=capguard_wheel)
    return pod.Pod(stage=stage, hold=tmp_path_factory.mktemp("new-tmp"),
                   uid=security["runAsUser"], gid=security["runAsGroup"],
                   env={**_image_env(), **_downward(rendered)},
                   capguard=bin_dir / "capguard")


def _image_env() -> dict[str, str]:
    """The image's ENV, but PATH (it extends the base image's; commands run by path here)."""
    return {name: value for name, value in dockerfile.final_env().items() if "$" not in value}


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The embedded API server as a cluster's: HTTPS, tokens, RBAC enforced."""

    admin: Path  # the admin's kubeconfig
    operator: Path  # the operator's service account's, readable by the Pod's uid
    audit: Path

    def refused(self) -> list[str]:
        """Requests answered 401 or 403."""
        return container.refused(json.loads(line)
                                 for line in self.audit.read_text().splitlines() if line)


@pytest.fixture(scope="module")
def cluster(the_pod: pod.Pod, rendered: list[dict[str, Any]]) -> Iterator[Cluster]:
    """An embedded API server on loopback with the CRDs, serving as a cluster's does."""
    folder = the_pod.stage / "cluster"
    folder.mkdir()
    _, flags = container.security(folder, address="127.0.0.1")
    admin, audit = folder / "kubeconfig", folder / "audit.jsonl"
    server = subprocess.Popen(
        [sys.executable, "-m", "capguard.localcluster", "--host=127.0.0.1", "--port=0",
         f"--crds={ROOT / 'crds'}", f"--kubeconfig={admin}", f"--audit-log={audit}", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        assert "serving at https://" in first, f"the embedded API server did not start: {first}"
        # deploy/'s access, applied before its Pod starts, as to a cluster; then the token
        # a kubelet would mount (TokenRequest), in a kubeconfig in place of the mount
        account = single(rendered, "ServiceAccount")["metadata"]
        _kubectl(admin, "create", "namespace", account["namespace"])
        access = folder / "access.yaml"
        access.write_text(yaml.safe_dump_all(
            [o for o in rendered if o["kind"] in container.ACCESS_KINDS], sort_keys=False))
        _kubectl(admin, "apply", "-n", account["namespace"], "-f", str(access))
        operator = container.kubeconfig_as(admin, account["namespace"], account["name"])
        for path in (folder, *folder.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield Cluster(admin, operator, audit)
    finally:
        server.terminate()
        server.wait(timeout=10)


def _kubectl(kubeconfig: Path, *args: str) -> str:
    kubectl = require_tool("kubectl", install="kubectl >= 1.28")
    done = subprocess.run([kubectl, f"--kubeconfig={kubeconfig}", *args], capture_output=True,
                          text=True, check=False, timeout=30)
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


def _args(rendered: list[dict[str, Any]], *, metrics: int, kubeconfig: Path) -> list[str]:
    """The Deployment's args, $(VAR)s expanded as the kubelet does, on free ports, and a
    kubeconfig with the service account's token in place of its mounted token."""
    args = expand(operator_container(rendered)["args"], _downward(rendered))
    args = [re.sub(r"^(--metrics-port=)\d+$", rf"\g<1>{metrics}", arg) for arg in args]
    return [*args, f"--kubeconfig={kubeconfig}"]


def _samples_reconciled(kubeconfig: Path) -> bool:
    listed = _kubectl(kubeconfig, "get", "modelcapacities", "-n", SAMPLES_NAMESPACE,
                      "-o", "jsonpath={range .items[*]}{.metadata.generation}="
                      "{.status.observedGeneration} {end}")
    pairs = [pair.split("=") for pair in listed.split()]
    return bool(pairs) and all(seen == generation for generation, seen in pairs)


@pytest.mark.slow
def test_capguard_run_as_the_pod_runs_it(
    rendered: list[dict[str, Any]], the_pod: pod.Pod, cluster: Cluster, tmp_path: Path,
) -> None:
    kubeconfig = cluster.admin
    namespace = _downward(rendered)["POD_NAMESPACE"]
    _kubectl(kubeconfig, "create", "namespace", SAMPLES_NAMESPACE)
    _kubectl(kubeconfig, "apply", "-k", str(ROOT / "deploy" / "samples"),
             "-n", SAMPLES_NAMESPACE)
    metrics = _free_port()
    log = tmp_path / "capguard-run.log"
    process = the_pod.start([str(the_pod.capguard), *_args(
        rendered, metrics=metrics, kubeconfig=cluster.operator)], log=log)

    def alive_and(check: Callable[[], bool]) -> Callable[[], bool]:
        def checked() -> bool:
            if process.poll() is not None:
                pytest.fail(f"capguard run exited with {process.returncode}:\n"
                            f"{log.read_text()[-3000:]}", pytrace=False)
            return check()
        return checked

    lease = ("get", "lease", "capguard-leader", "-n", namespace, "--ignore-not-found",
             "-o", "jsonpath={.spec.holderIdentity}")
    try:
        eventually(alive_and(lambda: _get(f"http://127.0.0.1:{metrics}/readyz")[0] == 200),
                    timeout=30, what="/readyz answers 200 (Ready)")
        assert _get(f"http://127.0.0.1:{metrics}/livez")[0] == 200
        eventually(alive_and(lambda: _kubectl(kubeconfig, *lease) == POD_NAME),
                    timeout=20, what=f"the Lease capguard-leader is held by {POD_NAME}")
        eventually(alive_and(lambda: _samples_reconciled(kubeconfig)), timeout=20,
                    what="every sample ModelCapacity has status.observedGeneration")
        status, text = _get(f"http://127.0.0.1:{metrics}/metrics")
        assert status == 200, text
        assert re.search(r"^capguard_leader 1\.0$", text, flags=re.MULTILINE), text[:2000]
        assert re.search(r'^capguard_model_desired_units\{.*model="llama-70b-chat".*\} 8\.0$',
                         text, flags=re.MULTILINE), text[:2000]
    finally:
        process.terminate()
        process.wait(timeout=30)
    output = log.read_text()
    assert process.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert cluster.refused() == [], "deploy/'s RBAC did not allow what the operator did"


@pytest.mark.parametrize("argv", [
    ["--version"], ["--help"], ["run", "--help"], ["status", "--help"], ["demo", "--help"],
    ["engine", "--help"], ["gateway", "--help"], ["load", "--help"],
    ["model-server", "--help"],
], ids=" ".join)
def test_every_command_runs_as_the_pod_runs_it(the_pod: pod.Pod, argv: list[str]) -> None:
    done = the_pod.run([str(the_pod.capguard), *argv])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


@pytest.mark.parametrize(("argv", "extras"), [
    (["simulate", "--list"], "console"),
    (["simulate", "--json", "--plot", "/tmp/timeline.png"], "console and plot"),
    (["localcluster", "--help"], "localcluster"),
    (["demo"], "demo"),
    (["status", "-A"], "console"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else value)
def test_a_command_the_image_lacks_an_extra_for_says_which(
    the_pod: pod.Pod, argv: list[str], extras: str,
) -> None:
    """The image installs the base requirements only (the lock): the simulator, its plot
    and the embedded API server are extras, and a command that needs one says so in one
    line, as in the image, rather than failing on an import."""
    done = the_pod.run([str(the_pod.capguard), *argv])
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stderr.startswith(f"capguard {argv[0]}: needs the {extras} extra"), done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-3000:]


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_capguard_status_prints_json_and_yaml_as_the_pod_runs_it(
    the_pod: pod.Pod, cluster: Cluster, output: str,
) -> None:
    """The tables need the console extra; `-o json` and `-o yaml` do not, so a person may
    `kubectl exec` into the operator's Pod and read the fleet as data, as its service
    account."""
    done = the_pod.run([str(the_pod.capguard), "status", f"--kubeconfig={cluster.operator}",
                        "-A", "-o", output])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    document = json.loads(done.stdout) if output == "json" else yaml.safe_load(done.stdout)
    assert {"models", "breakers", "pools"} <= set(document), document


def test_the_restricted_process_is_locked_down(the_pod: pod.Pod, cluster: Cluster) -> None:
    """What the tests above run under: no passwd entry, the image's ENV and the Pod's env
    alone, writes only to /tmp."""
    python = str(the_pod.capguard.parent / "python")
    probe = (
        "import os, pwd, sys\n"
        "def writable(path):\n"
        "    try:\n"
        "        open(os.path.join(path, '.probe'), 'w').close()\n"
        "    except OSError:\n"
        "        return False\n"
        "    return True\n"
        "try:\n"
        "    pwd.getpwuid(os.getuid())\n"
        "    entry = True\n"
        "except KeyError:\n"
        "    entry = False\n"
        # Python itself sets LC_CTYPE when the locale is C (PEP 538).
        "print(os.getuid(), os.getgid(), os.getgroups(), entry, sorted(set(os.environ) - "
        "{'LC_CTYPE'}))\n"
        "print([p for p in sys.argv[1:] if writable(p)])\n"
        "import capguard\n"
        "print(capguard.__file__)\n"
    )
    places = ["/", "/tmp", "/dev/shm", str(the_pod.stage), str(cluster.operator.parent),
              str(ROOT)]
    done = the_pod.run([python, "-c", probe, *places])
    assert done.returncode == 0, done.stderr
    identity, writable, imported = done.stdout.splitlines()
    assert identity == f"{the_pod.uid} {the_pod.gid} [] False {sorted(the_pod.env)}"
    assert writable == "['/tmp']"
    assert imported.startswith(str(the_pod.stage)), "capguard comes from the wheel"
