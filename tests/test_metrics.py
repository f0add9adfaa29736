"""The Prometheus series fed from a cycle's Summary: created at 0 up front, moved by each outcome,
fan-out series dropped when their namespace leaves the selector. Read from a real registry."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from syncer.config import Settings, TargetSettings, from_mapping
from syncer.metrics import Metrics, probe_reason_label
from syncer.probe import Outcome, ProbeResult
from syncer.report import RegistryOutcome, RegistryReport, Summary, TargetOutcome, TargetReport

CONFIG: dict[str, Any] = {
    "vault": {"address": "https://v.example.com", "auth": {"method": "token", "token_file": "/t"}},
    "registries": [{"host": "nvcr.io", "path": "ngc"}, {"host": "quay.io", "path": "quay"}],
    "targets": [{"namespace": "team-a", "name": "pull"},
                {"namespace_selector": "team", "name": "fan", "registries": ["quay.io"]}],
}
FAN = TargetSettings(namespace="", name="fan", namespace_selector="team", registries=("quay.io",))


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings() -> Settings:
    return from_mapping(CONFIG, {})


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry, settings: Settings) -> Metrics:
    return Metrics(registry, settings, clock=Clock())


def value(collectors: CollectorRegistry, name: str, **labels: str) -> float | None:
    return collectors.get_sample_value(name, labels)


def probed(host: str, outcome: RegistryOutcome, probe: Outcome, reason: str = "") -> RegistryReport:
    return RegistryReport(host, outcome, version=7, probe=ProbeResult(probe, reason, "d", 0.25))


def test_every_series_exists_at_zero_before_the_first_cycle(registry: CollectorRegistry,
                                                           metrics: Metrics) -> None:
    assert value(registry, "syncer_sync_runs_total", result="failure") == 0
    assert value(registry, "syncer_errors_total", stage="kubernetes") == 0
    assert value(registry, "syncer_registry_probe_failures_total", registry="quay.io", reason="http_5xx") == 0
    assert value(registry, "syncer_secret_sync_success", secret_namespace="team-a", secret_name="pull") == 0
    assert value(registry, "syncer_drift_corrections_total", secret_namespace="team-a",
                 secret_name="pull", registry="nvcr.io") == 0
    assert value(registry, "syncer_vault_token_ttl_seconds") == -1
    # fan-out secrets appear only with the namespaces they are found in
    assert value(registry, "syncer_secret_sync_success", secret_namespace="", secret_name="fan") is None


def test_a_good_cycle(registry: CollectorRegistry, metrics: Metrics, settings: Settings) -> None:
    good = probed("nvcr.io", RegistryOutcome.OK, Outcome.OK)
    good.rotated_targets = 1
    target = TargetReport(settings.targets[0], TargetOutcome.UPDATED, writes=1, conflicts=2)
    metrics.observe(Summary([good], [target], duration=0.5))
    assert value(registry, "syncer_sync_runs_total", result="success") == 1
    assert value(registry, "syncer_last_success_timestamp_seconds") == 1000.0
    assert value(registry, "syncer_registry_probe_success", registry="nvcr.io") == 1
    assert value(registry, "syncer_registry_probe_duration_seconds", registry="nvcr.io") == 0.25
    assert value(registry, "syncer_credential_version", registry="nvcr.io") == 7
    assert value(registry, "syncer_credential_rotations_total", registry="nvcr.io") == 1
    labels = {"secret_namespace": "team-a", "secret_name": "pull"}
    assert value(registry, "syncer_secret_writes_total", **labels) == 1
    assert value(registry, "syncer_secret_conflicts_total", **labels) == 2
    assert value(registry, "syncer_secret_sync_success", **labels) == 1


@pytest.mark.parametrize(("outcome", "probe", "reason", "label"), [
    (RegistryOutcome.REJECTED, Outcome.REJECTED, "rejected", "rejected"),
    (RegistryOutcome.UNVERIFIED, Outcome.UNVERIFIED, "", "unverified"),
    (RegistryOutcome.FAILED, Outcome.ERROR, "http_503", "http_5xx"),
])
def test_probe_failures_by_reason(registry: CollectorRegistry, metrics: Metrics, outcome: RegistryOutcome,
                                  probe: Outcome, reason: str, label: str) -> None:
    report = probed("quay.io", outcome, probe, reason)
    report.stage = "probe" if outcome is RegistryOutcome.FAILED else ""
    metrics.observe(Summary([report], []))
    assert value(registry, "syncer_registry_probe_failures_total", registry="quay.io", reason=label) == 1
    assert value(registry, "syncer_registry_probe_success", registry="quay.io") == 0
    assert value(registry, "syncer_errors_total", stage="probe") == (1 if report.stage else 0)


def test_a_held_back_host_is_not_in_sync_and_dry_run_drift_is_not_counted(
        registry: CollectorRegistry, metrics: Metrics, settings: Settings) -> None:
    target = TargetReport(settings.targets[0], TargetOutcome.UNCHANGED, held_back=["quay.io"],
                          drift=["nvcr.io"])
    metrics.observe(Summary([], [target], dry_run=True))
    labels = {"secret_namespace": "team-a", "secret_name": "pull"}
    assert value(registry, "syncer_secret_sync_success", **labels) == 0
    assert value(registry, "syncer_drift_corrections_total", **labels, registry="nvcr.io") == 0


def test_fan_out_series_follow_the_selector(registry: CollectorRegistry, metrics: Metrics) -> None:
    def cycle(*namespaces: str) -> None:
        metrics.observe(Summary([], [TargetReport(FAN.in_namespace(ns)) for ns in namespaces]))

    def present() -> set[str]:
        return {ns for ns in ("team-a", "team-b") if value(
            registry, "syncer_secret_sync_success", secret_namespace=ns, secret_name="fan") is not None}

    cycle("team-a", "team-b")
    assert present() == {"team-a", "team-b"}
    cycle("team-a")  # team-b no longer matches: its series go, so no stale 0 alerts forever
    assert present() == {"team-a"}
    metrics.observe(Summary([], [TargetReport(FAN, TargetOutcome.FAILED, detail="list failed")]))
    assert present() == {"team-a"}  # the namespaces are unknown this cycle: keep what was there
    assert value(registry, "syncer_errors_total", stage="kubernetes") == 1


def test_crashes_logins_and_token_ttl(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.observe_crash()
    assert value(registry, "syncer_sync_runs_total", result="failure") == 1
    assert value(registry, "syncer_errors_total", stage="sync") == 1
    metrics.set_vault_logins(2)
    metrics.set_vault_logins(2)
    metrics.set_vault_logins(3)
    assert value(registry, "syncer_vault_logins_total") == 3
    metrics.set_token_ttl(42.0)
    assert value(registry, "syncer_vault_token_ttl_seconds") == 42.0
    metrics.set_token_ttl(None)
    assert value(registry, "syncer_vault_token_ttl_seconds") == -1


@pytest.mark.parametrize(("reason", "label"), [("http_503", "http_5xx"), ("http_404", "http_4xx"),
                                               ("", "unknown"), ("tls", "tls"), ("http_x", "http_x")])
def test_probe_reason_labels_stay_a_small_known_set(reason: str, label: str) -> None:
    assert probe_reason_label(reason) == label
