"""syncer.health: liveness tells a stuck scheduler or cycle from a long, progressing cycle.

A fake clock drives ``Health`` and ``Heartbeat``; the HTTP answers are read over a real socket;
the Syncer's progress hook is exercised by a real sync (OpenBao, registry, Kubernetes API test
server), and the daemon's wiring is checked on the objects ``build_app``/``make_daemon`` build.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from prometheus_client import CollectorRegistry

from syncer import config as config_mod
from syncer.cli import build_app, make_daemon
from syncer.health import Health, Heartbeat, make_server
from syncer.scheduler import StopWhen
from tests.support.vault_fixtures import FakeClock
from tests.support.world import World
from tests.test_daemon import NAME, NS, ngc, reg, world  # noqa: F401 - fixtures

INTERVAL = 10.0
STUCK = 60.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_health(clock: FakeClock, alive: list[bool] | None = None) -> Health:
    state = alive if alive is not None else [True]
    return Health(INTERVAL, 3 * INTERVAL, stuck_after=STUCK, heartbeat=Heartbeat(clock),
                  scheduler_alive=lambda: state[0], clock=clock)


def test_a_long_cycle_that_keeps_progressing_stays_alive(clock: FakeClock) -> None:
    health = make_health(clock)
    health.run_started()
    for _ in range(20):  # 20 x 50 s: far beyond 3 intervals and beyond the stuck bound
        clock.advance(STUCK - 10)
        health.heartbeat.beat()
        ok, why = health.live()
        assert ok, why
    assert "cycle running for 1000s" in health.live()[1]


def test_a_cycle_without_progress_past_the_bound_is_stuck(clock: FakeClock) -> None:
    health = make_health(clock)
    health.run_started()
    clock.advance(20)
    health.heartbeat.beat()
    clock.advance(STUCK)
    assert health.live()[0], "exactly at the bound is still alive"
    clock.advance(1)
    ok, why = health.live()
    assert not ok
    assert why == "sync cycle stuck: running for 81s, no progress for 61s (limit 60s)"


def test_a_cycle_that_never_completes_a_step_is_stuck_from_its_start(clock: FakeClock) -> None:
    health = make_health(clock)
    health.heartbeat.beat()  # progress of an earlier cycle must not count for this one
    clock.advance(500)
    health.run_finished(True)
    health.run_started()
    clock.advance(STUCK + 1)
    assert not health.live()[0]


def test_between_cycles_three_intervals_without_a_start_fail(clock: FakeClock) -> None:
    health = make_health(clock)
    health.run_started()
    clock.advance(5)
    health.run_finished(True)
    clock.advance(3 * INTERVAL - 5)
    assert health.live() == (True, "ok")
    clock.advance(1)
    assert health.live() == (False, "no run started for 31s (3 intervals = 30s)")


def test_standby_is_alive_and_ready_without_running(clock: FakeClock) -> None:
    health = make_health(clock)
    health.standby = True
    clock.advance(100 * INTERVAL)
    assert health.live() == (True, "standby (not the leader)")
    assert health.ready() == (True, "standby (not the leader)")


def test_a_dead_scheduler_fails_liveness_even_mid_progress(clock: FakeClock) -> None:
    alive = [True]
    health = make_health(clock, alive)
    health.run_started()
    health.heartbeat.beat()
    alive[0] = False
    assert health.live() == (False, "scheduler is not running")
    health.standby = True
    assert not health.live()[0], "a standby whose scheduler died is dead too"


def test_readiness_is_unchanged_by_progress(clock: FakeClock) -> None:
    health = make_health(clock)
    health.run_started()
    health.heartbeat.beat()
    assert health.ready() == (False, "no run has completed yet")
    health.run_finished(False)
    assert health.ready() == (False, "no run has succeeded yet")
    health.run_started()
    health.run_finished(True)
    clock.advance(3 * INTERVAL + 1)
    health.run_started()
    health.heartbeat.beat()
    assert health.ready() == (False, "last success 31s ago (stale after 30s)")


@pytest.fixture
def served(clock: FakeClock) -> Iterator[tuple[Health, str]]:
    health = make_health(clock)
    server = make_server("127.0.0.1", 0, CollectorRegistry(), health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield health, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_healthz_over_http_progressing_then_stuck(served: tuple[Health, str], clock: FakeClock) -> None:
    health, url = served
    health.run_started()
    clock.advance(5 * INTERVAL)
    health.heartbeat.beat()
    resp = requests.get(f"{url}/healthz", timeout=5)
    assert (resp.status_code, resp.text) == (200, "ok (cycle running for 50s, last progress 0s ago)\n")
    clock.advance(STUCK + 1)
    resp = requests.get(f"{url}/healthz", timeout=5)
    assert resp.status_code == 503
    assert resp.text.startswith("sync cycle stuck:")
    assert requests.get(f"{url}/readyz", timeout=5).status_code == 503
    assert requests.get(f"{url}/nope", timeout=5).status_code == 404


def test_a_real_sync_reports_each_step(world: World, ngc: dict[str, Any]) -> None:  # noqa: F811
    """One Vault read, one probe and two targets: four heartbeats, each at a step's end."""
    config = world.config([reg(ngc)], [{"namespace": NS, "name": NAME},
                                       {"namespace": NS, "name": "second", "create": True}])
    app = build_app(config_mod.load(config, {}), {}, dry_run=False)
    try:
        summary = app.syncer.run_once()
        assert summary.ok, summary.render()
        assert app.heartbeat.steps == 4
    finally:
        app.syncer.vault.close()


