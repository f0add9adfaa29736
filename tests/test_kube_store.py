"""SecretStore edge cases that the strict test API server cannot produce."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import trustme

from syncer.kube import Api, KubeError, KubeErrorKind, SecretStore
from tests.support.kube_fixtures import kube_client
from tests.support.registry import Incoming, Reply


def kubeconfig_for(url: str, ca: trustme.CA, path: Path) -> str:
    ca_data = base64.b64encode(ca.cert_pem.bytes()).decode()
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": url, "certificate-authority-data": ca_data}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}]}))
    return str(path)


@pytest.mark.parametrize("body", [b"<html>login page of a proxy</html>", b'["a list"]'])
def test_a_200_that_is_not_a_json_object_is_a_clear_error(
        body: bytes, ca: trustme.CA, tmp_path: Path, registry_fake_server: Any) -> None:
    def respond(_incoming: Incoming) -> Reply:
        return Reply(200, [("Content-Type", "text/html")], body)

    server = registry_fake_server(respond)
    store = SecretStore(Api(kube_client(kubeconfig_for(server.url, ca, tmp_path / "kc")), timeout=5))
    with pytest.raises(KubeError) as info:
        store.read("ns", "pull")
    assert info.value.kind is KubeErrorKind.SERVER
    assert "secret ns/pull" in str(info.value) and "login page" not in str(info.value)
