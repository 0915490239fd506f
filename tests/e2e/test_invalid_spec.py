"""A spec the API server admits but the core rejects becomes a False condition and an
InvalidSpec Event; the operator keeps running, and a typo never drains a model.

With capguard's own CRDs nothing gets that far (their schema and CEL rules match the
core's parser). It happens when the installed CRDs are older or looser than the
operator, so this test installs a copy of the CRDs without their CEL rules on a second
embedded API server of its own.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import harness
from .conftest import Operators, Target, embedded_cluster


def _without_cel(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_cel(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    if isinstance(node, list):
        return [_without_cel(v) for v in node]
    return node


def _loose_crds(directory: Path) -> Path:
    directory.mkdir()
    for path in harness.CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        (directory / path.name).write_text(yaml.safe_dump(_without_cel(crd)))
    return directory


def _valid(kube: harness.Kubectl, name: str) -> dict[str, Any] | None:
    found = harness.condition(kube.get("mc", name), "Valid")
    return dict(found) if found else None


def test_a_spec_the_core_rejects_is_reported_and_drains_nothing(
    target: Target, kube: harness.Kubectl, operators: Operators, tmp_path: Path,
) -> None:
    if not target.embedded:
        pytest.skip("needs CRDs looser than capguard's: runs on an embedded server of its own")
    assert kube.namespace is not None
    crds = _loose_crds(tmp_path / "crds")
    binary = shutil.which("kubectl") or "kubectl"
    with embedded_cluster(tmp_path, crds=crds, binary=binary) as (cluster, _):
        cluster.run("create", "namespace", kube.namespace)
        loose = cluster.in_namespace(kube.namespace)
        loose.apply(*harness.engines("e", 3), harness.model("chat", replicas=1),
                    harness.model("embed", replicas=1))
        operator = operators.start(kubeconfig=cluster.kubeconfig)
        harness.wait_serving(loose, {"chat": 1, "embed": 1})

        # Admitted without the CEL rule, refused by the core: a floor above replicas.
        loose.patch("mc", "chat", {"spec": {"replicas": 3, "minAvailable": 5}})
        valid = harness.wait_until(
            lambda: (v := _valid(loose, "chat")) and v["status"] == "False" and v,
            timeout=10, what="chat Valid=False")
        assert valid["reason"] == "InvalidSpec" and "minAvailable" in valid["message"], valid
        available = harness.condition(loose.get("mc", "chat"), "Available")
        assert available is not None and available["status"] == "False"
        events = harness.wait_until(lambda: loose.events(reason="InvalidSpec", name="chat"),
                                    timeout=10, what="an InvalidSpec Event on chat")
        assert "minAvailable" in events[0]["message"]
        assert "InvalidSpec" in loose.run("describe", "mc", "chat").stdout

        # The operator still works: other models reconcile, chat's engine is not drained.
        loose.run("scale", "mc/embed", "--replicas=2")
        harness.wait_serving(loose, {"embed": 2})
        assert harness.serving_units(loose.items("ie")).get("chat") == 1, "chat was drained"
        assert operator.alive and len(loose.events(reason="InvalidSpec", name="chat")) == 1

        # Fixed, it is valid again and reconciles to the new spec.
        loose.patch("mc", "chat", {"spec": {"minAvailable": 1}})
        harness.wait_until(lambda: (v := _valid(loose, "chat")) and v["status"] == "True",
                           timeout=10, what="chat Valid=True again")
        assert harness.serving_units(loose.items("ie")).get("chat", 0) >= 1
        operators.stop_all(show_logs=False)
