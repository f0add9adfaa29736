"""Reacting to changes: scoped re-syncs, the coalescing reactor, Vault change detection, SIGHUP
and SIGUSR1. Real OpenBao, a real registry and the Kubernetes API test server; the reactor's
clock is faked where timing is the subject.
"""

from __future__ import annotations

import base64
import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from syncer import config as config_mod
from syncer.cli import App, build_app, make_daemon
from syncer.reactor import Reactor
from syncer.scheduler import POLL_JOB, Daemon
from syncer.scope import Scope
from syncer.vault_watch import VersionWatcher
from tests.support.httpcount import CountingProxy
from tests.support.net import free_port
from tests.support.operator import NS, run_cmd
from tests.support.vault_fixtures import FakeClock
from tests.support.world import DaemonProcess, World, sentinel

pytest_plugins = ["tests.support.operator_fixtures"]  # the world fixture
A, B, C = "pull-ngc", "pull-alias", "pull-all"


@pytest.fixture
def logins(world: World, htpasswd_registry: Any) -> dict[str, Any]:
    """Two registries on one real registry server (127.0.0.1 and localhost), sentinel keys."""
    key = sentinel("ngc")
    htpasswd_registry.set_password("$oauthtoken", key)
    world.vault_put("ngc", password=key)
    world.vault_put("alias", password=key)
    host = htpasswd_registry.host
    return {"ngc": {"host": host, "path": "ngc", "username": "$oauthtoken"},
            "alias": {"host": host.replace("127.0.0.1", "localhost"), "path": "alias",
                      "username": "$oauthtoken"},
            "registry": htpasswd_registry, "key": key}


def three_targets(logins: dict[str, Any]) -> list[dict[str, Any]]:
    ngc, alias = logins["ngc"]["host"], logins["alias"]["host"]
    return [{"namespace": NS, "name": A, "registries": [ngc], "create": True},
            {"namespace": NS, "name": B, "registries": [alias], "create": True},
            {"namespace": NS, "name": C, "registries": [ngc, alias], "create": True}]


def rotate(world: World, logins: dict[str, Any], label: str = "rotated") -> str:
    """A new key the registry accepts, stored as a new KV v2 version of ``ngc``."""
    key = sentinel(label)
    logins["registry"].set_password("$oauthtoken", key)
    world.vault_put("ngc", password=key)
    return key


def app_for(world: World, logins: dict[str, Any], **sections: Any) -> App:
    config = world.config([logins["ngc"], logins["alias"]], sections.pop("targets", three_targets(logins)),
                          **sections)
    return build_app(config_mod.load(config, {}), {}, dry_run=False, daemon=True)


def faked(app: App, clock: FakeClock) -> tuple[Daemon, CollectorRegistry]:
    """The app's daemon with the reactor and the Vault poller on a fake clock (not started)."""
    daemon, registry = make_daemon(app)
    daemon.reactor = Reactor(daemon.metrics, clock=clock)
    daemon.watcher = VersionWatcher(app.syncer.vault, daemon.reactor.submit_registries, clock)
    return daemon, registry


