"""Operator subcommands: ``syncer check``, ``syncer show`` and ``syncer rollback``.

Wiring only (parse, build clients, print); the logic lives in check, show and history.
``syncer --config X [--once]`` without a subcommand is handled by cli as before.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import yaml
from kubernetes.config.config_exception import ConfigException

from syncer import config, kube, kube_api, logs, probe, show_image, transport, vault
from syncer.check import Preflight, config_failure
from syncer.config import Settings, TargetSettings
from syncer.config_parse import name_problem
from syncer.filetarget import FileStore
from syncer.history import rollback_file, rollback_secret
from syncer.proxies import ProxyEnv, proxy_problem, with_scheme
from syncer.show import Inspector, TargetView, render, to_json
from syncer.target_errors import TargetError
from syncer.text import json_safe, safe

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_subcommands(parser: argparse.ArgumentParser, log_levels: Sequence[str]) -> None:
    """``check``, ``show`` and ``rollback``; the global options may also follow the command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="TOML config file (default: $SYNCER_CONFIG)")
    common.add_argument("--log-format", choices=("text", "json"), default=argparse.SUPPRESS)
    common.add_argument("--log-level", type=str.lower, choices=log_levels, default=argparse.SUPPRESS,
                        help="default for subcommands: warning")
    sub = parser.add_subparsers(dest="command", metavar="{check,show,rollback}")
    check = sub.add_parser("check", parents=[common], help="read-only preflight of Vault, "
                           "Kubernetes, targets and registries; exit 0 if all pass, else 1")
    check.add_argument("--output", choices=("text", "json"), default="text")
    show = sub.add_parser("show", parents=[common], help="list each target's entries without "
                          "showing credentials")
    show.add_argument("--output", choices=("text", "json"), default="text")
    show.add_argument("--no-fingerprint", action="store_true",
                      help='print passwords as "set" instead of a sha256 prefix')
    show.add_argument("--image", default="", help="which auths entry kubelet would use for this "
                      "image reference, per target (and whether the syncer manages it)")
    show.add_argument("--service-account", default="", metavar="NS/NAME",
                      help="with --image: combine that ServiceAccount's imagePullSecrets as kubelet "
                      "does for its pods, and say which secret and entry wins")
    rollback = sub.add_parser("rollback", parents=[common], help="restore a target's content "
                              "from before the syncer's last write")
    rollback.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS,
                          help="show which hosts would change, write nothing")
    rollback.add_argument("--output", choices=("text", "json"), default="text")
    for p in (show, rollback):
        p.add_argument("--namespace", default="", help="namespace of the secret")
        p.add_argument("--name", default="", help="name of the secret")
        p.add_argument("--file", default="", help="a file target's path instead of a secret")


