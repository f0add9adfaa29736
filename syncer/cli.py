"""Command line: parse, validate, wire clients, run. No business logic lives here."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kubernetes import client as k8s
from kubernetes.config.config_exception import ConfigException
from prometheus_client import CollectorRegistry

from syncer import __version__, commands, config, kube, logs, probe, vault
from syncer.config import Settings
from syncer.events import EventRecorder
from syncer.health import Health, make_server
from syncer.leader import LeaseElector
from syncer.metrics import Metrics
from syncer.scheduler import Daemon
from syncer.sync import Summary, Syncer, events_for

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
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
    api_client: k8s.ApiClient
    recorder: EventRecorder | None

    def publish(self, summary: Summary) -> None:
        """Events for a finished cycle (never in dry-run: events_for returns none)."""
        if self.recorder is not None:
            self.recorder.emit_all(events_for(summary))


def build_app(settings: Settings, env: Mapping[str, str], dry_run: bool) -> App:
    """Construct every client from settings and hand them to the Syncer."""
    try:
        api_client = kube.make_api_client(settings.kubernetes, env)
    except (ConfigException, OSError) as exc:
        problem = f"kubernetes.kubeconfig: cannot load Kubernetes config ({exc})"
        raise config.ConfigError([problem]) from None
    core = k8s.CoreV1Api(api_client)
    store = kube.SecretStore(core, settings.kubernetes, dry_run=dry_run)
    source = vault.VaultSource(vault.make_client(settings.vault), settings.vault)
    prober = probe.Prober(probe.make_session(settings.probe), settings.probe)
    recorder = EventRecorder(core, settings.kubernetes) if settings.kubernetes.events else None
    return App(settings, Syncer(settings, source, store, prober), api_client, recorder)


def install_signal_handlers(stop: threading.Event) -> None:
    """First SIGTERM/SIGINT: finish the in-flight write and shut down. Second: exit at once."""

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            log.warning("second %s: exiting immediately", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s received: finishing in-flight work and shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def maintain_vault(source: vault.VaultSource) -> float | None:
    """Renew (or re-login) between runs; returns the token's remaining TTL."""
    try:
        source.ensure_login()
    except vault.VaultError as exc:
        log.warning("Vault token maintenance failed: %s", exc)
    return source.token_ttl()


def make_daemon(app: App, stop: threading.Event) -> tuple[Daemon, CollectorRegistry]:
    """The daemon and the metrics registry it feeds."""
    settings = app.settings
    registry = CollectorRegistry()
    metrics = Metrics(registry, settings)
    health = Health(settings.schedule.interval, settings.schedule.staleness)
    leader = None
    if settings.leader_election.enabled:
        leader = LeaseElector(k8s.CoordinationV1Api(app.api_client), settings.leader_election)
    daemon = Daemon(settings.schedule, app.syncer, metrics, health, stop, leader=leader,
                    publish=app.publish, vault_maintain=lambda: maintain_vault(app.syncer.vault),
                    renew_period=settings.leader_election.renew_period)
    return daemon, registry


def run_daemon(app: App, stop: threading.Event) -> int:
    """Serve metrics and health, run the scheduler until a signal, then shut down cleanly."""
    listen = app.settings.metrics
    daemon, registry = make_daemon(app, stop)
    try:
        server = make_server(listen.host, listen.port, registry, daemon.health)
    except OSError as exc:
        log.error("cannot listen on %s:%d for metrics: %s", listen.host, listen.port, exc)
        return EXIT_FAILED
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("serving /metrics, /healthz, /readyz on %s:%d", listen.host, server.server_address[1])
    daemon.start()
    stop.wait()
    daemon.shutdown()
    server.shutdown()
    server.server_close()
    log.info("shut down cleanly")
    return EXIT_OK


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    env = os.environ if env is None else env
    try:
        args = build_parser().parse_args(argv)
        if args.command:
            return commands.run(args, sys.argv[1:] if argv is None else argv, env)
        settings = load_settings(args.config, env)
        logs.setup(args.log_format, args.log_level)
        app = build_app(settings, env, args.dry_run)
    except UsageError as exc:
        print(f"syncer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except config.ConfigError as exc:
        print("syncer: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    log.info("syncer %s starting: %d registries, %d targets%s", __version__,
             len(settings.registries), len(settings.targets), " (dry-run)" if args.dry_run else "")
    try:
        if not args.once:
            stop = threading.Event()
            install_signal_handlers(stop)
            return run_daemon(app, stop)
        summary = app.syncer.run_once()
        app.publish(summary)
        print_summary(summary)
        return summary.exit_code
    finally:
        app.syncer.vault.close()


def print_summary(summary: Summary) -> None:
    """The human summary of a --once run, on stdout."""
    print(summary.render())


def main_entry() -> None:
    """Console-script wrapper."""
    sys.exit(main())
