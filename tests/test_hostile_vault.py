"""Hostile rows for the Vault side (issue 16, item 5): what an outsider controls in Vault, in a
Vault address or in a credential file cannot leak, hang or mislead. One row per test."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from syncer import config
from syncer.config import VaultAuthSettings
from syncer.secretfiles import MAX_SECRET_FILE_BYTES
from syncer.vault import VaultError, VaultErrorKind
from tests.support.operator import NS, run_cmd
from tests.support.vault_fixtures import error_of, reg, vsettings
from tests.support.world import World, sentinel

pytest_plugins = ["tests.support.operator_fixtures"]  # the world fixture


def _fails_fast(fn: Any, seconds: float = 5.0) -> VaultError:
    """Run ``fn`` in a thread; a hang (a FIFO read) fails the test instead of stalling it."""
    box: list[BaseException] = []

    def go() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box.append(exc)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "reading the credential file hung"
    assert box and isinstance(box[0], VaultError), f"expected a VaultError, got {box!r}"
    return box[0]


def test_username_with_colon_is_refused_at_read_time_with_probe_off(world: World) -> None:
    """Attack: a Vault writer stores ``user:extra`` as the username; docker would read the part
    after ':' as the password. Safe: with the probe off the registry still fails, named with its
    Vault path, the username never printed; the other registry's target is written."""
    hostile_user = "SENTINEL-user-3c1:" + sentinel("tail")
    world.secrets.add(hostile_user)
    world.vault_put("evil", username=hostile_user, password=sentinel("evil"))
    world.vault_put("good", username="robot$ci", password=sentinel("good"))
    cfg = world.config(
        [{"host": "evil.example.com", "path": "evil"}, {"host": "good.example.com", "path": "good"}],
        [{"namespace": NS, "name": "pull", "create": True}], probe={"enabled": False},
    )
    result = world.run(cfg)
    assert result.code == 1
    out = result.out + result.err
    assert "evil.example.com" in out and world.path("evil") in out and "contains ':'" in out
    assert "SENTINEL-user-3c1" not in out
    auths = world.secret_doc(NS, "pull")["auths"]
    assert set(auths) == {"good.example.com"}


def test_fixed_username_with_colon_is_refused_too(bao: Any, bao_paths: Any, sources: Any) -> None:
    """Attack: the same ':' in a username fixed in the config. Safe: refused at read (INVALID)."""
    path = bao_paths.kv()
    bao.kv_put(path, {"password": "p"})
    token = bao.create_token([bao.read_policy([path])])
    src = sources(vsettings(bao.address, VaultAuthSettings(method="token", token=token)))
    err = error_of(lambda: src.read(reg(path, username="a:b")))
    assert err.kind is VaultErrorKind.INVALID and "a:b" not in str(err)


