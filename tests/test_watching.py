"""The daemon with watches (syncer/watching.py, issue #14): reactions within 2 s through the
reactor, informer-fed cycles with no secret GETs or LISTs, the polling fallback, leadership, SIGTERM
and ``watch = false``. Real OpenBao, a real registry and the Kubernetes API test server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from syncer import config as config_mod
from syncer.cli import App, build_app, make_daemon
from syncer.scheduler import Daemon
from tests.support.net import free_port
from tests.support.operator import NS
from tests.support.world import SYNCER_TOKEN, DaemonProcess, World, metric_value

pytest_plugins = ["tests.support.operator_fixtures"]  # world, ngc
A, FAN, SELECTOR = "pull-a", "pull-fan", "pull=yes"
REACT_WITHIN = 2.0
"""The issue's budget for a repair or a new namespace served."""


def targets(ngc: dict[str, Any]) -> list[dict[str, Any]]:
    """A fixed target and a fan-out target, both created when missing."""
    return [{"namespace": NS, "name": A, "registries": [ngc["host"]], "create": True},
            {"namespace_selector": SELECTOR, "name": FAN, "registries": [ngc["host"]], "create": True}]


def make_app(world: World, ngc: dict[str, Any], **sections: Any) -> App:
    schedule = {"interval": "1h", "jitter": "0s", **sections.pop("schedule", {})}
    config = world.config([ngc], sections.pop("targets", targets(ngc)), schedule=schedule, **sections)
    return build_app(config_mod.load(config, {}), {}, dry_run=False, daemon=True)


REGISTRIES: dict[int, CollectorRegistry] = {}
"""The metrics registry of each daemon started, by id(daemon)."""


def sample(daemon: Daemon, name: str, **labels: str) -> float | None:
    return REGISTRIES[id(daemon)].get_sample_value(name, labels)


@pytest.fixture
def started(world: World) -> Iterator[Callable[[App], Daemon]]:
    """Start a daemon for an app; every one started is shut down afterwards."""
    daemons: list[Daemon] = []

    def start(app: App) -> Daemon:
        daemon, registry = make_daemon(app)
        REGISTRIES[id(daemon)] = registry
        daemons.append(daemon)
        daemon.start()
        return daemon

    yield start
    for daemon in daemons:
        daemon.shutdown()


