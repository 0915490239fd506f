"""What a user types: the real `kubectl` against the embedded server.

Each test works in a namespace of its own on one server shared by the module, so they
run in any order. kubectl gets the server's kubeconfig through KUBECONFIG in its own
environment and a discovery cache folder of the module's, never the user's.

Expected outputs are kubectl's own wording against a real cluster (kubectl prints the
Status `message` of a refusal after "Error from server (Reason):").
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, Final

import pytest
import yaml

from capguard import localcluster

REPO: Final = pathlib.Path(__file__).resolve().parents[2]
CRDS: Final = REPO / "crds"
SAMPLES: Final = REPO / "deploy" / "samples"
INVALID_SAMPLES: Final = sorted((SAMPLES / "invalid").glob("*.yaml"))
WIDGET_CRD: Final = REPO.parent / "shared" / "k8s-reference" / "widget-crd.yaml"
CRD_NAMES: Final = ("inferenceengines.capguard.dev", "modelcapacities.capguard.dev",
                    "circuitbreakers.capguard.dev")
MODELS: Final = ("bge-large-embed", "llama-70b-chat", "mistral-7b-instruct")
ENGINES: Final = tuple(f"{pool}-{index}" for pool in ("h100-a", "l40s-b") for index in range(6))
KUBECTL: Final = shutil.which("kubectl")
DEFAULT_TIMEOUT: Final = 30.0

pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.skipif(KUBECTL is None, reason="kubectl is not on PATH: these tests drive "
                                               "the real client against the embedded server"),
]

Result = subprocess.CompletedProcess[str]


# ---- driving kubectl ------------------------------------------------------------------------

class KubectlFailed(AssertionError):
    pass


@dataclasses.dataclass(frozen=True)
class Kubectl:
    kubeconfig: pathlib.Path
    cache_dir: pathlib.Path

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), **(extra or {})}

    def argv(self, args: Sequence[str], *, namespace: str | None) -> list[str]:
        assert KUBECTL is not None
        flags = ["--cache-dir", str(self.cache_dir)]
        if namespace is not None:
            flags += ["--namespace", namespace]
        return [KUBECTL, *flags, *args]

    def run(self, *args: str, namespace: str | None = None, stdin: str | None = None,
            check: bool = True, env: dict[str, str] | None = None,
            timeout: float = DEFAULT_TIMEOUT) -> Result:
        """Run kubectl to completion; with `check`, a failure shows what it printed."""
        result = subprocess.run(self.argv(args, namespace=namespace), input=stdin,
                                capture_output=True, text=True, env=self.env(env),
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise KubectlFailed(describe(result))
        return result

    def fail(self, *args: str, namespace: str | None = None, stdin: str | None = None) -> Result:
        """Run kubectl expecting a refusal; returns what it said."""
        result = self.run(*args, namespace=namespace, stdin=stdin, check=False)
        if result.returncode == 0:
            raise KubectlFailed("kubectl was expected to fail:\n" + describe(result))
        return result

    def json(self, *args: str, namespace: str | None = None) -> Any:
        return json.loads(self.run(*args, "-o", "json", namespace=namespace).stdout)

    def start(self, *args: str, namespace: str | None = None) -> Background:
        """Start a long-running kubectl (`get -w`, a waiting `delete`)."""
        process = subprocess.Popen(self.argv(args, namespace=namespace), env=self.env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return Background(process)


class Background:
    """A kubectl running in the background, its stdout lines read as they are printed."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for_line(self, pattern: str, *, timeout: float = 10.0) -> str:
        """The next line matching the regular expression `pattern`."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"kubectl printed no line matching {pattern!r} within {timeout} s;"
                             f" it printed {self.seen!r}, stderr {self._stderr()!r}")

    def _stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return "(still running)"
        return self.process.stderr.read()

    def finish(self, *, timeout: float = DEFAULT_TIMEOUT) -> Result:
        """Wait for kubectl to exit on its own."""
        returncode = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        stderr = self.process.stderr.read() if self.process.stderr else ""
        return subprocess.CompletedProcess(self.process.args, returncode,
                                           "".join(line + "\n" for line in self.seen), stderr)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def describe(result: Result) -> str:
    return (f"$ {' '.join(str(arg) for arg in result.args)}\nexit {result.returncode}\n"
            f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}")


def rows(text: str) -> list[dict[str, str]]:
    """`kubectl get` output as dicts keyed by header, cut at the header's column starts
    (kubectl pads every cell to its column; a missing printer column value is blank)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    starts = [match.start() for match in re.finditer(r"\S+", lines[0])]
    names = lines[0].split()
    ends: list[int | None] = [*starts[1:], None]
    return [{name: line[start:end].strip() for name, start, end in zip(names, starts, ends,
                                                                         strict=True)}
            for line in lines[1:]]


def by_name(text: str) -> dict[str, dict[str, str]]:
    return {row["NAME"]: row for row in rows(text)}


# ---- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster() -> Iterator[localcluster.ThreadedCluster]:
    # No --crds: installing them with `kubectl apply -f crds/` is part of what is tested.
    with localcluster.LocalCluster.start_in_thread() as running:
        yield running


