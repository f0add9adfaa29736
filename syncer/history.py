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

from syncer import dockerconfig
from syncer.config import TargetSettings
from syncer.target_errors import TargetError, TargetErrorKind
from syncer.targets import LAST_WRITE, ROLLED_BACK, TargetStore
from syncer.text import rfc3339, safe

log = logging.getLogger(__name__)


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


def rollback(store: TargetStore[Any], target: TargetSettings,
             clock: Callable[[], float]) -> RollbackResult:
    """Swap the target's content with its kept previous content, in one write conditional on
    the version read (a concurrent write makes it a CONFLICT)."""
    snapshot = store.read_target(target)
    result = RollbackResult(target.ref, dry_run=store.dry_run)
    if snapshot is None:
        result.message = "does not exist; nothing to roll back"
        return result
    if snapshot.previous is None or snapshot.payload is None or snapshot.previous == snapshot.payload:
        result.message = ("nothing to roll back: no previous content is kept (the syncer keeps one "
                          "before each write that changes the content)")
        return result
    try:
        current = snapshot.document()
        # Parsed by the rules of the target kind: a file kept before its first login had no "auths".
        restored = snapshot.parse(snapshot.previous)
    except dockerconfig.MalformedError as exc:
        result.message = f"refused: the content is malformed ({exc}); fix it by hand"
        return result
    result.changed = differences(current, restored)
    stamp = rfc3339(clock())
    if store.dry_run:
        result.ok, result.message = True, "would restore the previous content (dry-run; nothing written)"
        return result
    try:
        store.update(snapshot, snapshot.previous, {LAST_WRITE: stamp, ROLLED_BACK: stamp}, snapshot.payload)
    except TargetError as exc:
        result.message = f"not rolled back: {exc}" + (
            "; re-run to roll back the current state" if exc.kind is TargetErrorKind.CONFLICT else "")
        return result
    log.info("rolled back %s (%d changes)", target.ref, len(result.changed))
    result.ok = True
    result.message = ("restored the previous content; the replaced content is kept, so a second "
                      "rollback undoes this one")
    return result


def rollback_secret(store: TargetStore[Any], namespace: str, name: str,
                    clock: Callable[[], float]) -> RollbackResult:
    """Roll back a Secret target (resourceVersion precondition: a concurrent write gives 409)."""
    return rollback(store, TargetSettings(namespace=namespace, name=name), clock)


def rollback_file(files: TargetStore[Any], path: str, clock: Callable[[], float]) -> RollbackResult:
    """Roll back a file target (content-token precondition)."""
    return rollback(files, TargetSettings(namespace="", name="", file=path), clock)
