"""Installing capguard as a user does: CRDs, the samples, and nonsense refused at admission."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from . import harness
from .conftest import Target

KINDS = ("inferenceengines", "modelcapacities", "circuitbreakers")


def test_crds_are_established_and_explained(target: Target) -> None:
    for plural in KINDS:
        crd = target.kubectl.get("customresourcedefinition", f"{plural}.capguard.dev")
        established = harness.condition(crd, "Established")
        assert established is not None and established["status"] == "True", plural
    explained = target.kubectl.run("explain", "modelcapacities.spec.minAvailable").stdout
    assert "floor" in explained.lower()


def test_samples_apply_and_list_with_their_columns(kube: harness.Kubectl) -> None:
    applied = kube.run("apply", f"--filename={harness.SAMPLES}").stdout
    assert applied.count("created") == 16, applied
    assert len(kube.items("ie")) == 12
    assert {m["metadata"]["name"] for m in kube.items("mc")} == {
        "llama-70b-chat", "mistral-7b-instruct", "bge-large-embed"}
    assert [b["metadata"]["name"] for b in kube.items("cb")] == ["assistant"]
    # Defaults come from the schema: what the user left out is there, as the API server set it.
    mistral = kube.get("mc", "mistral-7b-instruct")["spec"]
    assert mistral["minAvailable"] == 3 and mistral["maxUnavailable"] == "25%"
    header = kube.run("get", "mc").stdout.splitlines()[0].split()
    assert header[:6] == ["NAME", "DESIRED", "SERVING", "FLOOR", "DRIFT", "AVAILABLE%"]
    header = kube.run("get", "cb").stdout.splitlines()[0].split()
    assert header[:5] == ["NAME", "STATE", "SINCE", "HELD", "REFUSED"]


def _expected_field(path: Path) -> str:
    found = re.search(r"^# Expect error on: (\S+)", path.read_text(), re.MULTILINE)
    assert found, f"{path.name} does not say which field is wrong"
    return found.group(1)


@pytest.mark.parametrize("path", sorted(harness.INVALID_SAMPLES.glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_invalid_samples_are_refused_at_admission_naming_the_field(
    kube: harness.Kubectl, path: Path,
) -> None:
    done = kube.run("apply", f"--filename={path}", check=False)
    assert done.returncode != 0, f"{path.name} was accepted:\n{done.stdout}"
    assert _expected_field(path) in done.stderr, done.stderr
    for plural in KINDS:
        assert kube.items(plural) == [], f"{path.name} left a {plural} behind"
