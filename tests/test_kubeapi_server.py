"""Tests of the Kubernetes API test server itself, driven through the real `kubernetes` client."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
import trustme
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.kube_fixtures import ADMIN_TOKEN, kube_client
from tests.support.kubeapi import KubeAPIServer, RequestRecord
from tests.support.kubeapi_patch import (
    JsonPatchError,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)

DOCKERCFG = "kubernetes.io/dockerconfigjson"
SECRET_VALUE = "s3cr3t-Value-that-must-never-leak"


def b64(raw: str | bytes) -> str:
    """Base64 of text or bytes."""
    return base64.b64encode(raw.encode() if isinstance(raw, str) else raw).decode()


def status_of(exc: ApiException) -> dict[str, Any]:
    """The kube Status body of a failed call."""
    body: dict[str, Any] = json.loads(exc.body)
    return body


def dockercfg(user: str = "u", password: str = SECRET_VALUE) -> str:
    """A .dockerconfigjson document."""
    auth = b64(f"{user}:{password}")
    return json.dumps({"auths": {"reg.example": {"username": user, "password": password, "auth": auth}}})


@pytest.fixture
def api(kube_admin_kubeconfig: str) -> Iterator[client.ApiClient]:
    """An admin ApiClient on the ``kube`` server."""
    api_client = kube_client(kube_admin_kubeconfig)
    yield api_client
    api_client.close()


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    """CoreV1Api as admin."""
    return client.CoreV1Api(api)


def user_api(kube: KubeAPIServer, tmp_path: Path, token: str) -> client.ApiClient:
    """An ApiClient for another token."""
    return kube_client(kube.write_kubeconfig(tmp_path / f"kc-{token[:8]}", token))


def raw(
    kube: KubeAPIServer,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
    token: str = ADMIN_TOKEN,
    ca_file: str = "",
) -> requests.Response:
    """A raw HTTPS request (for what the typed client cannot express)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    data = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
    return requests.request(method, kube.url + path, headers=headers, data=data, verify=ca_file, timeout=10)


# ---------------------------------------------------------------------------------------------
# pure patch helpers


def test_json_patch_ops_and_pointer_escaping() -> None:
    doc = {"metadata": {"annotations": {"a/b": "1", "t~x": "2"}}, "data": {".dockerconfigjson": "x"}}
    out = json_patch(
        doc,
        [
            {"op": "replace", "path": "/data/.dockerconfigjson", "value": "y"},
            {"op": "add", "path": "/metadata/annotations/c~1d", "value": "3"},
            {"op": "remove", "path": "/metadata/annotations/a~1b"},
            {"op": "test", "path": "/metadata/annotations/t~0x", "value": "2"},
            {"op": "copy", "from": "/data/.dockerconfigjson", "path": "/data/copy"},
            {"op": "move", "from": "/data/copy", "path": "/data/moved"},
            {"op": "add", "path": "/list", "value": [1]},
            {"op": "add", "path": "/list/-", "value": 3},
            {"op": "add", "path": "/list/1", "value": 2},
        ],
    )
    assert out == {
        "metadata": {"annotations": {"c/d": "3", "t~x": "2"}},
        "data": {".dockerconfigjson": "y", "moved": "y"},
        "list": [1, 2, 3],
    }
    assert doc["data"][".dockerconfigjson"] == "x"  # input untouched
    for bad in (
        [{"op": "test", "path": "/data/.dockerconfigjson", "value": "nope"}],
        [{"op": "replace", "path": "/data/missing", "value": 1}],
        [{"op": "remove", "path": "/nope/deeper"}],
        [{"op": "frobnicate", "path": "/data"}],
        [{"op": "add", "path": "/list/9", "value": 1}],
    ):
        with pytest.raises(JsonPatchError):
            json_patch({"data": {".dockerconfigjson": "x"}, "list": []}, bad)


def test_merge_and_strategic_merge() -> None:
    base = {"a": {"b": 1, "c": 2}, "l": [{"name": "x"}], "imagePullSecrets": [{"name": "x"}]}
    assert merge_patch(base, {"a": {"b": None, "d": 3}, "l": [{"name": "y"}]}) == {
        "a": {"c": 2, "d": 3},
        "l": [{"name": "y"}],
        "imagePullSecrets": [{"name": "x"}],
    }
    smp = strategic_merge_patch(base, {"imagePullSecrets": [{"name": "y"}], "l": [{"name": "y"}]})
    assert smp["imagePullSecrets"] == [{"name": "x"}, {"name": "y"}]
    assert smp["l"] == [{"name": "y"}]  # no merge key: replaced
    deleted = strategic_merge_patch(smp, {"imagePullSecrets": [{"name": "x", "$patch": "delete"}]})
    assert deleted["imagePullSecrets"] == [{"name": "y"}]
    replaced = strategic_merge_patch(smp, {"imagePullSecrets": [{"$patch": "replace"}, {"name": "z"}]})
    assert replaced["imagePullSecrets"] == [{"name": "z"}]


# ---------------------------------------------------------------------------------------------
# CRUD and strictness


