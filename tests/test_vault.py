"""VaultSource against a real OpenBao dev server."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from syncer import config
from syncer.config import VaultAuthSettings
from syncer.vault import (
    FORBIDDEN_RELOGIN_INTERVAL,
    VaultError,
    VaultErrorKind,
    VaultSource,
    make_client,
)
from tests.support.net import free_port
from tests.support.vault import BaoServer
from tests.support.vault_fixtures import BaoPaths, FakeClock, error_of, reg, vsettings


def token_auth(token: str = "", token_file: str = "") -> VaultAuthSettings:
    return VaultAuthSettings(method="token", token=token, token_file=token_file)


@pytest.fixture
def approle(bao: BaoServer, bao_paths: BaoPaths, tmp_path: Path) -> Callable[..., VaultAuthSettings]:
    """Mount AppRole at a unique path with a role reading the given KV paths."""

    def make(paths: list[str], token_ttl: str = "1h", secret_id: str | None = None
             ) -> VaultAuthSettings:
        mount = bao_paths.name("approle")
        policy = bao.read_policy(paths, name=bao_paths.name("approle-pol"))
        role_id, generated = bao.enable_approle(
            mount=mount, role="syncer", policies=[policy], token_ttl=token_ttl
        )
        if secret_id:
            bao.approle_custom_secret_id(secret_id, mount=mount, role="syncer")
        sid_file = tmp_path / "secret-id"
        sid_file.write_text((secret_id or generated) + "\n")
        return VaultAuthSettings(
            method="approle", mount=mount, role_id=role_id, secret_id_file=str(sid_file)
        )

    return make


# ---------------------------------------------------------------------------- token auth


def test_token_file_reads_kv2_with_version(bao, bao_paths, tmp_path, sources):
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "robot$ci", "password": "old"})
    bao.kv_put(path, {"username": "robot$ci", "password": "p:w"})
    token = bao.create_token([bao.read_policy([path])])
    tf = tmp_path / "token"
    tf.write_text(token + "\n")
    src = sources(vsettings(bao.address, token_auth(token_file=str(tf))))

    got = src.read(reg(path))

    assert got.version == 2
    assert got.credential.username == "robot$ci"
    assert got.credential.password == "p:w"
    assert src.logins == 1
    ttl = src.token_ttl()
    assert ttl is not None and 3500 < ttl <= 3600


def test_token_from_vault_token_env_fallback(bao, bao_paths, sources):
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "p"})
    token = bao.create_token([bao.read_policy([path])])
    settings = config.from_mapping(
        {
            "vault": {"auth": {"method": "token"}},
            "registries": [{"host": "r.example.com", "path": path}],
            "targets": [{"namespace": "ns", "name": "pull"}],
        },
        env={"VAULT_ADDR": bao.address, "VAULT_TOKEN": token},
    )
    src = sources(settings.vault)

    assert src.read(settings.registries[0]).credential.password == "p"
    assert src.logins == 1


def test_vault_token_alone_selects_token_auth(bao, bao_paths, sources):
    """No [vault.auth] table + VAULT_TOKEN: token auth, as the vault CLI does (issue 11.6)."""
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "p"})
    token = bao.create_token([bao.read_policy([path])])
    data = {"registries": [{"host": "r.example.com", "path": path}],
            "targets": [{"namespace": "ns", "name": "pull"}]}
    settings = config.from_mapping(data, env={"VAULT_ADDR": bao.address, "VAULT_TOKEN": token})
    assert settings.vault.auth.method == "token"
    assert sources(settings.vault).read(settings.registries[0]).credential.password == "p"


def test_an_auth_table_wins_over_vault_token():
    """Explicit config > VAULT_TOKEN: a [vault.auth] table without ``method`` keeps the default."""
    data = {"vault": {"auth": {"role": "syncer"}},
            "registries": [{"host": "r.example.com", "path": "x"}],
            "targets": [{"namespace": "ns", "name": "pull"}]}
    settings = config.from_mapping(data, env={"VAULT_ADDR": "https://v.example.com",
                                              "VAULT_TOKEN": "s.env"})
    assert settings.vault.auth.method == "kubernetes"
    with pytest.raises(config.ConfigError) as info:
        config.from_mapping({k: v for k, v in data.items() if k != "vault"},
                            env={"VAULT_ADDR": "https://v.example.com"})
    assert "vault.auth.role: is required when method = 'kubernetes'" in str(info.value)


@pytest.mark.parametrize(("auth", "problem"), [
    ({"method": "jwt"}, "vault.auth.role: is required when method = 'jwt'"),
    ({"method": "cert", "client_key": "/k"}, "vault.auth.client_cert: is required when method = 'cert'"),
    ({"method": "cert", "client_cert": "/c", "client_key": "/k"}, "vault.address: must be https://"),
])
def test_jwt_and_cert_config_errors(auth, problem):
    data = {"vault": {"address": "http://v.example.com:8200", "auth": auth},
            "registries": [{"host": "r.example.com", "path": "x"}],
            "targets": [{"namespace": "ns", "name": "pull"}]}
    with pytest.raises(config.ConfigError) as info:
        config.from_mapping(data, env={})
    assert problem in str(info.value)


def test_jwt_defaults_to_the_projected_vault_token():
    data = {"vault": {"address": "https://v", "auth": {"method": "jwt", "role": "syncer"}},
            "registries": [{"host": "r.example.com", "path": "x"}],
            "targets": [{"namespace": "ns", "name": "pull"}]}
    auth = config.from_mapping(data, env={}).vault.auth
    assert (auth.mount_path, auth.jwt_file) == ("jwt", config.DEFAULT_AUDIENCE_JWT_FILE)


def test_token_file_rotation_is_picked_up(bao, bao_paths, tmp_path, sources):
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "p"})
    policy = bao.read_policy([path])
    first, second = bao.create_token([policy]), bao.create_token([policy])
    tf = tmp_path / "token"
    tf.write_text(first)
    src = sources(vsettings(bao.address, token_auth(token_file=str(tf))))
    assert src.read(reg(path)).credential.password == "p"

    tf.write_text(second)
    bao.revoke_token(first)
    assert src.read(reg(path)).credential.password == "p"
    assert src.logins == 2
    src.close()
    assert bao.token_valid(second), "a supplied token must never be revoked"


def test_token_file_rotated_after_forbidden_is_used(bao, bao_paths, tmp_path, sources):
    """A 403 makes the source re-read the token file; a new token there is retried."""
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "p"})
    weak = bao.create_token(["default"])
    strong = bao.create_token([bao.read_policy([path])])
    contents = iter([weak, strong, strong, strong])
    src = sources(
        vsettings(bao.address, token_auth(token_file="/unused")),
        read_file=lambda _path: next(contents),
    )
    assert src.read(reg(path)).credential.password == "p"
    assert src.logins == 2


def test_token_method_with_revoked_token_is_auth_error(bao, bao_paths, sources):
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "p"})
    token = bao.create_token([bao.read_policy([path])])
    src = sources(vsettings(bao.address, token_auth(token=token)))
    src.read(reg(path))
    bao.revoke_token(token)

    err = error_of(lambda: src.read(reg(path)))
    assert err.kind is VaultErrorKind.AUTH
    assert err.path == f"secret/{path}"
    assert "revoked or expired" in str(err)


def test_invalid_supplied_token_fails_at_login(bao, sources):
    src = sources(vsettings(bao.address, token_auth(token="s.not-a-real-token")))
    err = error_of(src.ensure_login)
    assert err.kind is VaultErrorKind.AUTH
    assert err.path == "auth/token"
    assert src.logins == 0


def test_unreadable_token_file_is_auth_error(bao, tmp_path, sources):
    missing = tmp_path / "nope"
    src = sources(vsettings(bao.address, token_auth(token_file=str(missing))))
    err = error_of(src.ensure_login)
    assert err.kind is VaultErrorKind.AUTH
    assert str(missing) in str(err)


# ---------------------------------------------------------------------------- AppRole


def test_approle_logs_in_once_across_many_reads_and_close_revokes(bao, bao_paths, approle,
                                                                    sources):
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "p"})
    src = sources(vsettings(bao.address, approle([path])))
    before = bao.token_accessors()

    for _ in range(25):
        assert src.read(reg(path)).credential.password == "p"
    assert src.logins == 1
    assert len(bao.token_accessors() - before) == 1
    login_token = src._client.token
    assert bao.token_valid(login_token)

    src.close()
    assert not bao.token_valid(login_token)
    assert bao.token_accessors() - before == set()
    assert src.token_ttl() is None
    src.close()  # idempotent


def test_parallel_reads_share_one_login(bao, bao_paths, approle, sources):
    paths = [bao_paths.kv(f"c{i}") for i in range(8)]
    for i, p in enumerate(paths):
        bao.kv_put(p, {"username": "u", "password": f"p{i}"})
    src = sources(vsettings(bao.address, approle(paths)))
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda p: src.read(reg(p)).credential.password, paths * 4))
    assert got == [f"p{i}" for i in range(8)] * 4
    assert src.logins == 1


def test_revoked_login_token_triggers_relogin(bao, bao_paths, approle, sources):
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "p"})
    src = sources(vsettings(bao.address, approle([path])))
    src.read(reg(path))
    bao.revoke_token(src._client.token)

    assert src.read(reg(path)).credential.password == "p"
    assert src.logins == 2


def test_bad_secret_id_is_auth_error(bao, bao_paths, approle, tmp_path, sources):
    auth = approle([bao_paths.kv()])
    Path(auth.secret_id_file).write_text("wrong-secret-id")
    err = error_of(sources(vsettings(bao.address, auth)).ensure_login)
    assert err.kind is VaultErrorKind.AUTH
    assert err.path == f"auth/{auth.mount}"


def test_forbidden_path_does_not_block_others_and_causes_no_login_storm(
        bao, bao_paths, approle, sources):
    allowed, denied = bao_paths.kv("allowed"), bao_paths.kv("denied")
    bao.kv_put(allowed, {"username": "u", "password": "ok"})
    bao.kv_put(denied, {"username": "u", "password": "no"})
    clock = FakeClock()
    src = sources(vsettings(bao.address, approle([allowed])), clock=clock)
    before = bao.token_accessors()

    for _ in range(3):
        err = error_of(lambda: src.read(reg(denied)))
        assert err.kind is VaultErrorKind.FORBIDDEN
        assert err.path == f"secret/{denied}"
        assert f"secret/{denied}" in str(err)
        assert src.read(reg(allowed)).credential.password == "ok"
    assert src.logins == 1, "a fresh, valid token is not replaced on every 403"

    # Once the token is old, a 403 gets one fresh login (policies may have changed) ...
    clock.advance(FORBIDDEN_RELOGIN_INTERVAL + 1)
    err = error_of(lambda: src.read(reg(denied)))
    assert err.kind is VaultErrorKind.FORBIDDEN
    assert src.logins == 2
    # ... and the replaced token is revoked: still exactly one live token.
    assert len(bao.token_accessors() - before) == 1


def test_forbidden_with_token_method(bao, bao_paths, sources):
    allowed, denied = bao_paths.kv("allowed"), bao_paths.kv("denied")
    bao.kv_put(allowed, {"username": "u", "password": "ok"})
    bao.kv_put(denied, {"username": "u", "password": "no"})
    src = sources(vsettings(bao.address, token_auth(bao.create_token([bao.read_policy([allowed])]))))
    err = error_of(lambda: src.read(reg(denied)))
    assert err.kind is VaultErrorKind.FORBIDDEN
    assert src.read(reg(allowed)).credential.password == "ok"


# ---------------------------------------------------------------------------- TTL handling


def test_renewable_token_is_renewed_when_low(bao, bao_paths, sources):
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "p"})
    clock = FakeClock()
    token = bao.create_token([bao.read_policy([path])], ttl="60s")
    src = sources(vsettings(bao.address, token_auth(token)), clock=clock)
    src.read(reg(path))
    assert src.token_ttl() == pytest.approx(60, abs=2)

    clock.advance(30)  # half left: no renewal yet
    src.read(reg(path))
    assert src.renewals == 0
    assert src.token_ttl() == pytest.approx(30, abs=2)

    clock.advance(15)  # a quarter left: renew
    src.read(reg(path))
    assert src.renewals == 1
    assert src.token_ttl() == pytest.approx(60, abs=2)
    assert src.logins == 1


def test_non_renewable_supplied_token_is_just_used(bao, bao_paths, sources):
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "p"})
    clock = FakeClock()
    token = bao.create_token([bao.read_policy([path])], ttl="60s", renewable=False)
    src = sources(vsettings(bao.address, token_auth(token)), clock=clock)
    src.read(reg(path))
    clock.advance(50)
    assert src.read(reg(path)).credential.password == "p"
    assert (src.renewals, src.logins) == (0, 1)


def test_approle_token_is_renewed(bao, bao_paths, approle, sources):
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "p"})
    clock = FakeClock()
    src = sources(vsettings(bao.address, approle([path], token_ttl="90s")), clock=clock)
    src.read(reg(path))
    clock.advance(70)
    src.read(reg(path))
    assert (src.renewals, src.logins) == (1, 1)


def test_expired_login_token_means_new_login_and_old_one_revoked(bao, bao_paths, approle,
                                                                 sources):
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "p"})
    clock = FakeClock()
    src = sources(vsettings(bao.address, approle([path], token_ttl="60s")), clock=clock)
    src.read(reg(path))
    old = src._client.token

    clock.advance(61)
    assert src.token_ttl() == 0
    assert src.read(reg(path)).credential.password == "p"
    assert src.logins == 2
    assert src._client.token != old
    assert not bao.token_valid(old)


def test_really_short_ttl_token_expires_and_relogin_works(bao, bao_paths, approle, sources):
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "p"})
    src = sources(vsettings(bao.address, approle([path], token_ttl="2s")))
    src.read(reg(path))
    time.sleep(2.2)
    assert src.read(reg(path)).credential.password == "p"
    assert src.logins == 2


def test_root_token_never_expires(bao, bao_paths, sources):
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "p"})
    src = sources(vsettings(bao.address, token_auth(bao.root_token)))
    assert src.token_ttl() is None
    src.read(reg(path))
    assert src.token_ttl() == math.inf


# ---------------------------------------------------------------------------- KV shapes


def test_kv_v1(bao, bao_paths, sources):
    mount = bao_paths.name("kv1")
    bao.kv1_enable(mount)
    bao.kv1_put(mount, "reg/ghcr", {"user": "bot", "token": "t0k"})
    src = sources(vsettings(bao.address, token_auth(bao.root_token), kv_mount=mount,
                            kv_version=1))
    got = src.read(reg("reg/ghcr", username_key="user", password_key="token"))
    assert got.version is None
    assert (got.credential.username, got.credential.password) == ("bot", "t0k")

    err = error_of(lambda: src.read(reg("reg/none")))
    assert err.kind is VaultErrorKind.MISSING
    assert f"{mount}/reg/none" in str(err)


def test_namespace(bao, bao_paths, sources):
    ns = bao_paths.name("ns")
    bao.create_namespace(ns)
    bao.kv2_enable("secret", namespace=ns)
    bao.client(namespace=ns).secrets.kv.v2.create_or_update_secret(
        path="reg/x", secret={"username": "u", "password": "in-ns"}, mount_point="secret")
    token = bao.create_token([bao.read_policy(["reg/x"], namespace=ns)], namespace=ns)
    src = sources(vsettings(bao.address, token_auth(token), namespace=ns))
    assert src.read(reg("reg/x")).credential.password == "in-ns"

    # the same path outside the namespace does not exist
    root_src = sources(vsettings(bao.address, token_auth(bao.root_token)))
    assert error_of(lambda: root_src.read(reg("reg/x"))).kind is VaultErrorKind.MISSING


def test_fixed_username_reads_only_the_password(bao, bao_paths, sources):
    path = bao_paths.kv("ngc")
    bao.kv_put(path, {"api_key": "nvapi-123"})
    src = sources(vsettings(bao.address, token_auth(bao.root_token)))
    got = src.read(reg(path, username="$oauthtoken", password_key="api_key"))
    assert (got.credential.username, got.credential.password) == ("$oauthtoken", "nvapi-123")


def test_missing_path(bao, bao_paths, sources):
    path = bao_paths.kv("absent")
    src = sources(vsettings(bao.address, token_auth(bao.root_token)))
    err = error_of(lambda: src.read(reg(path)))
    assert err.kind is VaultErrorKind.MISSING
    assert err.path == f"secret/{path}"
    assert f"secret/{path}" in str(err)


def test_missing_key_names_the_key_not_values(bao, bao_paths, sources):
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "pass": "VALUE-SENTINEL"})
    src = sources(vsettings(bao.address, token_auth(bao.root_token)))
    err = error_of(lambda: src.read(reg(path)))
    assert err.kind is VaultErrorKind.INVALID
    assert "'password'" in str(err)
    assert "VALUE-SENTINEL" not in str(err)


@pytest.mark.parametrize(
    ("value", "words"),
    [(42, "number"), ({"nested": "map"}, "map"), ("", "empty"), ("   ", "empty"),
     (True, "boolean"), (["a"], "list"), (None, "null")],
)
def test_wrong_value_types_are_invalid(bao, bao_paths, sources, value, words):
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": value})
    src = sources(vsettings(bao.address, token_auth(bao.root_token)))
    err = error_of(lambda: src.read(reg(path)))
    assert err.kind is VaultErrorKind.INVALID
    assert "'password'" in str(err) and words in str(err)


def test_wrong_username_type_is_invalid(bao, bao_paths, sources):
    path = bao_paths.kv()
    bao.kv_put(path, {"username": 7, "password": "p"})
    src = sources(vsettings(bao.address, token_auth(bao.root_token)))
    err = error_of(lambda: src.read(reg(path)))
    assert err.kind is VaultErrorKind.INVALID and "'username'" in str(err)


def test_deleted_latest_version_is_missing(bao, bao_paths, sources):
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "p1"})
    bao.kv_put(path, {"username": "u", "password": "p2"})
    bao.kv_delete_latest(path)
    src = sources(vsettings(bao.address, token_auth(bao.root_token)))
    err = error_of(lambda: src.read(reg(path)))
    assert err.kind is VaultErrorKind.MISSING
    assert "deleted" in str(err) and f"secret/{path}" in str(err) and "(2)" in str(err)


def test_destroyed_latest_version_is_missing(bao, bao_paths, sources):
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "p1"})
    bao.kv_destroy_latest(path)
    src = sources(vsettings(bao.address, token_auth(bao.root_token)))
    err = error_of(lambda: src.read(reg(path)))
    assert err.kind is VaultErrorKind.MISSING
    assert "destroyed" in str(err)


# ---------------------------------------------------------------------------- transport


def test_unreachable_vault_fails_fast():
    address = f"http://127.0.0.1:{free_port()}"
    for auth in (token_auth("s.whatever"),
                 VaultAuthSettings(method="approle", role_id="r", secret_id_file="/x")):
        settings = vsettings(address, auth, timeout=1.0)
        src = VaultSource(make_client(settings), settings, read_file=lambda _p: "sid")
        start = time.monotonic()
        err = error_of(lambda src=src: src.read(reg("a/b")))
        assert err.kind is VaultErrorKind.UNREACHABLE
        assert address in str(err)
        assert time.monotonic() - start < 2


def test_silent_vault_times_out():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        address = f"http://127.0.0.1:{listener.getsockname()[1]}"
        settings = vsettings(address, token_auth("s.whatever"), timeout=0.3)
        src = VaultSource(make_client(settings), settings)
        start = time.monotonic()
        err = error_of(src.ensure_login)
        assert err.kind is VaultErrorKind.UNREACHABLE
        assert "did not answer" in str(err)
        assert time.monotonic() - start < 2


def test_sealed_vault(tmp_path):
    with BaoServer(log_dir=tmp_path) as server:
        server.kv_put("reg/x", {"username": "u", "password": "p"})
        settings = vsettings(server.address, token_auth(server.root_token))
        src = VaultSource(make_client(settings), settings)
        src.read(reg("reg/x"))
        server.seal()
        err = error_of(lambda: src.read(reg("reg/x")))
        assert err.kind is VaultErrorKind.SEALED
        server.unseal()
        deadline = time.monotonic() + 10
        while True:
            try:
                assert src.read(reg("reg/x")).credential.password == "p"
                break
            except VaultError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def test_make_client_ignores_vault_environment(bao, monkeypatch, tmp_path):
    monkeypatch.setenv("VAULT_ADDR", bao.address)
    monkeypatch.setenv("VAULT_TOKEN", bao.root_token)
    monkeypatch.setenv("VAULT_CACERT", str(tmp_path / "missing-ca.pem"))
    monkeypatch.setenv("VAULT_NAMESPACE", "nope")

    other = make_client(vsettings("http://vault.invalid:8200", token_auth("x")))
    assert other.url == "http://vault.invalid:8200"
    assert other.token == ""

    client = make_client(vsettings(bao.address, token_auth("x")))
    assert client.token == ""
    assert client.adapter.namespace is None
    assert client.adapter._kwargs["verify"] is True
    assert client.adapter._kwargs["cert"] is None
    # An unauthenticated request is refused: VAULT_TOKEN was not picked up.
    import hvac.exceptions
    with pytest.raises(hvac.exceptions.Forbidden):
        client.auth.token.lookup_self()


def test_make_client_uses_ca_cert_and_namespace(ca_file):
    client = make_client(
        vsettings("https://vault.example.com", token_auth("x"), ca_cert=ca_file, namespace="team")
    )
    assert client.adapter._kwargs["verify"] == ca_file
    assert client.adapter.namespace == "team"
    assert client.adapter.allow_redirects is False


def test_close_never_revokes_a_supplied_token(bao, bao_paths, sources):
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "p"})
    token = bao.create_token([bao.read_policy([path])])
    src = sources(vsettings(bao.address, token_auth(token)))
    src.read(reg(path))
    src.close()
    assert bao.token_valid(token)
    assert src._client.token == ""


# ---------------------------------------------------------------------------- Kubernetes auth

_HAVE_KUBEAPI = importlib.util.find_spec("tests.support.kubeapi") is not None
needs_kubeapi = pytest.mark.skipif(not _HAVE_KUBEAPI,
                                   reason="tests/support/kubeapi.py is not there yet")


@pytest.fixture
def kube_api(request: pytest.FixtureRequest, ca: Any) -> Iterator[Any]:
    """The project's Kubernetes API test server (the ``kube`` fixture when it is defined)."""
    try:
        server = request.getfixturevalue("kube")
    except pytest.FixtureLookupError:
        server = None
    if server is not None:
        yield server
        return
    from tests.support.kubeapi import KubeAPIServer

    with KubeAPIServer(ca) as own:
        yield own