def eventually(check: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> float:
    """Wait for ``check()``; returns the seconds it took."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.01)
    return time.monotonic() - t0


def ready(app: App, daemon: Daemon, runs: int = 1) -> None:
    """The start-up cycle has run and the watches are armed."""
    assert app.watching is not None
    eventually(lambda: daemon.runs >= runs, what="the start-up cycle")
    assert app.watching.ready.wait(5), "watches not ready"


def secret_reads(world: World) -> tuple[int, int]:
    """(GETs, LISTs) of secrets since the last reset."""
    return world.kube.count(verb="get", resource="secrets"), world.kube.count(verb="list", resource="secrets")


def password(world: World, namespace: str, name: str, host: str) -> str:
    return str(world.secret_doc(namespace, name)["auths"][host]["password"])


def test_reactions_repair_each_change_once_with_no_reads(world: World, ngc: dict[str, Any],
                                                         started: Callable[[App], Daemon]) -> None:
    world.kube.add_namespace("ml-a", {"pull": "yes"})
    app = make_app(world, ngc)
    daemon = started(app)
    ready(app, daemon)
    host = ngc["host"]
    key = password(world, NS, A, host)
    eventually(lambda: app.watching is not None and app.watching.cached_secret("ml-a", FAN)[1] is not None,
               what="the cache holds the start-up writes")
    world.kube.reset_requests()

    assert sample(daemon, "syncer_watches", resource="secrets", mode="watching") == 2
    assert sample(daemon, "syncer_watches", resource="namespaces", mode="watching") == 1
    summary = daemon.run_cycle()
    assert summary is not None and summary.ok
    assert secret_reads(world) == (0, 0), "a steady full cycle reads the informer cache only"
    assert world.kube.count(verb="list", resource="namespaces") == 0
    assert world.kube.writes() == 0

    world.kube.delete_secret(NS, A)
    took = eventually(lambda: world.kube.get_secret(NS, A) is not None, what="deleted secret restored")
    assert took < REACT_WITHIN
    eventually(lambda: world.kube.writes() == 1, what="one create")

    doc = world.secret_doc(NS, A)
    doc["auths"][host]["password"] = "edited-by-hand"
    world.put_dockerconfig(NS, A, doc)
    took = eventually(lambda: password(world, NS, A, host) == key, what="drifted entry repaired")
    assert took < REACT_WITHIN

    world.kube.add_namespace("ml-b", {"pull": "yes"})
    took = eventually(lambda: world.kube.get_secret("ml-b", FAN) is not None, what="new namespace served")
    assert took < REACT_WITHIN
    time.sleep(0.5)  # the events of the syncer's own writes have come back by now
    # put_dockerconfig and delete_secret are the test's own (not requests): 3 writes, each once.
    assert world.kube.writes() == 3, "each change repaired by exactly one write"
    assert secret_reads(world) == (0, 0), "writes carried the cached resourceVersion: no re-read"
    for reason in ("secret_deleted", "entry_drifted", "namespace_matched"):
        assert sample(daemon, "syncer_repairs_total", reason=reason) == 1, reason


def test_conflict_from_a_stale_cache_is_re_read_with_a_get(world: World, ngc: dict[str, Any],
                                                           started: Callable[[App], Daemon]) -> None:
    app = make_app(world, ngc)
    daemon = started(app)
    ready(app, daemon)
    assert app.watching is not None
    app.watching.stop()
    doc = world.secret_doc(NS, A)
    doc["auths"][ngc["host"]]["password"] = "edited-by-hand"
    world.put_dockerconfig(NS, A, doc)
    frozen = world.kube.get_secret(NS, A)

    class Frozen:
        """A cache one write behind the server (a watch event still in flight)."""

        def cached_secret(self, namespace: str, name: str) -> tuple[bool, Any]:
            return (namespace, name) == (NS, A), frozen

        def cached_namespaces(self, selector: str) -> None:
            return None

        def writing(self, namespace: str, name: str, payload: bytes) -> None:
            pass

    app.syncer.store.cache = Frozen()
    doc["auths"]["other.example"] = {"username": "u", "password": "theirs"}
    world.put_dockerconfig(NS, A, doc)
    world.kube.reset_requests()
    summary = daemon.run_cycle()
    assert summary is not None and summary.ok
    report = next(t for t in summary.targets if t.target.name == A)
    assert report.conflicts == 1 and report.outcome.value == "updated"
    assert world.kube.count(verb="get", resource="secrets", name=A) == 1, "the 409 re-reads once"
    assert world.kube.writes() == 1
    assert world.secret_doc(NS, A)["auths"]["other.example"]["password"] == "theirs", "their edit kept"


def test_watch_forbidden_polls_with_one_warning_and_gets_continue(
        world: World, ngc: dict[str, Any], started: Callable[[App], Daemon],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    every = ["get", "list", "create", "update", "patch"]
    world.kube.set_rules(SYNCER_TOKEN, [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": every},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ])
    world.kube.add_namespace("ml-a", {"pull": "yes"})
    app = make_app(world, ngc)
    daemon = started(app)
    ready(app, daemon)
    assert app.watching is not None
    assert set(app.watching.modes().values()) == {"polling"}
    world.kube.reset_requests()
    summary = daemon.run_cycle()
    assert summary is not None and summary.ok
    gets, lists = secret_reads(world)
    assert gets == 1, "the fixed target is read with a GET"
    assert lists == 1, "the fan-out name with its LIST"
    warnings = [r for r in caplog.records if "falling back to polling" in r.getMessage()]
    assert len(warnings) == len(app.watching.modes()), "one warning per watch"
    assert sample(daemon, "syncer_watches", resource="secrets", mode="polling") == 2
    assert sample(daemon, "syncer_watches", resource="namespaces", mode="polling") == 1
    assert sample(daemon, "syncer_watches", resource="secrets", mode="watching") == 0
    assert (sample(daemon, "syncer_watch_restarts_total", resource="secrets", reason="forbidden") or 0) >= 2


def test_only_the_leader_acts_and_a_new_leader_starts_warm(
        world: World, ngc: dict[str, Any], started: Callable[[App], Daemon]) -> None:
    world.kube.add_namespace("syncer")
    lease = {"enabled": True, "namespace": "syncer", "name": "watch-lease",
             "lease_duration": "2s", "renew_period": "200ms"}
    one = [targets(ngc)[0]]
    app_a = make_app(world, ngc, targets=one, leader_election={**lease, "identity": "a"})
    app_b = make_app(world, ngc, targets=one, leader_election={**lease, "identity": "b"})
    a = started(app_a)
    ready(app_a, a)
    b = started(app_b)
    assert app_b.watching is not None and app_b.watching.ready.wait(5)
    assert b.runs == 0
    world.kube.reset_requests()
    world.kube.delete_secret(NS, A)
    eventually(lambda: world.kube.get_secret(NS, A) is not None, timeout=REACT_WITHIN, what="a repairs")
    time.sleep(0.5)
    assert world.kube.writes() == 1, "the standby saw the same event and did nothing"
    a.shutdown()  # releases the lease
    eventually(lambda: b.runs >= 1, what="b takes over")
    assert world.kube.count(verb="get", resource="secrets") == 0, "b's first cycle reads its warm cache"
    world.kube.delete_secret(NS, A)
    eventually(lambda: world.kube.get_secret(NS, A) is not None, timeout=REACT_WITHIN, what="b repairs")
    assert not a.watching or a.watching.modes() == {}, "the old leader's watches are closed"


def test_shutdown_closes_the_watches_at_once(world: World, ngc: dict[str, Any],
                                             started: Callable[[App], Daemon]) -> None:
    app = make_app(world, ngc)
    daemon = started(app)
    ready(app, daemon)
    assert world.kube.watches.open_count() > 0
    t0 = time.monotonic()
    daemon.shutdown()
    assert time.monotonic() - t0 < 1.5
    eventually(lambda: world.kube.watches.open_count() == 0, timeout=1.0, what="streams closed")


def test_watch_false_polls_only(world: World, ngc: dict[str, Any], started: Callable[[App], Daemon]) -> None:
    world.kube.add_namespace("ml-a", {"pull": "yes"})
    app = make_app(world, ngc, kubernetes={"watch": False})
    assert app.watching is None
    daemon = started(app)
    eventually(lambda: daemon.runs >= 1, what="the start-up cycle")
    assert world.kube.count(verb="watch") == 0
    world.kube.reset_requests()
    assert daemon.run_cycle() is not None
    assert secret_reads(world) == (1, 1), "the fixed target GET, the fan-out LIST"
    world.kube.delete_secret(NS, A)
    time.sleep(0.5)
    assert world.kube.get_secret(NS, A) is None, "without watches a delete waits for the cycle"


def test_once_never_watches(world: World, ngc: dict[str, Any]) -> None:
    config = world.config([ngc], targets(ngc))
    assert world.run(config).code == 0
    assert world.kube.count(verb="watch") == 0


def test_dropped_and_compacted_watch_still_repairs_once(world: World, ngc: dict[str, Any],
                                                        started: Callable[[App], Daemon]) -> None:
    """The stream is cut and the delete compacted away: the reflector relists (410) and the
    relist's DELETED is attributed to the target like a watch event."""
    app = make_app(world, ngc, targets=[targets(ngc)[0]])
    daemon = started(app)
    ready(app, daemon)
    world.kube.reset_requests()
    world.kube.watches.drop()
    world.kube.delete_secret(NS, A)
    world.kube.store.compact()
    took = eventually(lambda: world.kube.get_secret(NS, A) is not None, what="restored after the relist")
    assert took < REACT_WITHIN
    time.sleep(0.5)
    assert world.kube.writes() == 1


def test_reload_watches_the_new_targets(world: World, ngc: dict[str, Any],
                                        started: Callable[[App], Daemon]) -> None:
    app = make_app(world, ngc, targets=[targets(ngc)[0]])
    daemon = started(app)
    ready(app, daemon)
    extra = {"namespace": NS, "name": "pull-b", "registries": [ngc["host"]], "create": True}
    reloaded = config_mod.load(world.config([ngc], [targets(ngc)[0], extra],
                                            schedule={"interval": "1h", "jitter": "0s"}), {})
    daemon.reconfigure(reloaded)
    ready(app, daemon, runs=2)
    assert world.kube.get_secret(NS, "pull-b") is not None
    assert app.watching is not None
    assert app.watching.modes()[f"secrets[{NS}](metadata.name=pull-b)"] == "watching"
    world.kube.delete_secret(NS, "pull-b")
    took = eventually(lambda: world.kube.get_secret(NS, "pull-b") is not None, what="new target repaired")
    assert took < REACT_WITHIN


def test_sigterm_closes_the_watches_of_a_daemon_process_at_once(world: World, ngc: dict[str, Any]) -> None:
    port = free_port()
    world.kube.add_namespace("ml-a", {"pull": "yes"})
    config = world.config([ngc], targets(ngc), schedule={"interval": "1h", "jitter": "0s"},
                          metrics={"listen": f"127.0.0.1:{port}"})
    daemon = DaemonProcess(world, config, port)
    try:
        daemon.wait_for(lambda: world.kube.watches.open_count() == 3, what="three watches open")
        daemon.wait_for(lambda: metric_value(daemon.get("/metrics")[1], "syncer_watches",
                                             resource="secrets", mode="watching") == 2, what="watching")
        t0 = time.monotonic()
    finally:
        code = daemon.stop(timeout=5)
    assert code == 0
    assert time.monotonic() - t0 < 2.0, "SIGTERM ends the process without waiting for the watches"
    eventually(lambda: world.kube.watches.open_count() == 0, timeout=1.0, what="streams closed")
