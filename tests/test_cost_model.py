"""The cost model (docs/scaling.md), pinned by counting requests at the servers: R = 3, T = 20.

Vault requests are counted by an HTTP proxy in front of OpenBao, Kubernetes requests by the
API test server, and probes by the registries' own access logs. Nothing is counted by the syncer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncer.cli import App
from syncer.report import TargetOutcome
from tests.support.httpcount import CountingProxy
from tests.support.registry import Registry
from tests.support.scale import USER, Login, label_namespaces, long_lived_app, probes, registries, rotate
from tests.support.world import World, sentinel

R = 3
ML = [f"ml-{i:02d}" for i in range(10)]
DATA = [f"data-{i:02d}" for i in range(10)]
T = len(ML) + len(DATA)
NAME = "registry-pull"


@pytest.fixture(scope="module")
def three_registries(ca: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Registry]]:
    with registries(ca, tmp_path_factory.mktemp("cost-registries"), R) as regs:
        yield regs


@pytest.fixture
def vault_proxy(bao: Any) -> Iterator[CountingProxy]:
    with CountingProxy(bao.address) as proxy:
        yield proxy


@pytest.fixture
def world(tmp_path: Path, bao: Any, kube: Any, ca_file: str) -> World:
    label_namespaces(kube, ML, {"team": "ml"})
    label_namespaces(kube, DATA, {"team": "data"})
    kube.add_namespace("unrelated", {"team": "web"})
    return World(tmp_path, bao, kube, ca_file)


@pytest.fixture
def logins(world: World, three_registries: list[Registry]) -> list[Login]:
    out = []
    for i, registry in enumerate(three_registries):
        login = Login(registry, f"reg{i}", "")
        rotate(login, sentinel(f"reg{i}"), world.vault_put)
        out.append(login)
    return out


def config(world: World, logins: list[Login], proxy: CountingProxy, probe_interval: str = "0s",
           list_secrets: bool = False) -> Path:
    """T = 20: every ml namespace gets all R hosts, every data namespace only the first."""
    return world.config(
        [login.spec() for login in logins],
        [{"namespace_selector": "team=ml", "name": NAME, "create": True},
         {"namespace_selector": "team in (data)", "name": NAME, "create": True,
          "registries": [logins[0].host]}],
        vault={"address": proxy.url}, probe={"interval": probe_interval}, sync={"concurrency": 8},
        kubernetes={"list_secrets": list_secrets})


def kv_reads(world: World, proxy: CountingProxy) -> int:
    return proxy.count("GET", f"/v1/secret/data/{world.prefix}/")


def test_steady_state_cost(world: World, logins: list[Login], vault_proxy: CountingProxy,
                           three_registries: list[Registry]) -> None:
    cfg = config(world, logins, vault_proxy)
    first = world.run(cfg)
    assert first.code == 0, first.out
    assert world.kube.writes() == T, "the first cycle creates every fan-out secret once"
    for _cycle in range(2):
        world.kube.reset_requests()
        vault_proxy.reset()
        probed = probes(three_registries)
        result = world.run(cfg)
        assert result.code == 0, result.out
        assert result.out.count(": unchanged") == T
        kube = world.kube
        assert kube.writes("secrets") == 0 and kube.writes("events") == 0
        assert kube.count(verb="list", resource="namespaces") == 2, "one LIST per distinct selector"
        assert kube.count(verb="get", resource="secrets") == T
        assert len(kube.requests) == T + 2, [(r.verb, r.resource) for r in kube.requests]
        assert kv_reads(world, vault_proxy) == R
        # A fresh process adopts its token once (lookup-self); nothing else reaches Vault.
        assert len(vault_proxy.requests) == R + 1, vault_proxy.requests
        assert probes(three_registries) - probed == R, "probe.interval = 0: every host every cycle"


def test_rotation_writes_each_affected_secret_once_and_probes_each_changed_host_once(
        world: World, logins: list[Login], vault_proxy: CountingProxy,
        three_registries: list[Registry]) -> None:
    app = long_lived_app(config(world, logins, vault_proxy, probe_interval="1h"))
    assert app.syncer.run_once().ok
    world.kube.reset_requests()
    vault_proxy.reset()
    probed = probes(three_registries)
    steady = app.syncer.run_once()
    assert steady.ok and world.kube.writes() == 0
    assert probes(three_registries) == probed, "within probe.interval an unchanged login is not probed"
    assert kv_reads(world, vault_proxy) == R

    # Two hosts rotate; both live in the ten ml secrets, neither in the data secrets.
    for login in logins[1:]:
        rotate(login, sentinel("rotated"), world.vault_put)
    world.kube.reset_requests()
    probed = probes(three_registries)
    summary = app.syncer.run_once()
    assert summary.ok, summary.render()
    assert probes(three_registries) - probed == 2, "one probe per changed host, not per secret"
    assert world.kube.writes() == len(ML), "one write per affected secret, however many hosts changed"
    assert world.kube.count(verb="patch", resource="secrets") == len(ML)
    for ns in DATA:
        assert world.kube.count(verb="patch", namespace=ns) == 0
    updated = {t.target.namespace for t in summary.targets if t.outcome is TargetOutcome.UPDATED}
    assert updated == set(ML)
    for ns in ML:
        auths = world.secret_doc(ns, NAME)["auths"]
        assert [auths[x.host]["password"] for x in logins] == [x.password for x in logins]
        assert auths[logins[1].host]["username"] == USER
    world.assert_no_leak(summary.render(), "summary")


def test_probe_interval_expiry_probes_again(world: World, logins: list[Login],
                                            vault_proxy: CountingProxy,
                                            three_registries: list[Registry]) -> None:
    app = long_lived_app(config(world, logins, vault_proxy, probe_interval="10m"))
    now = [1_000_000.0]
    app.syncer.clock = lambda: now[0]
    assert app.syncer.run_once().ok
    probed = probes(three_registries)
    now[0] += 9 * 60
    assert app.syncer.run_once().ok
    assert probes(three_registries) == probed
    now[0] += 2 * 60
    assert app.syncer.run_once().ok
    assert probes(three_registries) - probed == R, "after probe.interval every host is probed again"


def test_events_go_out_on_the_bounded_pool(world: World, logins: list[Login],
                                           vault_proxy: CountingProxy) -> None:
    """One Event per written secret, sent on the pool: more than one at a time, never more than
    sync.concurrency (8 here). One after another they cost T x API latency after every rotation."""
    lock = threading.Lock()
    inflight, peak = [0], [0]

    def slow_event() -> None:
        with lock:
            inflight[0] += 1
            peak[0] = max(peak[0], inflight[0])
        time.sleep(0.05)  # the server's own latency, so that overlapping sends can be seen
        with lock:
            inflight[0] -= 1

    world.kube.before(lambda r: r.resource == "events" and r.verb == "create", slow_event, times=None)
    result = world.run(config(world, logins, vault_proxy))
    assert result.code == 0, result.out
    assert world.kube.writes("secrets") == T
    assert world.kube.count(verb="create", resource="events") == T
    assert 1 < peak[0] <= 8, peak[0]


FOOTPRINT = """
import json, sys
from syncer.cli import main
codes = [main(args, env={}) for args in json.loads(sys.argv[1])]
generated = ("kubernetes.client.api.", "kubernetes.client.models.")
loaded = sorted(m for m in sys.modules if m.startswith(generated))
print(json.dumps({"codes": codes, "loaded": loaded}))
"""


def test_generated_api_classes_are_never_imported(world: World, logins: list[Login],
                                                  vault_proxy: CountingProxy) -> None:
    """The pydantic-validated generated classes (CoreV1Api and its models) cost ~21 MB of RSS on
    import, a quarter of the idle budget (docs/scaling.md). A sync, a preflight and a show in one
    process must load none of them: kube_api.Api speaks JSON over the ApiClient's transport."""
    cfg = str(config(world, logins, vault_proxy))
    runs = [["--config", cfg, "--once"], ["check", "--config", cfg], ["show", "--config", cfg]]
    proc = subprocess.run([sys.executable, "-c", FOOTPRINT, json.dumps(runs)], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).parent.parent, check=False)
    world.assert_no_leak(proc.stdout + proc.stderr, "subprocess output")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["codes"] == [0, 0, 0], proc.stdout[-2000:]
    assert report["loaded"] == []