def _pem(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@needs_kubeapi
def test_kubernetes_auth_end_to_end(bao, bao_paths, tmp_path, sources, kube_api, caplog):
    caplog.set_level(logging.DEBUG)
    kube = kube_api
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "via-k8s"})
    reviewer = "reviewer-token-" + bao_paths.prefix
    kube.add_token(reviewer, user="system:serviceaccount:vault:reviewer")
    mount = bao_paths.name("k8s")
    bao.enable_kubernetes_auth(
        kube_url=kube.url,
        kube_ca_pem=_pem(kube.ca_pem),
        reviewer_jwt=reviewer,
        role="syncer",
        sa_namespace="registry-sync",
        sa_name="syncer",
        policies=[bao.read_policy([path])],
        mount=mount,
    )
    jwt_file = tmp_path / "sa-token"
    good_jwt = kube.issue_service_account_token("registry-sync", "syncer")
    jwt_file.write_text(good_jwt)
    auth = VaultAuthSettings(method="kubernetes", mount=mount, role="syncer",
                             jwt_file=str(jwt_file))
    src = sources(vsettings(bao.address, auth))
    before = bao.token_accessors()
    for _ in range(3):
        assert src.read(reg(path)).credential.password == "via-k8s"
    assert src.logins == 1
    ttl = src.token_ttl()
    assert ttl is not None and 3500 < ttl <= 3600
    token = src._client.token
    src.close()
    assert not bao.token_valid(token)
    assert bao.token_accessors() - before == set()

    # A token of another ServiceAccount is refused by the role binding.
    jwt_file.write_text(kube.issue_service_account_token("registry-sync", "intruder"))
    err = error_of(sources(vsettings(bao.address, auth)).ensure_login)
    assert err.kind is VaultErrorKind.AUTH
    assert err.path == f"auth/{mount}"

    # A token whose ServiceAccount was deleted (TokenReview: unauthenticated) is refused.
    jwt_file.write_text(kube.issue_service_account_token("registry-sync", "syncer"))
    kube.remove_token(jwt_file.read_text())
    kube.delete_object("serviceaccounts", "registry-sync", "syncer")
    err2 = error_of(sources(vsettings(bao.address, auth)).ensure_login)
    assert err2.kind is VaultErrorKind.AUTH
    for jwt in (good_jwt, jwt_file.read_text()):
        for text in (str(err), repr(err), str(err2), caplog.text):
            assert jwt not in text


