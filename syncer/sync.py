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
from dataclasses import dataclass, field
from typing import TypeVar

from syncer import dockerconfig, drift, filetarget, logs
from syncer.canary import PullCheck, PullChecker
from syncer.config import RegistrySettings, Settings, TargetSettings
from syncer.credential import Credential, VersionedCredential
from syncer.dockerconfig import Change
from syncer.filetarget import FileSnapshot, FileStore
from syncer.kube import (
    SECRET_TYPE,
    FanOut,
    KubeError,
    KubeErrorKind,
    SecretSnapshot,
    SecretStore,
)
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
from syncer.text import rfc3339, safe
from syncer.vault import VaultError, VaultSource

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_R = TypeVar("_R")

ANNOTATION_PREFIX = "registry-syncer.io/"
MANAGED_HOSTS = ANNOTATION_PREFIX + "managed-hosts"
"""Annotation listing the hosts this syncer manages in a secret (for drift and prune)."""
LAST_WRITE = ANNOTATION_PREFIX + "last-write"
"""Annotation with the time of the syncer's last write to the secret."""
VAULT_VERSIONS = ANNOTATION_PREFIX + "vault-versions"
"""Annotation with the KV v2 version last written per host (the drift basis; no secret material)."""
SHUTTING_DOWN = "shutting down"
REFUSED_REASONS = frozenset({"insecure"})
"""Probe errors that are about the registry, not the login: never send it credentials."""


class _Unread:
    """Marks a target whose secret was not listed: read it with a GET."""