def test_vault_address_userinfo_is_never_printed(world: World) -> None:
    """Attack: ``vault.address`` carries ``user:password@`` (a proxy in front of Vault). Safe: run
    output, check output, errors of an unreachable Vault, config errors and reprs show ``***@``."""
    secret = sentinel("vaultpw")
    world.secrets.add(secret)
    world.vault_put("cred", username="u", password=sentinel("cred"))
    host = world.bao.address.removeprefix("http://")
    targets = [{"namespace": NS, "name": "pull", "create": True}]
    good = world.config([{"host": "r.example.com", "path": "cred"}], targets,
                        vault={"address": f"http://admin:{secret}@{host}"}, probe={"enabled": False})
    assert world.run(good).code == 0
    check = run_cmd(world, "check", good)
    assert "***@" in check.out
    dead = world.config([{"host": "r.example.com", "path": "cred"}], targets,
                        vault={"address": f"http://admin:{secret}@127.0.0.1:1"})
    result = world.run(dead)
    assert result.code == 1 and "***@127.0.0.1:1" in result.out + result.err
    bad = world.config([{"host": "r.example.com", "path": "cred"}], targets,
                       vault={"address": f"http://admin:{secret}@bad host"})
    invalid = world.run(bad)
    assert invalid.code == 2 and "***@bad host" in invalid.err + invalid.out
    settings = config.from_mapping({"vault": {"address": f"https://a:{secret}@v.example.com",
                                              "auth": {"method": "token", "token_file": "/t"}},
                                    "registries": [{"host": "r.example.com", "path": "x"}],
                                    "targets": [{"namespace": "ns", "name": "pull"}]}, env={})
    for text in (repr(settings), str(settings.vault), settings.vault.shown_address):
        assert secret not in text


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_token_file_that_is_not_a_regular_file_is_refused(tmp_path: Path, kind: str,
                                                          sources: Any) -> None:
    """Attack: ``token_file`` is a FIFO nobody writes (a hang) or ``/dev/zero`` (memory
    exhaustion). Safe: refused at once as not a regular file, an AUTH error naming the file."""
    if kind == "fifo":
        path = str(tmp_path / "token")
        os.mkfifo(path)
    else:
        path = "/dev/zero"
    settings = vsettings("http://127.0.0.1:1", VaultAuthSettings(method="token", token_file=path))
    err = _fails_fast(sources(settings).ensure_login)
    assert err.kind is VaultErrorKind.AUTH
    assert path in str(err) and "not a regular file" in str(err)


def test_oversized_secret_id_file_is_refused(tmp_path: Path, sources: Any) -> None:
    """Attack: a secret ID file of 100 MiB-style garbage. Safe: refused past 64 KiB, never read
    whole, nothing sent to Vault."""
    big = tmp_path / "secret-id"
    big.write_bytes(b"x" * (MAX_SECRET_FILE_BYTES + 1))
    auth = VaultAuthSettings(method="approle", role_id="r", secret_id_file=str(big))
    err = error_of(sources(vsettings("http://127.0.0.1:1", auth)).ensure_login)
    assert err.kind is VaultErrorKind.AUTH and "larger than" in str(err)


def test_jwt_file_fifo_is_refused(tmp_path: Path, sources: Any) -> None:
    """Attack: the jwt method's token path replaced by a FIFO. Safe: refused, no hang."""
    path = tmp_path / "jwt"
    os.mkfifo(path)
    auth = VaultAuthSettings(method="jwt", role="syncer", jwt_file=str(path))
    err = _fails_fast(sources(vsettings("http://127.0.0.1:1", auth)).ensure_login)
    assert "not a regular file" in str(err)


def test_client_key_fifo_is_refused_before_openssl_reads_it(tmp_path: Path, ca_file: str,
                                                           sources: Any) -> None:
    """Attack: ``client_key`` is a FIFO; OpenSSL would block in the handshake. Safe: the file is
    checked first and refused."""
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    os.mkfifo(key)
    auth = VaultAuthSettings(method="cert", client_cert=str(cert), client_key=str(key))
    err = _fails_fast(sources(vsettings("https://127.0.0.1:1", auth, ca_cert=ca_file)).ensure_login)
    assert "client key" in str(err) and "not a regular file" in str(err)


def test_check_warns_on_a_token_file_readable_by_others(world: World) -> None:
    """Attack: the token file is world-readable (another local user can steal it). Safe: `syncer
    check` warns naming the key and the fix, without failing; a 0600 file gets no warning."""
    world.vault_put("cred", username="u", password=sentinel("cred"))
    cfg = world.config([{"host": "r.example.com", "path": "cred"}],
                       [{"namespace": NS, "name": "pull", "create": True}], probe={"enabled": False})
    world.token_file.chmod(0o644)
    loose = run_cmd(world, "check", cfg)
    assert "vault.auth.token_file" in loose.out and "readable by group or others" in loose.out
    assert "chmod 600" in loose.out
    world.token_file.chmod(0o600)
    tight = run_cmd(world, "check", cfg)
    assert "vault.auth.token_file" not in tight.out
    assert loose.code == tight.code