@needs_kubeapi
def test_kubernetes_auth_with_audience(bao, bao_paths, tmp_path, sources, kube_api):
    kube = kube_api
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "aud"})
    reviewer = "reviewer-token-" + bao_paths.prefix
    kube.add_token(reviewer, user="system:serviceaccount:vault:reviewer")
    mount = bao_paths.name("k8s")
    bao.enable_kubernetes_auth(
        kube_url=kube.url, kube_ca_pem=_pem(kube.ca_pem), reviewer_jwt=reviewer,
        role="syncer", sa_namespace="registry-sync", sa_name="syncer",
        policies=[bao.read_policy([path])], mount=mount, audience="vault",
    )
    jwt_file = tmp_path / "sa-token"
    jwt_file.write_text(
        kube.issue_service_account_token("registry-sync", "syncer", audiences=["vault"]))
    auth = VaultAuthSettings(method="kubernetes", mount=mount, role="syncer",
                             jwt_file=str(jwt_file))
    assert sources(vsettings(bao.address, auth)).read(reg(path)).credential.password == "aud"

    jwt_file.write_text(kube.issue_service_account_token("registry-sync", "syncer"))
    err = error_of(sources(vsettings(bao.address, auth)).ensure_login)
    assert err.kind is VaultErrorKind.AUTH