def test_daemon_collaborators_come_through_constructors(world: World, ngc: dict[str, Any]) -> None:  # noqa: F811
    """The stop flag, leader and heartbeat are built first and shared; nothing is set later."""
    world.kube.add_namespace("syncer")
    config = world.config([reg(ngc)], [{"namespace": NS, "name": NAME}],
                          leader_election={"enabled": True, "namespace": "syncer", "name": "wiring",
                                           "identity": "a", "lease_duration": "2s", "renew_period": "1s"})
    settings = config_mod.load(config, {})
    with pytest.raises(ValueError, match="daemon=True"):
        make_daemon(build_app(settings, {}, dry_run=False))
    app = build_app(settings, {}, dry_run=False, daemon=True)
    should_stop = app.syncer.should_stop
    assert isinstance(should_stop, StopWhen)
    assert should_stop.stop is app.stop and should_stop.leader is app.leader
    daemon, _ = make_daemon(app)
    assert app.syncer.should_stop is should_stop, "make_daemon must not rewire the Syncer"
    assert daemon.stop is app.stop and daemon.leader is app.leader
    assert daemon.health.heartbeat is app.heartbeat
    assert should_stop(), "not the leader yet: no write may start"
    assert not daemon.health.live()[0], "the scheduler is not running yet"
    daemon.start()
    try:
        assert daemon.health.live()[0]
    finally:
        daemon.shutdown()
        app.syncer.vault.close()
    assert should_stop() and not daemon.health.live()[0]


BASE = {"vault": {"address": "https://vault.example.com", "auth": {"method": "token", "token_file": "/t"}},
        "registries": [{"host": "nvcr.io", "path": "p"}], "targets": [{"namespace": "ns", "name": "s"}]}


def test_metrics_server_limits_are_configurable() -> None:
    settings = config_mod.from_mapping({**BASE, "metrics": {"handler_timeout": "2s",
                                                            "max_connections": 8}}, {})
    assert (settings.metrics.handler_timeout, settings.metrics.max_connections) == (2.0, 8)
    defaults = config_mod.from_mapping(BASE, {}).metrics
    assert (defaults.handler_timeout, defaults.max_connections) == (5.0, 32)


def test_bad_metrics_server_limits_name_their_keys() -> None:
    with pytest.raises(config_mod.ConfigError) as err:
        config_mod.from_mapping({**BASE, "metrics": {"handler_timeout": "2m", "max_connections": 0}}, {})
    assert sorted(err.value.problems) == [
        "metrics.handler_timeout: must be at most 60s (the kubelet's probe gives up long before)",
        "metrics.max_connections: must be between 1 and 1024"]