def test_create_get_already_exists(kube: KubeAPIServer, core: client.CoreV1Api) -> None:
    body = {"metadata": {"name": "s1", "labels": {"app": "x"}}, "stringData": {"k": "v"}}
    created = core.create_namespaced_secret("default", body)
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert created.data == {"k": b64("v")} and created.type == "Opaque"
    got = core.read_namespaced_secret("s1", "default")
    assert got.metadata.resource_version == created.metadata.resource_version
    stored = kube.get_secret("default", "s1")
    assert stored is not None and "stringData" not in stored
    with pytest.raises(ApiException) as err:
        core.create_namespaced_secret("default", body)
    st = status_of(err.value)
    assert err.value.status == 409 and st["reason"] == "AlreadyExists"
    assert st["message"] == 'secrets "s1" already exists'
    assert st["details"] == {"name": "s1", "kind": "secrets"}
    with pytest.raises(ApiException) as err:
        core.read_namespaced_secret("nope", "default")
    assert err.value.status == 404 and status_of(err.value)["reason"] == "NotFound"
    assert status_of(err.value)["message"] == 'secrets "nope" not found'


def test_status_shape(kube: KubeAPIServer, core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as err:
        core.read_namespaced_secret("nope", "default")
    assert status_of(err.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'secrets "nope" not found',
        "reason": "NotFound",
        "details": {"name": "nope", "kind": "secrets"},
        "code": 404,
    }
    assert err.value.headers["Content-Type"] == "application/json"


def test_put_resource_version_conflict(kube: KubeAPIServer, core: client.CoreV1Api) -> None:
    kube.put_secret("default", "s", data={"k": b"1"})
    current = core.read_namespaced_secret("s", "default")
    kube.put_secret("default", "s", data={"k": b"2"})  # someone else writes
    current.data = {"k": b64("3")}
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_secret("s", "default", current)
    st = status_of(err.value)
    assert err.value.status == 409 and st["reason"] == "Conflict"
    assert st["message"] == (
        'Operation cannot be fulfilled on secrets "s": the object has been modified; please '
        "apply your changes to the latest version and try again"
    )
    fresh = core.read_namespaced_secret("s", "default")
    fresh.data = {"k": b64("3")}
    updated = core.replace_namespaced_secret("s", "default", fresh)
    assert int(updated.metadata.resource_version) > int(fresh.metadata.resource_version)
    assert updated.metadata.uid == current.metadata.uid
    # a no-op update does not write: resourceVersion stays
    same = core.replace_namespaced_secret("s", "default", updated)
    assert same.metadata.resource_version == updated.metadata.resource_version
    # unconditional update (no resourceVersion) is allowed for secrets
    body = {"metadata": {"name": "s"}, "data": {"k": b64("4")}}
    assert core.replace_namespaced_secret("s", "default", body).data == {"k": b64("4")}
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_secret("gone", "default", {"metadata": {"name": "gone"}})
    assert err.value.status == 404


def test_patch_content_types(kube: KubeAPIServer, core: client.CoreV1Api, ca_file: str) -> None:
    kube.put_secret(
        "default",
        "p",
        type=DOCKERCFG,
        data={".dockerconfigjson": dockercfg()},
        annotations={"example.com/owner": "me"},
    )
    # dict body -> strategic merge patch (the client's default)
    out = core.patch_namespaced_secret("p", "default", {"metadata": {"labels": {"a": "1"}}})
    assert out.metadata.labels == {"a": "1"} and out.metadata.annotations
    # merge patch: null deletes
    out = core.patch_namespaced_secret(
        "p",
        "default",
        {"metadata": {"labels": {"a": None, "b": "2"}}},
        _content_type="application/merge-patch+json",
    )
    assert out.metadata.labels == {"b": "2"}
    # json patch with escaped keys
    new_cfg = b64(dockercfg(password="other"))
    out = core.patch_namespaced_secret(
        "p",
        "default",
        [
            {"op": "replace", "path": "/data/.dockerconfigjson", "value": new_cfg},
            {"op": "replace", "path": "/metadata/annotations/example.com~1owner", "value": "you"},
        ],
    )
    assert out.data[".dockerconfigjson"] == new_cfg
    assert out.metadata.annotations == {"example.com/owner": "you"}
    assert [r.content_type for r in kube.requests if r.verb == "patch"] == [
        "application/strategic-merge-patch+json",
        "application/merge-patch+json",
        "application/json-patch+json",
    ]
    # json patch 'test' failing -> 422
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_secret(
            "p", "default", [{"op": "test", "path": "/metadata/annotations/nope", "value": "x"}]
        )
    assert err.value.status == 422
    # json patch must be an array: an object -> 400 (the client would silently switch types)
    resp = raw(
        kube,
        "PATCH",
        "/api/v1/namespaces/default/secrets/p",
        {"data": {}},
        "application/json-patch+json",
        ca_file=ca_file,
    )
    assert resp.status_code == 400 and resp.json()["reason"] == "BadRequest"
    # apply patches and unknown types -> 415
    for ctype in ("application/apply-patch+yaml", "text/plain", "application/json"):
        resp = raw(kube, "PATCH", "/api/v1/namespaces/default/secrets/p", {}, ctype, ca_file=ca_file)
        assert resp.status_code == 415, ctype
        assert resp.json()["reason"] == "UnsupportedMediaType"
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_secret("missing", "default", {"metadata": {"labels": {"a": "1"}}})
    assert err.value.status == 404


def test_patch_resource_version_precondition(kube: KubeAPIServer, core: client.CoreV1Api) -> None:
    stored = kube.put_secret("default", "p", data={"k": b"1"})
    rv = stored["metadata"]["resourceVersion"]
    kube.put_secret("default", "p", data={"k": b"2"})
    for ctype, body in (
        ("application/merge-patch+json", {"metadata": {"resourceVersion": rv}, "data": {}}),
        ("application/strategic-merge-patch+json", {"metadata": {"resourceVersion": rv}}),
        (
            "application/json-patch+json",
            [{"op": "replace", "path": "/metadata/resourceVersion", "value": rv}],
        ),
    ):
        with pytest.raises(ApiException) as err:
            core.patch_namespaced_secret("p", "default", body, _content_type=ctype)
        assert err.value.status == 409 and status_of(err.value)["reason"] == "Conflict", ctype
    current = kube.get_secret("default", "p")
    assert current is not None
    ok = core.patch_namespaced_secret(
        "p",
        "default",
        {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]}, "data": {"k": b64("3")}},
    )
    assert ok.data == {"k": b64("3")}


