"""SecretStore edge cases that the strict test API server cannot produce."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import trustme

from syncer.kube import FanOut, SecretStore
from syncer.kube_api import Api, KubeError
from syncer.target_errors import TargetErrorKind
from tests.support.kube_fixtures import ADMIN_TOKEN, kube_client
from tests.support.kubeapi import KubeAPIServer
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
    assert info.value.kind is TargetErrorKind.SERVER
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
    assert isinstance(found["b"], KubeError) and found["b"].kind is TargetErrorKind.INVALID


def test_list_named_stops_on_a_repeated_continue_token(
        ca: trustme.CA, tmp_path: Path, registry_fake_server: Any) -> None:
    pages = [{"items": [], "metadata": {"continue": "same"}}]
    store, seen = list_store(ca, tmp_path, registry_fake_server, pages)
    with pytest.raises(KubeError) as info:
        store.list_named("pull")
    assert info.value.kind is TargetErrorKind.SERVER and "repeated a continue token" in str(info.value)
    assert len(seen) == 2


# ---------------------------------------------------------------- paging against the test API server


def admin_api(kube: KubeAPIServer, tmp_path: Path) -> Api:
    return Api(kube_client(kube.write_kubeconfig(tmp_path / "kc-admin", ADMIN_TOKEN)), timeout=5)


def fill(kube: KubeAPIServer, namespaces: int) -> None:
    """``pull`` in every other namespace, ``filler`` in each: a selected LIST gets empty pages."""
    payload = {".dockerconfigjson": b'{"auths":{}}'}
    for i in range(namespaces):
        kube.put_secret(f"ns-{i:02d}", "filler", data={"k": b"1"})
        if i % 2 == 0:
            kube.put_secret(f"ns-{i:02d}", "pull", type="kubernetes.io/dockerconfigjson", data=payload)


def test_list_named_follows_short_and_empty_pages(kube: KubeAPIServer, tmp_path: Path) -> None:
    """limit counts secrets before the field selector: pages with no item still carry continue."""
    fill(kube, 10)
    store = SecretStore(admin_api(kube, tmp_path))
    store.list_page = 1
    kube.reset_requests()
    found = store.list_named("pull")
    assert sorted(found) == [f"ns-{i:02d}" for i in range(0, 10, 2)]
    lists = kube.count(verb="list", resource="secrets")
    assert lists == 15, "one request per secret in the cluster (15), most of them empty pages"


def test_list_named_restarts_once_after_410_then_gives_up(kube: KubeAPIServer, tmp_path: Path) -> None:
    """A compaction between pages: the list starts again from the start, once; a second
    expired token is an error (the caller then reads the secrets one by one)."""
    fill(kube, 4)
    store = SecretStore(admin_api(kube, tmp_path))
    store.list_page = 2

    def continued(r: Any) -> bool:
        return r.verb == "list" and "continue" in r.query

    def write_then_compact() -> None:
        kube.put_secret("elsewhere", "unrelated", data={"k": b"1"})
        kube.store.compact()

    kube.before(continued, write_then_compact, times=1)
    found = store.list_named("pull")
    assert sorted(found) == ["ns-00", "ns-02"]
    kube.before(continued, write_then_compact, times=2)
    with pytest.raises(KubeError) as info:
        store.list_named("pull")
    assert info.value.kind is TargetErrorKind.EXPIRED and "HTTP 410 Expired" in str(info.value)


def test_namespace_list_is_paged(kube: KubeAPIServer, tmp_path: Path) -> None:
    for i in range(7):
        kube.add_namespace(f"team-{i}", {"fanout": "yes" if i % 3 else "no"})
    fanout = FanOut(admin_api(kube, tmp_path))
    fanout.namespace_page = 2
    kube.reset_requests()
    assert fanout.namespaces("fanout=yes") == ["team-1", "team-2", "team-4", "team-5"]
    assert kube.count(verb="list", resource="namespaces") == 4  # 8 namespaces, 2 per page
    assert all(r.query.get("limit") == "2" for r in kube.requests)


def test_namespace_list_stops_on_a_repeated_continue_token(
        ca: trustme.CA, tmp_path: Path, registry_fake_server: Any) -> None:
    seen: list[Incoming] = []

    def respond(incoming: Incoming) -> Reply:
        seen.append(incoming)
        return Reply.json(200, {"items": [], "metadata": {"continue": "same"}})

    server = registry_fake_server(respond)
    fanout = FanOut(Api(kube_client(kubeconfig_for(server.url, ca, tmp_path / "kc")), timeout=5))
    with pytest.raises(KubeError) as info:
        fanout.namespaces("fanout=yes")
    assert "repeated a continue token" in str(info.value) and len(seen) == 2
