"""The dashboard and the alerts against a real Prometheus scraping a real daemon.

Prometheus 2.42 (Debian ``prometheus``) scrapes the daemon's /metrics every 500 ms with the
target labels a ServiceMonitor attaches (``namespace``, ``pod``, ``service``, ``job``; honor_labels
false), and loads the shipped alert rules. The daemon runs against OpenBao, a TLS registry and the
Kubernetes API test server, with one fan-out secret name in two namespaces. Every dashboard query
and every alert expression then goes through ``/api/v1/query``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from syncer import config as config_mod
from syncer.cli import build_app, make_daemon
from syncer.health import make_server
from tests.support.prometheus import PrometheusServer, prometheus_binary
from tests.support.world import World, metric_value, sentinel
from tests.test_daemon import wait
from tests.test_deploy import DEPLOY, alert_rules, one, render

JOB = "registry-credential-syncer"
SYNCER_NS, POD = "registry-syncer", "syncer-0"
#: What a ServiceMonitor on the shipped Service attaches to every series of the target.
TARGET_LABELS = {"namespace": SYNCER_NS, "pod": POD, "service": JOB, "job": JOB}
FANOUT_NAME, FANOUT_NAMESPACES = "registry-pull", ("ml-a", "ml-b")
FIXED_NS, FIXED_NAME = "domino-compute", "domino-quay-repos"
#: Grafana's variables as a user with the defaults sees them ($registry: "All").
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1s", "$__range": "1m", "$job": JOB,
                "$registry": ".*"}
SECRET_LABELS = ("secret_namespace", "secret_name")


@dataclass
class Stack:
    world: World
    prom: PrometheusServer
    metrics_url: str
    ok_host: str
    rejected_host: str
    key: str

    def scrape(self) -> str:
        return requests.get(self.metrics_url, timeout=5).text


def daemon_config(world: World, ok_host: str, rejected_host: str) -> tuple[Path, str]:
    """Fan-out over team=ml plus a fixed secret that also manages a registry rejecting its login."""
    key = sentinel("prom")
    world.vault_put("ngc", password=key)
    world.vault_put("wrong", password=sentinel("wrong"))
    token = world.bao.create_token([world.bao.read_policy([f"{world.prefix}/*"])], ttl="1h")
    world.secrets.add(token)
    token_file = world.tmp / "ttl-token"
    token_file.write_text(token)
    registries = [{"host": ok_host, "path": "ngc", "username": "$oauthtoken",
                   "verify_images": ["team/app:v1"]},  # pushed by the canary_images fixture
                  {"host": rejected_host, "path": "wrong", "username": "$oauthtoken"}]
    targets = [{"namespace_selector": "team=ml", "name": FANOUT_NAME, "create": True,
                "registries": [ok_host]},
               {"namespace": FIXED_NS, "name": FIXED_NAME, "create": True}]
    return world.config(
        registries, targets, auth={"token_file": str(token_file)},
        schedule={"interval": "500ms", "jitter": "0s", "retry_min": "200ms", "retry_max": "500ms"},
        leader_election={"enabled": True, "namespace": SYNCER_NS, "identity": POD,
                         "lease_duration": "3s", "renew_period": "200ms"},
        metrics={"listen": "127.0.0.1:0"}), key


@pytest.fixture
def stack(tmp_path: Path, bao: Any, kube: Any, ca_file: str, htpasswd_registry: Any,
          canary_images: Any) -> Iterator[Stack]:
    prometheus_binary()  # first: fails under CI (skips elsewhere) before anything starts
    for ns in FANOUT_NAMESPACES:
        kube.add_namespace(ns, {"team": "ml"})
    for ns in (FIXED_NS, SYNCER_NS):
        kube.add_namespace(ns)
    world = World(tmp_path, bao, kube, ca_file)
    ok_host = htpasswd_registry.host
    rejected_host = ok_host.replace("127.0.0.1", "localhost")  # same server, another registry
    config, key = daemon_config(world, ok_host, rejected_host)
    htpasswd_registry.set_password("$oauthtoken", key)
    app = build_app(config_mod.load(config, {}), {}, dry_run=False, daemon=True)
    daemon, registry = make_daemon(app)
    server = make_server("127.0.0.1", 0, registry, daemon.health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    daemon.start()
    port = server.server_address[1]
    rules = tmp_path / "rules.yaml"
    groups = one(render("monitoring"), "PrometheusRule")["spec"]["groups"]
    rules.write_text(yaml.safe_dump({"groups": groups}))
    scrape = {"job_name": JOB, "honor_labels": False, "metrics_path": "/metrics",
              "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": TARGET_LABELS}]}
    prom = PrometheusServer(tmp_path, [scrape], rule_files=(str(rules),), interval="500ms")
    try:
        with prom:
            yield Stack(world, prom, f"http://127.0.0.1:{port}/metrics", ok_host, rejected_host, key)
    finally:
        daemon.shutdown()
        server.shutdown()
        server.server_close()
        app.syncer.vault.close()
    world.assert_no_leak(prom.log_text(), "prometheus log")


def wait_for_data(stack: Stack) -> None:
    """Every secret scraped, and enough samples for rate()/increase() over the panels' window."""
    prom = stack.prom
    for ns in FANOUT_NAMESPACES:
        prom.wait_for(f'syncer_secret_sync_success{{job="{JOB}", secret_namespace="{ns}"}} == 1',
                      what=f"the fan-out secret in {ns} in sync")
    prom.wait_for(f'count_over_time(up{{job="{JOB}"}}[1m]) >= 3', what="three scrapes")
    prom.wait_for(f'increase(syncer_registry_probe_failures_total{{job="{JOB}", reason="rejected"}}[1m]) > 0',
                  what="a rejected probe between two scrapes")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "grafana" / "registry-credential-syncer.json").read_text())
    return data