def test_secret_validation(kube: KubeAPIServer, core: client.CoreV1Api) -> None:
    def invalid(body: dict[str, Any]) -> dict[str, Any]:
        with pytest.raises(ApiException) as err:
            core.create_namespaced_secret("default", body)
        assert err.value.status == 422, body.get("metadata")
        st = status_of(err.value)
        assert st["reason"] == "Invalid" and st["details"]["kind"] == "Secret"
        assert SECRET_VALUE not in err.value.body and "c2VjcmV0" not in err.value.body
        return st

    st = invalid({"metadata": {"name": "b64"}, "data": {"k": "not base64!" + SECRET_VALUE}})
    assert st["details"]["causes"][0]["field"] == "data[k]"
    st = invalid({"metadata": {"name": "d1"}, "type": DOCKERCFG, "data": {"other": b64("{}")}})
    assert "data[.dockerconfigjson]: Required value" in st["message"]
    st = invalid(
        {
            "metadata": {"name": "d2"},
            "type": DOCKERCFG,
            "stringData": {".dockerconfigjson": "{not json " + SECRET_VALUE},
        }
    )
    assert "<secret contents redacted>" in st["message"]
    invalid(
        {
            "metadata": {"name": "d3"},
            "type": DOCKERCFG,
            "data": {".dockerconfigjson": b64(json.dumps([SECRET_VALUE]))},
        }
    )
    st = invalid({"metadata": {"name": "Bad_Name"}, "data": {}})
    assert st["message"].startswith('Secret "Bad_Name" is invalid: metadata.name: Invalid value')
    invalid({"metadata": {"name": "badkey"}, "data": {"bad key": b64("x")}})
    invalid({"metadata": {"name": "big"}, "data": {"a": b64(b"x" * (1024 * 1024)), "b": b64("y")}})
    # exactly 1 MiB is fine
    core.create_namespaced_secret(
        "default", {"metadata": {"name": "max"}, "data": {"a": b64(b"x" * (1024 * 1024))}}
    )
    # a valid dockerconfigjson secret is accepted
    ok = core.create_namespaced_secret(
        "default",
        {"metadata": {"name": "pull"}, "type": DOCKERCFG, "data": {".dockerconfigjson": b64(dockercfg())}},
    )
    assert ok.type == DOCKERCFG
    assert kube.get_secret("default", "b64") is None


def test_secret_type_is_immutable(kube: KubeAPIServer, core: client.CoreV1Api) -> None:
    kube.put_secret("default", "t", data={"k": b"v"})
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_secret(
            "t", "default", {"type": DOCKERCFG, "data": {".dockerconfigjson": b64(dockercfg())}}
        )
    st = status_of(err.value)
    assert err.value.status == 422 and "type: Invalid value" in st["message"]
    assert "field is immutable" in st["message"]
    kube.put_secret("default", "d", type=DOCKERCFG, data={".dockerconfigjson": dockercfg()})
    # a PUT without type defaults to Opaque, which is a type change (as on a real cluster)
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_secret(
            "d", "default", {"metadata": {"name": "d"}, "data": {".dockerconfigjson": b64("{}")}}
        )
    assert err.value.status == 422


def test_namespaces_missing_and_terminating(kube: KubeAPIServer, core: client.CoreV1Api) -> None:
    body = {"metadata": {"name": "s"}, "data": {}}
    with pytest.raises(ApiException) as err:
        core.create_namespaced_secret("ghost", body)
    assert err.value.status == 404
    assert status_of(err.value)["message"] == 'namespaces "ghost" not found'
    with pytest.raises(ApiException) as err:
        core.read_namespaced_secret("s", "ghost")
    assert err.value.status == 404
    with pytest.raises(ApiException) as err:
        core.list_namespaced_secret("ghost")
    assert err.value.status == 404
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_secret("s", "ghost", {"data": {}})
    assert err.value.status == 404
    kube.add_namespace("dying", phase="Terminating")
    with pytest.raises(ApiException) as err:
        core.create_namespaced_secret("dying", body)
    st = status_of(err.value)
    assert err.value.status == 403 and st["reason"] == "Forbidden"
    assert "because it is being terminated" in st["message"]
    with pytest.raises(ApiException) as err:
        core.read_namespace("ghost")
    assert err.value.status == 404


