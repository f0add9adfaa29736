"""Vault change detection: each poll asks Vault once per registry path whether its credential
changed (``VaultSource.change_marker``: the KV v2 metadata's current version, or a keyed digest
of the KV v1 data) and hands the registries that changed to the reactor.

The first poll (and the first after leadership was regained) only records what it sees: the
full cycle that runs on start and on gaining the lease covers anything older. Steady state
costs exactly one Vault request per distinct registry path per poll.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

from syncer.config import RegistrySettings
from syncer.reactor import VAULT_CHANGED
from syncer.text import safe
from syncer.vault import VaultError, VaultErrorKind, VaultSource

log = logging.getLogger(__name__)

MISSING = "missing"
"""Marker of a path Vault has no secret at: its creation later counts as a change."""
Submit = Callable[[str, Iterable[str], float], None]
"""``Reactor.submit_registries``."""


class VersionWatcher:
    """Polls the change marker of every registry path; submits the hosts whose marker moved."""

    def __init__(self, source: VaultSource, submit: Submit,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.submit = submit
        self.clock = clock
        """The reactor's clock: ``seen_at`` is measured on it."""
        self._markers: dict[str, str] = {}
        self._warned: dict[str, str] = {}
        """Path -> error kind already logged (one warning per path until it recovers)."""

    def reset(self) -> None:
        """Forget what was seen (leadership lost: the next leader's full cycle starts afresh)."""
        self._markers.clear()

    def poll(self, registries: Sequence[RegistrySettings]) -> list[str]:
        """One poll over ``registries``; returns (and submits) the hosts that changed."""
        hosts_by_path: dict[str, list[str]] = {}
        for registry in registries:
            hosts_by_path.setdefault(registry.path, []).append(registry.host)
        changed: list[str] = []
        for path, hosts in hosts_by_path.items():
            marker = self._marker(path)
            if marker is None:
                continue  # unknown this time: keep the last one, decide next poll
            previous = self._markers.get(path)
            self._markers[path] = marker
            if previous is not None and previous != marker:
                changed += hosts
        if changed:
            self.submit(VAULT_CHANGED, changed, self.clock())
        # Paths no longer configured (after a reload) are forgotten.
        for gone in set(self._markers) - set(hosts_by_path):
            del self._markers[gone]
        return changed

    def _marker(self, path: str) -> str | None:
        try:
            marker = self.source.change_marker(path)
        except VaultError as exc:
            if exc.kind is VaultErrorKind.MISSING:
                return MISSING
            if self._warned.get(path) != exc.kind.value:
                self._warned[path] = exc.kind.value
                hint = (f" (the Vault policy needs read on {self.source.metadata_path(path)})"
                        if exc.kind is VaultErrorKind.FORBIDDEN else "")
                log.warning("Vault change detection for %s failed: %s%s; changes wait for the "
                            "next cycle", self.source.metadata_path(path), safe(exc, 300), hint)
            return None
        if self._warned.pop(path, None) is not None:
            log.info("Vault change detection for %s works again", self.source.metadata_path(path))
        return marker
