"""What one cycle reports: outcomes per registry and target, the Summary that ``--once``
prints, the daemon logs as one line and metrics are fed from, and the Events it deserves.

Holds no secret material. The sync engine (``sync``) fills these in; ``metrics``,
``scheduler``, ``cli`` and the operator tools depend on the report, not on the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from syncer.canary import PullCheck, PullOutcome, verdict
from syncer.config import TargetSettings
from syncer.dockerconfig import Change, HostChange
from syncer.events import EventSpec
from syncer.probe import ProbeResult
from syncer.text import safe, safe_list

DETAIL_LIMIT = 500
"""Characters of a report's detail (quoted error text from outside) shown per line."""


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
    pulls: tuple[PullCheck, ...] = ()
    """Canary pull checks (``verify_images``) of this cycle; none unless the login was proven."""

    @property
    def failed(self) -> bool:
        """Counts towards exit code 1."""
        return self.outcome in (RegistryOutcome.REJECTED, RegistryOutcome.FAILED)

    def line(self) -> str:
        """A human summary line."""
        text = f"registry {self.host}: {self.outcome.value}"
        if self.detail:  # may quote Vault's or the registry's error text
            text += f" - {safe(self.detail, DETAIL_LIMIT)}"
        return text


def record_pulls(report: RegistryReport, checks: tuple[PullCheck, ...]) -> bool:
    """Fold the canary checks into a proven login's report; True when every canary is denied,
    which rejects the credential (issue 13). A stale canary (not found) is only a warning."""
    if verdict(checks) == "denied":
        images = ", ".join(c.image for c in checks)
        report.outcome, report.stage, report.reason = RegistryOutcome.REJECTED, "probe", "pull_denied"
        report.detail = (f"the credential from Vault logs in but has no pull access to {images} "
                         f"({'; '.join(c.detail for c in checks)}); old entries kept")
        return True
    if checks:
        report.detail += "; " + "; ".join(f"canary {c.image}: {_PULL_WORDS[c.outcome]}" for c in checks)
    return False


_PULL_WORDS = {
    PullOutcome.OK: "pull verified",
    PullOutcome.PULL_DENIED: "WARNING no pull access",
    PullOutcome.NOT_FOUND: "WARNING not found (stale canary? the credential was written)",
    PullOutcome.UNVERIFIED: "public repository, pull access unverified",
    PullOutcome.ERROR: "check failed (indeterminate)",
}


def canary_warnings(report: RegistryReport) -> list[PullCheck]:
    """Canaries that were denied or not found while the credential was still written."""
    if report.outcome is RegistryOutcome.REJECTED:
        return []
    return [c for c in report.pulls if c.outcome in (PullOutcome.PULL_DENIED, PullOutcome.NOT_FOUND)]


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
    linked_accounts: list[str] = field(default_factory=list)
    """ServiceAccounts that received a reference to this secret this cycle."""
    drift: list[str] = field(default_factory=list)
    """Managed hosts edited by hand while Vault was unchanged (repaired unless drift = "report")."""
    pruned: list[str] = field(default_factory=list)
    """Formerly managed hosts removed because they are no longer configured (prune = true)."""
    stale: list[str] = field(default_factory=list)
    """Formerly managed hosts no longer configured, kept because prune = false."""
    dry_run: bool = False
    emits_events: bool = True
    """The target's store can name it in an Event (``TargetStore.emits_events``: not a file)."""
    annotation_ignored: int = 0
    """Invalid items ignored in the managed-hosts annotation (someone edited it)."""

    @property
    def failed(self) -> bool:
        """Counts towards exit code 1."""
        return self.outcome in (TargetOutcome.FAILED, TargetOutcome.MALFORMED)

    def line(self) -> str:
        """A human summary line."""
        outcome = self.outcome.value
        if self.dry_run and self.outcome in (TargetOutcome.UPDATED, TargetOutcome.CREATED):
            outcome = f"would be {outcome} (dry-run)"
        parts = [safe(c.describe()) for c in self.changes if c.change is not Change.UNCHANGED]
        if self.drift:
            repaired = self.target.drift == "repair"
            parts.append(f"drift {'repaired' if repaired else 'detected (drift = report: not repaired)'}"
                         f" on {', '.join(self.drift)}")
        if self.pruned:  # pruned and stale hosts come from the (tenant-editable) annotation
            parts.append(f"pruned {safe_list(self.pruned)}")
        if self.stale:
            parts.append(f"{safe_list(self.stale)} no longer configured (kept; prune = false)")
        if self.held_back:
            parts.append(f"kept old entry for {', '.join(self.held_back)}")
        if self.linked_accounts:
            parts.append(f"added to imagePullSecrets of serviceaccount {', '.join(self.linked_accounts)}")
        if self.detail:  # may quote the API server, a malformed secret's keys or a file's error
            parts.append(safe(self.detail, DETAIL_LIMIT))
        suffix = f" - {'; '.join(parts)}" if parts else ""
        return f"target {self.target.ref}: {outcome}{suffix}"


