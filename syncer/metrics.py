"""Prometheus metrics. Names and labels are a contract with dashboards and alerts.

Every labelled series is created at start-up with value 0 (so ``absent()``
and ``rate()`` work before the first failure) and only ever carries hosts,
namespaces, names and reason labels: never secret material.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from syncer import __version__
from syncer.canary import PullOutcome
from syncer.config import Settings, TargetSettings
from syncer.kube_watch import EVENT_TYPES, RESOURCES, RESTART_REASONS, WatchMode
from syncer.probe import REASONS
from syncer.report import RegistryOutcome, RegistryReport, Summary, TargetOutcome, TargetReport
from syncer.scope import REPAIR_REASONS

PROBE_REASONS = tuple(r for r in REASONS if r) + ("http_4xx", "http_5xx")
"""Pre-created ``reason`` label values of syncer_registry_probe_failures_total."""
STAGES = ("vault", "kubernetes", "probe", "sync")
TARGET_LABELS = ("secret_namespace", "secret_name")
"""Labels of the per-secret series (a file target: empty namespace, the path as name)."""


def probe_reason_label(reason: str) -> str:
    """Fold ``http_503`` into ``http_5xx`` so the label set stays small and known."""
    if reason.startswith("http_") and reason[5:].isdigit():
        return f"http_{reason[5]}xx"
    return reason or "unknown"


class Metrics:
    """All syncer metrics on one registry, fed from a run Summary."""

    def __init__(self, registry: CollectorRegistry, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        make = _Factory(registry)
        self._declare_cycle(make)
        self._declare_registries(make)
        self._declare_targets(make)
        self._declare_watches(make)
        self._logins_seen = 0
        self._fanout: dict[tuple[str, str], set[tuple[str, str]]] = {}
        """Label sets of each fan-out target's secrets seen last cycle (stale ones are removed)."""
        self._hosts: dict[tuple[str, str], tuple[str, ...]] = {}
        _process_collectors(registry)
        self.token_ttl.set(-1)
        self.reconfigure(settings)

    def _declare_cycle(self, make: _Factory) -> None:
        """The process and its cycles: runs, duration, errors, Vault token, leadership."""
        self.runs = make.counter("syncer_sync_runs", "Sync cycles by result.", ("result",))
        self.duration = make.histogram("syncer_sync_duration_seconds", "Duration of sync cycles.",
                                       (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.last_run = make.gauge("syncer_last_run_timestamp_seconds",
                                   "Unix time the last cycle finished.")
        self.last_success = make.gauge("syncer_last_success_timestamp_seconds",
                                       "Unix time the last fully successful cycle finished.")
        self.errors = make.counter("syncer_errors", "Errors by stage.", ("stage",))
        self.token_ttl = make.gauge("syncer_vault_token_ttl_seconds",
                                    "Remaining TTL of the Vault token (-1 if unknown).")
        self.vault_logins = make.counter("syncer_vault_logins", "Vault logins made by this process.")
        self.build_info = make.gauge("syncer_build_info", "Build information.", ("version",))
        self.leader = make.gauge("syncer_leader", "1 on the replica that holds the lease.")

    def _declare_registries(self, make: _Factory) -> None:
        """Per registry host: the probe, the Vault read, rotations, canary pull checks."""
        reg = ("registry",)
        self.probe_success = make.gauge("syncer_registry_probe_success",
                                        "1 if the last probe proved the login, else 0.", reg)
        self.probe_duration = make.gauge("syncer_registry_probe_duration_seconds",
                                         "Duration of the last probe.", reg)
        self.probe_failures = make.counter("syncer_registry_probe_failures",
                                           "Probes that did not prove the login, by reason.",
                                           ("registry", "reason"))
        self.registry_success = make.gauge("syncer_registry_sync_success",
                                           "1 if the registry was read from Vault and not refused.", reg)
        self.rotations = make.counter("syncer_credential_rotations",
                                      "New credentials applied to at least one target.", reg)
        self.version = make.gauge("syncer_credential_version",
                                  "KV v2 version of the credentials in use.", reg)
        self.pull_success = make.gauge("syncer_image_pull_check_success",
                                       "1 if the last pull check proved the credential can pull the "
                                       "canary image, else 0.", ("registry", "image"))
        self.pull_checks = make.counter("syncer_image_pull_checks",
                                        "Canary image pull checks by result (ok, pull_denied, not_found, "
                                        "unverified, error).", ("registry", "image", "result"))

    def _declare_targets(self, make: _Factory) -> None:
        """Per target secret (or file): writes, conflicts, success, drift."""
        # Not ``namespace``/``name``: Prometheus attaches the scrape target's own ``namespace``
        # (the syncer pod's) to every series and renames ours to ``exported_namespace``.
        target = TARGET_LABELS
        self.writes = make.counter("syncer_secret_writes", "Writes to target secrets.", target)
        self.conflicts = make.counter("syncer_secret_conflicts", "409 Conflicts met while writing.",
                                      target)
        self.secret_success = make.gauge("syncer_secret_sync_success",
                                         "1 if the target is in sync after the last cycle.", target)
        self.drift = make.counter("syncer_drift_corrections",
                                  "Managed entries found edited by hand while Vault was unchanged "
                                  "(repaired, or only reported when drift = report).",
                                  (*TARGET_LABELS, "registry"))

    def _declare_watches(self, make: _Factory) -> None:
        """Kubernetes watches and what the reactor did with them."""
        self.watch_events = make.counter("syncer_watch_events", "Events read from Kubernetes watches.",
                                         ("resource", "type"))
        self.watch_restarts = make.counter("syncer_watch_restarts",
                                           "Watches (or their lists) that ended or failed, by reason "
                                           "(closed = the normal end at timeoutSeconds).",
                                           ("resource", "reason"))
        self.watches = make.gauge("syncer_watches", "Kubernetes watches of the daemon by mode "
                                  "(polling = the watch cannot be opened; its targets are read "
                                  "each cycle).", ("resource", "mode"))
        self.propagation = make.histogram(
            "syncer_propagation_seconds",
            "From a new Vault version noticed by the poll to the last affected target written.",
            (0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300))
        self.repairs = make.counter("syncer_repairs", "Targets re-synced at once after a watch event "
                                    "(secret_deleted, entry_drifted, namespace_matched).", ("reason",))

    def _init_series(self, settings: Settings) -> None:
        self.build_info.labels(__version__).set(1)
        for result in ("success", "failure"):
            self.runs.labels(result)
        for stage in STAGES:
            self.errors.labels(stage)
        for resource in RESOURCES:
            for event_type in EVENT_TYPES:
                self.watch_events.labels(resource, event_type)
            for reason in RESTART_REASONS:
                self.watch_restarts.labels(resource, reason)
            for mode in WatchMode:
                self.watches.labels(resource, mode.value)
        for reason in REPAIR_REASONS:
            self.repairs.labels(reason)
        for reg in settings.registries:
            for gauge in (self.probe_success, self.probe_duration, self.version,
                          self.registry_success):
                gauge.labels(reg.host)
            self.rotations.labels(reg.host)
            for reason in PROBE_REASONS:
                self.probe_failures.labels(reg.host, reason)
            for image in reg.verify_images:
                self.pull_success.labels(reg.host, image.text)
                for outcome in PullOutcome:
                    self.pull_checks.labels(reg.host, image.text, outcome.value)
        for target in settings.targets:
            if target.namespace_selector:
                continue  # fan-out: series appear with their namespaces, in observe()
            for metric in (self.writes, self.conflicts, self.secret_success):
                metric.labels(*target_labels(target))
            for host in settings.hosts_for(target):
                self.drift.labels(*target_labels(target), host)

    def observe(self, summary: Summary) -> None:
        """Record one cycle."""
        now = self.clock()
        self.runs.labels("success" if summary.ok else "failure").inc()
        self.duration.observe(summary.duration)
        self.last_run.set(now)
        if summary.ok:
            self.last_success.set(now)
        for reg in summary.registries:
            self._observe_registry(reg)
        seen: dict[tuple[str, str], set[tuple[str, str]]] = {key: set() for key in self._hosts}
        for target in summary.targets:
            key = _fanout_key(target.target)
            if target.target.namespace_selector and not target.target.namespace:
                if target.failed:  # the namespace LIST failed (not: skipped after a Vault error)
                    self.errors.labels("kubernetes").inc()
                seen.pop(key, None)  # the namespaces are unknown: keep last cycle's series
                continue
            labels = target_labels(target.target)
            if key in seen:
                seen[key].add(labels)
            self._observe_target(target, labels, summary.dry_run)
        self._forget_stale(seen)

    def observe_scoped(self, summary: Summary) -> None:
        """Record a scoped sync (the reactor's): its registries and targets, not as a cycle (no
        run count, duration or last-success time, and no fan-out series forgotten)."""
        for reg in summary.registries:
            self._observe_registry(reg)
        for target in summary.targets:
            if not target.target.concrete:
                continue  # a selector whose namespaces could not be listed
            labels = target_labels(target.target)
            if (key := _fanout_key(target.target)) in self._hosts:
                self._fanout.setdefault(key, set()).add(labels)
            self._observe_target(target, labels, summary.dry_run)

    def propagated(self, seconds: float) -> None:
        """A new Vault version reached every affected target (the reactor's Observer)."""
        self.propagation.observe(seconds)

    def repaired(self, reason: str) -> None:
        """A target was written after a watch event (the reactor's Observer)."""
        self.repairs.labels(reason).inc()

    def reconfigure(self, settings: Settings) -> None:
        """After a config reload: series for new registries and targets, at 0."""
        self._hosts = {(t.name, str(t.namespace_selector)): settings.hosts_for(t)
                       for t in settings.targets if t.namespace_selector}
        self._init_series(settings)

    def _observe_target(self, target: TargetReport, labels: tuple[str, str], dry_run: bool) -> None:
        self.writes.labels(*labels).inc(target.writes)
        for host in [] if dry_run else target.drift:
            self.drift.labels(*labels, host).inc()
        self.conflicts.labels(*labels).inc(target.conflicts)
        ok = target.outcome in (TargetOutcome.UNCHANGED, TargetOutcome.UPDATED,
                                TargetOutcome.CREATED) and not target.held_back
        self.secret_success.labels(*labels).set(1 if ok else 0)
        if target.failed:
            self.errors.labels("kubernetes").inc()

    def _forget_stale(self, seen: dict[tuple[str, str], set[tuple[str, str]]]) -> None:
        """Remove the series of fan-out secrets whose namespace no longer matches the selector
        (or is gone), so that a stale 0 in ``syncer_secret_sync_success`` never alerts forever."""
        for key, current in seen.items():
            for labels in self._fanout.get(key, set()) - current:
                for metric in (self.writes, self.conflicts, self.secret_success):
                    with contextlib.suppress(KeyError):
                        metric.remove(*labels)
                for host in self._hosts[key]:
                    with contextlib.suppress(KeyError):
                        self.drift.remove(*labels, host)
            self._fanout[key] = current

    def _observe_registry(self, reg: RegistryReport) -> None:
        host = reg.host
        self.registry_success.labels(host).set(0 if reg.failed else 1)
        if reg.version is not None:
            self.version.labels(host).set(reg.version)
        if reg.rotated_targets:
            self.rotations.labels(host).inc()
        if reg.stage:
            self.errors.labels(reg.stage).inc()
        if reg.probe is None:
            self.probe_success.labels(host).set(0)
            return
        self.probe_duration.labels(host).set(reg.probe.duration)
        for check in reg.pulls:
            self.pull_success.labels(host, check.image).set(1 if check.outcome is PullOutcome.OK else 0)
            self.pull_checks.labels(host, check.image, check.outcome.value).inc()
        if reg.reason == "pull_denied":  # the login itself was proven; the canaries alert
            self.probe_success.labels(host).set(1)
            return
        ok = reg.outcome is RegistryOutcome.OK
        self.probe_success.labels(host).set(1 if ok else 0)
        if not ok:
            reason = "unverified" if reg.outcome is RegistryOutcome.UNVERIFIED else reg.probe.reason
            self.probe_failures.labels(host, probe_reason_label(reason)).inc()

    def observe_crash(self) -> None:
        """A run that raised: count it as a failure so the failing-sync alert sees it."""
        self.runs.labels("failure").inc()
        self.last_run.set(self.clock())
        self.errors.labels("sync").inc()

    def set_vault_logins(self, total: int) -> None:
        """Advance ``syncer_vault_logins_total`` to the Vault source's running login count."""
        if total > self._logins_seen:
            self.vault_logins.inc(total - self._logins_seen)
            self._logins_seen = total

    def watch_event(self, resource: str, event_type: str) -> None:
        """One event read from a watch (kube_watch.WatchObserver)."""
        self.watch_events.labels(resource, event_type).inc()

    def watch_restart(self, resource: str, reason: str) -> None:
        """One watch that ended or failed (kube_watch.WatchObserver)."""
        self.watch_restarts.labels(resource, reason).inc()

    def watch_modes(self, counts: Mapping[tuple[str, str], int]) -> None:
        """How many watches of each resource are in each mode, by (resource, mode); the pairs
        left out are 0 (syncer.watching)."""
        for resource in RESOURCES:
            for mode in WatchMode:
                self.watches.labels(resource, mode.value).set(counts.get((resource, mode.value), 0))

    def set_token_ttl(self, ttl: float | None) -> None:
        """Remaining Vault token TTL, -1 when unknown."""
        self.token_ttl.set(-1 if ttl is None else ttl)


class _Factory:
    """Declares metrics on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry)

    def histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, doc, buckets=buckets, registry=self.registry)


def target_labels(target: TargetSettings) -> tuple[str, str]:
    """The ``TARGET_LABELS`` values of a concrete target."""
    return (target.namespace, target.name or target.file)


def _fanout_key(target: TargetSettings) -> tuple[str, str]:
    return (target.name, str(target.namespace_selector))


def _process_collectors(registry: CollectorRegistry) -> None:
    """process_resident_memory_bytes, process_open_fds, python_info, python_gc_*: what the soak
    measures by hand, on the dashboards too. (The default registry has them; ours is our own.)"""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
