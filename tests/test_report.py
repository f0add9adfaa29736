"""What a cycle reports: which outcomes fail the run, the summary lines operators read, and the
Events each outcome deserves (none in dry-run, none for targets without an object)."""

from __future__ import annotations

from syncer.config import TargetSettings
from syncer.dockerconfig import Change, HostChange
from syncer.report import (
    RegistryOutcome,
    RegistryReport,
    Summary,
    TargetOutcome,
    TargetReport,
    events_for,
)

TARGET = TargetSettings(namespace="team-a", name="pull")
ROTATED = HostChange("nvcr.io", Change.UPDATED, password_changed=True, username="$oauthtoken")


def test_only_rejected_or_failed_registries_and_failed_or_malformed_targets_fail_the_run() -> None:
    fine = [RegistryReport("a.io", RegistryOutcome.OK), RegistryReport("b.io", RegistryOutcome.UNVERIFIED),
            RegistryReport("c.io", RegistryOutcome.UNPROBED)]
    summary = Summary(fine, [TargetReport(TARGET, TargetOutcome.SKIPPED)])
    assert summary.ok and summary.exit_code == 0
    for outcome in (RegistryOutcome.REJECTED, RegistryOutcome.FAILED):
        assert Summary([RegistryReport("x.io", outcome)], []).exit_code == 1
    for target_outcome in (TargetOutcome.FAILED, TargetOutcome.MALFORMED):
        assert not Summary(fine, [TargetReport(TARGET, target_outcome)]).ok


def test_one_line_counts_every_outcome() -> None:
    summary = Summary([RegistryReport("x.io", RegistryOutcome.REJECTED)],
                      [TargetReport(TARGET, TargetOutcome.UPDATED), TargetReport(TARGET)],
                      duration=0.421, dry_run=True)
    assert summary.one_line() == ("sync finished: ok=false unchanged=1 updated=1 created=0 malformed=0 "
                                  "failed=0 skipped=0 rejected=1 registry_failed=0 duration=0.42s "
                                  "dry_run=true")


def test_lines_say_what_changed_and_escape_outside_text() -> None:
    report = TargetReport(TARGET, TargetOutcome.UPDATED, changes=[ROTATED], dry_run=True,
                          held_back=["quay.io"], detail="API said \x1b[2Jhi")
    assert report.line() == ("target team-a/pull: would be updated (dry-run) - nvcr.io: updated "
                             "(password changed) as $oauthtoken; kept old entry for quay.io; "
                             "API said \\x1b[2Jhi")
    registry = RegistryReport("nvcr.io", RegistryOutcome.FAILED, detail="boom\nforged line")
    assert registry.line() == "registry nvcr.io: failed - boom\\nforged line"
    rendered = Summary([registry], [report]).render().splitlines()
    assert rendered[0] == registry.line() and rendered[1] == report.line()
    assert rendered[2].startswith("sync finished: ok=false")


def test_events_per_outcome() -> None:
    reports = [
        TargetReport(TARGET, TargetOutcome.UPDATED, changes=[ROTATED], writes=1,
                     held_back=["quay.io"], pruned=["old.io"]),
        TargetReport(TargetSettings(namespace="team-b", name="pull", drift="report"), drift=["nvcr.io"]),
        TargetReport(TargetSettings(namespace="team-c", name="pull"), TargetOutcome.FAILED,
                     detail="forbidden"),
    ]
    summary = Summary([RegistryReport("quay.io", RegistryOutcome.REJECTED)], reports)
    seen = [(e.namespace, e.reason, e.warning) for e in events_for(summary)]
    assert seen == [("team-a", "CredentialsRotated", False), ("team-a", "LoginRejected", True),
                    ("team-a", "EntriesPruned", False), ("team-b", "DriftDetected", True),
                    ("team-c", "SyncFailed", True)]


def test_a_repaired_drift_is_not_called_a_rotation() -> None:
    report = TargetReport(TARGET, TargetOutcome.UPDATED, changes=[ROTATED], writes=1, drift=["nvcr.io"])
    assert [e.reason for e in events_for(Summary([], [report]))] == ["DriftRepaired"]


def test_no_events_in_dry_run_for_files_or_for_an_unexpanded_selector() -> None:
    rotated = {"outcome": TargetOutcome.UPDATED, "changes": [ROTATED], "writes": 1}
    assert events_for(Summary([], [TargetReport(TARGET, **rotated)], dry_run=True)) == []  # type: ignore[arg-type]
    others = [TargetReport(TargetSettings(namespace="", name="", file="/root/.docker/config.json"),
                           TargetOutcome.FAILED, detail="x", emits_events=False),  # as FileStore says
              TargetReport(TargetSettings(namespace="", name="pull", namespace_selector="team"),
                           TargetOutcome.FAILED, detail="namespace list failed")]
    assert events_for(Summary([], others)) == []