def run(args: argparse.Namespace, argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Run the chosen subcommand; returns the exit code."""
    explicit = any(a == "--log-level" or a.startswith("--log-level=") for a in argv)
    logs.setup(args.log_format, args.log_level if explicit else "warning")
    path = args.config or env.get("SYNCER_CONFIG")
    if not path:
        print("syncer: error: no config file: pass --config PATH or set SYNCER_CONFIG", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "rollback" and not (args.file or (args.namespace and args.name)):
        print("syncer: error: rollback needs --namespace and --name (or --file)", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = config.load(path, env)
        clients = build_clients(settings, env)
    except config.ConfigError as exc:
        if args.command == "check":
            return _emit(config_failure(exc.problems), args.output)
        return report_config_error(exc)
    source, api = clients.source, clients.api
    try:
        if args.command == "check":
            return _emit(Preflight(settings, source, api, clients.prober).run(), args.output)
        if args.command == "show":
            return _show(args, settings, source, api)
        return _rollback(args, api)
    finally:
        source.close()


class Clients(NamedTuple):
    """The clients built from validated settings."""

    api: kube_api.Api
    source: vault.VaultSource
    prober: probe.Prober


def build_clients(settings: Settings, env: Mapping[str, str]) -> Clients:
    """Kubernetes API client, Vault source and prober; a ConfigError names every key whose file
    (kubeconfig, CA bundle) cannot be used, so that exits 2 like any other config problem."""
    problems: list[str] = []
    api_client = vault_client = session = None
    try:
        api_client = kube_api.make_api_client(settings.kubernetes, env)
    except (ConfigException, OSError) as exc:
        problems.append(f"kubernetes.kubeconfig: cannot load Kubernetes config ({exc})")
    except yaml.YAMLError as exc:
        # Not str(exc): a YAML error quotes the offending line, which may hold a token.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problems.append(f"kubernetes.kubeconfig: kubeconfig is not valid YAML{where}")
    try:
        vault_client = vault.make_client(settings.vault)
    except ValueError as exc:
        problems.append(str(exc))
    try:
        session = transport.make_session(settings.probe)
    except ValueError as exc:
        problems.append(str(exc))
    proxy_env = ProxyEnv.from_environ(env)
    problems += _proxy_env_problems(proxy_env, settings)
    if problems or api_client is None or vault_client is None or session is None:
        raise config.ConfigError(problems)
    return Clients(kube_api.Api(api_client, settings.kubernetes.timeout),
                   vault.VaultSource(vault_client, settings.vault),
                   probe.Prober(session, settings.probe, proxy_env=proxy_env))


def _proxy_env_problems(proxy_env: ProxyEnv, settings: Settings) -> list[str]:
    """A proxy variable the probe would use must be a usable URL (named, never quoted)."""
    if settings.probe.proxy or not settings.probe.enabled:
        return []
    problems = []
    for var, value in (proxy_env.https, proxy_env.all):
        if value and (problem := proxy_problem(with_scheme(value))):
            problems.append(f"environment {var}: {problem}")
    return problems


def report_config_error(exc: config.ConfigError) -> int:
    """Print every problem (one key path each) on stderr; returns the usage exit code."""
    print("syncer: invalid configuration:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    return EXIT_USAGE


def _emit(report: Any, output: str) -> int:
    print(report.to_json() if output == "json" else report.render())
    return EXIT_OK if report.ok else EXIT_FAILED


def _show(args: argparse.Namespace, settings: Settings, source: vault.VaultSource,
          api: kube_api.Api) -> int:
    inspector = Inspector(settings, source, kube.SecretStore(api, dry_run=True),
                          kube.FanOut(api, dry_run=True), FileStore(dry_run=True),
                          fingerprint=not args.no_fingerprint)
    if args.service_account:
        return _show_account(args, inspector, kube.FanOut(api, dry_run=True))
    views = [inspector.view(t) for t in inspector.targets(args.namespace, args.name, args.file)]
    if args.image:
        return _show_image(args, views)
    print(to_json(views) if args.output == "json" else render(views) or "no targets match")
    return EXIT_OK if views and all(v.status == "ok" for v in views) else EXIT_FAILED


def _show_account(args: argparse.Namespace, inspector: Inspector, fanout: kube.FanOut) -> int:
    """``show --image REF --service-account NS/NAME``: the account's pull secrets, combined."""
    namespace, _, name = args.service_account.partition("/")
    if not args.image or name_problem(namespace, label=True) or name_problem(name):
        print(f"syncer: error: --service-account {safe(args.service_account)}: expected NAMESPACE/NAME "
              "(and --image REF)", file=sys.stderr)
        return EXIT_USAGE
    try:
        account = fanout.read_account(namespace, name)
    except TargetError as exc:
        print(f"syncer: error: {safe(exc)}", file=sys.stderr)
        return EXIT_FAILED
    if account is None:
        print(f"syncer: error: serviceaccount {namespace}/{name} does not exist", file=sys.stderr)
        return EXIT_FAILED
    names = [str(e.get("name", "")) for e in account.pull_secrets]
    # A name the API server could never have stored is skipped, as kubelet's GET would fail.
    views = [TargetView(f"{namespace}/{n}", "secret", "invalid name") if name_problem(n)
             else inspector.view(TargetSettings(namespace=namespace, name=n)) for n in names]
    try:
        repository, choice = show_image.choose_account(args.service_account, views, args.image)
    except ValueError as exc:
        print(f"syncer: error: --image {safe(args.image)}: {safe(exc)}", file=sys.stderr)
        return EXIT_USAGE
    out = show_image.account_json if args.output == "json" else show_image.render_account
    print(out(args.image, repository, choice))
    return EXIT_FAILED if choice.skipped else EXIT_OK


def _show_image(args: argparse.Namespace, views: list[TargetView]) -> int:
    try:
        repository, choices = show_image.choose(views, args.image)
    except ValueError as exc:
        print(f"syncer: error: --image {safe(args.image)}: {safe(exc)}", file=sys.stderr)
        return EXIT_USAGE
    out = show_image.to_json if args.output == "json" else show_image.render
    print(out(args.image, repository, choices))
    return EXIT_OK if choices and all(c.status == "ok" for c in choices) else EXIT_FAILED


def _rollback(args: argparse.Namespace, api: kube_api.Api) -> int:
    dry_run = bool(getattr(args, "dry_run", False))
    try:
        if args.file:
            result = rollback_file(FileStore(dry_run), args.file, time.time)
        else:
            store = kube.SecretStore(api, dry_run=dry_run)
            result = rollback_secret(store, args.namespace, args.name, time.time)
    except TargetError as exc:
        print(f"rollback: {safe(exc, 500)}", file=sys.stderr)
        return EXIT_FAILED
    if args.output == "json":
        print(json_safe(json.dumps({"target": result.target, "ok": result.ok, "dry_run": result.dry_run,
                                    "message": result.message, "changes": result.changed}, indent=2)))
    else:
        print(result.render())
    return EXIT_OK if result.ok else EXIT_FAILED