# ------------------------------------------------------------------ kubernetes.list_secrets


@pytest.fixture
def listing_app(world: World, logins: list[Login], vault_proxy: CountingProxy) -> App:
    """A daemon's wiring with list_secrets on and pages of 8 (20 secrets: 3 pages), filled once."""
    app = long_lived_app(config(world, logins, vault_proxy, probe_interval="1h", list_secrets=True))
    app.syncer.store.list_page = 8
    assert app.syncer.run_once().ok
    assert world.kube.writes() == T
    assert world.kube.count(verb="get", resource="secrets") == 0, "the LIST showed none exist yet"
    world.kube.reset_requests()
    return app


def test_list_secrets_replaces_the_per_namespace_gets(world: World, logins: list[Login],
                                                      listing_app: App) -> None:
    kube = world.kube
    assert listing_app.syncer.run_once().ok
    assert kube.writes() == 0
    assert kube.count(verb="list", resource="secrets") == 3, "one paged LIST for the one secret name"
    assert len(kube.requests) == 2 + 3, [(r.verb, r.resource) for r in kube.requests]

    for login in logins[1:]:
        rotate(login, sentinel("rotated"), world.vault_put)
    kube.reset_requests()
    summary = listing_app.syncer.run_once()
    assert summary.ok, summary.render()
    assert kube.writes() == len(ML) and kube.count(verb="get", resource="secrets") == 0
    for ns in ML:
        assert world.secret_doc(ns, NAME)["auths"][logins[2].host]["password"] == logins[2].password