def test_dry_run(kube: KubeAPIServer, core: client.CoreV1Api) -> None:
    out = core.create_namespaced_secret("default", {"metadata": {"name": "dry"}, "data": {}}, dry_run="All")
    assert out.metadata.name == "dry" and kube.get_secret("default", "dry") is None
    with pytest.raises(ApiException) as err:
        core.create_namespaced_secret(
            "default", {"metadata": {"name": "dry"}, "data": {"k": "!!"}}, dry_run="All"
        )
    assert err.value.status == 422
    kube.put_secret("default", "real", data={"k": b"1"})
    out = core.patch_namespaced_secret("real", "default", {"data": {"k": b64("2")}}, dry_run="All")
    assert out.data == {"k": b64("2")}
    assert kube.secret_data("default", "real") == {"k": b"1"}
    core.delete_namespaced_secret("real", "default", dry_run="All")
    assert kube.get_secret("default", "real") is not None
    assert kube.writes() == 0 and kube.count(verb="patch", resource="secrets") == 1


def test_list_label_selectors_and_pagination(kube: KubeAPIServer, core: client.CoreV1Api) -> None:
    kube.add_namespace("a", {"env": "prod", "team": "x"})
    kube.add_namespace("b", {"env": "dev", "team": "y"})
    kube.add_namespace("c", {"env": "prod"})

    def names(selector: str) -> list[str]:
        items = core.list_namespace(label_selector=selector).items
        return sorted(ns.metadata.name for ns in items)

    assert names("env=prod") == ["a", "c"]
    assert names("env==prod,team=x") == ["a"]
    assert names("env!=prod") == ["b", "default"]
    assert names("env in (dev, prod),team") == ["a", "b"]
    assert names("env notin (prod)") == ["b", "default"]
    assert names("!team") == ["c", "default"]
    assert names("kubernetes.io/metadata.name=b") == ["b"]
    assert names("") == ["a", "b", "c", "default"]
    with pytest.raises(ApiException) as err:
        core.list_namespace(label_selector="env in prod")
    assert err.value.status == 400
    for n in range(5):
        kube.put_secret("a", f"s{n}", labels={"n": str(n % 2)})
    assert len(core.list_namespaced_secret("a", label_selector="n=1").items) == 2
    assert len(core.list_secret_for_all_namespaces(field_selector="metadata.namespace=a").items) == 5
    first = core.list_namespaced_secret("a", limit=2)
    assert [s.metadata.name for s in first.items] == ["s0", "s1"]
    assert first.metadata.remaining_item_count == 3
    rest = core.list_namespaced_secret("a", limit=10, _continue=first.metadata._continue)
    assert [s.metadata.name for s in rest.items] == ["s2", "s3", "s4"]
    assert not rest.metadata._continue


def test_service_account_strategic_merge(kube: KubeAPIServer, core: client.CoreV1Api) -> None:
    kube.add_service_account("default", "sa", image_pull_secrets=["a"])
    out = core.patch_namespaced_service_account("sa", "default", {"imagePullSecrets": [{"name": "b"}]})
    assert [r.name for r in out.image_pull_secrets] == ["a", "b"]
    out = core.patch_namespaced_service_account(
        "sa",
        "default",
        {"imagePullSecrets": [{"name": "c"}]},
        _content_type="application/merge-patch+json",
    )
    assert [r.name for r in out.image_pull_secrets] == ["c"]
    listed = core.list_namespaced_service_account("default").items
    assert [s.metadata.name for s in listed] == ["sa"]


# ---------------------------------------------------------------------------------------------
# auth


def test_rbac_resource_names_and_401(kube: KubeAPIServer, tmp_path: Path, ca_file: str) -> None:
    kube.add_namespace("team")
    kube.put_secret("team", "mine", data={"k": b"1"})
    kube.put_secret("team", "other", data={"k": b"1"})
    kube.add_token(
        "limited",
        user="syncer",
        rules=[
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "verbs": ["get", "patch"],
                "resourceNames": ["mine"],
            },
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"], "resourceNames": ["new"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"], "namespaces": ["default"]},
        ],
    )
    api = user_api(kube, tmp_path, "limited")
    core = client.CoreV1Api(api)
    assert core.read_namespaced_secret("mine", "team").metadata.name == "mine"
    core.patch_namespaced_secret("mine", "team", {"metadata": {"labels": {"x": "y"}}})
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_secret("other", "team", {"metadata": {"labels": {"x": "y"}}})
    st = status_of(err.value)
    assert err.value.status == 403 and st["reason"] == "Forbidden"
    assert st["message"] == (
        'secrets "other" is forbidden: User "syncer" cannot patch resource "secrets" in API '
        'group "" in the namespace "team"'
    )
    assert st["details"] == {"name": "other", "kind": "secrets"}
    # create can never be limited by resourceNames
    with pytest.raises(ApiException) as err:
        core.create_namespaced_secret("team", {"metadata": {"name": "new"}})
    assert err.value.status == 403
    assert status_of(err.value)["message"].startswith("secrets is forbidden: User")
    core.list_namespaced_secret("default")
    with pytest.raises(ApiException) as err:
        core.list_namespaced_secret("team")
    assert err.value.status == 403
    kube.set_rules("limited", None)
    core.list_namespaced_secret("team")
    kube.remove_token("limited")
    with pytest.raises(ApiException) as err:
        core.list_namespaced_secret("team")
    assert err.value.status == 401 and status_of(err.value)["reason"] == "Unauthorized"
    api.close()
    assert raw(kube, "GET", "/api/v1/namespaces", token="bogus", ca_file=ca_file).status_code == 401
    resp = requests.get(kube.url + "/api/v1/namespaces", verify=ca_file, timeout=5)
    assert resp.status_code == 401
    assert requests.get(kube.url + "/version", verify=ca_file, timeout=5).status_code == 200
    assert [r.status for r in kube.requests if r.user == "syncer"][:3] == [200, 200, 403]


