"""Hostile rows for reacting to changes (issue 14): a tenant who churns a secret, a Vault writer
who churns versions, an oversized KV v1 secret, a reloaded config file carrying secrets and
terminal escapes. None can multiply the writes, grow memory, or leak into the logs."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from syncer import config as config_mod
from syncer.cli import build_app, make_daemon
from syncer.reactor import Reactor
from syncer.triggers import reload_settings
from syncer.vault_watch import VersionWatcher
from tests.support.operator import NS
from tests.support.vault_fixtures import FakeClock
from tests.support.world import World, sentinel

pytest_plugins = ["tests.support.operator_fixtures"]  # the world and ngc fixtures
NAME = "pull"


def test_event_storm_on_one_secret_is_bounded_by_time_not_by_events(
        world: World, ngc: dict[str, Any]) -> None:
    """Attack: a tenant edits the managed entry 25 times and the informer reports 250 events for
    it within 5 s. Safe: one scoped sync per second at most (the reactor's max delay), so at most
    one write per second however many events; the secret ends repaired."""
    config = world.config([ngc], [{"namespace": NS, "name": NAME, "create": True}])
    app = build_app(config_mod.load(config, {}), {}, dry_run=False, daemon=True)
    daemon, _ = make_daemon(app)
    clock = FakeClock()
    reactor = Reactor(daemon.metrics, clock=clock)
    assert app.syncer.run_once().ok
    world.kube.reset_requests()
    for i in range(250):
        if i % 10 == 0:
            doc = world.secret_doc(NS, NAME)
            doc["auths"][ngc["host"]]["password"] = f"tenant-{i}"
            world.put_dockerconfig(NS, NAME, doc)
        reactor.submit_targets("entry_drifted", [(NS, NAME)])
        clock.advance(0.02)
        reactor.process(daemon.run_batch)
    clock.advance(1)
    reactor.process(daemon.run_batch)
    tenant_writes = 25
    assert reactor.batches <= 6
    assert world.kube.writes() - tenant_writes <= reactor.batches
    assert world.secret_doc(NS, NAME)["auths"][ngc["host"]]["password"] in world.secrets


def test_vault_writer_churning_versions_costs_one_scoped_sync_per_poll(
        world: World, ngc: dict[str, Any], htpasswd_registry: Any) -> None:
    """Attack: whoever writes Vault stores 10 versions between two polls. Safe: one change seen,
    one scoped sync, one write per affected target (the last version), nothing else touched."""
    config = world.config([ngc], [{"namespace": NS, "name": NAME, "create": True},
                                  {"namespace": NS, "name": "second", "create": True}])
    app = build_app(config_mod.load(config, {}), {}, dry_run=False, daemon=True)
    daemon, _ = make_daemon(app)
    clock = FakeClock()
    daemon.reactor = reactor = Reactor(daemon.metrics, clock=clock)
    daemon.watcher = VersionWatcher(app.syncer.vault, reactor.submit_registries, clock)
    assert app.syncer.run_once().ok
    daemon.poll_vault()
    for i in range(10):
        key = sentinel(f"v{i}")
        world.vault_put("ngc", password=key)
    htpasswd_registry.set_password("$oauthtoken", key)
    world.kube.reset_requests()
    daemon.poll_vault()
    clock.advance(1)
    assert reactor.process(daemon.run_batch)
    assert not reactor.process(daemon.run_batch)
    assert world.kube.writes() == 2
    assert world.secret_doc(NS, NAME)["auths"][ngc["host"]]["password"] == key


def test_oversized_kv1_secret_keeps_only_a_short_digest(world: World, ngc: dict[str, Any]) -> None:
    """Attack: a KV v1 secret padded to 512 KiB (extra keys) watched by the poll. Safe: what is
    kept per path is a 65-character keyed digest; neither the password nor the padding."""
    mount = f"{world.prefix}-kv1"
    world.bao.kv1_enable(mount)
    key = sentinel("kv1")
    world.bao.kv1_put(mount, world.path("ngc"), {"password": key, "padding": "x" * 512 * 1024})
    config = world.config([ngc], [{"namespace": NS, "name": NAME, "create": True}],
                          vault={"kv_mount": mount, "kv_version": 1})
    app = build_app(config_mod.load(config, {}), {}, dry_run=False)
    watcher = VersionWatcher(app.syncer.vault, lambda *a: None)
    watcher.poll(app.syncer.settings.registries)
    (marker,) = watcher._markers.values()
    assert len(marker) == 65 and key not in marker and "xxxx" not in marker


def test_reloaded_file_with_secrets_and_escapes_logs_neither(
        world: World, ngc: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """Attack: SIGHUP with a file that puts a password under a misspelt key and a terminal escape
    in a key name. Safe: the running config is kept, every problem is logged with its key path,
    the password never appears and the escape is printed as text."""
    config = world.config([ngc], [{"namespace": NS, "name": NAME}])
    current = config_mod.load(config, {})
    secret = sentinel("in-config")
    world.secrets.add(secret)
    hostile = config.read_text().replace("[vault.auth]\n", f"[vault.auth]\npasword = {json.dumps(secret)}\n")
    hostile += '\n[sync]\n"evil\\u001b[31mkey" = 1\n'
    bad = world.tmp / "hostile.toml"
    bad.write_text(hostile)
    with caplog.at_level(logging.INFO, logger="syncer.triggers"):
        assert reload_settings(str(bad), {}, current) is None
    text = caplog.text
    assert "vault.auth.pasword: unknown key" in text
    assert "evil\\u001b[31mkey" in text and "\x1b" not in text
    world.assert_no_leak(text, "reload log")
