"""make build-installer, deploy, install and run: the image given is the image deployed,
the installer is deploy/ in one file, and each target does what it says on a real API
server (the embedded one, which serves Namespaces and CRDs but runs no Pods)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import harness
from e2e.conftest import embedded_cluster

from .manifests import ROOT, by_kind, kustomize, operator_container, require_tool

CRDS = {"inferenceengines.capguard.dev", "modelcapacities.capguard.dev",
        "circuitbreakers.capguard.dev"}
DIGEST = "sha256:" + "0123456789abcdef" * 4


def _make(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    make = require_tool("make", install="apt-get install make")
    return subprocess.run([make, "--no-print-directory", *args], capture_output=True, text=True,
                          check=False, cwd=ROOT, env=env, timeout=120)


def _render(image: str) -> subprocess.CompletedProcess[str]:
    require_tool("kubectl", install="kubectl >= 1.28 with its built-in kustomize")
    return subprocess.run(["bash", str(ROOT / "hack" / "render.sh"), image], capture_output=True,
                          text=True, check=False, timeout=60)


def _documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _with_image(objects: list[dict[str, Any]], image: str) -> list[dict[str, Any]]:
    """`objects` with the operator's image replaced, to compare all but the image."""
    copied = yaml.safe_load(yaml.safe_dump(objects))
    for obj in by_kind(copied, "Deployment"):
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = image
    return list(copied)


@pytest.fixture(scope="module")
def installer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """make build-installer IMAGE=example.invalid/capguard:9.9.9, written outside the repo."""
    require_tool("kubectl", install="kubectl >= 1.28 with its built-in kustomize")
    path = tmp_path_factory.mktemp("dist") / "install.yaml"
    done = _make("build-installer", "IMAGE=example.invalid/capguard:9.9.9",
                 f"INSTALLER={path}")
    assert done.returncode == 0, done.stdout + done.stderr
    return path


def test_the_installer_is_deploy_in_one_file_with_the_image_given(installer: Path) -> None:
    objects = _documents(installer.read_text())
    crds = {o["metadata"]["name"] for o in by_kind(objects, "CustomResourceDefinition")}
    assert crds == CRDS
    assert operator_container(objects)["image"] == "example.invalid/capguard:9.9.9"
    deploy = kustomize(ROOT / "deploy")
    assert _with_image(objects, "x") == _with_image(deploy, "x"), "only the image differs"
    assert installer.read_text().startswith("# capguard: "), "it says what it is"


@pytest.mark.parametrize("image", [
    "capguard:0.1.0",
    "host:5000/team/capguard:1.2.3",
    f"localhost:5000/capguard@{DIGEST}",
    f"registry.example/capguard:1.2.3@{DIGEST}",
])
def test_the_deployed_image_is_exactly_the_image_given(image: str) -> None:
    done = _render(image)
    assert done.returncode == 0, done.stderr
    assert operator_container(_documents(done.stdout))["image"] == image


@pytest.mark.parametrize(("image", "named"), [
    ("host:5000/capguard", "no tag or digest"),
    ("Capguard:1", "'Capguard' is not an image name"),
    ("capguard:bad tag", "':bad tag' is not a tag"),
    ("capguard@md5:1", "'@md5:1' is not a digest"),
])
def test_a_bad_image_is_one_line_naming_it_and_exit_2(image: str, named: str) -> None:
    done = _render(image)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: IMAGE={image}") and named in line, line


def test_make_deploy_without_image_installs_what_apply_k_deploy_did() -> None:
    default = re.search(r"^IMAGE \?= (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert default, "the Makefile sets a default IMAGE"
    done = _render(default.group(1))
    assert done.returncode == 0, done.stderr
    assert _documents(done.stdout) == kustomize(ROOT / "deploy")


def test_make_deploy_applies_the_image_given() -> None:
    done = _make("--dry-run", "deploy", "IMAGE=host:5000/capguard:7")
    assert done.returncode == 0, done.stderr
    apply, rollout = done.stdout.splitlines()
    assert apply == "bash hack/render.sh 'host:5000/capguard:7' | kubectl apply --filename=-"
    assert "rollout status deployment/capguard-operator" in rollout


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[harness.Kubectl, dict[str, str]]]:
    """An embedded API server with no CRDs yet; its kubectl, and an environment whose
    KUBECONFIG points at it (the current context, as make's targets use)."""
    require_tool("kubectl", install="kubectl >= 1.28")
    with embedded_cluster(tmp_path, crds=None) as (kubectl, _):
        yield kubectl, {**harness.clean_env(), "KUBECONFIG": str(kubectl.kubeconfig)}