@pytest.fixture(scope="module")
def kubectl(cluster: localcluster.ThreadedCluster,
            tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    return Kubectl(kubeconfig=cluster.kubeconfig_path,
                   cache_dir=tmp_path_factory.mktemp("kubectl-cache"))


@dataclasses.dataclass(frozen=True)
class CrdInstall:
    applied: Result
    waited: Result


@pytest.fixture(scope="module")
def crds(kubectl: Kubectl) -> CrdInstall:
    applied = kubectl.run("apply", "-f", str(CRDS))
    waited = kubectl.run("wait", "--for", "condition=established", "--timeout=20s",
                         *(f"crd/{name}" for name in CRD_NAMES))
    return CrdInstall(applied=applied, waited=waited)


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kubectl: Kubectl, crds: CrdInstall) -> str:
    # Readable and unique: the test's name, cut short, and a hash of its full node id.
    readable = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:44].strip("-")
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]
    name = f"{readable}-{digest}"
    kubectl.run("create", "namespace", name)
    return name


@pytest.fixture
def fleet(kubectl: Kubectl, namespace: str) -> str:
    """A namespace holding the sample fleet (three models, twelve engines, one breaker)."""
    kubectl.run("apply", "-f", str(SAMPLES), namespace=namespace)
    return namespace


# ---- installing CRDs and samples ------------------------------------------------------------

def test_apply_crds_then_wait_for_established(kubectl: Kubectl, crds: CrdInstall) -> None:
    for name in CRD_NAMES:
        assert f"customresourcedefinition.apiextensions.k8s.io/{name} created" in (
            crds.applied.stdout)
        assert f"customresourcedefinition.apiextensions.k8s.io/{name} condition met" in (
            crds.waited.stdout)
    again = kubectl.run("apply", "-f", str(CRDS))
    assert again.stdout.count(" unchanged") == len(CRD_NAMES), again.stdout
    listed = by_name(kubectl.run("get", "crd").stdout)
    assert set(CRD_NAMES) <= set(listed)
    # the default table convertor's Created At: the time itself, not an age
    for line in kubectl.run("get", "crd", "--no-headers").stdout.splitlines():
        assert re.fullmatch(r"\S+ +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", line), line


def test_apply_samples_creates_then_leaves_unchanged_then_configures(
        kubectl: Kubectl, namespace: str) -> None:
    first = kubectl.run("apply", "-f", str(SAMPLES), namespace=namespace).stdout
    for model in MODELS:
        assert f"modelcapacity.capguard.dev/{model} created" in first
    for engine in ENGINES:
        assert f"inferenceengine.capguard.dev/{engine} created" in first
    assert "circuitbreaker.capguard.dev/assistant created" in first

    second = kubectl.run("apply", "-f", str(SAMPLES), namespace=namespace).stdout
    assert second.count(" unchanged") == len(MODELS) + len(ENGINES) + 1, second
    assert "created" not in second and "configured" not in second

    changed = (SAMPLES / "modelcapacities.yaml").read_text().replace("replicas: 8",
                                                                     "replicas: 10")
    third = kubectl.run("apply", "-f", "-", namespace=namespace, stdin=changed).stdout
    assert "modelcapacity.capguard.dev/llama-70b-chat configured" in third
    assert "modelcapacity.capguard.dev/mistral-7b-instruct unchanged" in third
    model = kubectl.json("get", "mc", "llama-70b-chat", namespace=namespace)
    assert model["spec"]["replicas"] == 10
    assert model["metadata"]["generation"] == 2


def test_delete_f_removes_what_apply_f_created(kubectl: Kubectl, fleet: str) -> None:
    deleted = kubectl.run("delete", "-f", str(SAMPLES), namespace=fleet).stdout
    assert deleted.count(" deleted") == len(MODELS) + len(ENGINES) + 1, deleted
    left = kubectl.run("get", "ie,mc,cb", namespace=fleet)
    assert left.stdout == ""
    assert f"No resources found in {fleet} namespace." in left.stderr


def test_apply_k_uses_the_kustomization(kubectl: Kubectl, namespace: str) -> None:
    applied = kubectl.run("apply", "-k", str(SAMPLES), namespace=namespace).stdout
    assert applied.count(" created") == len(MODELS) + len(ENGINES) + 1, applied


def test_diff_shows_a_pending_change_and_changes_nothing(kubectl: Kubectl, fleet: str) -> None:
    changed = (SAMPLES / "modelcapacities.yaml").read_text().replace("replicas: 8",
                                                                     "replicas: 10")
    diff = kubectl.run("diff", "-f", "-", namespace=fleet, stdin=changed, check=False)
    assert diff.returncode == 1, describe(diff)   # 1: differences found
    assert "-  replicas: 8\n+  replicas: 10\n" in diff.stdout
    assert "-  generation: 1\n+  generation: 2\n" in diff.stdout
    same = kubectl.run("diff", "-f", str(SAMPLES / "modelcapacities.yaml"), namespace=fleet)
    assert same.stdout == ""
    assert kubectl.json("get", "mc", "llama-70b-chat", namespace=fleet)["spec"]["replicas"] == 8


def test_a_server_dry_run_validates_and_stores_nothing(kubectl: Kubectl, fleet: str) -> None:
    changed = (SAMPLES / "modelcapacities.yaml").read_text().replace("replicas: 8",
                                                                     "replicas: 10")
    dry = kubectl.run("apply", "--dry-run=server", "-f", "-", namespace=fleet, stdin=changed)
    assert "modelcapacity.capguard.dev/llama-70b-chat configured (server dry run)" in dry.stdout
    assert kubectl.json("get", "mc", "llama-70b-chat", namespace=fleet)["spec"]["replicas"] == 8
    refused = kubectl.fail("create", "--dry-run=server", "-f",
                           str(SAMPLES / "invalid" / "mc-negative-replicas.yaml"),
                           namespace=fleet)
    assert "spec.replicas" in refused.stderr