def substitute(expr: str) -> str:
    for var in sorted(GRAFANA_VARS, key=len, reverse=True):
        expr = expr.replace(var, GRAFANA_VARS[var])
    assert "$" not in expr, f"unknown Grafana variable left in {expr}"
    return expr


def legend_labels(legend: str) -> list[str]:
    return re.findall(r"\{\{\s*(\w+)\s*\}\}", legend)


def render_legend(legend: str, metric: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), legend)


def panel_targets() -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in dashboard()["panels"] for t in p.get("targets", [])]


def test_every_dashboard_query_and_alert_expression_runs_against_real_prometheus(stack: Stack) -> None:
    """One scrape history for all checks: Prometheus 2.42 applies discovered targets on a fixed
    5 s tick, so each new server costs that much before its first scrape."""
    wait_for_data(stack)
    check_dashboard_panels(stack)
    check_dashboard_variables(stack)
    check_alert_expressions(stack)
    check_process_collectors(stack)
    check_series_of_a_namespace_that_stops_matching_disappear(stack)  # changes the world
    check_alerts_quiet_once_healthy(stack)


def check_dashboard_panels(stack: Stack) -> None:
    targets = panel_targets()
    assert len(targets) >= 20
    secret_panels = 0
    for title, target in targets:
        expr = substitute(target["expr"])
        result = stack.prom.query(expr)
        assert result, f"panel {title!r}: {expr} returned nothing"
        for series in result:
            assert "exported_namespace" not in series["metric"], f"panel {title!r}: {series['metric']}"
            for label in legend_labels(target.get("legendFormat", "")):
                assert series["metric"].get(label), f"panel {title!r}: no {label} in {series['metric']}"
        legends = [render_legend(target["legendFormat"], s["metric"]) for s in result]
        assert len(set(legends)) == len(legends), f"panel {title!r}: lines collapse: {legends}"
        if "syncer_secret_" in expr:
            secret_panels += 1
            assert_secret_panel(title, result, legends)
    assert secret_panels == 3  # in sync, writes, conflicts


def assert_secret_panel(title: str, result: list[dict[str, Any]], legends: list[str]) -> None:
    """Each secret under its own namespace: both fan-out copies, never the syncer's namespace."""
    namespaces = {s["metric"]["secret_namespace"] for s in result}
    assert namespaces == {*FANOUT_NAMESPACES, FIXED_NS}, f"panel {title!r}: {namespaces}"
    for ns in FANOUT_NAMESPACES:
        assert f"{ns}/{FANOUT_NAME}" in legends, f"panel {title!r}: {legends}"
    assert not [legend for legend in legends if legend.startswith(f"{SYNCER_NS}/")], legends


def check_dashboard_variables(stack: Stack) -> None:
    for var in dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.*), (\w+)\)", var["definition"])
        assert match, var["definition"]
        inner, label = match.groups()
        values = {s["metric"].get(label) for s in stack.prom.query(substitute(inner))}
        want = {"job": {JOB}, "registry": {stack.ok_host, stack.rejected_host}}[var["name"]]
        assert values == want, var["name"]


