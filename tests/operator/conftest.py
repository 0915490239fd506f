"""Fixtures for the operator tests (defined in operator_harness, re-exported for pytest)."""

from operator_harness import cluster, kube, start_operator

__all__ = ["cluster", "kube", "start_operator"]
