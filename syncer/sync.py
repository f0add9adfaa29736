"""One sync cycle: Vault -> probe -> merge -> conditional write, per registry and per target.

``Syncer.run_once`` is the single entry point for ``--once``, the daemon and
``--dry-run``. It never raises for a failing registry or target: each failure
is isolated, recorded in the returned Summary, and the rest of the cycle runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from syncer import dockerconfig
from syncer.config import RegistrySettings, Settings, TargetSettings
from syncer.credential import Credential, VersionedCredential
from syncer.dockerconfig import Change, HostChange
from syncer.events import EventSpec
from syncer.kube import SECRET_TYPE, KubeError, KubeErrorKind, SecretSnapshot, SecretStore
from syncer.probe import Outcome, Prober, ProbeResult
from syncer.vault import VaultError, VaultSource

log = logging.getLogger(__name__)

ANNOTATION_PREFIX = "registry-syncer.io/"
MANAGED_HOSTS = ANNOTATION_PREFIX + "managed-hosts"
"""Annotation listing the hosts this syncer manages in a secret (for drift and prune)."""
LAST_WRITE = ANNOTATION_PREFIX + "last-write"
"""Annotation with the time of the syncer's last write to the secret."""
SHUTTING_DOWN = "shutting down"
REFUSED_REASONS = frozenset({"insecure"})
"""Probe errors that are about the registry, not the login: never send it credentials."""


class RegistryOutcome(StrEnum):
    """Result for one registry in one cycle."""

    OK = "ok"
    UNVERIFIED = "unverified"
    UNPROBED = "unprobed"
    REJECTED = "rejected"
    FAILED = "failed"


class TargetOutcome(StrEnum):
    """Result for one target secret in one cycle."""

    UNCHANGED = "unchanged"
    UPDATED = "updated"
    CREATED = "created"
    MALFORMED = "malformed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass
class RegistryReport:
    """What happened to one registry. Holds no secret material."""

    host: str
    outcome: RegistryOutcome = RegistryOutcome.UNPROBED
    reason: str = ""
    """Short machine label: ``vault_missing``, ``rejected``, ``timeout``, ..."""
    detail: str = ""
    version: int | None = None
    """KV v2 version read this cycle."""
    probe: ProbeResult | None = None
    rotated_targets: int = 0
    """Targets that received this registry's new credentials this cycle."""
    stage: str = ""
    """Where it failed: ``vault`` or ``probe``."""

    @property
    def failed(self) -> bool:
        """Counts towards exit code 1."""
        return self.outcome in (RegistryOutcome.REJECTED, RegistryOutcome.FAILED)

    def line(self) -> str:
        """A human summary line."""
        text = f"registry {self.host}: {self.outcome.value}"
        if self.detail:
            text += f" - {self.detail}"
        return text


@dataclass
class TargetReport:
    """What happened to one target secret. Holds no secret material."""

    target: TargetSettings
    outcome: TargetOutcome = TargetOutcome.UNCHANGED
    detail: str = ""
    reason: str = ""
    """Short machine label for failures (``forbidden``, ``malformed``, ...)."""
    changes: list[HostChange] = field(default_factory=list)
    held_back: list[str] = field(default_factory=list)
    """Hosts whose new credentials were not written (rejected, or Vault failed)."""
    writes: int = 0
    conflicts: int = 0
    dry_run: bool = False

    @property
    def failed(self) -> bool:
        """Counts towards exit code 1."""
        return self.outcome in (TargetOutcome.FAILED, TargetOutcome.MALFORMED)

    def line(self) -> str:
        """A human summary line."""
        outcome = self.outcome.value
        if self.dry_run and self.outcome in (TargetOutcome.UPDATED, TargetOutcome.CREATED):
            outcome = f"would be {outcome} (dry-run)"
        parts = [c.describe() for c in self.changes if c.change is not Change.UNCHANGED]
        if self.held_back:
            parts.append(f"kept old entry for {', '.join(self.held_back)}")
        if self.detail:
            parts.append(self.detail)
        suffix = f" - {'; '.join(parts)}" if parts else ""
        return f"target {self.target.ref}: {outcome}{suffix}"


