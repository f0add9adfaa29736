"""The daemon's watches (issue #14): ``informer.TargetWatches`` feeding the reactor through
``watch_react.WatchBridge``, and their caches read by the cycle instead of GETs and LISTs.

``Watching(api, targets)`` is built with the app (``[kubernetes] watch = true``, daemon only) and
handed to ``kube.SecretStore`` and ``kube.FanOut`` as their ``WatchCache``; ``connect(reactor,
observer)`` names where changes go; ``start()`` opens one watch per fixed target, one per fan-out
secret name and one per namespace selector (every replica runs them, so a new leader starts with
warm caches; ``Daemon.run_batch`` drops what a standby submits). The bridge is armed once every
watch has listed (or fallen back to polling): the first lists report every object as ADDED, which
the start-up cycle covers.

A watch that cannot be opened (403 without ``watch``, an old server) polls: its targets are read
with GET/LIST each cycle, as without watches. When such a watch opens again, a full cycle runs,
because what changed meanwhile cannot be attributed to one target.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from syncer.config import TargetSettings
from syncer.informer import TargetWatches
from syncer.kube_api import Api
from syncer.kube_watch import WatchMode, WatchObserver, WatchSpec
from syncer.scope import TargetKey
from syncer.watch_react import OwnWrites, WatchBridge

log = logging.getLogger(__name__)

SYNC_WAIT = 60.0
"""Seconds the bridge waits for the first lists before it arms anyway (a slow API server)."""
ARM_POLL = 0.05
"""Seconds between looks at the informers while waiting to arm."""


class Submitter(Protocol):
    """What the watches hand their changes to (``reactor.Reactor``)."""

    def submit_targets(self, reason: str, keys: Iterable[TargetKey]) -> None: ...

    def submit_full(self, reason: str) -> None: ...


class WatchMetrics(WatchObserver, Protocol):
    """Where events, restarts and modes are counted (``metrics.Metrics``)."""

    def watch_modes(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Watches by (resource, mode)."""


class Watching:
    """The watches of the configured targets, their caches, and the bridge to the reactor."""

    def __init__(self, api: Api, targets: Sequence[TargetSettings], *, sync_wait: float = SYNC_WAIT,
                 **reflector_options: Any) -> None:
        self.api = api
        self.targets: Sequence[TargetSettings] = targets
        """The targets watched (replaced by ``reconfigure``)."""
        self.sync_wait = sync_wait
        self._options = reflector_options
        self._reactor: Submitter | None = None
        self._observer: WatchMetrics | None = None
        self._lock = threading.Lock()
        self._watches: TargetWatches | None = None
        self._stopped = threading.Event()
        self._seen: dict[str, WatchMode] = {}
        """The last mode each watch reported, by ref."""
        self.ready = threading.Event()
        """Set once the bridge is armed (every watch listed or polling): changes are acted on."""
        self.own = OwnWrites()
        """Digests of what the syncer last wrote to each secret (``writing``)."""

    # ---- lifecycle (the daemon) --------------------------------------------------------------

    def connect(self, reactor: Submitter, observer: WatchMetrics | None = None) -> None:
        """Where changes go (before ``start``); ``observer`` counts events and restarts."""
        self._reactor, self._observer = reactor, observer

    def start(self) -> None:
        """Open the watches; the bridge arms on its own thread once they have listed."""
        if self._reactor is None:
            raise RuntimeError("Watching.connect(reactor) first")
        bridge = WatchBridge(lambda: self.targets, self._reactor, own=self.own)
        watches = TargetWatches(self.api, self.targets, on_secret=bridge.on_secret,
                                on_namespace=bridge.on_namespace, on_mode=self._mode_changed,
                                observer=self._observer, **self._options)
        with self._lock:
            self._watches = watches
        self._stopped.clear()
        self.ready.clear()
        self._report_modes()
        watches.start()
        threading.Thread(target=self._arm, args=(watches, bridge), name="watch-arm",
                         daemon=True).start()

    def stop(self, timeout: float = 1.0) -> None:
        """Close every watch at once (SIGTERM) and wait up to ``timeout`` for their threads."""
        self._stopped.set()
        with self._lock:
            watches, self._watches = self._watches, None
        if watches is not None:
            watches.stop(timeout)
        self._report_modes()

    def reconfigure(self, targets: Sequence[TargetSettings]) -> None:
        """Watch a reloaded configuration's targets (their reads GET until the new lists arrive)."""
        running = self._watches is not None
        self.stop()
        self.targets = targets
        if running:
            self.start()

    def _arm(self, watches: TargetWatches, bridge: WatchBridge) -> None:
        """Arm the bridge once every watch has listed or fallen back to polling."""
        waited = 0.0
        while not self._stopped.is_set() and waited < self.sync_wait:
            if all(i.synced or i.mode is WatchMode.POLLING for i in watches.informers):
                break
            self._stopped.wait(ARM_POLL)
            waited += ARM_POLL
        if self._stopped.is_set():
            return
        bridge.arm()
        self.ready.set()
        modes = watches.modes()
        log.info("watches ready: %d watching, %d polling",
                 sum(m is WatchMode.WATCHING for m in modes.values()),
                 sum(m is WatchMode.POLLING for m in modes.values()))

    def _mode_changed(self, spec: WatchSpec, mode: WatchMode, reason: str) -> None:
        """A watch that opens again after polling missed changes it cannot attribute."""
        before, self._seen[spec.ref] = self._seen.get(spec.ref), mode
        self._report_modes()
        if mode is WatchMode.WATCHING and before is WatchMode.POLLING and self._reactor is not None:
            self._reactor.submit_full(f"watch {spec.ref} resumed")

    def _report_modes(self) -> None:
        """``syncer_watches{resource,mode}``: the watches of each resource in each mode."""
        if self._observer is None:
            return
        watches = self._watches
        informers = [] if watches is None else watches.informers
        self._observer.watch_modes(Counter((i.spec.resource, i.mode.value) for i in informers))

    # ---- the cache (kube.WatchCache) ----------------------------------------------------------

    def cached_secret(self, namespace: str, name: str) -> tuple[bool, Mapping[str, Any] | None]:
        """(True, the cached secret or None when it does not exist) when a synced watch covers
        ``namespace/name``; (False, None) when it must be read from the API server."""
        watches = self._watches
        informer = None if watches is None else watches.secret_informer(namespace, name)
        if informer is None or not informer.synced:
            return False, None
        return True, informer.get(namespace, name)

    def writing(self, namespace: str, name: str, payload: bytes) -> None:
        """``kube.WatchCache.writing``: remembered, so the echo of this write is not a repair."""
        self.own.record(namespace, name, payload)

    def cached_namespaces(self, selector: str) -> list[str] | None:
        """The namespaces matching ``selector`` from its synced watch, else None (LIST them)."""
        watches = self._watches
        return None if watches is None else watches.namespaces(selector)

    def modes(self) -> dict[str, WatchMode]:
        """Each watch's mode by its ref."""
        watches = self._watches
        return {} if watches is None else watches.modes()
