"""The daemon: one APScheduler job running ``Syncer.run_once``, with backoff, health and leadership.

APScheduler 3.x: one job, ``max_instances=1`` and ``coalesce=True`` so runs never
overlap or pile up, first run at start. After a failed run the next run is
pulled forward with capped exponential backoff; a success returns to the
normal cadence.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from syncer.config import ScheduleSettings, Settings
from syncer.health import Health
from syncer.metrics import Metrics
from syncer.reactor import Batch, Reactor
from syncer.report import Summary
from syncer.sync import Syncer
from syncer.vault_watch import VersionWatcher
from syncer.watching import Watching

log = logging.getLogger(__name__)

SYNC_JOB = "sync"
LEADER_JOB = "leader"
VAULT_JOB = "vault"
POLL_JOB = "vault-poll"
CRON_SAMPLES = 60
"""Consecutive cron fire times inspected for the longest gap (covers weekly patterns)."""


class Leader(Protocol):
    """What the daemon needs from leader election."""

    @property
    def is_leader(self) -> bool: ...

    def step(self) -> bool:
        """Acquire or renew the lease once; returns whether this replica leads."""

    def release(self) -> None:
        """Give the lease up so another replica can take over at once."""


class StopWhen:
    """The Syncer's ``should_stop``: writes stop between targets once shutdown is requested or,
    with leader election, once the lease is lost mid-run. Built first and handed to the Syncer's
    constructor; the Daemon gets the same event and leader."""

    def __init__(self, stop: threading.Event, leader: Leader | None = None) -> None:
        self.stop = stop
        self.leader = leader

    def __call__(self) -> bool:
        return self.stop.is_set() or (self.leader is not None and not self.leader.is_leader)


def make_trigger(settings: ScheduleSettings) -> BaseTrigger:
    """Cron when configured, else the interval with jitter."""
    if settings.cron:
        return CronTrigger.from_crontab(settings.cron)
    return IntervalTrigger(seconds=settings.interval, jitter=settings.jitter or None)


def run_period(settings: ScheduleSettings, now: datetime | None = None) -> float:
    """Seconds between scheduled runs, for health: the interval, or for a cron schedule the longest
    gap among its next fire times (``0 9 * * 1-5`` leaves a weekend), never the unused interval."""
    if not settings.cron:
        return settings.interval
    trigger = make_trigger(settings)
    fire = trigger.get_next_fire_time(None, now or datetime.now(UTC))
    longest = 0.0
    for _ in range(CRON_SAMPLES):
        following = trigger.get_next_fire_time(fire, fire) if fire else None
        if following is None:
            break
        longest = max(longest, (following - fire).total_seconds())
        fire = following
    return longest or settings.interval


def backoff_delay(failures: int, settings: ScheduleSettings) -> float:
    """retry_min, doubled per consecutive failure, capped at retry_max."""
    return float(min(settings.retry_max, settings.retry_min * 2 ** max(0, failures - 1)))


class Daemon:
    """Wires the Syncer to a scheduler, metrics, health, events and an optional leader."""

    def __init__(
        self,
        settings: ScheduleSettings,
        syncer: Syncer,
        metrics: Metrics,
        health: Health,
        stop: threading.Event,
        *,
        leader: Leader | None = None,
        publish: Callable[[Summary], None] = lambda summary: None,
        vault_maintain: Callable[[], float | None] = lambda: None,
        scheduler: BackgroundScheduler | None = None,
        renew_period: float = 5.0,
        reactor: Reactor | None = None,
        watcher: VersionWatcher | None = None,
        watching: Watching | None = None,
    ) -> None:
        self.settings = settings
        self.syncer = syncer
        self.metrics = metrics
        self.health = health
        self.stop = stop
        self.leader = leader
        self.publish = publish
        self.vault_maintain = vault_maintain
        self.scheduler = scheduler or BackgroundScheduler(timezone="UTC")
        self.renew_period = renew_period
        self.reactor = reactor
        """Runs scoped syncs (``run_batch``) for watch events and Vault changes."""
        self.watcher = watcher
        """Polls Vault for new credential versions every ``vault.poll_interval``."""
        self.watching = watching
        """The Kubernetes watches (on every replica: a new leader's caches are warm)."""
        self.failures = 0
        self.runs = 0
        self._running = threading.Lock()
        """Held by every run, full or scoped: they never overlap."""

    def start(self) -> None:
        """Schedule the jobs (sync runs at once) and start the scheduler thread."""
        now = datetime.now(self.scheduler.timezone)
        if self.leader is not None:
            self.scheduler.add_job(self.leader_step, IntervalTrigger(seconds=self.renew_period),
                                   id=LEADER_JOB, max_instances=1, coalesce=True, next_run_time=now)
        self.scheduler.add_job(self.run_cycle, make_trigger(self.settings), id=SYNC_JOB,
                               max_instances=1, coalesce=True, next_run_time=now,
                               misfire_grace_time=None)
        vault_every = IntervalTrigger(seconds=min(60.0, self.settings.interval))
        self.scheduler.add_job(self.maintain_vault, vault_every, id=VAULT_JOB, max_instances=1,
                               coalesce=True)
        poll = self.syncer.settings.vault.poll_interval
        if self.watcher is not None and poll > 0:
            self.scheduler.add_job(self.poll_vault, IntervalTrigger(seconds=poll), id=POLL_JOB,
                                   max_instances=1, coalesce=True)
        if self.reactor is not None:
            self.reactor.start(self.run_batch)
        if self.watching is not None:
            self.watching.start()
        self.scheduler.start()

    def leader_step(self) -> None:
        """Acquire or renew the lease; on gaining it, sync at once."""
        assert self.leader is not None
        was = self.leader.is_leader
        leads = self.leader.step() and not self.stop.is_set()
        self.metrics.leader.set(1 if leads else 0)
        self.health.standby = not leads
        if leads and not was:
            log.info("became leader; syncing now")
            self.scheduler.modify_job(SYNC_JOB, next_run_time=datetime.now(self.scheduler.timezone))

    def maintain_vault(self) -> None:
        """Renew the Vault token between runs and export its TTL."""
        if self.leader is not None and not self.leader.is_leader:
            return
        self.metrics.set_token_ttl(self.vault_maintain())

    def run_cycle(self) -> Summary | None:
        """The scheduled job. Never raises: a crash would only be logged by APScheduler."""
        with self._running:
            # Checked under the lock: shutdown() waits on it, then releases the lease and revokes
            # the Vault token, so a run that got past these checks must not start afterwards.
            if self.stop.is_set():
                return None
            if self.leader is not None and not self.leader.is_leader:
                log.debug("not the leader; skipping this run")
                return None
            self.health.run_started()
            try:
                summary = self.syncer.run_once()
            except Exception:  # noqa: BLE001 - the daemon must survive any bug in one run
                log.exception("sync run crashed")
                self.metrics.observe_crash()
                self.health.run_finished(False)
                self._after(False)
                return None
            self.runs += 1
            self.metrics.observe(summary)
            self.metrics.set_token_ttl(self.syncer.vault.token_ttl())
            self.metrics.set_vault_logins(self.syncer.vault.logins)
            self.publish(summary)
            self.health.run_finished(summary.ok)
            self._after(summary.ok)
            return summary

    def _leads(self) -> bool:
        return not self.stop.is_set() and (self.leader is None or self.leader.is_leader)

    def poll_vault(self) -> None:
        """The poll job: look for new credential versions (leader only; a standby forgets)."""
        if self.watcher is None:
            return
        if not self._leads():
            self.watcher.reset()
            return
        self.watcher.poll(self.syncer.settings.registries)

    def run_batch(self, batch: Batch) -> Summary | None:
        """The reactor's run: a scoped sync under the cycle's lock, leader only. A batch that
        asks for a full cycle hands it to the scheduled job instead (it covers the scope)."""
        if batch.full:
            self.request_full(", ".join(batch.full))
            return None
        with self._running:
            if not self._leads():
                log.debug("not the leader; ignoring %s", batch.scope.describe())
                return None
            try:
                summary = self.syncer.run_once(batch.scope)
            except Exception:  # noqa: BLE001 - the daemon must survive any bug in one run
                log.exception("scoped sync crashed")
                self.metrics.errors.labels("sync").inc()
                return None
            self.metrics.observe_scoped(summary)
            self.publish(summary)
            return summary

    def request_full(self, reason: str) -> None:
        """Run the scheduled cycle now (SIGUSR1, a reload, an informer that lost track)."""
        if self.stop.is_set():
            return
        log.info("full cycle requested (%s); running it now", reason)
        try:
            self.scheduler.modify_job(SYNC_JOB, next_run_time=datetime.now(self.scheduler.timezone))
        except JobLookupError:
            log.debug("no sync job (not started or shutting down)")

    def reconfigure(self, settings: Settings) -> None:
        """Apply reloaded settings between runs, then run a full cycle with them."""
        with self._running:
            self.syncer.settings = settings
            self.metrics.reconfigure(settings)
            if self.watching is not None:
                self.watching.reconfigure(settings.targets)
        self.request_full("configuration reloaded")

    def _after(self, ok: bool) -> None:
        if ok:
            if self.failures:
                log.info("run succeeded after %d failed runs; back to the normal schedule", self.failures)
            self.failures = 0
            return
        self.failures += 1
        if self.stop.is_set():
            return  # shutting down: no retry to schedule
        delay = backoff_delay(self.failures, self.settings)
        job = self.scheduler.get_job(SYNC_JOB)
        if job is None:
            return
        retry_at = datetime.now(self.scheduler.timezone) + timedelta(seconds=delay)
        if job.next_run_time is None or retry_at < job.next_run_time:
            log.info("run failed (%d in a row); retrying in %.0fs", self.failures, delay)
            job.modify(next_run_time=retry_at)

    def shutdown(self) -> None:
        """Finish the in-flight write, stop the scheduler, release the lease."""
        self.stop.set()
        if self.scheduler.running:
            # Not shutdown(wait=True): it holds the job-store lock while it waits, and a failed
            # in-flight run needs that lock to schedule its retry (a deadlock on SIGTERM).
            self.scheduler.shutdown(wait=False)
        if self.watching is not None:
            self.watching.stop()  # streams closed at once; nothing more is submitted
        if self.reactor is not None:
            self.reactor.stop()
        with self._running:
            pass  # the in-flight run, if any, finishes its current write
        if self.leader is not None and self.leader.is_leader:
            self.leader.release()
        self.metrics.leader.set(0)