def _served_kinds(kubectl: harness.Kubectl) -> set[str]:
    lines = kubectl.run("api-resources", "--no-headers").stdout.splitlines()
    return {line.split()[-1] for line in lines}


def test_kubectl_apply_f_the_installer_creates_everything_the_server_serves(
    installer: Path, cluster: tuple[harness.Kubectl, dict[str, str]],
) -> None:
    kubectl, _ = cluster
    served = _served_kinds(kubectl)
    objects = _documents(installer.read_text())
    done = kubectl.run("apply", f"--filename={installer}", check=False)
    for obj in objects:
        name = obj["metadata"]["name"]
        if obj["kind"] in served:  # created; capguard-system existed already, as after make run
            applied = rf"^{obj['kind'].lower()}(\.\S+)?/{name} (created|configured)$"
            assert re.search(applied, done.stdout, re.MULTILINE), (name, done.stdout)
        else:  # refused for its kind alone, never for what it says
            assert re.search(rf'no matches for kind "{obj["kind"]}"', done.stderr), obj["kind"]
    errors = [x for x in done.stderr.splitlines() if x.startswith("resource mapping not found")]
    assert len(errors) == len([o for o in objects if o["kind"] not in served])
    assert {"Namespace", "CustomResourceDefinition"} <= served
    kubectl.run("wait", "--for=condition=Established", "--timeout=30s", *(
        f"customresourcedefinition/{name}" for name in CRDS))
    labels = kubectl.get("namespace", "capguard-system")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_make_install_installs_the_crds_and_nothing_else(
    cluster: tuple[harness.Kubectl, dict[str, str]],
) -> None:
    kubectl, env = cluster
    namespaces = {n["metadata"]["name"] for n in kubectl.items("namespaces")}
    config_maps = kubectl.run("get", "configmaps", "--all-namespaces", "--output=name").stdout
    done = _make("install", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert {c["metadata"]["name"] for c in kubectl.items("crd")} == CRDS
    assert {n["metadata"]["name"] for n in kubectl.items("namespaces")} == namespaces
    assert kubectl.run("get", "configmaps", "--all-namespaces",
                       "--output=name").stdout == config_maps
    done = _make("uninstall", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    harness.wait_until(lambda: not kubectl.items("crd"), timeout=30, what="the CRDs to go")


def test_make_run_runs_the_operator_on_the_deployed_lease(
    cluster: tuple[harness.Kubectl, dict[str, str]], tmp_path: Path,
) -> None:
    kubectl, env = cluster
    kubectl.run("apply", f"--filename={harness.CRDS}")
    # capguard-system exists (embedded_cluster makes it, as make deploy does): the Lease
    # is the deployed operator's, so the two could never act at once.
    log = (tmp_path / "run.log").open("wb")
    make = require_tool("make", install="apt-get install make")
    process = subprocess.Popen(
        [make, "--no-print-directory", "run",
         "ARGS=--metrics-host=127.0.0.1 --metrics-port=0 --identity=make-run"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        system = kubectl.in_namespace(harness.OPERATOR_NAMESPACE)
        harness.wait_until(
            lambda: system.run("get", "lease", harness.LEASE_NAME,
                               "--output=jsonpath={.spec.holderIdentity}",
                               check=False).stdout == "make-run",
            timeout=60, what="make run to hold the Lease in capguard-system")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()
    text = (tmp_path / "run.log").read_text(errors="replace")
    assert "Lease capguard-leader in capguard-system" in text, text[-2000:]
    assert "Released the lease capguard-leader" in text, text[-2000:]  # stopped, as Ctrl-C does