def test_apply_of_a_list_from_get_o_yaml(kubectl: Kubectl, fleet: str) -> None:
    # A `kind: List` is validated on the client against OpenAPI v2 as protobuf, the only
    # form kubectl asks for; so are kinds the v3 document lacks.
    listed = kubectl.run("get", "mc,cb", "-o", "yaml", namespace=fleet).stdout
    assert yaml.safe_load(listed)["kind"] == "List"
    again = kubectl.run("apply", "-f", "-", namespace=fleet, stdin=listed).stdout
    assert again.count("configured") + again.count("unchanged") == len(MODELS) + 1, again
    plain = yaml.safe_load(listed)
    for item in plain["items"]:
        item["metadata"] = {"name": item["metadata"]["name"]}
        item.pop("status", None)
    copy = fleet + "-copy"
    kubectl.run("create", "namespace", copy)
    copied = kubectl.run("apply", "-f", "-", namespace=copy, stdin=yaml.safe_dump(plain)).stdout
    assert copied.count(" created") == len(MODELS) + 1, copied
    plain["items"][0]["spec"]["bogus"] = 1
    refused = kubectl.fail("apply", "-f", "-", namespace=copy, stdin=yaml.safe_dump(plain))
    assert 'unknown field "bogus" in dev.capguard.v1alpha1.' in refused.stderr
    assert "error validating data: ValidationError(ModelCapacity.spec)" in refused.stderr


def test_create_of_a_kind_the_server_does_not_serve(kubectl: Kubectl, namespace: str) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    refused = kubectl.fail("create", "-f", "-", namespace=namespace, stdin=json.dumps(pod))
    assert 'no matches for kind "Pod" in version "v1"' in refused.stderr, refused.stderr
    assert "openapi" not in refused.stderr


def test_server_side_apply_creates_and_updates(kubectl: Kubectl, namespace: str) -> None:
    path = SAMPLES / "circuitbreaker.yaml"
    first = kubectl.run("apply", "--server-side", "-f", str(path), namespace=namespace)
    assert "circuitbreaker.capguard.dev/assistant serverside-applied" in first.stdout
    changed = path.read_text().replace("maxBatchAfterPause: 3", "maxBatchAfterPause: 5")
    kubectl.run("apply", "--server-side", "-f", "-", namespace=namespace, stdin=changed)
    breaker = kubectl.json("get", "cb", "assistant", namespace=namespace)
    assert breaker["spec"]["maxBatchAfterPause"] == 5
    assert breaker["metadata"]["generation"] == 2


# ---- reading ----------------------------------------------------------------------------------

def test_get_prints_the_printer_columns(kubectl: Kubectl, fleet: str) -> None:
    output = kubectl.run("get", "mc", namespace=fleet).stdout
    header = output.splitlines()[0].split()
    assert header == ["NAME", "DESIRED", "SERVING", "FLOOR", "DRIFT", "AVAILABLE%", "READY",
                      "AGE"]
    table = by_name(output)
    assert sorted(table) == sorted(MODELS)
    assert table["llama-70b-chat"]["DESIRED"] == "8"
    assert table["mistral-7b-instruct"]["DESIRED"] == "4"
    assert re.fullmatch(r"\d+s", table["llama-70b-chat"]["AGE"])

    engines = rows(kubectl.run("get", "ie", namespace=fleet).stdout)
    assert len(engines) == len(ENGINES)
    assert {row["POOL"] for row in engines} == {"h100-a", "l40s-b"}


def test_get_shows_the_ready_condition_as_deployments_show_ready(
        kubectl: Kubectl, namespace: str) -> None:
    kubectl.run("apply", "-f", str(SAMPLES / "modelcapacities.yaml"), namespace=namespace)
    assert by_name(kubectl.run("get", "mc", namespace=namespace).stdout)[
        "llama-70b-chat"]["READY"] == ""  # no status yet: a blank cell, as kubectl prints
    conditions = [
        {"type": "Available", "status": "True", "reason": "FloorHeld",
         "message": "8 of 8 units serving", "lastTransitionTime": "2024-01-02T03:04:05Z"},
        {"type": "Ready", "status": "False", "reason": "Progressing",
         "message": "6 of 8 units serving", "lastTransitionTime": "2024-01-02T03:04:05Z"}]
    kubectl.run("patch", "mc", "llama-70b-chat", "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": {"conditions": conditions}}), namespace=namespace)
    table = by_name(kubectl.run("get", "mc", namespace=namespace).stdout)
    assert table["llama-70b-chat"]["READY"] == "False"  # the Ready one, not the first


def test_get_wide_adds_the_priority_columns(kubectl: Kubectl, fleet: str) -> None:
    wide = kubectl.run("get", "mc", "-o", "wide", namespace=fleet).stdout
    assert wide.splitlines()[0].split() == ["NAME", "DESIRED", "SERVING", "FLOOR", "DRIFT",
                                            "AVAILABLE%", "READY", "PRIORITY", "AGE"]
    assert by_name(wide)["llama-70b-chat"]["PRIORITY"] == "100"
    engines = kubectl.run("get", "ie", "-o", "wide", namespace=fleet).stdout.splitlines()[0]
    assert "UNITS" in engines.split()
    plain = kubectl.run("get", "ie", namespace=fleet).stdout.splitlines()[0]
    assert "UNITS" not in plain.split()