UNREAD = _Unread()
Verified = tuple[ProbeResult, tuple[PullCheck, ...]]
"""A probe result and the canary pull checks that ran after it (none unless the login is ok)."""
Listed = SecretSnapshot | KubeError | None
"""A listed secret, the error decoding it, or None when the LIST showed it does not exist."""


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
        self.files = files
        self._deadline = float("inf")
        self._probe_cache: dict[tuple[str, str], tuple[float, Verified]] = {}
        """(host, login digest) -> (when, conclusive result), kept for ``probe.interval``."""
        self.pulls = PullChecker(self.prober) if self.prober is not None else None
        """Canary pull checks (``verify_images``), run with the probe and cached with it."""
        self._images = {r.host: r.verify_images for r in settings.registries}
        self._probe_lock = threading.Lock()

    # ------------------------------------------------------------------ cycle

    def run_once(self, scope: Scope | None = None) -> Summary:
        """One full cycle, or with ``scope`` the same path for a subset only (a Vault change, a
        repaired secret). Never raises for per-registry or per-target failures."""
        started = self.clock()
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
                resolved, targets = self._resolve_targets()
                if scope is not None:
                    resolved = [t for t in resolved if scope.selects(self.settings, t)]
                    targets = [t for t in targets if scope.selects(self.settings, t.target)]
                listed = self._list_secrets(resolved)
                targets += self._map(lambda t: self._sync_target(
                    t, self._usable_for(t, logins, verdicts), logins, listed,
                    only=None if scope is None else scope.hosts(self.settings, t)), resolved)
            else:
                targets = [TargetReport(t, TargetOutcome.SKIPPED,
                                        "no registry credentials could be read")
                           for t in self.settings.targets
                           if scope is None or scope.selects(self.settings, t)]
        for target in targets:
            for change in target.changes:
                rotated = change.change is not Change.UNCHANGED and change.host not in target.drift
                if rotated and target.writes:
                    reports[change.host].rotated_targets += 1
        summary = Summary(list(reports.values()), targets, time.monotonic() - wall,
                          self.store.dry_run, started)
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
        """Concrete targets for this cycle, plus failure reports for selectors that could not be
        listed. One namespace LIST per distinct selector; a fixed target wins over a selector
        target for the same namespace/name, and the first selector wins over later ones.

        A namespace that stops matching is simply no longer served: its secret is left in place,
        because a label edit must not break image pulls of running workloads there.
        """
        listed: dict[str, list[str] | KubeError] = {}
        fixed = {(t.namespace, t.name) for t in self.settings.targets if not t.namespace_selector}
        seen: set[tuple[str, str]] = set()
        resolved: list[TargetSettings] = []
        failed: list[TargetReport] = []
        for target in self.settings.targets:
            if not target.namespace_selector:
                resolved.append(target)
                continue
            selector = target.namespace_selector
            if selector not in listed:
                try:
                    listed[selector] = self.fanout.namespaces(selector)
                except KubeError as exc:
                    log.error("namespace selector %r: %s", selector, exc)
                    listed[selector] = exc
            names = listed[selector]
            if isinstance(names, KubeError):
                failed.append(_target_fail(TargetReport(target, dry_run=self.store.dry_run),
                                           TargetOutcome.FAILED, names.kind.value,
                                           f"cannot list namespaces: {names}"))
                continue
            for ns in names:
                key = (ns, target.name)
                if key in fixed or key in seen:
                    continue
                seen.add(key)
                resolved.append(target.in_namespace(ns))
        return resolved, failed

    def _list_secrets(self, resolved: list[TargetSettings]) -> dict[tuple[str, str], Listed]:
        """With ``kubernetes.list_secrets``: the fan-out targets' secrets from one LIST per name,
        keyed by (namespace, name); None where the secret does not exist. A failed LIST only
        costs speed: its targets are read one by one as usual."""
        if not self.settings.kubernetes.list_secrets:
            return {}
        listed: dict[tuple[str, str], Listed] = {}
        for name in sorted({t.name for t in resolved if t.namespace_selector}):
            try:
                found = self.store.list_named(name)
            except KubeError as exc:
                log.warning("cannot list secrets named %s cluster-wide, reading them one by one: %s",
                            name, exc)
                continue
            for t in resolved:
                if t.namespace_selector and t.name == name:
                    listed[(t.namespace, name)] = found.get(t.namespace)
        return listed

    def _link_accounts(self, target: TargetSettings, report: TargetReport) -> TargetReport:
        """Make every listed ServiceAccount reference the secret: append only, never reorder or
        drop, conditional on the version read (re-read and retry after a 409)."""
        for name in target.service_accounts:
            for _attempt in range(self.settings.sync.conflict_retries + 1):
                try:
                    account = self.fanout.read_account(target.namespace, name)
                    if account is None:
                        return _target_fail(report, TargetOutcome.FAILED, "serviceaccount_missing",
                                            f"serviceaccount {name} does not exist (yet); "
                                            "imagePullSecrets not updated")
                    if account.references(target.name):
                        break
                    if stop := self._stop_reason():
                        return _skip(report, stop)
                    self.fanout.add_reference(account, target.name)
                except KubeError as exc:
                    if exc.kind is not KubeErrorKind.CONFLICT:
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

    # ------------------------------------------------------------------ vault

    def _read_vault(self, reports: Mapping[str, RegistryReport],
                    registries: tuple[RegistrySettings, ...]) -> dict[str, Login]:
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
            logins[registry.host] = Login(registry, versioned.credential, versioned.version)
        return logins

    # ------------------------------------------------------------------ probe

    def _start_probes(self, pool: ThreadPoolExecutor, logins: Mapping[str, Login],
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

    def _usable_for(self, target: TargetSettings, logins: Mapping[str, Login],
                    verdicts: Mapping[str, Future[bool]]) -> dict[str, Login]:
        """The logins a target may write, once the probes of its own hosts have finished."""
        hosts = [h for h in self.settings.hosts_for(target) if h in logins]
        return {h: logins[h] for h in hosts if not verdicts[h].result()}

    def _probe_host(self, prober: Prober, host: str, credential: Credential,
                    report: RegistryReport) -> bool:
        """Probe one host and record the verdict in its report; True = blocked."""
        result, report.pulls = self._probe_cached(prober, host, credential)
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
        if result.outcome is not Outcome.OK or self.pulls is None:
            return result, ()
        return result, self.pulls.check(host, credential, self._images.get(host, ()), self.should_stop)

    def _probe_cached(self, prober: Prober, host: str, credential: Credential) -> Verified:
        """Probe, or reuse a conclusive result for the same login younger than probe.interval.

        Only ok/unverified/rejected are reused (with their pull checks, unless one of those
        erred); errors are always probed again. A rotated login has a new digest, so it is
        always probed.
        """
        interval = self.settings.probe.interval
        if interval <= 0:
            return self._verify(prober, host, credential)
        digest = hashlib.sha256(f"{credential.username}\0{credential.password}".encode()).hexdigest()
        key = (host, digest)
        now = self.clock()
        with self._probe_lock:
            cached = self._probe_cache.get(key)
        if cached is not None and now - cached[0] < interval:
            return cached[1]
        result, pulls = verified = self._verify(prober, host, credential)
        with self._probe_lock:
            # Forget older logins of this host so the cache holds at most one entry per host.
            for old in [k for k in self._probe_cache if k[0] == host]:
                del self._probe_cache[old]
            if (result.outcome in (Outcome.OK, Outcome.UNVERIFIED, Outcome.REJECTED)
                    and not any(p.outcome == "error" for p in pulls)):
                self._probe_cache[key] = (now, verified)
        return verified

    # ------------------------------------------------------------------ targets

    def _sync_target(self, target: TargetSettings, usable: Mapping[str, Login],
                     all_logins: Mapping[str, Login],
                     listed: Mapping[tuple[str, str], Listed], *,
                     only: frozenset[str] | None = None) -> TargetReport:
        report = TargetReport(target, dry_run=self.store.dry_run)
        # A scoped run merges only ``only``; the target's other entries stay as they are.
        hosts = [h for h in self.settings.hosts_for(target) if only is None or h in only]
        wanted = {h: usable[h] for h in hosts if h in usable}
        report.held_back = [h for h in hosts if h not in usable]
        if stop := self._stop_reason():
            return _skip(report, stop)
        # The listed copy serves the first attempt only; after a conflict the secret is read again.
        first: Listed | _Unread = listed.get((target.namespace, target.name), UNREAD)
        for _attempt in range(self.settings.sync.conflict_retries + 1):
            try:
                self._attempt(target, wanted, report, first)
                if target.service_accounts and report.outcome in (
                        TargetOutcome.UNCHANGED, TargetOutcome.UPDATED, TargetOutcome.CREATED):
                    return self._link_accounts(target, report)
                return report
            except KubeError as exc:
                if exc.kind not in (KubeErrorKind.CONFLICT, KubeErrorKind.ALREADY_EXISTS):
                    log.error("target %s: %s", target.ref, exc)
                    return _target_fail(report, TargetOutcome.FAILED, exc.kind.value, str(exc))
                report.conflicts += 1
                first = UNREAD
                log.info("target %s: changed by someone else while syncing; re-reading", target.ref)
        log.error("target %s: still conflicting after %d attempts; giving up this cycle",
                  target.ref, report.conflicts)
        return _target_fail(report, TargetOutcome.FAILED, "conflict",
                            f"still conflicting after {report.conflicts} attempts")

    def _attempt(self, target: TargetSettings, wanted: Mapping[str, Login],
                 report: TargetReport, listed: Listed | _Unread) -> TargetReport:
        """Read (unless ``listed`` holds the secret already), merge and, if anything changed,
        write once. Raises KubeError."""
        snapshot = self._read(target, listed)
        what = "file" if target.file else "secret"
        if snapshot is None and not target.create:
            return _target_fail(report, TargetOutcome.FAILED, "not_found",
                                f"{what} does not exist (set create = true to create it)")
        try:
            current = document(snapshot)
        except dockerconfig.MalformedError as exc:
            log.error("target %s: malformed %s left untouched: %s", target.ref, what,
                      safe(exc, DETAIL_LIMIT))
            return _target_fail(report, TargetOutcome.MALFORMED, "malformed",
                                f"existing {what} is malformed ({exc}); left untouched")
        before = snapshot.annotations if snapshot is not None else {}
        managed, ignored = drift.split_hosts(before.get(MANAGED_HOSTS, ""))
        if ignored and not report.annotation_ignored:  # once per target and run, not per attempt
            log.warning("target %s: %s", target.ref, drift.ignored_warning(ignored))
        report.annotation_ignored = report.annotation_ignored or len(ignored)
        recorded = drift.parse_versions(before.get(VAULT_VERSIONS, ""))
        report.drift = drift.drifted(current, {h: (login.credential, login.registry.email, login.version)
                                               for h, login in wanted.items()}, recorded)
        if target.drift == "report":
            wanted = {h: login for h, login in wanted.items() if h not in report.drift}
        stale = drift.unconfigured(managed, self.settings.hosts_for(target))
        report.pruned, report.stale = (stale, []) if target.prune else ([], stale)
        merged, report.changes = dockerconfig.merge(
            current, {h: (login.credential, login.registry.email) for h, login in wanted.items()})
        merged, _ = dockerconfig.remove(merged, report.pruned)
        annotations = self._annotations(managed, recorded, merged, wanted, report.pruned)
        unchanged = (snapshot is not None and merged == current
                     and all(before.get(k, "") == annotations[k] for k in (MANAGED_HOSTS, VAULT_VERSIONS)))
        if unchanged:
            report.outcome = TargetOutcome.UNCHANGED
            return report
        if stop := self._stop_reason():
            return _skip(report, stop)
        payload = filetarget.serialize(merged) if target.file else dockerconfig.serialize(merged)
        # Keep what this write replaces (rollback), but not when only annotations change.
        previous = snapshot.payload if snapshot is not None and merged != current else None
        if isinstance(snapshot, SecretSnapshot):
            self.store.update(snapshot, payload, annotations, previous)
        elif target.file:
            self.files.write(target.file, snapshot, payload, annotations, previous)
        else:
            self.store.create(target.namespace, target.name, payload, annotations)
        report.outcome = TargetOutcome.CREATED if snapshot is None else TargetOutcome.UPDATED
        report.writes += 0 if self.store.dry_run else 1
        log.info("%s", report.line())
        return report

    def _read(self, target: TargetSettings, listed: Listed | _Unread) -> SecretSnapshot | FileSnapshot | None:
        """The target as it is now: its file, its listed copy, or a fresh GET."""
        if target.file:
            return self.files.read(target.file)
        if isinstance(listed, _Unread):
            return self.store.read(target.namespace, target.name)
        if isinstance(listed, KubeError):
            raise listed
        return listed

    def _annotations(self, managed: list[str], recorded: Mapping[str, int], merged: dockerconfig.Document,
                     wanted: Mapping[str, Login], pruned: list[str]) -> dict[str, str]:
        written = {h for h in wanted if dockerconfig.find_key(merged, h)}
        hosts = (set(managed) | written) - set(pruned)
        versions = {h: v for h, v in recorded.items() if h in hosts}
        versions.update({h: v for h in written if (v := wanted[h].version) is not None})
        stamp = rfc3339(self.clock())
        return {MANAGED_HOSTS: ",".join(sorted(hosts)), VAULT_VERSIONS: drift.format_versions(versions),
                LAST_WRITE: stamp}


def document(snapshot: SecretSnapshot | FileSnapshot | None) -> dockerconfig.Document:
    """The document a target holds now (empty if it does not exist). Raises MalformedError."""
    if snapshot is None:
        return dockerconfig.empty()
    if isinstance(snapshot, FileSnapshot):
        return filetarget.parse(snapshot.payload)
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
