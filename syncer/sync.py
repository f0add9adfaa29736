"""One sync cycle: Vault -> probe -> merge -> conditional write, per registry and per target.

``Syncer.run_once`` is the single entry point for ``--once``, the daemon and
``--dry-run``. It never raises for a failing registry or target: each failure
is isolated, recorded in the returned Summary, and the rest of the cycle runs.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from syncer import dockerconfig, drift, logs, targets
from syncer.canary import PullCheck, PullChecker
from syncer.config import RegistrySettings, Settings, TargetSettings
from syncer.credential import Credential, VersionedCredential
from syncer.dockerconfig import Change
from syncer.filetarget import FileStore
from syncer.kube import FanOut, SecretStore
from syncer.probe import Outcome, Prober, ProbeResult
from syncer.report import (
    DETAIL_LIMIT,
    RegistryOutcome,
    RegistryReport,
    Summary,
    TargetOutcome,
    TargetReport,
    record_pulls,
)
from syncer.scope import Scope
from syncer.target_errors import TargetError, TargetErrorKind
from syncer.targets import Snapshot, TargetStore, TargetStores
from syncer.text import rfc3339, safe
from syncer.vault import VaultError, VaultSource

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_R = TypeVar("_R")

SHUTTING_DOWN = "shutting down"
REFUSED_REASONS = frozenset({"insecure"})
"""Probe errors that are about the registry, not the login: never send it credentials."""


class _Unread:
    """Marks a target that was not prefetched: read it on its own."""


UNREAD = _Unread()
Verified = tuple[ProbeResult, tuple[PullCheck, ...]]
"""A probe result and the canary pull checks that ran after it (none unless the login is ok)."""
Listed = Snapshot | TargetError | None
"""A prefetched target, the error decoding it, or None when the LIST showed it does not exist."""


class ProbeCache:
    """Conclusive verdicts (a probe result and its pull checks), reused for the same login while
    younger than ``interval``."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._cache: dict[tuple[str, str], tuple[float, Verified]] = {}
        """(host, login digest) -> (when, conclusive verdict)."""
        self._lock = threading.Lock()

    def get(self, host: str, credential: Credential, verify: Callable[[], Verified],
            now: float) -> Verified:
        """``verify()``, or a conclusive verdict for the same login younger than the interval
        (``now`` is the time by the Syncer's clock).

        Only ok/unverified/rejected are reused (with their pull checks, unless one of those
        erred); errors are always probed again. A rotated login has a new digest, so it is
        always probed.
        """
        if self.interval <= 0:
            return verify()
        digest = hashlib.sha256(f"{credential.username}\0{credential.password}".encode()).hexdigest()
        key = (host, digest)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self.interval:
            return cached[1]
        result, pulls = verified = verify()
        with self._lock:
            # Forget older logins of this host so the cache holds at most one entry per host.
            for old in [k for k in self._cache if k[0] == host]:
                del self._cache[old]
            if (result.outcome in (Outcome.OK, Outcome.UNVERIFIED, Outcome.REJECTED)
                    and not any(p.outcome == "error" for p in pulls)):
                self._cache[key] = (now, verified)
        return verified


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
        progress: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        fanout: FanOut,
        files: FileStore,
    ) -> None:
        self.settings = settings
        self.vault = vault
        self.store = store
        self.prober = prober if settings.probe.enabled else None
        self.should_stop = should_stop
        self.progress = progress
        """Called after every completed step (Vault read, probe, target): /healthz's heartbeat."""
        self.clock = clock
        self.pool_size = settings.sync.concurrency
        self.fanout = fanout
        self.targets = TargetStores(store, files)
        self._emails = {r.host: r.email for r in settings.registries}
        self._deadline = float("inf")
        self._probes = ProbeCache(settings.probe.interval)
        self.pulls = PullChecker(self.prober) if self.prober is not None else None
        """Canary pull checks (``verify_images``), run with the probe and cached with it."""
        self._images = {r.host: r.verify_images for r in settings.registries}

    # ------------------------------------------------------------------ cycle

    def run_once(self, scope: Scope | None = None) -> Summary:
        """One full cycle, or with ``scope`` the same path for a subset only (a Vault change, a
        repaired secret). Never raises for per-registry or per-target failures."""
        wall = time.monotonic()
        self._deadline = wall + self.settings.schedule.run_timeout
        registries = self.settings.registries if scope is None else scope.registries_to_read(self.settings)
        reports = {r.host: RegistryReport(r.host) for r in registries}
        logins = self._read_vault(reports, registries)
        # Probes run on their own pool: a target waits only for the probes of its own hosts, so
        # one slow registry delays nothing else (and waiting targets cannot starve the probes).
        with ThreadPoolExecutor(self.pool_size, thread_name_prefix="probe") as probes:
            verdicts = self._start_probes(probes, logins, reports)
            if logins:
                resolved, target_reports = self._resolve_targets()
                if scope is not None:
                    resolved = [t for t in resolved if scope.selects(self.settings, t)]
                    target_reports = [t for t in target_reports if scope.selects(self.settings, t.target)]
                listed = self.targets.prefetch(resolved, lists=self.settings.kubernetes.list_secrets)
                target_reports += self._map(lambda t: self._sync_target(
                    t, self._usable_for(t, logins, verdicts), listed,
                    only=None if scope is None else scope.hosts(self.settings, t)), resolved)
            else:
                target_reports = [TargetReport(t, TargetOutcome.SKIPPED,
                                               "no registry credentials could be read",
                                               emits_events=self.targets.of(t).emits_events)
                                  for t in self.settings.targets
                                  if scope is None or scope.selects(self.settings, t)]
        for target in target_reports:
            for change in target.changes:
                rotated = change.change is not Change.UNCHANGED and change.host not in target.drift
                if rotated and target.writes:
                    reports[change.host].rotated_targets += 1
        summary = Summary(list(reports.values()), target_reports, time.monotonic() - wall,
                          self.store.dry_run)
        if scope is None:
            log.info("%s", summary.one_line())
        else:
            log.info("scoped sync (%s): %s", scope.describe(), summary.one_line())
        return summary

    def _stop_reason(self) -> str:
        """Why no further write may start: shutdown requested or run deadline passed."""
        if self.should_stop():
            return SHUTTING_DOWN
        if time.monotonic() > self._deadline:
            return "run deadline exceeded"
        return ""

    def _map(self, fn: Callable[[_T], _R], items: Iterable[_T]) -> list[_R]:
        """``fn`` over ``items`` on the bounded pool (``sync.concurrency``), results in order.
        Each finished item is a completed step, reported to ``progress``."""
        def step(item: _T) -> _R:
            result = fn(item)
            self.progress()
            return result

        with ThreadPoolExecutor(self.pool_size, thread_name_prefix="sync") as pool:
            return list(pool.map(step, items))

    # ------------------------------------------------------------------ fan-out

    def _resolve_targets(self) -> tuple[list[TargetSettings], list[TargetReport]]:
        """Concrete targets for this cycle (see ``targets.resolve``), plus failure reports for
        the selector targets whose namespaces could not be listed."""
        resolved, failed = targets.resolve(targets.expand(self.settings.targets, self.fanout))
        return resolved, [_target_fail(TargetReport(target, dry_run=self.store.dry_run),
                                       TargetOutcome.FAILED, exc.kind.value,
                                       f"cannot list namespaces: {exc}")
                          for target, exc in failed]

    # ------------------------------------------------------------------ vault

    def _read_vault(self, reports: Mapping[str, RegistryReport],
                    registries: tuple[RegistrySettings, ...]) -> dict[str, VersionedCredential]:
        try:
            self.vault.ensure_login()
        except VaultError as exc:
            log.error("vault login failed: %s", safe(exc, DETAIL_LIMIT))
            for report in reports.values():
                _fail(report, "vault", f"vault_{exc.kind.value}",
                      f"Vault login failed ({exc.kind.value}): {exc}")
            return {}

        def read(registry: RegistrySettings) -> VersionedCredential | VaultError:
            try:
                return self.vault.read(registry)
            except VaultError as exc:
                return exc

        logins = {}
        for registry, versioned in zip(registries, self._map(read, registries), strict=True):
            if isinstance(versioned, VaultError):
                log.error("registry %s: vault read failed: %s", registry.host,
                          safe(versioned, DETAIL_LIMIT))
                _fail(reports[registry.host], "vault", f"vault_{versioned.kind.value}",
                      f"Vault read failed ({versioned.kind.value}): {versioned}")
                continue
            logs.protect(versioned.credential)  # a library's exception quoting it is scrubbed from logs
            reports[registry.host].version = versioned.version
            logins[registry.host] = versioned
        return logins

    # ------------------------------------------------------------------ probe

    def _start_probes(self, pool: ThreadPoolExecutor, logins: Mapping[str, VersionedCredential],
                      reports: Mapping[str, RegistryReport]) -> dict[str, Future[bool]]:
        """Probe every host once, in the background; each future says whether the host's new
        credentials must not be written. Without a prober every host is usable at once."""
        verdicts: dict[str, Future[bool]] = {}
        for host, login in logins.items():
            if self.prober is None:
                done: Future[bool] = Future()
                done.set_result(False)
                verdicts[host] = done
                continue
            verdicts[host] = pool.submit(self._probe_host, self.prober, host, login.credential,
                                         reports[host])
        return verdicts

    def _usable_for(self, target: TargetSettings, logins: Mapping[str, VersionedCredential],
                    verdicts: Mapping[str, Future[bool]]) -> dict[str, VersionedCredential]:
        """The logins a target may write, once the probes of its own hosts have finished."""
        hosts = [h for h in self.settings.hosts_for(target) if h in logins]
        return {h: logins[h] for h in hosts if not verdicts[h].result()}

    def _probe_host(self, prober: Prober, host: str, credential: Credential,
                    report: RegistryReport) -> bool:
        """Probe one host and record the verdict in its report; True = blocked."""
        result, report.pulls = self._probes.get(
            host, credential, lambda: self._verify(prober, host, credential), self.clock())
        self.progress()  # a finished probe is a step of the cycle (health: stuck vs long)
        report.probe = result
        if result.outcome is Outcome.OK:
            report.outcome, report.detail = RegistryOutcome.OK, "login verified"
            if record_pulls(report, report.pulls):  # every canary denied: as good as rejected
                log.error("registry %s: %s", host, safe(report.detail, DETAIL_LIMIT))
                return self.settings.probe.verify_before_write
        elif result.outcome is Outcome.UNVERIFIED:
            report.outcome, report.reason = RegistryOutcome.UNVERIFIED, "unverified"
            report.detail = "registry accepts anonymous access; credentials could not be verified"
            log.warning("registry %s: %s", host, report.detail)
            if record_pulls(report, report.pulls):  # manifests refuse it although /v2/ is open
                log.error("registry %s: %s", host, safe(report.detail, DETAIL_LIMIT))
                return self.settings.probe.verify_before_write
        elif result.outcome is Outcome.REJECTED:
            _fail(report, "probe", "rejected", f"registry rejected the credentials from Vault "
                  f"({result.detail}); old entries kept")
            report.outcome = RegistryOutcome.REJECTED
            log.error("registry %s: login rejected: %s", host, safe(result.detail, DETAIL_LIMIT))
            return self.settings.probe.verify_before_write
        elif result.reason in REFUSED_REASONS:
            _fail(report, "probe", result.reason, f"refused: {result.detail}; nothing written")
            log.error("registry %s: refused (%s): %s", host, result.reason,
                      safe(result.detail, DETAIL_LIMIT))
            return True
        else:
            _fail(report, "probe", result.reason, f"probe failed: {result.detail} "
                  "(credentials still written: the failure says nothing about them)")
            log.error("registry %s: probe error (%s): %s", host, result.reason,
                      safe(result.detail, DETAIL_LIMIT))
        return False

    def _verify(self, prober: Prober, host: str, credential: Credential) -> Verified:
        """The login probe and, once the login is proven, the canary pull checks."""
        result = prober.probe(host, credential, self.should_stop)
        # An open registry (unverified login) still tells a stale canary from a public one.
        if result.outcome not in (Outcome.OK, Outcome.UNVERIFIED) or self.pulls is None:
            return result, ()
        return result, self.pulls.check(host, credential, self._images.get(host, ()), self.should_stop,
                                        result.challenge)

    # ------------------------------------------------------------------ targets

    def _sync_target(self, target: TargetSettings, usable: Mapping[str, VersionedCredential],
                     listed: Mapping[str, Listed], *,
                     only: frozenset[str] | None = None) -> TargetReport:
        store = self.targets.of(target)
        report = TargetReport(target, dry_run=self.store.dry_run, emits_events=store.emits_events)
        # A scoped run merges only ``only``; the target's other entries stay as they are.
        hosts = [h for h in self.settings.hosts_for(target) if only is None or h in only]
        wanted = {h: usable[h] for h in hosts if h in usable}
        report.held_back = [h for h in hosts if h not in usable]
        if stop := self._stop_reason():
            return _skip(report, stop)
        # The prefetched copy serves the first attempt only; after a conflict the target is read again.
        first: Listed | _Unread = listed.get(target.ref, UNREAD)
        for _attempt in range(self.settings.sync.conflict_retries + 1):
            try:
                self._attempt(store, target, wanted, report, first)
                if target.service_accounts and report.outcome in (
                        TargetOutcome.UNCHANGED, TargetOutcome.UPDATED, TargetOutcome.CREATED):
                    return _link_accounts(self.fanout, target, report,
                                          self.settings.sync.conflict_retries, self._stop_reason)
                return report
            except TargetError as exc:
                if exc.kind not in (TargetErrorKind.CONFLICT, TargetErrorKind.ALREADY_EXISTS):
                    log.error("target %s: %s", target.ref, exc)
                    return _target_fail(report, TargetOutcome.FAILED, exc.kind.value, str(exc))
                report.conflicts += 1
                first = UNREAD
                log.info("target %s: changed by someone else while syncing; re-reading", target.ref)
        log.error("target %s: still conflicting after %d attempts; giving up this cycle",
                  target.ref, report.conflicts)
        return _target_fail(report, TargetOutcome.FAILED, "conflict",
                            f"still conflicting after {report.conflicts} attempts")

    def _attempt(self, store: TargetStore[Any], target: TargetSettings,
                 wanted: Mapping[str, VersionedCredential], report: TargetReport,
                 listed: Listed | _Unread) -> TargetReport:
        """Read (unless ``listed`` holds the target already), merge and, if anything changed,
        write once. Raises TargetError."""
        snapshot = store.read_target(target) if isinstance(listed, _Unread) else _listed(listed)
        if snapshot is None and not target.create:
            return _target_fail(report, TargetOutcome.FAILED, "not_found",
                                f"{store.what} does not exist (set create = true to create it)")
        try:
            current = targets.document(snapshot)
        except dockerconfig.MalformedError as exc:
            log.error("target %s: malformed %s left untouched: %s", target.ref, store.what,
                      safe(exc, DETAIL_LIMIT))
            return _target_fail(report, TargetOutcome.MALFORMED, "malformed",
                                f"existing {store.what} is malformed ({exc}); left untouched")
        before = snapshot.annotations if snapshot is not None else {}
        managed, ignored, recorded = targets.owned(before)
        if ignored and not report.annotation_ignored:  # once per target and run, not per attempt
            log.warning("target %s: %s", target.ref, drift.ignored_warning(ignored))
        report.annotation_ignored = report.annotation_ignored or len(ignored)
        report.drift = drift.drifted(current, {h: (v.credential, self._emails[h], v.version)
                                               for h, v in wanted.items()}, recorded)
        if target.drift == "report":
            wanted = {h: v for h, v in wanted.items() if h not in report.drift}
        stale = drift.unconfigured(managed, self.settings.hosts_for(target))
        report.pruned, report.stale = (stale, []) if target.prune else ([], stale)
        merged, report.changes = dockerconfig.merge(
            current, {h: (v.credential, self._emails[h]) for h, v in wanted.items()})
        merged, _ = dockerconfig.remove(merged, report.pruned)
        stamp = rfc3339(self.clock())
        annotations = targets.ownership(managed, recorded, merged,
                                        {h: v.version for h, v in wanted.items()}, report.pruned, stamp)
        if snapshot is not None and merged == current and targets.same_ownership(before, annotations):
            report.outcome = TargetOutcome.UNCHANGED
            return report
        if stop := self._stop_reason():
            return _skip(report, stop)
        _write(store, target, snapshot, store.serialize(merged), annotations, merged != current)
        report.outcome = TargetOutcome.CREATED if snapshot is None else TargetOutcome.UPDATED
        report.writes += 0 if store.dry_run else 1
        log.info("%s", report.line())
        return report


