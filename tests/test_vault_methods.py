"""The ``jwt`` and ``cert`` auth methods end to end against real OpenBao (issue 11, item 7)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from syncer.config import VaultAuthSettings
from syncer.vault import VaultErrorKind, VaultSource
from tests.support.operator import NS, run_cmd
from tests.support.vault import BaoServer
from tests.support.vault_fixtures import BaoPaths, FakeClock, error_of, reg, vsettings

_PASSWORD = "PASSWORD-SENTINEL-jwtcert-51"

pytest_plugins = ["tests.support.operator_fixtures"]  # the world fixture


def _life_cycle(bao: BaoServer, src: VaultSource, clock: FakeClock, path: str) -> None:
    """Login, renewal before the TTL runs low, and re-login after the token is revoked."""
    assert src.read(reg(path)).credential.password == _PASSWORD
    assert (src.logins, src.renewals) == (1, 0)
    clock.advance(50 * 60)  # 10 of 60 minutes left: below a third, renew
    src.ensure_login()
    assert (src.logins, src.renewals) == (1, 1)
    ttl = src.token_ttl()
    assert ttl is not None and ttl > 3000
    first = src._client.token
    bao.revoke_token(first)
    assert src.read(reg(path)).credential.password == _PASSWORD
    assert src.logins == 2
    second = src._client.token
    src.close()
    assert not bao.token_valid(second), "close() must revoke the token it obtained"


# ---------------------------------------------------------------------------- jwt


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_pem(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _sign(key: rsa.RSAPrivateKey, audience: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": "https://kubernetes.default.svc", "sub": "system:serviceaccount:registry-sync:syncer",
            "aud": [audience], "iat": now, "nbf": now - 5, "exp": now + 3600, **claims}
    return pyjwt.encode(body, key, algorithm="RS256")


@pytest.fixture
def jwt_mount(bao: BaoServer, bao_paths: BaoPaths, signing_key: rsa.RSAPrivateKey) -> tuple[str, str]:
    """A jwt auth mount trusting ``signing_key``, role ``syncer`` for audience ``vault``."""
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": _PASSWORD})
    mount = bao_paths.name("jwt")
    bao.enable_jwt_auth(mount, _public_pem(signing_key), role="syncer", audience="vault",
                        policies=[bao.read_policy([path])])
    return mount, path


def test_jwt_login_renew_relogin(bao, jwt_mount, signing_key, tmp_path, sources, caplog):
    caplog.set_level(logging.DEBUG)
    mount, path = jwt_mount
    token_file = tmp_path / "token"
    token = _sign(signing_key, "vault")
    token_file.write_text(token)
    clock = FakeClock()
    auth = VaultAuthSettings(method="jwt", mount=mount, role="syncer", jwt_file=str(token_file))
    src = sources(vsettings(bao.address, auth), clock=clock)
    _life_cycle(bao, src, clock, path)
    assert token not in caplog.text and _PASSWORD not in caplog.text


def test_jwt_with_wrong_audience_is_auth_error(bao, jwt_mount, signing_key, tmp_path, sources):
    mount, _ = jwt_mount
    token_file = tmp_path / "token"
    token = _sign(signing_key, "kubernetes")
    token_file.write_text(token)
    auth = VaultAuthSettings(method="jwt", mount=mount, role="syncer", jwt_file=str(token_file))
    err = error_of(sources(vsettings(bao.address, auth)).ensure_login)
    assert (err.kind, err.path) == (VaultErrorKind.AUTH, f"auth/{mount}")
    assert token not in str(err) + repr(err)


def test_jwt_signed_by_another_key_is_auth_error(bao, jwt_mount, tmp_path, sources):
    mount, _ = jwt_mount
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token_file = tmp_path / "token"
    token_file.write_text(_sign(other, "vault"))
    auth = VaultAuthSettings(method="jwt", mount=mount, role="syncer", jwt_file=str(token_file))
    assert error_of(sources(vsettings(bao.address, auth)).ensure_login).kind is VaultErrorKind.AUTH


def test_jwt_file_is_reread_at_relogin(bao, jwt_mount, signing_key, tmp_path, sources):
    """The kubelet rotates a projected token in place: a re-login presents the new one."""
    mount, path = jwt_mount
    token_file = tmp_path / "token"
    token_file.write_text(_sign(signing_key, "vault", jti="first"))
    auth = VaultAuthSettings(method="jwt", mount=mount, role="syncer", jwt_file=str(token_file))
    src = sources(vsettings(bao.address, auth))
    src.read(reg(path))
    token_file.write_text("not-a-jwt")  # a re-login now must fail: proves the file is re-read
    bao.revoke_token(src._client.token)
    assert error_of(lambda: src.read(reg(path))).kind is VaultErrorKind.AUTH
    token_file.write_text(_sign(signing_key, "vault", jti="second"))
    assert src.read(reg(path)).credential.password == _PASSWORD


# ---------------------------------------------------------------------------- cert


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    """The CA that issues the syncer's client certificate (not the one of Vault's listener)."""
    return trustme.CA()


def _client_pair(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    # Vault names the entity alias after the subject CN: a certificate without one is refused.
    issued = ca.issue_cert("registry-syncer.example.com", common_name="registry-syncer")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    return str(cert), str(key)


@pytest.fixture
def cert_mount(bao_tls: BaoServer, bao_paths: BaoPaths, client_ca: trustme.CA) -> tuple[str, str]:
    path = bao_paths.kv()
    bao_tls.kv_put(path, {"username": "u", "password": _PASSWORD})
    mount = bao_paths.name("cert")
    bao_tls.enable_cert_auth(mount, client_ca.cert_pem.bytes().decode(), role="syncer",
                             policies=[bao_tls.read_policy([path])])
    return mount, path


def test_cert_login_renew_relogin(bao_tls, cert_mount, client_ca, ca_file, tmp_path, sources):
    mount, path = cert_mount
    cert, key = _client_pair(client_ca, tmp_path)
    clock = FakeClock()
    auth = VaultAuthSettings(method="cert", mount=mount, role="syncer", client_cert=cert,
                             client_key=key)
    src = sources(vsettings(bao_tls.tls_address, auth, ca_cert=ca_file), clock=clock)
    _life_cycle(bao_tls, src, clock, path)


def test_cert_from_an_untrusted_ca_is_auth_error(bao_tls, cert_mount, ca_file, tmp_path,
                                                 sources):
    mount, _ = cert_mount
    cert, key = _client_pair(trustme.CA(), tmp_path)
    auth = VaultAuthSettings(method="cert", mount=mount, client_cert=cert, client_key=key)
    err = error_of(sources(vsettings(bao_tls.tls_address, auth, ca_cert=ca_file)).ensure_login)
    assert (err.kind, err.path) == (VaultErrorKind.AUTH, f"auth/{mount}")
    assert "PRIVATE KEY" not in str(err)


def test_cert_without_role_tries_every_matching_role(bao_tls, cert_mount, client_ca, ca_file,
                                                     tmp_path, sources):
    mount, path = cert_mount
    cert, key = _client_pair(client_ca, tmp_path)
    auth = VaultAuthSettings(method="cert", mount=mount, client_cert=cert, client_key=key)
    src = sources(vsettings(bao_tls.tls_address, auth, ca_cert=ca_file))
    assert src.read(reg(path)).credential.password == _PASSWORD


def test_check_names_the_jwt_method_and_role(world, jwt_mount, signing_key, tmp_path):
    """`syncer check` says which method and role it logged in with."""
    mount, path = jwt_mount
    token_file = tmp_path / "jwt"
    token_file.write_text(_sign(signing_key, "vault"))
    token_file.chmod(0o644)
    world.secrets.add(token_file.read_text())
    cfg = world.config([{"host": "r.example.com", "path": "unused"}],
                       [{"namespace": NS, "name": "pull", "create": True}],
                       auth={"method": "jwt", "mount": mount, "role": "syncer",
                             "jwt_file": str(token_file)}, probe={"enabled": False})
    out = run_cmd(world, "check", cfg).out
    assert f"(auth: jwt at auth/{mount}, role syncer)" in out
    assert "WARN  vault.auth.jwt_file" in out
