"""Least privilege under stress: the minimal RBAC derived from the code, and a Vault policy that
only reads the configured paths, are enough on every path the syncer can take, not just the
happy one (tests/test_deploy.py checks the rendered deploy/ RBAC equals this minimal set).

Paths exercised: first merge, rotation, conflict retries, a secret deleted between read and
write (re-created because create = true), Events created then aggregated (patch), leader
election (Lease create, get, patch), ``--dry-run``, ``check`` and ``show``. The Kubernetes API
test server enforces the rules, and every request of the syncer's identity is inspected.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path
from typing import Any

import hvac.exceptions
import pytest

from syncer import config as config_mod
from syncer.cli import build_app, main, make_daemon
from syncer.config import Settings
from syncer.vault import VaultSource, make_client
from tests.support.scenario import make_world
from tests.support.world import SYNCER_TOKEN, World, sentinel

NS = "domino-compute"
LEASE_NS = "registry-syncer"
SYNCER_USER = "system:serviceaccount:syncer:syncer"


def minimal_rules(settings: Settings) -> list[dict[str, Any]]:
    """What the code needs, per namespace: get/patch on the named secrets (and list/watch, bound
    to the name by the watch's fieldSelector, with kubernetes.watch), create only for create =
    true targets, Events create/patch, and the Lease when leader election is on."""
    rules: list[dict[str, Any]] = []
    verbs = ["get", "patch", *(["list", "watch"] if settings.kubernetes.watch else [])]
    for t in settings.targets:
        rules.append({"apiGroups": [""], "resources": ["secrets"], "verbs": verbs,
                      "resourceNames": [t.name], "namespaces": [t.namespace]})
        if t.create:
            rules.append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"],
                          "namespaces": [t.namespace]})
        rules.append({"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"],
                      "namespaces": [t.namespace]})
    le = settings.leader_election
    if le.enabled:
        rules += [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "patch"],
                   "resourceNames": [le.name], "namespaces": [le.namespace]},
                  {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"],
                   "namespaces": [le.namespace]}]
    return rules


@pytest.fixture
def world(tmp_path: Path, bao: Any, kube: Any, ca_file: str) -> World:
    return make_world(tmp_path, bao, kube, ca_file, NS, LEASE_NS)


def read_only_vault(world: World, paths: list[str]) -> dict[str, str]:
    """AppRole whose only policy reads exactly ``paths`` (no wildcard, no list, no metadata)."""
    policy = world.prefix + "-exact"
    world.bao.write_policy(policy, "\n".join(
        f'path "secret/data/{world.path(p)}" {{ capabilities = ["read"] }}' for p in paths))
    mount = world.prefix + "-approle"
    role_id, secret_id = world.bao.enable_approle(mount=mount, policies=[policy])
    secret_file = world.tmp / "secret-id"
    secret_file.write_text(secret_id)
    world.secrets.add(secret_id)
    return {"method": "approle", "mount": mount, "role_id": role_id,
            "secret_id_file": str(secret_file), "token_file": ""}


def syncer_requests(world: World) -> list[Any]:
    return [r for r in world.kube.requests if r.user == SYNCER_USER]


def test_minimal_rbac_and_read_only_vault_suffice_on_every_path(
        world: World, htpasswd_registry: Any) -> None:
    key = sentinel("ngc")
    htpasswd_registry.set_password("$oauthtoken", key)
    world.vault_put("ngc", password=key)
    world.put_dockerconfig(NS, "pull", {"auths": {"quay.io": {"username": "q", "password": "keep"}}})
    targets = [{"namespace": NS, "name": "pull"}, {"namespace": NS, "name": "fresh", "create": True}]
    registries = [{"host": htpasswd_registry.host, "path": "ngc", "username": "$oauthtoken"}]
    auth = read_only_vault(world, ["ngc"])
    lease = {"enabled": True, "namespace": LEASE_NS, "name": "syncer-lease", "identity": "a",
             "lease_duration": "2s", "renew_period": "200ms"}
    config = world.config(registries, targets, auth=auth, leader_election=lease,
                          schedule={"interval": "200ms", "jitter": "0s", "retry_min": "100ms",
                                    "retry_max": "200ms"})
    settings = config_mod.load(config, {})
    world.kube.set_rules(SYNCER_TOKEN, minimal_rules(settings))
    world.kube.reset_requests()

    # Hostile moments while the daemon runs: a conflict, a deleted secret, a rejected rotation.
    world.kube.add_fault(lambda r: r.verb == "patch" and r.name == "pull", status=409, reason="Conflict")
    world.kube.before(lambda r: r.verb == "patch" and r.name == "fresh",
                      lambda: world.kube.delete_secret(NS, "fresh"), times=1)
    app = build_app(settings, {}, dry_run=False, daemon=True)
    daemon, _ = make_daemon(app)
    daemon.start()
    try:
        deadline = time.monotonic() + 10
        while daemon.runs < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        new = sentinel("rotated")
        world.vault_put("ngc", password=new)  # the registry still has the old key: rejected
        runs = daemon.runs
        while daemon.runs < runs + 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        daemon.shutdown()
        app.syncer.vault.close()
        app.api.close()
    assert daemon.runs >= 4
    denied = [(r.verb, r.resource, r.name) for r in syncer_requests(world) if r.status == 403]
    assert denied == [], f"the minimal rules were not enough: {denied}"
    used = {(r.verb, r.resource) for r in syncer_requests(world)}
    assert {("get", "secrets"), ("patch", "secrets"), ("create", "secrets"), ("create", "events"),
            ("patch", "events"), ("create", "leases"), ("patch", "leases"), ("list", "secrets"),
            ("watch", "secrets")} <= used, used
    assert world.secret_doc(NS, "pull")["auths"][htpasswd_registry.host]["password"] == key
    assert world.secret_doc(NS, "fresh")["auths"][htpasswd_registry.host]["password"] == key

    # Read-only Vault: the syncer's own login token cannot write, list or read other paths.
    # (A fresh session with the same settings: a closed one refuses to log in again.)
    source = VaultSource(make_client(settings.vault), settings.vault)
    source.ensure_login()
    client = world.bao.client(token=source._token)
    world.secrets.add(source._token)
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.create_or_update_secret(path=world.path("ngc"), secret={"password": "x"},
                                                     mount_point="secret")
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.list_secrets(path=world.prefix, mount_point="secret")
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.read_secret_version(path=world.path("other"), mount_point="secret",
                                                 raise_on_deleted_version=True)
    source.close()


def test_dry_run_check_and_show_need_only_reads(world: World, htpasswd_registry: Any) -> None:
    """With nothing but ``get`` on the target secrets, the read-only modes work and send no write."""
    key = sentinel("ngc")
    htpasswd_registry.set_password("$oauthtoken", key)
    world.vault_put("ngc", password=key)
    world.put_dockerconfig(NS, "pull", {"auths": {}})
    config = world.config([{"host": htpasswd_registry.host, "path": "ngc", "username": "$oauthtoken"}],
                          [{"namespace": NS, "name": "pull"}])
    world.kube.set_rules(SYNCER_TOKEN, [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                                         "resourceNames": ["pull"], "namespaces": [NS]}])
    world.kube.reset_requests()
    result = world.run(config, "--dry-run")
    assert result.code == 0, result.out + result.err
    assert "would be updated (dry-run)" in result.out
    for argv in (["show", "--config", str(config)], ["check", "--config", str(config)]):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = main(argv, env={})
        logging.getLogger().handlers.clear()
        world.assert_no_leak(out.getvalue(), " ".join(argv[:1]))
        assert code in (0, 1), out.getvalue()
    writes = [(r.verb, r.resource) for r in syncer_requests(world)
              if r.verb in ("create", "update", "patch", "delete")
              and r.resource != "selfsubjectaccessreviews"]
    assert writes == [], writes
    assert [r for r in syncer_requests(world) if r.status == 403 and r.resource == "secrets"] == []
    assert world.secret_doc(NS, "pull") == {"auths": {}}