# ---------------------------------------------------------------------------- hygiene


def test_no_secret_ever_reaches_errors_logs_or_reprs(bao, bao_paths, approle, tmp_path,
                                                     sources, caplog):
    caplog.set_level(logging.DEBUG)
    password = "PASSWORD-SENTINEL-7f3a"
    token_value = "TOKEN-SENTINEL-9c1e"
    secret_id = "SECRETID-SENTINEL-4b2d"
    sentinels = (password, token_value, secret_id)
    good, other, absent = bao_paths.kv("good"), bao_paths.kv("other"), bao_paths.kv("absent")
    bao.kv_put(good, {"username": "u", "password": password})
    bao.kv_put(other, {"username": "u", "pw": password, "password": {"x": password}})
    readable = [good, other, absent]
    bao.create_token([bao.read_policy(readable)], token_id=token_value)

    errors: list[VaultError] = []
    objects: list[object] = []
    auth = approle(readable, secret_id=secret_id)

    tf = tmp_path / "token"
    tf.write_text(token_value)
    for settings in (vsettings(bao.address, token_auth(token_file=str(tf))),
                     vsettings(bao.address, token_auth(token=token_value)),
                     vsettings(bao.address, auth)):
        src = sources(settings)
        objects += [src, settings, src.read(reg(good)), src.read(reg(good)).credential]
        for registry in (reg(other), reg(absent),
                         reg(other, password_key="pw", username_key="nope")):
            with pytest.raises(VaultError) as info:
                src.read(registry)
            errors.append(info.value)
        with pytest.raises(VaultError) as info:
            src.read(reg(bao_paths.kv("unreadable")))  # not in the policy: 403
        errors.append(info.value)
        src.close()

    # failed logins and a revoked supplied token
    bad = replace(auth, secret_id_file=str(tmp_path / "bad-sid"))
    Path(bad.secret_id_file).write_text(secret_id + "-wrong")
    with pytest.raises(VaultError) as info:
        sources(vsettings(bao.address, bad)).ensure_login()
    errors.append(info.value)
    bao.revoke_token(token_value)
    with pytest.raises(VaultError) as info:
        sources(vsettings(bao.address, token_auth(token_value))).ensure_login()
    errors.append(info.value)

    assert {e.kind for e in errors} >= {VaultErrorKind.INVALID, VaultErrorKind.MISSING,
                                         VaultErrorKind.FORBIDDEN, VaultErrorKind.AUTH}
    texts = [str(e) for e in errors] + [repr(e) for e in errors] + [repr(o) for o in objects]
    texts += [str(o) for o in objects] + [caplog.text]
    for e in errors:
        cause = e.__cause__ or e.__context__
        while cause is not None:
            texts.append(repr(cause) + str(cause))
            cause = cause.__cause__ or cause.__context__
    for text in texts:
        for sentinel in sentinels:
            assert sentinel not in text, f"{sentinel} leaked into: {text[:300]}"
    assert "logged in to Vault" in caplog.text


