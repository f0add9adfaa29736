"""Secret hygiene, proven: run scenarios with sentinel credentials and search every captured byte.

Sentinels: registry passwords (and their base64 ``user:pass`` auth forms), a Vault token chosen
by the test, an AppRole secret ID chosen by the test, the registry bearer tokens the token server
issued, and the Kubernetes bearer token. Searched: stdout/stderr in text and JSON formats at debug
level, ``--dry-run`` output, ``check`` and ``show`` output, the daemon's output and ``/metrics``,
Events, annotations and labels of every secret, exception messages, and ``repr``/``str`` of the
config, credential, snapshot, summary and client objects.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from syncer import config as config_mod
from syncer.cli import build_app, main
from syncer.credential import Credential, VersionedCredential
from syncer.kube import SecretStore
from syncer.kube_api import TokenFile
from syncer.vault import VaultError, VaultSource, make_client
from tests.support.net import free_port
from tests.support.scenario import make_world
from tests.support.world import SYNCER_TOKEN, DaemonProcess, World, sentinel

NS = "domino-compute"
NAME = "domino-quay-repos"


@pytest.fixture
def world(tmp_path: Path, bao: Any, kube: Any, ca_file: str) -> World:
    w = make_world(tmp_path, bao, kube, ca_file, NS)
    w.secrets.add(SYNCER_TOKEN)
    return w


@pytest.fixture
def scenario(world: World, htpasswd_registry: Any, token_registry: Any) -> dict[str, Any]:
    """Three registries (Basic ok, Bearer ok, Basic rejected), one missing Vault path, two
    targets (one to update, one to create), a sentinel Vault token in the token file."""
    vault_token = f"SENTINEL-vtok-{uuid.uuid4().hex}"
    policy = world.bao.read_policy([f"{world.prefix}/*"])
    world.bao.create_token([policy], token_id=vault_token)
    world.token_file.write_text(vault_token)
    world.secrets.add(vault_token)

    ngc_key, harbor_key = sentinel("ngc"), sentinel("harbor")
    htpasswd_registry.set_password("$oauthtoken", ngc_key)
    token_registry.token_server.users["robot$ci"] = harbor_key
    world.vault_put("ngc", password=ngc_key)
    world.vault_put("harbor", username="robot$ci", password=harbor_key)
    alias = htpasswd_registry.host.replace("127.0.0.1", "localhost")
    world.vault_put("wrong", username="ns+bot", password=sentinel("wrong"))
    world.put_dockerconfig(NS, NAME, {"auths": {"quay.io": {"username": "user",
                                                            "password": sentinel("existing")}}})
    world.secrets.add(json.loads(json.dumps(world.secret_doc(NS, NAME)))["auths"]["quay.io"]["password"])
    registries = [
        {"host": htpasswd_registry.host, "path": "ngc", "username": "$oauthtoken"},
        {"host": token_registry.host, "path": "harbor"},
        {"host": alias, "path": "wrong"},
        {"host": "ghcr.io", "path": "missing"},
    ]
    targets = [{"namespace": NS, "name": NAME}, {"namespace": NS, "name": "fresh", "create": True}]
    return {"registries": registries, "targets": targets, "token_registry": token_registry}


def capture(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv, env=env or {})
    logging.getLogger().handlers.clear()
    return code, out.getvalue() + err.getvalue()


def everything_in_kube(world: World) -> str:
    """Events, and annotations and labels of every secret, as one searchable text."""
    parts = [json.dumps(world.kube.events())]
    for obj in world.kube.list_objects("secrets"):
        meta = obj["metadata"]
        parts.append(json.dumps({"annotations": meta.get("annotations"), "labels": meta.get("labels")}))
    return "\n".join(parts)


def test_once_text_json_dry_run_check_show_leak_nothing(world: World, scenario: dict[str, Any]) -> None:
    config = world.config(scenario["registries"], scenario["targets"])
    outputs: list[str] = []
    dry = world.run(config, "--dry-run", "--log-level", "debug")
    assert dry.code == 1 and "would be updated (dry-run)" in dry.out
    outputs += [dry.out, dry.err]
    for fmt in ("text", "json"):
        result = world.run(config, "--log-format", fmt, "--log-level", "debug")
        assert result.code == 1  # one rejected login, one missing path
        assert "rejected" in result.out and "ghcr.io: failed" in result.out
        assert "logged" in result.err or "supplied Vault token" in result.err, "debug logs were captured"
        outputs += [result.out, result.err]
    for argv in (["check", "--config", str(config), "--log-level", "debug"],
                 ["check", "--config", str(config), "--output", "json"],
                 ["show", "--config", str(config)],
                 ["show", "--config", str(config), "--output", "json"]):
        code, text = capture(argv)
        assert code in (0, 1), text
        assert text.strip()
        outputs.append(text)
    world.secrets.update(t.token for t in scenario["token_registry"].token_server.issued)
    assert scenario["token_registry"].token_server.issued, "bearer tokens were issued (and searched)"
    for text in outputs:
        world.assert_no_leak(text, "CLI output")
    world.assert_no_leak(everything_in_kube(world), "Events, annotations and labels")
    assert world.kube.events(NS), "events were recorded (and searched)"


def test_approle_secret_id_and_login_token_never_leak(world: World, htpasswd_registry: Any) -> None:
    policy = world.bao.read_policy([f"{world.prefix}/*"])
    mount = world.prefix + "-approle"
    world.bao.enable_approle(mount=mount, policies=[policy])
    secret_id = f"SENTINEL-sid-{uuid.uuid4()}"
    world.bao.approle_custom_secret_id(secret_id, mount=mount)
    role_id = world.bao.client().auth.approle.read_role_id(role_name="syncer", mount_point=mount)[
        "data"]["role_id"]
    secret_file = world.tmp / "secret-id"
    secret_file.write_text(secret_id)
    world.secrets.add(secret_id)
    key = sentinel("ngc")
    htpasswd_registry.set_password("$oauthtoken", key)
    world.vault_put("ngc", password=key)
    world.put_dockerconfig(NS, NAME, {"auths": {}})
    auth = {"method": "approle", "mount": mount, "role_id": role_id,
            "secret_id_file": str(secret_file), "token_file": ""}
    config = world.config([{"host": htpasswd_registry.host, "path": "ngc", "username": "$oauthtoken"}],
                          [{"namespace": NS, "name": NAME}], auth=auth)
    # The login token is only known inside the process: capture it through the source.
    settings = config_mod.load(config, {})
    source = VaultSource(make_client(settings.vault), settings.vault)
    source.ensure_login()
    world.secrets.add(source._token)
    for fmt in ("text", "json"):
        result = world.run(config, "--log-format", fmt, "--log-level", "debug")
        assert result.code == 0, result.out + result.err
    world.assert_no_leak(repr(source) + str(vars(source).get("_settings")), "VaultSource repr")
    # A wrong secret ID: the error names the mount, never the secret ID.
    secret_file.write_text(secret_id + "-wrong")
    world.secrets.add(secret_id + "-wrong")
    result = world.run(config, "--log-level", "debug")
    assert result.code == 1 and f"auth/{mount}" in result.out
    source.close()


def test_daemon_output_metrics_and_events_leak_nothing(world: World, scenario: dict[str, Any]) -> None:
    port = free_port()
    config = world.config(scenario["registries"], scenario["targets"],
                          schedule={"interval": "300ms", "jitter": "0s", "retry_min": "100ms",
                                    "retry_max": "300ms"},
                          metrics={"listen": f"127.0.0.1:{port}"})
    daemon = DaemonProcess(world, config, port, "--log-format", "json", "--log-level", "debug")
    try:
        daemon.wait_for(lambda: world.kube.get_secret(NS, "fresh") is not None, what="first cycle")
        time.sleep(0.7)  # a few more cycles: repeated events, renewals, steady state
        pages = [daemon.get(p)[1] for p in ("/metrics", "/healthz", "/readyz")]
        assert "syncer_sync_runs_total" in pages[0]
    finally:
        code = daemon.stop()  # asserts no leak in the daemon's output
    assert code == 0
    world.secrets.update(t.token for t in scenario["token_registry"].token_server.issued)
    for page in pages:
        world.assert_no_leak(page, "/metrics, /healthz, /readyz")
    world.assert_no_leak(daemon.output(), "daemon output (with bearer tokens)")
    world.assert_no_leak(everything_in_kube(world), "Events, annotations and labels")


def test_reprs_and_exception_messages_redact(world: World, scenario: dict[str, Any], tmp_path: Path) -> None:
    env_token = f"SENTINEL-envtok-{uuid.uuid4().hex}"
    world.secrets.add(env_token)
    config = world.config(scenario["registries"], scenario["targets"], auth={"token_file": ""})
    # token_file empty -> the VAULT_TOKEN fallback ends up in the settings object.
    text = config.read_text().replace('token_file = ""\n', "")
    config.write_text(text)
    settings = config_mod.load(config, {"VAULT_TOKEN": env_token})
    assert settings.vault.auth.token == env_token
    app = build_app(settings, {"VAULT_TOKEN": env_token}, dry_run=True)
    try:
        summary = app.syncer.run_once()
        password = sentinel("repr")
        world.secrets.add(password)
        credential = Credential("robot$ci", password)
        objects: list[object] = [
            settings, settings.vault, settings.vault.auth, credential, VersionedCredential(credential, 3),
            summary, summary.registries,
            summary.targets, app.syncer.vault, app.syncer.store, app.syncer.prober,
            app.syncer.store.read(NS, NAME), TokenFile(str(world.token_file)),
        ]
        for obj in objects:
            world.assert_no_leak(repr(obj), f"repr of {type(obj).__name__}")
            world.assert_no_leak(str(obj), f"str of {type(obj).__name__}")
        world.assert_no_leak(f"{credential} {credential!r} {credential!s}", "f-string of Credential")
        # Exception messages from real failures: a revoked token, a denied path.
        world.bao.revoke_token(env_token)
        errors: list[BaseException] = []
        try:
            app.syncer.vault.read(settings.registries[0])
        except VaultError as exc:
            errors.append(exc)
        assert errors and errors[0].kind.value == "auth"
        for exc in errors:
            for text in (str(exc), repr(exc), repr(exc.args)):
                world.assert_no_leak(text, "VaultError")
        world.assert_no_leak(summary.render(), "dry-run summary")
    finally:
        app.syncer.vault.close()
        app.api.close()


def test_store_errors_do_not_echo_secret_contents(world: World, scenario: dict[str, Any]) -> None:
    """A 422 from the API server about a Secret: the message never carries the payload."""
    settings = config_mod.load(world.config(scenario["registries"], scenario["targets"]), {})
    app = build_app(settings, {}, dry_run=False)
    try:
        store: SecretStore = app.syncer.store
        snap = store.read(NS, NAME)
        assert snap is not None
        payload = json.dumps({"auths": {"x": {"auth": sentinel("payload")}}}).encode()
        world.secrets.add(json.loads(payload)["auths"]["x"]["auth"])
        world.kube.add_fault(lambda r: r.verb == "patch", status=422, reason="Invalid")
        with pytest.raises(Exception) as info:
            store.update(snap, payload, {})
        world.assert_no_leak(str(info.value) + repr(info.value), "KubeError")
    finally:
        app.syncer.vault.close()
        app.api.close()
