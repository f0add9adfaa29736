"""Operator triggers for the daemon: SIGHUP reloads the config file, SIGUSR1 runs a full cycle now.

The signal handler only counts the signal (no lock, no I/O, no logging: it interrupts the main
thread anywhere). The daemon's main loop calls ``Triggers.dispatch`` between waits, and the work
happens there. A reload validates the whole file first: an invalid one keeps the running
configuration and logs every problem with its key path.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
from collections.abc import Callable, Mapping

from syncer import config
from syncer.config import Settings
from syncer.text import safe

log = logging.getLogger(__name__)

RELOAD_SIGNAL = signal.SIGHUP
FULL_SIGNAL = signal.SIGUSR1
CHECK_EVERY = 0.1
"""Seconds between looks at the counters (the main loop's wait; also bounds SIGTERM latency)."""
RESTART_SECTIONS = ("vault", "kubernetes", "probe", "schedule", "metrics", "sync", "leader_election")
"""Sections a reload does not apply (clients, listeners, pools and jobs are built at start)."""


class Triggers:
    """Signals received, counted by the handler and taken by the main loop."""

    def __init__(self) -> None:
        self._received = {RELOAD_SIGNAL: 0, FULL_SIGNAL: 0}
        self._taken = dict(self._received)

    def handler(self, signum: int, _frame: object) -> None:
        """The signal handler: an int increment, safe anywhere in the main thread."""
        self._received[signal.Signals(signum)] += 1

    def take(self, signum: signal.Signals) -> bool:
        """Whether ``signum`` arrived since the last take."""
        received = self._received[signum]
        if received == self._taken[signum]:
            return False
        self._taken[signum] = received
        return True

    def dispatch(self, reload: Callable[[], None], full: Callable[[], None]) -> None:
        """Act on what arrived: a reload first (its new targets then get the full cycle)."""
        if self.take(RELOAD_SIGNAL):
            reload()
        if self.take(FULL_SIGNAL):
            full()


def reload_settings(path: str, env: Mapping[str, str], current: Settings) -> Settings | None:
    """The settings to run with after a reload, or None (logged) when the file is invalid.

    Registries and targets are applied; a change elsewhere is named and kept for the restart.
    """
    log.info("SIGHUP: reloading %s", safe(path, 300))
    try:
        new = config.load(path, env)
    except config.ConfigError as exc:
        log.error("config reload: %s is invalid (%d problems); keeping the running configuration",
                  safe(path, 300), len(exc.problems))
        for problem in exc.problems:
            log.error("config reload:   %s", safe(problem, 500))
        return None
    kept = [name for name in RESTART_SECTIONS if getattr(new, name) != getattr(current, name)]
    if kept:
        log.warning("config reload: [%s] changed; restart the syncer to apply that (kept as running)",
                    "], [".join(kept))
    applied = dataclasses.replace(current, registries=new.registries, targets=new.targets)
    log.info("config reload: %d registries, %d targets", len(applied.registries), len(applied.targets))
    return applied