def test_vault_error_kinds_are_lowercase_strings():
    assert [k.value for k in VaultErrorKind] == [
        "unreachable", "forbidden", "missing", "invalid", "sealed", "auth", "rate_limited",
        "server",
    ]
    err = VaultError(VaultErrorKind.MISSING, "secret/x", "no Vault secret at secret/x")
    assert (err.kind, err.path, str(err)) == (VaultErrorKind.MISSING, "secret/x",
                                              "no Vault secret at secret/x")


def test_threading_lock_is_reentrant_safe(bao, bao_paths, approle, sources):
    """ensure_login from many threads at once performs a single login."""
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "p"})
    src = sources(vsettings(bao.address, approle([path])))
    barrier = threading.Barrier(6)

    def go() -> None:
        barrier.wait()
        src.ensure_login()

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert src.logins == 1


# ---------------------------------------------------------------------------- odd answers


class _Stub(BaseHTTPRequestHandler):
    """Answers lookup-self like Vault; KV reads with the status the test sets."""

    disable_nagle_algorithm = True
    status = 200
    headers_out: dict[str, str] = {}
    seen_tokens: list[str | None] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        type(self).seen_tokens.append(self.headers.get("X-Vault-Token"))
        if self.path.startswith("/v1/auth/token/lookup-self"):
            self._send(200, {"data": {"ttl": 0, "creation_ttl": 0, "renewable": False}})
        else:
            self._send(self.status, {"errors": ["stub says no"]}, self.headers_out)

    def _send(self, status: int, body: dict[str, Any], extra: dict[str, str] | None = None
              ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def stub() -> Iterator[tuple[str, type[_Stub]]]:
    handler = type("Stub", (_Stub,), {"seen_tokens": [], "headers_out": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("status", "kind"),
    [(429, VaultErrorKind.RATE_LIMITED), (500, VaultErrorKind.SERVER),
     (502, VaultErrorKind.SERVER), (503, VaultErrorKind.SEALED),
     (400, VaultErrorKind.INVALID), (404, VaultErrorKind.MISSING)],
)
def test_http_status_mapping(stub, status, kind):
    address, handler = stub
    handler.status = status
    settings = vsettings(address, token_auth("stub-token"))
    src = VaultSource(make_client(settings), settings)
    err = error_of(lambda: src.read(reg("a/b")))
    assert err.kind is kind
    assert err.path == "secret/a/b"


def test_redirect_is_not_followed_with_the_token(stub, bao):
    address, handler = stub
    handler.status = 307
    handler.headers_out = {"Location": f"{bao.address}/v1/secret/data/a/b"}
    settings = vsettings(address, token_auth("stub-token"))
    src = VaultSource(make_client(settings), settings)
    err = error_of(lambda: src.read(reg("a/b")))
    assert err.kind is VaultErrorKind.SERVER
    assert "kv_version" in str(err) or "unexpected" in str(err)


def test_no_login_after_close(bao, bao_paths, approle, sources):
    """A maintenance job that runs after shutdown's close() must not log in again: that token
    would never be revoked."""
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "p"})
    src = sources(vsettings(bao.address, approle([path])))
    src.read(reg(path))
    src.close()
    before = bao.token_accessors()
    with pytest.raises(VaultError) as info:
        src.ensure_login()
    assert "closed" in str(info.value)
    with pytest.raises(VaultError):
        src.read(reg(path))
    assert src.logins == 1
    assert bao.token_accessors() - before == set()