@dataclass
class Summary:
    """The result of one cycle; logged as one line, printed by --once, fed to metrics."""

    registries: list[RegistryReport]
    targets: list[TargetReport]
    duration: float = 0.0
    dry_run: bool = False
    started_at: float = 0.0
    """Wall-clock start (epoch seconds)."""

    @property
    def ok(self) -> bool:
        """True when no registry and no target failed (unverified is only a warning)."""
        return not any(r.failed for r in self.registries) and not any(t.failed for t in self.targets)

    @property
    def exit_code(self) -> int:
        """0 when everything synced and verified, else 1."""
        return 0 if self.ok else 1

    def counts(self) -> dict[str, int]:
        """Target outcomes plus rejected registries, for the one-line summary."""
        counts = {o.value: 0 for o in TargetOutcome}
        for t in self.targets:
            counts[t.outcome.value] += 1
        counts["rejected"] = sum(r.outcome is RegistryOutcome.REJECTED for r in self.registries)
        counts["registry_failed"] = sum(r.outcome is RegistryOutcome.FAILED for r in self.registries)
        return counts

    def one_line(self) -> str:
        """``sync finished: ok=... unchanged=3 updated=1 ... duration=0.42s``."""
        fields = " ".join(f"{k}={v}" for k, v in self.counts().items())
        mode = " dry_run=true" if self.dry_run else ""
        return f"sync finished: ok={str(self.ok).lower()} {fields} duration={self.duration:.2f}s{mode}"

    def render(self) -> str:
        """The human summary printed at the end of ``--once``."""
        lines = [r.line() for r in self.registries] + [t.line() for t in self.targets]
        return "\n".join(lines + [self.one_line()])


@dataclass(frozen=True)
class Login:
    """A registry's credentials as they should appear in secrets."""

    registry: RegistrySettings
    credential: Credential = field(repr=False)
    version: int | None