def until(predicate: Any, timeout: float = 10.0) -> None:
    """Poll ``predicate`` every 20 ms; a timeout is left to the assertions that follow."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)


def password(world: World, name: str, host: str) -> str:
    return str(world.secret_doc(NS, name)["auths"][host]["password"])


# --------------------------------------------------------------------------- scoped runs


def test_scoped_registry_run_writes_only_that_registrys_targets(
        world: World, logins: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = app_for(world, logins)
    assert app.syncer.run_once().ok
    new = rotate(world, logins)
    world.kube.reset_requests()
    ngc, alias = logins["ngc"]["host"], logins["alias"]["host"]
    summary = app.syncer.run_once(Scope.of(registries=[ngc]))
    assert summary.ok
    assert [r.host for r in summary.registries] == [ngc], "only the changed registry is read and probed"
    assert sorted(t.target.name for t in summary.targets) == sorted([A, C])
    assert world.kube.writes() == 2
    assert world.kube.count(resource="secrets", name=B) == 0, "B does not use it: not even read"
    assert password(world, A, ngc) == new and password(world, C, ngc) == new
    # C's other entry (alias, not in scope) is kept as it was, and is not reported as held back.
    assert password(world, C, alias) == logins["key"]
    assert all(not t.held_back for t in summary.targets)
    world.assert_no_leak(caplog.text, "logs")


def test_scoped_target_run_repairs_one_deleted_secret(world: World, logins: dict[str, Any]) -> None:
    app = app_for(world, logins)
    assert app.syncer.run_once().ok
    world.kube.delete_secret(NS, C)
    world.kube.reset_requests()
    summary = app.syncer.run_once(Scope.of(targets=[(NS, C)]))
    assert [t.target.name for t in summary.targets] == [C]
    assert summary.targets[0].outcome.value == "created"
    assert world.kube.writes() == 1
    hosts = [logins["ngc"]["host"], logins["alias"]["host"]]
    assert sorted(world.secret_doc(NS, C)["auths"]) == sorted(hosts)


def test_empty_scope_touches_nothing(world: World, logins: dict[str, Any]) -> None:
    app = app_for(world, logins)
    world.kube.reset_requests()
    summary = app.syncer.run_once(Scope())
    assert summary.registries == [] and summary.targets == []
    assert world.kube.count(resource="secrets") == 0


# --------------------------------------------------------------------------- the reactor


def drifted(world: World, name: str, host: str) -> None:
    doc = world.secret_doc(NS, name)
    doc["auths"][host]["password"] = "edited-by-hand"
    world.put_dockerconfig(NS, name, doc)


def test_burst_for_one_target_becomes_one_write(world: World, logins: dict[str, Any]) -> None:
    clock = FakeClock()
    app = app_for(world, logins)
    daemon, registry = faked(app, clock)
    assert app.syncer.run_once().ok
    host = logins["ngc"]["host"]
    drifted(world, A, host)
    world.kube.reset_requests()
    reactor = daemon.reactor
    assert reactor is not None
    for _ in range(20):  # events keep coming every 50 ms: still one burst
        reactor.submit_targets("entry_drifted", [(NS, A)])
        clock.advance(0.05)
        assert not reactor.process(daemon.run_batch)
    clock.advance(0.2)
    assert reactor.process(daemon.run_batch)
    assert not reactor.process(daemon.run_batch), "the queue is empty after one batch"
    assert world.kube.writes() == 1
    assert password(world, A, host) == logins["key"]
    assert registry.get_sample_value("syncer_repairs_total", {"reason": "entry_drifted"}) == 1
    assert registry.get_sample_value("syncer_repairs_total", {"reason": "secret_deleted"}) == 0


def test_a_never_ending_burst_still_runs_within_the_max_delay() -> None:
    clock = FakeClock()
    reactor = Reactor(_NoMetrics(), clock=clock, debounce=0.2)
    ran: list[Scope] = []
    for _ in range(30):
        reactor.submit_targets("secret_deleted", [(NS, A)])
        clock.advance(0.1)
        reactor.process(lambda batch: ran.append(batch.scope))  # type: ignore[func-returns-value]
    assert len(ran) == 3, "one batch per second (5 x debounce) under a constant stream"


def test_reactor_thread_coalesces_concurrent_submits(world: World, logins: dict[str, Any]) -> None:
    app = app_for(world, logins)
    daemon, _ = make_daemon(app)
    assert app.syncer.run_once().ok
    world.kube.delete_secret(NS, B)
    world.kube.reset_requests()
    reactor = daemon.reactor
    assert reactor is not None
    reactor.start(daemon.run_batch)
    try:
        threads = [threading.Thread(target=lambda: [reactor.submit_targets("secret_deleted", [(NS, B)])
                                                    for _ in range(10)]) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        until(lambda: world.kube.get_secret(NS, B) is not None)
        time.sleep(0.4)  # a second batch, if any, would have run by now
    finally:
        reactor.stop()
    assert reactor.batches == 1
    assert world.kube.writes() == 1


def test_unknown_repair_reason_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown repair reason"):
        Reactor(_NoMetrics()).submit_targets("because", [(NS, A)])


class _NoMetrics:
    def propagated(self, seconds: float) -> None:
        pass

    def repaired(self, reason: str) -> None:
        pass


def test_not_leader_nothing_polled_nothing_written(world: World, logins: dict[str, Any]) -> None:
    world.kube.add_namespace("syncer")
    proxy = CountingProxy(world.bao.address).start()
    try:
        app = app_for(world, logins, vault={"address": proxy.url},
                      leader_election={"enabled": True, "namespace": "syncer", "name": "react-lease",
                                       "identity": "standby"})
        clock = FakeClock()
        daemon, _ = faked(app, clock)
        assert app.leader is not None and not app.leader.is_leader  # never stepped: standby
        assert daemon.reactor is not None
        daemon.reactor.submit_targets("secret_deleted", [(NS, A)])
        clock.advance(1)
        assert daemon.reactor.process(daemon.run_batch)
        daemon.poll_vault()
        assert proxy.count() == 0, "a standby asks Vault nothing"
        assert world.kube.writes() == 0
    finally:
        proxy.stop()


# --------------------------------------------------------------------------- Vault change detection


def test_new_kv2_version_reaches_its_targets_through_the_scoped_path(
        world: World, logins: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = CountingProxy(world.bao.address).start()
    try:
        app = app_for(world, logins, vault={"address": proxy.url})
        clock = FakeClock()
        daemon, registry = faked(app, clock)
        assert app.syncer.run_once().ok
        assert daemon.watcher is not None and daemon.reactor is not None
        daemon.poll_vault()  # the baseline
        proxy.reset()
        assert daemon.watcher.poll(app.syncer.settings.registries) == []
        assert proxy.count() == 2, "steady state: one Vault request per registry per poll"
        assert proxy.count(path_contains="/metadata/") == 2, "metadata only, never the secret"
        new = rotate(world, logins)
        world.kube.reset_requests()
        daemon.poll_vault()
        clock.advance(0.3)
        assert daemon.reactor.process(daemon.run_batch)
        assert world.kube.writes() == 2  # A and C; B does not use ngc
        assert password(world, A, logins["ngc"]["host"]) == new
        assert password(world, C, logins["ngc"]["host"]) == new
        assert registry.get_sample_value("syncer_propagation_seconds_count") == 1
        assert registry.get_sample_value("syncer_propagation_seconds_sum") == pytest.approx(0.3)
        assert registry.get_sample_value("syncer_sync_runs_total", {"result": "success"}) == 0, \
            "a scoped run is not counted as a cycle"
        proxy.reset()
        daemon.poll_vault()
        assert proxy.count() == 2 and daemon.reactor.due_in() is None, "seen once, acted on once"
    finally:
        proxy.stop()
    world.assert_no_leak(caplog.text, "logs")


def test_deleting_the_latest_version_is_a_change_too(world: World, logins: dict[str, Any]) -> None:
    app = app_for(world, logins)
    watcher = VersionWatcher(app.syncer.vault, lambda *a: submitted.append(a))
    submitted: list[Any] = []
    watcher.poll(app.syncer.settings.registries)
    world.bao.kv_delete_latest(world.path("alias"))
    assert watcher.poll(app.syncer.settings.registries) == [logins["alias"]["host"]]
    assert submitted[0][0] == "vault_changed"


def test_kv1_digest_change_is_detected(world: World, logins: dict[str, Any],
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    mount = f"{world.prefix}-kv1"
    world.bao.kv1_enable(mount)
    world.bao.kv1_put(mount, world.path("ngc"), {"password": logins["key"]})
    world.bao.kv1_put(mount, world.path("alias"), {"password": logins["key"]})
    app = app_for(world, logins, vault={"kv_mount": mount, "kv_version": 1})
    submitted: list[Any] = []
    watcher = VersionWatcher(app.syncer.vault, lambda *a: submitted.append(a))
    registries = app.syncer.settings.registries
    assert watcher.poll(registries) == [] and watcher.poll(registries) == []
    new = sentinel("kv1")
    world.secrets.add(new)
    world.bao.kv1_put(mount, world.path("ngc"), {"password": new})
    assert watcher.poll(registries) == [logins["ngc"]["host"]]
    assert watcher.poll(registries) == []
    assert len(submitted) == 1
    markers = str(watcher._markers)
    assert new not in markers and logins["key"] not in markers, "only a keyed digest is kept"
    world.assert_no_leak(caplog.text + markers, "logs")


def test_poll_denied_by_policy_warns_once_and_names_the_metadata_path(
        world: World, logins: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    policy = f"{world.prefix}-data-only"
    world.bao.write_policy(policy, f'path "secret/data/{world.prefix}/*" {{ capabilities = ["read"] }}')
    token = world.bao.create_token([policy])
    world.secrets.add(token)
    token_file = world.tmp / "limited-token"
    token_file.write_text(token)
    app = app_for(world, logins, auth={"token_file": str(token_file)})
    watcher = VersionWatcher(app.syncer.vault, lambda *a: None)
    with caplog.at_level(logging.WARNING, logger="syncer.vault_watch"):
        for _ in range(3):
            assert watcher.poll(app.syncer.settings.registries) == []
    warnings = [r.getMessage() for r in caplog.records if r.name == "syncer.vault_watch"]
    assert len(warnings) == 2, "one warning per path, not per poll"
    assert f"secret/metadata/{world.prefix}/ngc" in warnings[0]
    world.assert_no_leak(caplog.text, "logs")


@pytest.mark.parametrize(("value", "jobs"), [("0s", False), ("2s", True), (None, True)])
def test_poll_interval_zero_turns_detection_off(world: World, logins: dict[str, Any],
                                                value: str | None, jobs: bool) -> None:
    vault = {} if value is None else {"poll_interval": value}
    daemon, _ = make_daemon(app_for(world, logins, vault=vault))
    daemon.start()
    try:
        job = daemon.scheduler.get_job(POLL_JOB)
        assert (job is not None) is jobs
        if job is not None:
            expected = 30 if value is None else 2
            assert job.trigger.interval.total_seconds() == expected
    finally:
        daemon.shutdown()


@pytest.mark.parametrize("value", ["-5s", "soon", True])
def test_bad_poll_interval_is_a_config_error(value: Any) -> None:
    data = {"vault": {"address": "https://vault.example.com", "poll_interval": value,
                      "auth": {"method": "token", "token_file": "/t"}},
            "registries": [{"host": "nvcr.io", "path": "p"}], "targets": [{"namespace": "ns", "name": "s"}]}
    with pytest.raises(config_mod.ConfigError) as info:
        config_mod.from_mapping(data, {})
    assert any(p.startswith("vault.poll_interval:") for p in info.value.problems)


# --------------------------------------------------------------------------- signals


def replace_config(path: Path, new: Path) -> None:
    path.write_text(new.read_text())


def test_sighup_reload_good_and_bad_file(world: World, logins: dict[str, Any]) -> None:
    port = free_port()
    slow = {"interval": "60s", "jitter": "0s"}
    targets = three_targets(logins)
    config = world.config([logins["ngc"], logins["alias"]], targets[:1], schedule=slow,
                          metrics={"listen": f"127.0.0.1:{port}"})
    daemon = DaemonProcess(world, config, port)
    try:
        daemon.wait_for(lambda: world.kube.get_secret(NS, A) is not None, what="first sync")
        bad = config.read_text() + '\n[sync]\nconflict_retries = "many"\ntypo_key = 1\n'
        config.write_text(bad.replace('timeout = "5s"', 'timeout = "later"', 1))
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for(lambda: "keeping the running configuration" in daemon.output(), what="rejected")
        daemon.wait_for(lambda: "sync.typo_key" in daemon.output(), what="every problem logged")
        out = daemon.output()
        assert "sync.conflict_retries" in out and "vault.timeout" in out
        assert "Traceback" not in out
        assert daemon.proc.poll() is None, "an invalid file does not stop the daemon"
        replace_config(config, world.config([logins["ngc"], logins["alias"]], targets, schedule=slow,
                                            metrics={"listen": f"127.0.0.1:{port}"}))
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for(lambda: world.kube.get_secret(NS, B) is not None
                        and world.kube.get_secret(NS, C) is not None, timeout=10,
                        what="the reloaded targets served at once (not after 60 s)")
        assert "config reload: 2 registries, 3 targets" in daemon.output()
    finally:
        assert daemon.stop() == 0


def test_sigusr1_runs_a_full_cycle_now(world: World, logins: dict[str, Any]) -> None:
    port = free_port()
    config = world.config([logins["ngc"], logins["alias"]], three_targets(logins),
                          schedule={"interval": "60s", "jitter": "0s"},
                          vault={"poll_interval": "0s"}, metrics={"listen": f"127.0.0.1:{port}"})
    daemon = DaemonProcess(world, config, port)
    try:
        daemon.wait_for(lambda: world.kube.get_secret(NS, C) is not None, what="first sync")
        world.kube.delete_secret(NS, A)
        world.kube.delete_secret(NS, B)
        daemon.proc.send_signal(signal.SIGUSR1)
        daemon.wait_for(lambda: world.kube.get_secret(NS, A) is not None
                        and world.kube.get_secret(NS, B) is not None, timeout=10, what="full cycle")
        assert "full cycle requested (SIGUSR1)" in daemon.output()
    finally:
        assert daemon.stop() == 0


def test_check_warns_when_the_policy_hides_metadata(world: World, logins: dict[str, Any]) -> None:
    import json

    world.kube.add_namespace("unused")
    policy = f"{world.prefix}-check"
    read = '{ capabilities = ["read"] }'
    world.bao.write_policy(policy, f'path "secret/data/{world.prefix}/*" {read}\n'
                                   f'path "secret/metadata/{world.prefix}/alias" {read}')
    token = world.bao.create_token([policy])
    world.secrets.add(token)
    world.token_file.write_text(token)
    config = world.config([logins["ngc"], logins["alias"]], three_targets(logins))
    result = run_cmd(world, "check", config, "--output", "json")
    checks = {c["name"]: c for c in json.loads(result.out)["checks"]}
    ngc_meta, alias_meta = (f"vault.poll secret/metadata/{world.path(n)}" for n in ("ngc", "alias"))
    assert checks[ngc_meta]["status"] == "WARN"
    assert 'vault.poll_interval = "0s"' in checks[ngc_meta]["hint"]
    assert checks[alias_meta]["status"] == "OK"
    off = world.config([logins["ngc"], logins["alias"]], three_targets(logins), vault={"poll_interval": "0s"})
    result = run_cmd(world, "check", off, "--output", "json")
    assert not [c for c in json.loads(result.out)["checks"] if c["name"].startswith("vault.poll")]

# --------------------------------------------------------------------------- the daemon, wired


def test_daemon_rotation_reaches_secrets_at_the_poll_not_the_interval(
        world: World, logins: dict[str, Any]) -> None:
    """The whole wiring: scheduler, poll job, reactor thread. A 60 s cycle, a 300 ms poll."""
    app = app_for(world, logins, schedule={"interval": "60s", "jitter": "0s"},
                  vault={"poll_interval": "300ms"})
    daemon, registry = make_daemon(app)
    daemon.start()
    host = logins["ngc"]["host"]
    try:
        until(lambda: daemon.runs >= 1)
        time.sleep(0.5)  # the poll's baseline
        new = rotate(world, logins)
        t0 = time.monotonic()
        until(lambda: password(world, A, host) == new == password(world, C, host))
        elapsed = time.monotonic() - t0
    finally:
        daemon.shutdown()
    assert password(world, A, host) == new and password(world, C, host) == new
    assert elapsed < 3, f"took {elapsed:.1f}s"
    assert daemon.runs == 1, "the scoped path did it, not another cycle"
    assert registry.get_sample_value("syncer_propagation_seconds_count") == 1
    assert daemon.reactor is not None and daemon.reactor._thread is not None
    assert not daemon.reactor._thread.is_alive(), "shutdown stops the reactor thread"


def test_scoped_run_waits_for_the_full_cycle(world: World, logins: dict[str, Any]) -> None:
    app = app_for(world, logins)
    daemon, _ = make_daemon(app)
    assert app.syncer.run_once().ok
    world.kube.delete_secret(NS, A)
    clock = FakeClock()
    reactor = Reactor(daemon.metrics, clock=clock)
    reactor.submit_targets("secret_deleted", [(NS, A)])
    clock.advance(1)
    with daemon._running:  # a full cycle is in flight
        worker = threading.Thread(target=reactor.process, args=(daemon.run_batch,))
        worker.start()
        worker.join(0.5)
        assert worker.is_alive() and world.kube.get_secret(NS, A) is None
    worker.join(10)
    assert world.kube.get_secret(NS, A) is not None


def test_stop_between_writes_skips_the_rest(world: World, logins: dict[str, Any]) -> None:
    app = app_for(world, logins)
    daemon, _ = make_daemon(app)
    assert app.syncer.run_once().ok
    for name in (A, B, C):
        world.kube.delete_secret(NS, name)
    world.kube.reset_requests()
    app.stop.set()
    summary = app.syncer.run_once(Scope.of(targets=[(NS, A), (NS, B), (NS, C)]))
    assert {t.outcome.value for t in summary.targets} == {"skipped"}
    assert world.kube.writes() == 0
    assert daemon.run_batch(_batch_of(Scope.of(targets=[(NS, A)]))) is None, "no run once stopping"


def _batch_of(scope: Scope) -> Any:
    from syncer.reactor import Batch

    return Batch(scope=scope)


# --------------------------------------------------------------------------- watches -> reactor


def test_watch_bridge_repairs_deleted_and_drifted_secrets_and_serves_new_namespaces(
        world: World, logins: dict[str, Any]) -> None:
    """Real informers (TargetWatches) on the test API server, bridged to the reactor."""
    from syncer.informer import TargetWatches
    from syncer.watch_react import WatchBridge

    world.kube.add_namespace("ml-a", {"pull": "yes"})
    ngc = logins["ngc"]["host"]
    targets = [{"namespace": NS, "name": A, "registries": [ngc], "create": True},
               {"namespace_selector": "pull=yes", "name": "fan", "registries": [ngc], "create": True}]
    app = app_for(world, logins, targets=targets)
    clock = FakeClock()
    daemon, registry = faked(app, clock)
    reactor = daemon.reactor
    assert reactor is not None
    assert app.syncer.run_once().ok
    bridge = WatchBridge(lambda: app.syncer.settings.targets, reactor)
    watches = TargetWatches(app.api, app.syncer.settings.targets, on_secret=bridge.on_secret,
                            on_namespace=bridge.on_namespace)
    watches.start()

    def repaired_once(what: Any) -> None:
        until(lambda: reactor.due_in() is not None, timeout=5)
        clock.advance(1)
        assert reactor.process(daemon.run_batch)
        until(what, timeout=5)
        assert what()

    try:
        assert watches.wait_synced(5)
        bridge.arm()
        assert reactor.due_in() is None, "the initial lists are not changes"
        world.kube.delete_secret(NS, A)
        repaired_once(lambda: world.kube.get_secret(NS, A) is not None)
        drifted(world, A, ngc)
        repaired_once(lambda: password(world, A, ngc) == logins["key"])
        world.kube.add_namespace("ml-b", {"pull": "yes"})
        repaired_once(lambda: world.kube.get_secret("ml-b", "fan") is not None)
        time.sleep(0.3)  # the events of the syncer's own writes have arrived by now
        assert reactor.due_in() is None, "the syncer's own writes trigger nothing"
    finally:
        watches.stop()
    for reason in ("secret_deleted", "entry_drifted", "namespace_matched"):
        assert registry.get_sample_value("syncer_repairs_total", {"reason": reason}) == 1, reason


def test_relist_that_folds_the_syncers_write_and_a_foreign_edit_is_repaired(
        world: World, logins: dict[str, Any]) -> None:
    """Found by the watch soak (docs/soak.md): while a watch is down, the syncer writes a secret
    (its ``last-write`` stamp moves) and then someone edits a managed entry keeping the
    annotations. The relist after 410 shows one change whose stamp moved: by the stamp alone it
    looked like the syncer's own write and was never repaired. The content is not what the
    syncer wrote, so it is a repair."""
    ngc = logins["ngc"]["host"]
    app = app_for(world, logins, targets=[{"namespace": NS, "name": A, "registries": [ngc], "create": True}])
    clock = FakeClock()
    daemon, _ = faked(app, clock)
    reactor, watching = daemon.reactor, app.watching
    assert reactor is not None and watching is not None
    assert app.syncer.run_once().ok
    watching.connect(reactor)
    watching.start()
    try:
        assert watching.ready.wait(10)
        world.kube.add_fault(lambda r: r.resource == "secrets" and r.verb in ("watch", "list"),
                             status=500, times=None)  # the watch cannot come back for now
        world.kube.watches.drop()
        until(lambda: world.kube.watches.open_count("secrets") == 0)
        key = rotate(world, logins)
        world.vault_put("alias", password=key)
        time.sleep(1.1)  # last-write stamps are whole seconds: this write's stamp differs
        summary = app.syncer.run_once()  # the syncer's write, unseen by the watch
        assert summary.ok, [(t.outcome, t.detail) for t in summary.targets]
        secret = world.kube.get_secret(NS, A)
        doc = world.secret_doc(NS, A)
        doc["auths"][ngc]["password"] = "edited-keeping-annotations"
        secret["data"][".dockerconfigjson"] = base64.b64encode(json.dumps(doc).encode()).decode()
        world.kube.put_object("secrets", NS, secret)  # someone else; the stamp stays the syncer's
        world.kube.compact()  # the resume meets 410: the relist shows both writes as one change
        world.kube.clear_faults()
        until(lambda: reactor.due_in() is not None, timeout=15)  # after the relist
        assert reactor.due_in() is not None, "the folded foreign edit was taken for the syncer's own"
        clock.advance(1)
        assert reactor.process(daemon.run_batch)
        assert password(world, A, ngc) == key
        time.sleep(0.3)
        assert reactor.due_in() is None, "the repair's own echo triggers nothing"
    finally:
        watching.stop()