#: What each alert's expression returns for this world: runs fail (one registry rejects its
#: login), so no run is fully successful; the token has an hour left; the target is up.
EXPECTED_ALERTS = {"RegistryCredentialSyncFailing": True, "RegistryLoginRejected": True,
                   "RegistryCanaryPullDenied": False,  # the canary is pullable (htpasswd: any user)
                   "RegistryCredentialSyncStale": True, "RegistryCredentialSyncerDown": False,
                   "VaultTokenExpiringSoon": False, "RegistryCredentialPropagationSlow": False,
                   "RegistryCredentialWatchFailing": False}


def check_alert_expressions(stack: Stack) -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} == set(EXPECTED_ALERTS)
    for rule in rules:
        result = stack.prom.query(rule["expr"])
        assert bool(result) is EXPECTED_ALERTS[rule["alert"]], f"{rule['alert']}: {result}"
        used = set(re.findall(r"\$labels\.(\w+)", " ".join(rule["annotations"].values())))
        for series in result:
            assert all(series["metric"].get(label) for label in used), (rule["alert"], series["metric"])
    rejected = stack.prom.query(next(r["expr"] for r in rules if r["alert"] == "RegistryLoginRejected"))
    assert [s["metric"]["registry"] for s in rejected] == [stack.rejected_host]
    assert rejected[0]["metric"]["namespace"] == SYNCER_NS
    # The same rules loaded by Prometheus itself evaluate without error.
    wait(lambda: all(r.get("lastEvaluation", "").startswith("2") and r["health"] == "ok"
                     for g in stack.prom.api("rules")["groups"] for r in g["rules"]),
         timeout=10, what="every loaded rule evaluated and healthy")


def check_series_of_a_namespace_that_stops_matching_disappear(stack: Stack) -> None:
    """A fan-out secret that fails (0) and then leaves the selector must not alert forever."""
    kube, prom = stack.world.kube, stack.prom
    # A tenant breaks ml-b's secret: reported as malformed (never overwritten), so out of sync.
    stack.world.put_dockerconfig("ml-b", FANOUT_NAME, {"auths": "not-an-object"})
    failing = f'syncer_secret_sync_success{{job="{JOB}", secret_namespace="ml-b"}}'
    prom.wait_for(f"{failing} == 0", what="ml-b out of sync")
    kube.add_namespace("ml-b", {"team": "retired"})  # the label edit: no longer selected

    def gone_from_scrape() -> bool:
        return metric_value(stack.scrape(), "syncer_secret_sync_success", secret_namespace="ml-b") is None

    wait(gone_from_scrape, timeout=10, what="ml-b's series removed from /metrics")
    text = stack.scrape()
    for name in ("syncer_secret_sync_success", "syncer_secret_writes_total", "syncer_secret_conflicts_total"):
        assert metric_value(text, name, secret_namespace="ml-b") is None, name
        assert metric_value(text, name, secret_namespace="ml-a", secret_name=FANOUT_NAME) is not None, name
    assert metric_value(text, "syncer_secret_sync_success", secret_namespace=FIXED_NS) is not None
    # Prometheus marks the vanished series stale at the next scrape: the instant query is empty.
    wait(lambda: not prom.query(failing), timeout=10, what="ml-b's series stale in Prometheus")
    assert prom.query(f'syncer_secret_sync_success{{job="{JOB}", secret_namespace="ml-a"}} == 1')


def check_process_collectors(stack: Stack) -> None:
    result = stack.prom.wait_for(f'process_resident_memory_bytes{{job="{JOB}"}} > 0')
    assert result[0]["metric"]["pod"] == POD
    for name in ("process_open_fds", "process_max_fds", "python_info", "syncer_vault_logins_total"):
        assert stack.prom.query(f'{name}{{job="{JOB}"}}'), name
    # The supplied token is adopted once (token auth's "login"); renewals are not logins.
    assert stack.prom.query(f'syncer_vault_logins_total{{job="{JOB}"}} == 1')


def check_alerts_quiet_once_healthy(stack: Stack) -> None:
    """Fix the rejected credential in Vault: the next successful run silences every alert."""
    stack.world.vault_put("wrong", password=stack.key)
    exprs = {r["alert"]: r["expr"] for r in alert_rules()}

    def firing() -> list[str]:
        return [name for name, expr in exprs.items() if stack.prom.query(expr)]

    wait(lambda: not firing(), timeout=15, what="every alert quiet after the fix")
    assert stack.prom.query(f'min(syncer_registry_probe_success{{job="{JOB}"}}) == 1')
