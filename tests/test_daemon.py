"""The daemon: scheduling, backoff, metrics, health, leader election, events, signals.

Real OpenBao, a real registry and the Kubernetes API test server throughout;
time-dependent behaviour runs on sub-second intervals, never minutes of sleep.
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from syncer import config as config_mod
from syncer.cli import build_app, make_daemon
from syncer.scheduler import SYNC_JOB, Daemon, backoff_delay
from tests.support.net import free_port
from tests.support.proxy import FaultProxy
from tests.support.world import DaemonProcess, World, metric_value, sentinel

NS = "domino-compute"
NAME = "domino-quay-repos"


@pytest.fixture
def world(tmp_path: Path, bao: Any, kube: Any, ca_file: str) -> World:
    kube.add_namespace(NS)
    w = World(tmp_path, bao, kube, ca_file)
    w.put_dockerconfig(NS, NAME, {"auths": {"quay.io": {"username": "q", "password": "keep"}}})
    return w


@pytest.fixture
def ngc(world: World, htpasswd_registry: Any) -> dict[str, Any]:
    key = sentinel("ngc")
    htpasswd_registry.set_password("$oauthtoken", key)
    world.vault_put("ngc", password=key)
    return {"host": htpasswd_registry.host, "path": "ngc", "username": "$oauthtoken", "_key": key}


def reg(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if not k.startswith("_")}


def fast_schedule(**overrides: Any) -> dict[str, Any]:
    return {"interval": "1s", "jitter": "0s", "retry_min": "200ms", "retry_max": "1s", **overrides}


def in_process(world: World, config: Path) -> tuple[Daemon, Any, threading.Event]:
    settings = config_mod.load(config, {})
    app = build_app(settings, {}, dry_run=False, daemon=True)
    daemon, registry = make_daemon(app)
    return daemon, registry, app.stop


def approle_auth(world: World, name: str, **role: Any) -> dict[str, str]:
    """An AppRole mount ``<prefix>-name`` that may read the world's paths; the [vault.auth] table."""
    mount = f"{world.prefix}-{name}"
    world.bao.write_policy(mount, f'path "secret/data/{world.prefix}/*" {{ capabilities = ["read"] }}')
    role_id, secret_id = world.bao.enable_approle(mount=mount, role="syncer", policies=[mount], **role)
    secret_file = world.tmp / f"{name}-secret-id"
    secret_file.write_text(secret_id)
    world.secrets.add(secret_id)
    return {"method": "approle", "mount": mount, "role_id": role_id, "secret_id_file": str(secret_file),
            "token_file": ""}