def test_token_review_and_sa_tokens(kube: KubeAPIServer, api: client.ApiClient, tmp_path: Path) -> None:
    kube.add_namespace("apps")
    token = kube.issue_service_account_token("apps", "syncer", audiences=["vault"], ttl=600)
    claims = jwt.decode(token, options={"verify_signature": False})
    sa = kube.get_object("serviceaccounts", "apps", "syncer")
    assert sa is not None
    assert claims["sub"] == "system:serviceaccount:apps:syncer" and claims["aud"] == ["vault"]
    assert claims["kubernetes.io"] == {
        "namespace": "apps",
        "serviceaccount": {"name": "syncer", "uid": sa["metadata"]["uid"]},
    }
    assert {"iss", "exp", "iat", "nbf"} <= claims.keys()
    authn = client.AuthenticationV1Api(api)

    def review(tok: str, audiences: list[str] | None = None) -> Any:
        body = {"spec": {"token": tok, **({"audiences": audiences} if audiences else {})}}
        return authn.create_token_review(body).status

    st = review(token, ["vault"])
    assert st.authenticated is True and st.audiences == ["vault"]
    assert st.user.username == "system:serviceaccount:apps:syncer"
    assert st.user.uid == sa["metadata"]["uid"]
    assert "system:serviceaccounts:apps" in st.user.groups
    assert st.user.extra["authentication.kubernetes.io/credential-id"][0].startswith("JTI=")
    assert review(token, ["other"]).authenticated is False
    assert review(token).authenticated is False  # default audience is the API server's
    assert review("garbage").authenticated is False
    assert review("a.b.c").authenticated is False
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode({**claims}, other_key, algorithm="RS256")
    assert review(forged, ["vault"]).authenticated is False
    assert review(ADMIN_TOKEN).user.username == "admin"
    # the SA token is a bearer token for that SA, until the SA goes away
    sa_api = user_api(kube, tmp_path, token)
    who = client.AuthenticationV1Api(sa_api).create_self_subject_review({})
    assert who.status.user_info.username == "system:serviceaccount:apps:syncer"
    kube.delete_object("serviceaccounts", "apps", "syncer")
    assert review(token, ["vault"]).authenticated is False
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(sa_api).list_namespaced_secret("apps")
    assert err.value.status == 401
    sa_api.close()
    # TokenRequest subresource
    kube.add_service_account("apps", "fresh")
    core = client.CoreV1Api(api)
    tr = core.create_namespaced_service_account_token(
        "fresh", "apps", {"spec": {"audiences": ["vault"], "expirationSeconds": 600}}
    )
    assert review(tr.status.token, ["vault"]).user.username == "system:serviceaccount:apps:fresh"
    # TokenReview itself is RBAC-checked
    kube.add_token("nobody", user="nobody", rules=[])
    with pytest.raises(ApiException) as err:
        client.AuthenticationV1Api(user_api(kube, tmp_path, "nobody")).create_token_review(
            {"spec": {"token": token}}
        )
    assert err.value.status == 403


def test_self_subject_access_review(kube: KubeAPIServer, tmp_path: Path) -> None:
    kube.add_token(
        "ro",
        user="ro",
        rules=[
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "verbs": ["get", "list"],
                "namespaces": ["default"],
            },
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]},
        ],
    )
    authz = client.AuthorizationV1Api(user_api(kube, tmp_path, "ro"))

    def can(verb: str, resource: str, namespace: str = "default", group: str = "") -> bool:
        attrs = {"verb": verb, "resource": resource, "namespace": namespace, "group": group}
        body = {"spec": {"resourceAttributes": attrs}}
        return bool(authz.create_self_subject_access_review(body).status.allowed)

    assert can("get", "secrets") and can("list", "leases", group="coordination.k8s.io")
    assert not can("patch", "secrets")
    assert not can("get", "secrets", namespace="kube-system")
    assert not can("get", "leases")  # wrong group
    assert can("delete", "leases", namespace="any", group="coordination.k8s.io")


def test_leases_crud(kube: KubeAPIServer, api: client.ApiClient) -> None:
    coord = client.CoordinationV1Api(api)
    now = "2024-01-01T00:00:00.000000Z"
    spec = {"holderIdentity": "a", "leaseDurationSeconds": 15, "acquireTime": now, "renewTime": now}
    lease = coord.create_namespaced_lease("default", {"metadata": {"name": "lock"}, "spec": spec})
    assert lease.spec.holder_identity == "a"
    with pytest.raises(ApiException) as err:
        coord.create_namespaced_lease("default", {"metadata": {"name": "lock"}, "spec": spec})
    st = status_of(err.value)
    assert st["reason"] == "AlreadyExists"
    assert st["message"] == 'leases.coordination.k8s.io "lock" already exists'
    lease.spec.holder_identity = "b"
    replaced = coord.replace_namespaced_lease("lock", "default", lease)
    assert replaced.spec.holder_identity == "b"
    with pytest.raises(ApiException) as err:
        coord.replace_namespaced_lease("lock", "default", lease)  # stale resourceVersion
    assert err.value.status == 409
    patched = coord.patch_namespaced_lease("lock", "default", {"spec": {"leaseTransitions": 1}})
    assert patched.spec.lease_transitions == 1 and patched.spec.holder_identity == "b"
    with pytest.raises(ApiException) as err:
        coord.patch_namespaced_lease("lock", "default", {"spec": {"leaseDurationSeconds": 0}})
    assert err.value.status == 422
    stored = kube.get_object("leases", "default", "lock")
    assert stored is not None and stored["spec"]["holderIdentity"] == "b"
    coord.delete_namespaced_lease("lock", "default")
    with pytest.raises(ApiException) as err:
        coord.read_namespaced_lease("lock", "default")
    assert err.value.status == 404
    assert status_of(err.value)["details"]["group"] == "coordination.k8s.io"