@dataclass
class Summary:
    """The result of one cycle; logged as one line, printed by --once, fed to metrics."""

    registries: list[RegistryReport]
    targets: list[TargetReport]
    duration: float = 0.0
    dry_run: bool = False

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


def events_for(summary: Summary) -> list[EventSpec]:
    """The Events a cycle's outcome deserves, one per target secret and reason."""
    if summary.dry_run:
        return []
    rejected = {r.host for r in summary.registries if r.outcome is RegistryOutcome.REJECTED}
    denied = {r.host: r for r in summary.registries if r.reason == "pull_denied"}
    warned = {r.host: warnings for r in summary.registries if (warnings := canary_warnings(r))}
    specs = []
    for t in summary.targets:
        ns, name = t.target.namespace, t.target.name
        if not (t.target.concrete and t.emits_events):
            continue  # the namespace LIST failed, or a file target: no object to attach an Event to
        changed = [c.describe() for c in t.changes if c.change is not Change.UNCHANGED
                   and c.host not in t.drift]
        if t.writes and changed:
            specs.append(EventSpec(ns, name, "CredentialsRotated", "; ".join(changed)))
        for host in sorted(rejected & set(t.held_back)):
            if host in denied:
                images = ", ".join(c.image for c in denied[host].pulls)
                specs.append(EventSpec(ns, name, "PullAccessDenied", f"{host}: the credentials from "
                                       f"Vault cannot pull {images}; the previous entry was kept",
                                       warning=True))
                continue
            specs.append(EventSpec(ns, name, "LoginRejected", f"{host}: the registry rejected the "
                                   "credentials from Vault; the previous entry was kept", warning=True))
        for host in sorted(set(warned) & {c.host for c in t.changes}):
            specs.append(EventSpec(ns, name, "CanaryImageWarning", f"{host}: " + "; ".join(
                f"{c.image}: {c.outcome.value}" for c in warned[host]), warning=True))
        if t.drift and t.target.drift == "repair" and t.writes:
            specs.append(EventSpec(ns, name, "DriftRepaired", f"{', '.join(t.drift)}: entry edited by "
                                   "hand while Vault was unchanged; restored from Vault", warning=True))
        elif t.drift and t.target.drift == "report":
            specs.append(EventSpec(ns, name, "DriftDetected", f"{', '.join(t.drift)}: entry differs from "
                                   "Vault while Vault is unchanged (drift = report: not repaired)",
                                   warning=True))
        if t.pruned and t.writes:
            specs.append(EventSpec(ns, name, "EntriesPruned", f"{', '.join(t.pruned)}: no longer "
                                   "configured; removed (prune = true)"))
        if t.outcome is TargetOutcome.MALFORMED:
            specs.append(EventSpec(ns, name, "MalformedSecret", t.detail, warning=True))
        elif t.outcome is TargetOutcome.FAILED:
            specs.append(EventSpec(ns, name, "SyncFailed", t.detail, warning=True))
    return specs
