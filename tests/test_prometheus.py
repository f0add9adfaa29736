"""The shipped dashboard and alerts against a real Prometheus scraping a real daemon.

Prometheus (Debian's 2.42) scrapes the daemon with the target labels a ServiceMonitor attaches
(``namespace``, ``pod``, ``service``, ``job``; honor_labels false). Every dashboard query and
every alert expression then runs through Prometheus' HTTP API: each must execute, each legend
label must be present, and the per-secret panels must name each secret's own namespace — not
the syncer pod's, which is what a metric label called ``namespace`` would show (issue 11).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.support.net import free_port
from tests.support.scale import USER, label_namespaces
from tests.support.world import DaemonProcess, World, sentinel

ROOT = Path(__file__).parent.parent
DASHBOARD = ROOT / "deploy/grafana/registry-credential-syncer.json"
RULES = ROOT / "deploy/overlays/monitoring/prometheusrule.yaml"
JOB, POD_NAMESPACE = "registry-credential-syncer", "registry-syncer"
TARGET_LABELS = {"namespace": POD_NAMESPACE, "pod": "registry-credential-syncer-0",
                 "service": "registry-credential-syncer", "job": JOB}
FANOUT = ("ml-a", "data-a")
NAME = "registry-pull"


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        message = "prometheus not found: `make system-deps` installs Debian's prometheus package"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


class Prometheus:
    """A real Prometheus scraping one target every second."""

    def __init__(self, tmp: Path, target: str) -> None:
        self.port = free_port()
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": "syncer", "honor_labels": False,
                                      "static_configs": [{"targets": [target],
                                                          "labels": TARGET_LABELS}]}]}
        path = tmp / "prometheus.yml"
        path.write_text(json.dumps(config))
        self.log = (tmp / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [prometheus_binary(), f"--config.file={path}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        resp = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", f"{expr!r}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def world(tmp_path: Path, bao: Any, kube: Any, ca_file: str) -> World:
    label_namespaces(kube, list(FANOUT), {"team": "ml"})
    kube.add_namespace("apps")
    return World(tmp_path, bao, kube, ca_file)


@pytest.fixture
def scraped(world: World, htpasswd_registry: Any, tmp_path: Path) -> Iterator[Prometheus]:
    """A daemon with two fan-out secrets of one name and a fixed one, scraped by Prometheus."""
    password = sentinel("prom")
    htpasswd_registry.set_password(USER, password)
    world.vault_put("prom", username=USER, password=password)
    port = free_port()
    targets = [{"namespace_selector": "team=ml", "name": NAME, "create": True},
               {"namespace": "apps", "name": NAME, "create": True}]
    config = world.config([{"host": htpasswd_registry.host, "path": "prom"}], targets,
                          kubernetes={"events": False}, metrics={"listen": f"127.0.0.1:{port}"},
                          schedule={"interval": "1s", "jitter": "0s"})
    daemon = DaemonProcess(world, config, port)
    prometheus = Prometheus(tmp_path, f"127.0.0.1:{port}")
    try:
        daemon.wait_for(lambda: daemon.get("/readyz")[0] == 200, what="first successful sync")
        daemon.wait_for(prometheus.ready, what="prometheus ready")
        # Two scrapes after the first sync, so that increase()/rate() over 1m have two samples.
        daemon.wait_for(lambda: len(prometheus.query(
            'count_over_time(syncer_secret_sync_success{secret_namespace="apps"}[1m])'
            ' >= 3')) == 1, timeout=30, what="three scrapes")
        yield prometheus
    finally:
        prometheus.stop()
        daemon.stop()


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel title, expr with Grafana's variables filled in, legendFormat) of every panel."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    values = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "1s", "$job": JOB,
              "$registry": ".*", "${datasource}": "prometheus"}
    out = []
    for panel in panels:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in values.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"unknown dashboard variable in {panel['title']!r}: {expr}"
            out.append((panel["title"], expr, target.get("legendFormat", "")))
    return out


def alert_expressions() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text())
    return [(rule["alert"], rule["expr"]) for group in doc["spec"]["groups"] for rule in group["rules"]
            if "alert" in rule]


def test_dashboard_queries_run_and_name_each_secrets_namespace(scraped: Prometheus) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 15
    secret_panels = 0
    for title, expr, legend in queries:
        result = scraped.query(expr)
        labels = re.findall(r"\{\{\s*(\w+)\s*\}\}", legend)
        for series in result:
            missing = [label for label in labels if label not in series["metric"]]
            assert not missing, f"panel {title!r}: legend labels {missing} absent from {series['metric']}"
        if "syncer_secret_" in expr:
            secret_panels += 1
            shown = {(s["metric"]["secret_namespace"], s["metric"]["secret_name"]) for s in result}
            assert shown == {(ns, NAME) for ns in (*FANOUT, "apps")}, f"panel {title!r}: {shown}"
    assert secret_panels == 3


def test_secret_series_keep_their_namespace_beside_the_target_label(scraped: Prometheus) -> None:
    series = scraped.query('syncer_secret_sync_success{secret_name="registry-pull"}')
    assert {s["metric"]["namespace"] for s in series} == {POD_NAMESPACE}, "the target label wins"
    assert {s["metric"]["secret_namespace"] for s in series} == {*FANOUT, "apps"}
    assert all("exported_namespace" not in s["metric"] for s in series)
    assert all(float(s["value"][1]) == 1 for s in series)


def test_alert_expressions_run_and_stay_quiet_when_healthy(scraped: Prometheus) -> None:
    alerts = alert_expressions()
    assert len(alerts) >= 5
    for name, expr in alerts:
        assert scraped.query(expr) == [], f"alert {name} fires on a healthy syncer"
    # The same expressions see the data they are about: the inner selectors return series.
    for name, expr in alerts:
        for metric in set(re.findall(r"\b(syncer_\w+)\{", expr)):
            assert scraped.query(f'{metric}{{job="{JOB}"}}'), f"alert {name}: no {metric} scraped"


def test_process_collectors_are_scraped(scraped: Prometheus) -> None:
    for metric in ("process_resident_memory_bytes", "process_open_fds", "python_info",
                   "syncer_vault_logins_total"):
        assert scraped.query(f'{metric}{{job="{JOB}"}}'), f"{metric} not scraped"
    logins = scraped.query(f'syncer_vault_logins_total{{job="{JOB}"}}')
    assert float(logins[0]["value"][1]) == 1
