"""Fan-out targets: a namespace selector, ServiceAccount imagePullSecrets, bounded concurrency.

Real OpenBao, a real registry and the Kubernetes API test server; the Syncer is kept across
cycles the way the daemon keeps it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from syncer import config as config_mod
from syncer.metrics import Metrics
from syncer.report import TargetOutcome
from tests.support.scale import USER, label_namespaces, long_lived_app
from tests.support.world import World, metric_value, sentinel

NAME = "registry-pull"
SELECTOR = "team in (ml,data)"


@pytest.fixture
def world(tmp_path: Path, bao: Any, kube: Any, ca_file: str) -> World:
    label_namespaces(kube, ["ml-a", "data-a"], {"team": "ml"})
    kube.add_namespace("web", {"team": "web"})
    return World(tmp_path, bao, kube, ca_file)


@pytest.fixture
def registry(world: World, htpasswd_registry: Any) -> dict[str, Any]:
    password = sentinel("fanout")
    htpasswd_registry.set_password(USER, password)
    world.vault_put("fan", username=USER, password=password)
    return {"host": htpasswd_registry.host, "path": "fan"}


def fanout_config(world: World, registry: dict[str, Any], **target: Any) -> Path:
    spec = {"namespace_selector": SELECTOR, "name": NAME, "create": True, **target}
    return world.config([registry], [spec], kubernetes={"events": False})


def served(summary: Any) -> dict[str, TargetOutcome]:
    return {t.target.namespace: t.outcome for t in summary.targets}


def test_new_matching_namespace_is_served_next_cycle_and_unmatched_left_alone(
        world: World, registry: dict[str, Any]) -> None:
    app = long_lived_app(fanout_config(world, registry))
    first = app.syncer.run_once()
    assert served(first) == {"ml-a": TargetOutcome.CREATED, "data-a": TargetOutcome.CREATED}
    assert world.kube.get_secret("web", NAME) is None

    world.kube.add_namespace("data-b", {"team": "data"})
    world.kube.add_namespace("ml-a", {"team": "retired"})  # stops matching
    world.kube.reset_requests()
    second = app.syncer.run_once()
    assert served(second) == {"data-a": TargetOutcome.UNCHANGED, "data-b": TargetOutcome.CREATED}
    assert world.secret_doc("data-b", NAME)["auths"][registry["host"]]["username"] == USER
    assert world.kube.get_secret("ml-a", NAME) is not None, "a namespace that stops matching keeps its secret"
    assert world.kube.count(namespace="ml-a") == 0
    assert world.kube.writes() == 1


def test_terminating_namespace_is_skipped(world: World, registry: dict[str, Any]) -> None:
    world.kube.add_namespace("ml-gone", {"team": "ml"}, phase="Terminating")
    app = long_lived_app(fanout_config(world, registry))
    world.kube.reset_requests()
    summary = app.syncer.run_once()
    assert summary.ok, summary.render()
    assert "ml-gone" not in served(summary)
    assert world.kube.count(namespace="ml-gone") == 0


def test_fixed_target_wins_over_selector_for_the_same_secret(world: World, registry: dict[str, Any]) -> None:
    path = world.config([registry], [
        {"namespace_selector": SELECTOR, "name": NAME, "create": True},
        {"namespace": "ml-a", "name": NAME, "create": True, "registries": [registry["host"]]}])
    summary = long_lived_app(path).syncer.run_once()
    assert sorted(t.target.ref for t in summary.targets) == [f"data-a/{NAME}", f"ml-a/{NAME}"]
    assert [t.target.namespace_selector for t in summary.targets if t.target.namespace == "ml-a"] == [""]


def test_service_account_gets_reference_appended_once(world: World, registry: dict[str, Any]) -> None:
    world.kube.add_service_account("ml-a", "default", ["team-creds", "legacy"])
    world.kube.add_service_account("data-a", "default")
    app = long_lived_app(fanout_config(world, registry, service_accounts=["default"]))
    summary = app.syncer.run_once()
    assert summary.ok, summary.render()
    sa = world.kube.get_object("serviceaccounts", "ml-a", "default")
    assert [e["name"] for e in sa["imagePullSecrets"]] == ["team-creds", "legacy", NAME]
    sa = world.kube.get_object("serviceaccounts", "data-a", "default")
    assert [e["name"] for e in sa["imagePullSecrets"]] == [NAME]
    assert "added to imagePullSecrets of serviceaccount default" in summary.render()

    world.kube.reset_requests()
    steady = app.syncer.run_once()
    assert steady.ok
    assert world.kube.writes("serviceaccounts") == 0 and world.kube.writes("secrets") == 0
    assert world.kube.count(verb="get", resource="serviceaccounts") == 2, "one read per ServiceAccount"


def test_service_account_patch_survives_concurrent_edit(world: World, registry: dict[str, Any]) -> None:
    world.kube.add_service_account("ml-a", "default", ["team-creds"])
    world.kube.add_service_account("data-a", "default", [])

    def concurrent_edit() -> None:
        sa = world.kube.get_object("serviceaccounts", "ml-a", "default")
        sa["imagePullSecrets"].append({"name": "added-meanwhile"})
        world.kube.put_object("serviceaccounts", "ml-a", sa)

    world.kube.before(lambda r: r.verb == "patch" and r.resource == "serviceaccounts"
                      and r.namespace == "ml-a", concurrent_edit)
    summary = long_lived_app(fanout_config(world, registry, service_accounts=["default"])).syncer.run_once()
    assert summary.ok, summary.render()
    sa = world.kube.get_object("serviceaccounts", "ml-a", "default")
    assert [e["name"] for e in sa["imagePullSecrets"]] == ["team-creds", "added-meanwhile", NAME]
    assert world.kube.count(verb="patch", resource="serviceaccounts", namespace="ml-a") == 2
    report = next(t for t in summary.targets if t.target.namespace == "ml-a")
    assert report.conflicts == 1


def test_missing_service_account_fails_only_that_target(world: World, registry: dict[str, Any]) -> None:
    world.kube.add_service_account("data-a", "builder")
    summary = long_lived_app(fanout_config(world, registry, service_accounts=["builder"])).syncer.run_once()
    by_ns = {t.target.namespace: t for t in summary.targets}
    assert by_ns["ml-a"].outcome is TargetOutcome.FAILED
    assert by_ns["ml-a"].reason == "serviceaccount_missing"
    assert world.kube.get_secret("ml-a", NAME) is not None, "the secret itself is still written"
    assert by_ns["data-a"].outcome is TargetOutcome.CREATED


def test_forbidden_namespace_list_fails_selector_target_only(world: World, registry: dict[str, Any]) -> None:
    world.kube.add_fault(lambda r: r.resource == "namespaces" and r.verb == "list", status=403,
                         reason="Forbidden")
    path = world.config([registry], [{"namespace_selector": SELECTOR, "name": NAME, "create": True},
                                     {"namespace": "web", "name": "fixed", "create": True}],
                        kubernetes={"events": False})
    app = long_lived_app(path)
    summary = app.syncer.run_once()
    outcomes = {t.target.ref: (t.outcome, t.reason) for t in summary.targets}
    assert outcomes == {f"[{SELECTOR}]/{NAME}": (TargetOutcome.FAILED, "forbidden"),
                        "web/fixed": (TargetOutcome.CREATED, "")}
    reg = CollectorRegistry()
    Metrics(reg, app.settings).observe(summary)
    text = generate_latest(reg).decode()
    assert metric_value(text, "syncer_errors_total", stage="kubernetes") == 1
    assert 'namespace=""' not in text


def test_metrics_series_appear_with_fanout_namespaces(world: World, registry: dict[str, Any]) -> None:
    app = long_lived_app(fanout_config(world, registry))
    reg = CollectorRegistry()
    metrics = Metrics(reg, app.settings)
    assert "registry-pull" not in generate_latest(reg).decode(), "no series before a namespace is known"
    metrics.observe(app.syncer.run_once())
    text = generate_latest(reg).decode()
    for ns in ("ml-a", "data-a"):
        assert metric_value(text, "syncer_secret_writes_total", secret_namespace=ns, secret_name=NAME) == 1
        assert metric_value(text, "syncer_secret_sync_success", secret_namespace=ns, secret_name=NAME) == 1


def test_slow_target_does_not_block_the_others(world: World, registry: dict[str, Any]) -> None:
    names = [f"ns-{i}" for i in range(6)]
    label_namespaces(world.kube, names, {"team": "ml"})
    delay, timeout = 4.0, 0.25
    path = world.config([registry], [{"namespace_selector": SELECTOR, "name": NAME, "create": True}],
                        kubernetes={"events": False, "timeout": f"{int(timeout * 1000)}ms"},
                        sync={"concurrency": 2})
    world.kube.add_fault(lambda r: r.resource == "secrets" and r.namespace == "ns-0", delay=delay,
                         times=None)
    started = time.monotonic()
    summary = long_lived_app(path).syncer.run_once()
    wall = time.monotonic() - started
    by_ns = {t.target.namespace: t for t in summary.targets}
    assert by_ns["ns-0"].outcome is TargetOutcome.FAILED and by_ns["ns-0"].reason == "timeout"
    assert all(by_ns[ns].outcome is TargetOutcome.CREATED for ns in by_ns if ns != "ns-0")
    # Only the slow target waited, and only for its own timeout (the client retries a read
    # three times, so 4 x kubernetes.timeout), never for the slow server.
    assert wall / timeout >= 1
    assert wall / delay < 0.5, summary.render()


@pytest.mark.parametrize(("target", "problem"), [
    ({"namespace": "a", "namespace_selector": "x=y", "name": "n"},
     "targets[0].namespace_selector: set either namespace or namespace_selector, not both"),
    ({"namespace_selector": "team in (a", "name": "n"}, "targets[0].namespace_selector: is not a label"),
    ({"namespace_selector": "bad key=v", "name": "n"}, "targets[0].namespace_selector: is not a label"),
    ({"name": "n"}, "targets[0].namespace: is required (or namespace_selector)"),
    ({"namespace_selector": "x", "name": "n", "service_accounts": ["Bad_SA"]},
     "targets[0].service_accounts: is not a valid ServiceAccount name"),
])
def test_fanout_config_errors(target: dict[str, Any], problem: str) -> None:
    data = {"vault": {"address": "http://v:8200", "auth": {"method": "token", "token_file": "/t"}},
            "registries": [{"host": "r.io", "path": "p"}], "targets": [target]}
    with pytest.raises(config_mod.ConfigError) as err:
        config_mod.from_mapping(data, {})
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_probe_interval_and_selector_parse() -> None:
    data = {"vault": {"address": "http://v:8200", "auth": {"method": "token", "token_file": "/t"}},
            "registries": [{"host": "r.io", "path": "p"}], "probe": {"interval": "15m"},
            "targets": [{"namespace_selector": "team in (ml,data),!legacy", "name": "n",
                         "service_accounts": ["default"]}]}
    settings = config_mod.from_mapping(data, {})
    assert settings.probe.interval == 900
    assert settings.targets[0].namespace_selector == "team in (ml,data),!legacy"
    assert settings.targets[0].service_accounts == ("default",)
    assert config_mod.ProbeSettings().interval == 0, "default: probe every cycle"


def test_series_of_a_namespace_that_stops_matching_are_removed(world: World,
                                                                registry: dict[str, Any]) -> None:
    """A namespace relabelled out of the selector: its per-secret series leave /metrics, so a
    stale ``syncer_secret_sync_success`` can never page anyone; a failed namespace LIST keeps
    the last known series (nothing is known to have gone)."""
    app = long_lived_app(fanout_config(world, registry))
    reg = CollectorRegistry()
    metrics = Metrics(reg, app.settings)
    metrics.observe(app.syncer.run_once())
    assert 'secret_namespace="ml-a"' in generate_latest(reg).decode()

    world.kube.add_fault(lambda r: r.resource == "namespaces" and r.verb == "list", status=503,
                         times=1)
    metrics.observe(app.syncer.run_once())
    assert 'secret_namespace="ml-a"' in generate_latest(reg).decode(), "kept while unknown"

    world.kube.add_namespace("ml-a", {"team": "retired"})
    metrics.observe(app.syncer.run_once())
    text = generate_latest(reg).decode()
    assert 'secret_namespace="ml-a"' not in text
    assert metric_value(text, "syncer_secret_sync_success", secret_namespace="data-a", secret_name=NAME) == 1


def test_a_vault_failure_is_not_counted_as_a_kubernetes_error(world: World) -> None:
    """Vault has no such path: the fan-out target is skipped, which is a Vault error only."""
    app = long_lived_app(fanout_config(world, {"host": "nvcr.io", "path": "missing",
                                               "username": "$oauthtoken"}))
    summary = app.syncer.run_once()
    assert {t.outcome for t in summary.targets} == {TargetOutcome.SKIPPED}
    reg = CollectorRegistry()
    Metrics(reg, app.settings).observe(summary)
    text = generate_latest(reg).decode()
    assert metric_value(text, "syncer_errors_total", stage="vault") == 1
    assert metric_value(text, "syncer_errors_total", stage="kubernetes") == 0
