"""A selector with a key or value outside Kubernetes' label syntax is refused by
`kubectl apply`, with a message that says what to change, and nothing is stored."""

from __future__ import annotations

import pytest

from . import harness


def test_kubectl_apply_refuses_a_bad_selector_and_says_what_to_change(
    kube: harness.Kubectl,
) -> None:
    bad_key = harness.model("chat", replicas=1,
                            extra={"engineSelector": {"matchLabels": {"bad key!": "x"}}})
    with pytest.raises(harness.KubectlError) as refused:
        kube.apply(bad_key)
    stderr = " ".join(refused.value.stderr.split())
    assert 'The ModelCapacity "chat" is invalid' in stderr, stderr
    assert "spec.engineSelector.matchLabels keys must be label keys" in stderr, stderr
    assert "then a name of at most 63 characters of letters, digits" in stderr, stderr

    bad_value = harness.breaker("guard", extra={"selector": {"matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["gold", "bad value!"]}]}})
    with pytest.raises(harness.KubectlError) as refused:
        kube.apply(bad_value)
    stderr = " ".join(refused.value.stderr.split())
    assert 'The CircuitBreaker "guard" is invalid' in stderr, stderr
    assert "spec.selector.matchExpressions[0].values[1]" in stderr, stderr
    assert "spec.selector.matchExpressions values must be label values: empty, or at most 63" \
        in stderr, stderr

    assert not kube.exists("mc", "chat") and not kube.exists("cb", "guard")
    kube.apply(harness.model("chat", replicas=1, extra={
        "engineSelector": {"matchLabels": {"capguard.dev/pool": "pool-a"}}}))
    assert kube.exists("mc", "chat")