def test_events_both_apis(kube: KubeAPIServer, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "s.1"},
            "involvedObject": {"kind": "Secret", "name": "s", "namespace": "default"},
            "reason": "Synced",
            "message": "ok",
            "type": "Normal",
        },
    )
    core.patch_namespaced_event("s.1", "default", {"count": 2})
    ev = client.EventsV1Api(api)
    new = {
        "metadata": {"generateName": "s."},
        "eventTime": "2024-01-01T00:00:00.000000Z",
        "reportingController": "syncer",
        "reportingInstance": "syncer-1",
        "action": "Sync",
        "reason": "Failed",
        "type": "Warning",
        "regarding": {"kind": "Secret", "name": "s", "namespace": "default"},
        "note": "boom",
    }
    created = ev.create_namespaced_event("default", new)
    assert created.metadata.name.startswith("s.")
    assert ev.read_namespaced_event(created.metadata.name, "default").reason == "Failed"
    events = kube.events("default")
    assert [(e["apiVersion"], e["reason"]) for e in events] == [
        ("v1", "Synced"),
        ("events.k8s.io/v1", "Failed"),
    ]
    assert events[0]["count"] == 2
    assert len(core.list_namespaced_event("default", field_selector="reason=Synced").items) == 1
    with pytest.raises(ApiException) as err:
        ev.create_namespaced_event("default", {**new, "type": "Bogus"})
    assert err.value.status == 422
    with pytest.raises(ApiException) as err:
        core.list_namespaced_event("default", field_selector="nope=1")
    assert err.value.status == 400


# ---------------------------------------------------------------------------------------------
# observation and fault injection


def test_request_records(kube: KubeAPIServer, core: client.CoreV1Api) -> None:
    core.create_namespaced_secret("default", {"metadata": {"name": "r"}, "stringData": {"k": SECRET_VALUE}})
    core.read_namespaced_secret("r", "default")
    core.patch_namespaced_secret("r", "default", {"metadata": {"labels": {"a": "b"}}})
    with pytest.raises(ApiException):
        core.create_namespaced_secret("default", {"metadata": {"name": "r"}})
    core.delete_namespaced_secret("r", "default")
    assert kube.count(resource="secrets") == 5
    assert kube.count(verb="get", resource="secrets", namespace="default", name="r") == 1
    assert kube.count(verb="create") == 2
    assert kube.writes("secrets") == 3  # the 409 create does not count
    rec = kube.requests[0]
    assert rec == RequestRecord(
        method="POST",
        path="/api/v1/namespaces/default/secrets",
        query={},
        verb="create",
        api_group="",
        resource="secrets",
        namespace="default",
        name="r",
        subresource=None,
        user="admin",
        status=201,
        content_type="",  # the client sends no type on create
    )
    assert SECRET_VALUE not in repr(kube.requests)
    kube.reset_requests()
    assert kube.count() == 0 and kube.writes() == 0


def test_faults(kube: KubeAPIServer, core: client.CoreV1Api, ca_file: str) -> None:
    kube.put_secret("default", "f", data={"k": b"1"})

    def on_secret(rec: RequestRecord) -> bool:
        return rec.resource == "secrets" and rec.name == "f"

    kube.add_fault(on_secret, status=500)
    with pytest.raises(ApiException) as err:
        core.read_namespaced_secret("f", "default")
    assert err.value.status == 500 and status_of(err.value)["reason"] == "InternalError"
    assert core.read_namespaced_secret("f", "default").metadata.name == "f"  # consumed
    kube.add_fault(on_secret, status=429, times=2)
    for _ in range(2):
        resp = raw(kube, "GET", "/api/v1/namespaces/default/secrets/f", ca_file=ca_file)
        assert resp.status_code == 429 and resp.headers["Retry-After"] == "1"
        assert resp.json()["reason"] == "TooManyRequests"
    assert raw(kube, "GET", "/api/v1/namespaces/default/secrets/f", ca_file=ca_file).ok
    kube.add_fault(on_secret, status=409, reason="Conflict")
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_secret("f", "default", {"data": {}})
    assert status_of(err.value)["reason"] == "Conflict"
    kube.add_fault(on_secret, reset=True, times=None)
    with pytest.raises(requests.ConnectionError):
        raw(kube, "GET", "/api/v1/namespaces/default/secrets/f", ca_file=ca_file)
    kube.clear_faults()
    kube.add_fault(on_secret, delay=0.3)
    started = time.monotonic()
    core.read_namespaced_secret("f", "default")
    assert time.monotonic() - started >= 0.3
    # faults are consumed in order
    kube.add_fault(on_secret, status=503)
    kube.add_fault(on_secret, status=504)
    codes = [
        raw(kube, "GET", "/api/v1/namespaces/default/secrets/f", ca_file=ca_file).status_code
        for _ in range(3)
    ]
    assert codes == [503, 504, 200]
    assert kube.writes() == 0


