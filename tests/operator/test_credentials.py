"""In a Pod, capguard finds the API server where the kubelet says it is (the container
test, tests/ship/test_image_container.py, logs in that way over TLS)."""

from __future__ import annotations

import pytest

from capguard.kube import credentials


@pytest.mark.parametrize(("host", "port", "server"), [
    ("10.96.0.1", "443", "https://10.96.0.1:443"),
    ("fd00:10:96::1", "443", "https://[fd00:10:96::1]:443"),
    ("172.18.0.1", "6443", "https://172.18.0.1:6443"),
])
def test_the_server_is_the_kubelets_service_address_not_a_dns_name(
    host: str, port: str, server: str,
) -> None:
    environ = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}
    assert credentials.in_cluster_server(environ) == server


@pytest.mark.parametrize("environ", [{}, {"KUBERNETES_SERVICE_HOST": "10.96.0.1"},
                                     {"KUBERNETES_SERVICE_PORT": "443"}])
def test_without_both_variables_kopfs_own_server_stands(environ: dict[str, str]) -> None:
    assert credentials.in_cluster_server(environ) is None
