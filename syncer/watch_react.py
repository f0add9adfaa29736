"""The bridge from the watch informers (``informer.TargetWatches``) to the reactor: which
watched change deserves a repair of which target.

* a managed secret DELETED, for a target with ``create = true``: ``secret_deleted``;
* a managed secret MODIFIED by someone else (its data or type changed while the syncer's
  ``last-write`` annotation did not, or was dropped), for a target with ``drift = "repair"``:
  ``entry_drifted``.
  The syncer's own writes are told apart by what they hold: ``OwnWrites`` keeps a digest of the
  ``.dockerconfigjson`` the syncer last wrote to each secret, and a change whose content is that
  one is its own echo. This also holds when a relist (after a dropped or expired watch) folds the
  syncer's write and a later foreign edit into one change: the ``last-write`` stamp then moved,
  yet the content is not the syncer's (found by the watch soak, docs/soak.md). The stamp rule
  only decides for secrets this process has not written yet;
* a namespace ADDED to a selector's watch (created with, or labelled into, the selector): every
  fan-out target of that selector in it, ``namespace_matched``.

Nothing is submitted before ``arm()``: the informers' first lists report every existing object as
ADDED, which is history the start-up cycle covers, not a change. Callbacks run on the informer
threads and only queue work.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from syncer.config import TargetSettings
from syncer.scope import TargetKey
from syncer.targets import LAST_WRITE

JSON = dict[str, Any]


class Submitter(Protocol):
    """``Reactor.submit_targets``."""

    def submit_targets(self, reason: str, keys: Iterable[TargetKey]) -> None: ...


class OwnWrites:
    """SHA-256 of the ``.dockerconfigjson`` the syncer last wrote, per secret (one per target:
    bounded by the configuration; a digest, never the content)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._digests: dict[TargetKey, bytes] = {}

    def record(self, namespace: str, name: str, payload: bytes) -> None:
        with self._lock:
            self._digests[(namespace, name)] = hashlib.sha256(payload).digest()

    def holds(self, namespace: str, name: str, obj: JSON) -> bool | None:
        """Whether ``obj`` holds what the syncer last wrote there; None: it never wrote there."""
        with self._lock:
            mine = self._digests.get((namespace, name))
        if mine is None:
            return None
        encoded = (obj.get("data") or {}).get(".dockerconfigjson")
        try:
            payload = base64.b64decode(encoded or "", validate=True)
        except (binascii.Error, ValueError):
            return False
        return hashlib.sha256(payload).digest() == mine


class WatchBridge:
    """Informer callbacks (``on_secret``, ``on_namespace``) that submit repairs to the reactor."""

    def __init__(self, targets: Callable[[], Sequence[TargetSettings]], reactor: Submitter,
                 own: OwnWrites | None = None) -> None:
        self.targets = targets
        """The configured targets, read at each event (a reload changes them)."""
        self.reactor = reactor
        self.own = own or OwnWrites()
        """What the syncer wrote (``Watching.writing`` records it)."""
        self._armed = threading.Event()

    def arm(self) -> None:
        """Start submitting: call once the informers are synced (``TargetWatches.wait_synced``)."""
        self._armed.set()

    def on_secret(self, kind: str, old: JSON | None, new: JSON | None) -> None:
        """``TargetWatches(on_secret=...)``."""
        meta = (new or old or {}).get("metadata", {})
        target = self._target(str(meta.get("namespace", "")), str(meta.get("name", "")))
        if not self._armed.is_set() or target is None:
            return
        key = (str(meta["namespace"]), target.name)
        if kind == "DELETED" and target.create:
            self.reactor.submit_targets("secret_deleted", [key])
        elif kind == "MODIFIED" and target.drift == "repair" and old and new and self._foreign(key, old, new):
            self.reactor.submit_targets("entry_drifted", [key])

    def on_namespace(self, kind: str, old: JSON | None, new: JSON | None, selector: str) -> None:
        """``TargetWatches(on_namespace=...)``."""
        if not self._armed.is_set() or kind != "ADDED" or new is None:
            return
        namespace = str(new.get("metadata", {}).get("name", ""))
        keys = [(namespace, t.name) for t in self.targets() if t.namespace_selector == selector]
        if namespace and keys:
            self.reactor.submit_targets("namespace_matched", keys)

    def _foreign(self, key: TargetKey, old: JSON, new: JSON) -> bool:
        """Someone else changed the content: not the syncer's own write (see the module docstring)."""
        if old.get("data") == new.get("data") and old.get("type") == new.get("type"):
            return False
        mine = self.own.holds(key[0], key[1], new)
        if mine is None:
            return _foreign_edit(old, new)
        return not mine or old.get("type") != new.get("type")

    def _target(self, namespace: str, name: str) -> TargetSettings | None:
        """The target a watched secret belongs to: a fixed one first, else a fan-out entry."""
        targets = [t for t in self.targets() if not t.file and t.name == name]
        fixed = [t for t in targets if not t.namespace_selector and t.namespace == namespace]
        fanout = [t for t in targets if t.namespace_selector]
        found = fixed or fanout
        return found[0] if found else None


def _foreign_edit(old: JSON, new: JSON) -> bool:
    """Content changed while the syncer's ``last-write`` stamp stayed or went (a replace by a
    platform upgrade drops it): someone else wrote. The syncer's own writes set a new stamp."""
    def stamp(obj: JSON) -> object:
        return (obj.get("metadata", {}).get("annotations") or {}).get(LAST_WRITE)

    changed = old.get("data") != new.get("data") or old.get("type") != new.get("type")
    return changed and (stamp(new) is None or stamp(old) == stamp(new))