def test_before_hook_forces_real_conflict(kube: KubeAPIServer, core: client.CoreV1Api) -> None:
    kube.put_secret("default", "h", data={"k": b"1"})
    current = core.read_namespaced_secret("h", "default")
    kube.before(
        lambda r: r.verb == "update" and r.name == "h",
        lambda: kube.put_secret("default", "h", data={"k": b"other"}),
    )
    current.data = {"k": b64("mine")}
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_secret("h", "default", current)
    assert err.value.status == 409 and status_of(err.value)["reason"] == "Conflict"
    assert kube.secret_data("default", "h") == {"k": b"other"}
    # hook consumed: retry on fresh state succeeds
    fresh = core.read_namespaced_secret("h", "default")
    fresh.data = {"k": b64("mine")}
    core.replace_namespaced_secret("h", "default", fresh)
    assert kube.secret_data("default", "h") == {"k": b"mine"}


def test_concurrency_keepalive_and_stop(kube: KubeAPIServer, core: client.CoreV1Api, ca_file: str) -> None:
    kube.put_secret("default", "c", data={"n": b"0"})
    started = time.monotonic()
    for _ in range(100):
        core.read_namespaced_secret("c", "default")
    assert time.monotonic() - started < 2.0  # no Nagle stalls, connection reused
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                core.create_namespaced_secret("default", {"metadata": {"name": f"w{n}-{i}"}})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    items = core.list_namespaced_secret("default").items
    versions = [int(s.metadata.resource_version) for s in items]
    assert len(items) == 51 and len(set(versions)) == 51
    session = requests.Session()
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert session.get(kube.url + "/api/v1/namespaces", headers=headers, verify=ca_file).ok
    kube.stop()
    with pytest.raises(requests.ConnectionError):
        session.get(kube.url + "/api/v1/namespaces", headers=headers, verify=ca_file, timeout=2)


def test_discovery_and_version(kube: KubeAPIServer, api: client.ApiClient, ca_file: str) -> None:
    assert client.VersionApi(api).get_code().major == "1"
    groups = client.ApisApi(api).get_api_versions()
    assert "coordination.k8s.io" in {g.name for g in groups.groups}
    resources = client.CoreV1Api(api).get_api_resources()
    assert {"secrets", "namespaces", "serviceaccounts", "events"} <= {r.name for r in resources.resources}
    resp = raw(kube, "GET", "/apis/example.com/v1/widgets", ca_file=ca_file)
    assert resp.status_code == 404


def test_server_in_its_own_process(ca: trustme.CA, tmp_path: Path) -> None:
    """The benchmark runs the server out of process (tests/support/kubeproc.py): setup and
    counting calls are forwarded over a pipe, and requests are served by the child."""
    from syncer.kube_api import Api, api_path
    from tests.support.kubeproc import KubeAPIProcess

    kube = KubeAPIProcess(ca, latency=0.0)
    try:
        assert kube.pid != os.getpid()
        kube.add_namespace("a", {"team": "ml"})
        kube.add_namespace("b", {"team": "web"})
        kube.add_token(ADMIN_TOKEN, user="admin", groups=["system:masters"])
        api = Api(kube_client(kube.write_kubeconfig(str(tmp_path / "kc"), ADMIN_TOKEN)), timeout=5)
        items = api.get(api_path("namespaces"), {"labelSelector": "team=ml"})["items"]
        assert [i["metadata"]["name"] for i in items] == ["a"]
        assert kube.count(verb="list", resource="namespaces") == 1
        with pytest.raises(RuntimeError, match="no_such_method"):
            kube.no_such_method()
        api.close()
    finally:
        kube.stop()
    assert not kube.alive


# ---------------------------------------------------------------------------------------------
# RBAC on names for list/watch, and etcd-style paging (issue 11 item 4)

NAMED_LIST_RULES = [
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"], "resourceNames": ["pull"]},
]


def test_rbac_binds_list_and_watch_to_names_through_the_field_selector(
    kube: KubeAPIServer, tmp_path: Path, ca_file: str
) -> None:
    """A resourceNames rule authorises list/watch only with fieldSelector=metadata.name=NAME."""
    kube.put_secret("a", "pull", data={"k": b"1"})
    kube.put_secret("a", "other", data={"k": b"1"})
    kube.add_token("named", user="syncer", rules=NAMED_LIST_RULES)
    api = user_api(kube, tmp_path, "named")
    core = client.CoreV1Api(api)
    listed = core.list_secret_for_all_namespaces(field_selector="metadata.name=pull")
    assert [s.metadata.name for s in listed.items] == ["pull"]
    assert core.list_namespaced_secret("a", field_selector="metadata.name==pull,type=Opaque").items
    for selector in ("", "metadata.name=other", "metadata.name!=pull", "type=Opaque"):
        with pytest.raises(ApiException) as err:
            core.list_secret_for_all_namespaces(field_selector=selector or None)
        assert err.value.status == 403, selector
    st = status_of(err.value)
    assert st["message"] == (
        'secrets is forbidden: User "syncer" cannot list resource "secrets" in API group "" '
        "at the cluster scope"
    )
    with pytest.raises(ApiException) as err:  # the name is not a get grant
        core.read_namespaced_secret("pull", "a")
    assert err.value.status == 403
    watch_all = raw(kube, "GET", "/api/v1/secrets?watch=1", token="named", ca_file=ca_file)
    assert watch_all.status_code == 403
    watch_named = raw(
        kube,
        "GET",
        "/api/v1/secrets?watch=1&timeoutSeconds=1&fieldSelector=metadata.name%3Dpull",
        token="named",
        ca_file=ca_file,
    )
    assert watch_named.status_code == 200  # authorised (streams: tests/test_kubeapi_watch.py)
    api.close()