class Syncer:
    """Runs sync cycles with clients handed in by the caller."""

    def __init__(
        self,
        settings: Settings,
        vault: VaultSource,
        store: SecretStore,
        prober: Prober | None,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.vault = vault
        self.store = store
        self.prober = prober if settings.probe.enabled else None
        self.should_stop = should_stop
        self.clock = clock
        self.pool_size = settings.sync.concurrency
        self._deadline = float("inf")

    # ------------------------------------------------------------------ cycle

    def run_once(self) -> Summary:
        """One full cycle. Never raises for per-registry or per-target failures."""
        started = self.clock()
        wall = time.monotonic()
        self._deadline = wall + self.settings.schedule.run_timeout
        reports = {r.host: RegistryReport(r.host) for r in self.settings.registries}
        logins = self._read_vault(reports)
        blocked = self._probe(logins, reports)
        usable = {h: login for h, login in logins.items() if h not in blocked}
        if logins:
            targets = self._map(lambda t: self._sync_target(t, usable, logins), self.settings.targets)
        else:
            targets = [TargetReport(t, TargetOutcome.SKIPPED, "no registry credentials could be read")
                       for t in self.settings.targets]
        for target in targets:
            for change in target.changes:
                if change.change is not Change.UNCHANGED and target.writes:
                    reports[change.host].rotated_targets += 1
        summary = Summary(list(reports.values()), targets, time.monotonic() - wall,
                          self.store.dry_run, started)
        log.info("%s", summary.one_line())
        return summary

    def _stop_reason(self) -> str:
        """Why no further write may start: shutdown requested or run deadline passed."""
        if self.should_stop():
            return SHUTTING_DOWN
        if time.monotonic() > self._deadline:
            return "run deadline exceeded"
        return ""

    def _map(self, fn: Callable[[TargetSettings], TargetReport],
             items: Iterable[TargetSettings]) -> list[TargetReport]:
        with ThreadPoolExecutor(self.pool_size, thread_name_prefix="sync") as pool:
            return list(pool.map(fn, items))

    # ------------------------------------------------------------------ vault

    def _read_vault(self, reports: Mapping[str, RegistryReport]) -> dict[str, Login]:
        try:
            self.vault.ensure_login()
        except VaultError as exc:
            log.error("vault login failed: %s", exc)
            for report in reports.values():
                _fail(report, "vault", f"vault_{exc.kind.value}",
                      f"Vault login failed ({exc.kind.value}): {exc}")
            return {}
        logins = {}
        for registry in self.settings.registries:
            try:
                versioned: VersionedCredential = self.vault.read(registry)
            except VaultError as exc:
                log.error("registry %s: vault read failed: %s", registry.host, exc)
                _fail(reports[registry.host], "vault", f"vault_{exc.kind.value}",
                      f"Vault read failed ({exc.kind.value}): {exc}")
                continue
            reports[registry.host].version = versioned.version
            logins[registry.host] = Login(registry, versioned.credential, versioned.version)
        return logins

    # ------------------------------------------------------------------ probe

    def _probe(self, logins: Mapping[str, Login], reports: Mapping[str, RegistryReport]) -> set[str]:
        """Probe every host once; returns hosts whose new credentials must not be written."""
        prober = self.prober
        if prober is None:
            return set()
        hosts = list(logins)
        with ThreadPoolExecutor(self.pool_size, thread_name_prefix="probe") as pool:
            results = list(pool.map(lambda h: prober.probe(h, logins[h].credential), hosts))
        blocked = set()
        for host, result in zip(hosts, results, strict=True):
            report = reports[host]
            report.probe = result
            if result.outcome is Outcome.OK:
                report.outcome, report.detail = RegistryOutcome.OK, "login verified"
            elif result.outcome is Outcome.UNVERIFIED:
                report.outcome, report.reason = RegistryOutcome.UNVERIFIED, "unverified"
                report.detail = "registry accepts anonymous access; credentials could not be verified"
                log.warning("registry %s: %s", host, report.detail)
            elif result.outcome is Outcome.REJECTED:
                _fail(report, "probe", "rejected", f"registry rejected the credentials from Vault "
                      f"({result.detail}); old entries kept")
                report.outcome = RegistryOutcome.REJECTED
                log.error("registry %s: login rejected: %s", host, result.detail)
                if self.settings.probe.verify_before_write:
                    blocked.add(host)
            elif result.reason in REFUSED_REASONS:
                _fail(report, "probe", result.reason, f"refused: {result.detail}; nothing written")
                log.error("registry %s: refused (%s): %s", host, result.reason, result.detail)
                blocked.add(host)
            else:
                _fail(report, "probe", result.reason, f"probe failed: {result.detail} "
                      "(credentials still written: the failure says nothing about them)")
                log.error("registry %s: probe error (%s): %s", host, result.reason, result.detail)
        return blocked

    # ------------------------------------------------------------------ targets

    def _sync_target(self, target: TargetSettings, usable: Mapping[str, Login],
                     all_logins: Mapping[str, Login]) -> TargetReport:
        report = TargetReport(target, dry_run=self.store.dry_run)
        hosts = self.settings.hosts_for(target)
        wanted = {h: usable[h] for h in hosts if h in usable}
        report.held_back = [h for h in hosts if h not in usable]
        if stop := self._stop_reason():
            return _skip(report, stop)
        for _attempt in range(self.settings.sync.conflict_retries + 1):
            try:
                return self._attempt(target, wanted, report)
            except KubeError as exc:
                if exc.kind not in (KubeErrorKind.CONFLICT, KubeErrorKind.ALREADY_EXISTS):
                    log.error("target %s: %s", target.ref, exc)
                    return _target_fail(report, TargetOutcome.FAILED, exc.kind.value, str(exc))
                report.conflicts += 1
                log.info("target %s: changed by someone else while syncing; re-reading", target.ref)
        return _target_fail(report, TargetOutcome.FAILED, "conflict",
                            f"still conflicting after {report.conflicts} attempts")

    def _attempt(self, target: TargetSettings, wanted: Mapping[str, Login],
                 report: TargetReport) -> TargetReport:
        """Read, merge and (if anything changed) write once. Raises KubeError."""
        snapshot = self.store.read(target.namespace, target.name)
        if snapshot is None and not target.create:
            return _target_fail(report, TargetOutcome.FAILED, "not_found",
                                "secret does not exist (set create = true to create it)")
        try:
            current = _document(snapshot)
        except dockerconfig.MalformedError as exc:
            log.error("target %s: malformed secret left untouched: %s", target.ref, exc)
            return _target_fail(report, TargetOutcome.MALFORMED, "malformed",
                                f"existing secret is malformed ({exc}); left untouched")
        merged, report.changes = dockerconfig.merge(
            current, {h: (login.credential, login.registry.email) for h, login in wanted.items()})
        annotations = self._annotations(snapshot, merged, wanted)
        unchanged = (snapshot is not None and merged == current
                     and snapshot.annotations.get(MANAGED_HOSTS, "") == annotations[MANAGED_HOSTS])
        if unchanged:
            report.outcome = TargetOutcome.UNCHANGED
            return report
        if stop := self._stop_reason():
            return _skip(report, stop)
        payload = dockerconfig.serialize(merged)
        if snapshot is None:
            self.store.create(target.namespace, target.name, payload, annotations)
            report.outcome = TargetOutcome.CREATED
        else:
            self.store.update(snapshot, payload, annotations)
            report.outcome = TargetOutcome.UPDATED
        report.writes += 0 if self.store.dry_run else 1
        log.info("%s", report.line())
        return report

    def _annotations(self, snapshot: SecretSnapshot | None, merged: dockerconfig.Document,
                     wanted: Mapping[str, Login]) -> dict[str, str]:
        previous = (snapshot.annotations.get(MANAGED_HOSTS, "") if snapshot else "").split(",")
        managed = {h for h in previous if h} | {h for h in wanted if dockerconfig.find_key(merged, h)}
        stamp = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {MANAGED_HOSTS: ",".join(sorted(managed)), LAST_WRITE: stamp}


def _document(snapshot: SecretSnapshot | None) -> dockerconfig.Document:
    if snapshot is None:
        return dockerconfig.empty()
    if snapshot.type != SECRET_TYPE:
        raise dockerconfig.MalformedError(f"type is {snapshot.type}, not {SECRET_TYPE}")
    if snapshot.payload is None:
        raise dockerconfig.MalformedError("has no .dockerconfigjson key")
    return dockerconfig.parse(snapshot.payload)


def _fail(report: RegistryReport, stage: str, reason: str, detail: str) -> None:
    report.outcome, report.stage, report.reason, report.detail = (
        RegistryOutcome.FAILED, stage, reason, detail)


def _skip(report: TargetReport, why: str) -> TargetReport:
    # A shutdown skip is expected; a deadline skip means the run did not finish its job.
    outcome = TargetOutcome.SKIPPED if why == SHUTTING_DOWN else TargetOutcome.FAILED
    return _target_fail(report, outcome, why.replace(" ", "_"), f"not written: {why}")


def _target_fail(report: TargetReport, outcome: TargetOutcome, reason: str, detail: str) -> TargetReport:
    report.outcome, report.reason, report.detail = outcome, reason, detail
    return report


def events_for(summary: Summary) -> list[EventSpec]:
    """The Events a cycle's outcome deserves, one per target secret and reason."""
    if summary.dry_run:
        return []
    rejected = {r.host for r in summary.registries if r.outcome is RegistryOutcome.REJECTED}
    specs = []
    for t in summary.targets:
        ns, name = t.target.namespace, t.target.name
        changed = [c.describe() for c in t.changes if c.change is not Change.UNCHANGED]
        if t.writes and changed:
            specs.append(EventSpec(ns, name, "CredentialsRotated", "; ".join(changed)))
        for host in sorted(rejected & set(t.held_back)):
            specs.append(EventSpec(ns, name, "LoginRejected", f"{host}: the registry rejected the "
                                   "credentials from Vault; the previous entry was kept", warning=True))
        if t.outcome is TargetOutcome.MALFORMED:
            specs.append(EventSpec(ns, name, "MalformedSecret", t.detail, warning=True))
        elif t.outcome is TargetOutcome.FAILED:
            specs.append(EventSpec(ns, name, "SyncFailed", t.detail, warning=True))
    return specs