def test_get_yaml_and_json_show_the_stored_object(kubectl: Kubectl, fleet: str) -> None:
    as_yaml = yaml.safe_load(kubectl.run("get", "mc", "mistral-7b-instruct", "-o", "yaml",
                                         namespace=fleet).stdout)
    assert as_yaml["apiVersion"] == "capguard.dev/v1alpha1"
    assert as_yaml["kind"] == "ModelCapacity"
    metadata = as_yaml["metadata"]
    assert metadata["namespace"] == fleet and metadata["generation"] == 1
    assert {"uid", "resourceVersion", "creationTimestamp"} <= set(metadata)
    assert as_yaml["spec"]["minAvailable"] == 3 and as_yaml["spec"]["maxUnavailable"] == "25%"

    listed = kubectl.json("get", "mc", namespace=fleet)
    assert listed["kind"] == "List"
    assert sorted(item["metadata"]["name"] for item in listed["items"]) == sorted(MODELS)
    assert {item["kind"] for item in listed["items"]} == {"ModelCapacity"}
    engine = kubectl.json("get", "ie", "h100-a-0", namespace=fleet)
    assert engine["spec"]["capacityUnits"] == 2


def test_get_several_types_a_category_and_every_name(kubectl: Kubectl, fleet: str) -> None:
    several = kubectl.run("get", "ie,mc,cb", "-o", "name", namespace=fleet).stdout.split()
    expected = sorted([f"inferenceengine.capguard.dev/{name}" for name in ENGINES]
                      + [f"modelcapacity.capguard.dev/{name}" for name in MODELS]
                      + ["circuitbreaker.capguard.dev/assistant"])
    assert sorted(several) == expected
    plain = kubectl.run("get", "ie,mc,cb", namespace=fleet).stdout
    tables = [block.splitlines() for block in plain.split("\n\n") if block.strip()]
    assert [table[0].split()[:2] for table in tables] == [
        ["NAME", "MODEL"], ["NAME", "DESIRED"], ["NAME", "STATE"]]
    assert "inferenceengine.capguard.dev/h100-a-0" in tables[0][1]
    assert tables[2][1].startswith("circuitbreaker.capguard.dev/assistant ")
    category = kubectl.run("get", "capguard", "-o", "name", namespace=fleet).stdout.split()
    assert sorted(category) == expected
    for spelling in ("mc", "modelcapacity", "modelcapacities",
                     "modelcapacities.capguard.dev", "modelcapacities.v1alpha1.capguard.dev"):
        names = kubectl.run("get", spelling, "-o", "name", namespace=fleet).stdout.split()
        assert sorted(names) == sorted(f"modelcapacity.capguard.dev/{name}"
                                       for name in MODELS), spelling


def test_get_by_label_and_field_selector(kubectl: Kubectl, fleet: str) -> None:
    online = kubectl.run("get", "mc", "-l", "capguard.dev/tier=online", "-o", "name",
                         namespace=fleet).stdout.split()
    assert sorted(online) == ["modelcapacity.capguard.dev/llama-70b-chat",
                              "modelcapacity.capguard.dev/mistral-7b-instruct"]
    not_online = kubectl.run("get", "mc", "-l", "capguard.dev/tier notin (online)", "-o",
                             "name", namespace=fleet).stdout.split()
    assert not_online == ["modelcapacity.capguard.dev/bge-large-embed"]
    h100 = by_name(kubectl.run("get", "ie", "-l", "capguard.dev/pool in (h100-a)",
                               namespace=fleet).stdout)
    assert sorted(h100) == [f"h100-a-{index}" for index in range(6)]
    one = kubectl.run("get", "ie", "--field-selector", "metadata.name=l40s-b-3", "-o", "name",
                      namespace=fleet).stdout.split()
    assert one == ["inferenceengine.capguard.dev/l40s-b-3"]


def test_get_custom_columns_sorted_and_label_columns(kubectl: Kubectl, fleet: str) -> None:
    output = kubectl.run("get", "mc", "--sort-by=.spec.priority", "-o",
                         "custom-columns=NAME:.metadata.name,PRIORITY:.spec.priority",
                         namespace=fleet).stdout
    assert [(row["NAME"], row["PRIORITY"]) for row in rows(output)] == [
        ("bge-large-embed", "10"), ("mistral-7b-instruct", "50"), ("llama-70b-chat", "100")]
    labelled = by_name(kubectl.run("get", "mc", "-L", "capguard.dev/tier",
                                   namespace=fleet).stdout)
    assert labelled["bge-large-embed"]["TIER"] == "batch"
    jsonpath = kubectl.run("get", "ie", "h100-a-0", "-o", "jsonpath={.spec.capacityUnits}",
                           namespace=fleet).stdout
    assert jsonpath == "2"