def test_rbac_create_is_never_bound_to_a_name(kube: KubeAPIServer, tmp_path: Path) -> None:
    """create with resourceNames: the request carries no name to match, so 403."""
    kube.add_token(
        "creator",
        rules=[{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"], "resourceNames": ["pull"]}],
    )
    api = user_api(kube, tmp_path, "creator")
    with pytest.raises(ApiException) as err:
        client.CoreV1Api(api).create_namespaced_secret("default", {"metadata": {"name": "pull"}})
    assert err.value.status == 403
    api.close()


def test_self_subject_access_review_of_a_named_list(kube: KubeAPIServer, tmp_path: Path) -> None:
    """SSAR {verb: list, name: N} answers as the named list would be authorised."""
    kube.add_token("named", rules=NAMED_LIST_RULES)
    authz = client.AuthorizationV1Api(user_api(kube, tmp_path, "named"))

    def can(verb: str, name: str = "") -> bool:
        attrs = {"verb": verb, "resource": "secrets", "group": "", "name": name}
        return bool(
            authz.create_self_subject_access_review({"spec": {"resourceAttributes": attrs}}).status.allowed
        )

    assert can("list", "pull") and can("watch", "pull")
    assert not can("list") and not can("list", "other") and not can("get", "pull")


def test_field_selected_list_pages_like_etcd(kube: KubeAPIServer, core: client.CoreV1Api) -> None:
    """limit counts objects before the selector: short and empty pages still carry continue."""
    for ns in ("a", "b", "c", "d", "e"):
        kube.put_secret(ns, "filler", data={"k": b"1"})
        if ns in ("a", "e"):
            kube.put_secret(ns, "pull", data={"k": b"1"})
    pages: list[list[str]] = []
    token = None
    while True:
        page = core.list_secret_for_all_namespaces(
            field_selector="metadata.name=pull", limit=2, _continue=token
        )
        pages.append([f"{s.metadata.namespace}/{s.metadata.name}" for s in page.items])
        assert page.metadata.remaining_item_count is None  # never on a selected list
        token = page.metadata._continue
        if not token:
            break
    # keys in order: a/filler a/pull b/filler c/filler d/filler e/filler e/pull
    assert pages == [["a/pull"], [], [], ["e/pull"]]
    whole = core.list_namespaced_secret("a", limit=1)
    assert whole.metadata.remaining_item_count == 1


def test_continue_tokens_expire_with_compaction(kube: KubeAPIServer, ca_file: str) -> None:
    """A token from before a compaction is 410 Expired; an undecodable one is 400, as in kube."""
    for ns in ("a", "b", "c"):
        kube.put_secret(ns, "pull", data={"k": b"1"})
    first = raw(kube, "GET", "/api/v1/secrets?limit=1", ca_file=ca_file).json()
    token = first["metadata"]["continue"]
    assert raw(kube, "GET", f"/api/v1/secrets?limit=1&continue={token}", ca_file=ca_file).status_code == 200
    kube.put_secret("d", "pull", data={"k": b"1"})
    kube.store.compact()
    expired = raw(kube, "GET", f"/api/v1/secrets?limit=1&continue={token}", ca_file=ca_file)
    assert expired.status_code == 410
    assert expired.json()["reason"] == "Expired" and expired.json()["kind"] == "Status"
    garbage = raw(kube, "GET", "/api/v1/secrets?limit=1&continue=not-a-token", ca_file=ca_file)
    assert garbage.status_code == 400 and garbage.json()["reason"] == "BadRequest"


def test_secret_selectable_fields(kube: KubeAPIServer, core: client.CoreV1Api) -> None:
    """Secrets select on metadata.name, metadata.namespace and type; anything else is 400."""
    kube.put_secret("a", "pull", type=DOCKERCFG, data={".dockerconfigjson": b"{}"})
    kube.put_secret("a", "plain", data={"k": b"1"})
    assert [
        s.metadata.name for s in core.list_namespaced_secret("a", field_selector=f"type={DOCKERCFG}").items
    ] == ["pull"]
    assert len(core.list_secret_for_all_namespaces(field_selector="metadata.namespace=a").items) == 2
    for bad in ("data.k=1", "metadata.labels=x", "status.phase=Active"):
        with pytest.raises(ApiException) as err:
            core.list_namespaced_secret("a", field_selector=bad)
        assert err.value.status == 400, bad


def test_namespace_list_pages(kube: KubeAPIServer, core: client.CoreV1Api) -> None:
    """The namespace LIST honours limit/continue (with remainingItemCount when unselected)."""
    for name in ("n1", "n2", "n3"):
        kube.add_namespace(name, {"team": "x"})
    first = core.list_namespace(limit=2)
    assert [n.metadata.name for n in first.items] == ["default", "n1"]
    assert first.metadata.remaining_item_count == 2
    rest = core.list_namespace(limit=2, _continue=first.metadata._continue)
    assert [n.metadata.name for n in rest.items] == ["n2", "n3"] and not rest.metadata._continue
    selected = core.list_namespace(label_selector="team=x", limit=2)
    assert [n.metadata.name for n in selected.items] == ["n1"] and selected.metadata._continue
