"""Fixtures for the project's own Kubernetes API test server (tests/support/kubeapi.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from kubernetes import client, config

from tests.support.kubeapi import KubeAPIServer

__all__ = ["ADMIN_TOKEN", "kube", "kube_admin_kubeconfig", "kube_client"]

#: the all-powerful bearer token registered on every ``kube`` fixture server
ADMIN_TOKEN = "admin-token"


@pytest.fixture
def kube(ca: trustme.CA) -> Iterator[KubeAPIServer]:
    """A started KubeAPIServer with namespace ``default`` and token ``ADMIN_TOKEN`` (admin)."""
    server = KubeAPIServer(ca)
    server.add_namespace("default")
    server.add_token(ADMIN_TOKEN, user="admin", groups=["system:masters"])
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert not server.internal_errors, "the kube test server crashed:\n" + "\n".join(server.internal_errors)


@pytest.fixture
def kube_admin_kubeconfig(kube: KubeAPIServer, tmp_path: Path) -> str:
    """Path to a kubeconfig for the admin token on ``kube`` (namespace ``default``)."""
    return kube.write_kubeconfig(tmp_path / "kubeconfig-admin", ADMIN_TOKEN)


def kube_client(kubeconfig_path: str | Path) -> client.ApiClient:
    """A ``kubernetes.client.ApiClient`` built from a kubeconfig file (close it when done)."""
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig_path)
    )
    return api