def _link_accounts(fanout: FanOut, target: TargetSettings, report: TargetReport, retries: int,
                   stop_reason: Callable[[], str]) -> TargetReport:
    """Make every listed ServiceAccount reference the secret: append only, never reorder or
    drop, conditional on the version read (re-read and retry after a 409)."""
    for name in target.service_accounts:
        for _attempt in range(retries + 1):
            try:
                account = fanout.read_account(target.namespace, name)
                if account is None:
                    return _target_fail(report, TargetOutcome.FAILED, "serviceaccount_missing",
                                        f"serviceaccount {name} does not exist (yet); "
                                        "imagePullSecrets not updated")
                if account.references(target.name):
                    break
                if stop := stop_reason():
                    return _skip(report, stop)
                fanout.add_reference(account, target.name)
            except TargetError as exc:
                if exc.kind is not TargetErrorKind.CONFLICT:
                    log.error("target %s: %s", target.ref, exc)
                    return _target_fail(report, TargetOutcome.FAILED, "serviceaccount", str(exc))
                report.conflicts += 1
                log.info("serviceaccount %s/%s changed while linking; re-reading",
                         target.namespace, name)
                continue
            report.linked_accounts.append(name)
            log.info("serviceaccount %s/%s: added %s to imagePullSecrets",
                     target.namespace, name, target.name)
            break
        else:
            return _target_fail(report, TargetOutcome.FAILED, "conflict",
                                f"serviceaccount {name} still conflicting after retries")
    return report


def _write(store: TargetStore[Any], target: TargetSettings, snapshot: Snapshot | None,
           payload: bytes, annotations: Mapping[str, str], content_changed: bool) -> None:
    """Update the target conditionally, or create it. What the write replaces is kept for
    rollback, but not when only annotations change."""
    if snapshot is None:
        store.create(target, payload, annotations)
    else:
        store.update(snapshot, payload, annotations, snapshot.payload if content_changed else None)


def _listed(listed: Listed) -> Snapshot | None:
    """The prefetched copy of a target; a listed one that could not be decoded raises."""
    if isinstance(listed, TargetError):
        raise listed
    return listed


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
