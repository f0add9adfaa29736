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


def _secret(namespace: str, name: str, payload: str) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name, "resourceVersion": "7"},
            "type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": payload}}


def list_store(ca: trustme.CA, tmp_path: Path, registry_fake_server: Any, pages: list[Any]) -> tuple[
        SecretStore, list[Incoming]]:
    """A SecretStore against a fake API server that answers secret LISTs with ``pages`` in turn."""
    seen: list[Incoming] = []

    def respond(incoming: Incoming) -> Reply:
        seen.append(incoming)
        return Reply.json(200, pages[min(len(seen), len(pages)) - 1])

    server = registry_fake_server(respond)
    return SecretStore(Api(kube_client(kubeconfig_for(server.url, ca, tmp_path / "kc")), timeout=5)), seen


def test_list_named_follows_pages_and_keeps_only_the_named_secret(
        ca: trustme.CA, tmp_path: Path, registry_fake_server: Any) -> None:
    """A server or proxy that ignored the fieldSelector must not make another secret stand in for
    the target; an undecodable item fails alone."""
    good = base64.b64encode(b'{"auths":{}}').decode()
    pages = [{"items": [_secret("a", "pull", good), _secret("a", "other", "!!")],
              "metadata": {"continue": "page-2"}},
             {"items": [_secret("b", "pull", "not base64!")], "metadata": {}}]
    store, seen = list_store(ca, tmp_path, registry_fake_server, pages)
    found = store.list_named("pull")
    assert [r.query.get("continue") for r in seen] == [None, ["page-2"]]
    assert seen[0].query["fieldSelector"] == ["metadata.name=pull"] and seen[0].path == "/api/v1/secrets"
    assert set(found) == {"a", "b"}
    snapshot = found["a"]
    assert not isinstance(snapshot, KubeError) and snapshot.payload == b'{"auths":{}}'
    assert isinstance(found["b"], KubeError) and found["b"].kind is KubeErrorKind.INVALID


def test_list_named_stops_on_a_repeated_continue_token(
        ca: trustme.CA, tmp_path: Path, registry_fake_server: Any) -> None:
    pages = [{"items": [], "metadata": {"continue": "same"}}]
    store, seen = list_store(ca, tmp_path, registry_fake_server, pages)
    with pytest.raises(KubeError) as info:
        store.list_named("pull")
    assert info.value.kind is KubeErrorKind.SERVER and "repeated a continue token" in str(info.value)
    assert len(seen) == 2
