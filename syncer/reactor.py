"""The reactor: change requests in, scoped syncs out, on one worker thread.

Watches (secrets deleted or drifted, namespaces that start to match) and the Vault poller
submit requests from any thread. Requests are coalesced: a burst for one target, or for one
registry, becomes one entry, and the worker waits until no new request came for ``debounce``
seconds (at most ``max_delay`` after the first) before it runs them as one ``Scope``. The run
itself (``run``, the daemon's) takes the lock the scheduled cycle holds, checks leadership and
stop, and returns the Summary, so a scoped sync never overlaps the full cycle.

Submission API (the contract for the watch informers):

* ``submit_targets(reason, keys)``: re-sync these targets in full. ``reason`` is one of
  ``REPAIR_REASONS``; ``keys`` are ``(namespace, name)`` pairs.
* ``submit_registries(reason, hosts, seen_at)``: a registry's credential changed in Vault;
  ``seen_at`` is the reactor clock's time the change was noticed (for
  ``syncer_propagation_seconds``).
* ``submit_full(reason)``: something the informer cannot attribute (a relist): run the
  scheduled cycle now.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from syncer.report import Summary
from syncer.scope import REPAIR_REASONS, Scope, TargetKey, target_key

log = logging.getLogger(__name__)

__all__ = ["DEBOUNCE", "REPAIR_REASONS", "VAULT_CHANGED", "Batch", "Observer", "Reactor"]
VAULT_CHANGED = "vault_changed"
"""The ``reason`` the Vault poller submits with."""
DEBOUNCE = 0.2
"""Seconds without a new request before a batch runs."""
MAX_DELAY_FACTOR = 5
"""A batch runs at the latest ``debounce * MAX_DELAY_FACTOR`` after its first request."""


class Observer(Protocol):
    """Where the reactor reports what its runs achieved (the daemon's metrics)."""

    def propagated(self, seconds: float) -> None:
        """A new Vault version reached every affected target after ``seconds``."""

    def repaired(self, reason: str) -> None:
        """A target was written because of a ``submit_targets`` request."""


@dataclass
class Batch:
    """Coalesced requests, taken by the worker as one unit."""

    scope: Scope = field(default_factory=Scope)
    reasons: dict[TargetKey, str] = field(default_factory=dict)
    """Why each named target is in the batch (the first reason wins)."""
    seen_at: dict[str, float] = field(default_factory=dict)
    """Registry host -> when its new Vault version was first noticed."""
    full: list[str] = field(default_factory=list)
    """Reasons a full cycle was asked for (empty: none)."""

    def __bool__(self) -> bool:
        return bool(self.scope or self.full)


class Reactor:
    """A thread-safe, coalescing queue of change requests with one worker thread."""

    def __init__(self, observer: Observer, *, clock: Callable[[], float] = time.monotonic,
                 debounce: float = DEBOUNCE) -> None:
        self.observer = observer
        self.clock = clock
        """Also the clock of ``submit_registries``' ``seen_at``."""
        self.debounce = debounce
        self._cond = threading.Condition()
        self._batch = Batch()
        self._first: float | None = None
        self._last = 0.0
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.batches = 0
        """Batches run so far."""

    # ------------------------------------------------------------------ submission

    def submit_targets(self, reason: str, keys: Iterable[TargetKey]) -> None:
        """Re-sync these (namespace, name) targets in full, soon."""
        if reason not in REPAIR_REASONS:
            raise ValueError(f"unknown repair reason {reason!r}; expected one of {REPAIR_REASONS}")
        keys = frozenset(keys)
        with self._cond:
            for key in keys:
                self._batch.reasons.setdefault(key, reason)
            self._add(Scope(targets=keys))

    def submit_registries(self, reason: str, hosts: Iterable[str], seen_at: float) -> None:
        """These registries' credentials changed in Vault (noticed at ``seen_at``)."""
        hosts = frozenset(hosts)
        log.info("%s: re-syncing the targets of %s", reason, ", ".join(sorted(hosts)))
        with self._cond:
            for host in hosts:
                self._batch.seen_at[host] = min(seen_at, self._batch.seen_at.get(host, seen_at))
            self._add(Scope(registries=hosts))

    def submit_full(self, reason: str) -> None:
        """Ask for the whole cycle now."""
        with self._cond:
            self._batch.full.append(reason)
            self._add(Scope())

    def _add(self, scope: Scope) -> None:
        now = self.clock()
        if self._first is None:
            self._first = now
        self._last = now
        self._batch.scope = self._batch.scope | scope
        self._cond.notify()

    # ------------------------------------------------------------------ taking work

    def due_in(self) -> float | None:
        """Seconds until the pending batch is due (<= 0: now); None when nothing is pending."""
        with self._cond:
            return self._due_in()

    def _due_in(self) -> float | None:
        if not self._batch or self._first is None:
            return None
        now = self.clock()
        return min(self._last + self.debounce, self._first + self.debounce * MAX_DELAY_FACTOR) - now

    def take(self) -> Batch | None:
        """The pending batch if it is due, emptying the queue; else None."""
        with self._cond:
            due = self._due_in()
            if due is None or due > 0:
                return None
            batch, self._batch, self._first = self._batch, Batch(), None
            return batch

    def process(self, run: Callable[[Batch], Summary | None]) -> bool:
        """Run the pending batch if it is due; returns whether one ran. The worker's step (and a
        test's, with a fake clock)."""
        batch = self.take()
        if batch is None:
            return False
        self.batches += 1
        summary = run(batch)
        if summary is not None:
            self._account(batch, summary)
        return True

    def _account(self, batch: Batch, summary: Summary) -> None:
        """Propagation per changed registry (only when every affected target made it) and
        repairs per written target."""
        failed_hosts = {r.host for r in summary.registries if r.failed}
        now = self.clock()
        for host, seen in batch.seen_at.items():
            affected = [t for t in summary.targets if any(c.host == host for c in t.changes)
                        or host in t.held_back]
            if host not in failed_hosts and not any(t.failed or t.held_back for t in affected):
                self.observer.propagated(max(0.0, now - seen))
        for target in summary.targets:
            reason = batch.reasons.get(target_key(target.target))
            if reason is not None and target.writes:
                self.observer.repaired(reason)

    # ------------------------------------------------------------------ worker

    def start(self, run: Callable[[Batch], Summary | None]) -> None:
        """Start the worker thread; ``run`` executes one batch (the daemon's scoped run)."""
        self._thread = threading.Thread(target=self._work, args=(run,), name="reactor", daemon=True)
        self._thread.start()

    def _work(self, run: Callable[[Batch], Summary | None]) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                due = self._due_in()
                if due is None or due > 0:
                    self._cond.wait(due)
                    continue
            try:
                self.process(run)
            except Exception:  # noqa: BLE001 - the worker must outlive a bug in one batch
                log.exception("reacting to a change crashed")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking batches; wait for the one in flight (it stops between writes)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