def wait(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_backoff_delay_is_capped_exponential() -> None:
    s = config_mod.ScheduleSettings(retry_min=10, retry_max=60)
    assert [backoff_delay(n, s) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]


def test_daemon_process_rotates_exports_metrics_and_exits_on_sigterm(
        world: World, ngc: dict[str, Any], htpasswd_registry: Any) -> None:
    port = free_port()
    config = world.config([reg(ngc)], [{"namespace": NS, "name": NAME},
                                  {"namespace": NS, "name": "never-there"}],
                          schedule=fast_schedule(interval="500ms"),
                          metrics={"listen": f"127.0.0.1:{port}"})
    started = time.time()
    daemon = DaemonProcess(world, config, port)
    try:
        daemon.wait_for(lambda: daemon.get("/healthz")[0] == 200, what="/healthz")
        daemon.wait_for(lambda: ngc["host"] in world.secret_doc(NS, NAME)["auths"], what="first sync")
        # Rotation in the registry and in Vault while it runs: applied within the next intervals.
        new_key = sentinel("rotated")
        htpasswd_registry.set_password("$oauthtoken", new_key)
        world.vault_put("ngc", password=new_key)
        daemon.wait_for(lambda: world.secret_doc(NS, NAME)["auths"][ngc["host"]]["password"] == new_key,
                        what="rotation applied")
        time.sleep(0.6)  # let the metrics of that run land
        status, text = daemon.get("/metrics")
        assert status == 200
        world.assert_no_leak(text, "/metrics")
        host = ngc["host"]
        assert metric_value(text, "syncer_registry_probe_success", registry=host) == 1
        assert metric_value(text, "syncer_credential_version", registry=host) == 2
        assert metric_value(text, "syncer_credential_rotations_total", registry=host) == 2
        assert metric_value(text, "syncer_secret_writes_total", secret_namespace=NS, secret_name=NAME) == 2
        assert metric_value(text, "syncer_secret_sync_success", secret_namespace=NS, secret_name=NAME) == 1
        assert metric_value(text, "syncer_secret_sync_success", secret_namespace=NS,
                            secret_name="never-there") == 0
        assert metric_value(text, "syncer_secret_writes_total", secret_namespace=NS,
                            secret_name="never-there") == 0
        assert metric_value(text, "syncer_sync_runs_total", result="failure")
        assert metric_value(text, "syncer_registry_probe_failures_total", registry=host,
                            reason="rejected") == 0
        assert metric_value(text, "syncer_errors_total", stage="vault") == 0
        assert metric_value(text, "syncer_build_info", version="0.1.0") == 1
        assert (metric_value(text, "syncer_last_run_timestamp_seconds") or 0) >= started
        assert metric_value(text, "syncer_vault_token_ttl_seconds") is not None
        # The never-there target fails every run, so the daemon is live but not ready.
        assert daemon.get("/readyz")[0] == 503
        t0 = time.monotonic()
    finally:
        code = daemon.stop()
    assert code == 0
    assert time.monotonic() - t0 < 10
    assert "shut down cleanly" in daemon.output()


def test_readiness_lost_when_vault_down_and_regained(world: World, ngc: dict[str, Any]) -> None:
    proxy = FaultProxy("127.0.0.1", int(world.bao.address.rsplit(":", 1)[1])).start()
    try:
        config = world.config([reg(ngc)], [{"namespace": NS, "name": NAME}],
                              vault={"address": proxy.url, "timeout": "1s"},
                              schedule=fast_schedule(interval="300ms", stale_after="1500ms"))
        daemon, _, _ = in_process(world, config)
        daemon.start()
        try:
            wait(lambda: daemon.health.ready()[0], what="ready")
            proxy.set_mode("refuse")
            wait(lambda: not daemon.health.ready()[0], what="readiness lost")
            assert daemon.health.live()[0], "Vault down must not kill liveness"
            assert "last success" in daemon.health.ready()[1]
            proxy.set_mode("pass")
            wait(lambda: daemon.health.ready()[0], what="readiness regained")
        finally:
            daemon.shutdown()
    finally:
        proxy.stop()


def test_backoff_after_failure_then_normal_cadence(world: World, ngc: dict[str, Any]) -> None:
    # The same registry under its other name, so the probe can succeed once Vault has the path.
    alias = ngc["host"].replace("127.0.0.1", "localhost")
    missing = {"host": alias, "path": "not-yet", "username": "$oauthtoken"}
    config = world.config([reg(ngc), missing], [{"namespace": NS, "name": NAME}],
                          schedule=fast_schedule(interval="60s", retry_min="100ms", retry_max="400ms"))
    daemon, _, _ = in_process(world, config)
    daemon.start()
    try:
        # With a 60 s interval only backoff retries can produce several runs in a second or two.
        wait(lambda: daemon.failures >= 4, timeout=5, what="backoff retries")
        world.vault_put("not-yet", password=ngc["_key"])
        wait(lambda: daemon.failures == 0, timeout=5, what="recovery")
    finally:
        job = daemon.scheduler.get_job(SYNC_JOB)
        next_run = job.next_run_time if job else None
        daemon.shutdown()
    assert next_run is not None
    assert (next_run - datetime.now(next_run.tzinfo)).total_seconds() > 30, "back to the normal cadence"


def test_runs_never_overlap(world: World, ngc: dict[str, Any]) -> None:
    world.kube.add_fault(lambda r: r.resource == "secrets" and r.verb == "get", delay=0.4, times=None)
    config = world.config([reg(ngc)], [{"namespace": NS, "name": NAME}],
                          schedule=fast_schedule(interval="100ms"))
    daemon, _, _ = in_process(world, config)
    active, peak = [0], [0]
    original = daemon.syncer.run_once

    def counted() -> Any:
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        try:
            return original()
        finally:
            active[0] -= 1

    daemon.syncer.run_once = counted  # type: ignore[method-assign]
    daemon.start()
    try:
        wait(lambda: daemon.runs >= 3, timeout=10, what="three runs")
    finally:
        daemon.shutdown()
    assert peak[0] == 1


def test_leader_election_one_writer_and_failover(world: World, ngc: dict[str, Any]) -> None:
    world.kube.add_namespace("syncer")
    lease = {"enabled": True, "namespace": "syncer", "name": "syncer-lease",
             "lease_duration": "2s", "renew_period": "200ms"}
    targets = [{"namespace": NS, "name": NAME}]
    a, _, _ = in_process(world, world.config([reg(ngc)], targets, schedule=fast_schedule(interval="300ms"),
                                             leader_election={**lease, "identity": "replica-a"}))
    b, _, _ = in_process(world, world.config([reg(ngc)], targets, schedule=fast_schedule(interval="300ms"),
                                             leader_election={**lease, "identity": "replica-b"}))
    a.start()
    try:
        wait(lambda: a.runs >= 1, what="a leads and syncs")
        b.start()
        time.sleep(1.0)
        assert a.leader is not None and b.leader is not None
        assert a.leader.is_leader and not b.leader.is_leader
        assert b.runs == 0, "only the leader syncs"
        assert b.health.ready()[0], "a standby is ready (it is healthy, just not leading)"
        a.shutdown()  # releases the lease: failover must not wait for it to expire
        t0 = time.monotonic()
        wait(lambda: b.runs >= 1, timeout=5, what="b takes over")
        assert time.monotonic() - t0 < 1.5
        holder = world.kube.get_object("leases", "syncer", "syncer-lease")["spec"]["holderIdentity"]
        assert holder == "replica-b"
    finally:
        a.shutdown()
        b.shutdown()


def test_leader_crash_is_taken_over_after_lease_expiry(world: World, ngc: dict[str, Any]) -> None:
    world.kube.add_namespace("syncer")
    lease = {"enabled": True, "namespace": "syncer", "name": "crash-lease",
             "lease_duration": "1s", "renew_period": "200ms"}
    targets = [{"namespace": NS, "name": NAME}]
    a, _, _ = in_process(world, world.config([reg(ngc)], targets, leader_election={**lease, "identity": "a"}))
    b, _, _ = in_process(world, world.config([reg(ngc)], targets, leader_election={**lease, "identity": "b"}))
    a.start()
    wait(lambda: a.runs >= 1, what="a leads")
    b.start()
    try:
        a.scheduler.shutdown(wait=False)  # a "crashes": it stops renewing and never releases
        wait(lambda: b.runs >= 1, timeout=6, what="b takes over after expiry")
    finally:
        b.shutdown()


def test_events_emitted_and_aggregated(world: World, ngc: dict[str, Any]) -> None:
    config = world.config([reg(ngc)], [{"namespace": NS, "name": NAME}])
    assert world.run(config).code == 0
    world.vault_put("ngc", password=sentinel("typo"))
    assert world.run(config).code == 1
    events = world.kube.events(NS)
    reasons = sorted(e["reason"] for e in events)
    assert "CredentialsRotated" in reasons and "LoginRejected" in reasons
    for event in events:
        assert event["involvedObject"]["name"] == NAME
        world.assert_no_leak(str(event), "Events")


def test_events_aggregate_within_one_process(world: World, ngc: dict[str, Any]) -> None:
    world.vault_put("ngc", password=sentinel("typo"))
    config = world.config([reg(ngc)], [{"namespace": NS, "name": NAME}],
                          schedule=fast_schedule(interval="200ms", retry_min="100ms"))
    daemon, _, _ = in_process(world, config)
    daemon.start()
    try:
        wait(lambda: daemon.failures >= 4, what="several rejected runs")
    finally:
        daemon.shutdown()
    rejected = [e for e in world.kube.events(NS) if e["reason"] == "LoginRejected"]
    assert len(rejected) == 1, "repeats are aggregated into one Event"
    assert rejected[0]["count"] >= 4
    assert rejected[0]["type"] == "Warning"


def test_token_renewed_not_relogged_across_short_ttl(world: World, ngc: dict[str, Any]) -> None:
    config = world.config([reg(ngc)], [{"namespace": NS, "name": NAME}],
                          auth=approle_auth(world, "approle", token_ttl="3s"),
                          schedule=fast_schedule(interval="300ms"))
    daemon, registry, _ = in_process(world, config)
    daemon.start()
    try:
        time.sleep(4.5)  # longer than the token TTL: only renewal keeps one login
    finally:
        daemon.shutdown()
    vault = daemon.syncer.vault
    assert vault.logins == 1
    assert vault.renewals >= 1
    assert daemon.failures == 0
    assert registry.get_sample_value("syncer_vault_logins_total") == 1


def test_second_signal_exits_at_once(world: World, ngc: dict[str, Any]) -> None:
    world.kube.add_fault(lambda r: r.resource == "secrets" and r.verb == "get", delay=3, times=None)
    port = free_port()
    config = world.config([reg(ngc)], [{"namespace": NS, "name": NAME}], schedule=fast_schedule(),
                          metrics={"listen": f"127.0.0.1:{port}"}, kubernetes={"timeout": "10s"})
    daemon = DaemonProcess(world, config, port)
    daemon.wait_for(lambda: daemon.get("/healthz")[0] == 200, what="/healthz")
    time.sleep(0.5)  # a run is now stuck in the slow secret read
    daemon.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.proc.wait(timeout=2)
    assert daemon.proc.returncode == 128 + signal.SIGTERM
    world.assert_no_leak(daemon.output(), "daemon output")


def test_crashed_run_counts_as_failure_for_alerts() -> None:
    from prometheus_client import CollectorRegistry

    from syncer.metrics import Metrics

    settings = config_mod.from_mapping({
        "vault": {"address": "https://vault.example.com", "auth": {"method": "token", "token_file": "/t"}},
        "registries": [{"host": "nvcr.io", "path": "p"}],
        "targets": [{"namespace": "ns", "name": "s"}]}, {})
    registry = CollectorRegistry()
    metrics = Metrics(registry, settings, clock=lambda: 1234.0)
    assert registry.get_sample_value("syncer_errors_total", {"stage": "sync"}) == 0
    metrics.observe_crash()
    assert registry.get_sample_value("syncer_sync_runs_total", {"result": "failure"}) == 1
    assert registry.get_sample_value("syncer_last_run_timestamp_seconds") == 1234.0
    assert registry.get_sample_value("syncer_errors_total", {"stage": "sync"}) == 1


class _WatchedStop(threading.Event):
    """A stop event that tells the test when run_cycle looked at it."""

    def __init__(self) -> None:
        super().__init__()
        self.checked = threading.Event()

    def is_set(self) -> bool:
        self.checked.set()
        return super().is_set()


def test_run_waiting_for_the_lock_does_not_start_after_shutdown(world: World, ngc: dict[str, Any]) -> None:
    """A run that checked for shutdown, then waited for the in-flight one, must not start once
    shutdown has passed that lock (the lease is released and the Vault token revoked then)."""
    stop = _WatchedStop()
    app = build_app(config_mod.load(world.config([reg(ngc)], [{"namespace": NS, "name": NAME}]), {}),
                    {}, dry_run=False, daemon=True, stop=stop)
    daemon, _ = make_daemon(app)
    results: list[Any] = []
    with daemon._running:  # a run is in flight
        runner = threading.Thread(target=lambda: results.append(daemon.run_cycle()))
        runner.start()
        stop.checked.wait(0.5)  # the next run is past any check made before taking the lock
        stop.set()  # SIGTERM while it waits for the lock
    runner.join(10)
    assert results == [None] and daemon.runs == 0
    assert app.syncer.vault.logins == 0, "no login after shutdown: its token would never be revoked"


def test_sigterm_during_a_once_run_skips_writes_and_revokes_login(world: World, ngc: dict[str, Any]) -> None:
    """A CronJob pod is stopped with SIGTERM too: the run must not be killed with its Vault
    login still live (a token leak per killed run)."""
    config = world.config([reg(ngc)], [{"namespace": NS, "name": NAME}],
                          auth=approle_auth(world, "once"), kubernetes={"timeout": "10s"})
    # The secret read hangs long enough that the signal surely lands mid-run; the log line (not a
    # token count, which is slow with many tokens in the shared server) says the login happened.
    world.kube.add_fault(lambda r: r.resource == "secrets" and r.verb == "get", delay=4, times=None)
    # Compare accessor sets, not counts: short-TTL tokens of earlier tests may expire meanwhile.
    before = world.bao.token_accessors()
    once = DaemonProcess(world, config, free_port(), "--once")
    once.wait_for(lambda: "logged in to Vault" in once.output(), what="the Vault login")
    time.sleep(0.3)
    once.proc.send_signal(signal.SIGTERM)
    once.proc.wait(timeout=10)
    assert once.proc.returncode in (0, 1), once.output()[-2000:]
    assert world.kube.writes("secrets") == 0
    assert world.bao.token_accessors() - before == set(), "the login of the interrupted run was not revoked"
    world.assert_no_leak(once.output(), "--once output")


@pytest.mark.parametrize(("cron", "period"), [("*/5 * * * *", 300), ("0 * * * *", 3600),
                                              ("0 9 * * 1-5", 3 * 86400)])
def test_health_follows_a_cron_schedule(world: World, ngc: dict[str, Any], cron: str, period: int) -> None:
    """With cron, the unused interval (300 s by default) must not make /healthz fail between runs."""
    daemon, _, _ = in_process(world, world.config([reg(ngc)], [{"namespace": NS, "name": NAME}],
                                                  schedule={"cron": cron}))
    assert daemon.health.interval == period
    assert daemon.health.staleness == 3 * period


def test_repeats_in_one_batch_aggregate_in_order(world: World, kube_admin_kubeconfig: str) -> None:
    """emit_all spreads Events over threads, but repeats of one key stay on one thread in order:
    one create, then count bumps; other keys are created alongside."""
    from syncer.config import KubernetesSettings
    from syncer.events import EventRecorder, EventSpec
    from syncer.kube_api import Api
    from tests.support.kube_fixtures import kube_client

    recorder = EventRecorder(Api(kube_client(kube_admin_kubeconfig), timeout=5), KubernetesSettings(),
                             workers=4)
    repeated = EventSpec(NS, NAME, "SyncFailed", "same message", warning=True)
    others = [EventSpec(NS, f"{NAME}-{i}", "CredentialsRotated", "nvcr.io: password changed")
              for i in range(5)]
    recorder.emit_all([repeated, *others[:2], repeated, *others[2:], repeated])
    assert world.kube.count(verb="create", resource="events") == 6
    assert world.kube.count(verb="patch", resource="events") == 2
    failed = [e for e in world.kube.events(NS) if e["reason"] == "SyncFailed"]
    assert len(failed) == 1 and failed[0]["count"] == 3


def test_kube_connection_pool_has_room_for_the_watches(world: World, ngc: dict[str, Any]) -> None:
    """Each open watch holds a pooled connection for minutes; the pool keeps one more per worker,
    else the workers' connections were discarded after use ("Connection pool is full") and each
    request paid a new TLS handshake. A fixed target has one watch, a fan-out target two."""
    targets = [{"namespace": NS, "name": NAME}, {"namespace_selector": "team=a", "name": "pull"}]

    def pool_size(**kubernetes: Any) -> int:
        config = world.config([reg(ngc)], targets, sync={"concurrency": 16}, kubernetes=kubernetes)
        app = build_app(config_mod.load(config, {}), {}, dry_run=False, daemon=True)
        return int(app.api.api_client.rest_client.pool_manager.connection_pool_kw["maxsize"])

    assert pool_size() == 16 + 3
    assert pool_size(watch=False) == 16
