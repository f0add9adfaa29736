"""Drift repair/report and pruning, end to end through `syncer --once` with real servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from syncer import config as config_mod
from syncer.cli import build_app
from syncer.metrics import Metrics
from syncer.targets import MANAGED_HOSTS, VAULT_VERSIONS
from tests.support.operator import NAME, NS, QUAY, domino_secret
from tests.support.world import World, metric_value, sentinel

pytest_plugins = ["tests.support.operator_fixtures"]  # the world and ngc fixtures


def hand_edit(world: World, host: str, password: str) -> None:
    world.secrets.add(password)
    doc = world.secret_doc(NS, NAME)
    doc["auths"][host]["password"] = password
    obj = world.kube.get_secret(NS, NAME)
    world.put_dockerconfig(NS, NAME, doc, annotations=obj["metadata"]["annotations"])


def reasons(world: World) -> list[str]:
    return sorted(e["reason"] for e in world.kube.events(NS))


def drift_metric(world: World, config: Path, host: str) -> float | None:
    """One cycle through the daemon's wiring, observed by Metrics; the drift counter after it."""
    app = build_app(config_mod.load(config, {}), {}, dry_run=False)
    registry = CollectorRegistry()
    metrics = Metrics(registry, app.settings)
    before = metric_value(generate_latest(registry).decode(), "syncer_drift_corrections_total",
                          secret_namespace=NS, secret_name=NAME, registry=host)
    assert before == 0.0, "pre-created at 0"
    metrics.observe(app.syncer.run_once())
    app.syncer.vault.close()
    return metric_value(generate_latest(registry).decode(), "syncer_drift_corrections_total",
                        secret_namespace=NS, secret_name=NAME, registry=host)


def test_hand_edit_is_repaired(world: World, ngc: dict[str, Any]) -> None:
    domino_secret(world)
    config = world.config([ngc], [{"namespace": NS, "name": NAME}])
    assert world.run(config).code == 0
    annotations = world.kube.get_secret(NS, NAME)["metadata"]["annotations"]
    assert annotations[VAULT_VERSIONS] == f"{ngc['host']}=1"
    expected = world.secret_doc(NS, NAME)
    hand_edit(world, ngc["host"], sentinel("hand-edit"))
    world.kube.reset_requests()
    result = world.run(config)
    assert result.code == 0, result.out
    assert f"drift repaired on {ngc['host']}" in result.out
    assert world.secret_doc(NS, NAME) == expected
    assert world.kube.writes() == 1
    assert reasons(world) == ["CredentialsRotated", "DriftRepaired"], "the rotation is the first sync's"
    hand_edit(world, ngc["host"], sentinel("hand-edit-2"))
    assert drift_metric(world, config, ngc["host"]) == 1.0
    assert world.secret_doc(NS, NAME) == expected
    assert world.run(config).code == 0 and world.kube.writes() == 2, "steady again"


def test_hand_edit_is_only_reported_in_report_mode(world: World, ngc: dict[str, Any],
                                                   htpasswd_registry: Any) -> None:
    domino_secret(world)
    config = world.config([ngc], [{"namespace": NS, "name": NAME, "drift": "report"}])
    assert world.run(config).code == 0
    edited = sentinel("hand-edit")
    hand_edit(world, ngc["host"], edited)
    world.kube.reset_requests()
    result = world.run(config)
    assert result.code == 0, result.out
    assert f"drift detected (drift = report: not repaired) on {ngc['host']}" in result.out
    assert world.kube.writes() == 0
    assert world.secret_doc(NS, NAME)["auths"][ngc["host"]]["password"] == edited
    assert "DriftDetected" in reasons(world)
    assert drift_metric(world, config, ngc["host"]) == 1.0
    # A real rotation (Vault changed) is still applied in report mode.
    new_key = sentinel("rotated")
    world.vault_put("ngc", password=new_key)
    world.kube.reset_requests()
    htpasswd_registry.set_password("$oauthtoken", new_key)
    result = world.run(config)
    assert result.code == 0 and "password changed" in result.out and "drift" not in result.out
    assert world.secret_doc(NS, NAME)["auths"][ngc["host"]]["password"] == new_key


def test_deleted_managed_entry_counts_as_drift(world: World, ngc: dict[str, Any]) -> None:
    domino_secret(world)
    config = world.config([ngc], [{"namespace": NS, "name": NAME}])
    assert world.run(config).code == 0
    doc = world.secret_doc(NS, NAME)
    del doc["auths"][ngc["host"]]
    annotations = world.kube.get_secret(NS, NAME)["metadata"]["annotations"]
    world.put_dockerconfig(NS, NAME, doc, annotations=annotations)
    result = world.run(config)
    assert f"drift repaired on {ngc['host']}" in result.out
    assert ngc["host"] in world.secret_doc(NS, NAME)["auths"]


@pytest.mark.parametrize("prune", [False, True])
def test_prune_only_when_asked_and_never_unmanaged_hosts(world: World, ngc: dict[str, Any],
                                                         token_registry: Any, prune: bool) -> None:
    harbor_pw = sentinel("harbor")
    token_registry.token_server.users["robot$ci"] = harbor_pw
    world.vault_put("harbor", username="robot$ci", password=harbor_pw)
    harbor = {"host": token_registry.host, "path": "harbor"}
    domino_secret(world)
    both = world.config([ngc, harbor], [{"namespace": NS, "name": NAME}])
    assert world.run(both).code == 0
    assert world.kube.get_secret(NS, NAME)["metadata"]["annotations"][MANAGED_HOSTS] == ",".join(
        sorted([ngc["host"], harbor["host"]]))
    world.kube.reset_requests()
    only_ngc = world.config([ngc], [{"namespace": NS, "name": NAME, "prune": prune}])
    result = world.run(only_ngc)
    assert result.code == 0, result.out
    doc = world.secret_doc(NS, NAME)
    assert doc["auths"]["quay.io"] == QUAY and doc["HttpHeaders"] == {"X-Team": "platform"}
    assert ngc["host"] in doc["auths"]
    managed = world.kube.get_secret(NS, NAME)["metadata"]["annotations"][MANAGED_HOSTS]
    if prune:
        assert harbor["host"] not in doc["auths"] and managed == ngc["host"]
        assert f"pruned {harbor['host']}" in result.out and world.kube.writes() == 1
        assert "EntriesPruned" in reasons(world)
    else:
        assert doc["auths"][harbor["host"]]["password"] == harbor_pw
        assert harbor["host"] in managed and world.kube.writes() == 0
        assert f"{harbor['host']} no longer configured (kept; prune = false)" in result.out
    assert world.run(only_ngc).code == 0 and world.kube.writes() == (1 if prune else 0)