def test_a_listed_copy_gone_stale_is_read_again(world: World, logins: list[Login],
                                                listing_app: App) -> None:
    """The LIST is older than the write: a concurrent edit in between gets a 409, the secret is
    read again with a GET, and the edit survives."""
    def concurrent_edit() -> None:
        doc = world.secret_doc("ml-00", NAME)
        doc["auths"]["ghcr.io"] = {"username": "someone", "password": "else"}
        world.put_dockerconfig("ml-00", NAME, doc)

    rotate(logins[0], sentinel("rotated"), world.vault_put)
    world.kube.before(lambda r: r.verb == "patch" and r.namespace == "ml-00", concurrent_edit)
    summary = listing_app.syncer.run_once()
    assert summary.ok, summary.render()
    assert world.kube.count(verb="get", resource="secrets") == 1
    assert world.kube.count(verb="patch", resource="secrets", namespace="ml-00") == 2
    auths = world.secret_doc("ml-00", NAME)["auths"]
    assert auths["ghcr.io"] == {"username": "someone", "password": "else"}
    assert auths[logins[0].host]["password"] == logins[0].password


def test_list_secrets_without_the_grant_falls_back_to_gets(world: World, logins: list[Login],
                                                           listing_app: App,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    world.kube.add_fault(lambda r: r.verb == "list" and r.resource == "secrets", status=403, times=None)
    world.put_dockerconfig("ml-01", NAME, {"auths": {}}, type="Opaque")
    summary = listing_app.syncer.run_once()
    assert world.kube.count(verb="get", resource="secrets") == T
    assert "cannot list secrets named registry-pull cluster-wide" in caplog.text
    outcomes = {t.target.namespace: t.outcome for t in summary.targets}
    assert outcomes.pop("ml-01") is TargetOutcome.MALFORMED
    assert set(outcomes.values()) == {TargetOutcome.UNCHANGED}


def test_a_malformed_listed_secret_fails_alone(world: World, listing_app: App) -> None:
    world.put_dockerconfig("ml-01", NAME, {"auths": {}}, type="Opaque")
    summary = listing_app.syncer.run_once()
    outcomes = {t.target.namespace: t.outcome for t in summary.targets}
    assert outcomes.pop("ml-01") is TargetOutcome.MALFORMED
    assert set(outcomes.values()) == {TargetOutcome.UNCHANGED}
    assert world.kube.writes() == 0 and world.kube.count(verb="get", resource="secrets") == 0
