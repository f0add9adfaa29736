"""Command line: parse, validate, wire clients, run. No business logic lives here."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CollectorRegistry

from syncer import __version__, commands, config, kube, kube_api, logs, vault
from syncer.commands import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from syncer.config import Settings
from syncer.events import EventRecorder
from syncer.filetarget import FileStore
from syncer.health import Health, Heartbeat, make_server
from syncer.leader import LeaseElector
from syncer.metrics import Metrics
from syncer.reactor import Reactor
from syncer.report import Summary, events_for
from syncer.scheduler import Daemon, StopWhen, run_period
from syncer.sync import Syncer
from syncer.triggers import CHECK_EVERY, FULL_SIGNAL, RELOAD_SIGNAL, Triggers, reload_settings
from syncer.vault_watch import VersionWatcher
from syncer.watching import Watching

log = logging.getLogger(__name__)

LOG_LEVELS = ("debug", "info", "warning", "error")


class UsageError(Exception):
    """Bad command line or environment: exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The ``syncer`` argument parser."""
    parser = _Parser(prog="syncer", description=(
        "Sync container-registry credentials from Vault into Kubernetes "
        "dockerconfigjson secrets, verifying each login first."))
    parser.add_argument("--config", help="TOML config file (default: $SYNCER_CONFIG)")
    parser.add_argument("--once", action="store_true", help="run one sync cycle and exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="read and probe everything, print what would change, write nothing")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default="info")
    parser.add_argument("--version", action="version", version=f"syncer {__version__}")
    commands.add_subcommands(parser, LOG_LEVELS)
    return parser


def load_settings(path: str | None, env: Mapping[str, str]) -> Settings:
    """Resolve the config path (flag, then SYNCER_CONFIG) and validate the file."""
    path = path or env.get("SYNCER_CONFIG")
    if not path:
        raise UsageError("no config file: pass --config PATH or set SYNCER_CONFIG")
    return config.load(path, env)


@dataclass
class App:
    """Everything main() wires together from the settings."""

    settings: Settings
    syncer: Syncer
    api: kube_api.Api
    recorder: EventRecorder | None
    stop: threading.Event
    """Set on SIGTERM/SIGINT (or by the daemon's shutdown); the Syncer stops between writes."""
    heartbeat: Heartbeat
    """The Syncer's progress, for /healthz."""
    leader: LeaseElector | None = None
    """The Lease elector, for a daemon with leader election."""
    config_path: str = ""
    """The config file, re-read on SIGHUP."""
    env: Mapping[str, str] = field(default_factory=dict)
    """The environment the settings were read with (for a reload)."""
    watching: Watching | None = None
    """The daemon's watches (``kubernetes.watch``), whose caches the stores read."""

    def publish(self, summary: Summary) -> None:
        """Events for a finished cycle (never in dry-run: events_for returns none)."""
        if self.recorder is not None:
            self.recorder.emit_all(events_for(summary))


def build_app(settings: Settings, env: Mapping[str, str], dry_run: bool, *, daemon: bool = False,
              stop: threading.Event | None = None) -> App:
    """Construct every client from settings and hand them to the Syncer.

    The stop event, the leader (``daemon=True`` with leader election) and the heartbeat are made
    first, so the Syncer gets them in its constructor and ``make_daemon`` reuses the same ones.
    """
    stop = stop if stop is not None else threading.Event()
    api, source, prober = commands.build_clients(settings, env)
    # Watches only serve a daemon: a one-shot run would wait for lists it reads once anyway.
    watching = Watching(api, settings.targets) if daemon and settings.kubernetes.watch else None
    # Each open watch holds a pooled connection for minutes: without room for them, the workers'
    # connections were discarded after use ("Connection pool is full"), one TLS handshake each.
    streams = sum(2 if t.namespace_selector else 1 for t in settings.targets if not t.file)
    kube_api.size_connection_pool(api, settings.sync.concurrency + (streams if watching else 0))
    store = kube.SecretStore(api, dry_run=dry_run, cache=watching)
    fanout = kube.FanOut(api, dry_run, cache=watching)
    recorder = (EventRecorder(api, settings.kubernetes, workers=settings.sync.concurrency)
                if settings.kubernetes.events else None)
    leader = (LeaseElector(api, settings.leader_election)
              if daemon and settings.leader_election.enabled else None)
    heartbeat = Heartbeat()
    syncer = Syncer(settings, source, store, prober, should_stop=StopWhen(stop, leader),
                    progress=heartbeat.beat, fanout=fanout, files=FileStore(dry_run))
    return App(settings, syncer, api, recorder, stop, heartbeat, leader, env=env, watching=watching)


def install_signal_handlers(stop: threading.Event) -> dict[int, Any]:
    """First SIGTERM/SIGINT: finish the in-flight write and shut down. Second: exit at once.

    Returns the handlers replaced, for ``restore_signal_handlers``.
    """

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            log.warning("second %s: exiting immediately", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s received: finishing in-flight work and shutting down", signal.Signals(signum).name)
        stop.set()

    return {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)}


def install_trigger_handlers(triggers: Triggers) -> dict[int, Any]:
    """SIGHUP (reload the config) and SIGUSR1 (full cycle now), recorded for the main loop."""
    return {signum: signal.signal(signum, triggers.handler) for signum in (RELOAD_SIGNAL, FULL_SIGNAL)}


def restore_signal_handlers(previous: dict[int, Any]) -> None:
    """Put back what ``install_signal_handlers`` replaced (main() may run inside another program)."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def maintain_vault(source: vault.VaultSource) -> float | None:
    """Renew (or re-login) between runs; returns the token's remaining TTL."""
    try:
        source.ensure_login()
    except vault.VaultError as exc:
        log.warning("Vault token maintenance failed: %s", exc)
    return source.token_ttl()


def make_daemon(app: App) -> tuple[Daemon, CollectorRegistry]:
    """The daemon (for an app built with ``daemon=True``) and the metrics registry it feeds."""
    settings = app.settings
    if settings.leader_election.enabled and app.leader is None:
        raise ValueError("leader election is enabled: build the app with build_app(..., daemon=True)")
    registry = CollectorRegistry()
    metrics = Metrics(registry, settings)
    period = run_period(settings.schedule)
    scheduler = BackgroundScheduler(timezone="UTC")
    # A cycle may legitimately run up to its deadline; only one that stops progressing is stuck.
    health = Health(period, settings.schedule.stale_after or 3 * period,
                    stuck_after=max(3 * period, settings.schedule.run_timeout),
                    heartbeat=app.heartbeat, scheduler_alive=lambda: bool(scheduler.running))
    reactor = Reactor(metrics)
    watcher = VersionWatcher(app.syncer.vault, reactor.submit_registries, reactor.clock)
    if app.watching is not None:
        app.watching.connect(reactor, metrics)
    daemon = Daemon(settings.schedule, app.syncer, metrics, health, app.stop, leader=app.leader,
                    publish=app.publish, vault_maintain=lambda: maintain_vault(app.syncer.vault),
                    scheduler=scheduler, renew_period=settings.leader_election.renew_period,
                    reactor=reactor, watcher=watcher, watching=app.watching)
    return daemon, registry


def run_daemon(app: App) -> int:
    """Serve metrics and health, run the scheduler until a signal, then shut down cleanly."""
    listen = app.settings.metrics
    daemon, registry = make_daemon(app)
    try:
        server = make_server(listen.host, listen.port, registry, daemon.health, listen)
    except OSError as exc:
        log.error("cannot listen on %s:%d for metrics: %s", listen.host, listen.port, exc)
        return EXIT_FAILED
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("serving /metrics, /healthz, /readyz on %s:%d", listen.host, server.server_address[1])
    triggers = Triggers()
    previous = install_trigger_handlers(triggers)
    daemon.start()
    try:
        # Signals are only counted by their handler; reload and full cycle happen here.
        while not app.stop.wait(CHECK_EVERY):
            triggers.dispatch(lambda: reload(app, daemon), lambda: daemon.request_full("SIGUSR1"))
    finally:
        restore_signal_handlers(previous)
    daemon.shutdown()
    server.shutdown()
    server.server_close()
    log.info("shut down cleanly")
    return EXIT_OK


def reload(app: App, daemon: Daemon) -> None:
    """SIGHUP: validate the config file and apply it, or keep the running one (all logged)."""
    settings = reload_settings(app.config_path, app.env, app.syncer.settings)
    if settings is not None:
        app.settings = settings
        daemon.reconfigure(settings)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    env = os.environ if env is None else env
    try:
        args = build_parser().parse_args(argv)
        if args.command:
            return commands.run(args, sys.argv[1:] if argv is None else argv, env)
        settings = load_settings(args.config, env)
        logs.setup(args.log_format, args.log_level)
        app = build_app(settings, env, args.dry_run, daemon=not args.once)
        app.config_path = args.config or env.get("SYNCER_CONFIG", "")
    except UsageError as exc:
        print(f"syncer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except config.ConfigError as exc:
        return commands.report_config_error(exc)
    log.info("syncer %s starting: %d registries, %d targets%s", __version__,
             len(settings.registries), len(settings.targets), " (dry-run)" if args.dry_run else "")
    # A CronJob pod gets SIGTERM too: the Syncer (built with app.stop) stops before the next
    # write, then the login is revoked below.
    previous = install_signal_handlers(app.stop)
    try:
        if not args.once:
            return run_daemon(app)
        summary = app.syncer.run_once()
        app.publish(summary)
        print_summary(summary)
        return summary.exit_code
    finally:
        app.syncer.vault.close()
        restore_signal_handlers(previous)


def print_summary(summary: Summary) -> None:
    """The human summary of a --once run, on stdout."""
    print(summary.render())


def main_entry() -> None:
    """Console-script wrapper."""
    sys.exit(main())