# ---------------------------------------------------------------------------- idle connections


@pytest.fixture
def idle_proxy(bao: BaoServer) -> Iterator[Any]:
    """A proxy in front of OpenBao that drops the first request on a connection idle > 0.2 s
    (Vault's http_idle_timeout, shortened) and closes it."""
    from tests.support.proxy import FaultProxy

    proxy = FaultProxy("127.0.0.1", bao.port).start()
    proxy.swallow_idle = 0.2
    yield proxy
    proxy.stop()


def test_reads_survive_vault_closing_idle_connections(bao, bao_paths, approle, sources,
                                                      idle_proxy):
    """Issue 11.3: ten cycles spaced past the idle timeout: every read succeeds, one login."""
    paths = [bao_paths.kv("a"), bao_paths.kv("b")]
    for p in paths:
        bao.kv_put(p, {"username": "u", "password": "p-" + p})
    src = sources(vsettings(idle_proxy.url, approle(paths)))
    failed = 0
    for _ in range(10):
        for p in paths:
            try:
                assert src.read(reg(p)).credential.password == "p-" + p
            except VaultError:
                failed += 1
        time.sleep(0.3)
    assert failed == 0
    assert src.logins == 1
    assert idle_proxy.swallowed >= 9, "the proxy never dropped a request: the test proves nothing"


