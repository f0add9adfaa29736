"""``syncer rollback``: restore the content a target held before the syncer's last write.

Every write that changes a Secret's ``.dockerconfigjson`` also stores the content it replaces
in the data key ``.dockerconfigjson.previous`` of the same Secret (file targets: the sibling
``.NAME.previous``, mode 0600). Rollback swaps the two in one conditional write, so a second
rollback undoes the first. It reports which hosts change, never values.

The next sync cycle compares the secret with Vault again: Vault's credentials are re-applied
(counted as drift when Vault is unchanged) unless the operator fixes Vault or sets
``drift = "report"`` on the target first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from syncer import dockerconfig, filetarget
from syncer.filetarget import FileSnapshot, FileStore
from syncer.kube import KubeError, KubeErrorKind, SecretSnapshot, SecretStore
from syncer.sync import LAST_WRITE, document
from syncer.text import rfc3339, safe

log = logging.getLogger(__name__)

ROLLED_BACK = "registry-syncer.io/rolled-back"
"""Annotation with the time of the last rollback."""


@dataclass
class RollbackResult:
    """What a rollback did (or would do). Holds host names only."""

    target: str
    ok: bool = False
    message: str = ""
    changed: list[str] = field(default_factory=list)
    """``host: added|removed|changed`` lines, plus top-level key changes."""
    dry_run: bool = False

    def render(self) -> str:
        """Human lines for the terminal."""
        # Changed lines name auths keys and messages quote errors: text from the secret or file.
        lines = [f"rollback {safe(self.target)}: {safe(self.message, 500)}"]
        lines += [f"  {safe(c)}" for c in self.changed]
        return "\n".join(lines)


def differences(current: dockerconfig.Document, restored: dockerconfig.Document) -> list[str]:
    """What restoring ``restored`` over ``current`` changes: host names and key names only."""
    now, then = current.get("auths", {}), restored.get("auths", {})
    lines = []
    for key in sorted(set(now) | set(then)):
        if key not in then:
            lines.append(f"{key}: removed")
        elif key not in now:
            lines.append(f"{key}: restored (absent now)")
        elif now[key] != then[key]:
            lines.append(f"{key}: changed")
    for key in sorted((set(current) | set(restored)) - {"auths"}):
        if current.get(key) != restored.get(key):
            lines.append(f"top-level key {key}: changed")
    return lines


def rollback(snapshot: SecretSnapshot | FileSnapshot | None, ref: str,
             write: Callable[[bytes, bytes, dict[str, str]], None], dry_run: bool,
             clock: Callable[[], float]) -> RollbackResult:
    """Swap the target's content with its kept previous content (one conditional write)."""
    result = RollbackResult(ref, dry_run=dry_run)
    if snapshot is None:
        result.message = "does not exist; nothing to roll back"
        return result
    if snapshot.previous is None or snapshot.payload is None or snapshot.previous == snapshot.payload:
        result.message = ("nothing to roll back: no previous content is kept (the syncer keeps one "
                          "before each write that changes the content)")
        return result
    try:
        current = document(snapshot)
        # Parsed by the rules of the target kind: a file kept before its first login had no "auths".
        parse = filetarget.parse if isinstance(snapshot, FileSnapshot) else dockerconfig.parse
        restored = parse(snapshot.previous)
    except dockerconfig.MalformedError as exc:
        result.message = f"refused: the content is malformed ({exc}); fix it by hand"
        return result
    result.changed = differences(current, restored)
    stamp = rfc3339(clock())
    if dry_run:
        result.ok, result.message = True, "would restore the previous content (dry-run; nothing written)"
        return result
    try:
        write(snapshot.previous, snapshot.payload, {LAST_WRITE: stamp, ROLLED_BACK: stamp})
    except KubeError as exc:
        result.message = f"not rolled back: {exc}" + (
            "; re-run to roll back the current state" if exc.kind is KubeErrorKind.CONFLICT else "")
        return result
    log.info("rolled back %s (%d changes)", ref, len(result.changed))
    result.ok = True
    result.message = ("restored the previous content; the replaced content is kept, so a second "
                      "rollback undoes this one")
    return result


def rollback_secret(store: SecretStore, namespace: str, name: str,
                    clock: Callable[[], float]) -> RollbackResult:
    """Roll back a Secret target (resourceVersion precondition: a concurrent write gives 409)."""
    snapshot = store.read(namespace, name)

    def write(payload: bytes, previous: bytes, annotations: dict[str, str]) -> None:
        assert isinstance(snapshot, SecretSnapshot)
        store.update(snapshot, payload, annotations, previous)

    return rollback(snapshot, f"{namespace}/{name}", write, store.dry_run, clock)


def rollback_file(files: FileStore, path: str, clock: Callable[[], float]) -> RollbackResult:
    """Roll back a file target (content-token precondition)."""
    snapshot = files.read(path)

    def write(payload: bytes, previous: bytes, annotations: dict[str, str]) -> None:
        assert isinstance(snapshot, FileSnapshot)
        state: dict[str, Any] = {**snapshot.annotations, **annotations}
        files.write(path, snapshot, payload, state, previous)

    return rollback(snapshot, path, write, files.dry_run, clock)