def test_get_all_namespaces_adds_the_namespace_column(kubectl: Kubectl, fleet: str) -> None:
    output = kubectl.run("get", "cb", "--all-namespaces").stdout
    assert output.splitlines()[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert [row["NAME"] for row in rows(output) if row["NAMESPACE"] == fleet] == ["assistant"]


def test_get_watch_prints_a_line_for_each_change(kubectl: Kubectl, fleet: str) -> None:
    watching = kubectl.start("get", "mc", "--watch", namespace=fleet)
    try:
        watching.wait_for_line(r"^NAME\s+DESIRED")
        for _ in MODELS:
            watching.wait_for_line(r"^\S+\s+\d+")
        kubectl.run("patch", "mc", "bge-large-embed", "--type=merge",
                    "-p", '{"spec":{"replicas":7}}', namespace=fleet)
        line = watching.wait_for_line(r"^bge-large-embed\s")
        assert line.split()[1] == "7"
        kubectl.run("delete", "mc", "mistral-7b-instruct", namespace=fleet)
        watching.wait_for_line(r"^mistral-7b-instruct\s")
        assert watching.process.poll() is None, "kubectl get -w ended on its own"
    finally:
        watching.stop()


def test_watch_output_events_shows_event_types(kubectl: Kubectl, fleet: str) -> None:
    watching = kubectl.start("get", "cb", "--watch-only", "--output-watch-events",
                             namespace=fleet)
    try:
        time.sleep(0.5)   # --watch-only prints nothing for what exists: let the watch open
        kubectl.run("create", "-f", "-", namespace=fleet, stdin=yaml.safe_dump(
            {"apiVersion": "capguard.dev/v1alpha1", "kind": "CircuitBreaker",
             "metadata": {"name": "second"}, "spec": {"open": True}}))
        assert watching.wait_for_line(r"second").split()[0] == "ADDED"
        kubectl.run("delete", "cb", "second", namespace=fleet)
        assert watching.wait_for_line(r"second").split()[0] == "DELETED"
    finally:
        watching.stop()


def test_wait_for_a_status_condition(kubectl: Kubectl, fleet: str) -> None:
    waiting = kubectl.start("wait", "--for=condition=Available", "--timeout=20s",
                            "mc/llama-70b-chat", namespace=fleet)
    try:
        time.sleep(0.3)
        condition = {"type": "Available", "status": "True", "reason": "FloorHeld",
                     "message": "8 of 8 units serving", "observedGeneration": 1,
                     "lastTransitionTime": "2024-01-02T03:04:05Z"}
        kubectl.run("patch", "mc", "llama-70b-chat", "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"conditions": [condition]}}), namespace=fleet)
        finished = waiting.finish(timeout=20)
    finally:
        waiting.stop()
    assert finished.returncode == 0, describe(finished)
    assert "modelcapacity.capguard.dev/llama-70b-chat condition met" in finished.stdout


def test_explain_shows_the_crd_descriptions(kubectl: Kubectl, crds: CrdInstall) -> None:
    field = kubectl.run("explain", "mc.spec.minAvailable").stdout
    assert re.search(r"^KIND:\s+ModelCapacity$", field, re.MULTILINE)
    assert re.search(r"^FIELD: minAvailable <", field, re.MULTILINE)
    assert "The floor: capacity units that must stay Serving" in field
    kind = kubectl.run("explain", "modelcapacities").stdout
    assert "A ModelCapacity declares how much serving capacity a model needs" in kind
    assert "  spec\t<Object> -required-\n" in kind
    recursive = kubectl.run("explain", "cb.spec", "--recursive").stdout
    assert "maxBatchAfterPause" in recursive and "pauseThreshold" in recursive


def test_explain_of_an_unknown_field_fails(kubectl: Kubectl, crds: CrdInstall) -> None:
    refused = kubectl.fail("explain", "mc.spec.noSuchField")
    assert 'field "noSuchField" does not exist' in refused.stderr


def test_api_resources_and_api_versions(kubectl: Kubectl, crds: CrdInstall) -> None:
    listed = by_name(kubectl.run("api-resources", "--api-group=capguard.dev").stdout)
    assert listed["inferenceengines"] == {"NAME": "inferenceengines", "SHORTNAMES": "ie",
                                          "APIVERSION": "capguard.dev/v1alpha1",
                                          "NAMESPACED": "true", "KIND": "InferenceEngine"}
    assert listed["modelcapacities"]["SHORTNAMES"] == "mc"
    assert listed["circuitbreakers"]["SHORTNAMES"] == "cb"
    assert listed["modelcapacities"]["KIND"] == "ModelCapacity"

    everything = by_name(kubectl.run("api-resources").stdout)
    for builtin in ("namespaces", "events", "leases", "configmaps",
                    "customresourcedefinitions"):
        assert builtin in everything
    wide = kubectl.run("api-resources", "--api-group=capguard.dev", "-o", "wide").stdout
    model = by_name(wide)["modelcapacities"]
    assert model["CATEGORIES"] == "capguard"
    assert set(model["VERBS"].strip("[]").split(",")) == {
        "create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}

    versions = kubectl.run("api-versions").stdout.split()
    for version in ("capguard.dev/v1alpha1", "v1", "apiextensions.k8s.io/v1",
                    "coordination.k8s.io/v1", "events.k8s.io/v1"):
        assert version in versions


def test_an_unknown_resource_type_is_kubectls_usual_error(kubectl: Kubectl,
                                                          namespace: str) -> None:
    refused = kubectl.fail("get", "gizmos", namespace=namespace)
    assert 'error: the server doesn\'t have a resource type "gizmos"' in refused.stderr


def test_get_of_a_missing_object_is_not_found(kubectl: Kubectl, namespace: str) -> None:
    refused = kubectl.fail("get", "mc", "nope", namespace=namespace)
    assert ('Error from server (NotFound): modelcapacities.capguard.dev "nope" not found'
            in refused.stderr)
    empty = kubectl.run("get", "mc", namespace=namespace)
    assert empty.stdout == ""
    assert f"No resources found in {namespace} namespace." in empty.stderr


# ---- writing ----------------------------------------------------------------------------------

def test_patch_status_subresource_changes_only_status(kubectl: Kubectl, fleet: str) -> None:
    before = kubectl.json("get", "mc", "llama-70b-chat", namespace=fleet)
    patched = kubectl.run("patch", "mc", "llama-70b-chat", "--subresource=status",
                          "--type=merge", "-p",
                          '{"status":{"serving":6,"floor":8,"drift":2,"availablePercent":75},'
                          '"spec":{"replicas":1}}', namespace=fleet)
    assert "modelcapacity.capguard.dev/llama-70b-chat patched" in patched.stdout
    after = kubectl.json("get", "mc", "llama-70b-chat", namespace=fleet)
    assert after["status"]["serving"] == 6
    assert after["spec"] == before["spec"], "a status write must ignore spec"
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert int(after["metadata"]["resourceVersion"]) > int(
        before["metadata"]["resourceVersion"])
    row = by_name(kubectl.run("get", "mc", namespace=fleet).stdout)["llama-70b-chat"]
    assert (row["SERVING"], row["FLOOR"], row["DRIFT"], row["AVAILABLE%"]) == (
        "6", "8", "2", "75")

    # ...and a write to the main resource ignores status.
    kubectl.run("patch", "mc", "llama-70b-chat", "--type=merge", "-p",
                '{"status":{"serving":0}}', namespace=fleet)
    assert kubectl.json("get", "mc", "llama-70b-chat", namespace=fleet)["status"][
        "serving"] == 6


def test_patch_without_a_type_is_refused_for_custom_resources(kubectl: Kubectl,
                                                              fleet: str) -> None:
    # kubectl patch defaults to a strategic merge patch; custom resources take none (036).
    refused = kubectl.fail("patch", "mc", "llama-70b-chat", "-p", '{"spec":{"replicas":3}}',
                           namespace=fleet)
    assert ("application/strategic-merge-patch+json is not supported by capguard.dev/v1alpha1,"
            " Kind=ModelCapacity" in refused.stderr)
    assert kubectl.json("get", "mc", "llama-70b-chat", namespace=fleet)["spec"]["replicas"] == 8


def test_scale_sets_spec_replicas_and_bumps_generation(kubectl: Kubectl, fleet: str) -> None:
    scaled = kubectl.run("scale", "mc/mistral-7b-instruct", "--replicas=6", namespace=fleet)
    assert "modelcapacity.capguard.dev/mistral-7b-instruct scaled" in scaled.stdout
    model = kubectl.json("get", "mc", "mistral-7b-instruct", namespace=fleet)
    assert model["spec"]["replicas"] == 6
    assert model["metadata"]["generation"] == 2

    refused = kubectl.fail("scale", "mc/mistral-7b-instruct", "--current-replicas=4",
                           "--replicas=2", namespace=fleet)
    assert "Expected replicas to be 4, was 6" in refused.stderr
    assert kubectl.json("get", "mc", "mistral-7b-instruct",
                        namespace=fleet)["spec"]["replicas"] == 6


def test_scale_below_the_schema_minimum_is_refused(kubectl: Kubectl, fleet: str) -> None:
    refused = kubectl.fail("scale", "mc/bge-large-embed", "--replicas=-1", namespace=fleet)
    assert "replicas" in refused.stderr


def test_label_and_annotate_do_not_bump_generation(kubectl: Kubectl, fleet: str) -> None:
    labelled = kubectl.run("label", "ie", "h100-a-3", "capguard.dev/cordoned=true",
                           namespace=fleet)
    assert "inferenceengine.capguard.dev/h100-a-3 labeled" in labelled.stdout
    annotated = kubectl.run("annotate", "ie", "h100-a-3", "capguard.dev/reason=maintenance",
                            namespace=fleet)
    assert "inferenceengine.capguard.dev/h100-a-3 annotated" in annotated.stdout
    engine = kubectl.json("get", "ie", "h100-a-3", namespace=fleet)
    assert engine["metadata"]["labels"]["capguard.dev/cordoned"] == "true"
    assert engine["metadata"]["annotations"]["capguard.dev/reason"] == "maintenance"
    assert engine["metadata"]["generation"] == 1

    refused = kubectl.fail("label", "ie", "h100-a-3", "capguard.dev/cordoned=false",
                           namespace=fleet)
    assert "'capguard.dev/cordoned' already has a value (true), and --overwrite is false" in (
        refused.stderr)
    kubectl.run("label", "ie", "h100-a-3", "capguard.dev/cordoned-", namespace=fleet)
    selected = kubectl.run("get", "ie", "-l", "capguard.dev/cordoned", "-o", "name",
                           namespace=fleet)
    assert selected.stdout == ""


def test_edit_with_an_editor_updates_the_object(kubectl: Kubectl, fleet: str,
                                                tmp_path: pathlib.Path) -> None:
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/priority: 10$/priority: 20/' \"$1\"\n")
    editor.chmod(0o755)
    edited = kubectl.run("edit", "mc", "bge-large-embed", namespace=fleet,
                         env={"KUBE_EDITOR": str(editor)})
    assert "modelcapacity.capguard.dev/bge-large-embed edited" in edited.stdout
    model = kubectl.json("get", "mc", "bge-large-embed", namespace=fleet)
    assert model["spec"]["priority"] == 20
    assert model["metadata"]["generation"] == 2


def test_replace_with_a_stale_resource_version_conflicts(kubectl: Kubectl, fleet: str) -> None:
    stale = kubectl.run("get", "cb", "assistant", "-o", "yaml", namespace=fleet).stdout
    kubectl.run("patch", "cb", "assistant", "--type=merge", "-p", '{"spec":{"open":true}}',
                namespace=fleet)
    refused = kubectl.fail("replace", "-f", "-", namespace=fleet,
                           stdin=stale.replace("maxBatchAfterPause: 3", "maxBatchAfterPause: 4"))
    assert ('Error from server (Conflict): error when replacing "STDIN": Operation cannot be '
            'fulfilled on circuitbreakers.capguard.dev "assistant": the object has been '
            'modified; please apply your changes to the latest version and try again'
            in refused.stderr)
    breaker = kubectl.json("get", "cb", "assistant", namespace=fleet)
    assert breaker["spec"]["open"] is True and breaker["spec"]["maxBatchAfterPause"] == 3

    fresh = kubectl.run("get", "cb", "assistant", "-o", "yaml", namespace=fleet).stdout
    replaced = kubectl.run("replace", "-f", "-", namespace=fleet,
                           stdin=fresh.replace("maxBatchAfterPause: 3", "maxBatchAfterPause: 4"))
    assert "circuitbreaker.capguard.dev/assistant replaced" in replaced.stdout


def test_create_twice_is_already_exists(kubectl: Kubectl, namespace: str) -> None:
    path = str(SAMPLES / "circuitbreaker.yaml")
    created = kubectl.run("create", "-f", path, namespace=namespace)
    assert "circuitbreaker.capguard.dev/assistant created" in created.stdout
    refused = kubectl.fail("create", "-f", path, namespace=namespace)
    assert (f'Error from server (AlreadyExists): error when creating "{path}": '
            f'circuitbreakers.capguard.dev "assistant" already exists' in refused.stderr)


def test_create_in_a_missing_namespace_is_not_found(kubectl: Kubectl, crds: CrdInstall) -> None:
    refused = kubectl.fail("create", "-f", str(SAMPLES / "circuitbreaker.yaml"),
                           namespace="no-such-namespace")
    assert 'namespaces "no-such-namespace" not found' in refused.stderr


@pytest.mark.parametrize("path", INVALID_SAMPLES, ids=[path.stem for path in INVALID_SAMPLES])
def test_apply_of_an_invalid_sample_names_the_field(kubectl: Kubectl, namespace: str,
                                                     path: pathlib.Path) -> None:
    expected = re.search(r"^# Expect error on: (\S+)", path.read_text(), re.MULTILINE)
    assert expected is not None, f"{path.name} says no '# Expect error on:' field"
    refused = kubectl.fail("apply", "-f", str(path), namespace=namespace)
    assert "is invalid" in refused.stderr, refused.stderr
    assert expected.group(1) in refused.stderr, refused.stderr
    assert kubectl.run("get", "ie,mc,cb", "-o", "name", namespace=namespace).stdout == ""


# ---- deleting ---------------------------------------------------------------------------------

FINALIZED_MODEL: Final = """
apiVersion: capguard.dev/v1alpha1
kind: ModelCapacity
metadata:
  name: held
  finalizers: [capguard.dev/drain-engines]
spec:
  replicas: 2
"""


def test_delete_waits_for_finalizers_and_json_patch_releases(kubectl: Kubectl,
                                                            namespace: str) -> None:
    kubectl.run("create", "-f", "-", namespace=namespace, stdin=FINALIZED_MODEL)
    deleted = kubectl.run("delete", "mc", "held", "--wait=false", namespace=namespace)
    assert 'modelcapacity.capguard.dev "held" deleted' in deleted.stdout
    held = kubectl.json("get", "mc", "held", namespace=namespace)
    assert held["metadata"]["deletionTimestamp"]
    assert held["metadata"]["finalizers"] == ["capguard.dev/drain-engines"]
    assert held["metadata"]["generation"] == 2   # as the real server does (090)

    kubectl.run("patch", "mc", "held", "--type=json", "-p",
                '[{"op":"remove","path":"/metadata/finalizers/0"}]', namespace=namespace)
    refused = kubectl.fail("get", "mc", "held", namespace=namespace)
    assert "(NotFound)" in refused.stderr


def test_a_waiting_delete_returns_when_the_finalizer_goes(kubectl: Kubectl,
                                                         namespace: str) -> None:
    kubectl.run("create", "-f", "-", namespace=namespace, stdin=FINALIZED_MODEL)
    deleting = kubectl.start("delete", "mc", "held", "--timeout=20s", namespace=namespace)
    try:
        deleting.wait_for_line(r'"held" deleted')
        time.sleep(0.3)
        assert deleting.process.poll() is None, "kubectl delete did not wait for the finalizer"
        kubectl.run("patch", "mc", "held", "--type=merge", "-p",
                    '{"metadata":{"finalizers":null}}', namespace=namespace)
        finished = deleting.finish(timeout=20)
        assert finished.returncode == 0, describe(finished)
    finally:
        deleting.stop()
    assert kubectl.run("get", "mc", "-o", "name", namespace=namespace).stdout == ""


def test_delete_of_a_missing_object_is_not_found(kubectl: Kubectl, namespace: str) -> None:
    refused = kubectl.fail("delete", "cb", "nope", namespace=namespace)
    assert ('Error from server (NotFound): circuitbreakers.capguard.dev "nope" not found'
            in refused.stderr)
    ignored = kubectl.run("delete", "cb", "nope", "--ignore-not-found", namespace=namespace)
    assert ignored.stdout == ""


def test_delete_by_label_selector(kubectl: Kubectl, fleet: str) -> None:
    deleted = kubectl.run("delete", "ie", "-l", "capguard.dev/pool=h100-a",
                          namespace=fleet).stdout
    assert deleted.count(" deleted") == 6, deleted
    left = by_name(kubectl.run("get", "ie", namespace=fleet).stdout)
    assert sorted(left) == [f"l40s-b-{index}" for index in range(6)]


def test_the_protected_namespaces_cannot_be_deleted(kubectl: Kubectl, crds: CrdInstall) -> None:
    for name in ("default", "kube-system", "kube-public"):
        refused = kubectl.fail("delete", "namespace", name)
        assert (f'Error from server (Forbidden): namespaces "{name}" is forbidden: this '
                f'namespace may not be deleted' in refused.stderr)


def test_deleting_a_namespace_deletes_what_is_in_it(kubectl: Kubectl, fleet: str) -> None:
    deleted = kubectl.run("delete", "namespace", fleet, "--timeout=20s")
    assert f'namespace "{fleet}" deleted' in deleted.stdout
    assert "(NotFound)" in kubectl.fail("get", "namespace", fleet).stderr
    left = kubectl.run("get", "ie,mc,cb", namespace=fleet)
    assert left.stdout == ""


def test_a_finalizer_keeps_its_namespace_terminating(kubectl: Kubectl, namespace: str) -> None:
    kubectl.run("create", "-f", "-", namespace=namespace, stdin=FINALIZED_MODEL)
    kubectl.run("delete", "namespace", namespace, "--wait=false")
    for _ in range(50):   # the namespace controller gets to it on its own time
        held = kubectl.json("get", "mc", "held", namespace=namespace)
        if held["metadata"].get("deletionTimestamp"):
            break
        time.sleep(0.1)
    assert held["metadata"].get("deletionTimestamp"), "the namespace's content was not deleted"
    status = by_name(kubectl.run("get", "namespace", namespace).stdout)[namespace]["STATUS"]
    assert status == "Terminating"
    refused = kubectl.fail("create", "-f", str(SAMPLES / "circuitbreaker.yaml"),
                           namespace=namespace)
    assert "because it is being terminated" in refused.stderr

    kubectl.run("patch", "mc", "held", "--type=json", "-p",
                '[{"op":"remove","path":"/metadata/finalizers"}]', namespace=namespace)
    # Quiet if it is already gone, "condition met" if it had to wait: both succeed.
    kubectl.run("wait", "--for=delete", f"namespace/{namespace}", "--timeout=20s")
    assert "(NotFound)" in kubectl.fail("get", "namespace", namespace).stderr


# ---- CRD lifecycle ------------------------------------------------------------------------------

@pytest.mark.skipif(not WIDGET_CRD.exists(), reason=f"no {WIDGET_CRD.name} in the shared folder")
def test_a_crd_applied_then_changed_then_deleted(kubectl: Kubectl, namespace: str,
                                                 tmp_path: pathlib.Path) -> None:
    kubectl.run("apply", "-f", str(WIDGET_CRD))
    kubectl.run("wait", "--for", "condition=established", "--timeout=20s",
                "crd/widgets.widgets.example.dev")
    kubectl.run("create", "-f", "-", namespace=namespace, stdin=yaml.safe_dump(
        {"apiVersion": "widgets.example.dev/v1", "kind": "Widget",
         "metadata": {"name": "w1"}, "spec": {"size": "small"}}))
    table = by_name(kubectl.run("get", "wd", namespace=namespace).stdout)
    assert table["w1"]["REPLICAS"] == "1"   # defaulted by the schema
    assert "widget.widgets.example.dev/w1" in kubectl.run(
        "get", "examples", "-o", "name", namespace=namespace).stdout

    # A changed CRD: a new printer column and description, served at once.
    changed = WIDGET_CRD.read_text().replace(
        "    - name: Age\n", "    - name: Size\n      type: string\n"
        "      jsonPath: .spec.size\n    - name: Age\n").replace(
        "Size class of the widget.", "Size class of the widget (changed).")
    updated = kubectl.run("apply", "-f", "-", stdin=changed)
    assert "customresourcedefinition.apiextensions.k8s.io/widgets.widgets.example.dev " \
           "configured" in updated.stdout
    assert updated.stderr == "", "kubectl found the CRD's OpenAPI lacking to build its patch"
    assert by_name(kubectl.run("get", "wd", namespace=namespace).stdout)["w1"][
        "SIZE"] == "small"
    assert "Size class of the widget (changed)." in kubectl.run("explain",
                                                                "wd.spec.size").stdout

    kubectl.run("delete", "crd", "widgets.widgets.example.dev", "--timeout=20s")
    # With discovery cached from before, kubectl still knows the type; the server's 404
    # for the path (a plain "404 page not found", 195) is what it reports then.
    stale = kubectl.fail("get", "widgets", namespace=namespace)
    assert ('Error from server (NotFound): Unable to list "widgets.example.dev/v1, '
            'Resource=widgets": the server could not find the requested resource'
            in stale.stderr)
    fresh = dataclasses.replace(kubectl, cache_dir=tmp_path / "cache")
    refused = fresh.fail("get", "widgets", namespace=namespace)
    assert 'error: the server doesn\'t have a resource type "widgets"' in refused.stderr