def test_token_lookup_is_retried_after_an_idle_close(bao, bao_paths, tmp_path, sources,
                                                     idle_proxy):
    """A rotated token file after an idle spell: lookup-self meets the dead connection, is
    retried once, and the new token is adopted."""
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "p"})
    policy = bao.read_policy([path])
    tf = tmp_path / "token"
    tf.write_text(bao.create_token([policy]))
    src = sources(vsettings(idle_proxy.url, token_auth(token_file=str(tf))))
    src.read(reg(path))
    tf.write_text(bao.create_token([policy]))
    time.sleep(0.3)
    src.ensure_login()
    assert (src.logins, idle_proxy.swallowed) == (2, 1)


def test_login_is_never_retried_on_a_dead_connection(bao, bao_paths, approle, sources,
                                                     idle_proxy):
    """A login that met a closed connection may have reached Vault: it fails for this cycle
    (unreachable) instead of being sent again, and the next cycle logs in."""
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "p"})
    clock = FakeClock()
    src = sources(vsettings(idle_proxy.url, approle([path], token_ttl="1h")), clock=clock)
    src.read(reg(path))
    connections = idle_proxy.connections
    time.sleep(0.3)
    clock.advance(3600)  # the token expired: the next request is a login
    err = error_of(src.ensure_login)
    assert err.kind is VaultErrorKind.UNREACHABLE
    assert idle_proxy.swallowed == 1
    assert idle_proxy.connections == connections, "the login was sent again"
    src.ensure_login()
    assert src.logins == 2
