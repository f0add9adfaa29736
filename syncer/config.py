"""Load and validate the TOML configuration into frozen settings objects.

Every problem is collected with its key path (``registries[2].path``) and
reported at once, so a user fixes a config in one round trip. Environment
fallbacks (``VAULT_ADDR`` and friends) are applied here, from a mapping the
caller passes in: nothing else in the package reads the environment.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apscheduler.triggers.cron import CronTrigger

from syncer.config_parse import HOST, Section, name_problem, selector_problem
from syncer.hosts import normalize_key
from syncer.imageref import ImageRef, parse_image
from syncer.proxies import proxy_problem

DEFAULT_JWT_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
DEFAULT_AUDIENCE_JWT_FILE = "/var/run/secrets/vault/token"
"""jwt method: where deploy/ projects a ServiceAccount token with audience ``vault``."""
AUTH_METHODS = ("token", "approle", "kubernetes", "jwt", "cert")
DRIFT_MODES = ("repair", "report")


class ConfigError(Exception):
    """The configuration is invalid. ``problems`` holds one ``path: message`` per fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class VaultAuthSettings:
    """How the syncer logs in to Vault."""

    method: str = "kubernetes"
    """``token``, ``approle``, ``kubernetes``, ``jwt`` or ``cert``; ``token`` when the
    config has no ``[vault.auth]`` table and ``VAULT_TOKEN`` is set."""
    mount: str = ""
    """Auth mount path; empty means the method's own name."""
    token_file: str = ""
    """token: file holding the token (re-read at each login)."""
    token: str = field(default="", repr=False)
    """token: the ``VAULT_TOKEN`` fallback when no token_file is set. Never printed."""
    role_id: str = ""
    """approle: the role ID."""
    secret_id_file: str = ""
    """approle: file holding the secret ID."""
    role: str = ""
    """kubernetes, jwt: the Vault role bound to the syncer's ServiceAccount; cert: the
    certificate role to try (empty: every role whose CA matches)."""
    jwt_file: str = DEFAULT_JWT_FILE
    """kubernetes, jwt: the projected ServiceAccount token presented to Vault (re-read at
    each login; default for jwt: ``DEFAULT_AUDIENCE_JWT_FILE``)."""
    client_cert: str = ""
    """cert: PEM file of the TLS client certificate presented at login."""
    client_key: str = ""
    """cert: PEM file of its private key."""

    @property
    def mount_path(self) -> str:
        """The auth mount actually used."""
        return self.mount or self.method

    def secret_files(self) -> tuple[tuple[str, str], ...]:
        """``(key, path)`` of each file holding a secret this method reads at login."""
        keys = {"token": ("token_file",), "approle": ("secret_id_file",),
                "kubernetes": ("jwt_file",), "jwt": ("jwt_file",), "cert": ("client_key",)}
        return tuple((k, getattr(self, k)) for k in keys.get(self.method, ()) if getattr(self, k))


@dataclass(frozen=True)
class VaultSettings:
    """Where credentials live."""

    address: str = field(repr=False)
    """Vault URL, e.g. ``https://vault.example.com:8200``. May carry ``user:pw@`` for a
    proxy in front of Vault: print ``shown_address`` instead, never this."""
    namespace: str = ""
    """Vault Enterprise / OpenBao namespace; empty for none."""
    ca_cert: str = ""
    """PEM bundle to verify Vault's TLS certificate; empty uses system CAs."""
    kv_mount: str = "secret"
    """Mount point of the KV engine."""
    kv_version: int = 2
    """KV engine version, 1 or 2."""
    timeout: float = 10.0
    """Seconds per Vault request."""
    auth: VaultAuthSettings = field(default_factory=VaultAuthSettings)
    """Login method and its parameters."""

    @property
    def shown_address(self) -> str:
        """``address`` without its userinfo: the only form that is printed."""
        return without_userinfo(self.address)

    def __repr__(self) -> str:
        return (f"VaultSettings(address={self.shown_address!r}, namespace={self.namespace!r}, "
                f"kv_mount={self.kv_mount!r}, auth={self.auth!r})")


def without_userinfo(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@`` (issue 16, item 5)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{path}"


@dataclass(frozen=True)
class KubernetesSettings:
    """How to reach the Kubernetes API."""

    kubeconfig: str = ""
    """Path to a kubeconfig; empty = in-cluster when available, else KUBECONFIG/~/.kube/config."""
    context: str = ""
    """kubeconfig context; empty = current context."""
    timeout: float = 15.0
    """Seconds per API request."""
    events: bool = True
    """Emit Events (CredentialsRotated, LoginRejected, ...) on target secrets."""
    event_window: float = 600.0
    """Repeats of the same Event within this many seconds are aggregated into one."""
    list_secrets: bool = True
    """Read fan-out targets with one cluster-wide LIST per secret name
    (``fieldSelector=metadata.name=NAME``) instead of one GET per namespace. Needs ``list`` on
    secrets with ``resourceNames: [NAME]`` in a ClusterRole; refused, it falls back to the GETs."""


@dataclass(frozen=True)
class ProbeSettings:
    """How new credentials are proven before they are written."""

    enabled: bool = True
    """Probe registries at all."""
    timeout: float = 10.0
    """Seconds per HTTP request of a probe."""
    ca_cert: str = ""
    """Extra PEM bundle trusted for registries (added to the system CAs)."""
    verify_before_write: bool = True
    """Refuse to write credentials the registry rejects."""
    retries: int = 2
    """Retries for timeouts, 429 and 5xx (never for 401/403)."""
    interval: float = 0.0
    """Reuse a conclusive probe result of an unchanged login for this long; 0 = probe every cycle."""
    deadline: float = 60.0
    """Wall-clock seconds for one whole probe (every request, retry and back-off together);
    ``timeout`` still bounds each connect and read within it."""
    proxy: str = ""
    """Egress proxy URL for probes (``http://`` or ``https://``, userinfo allowed, never printed);
    "" = from HTTPS_PROXY/NO_PROXY in the environment."""


@dataclass(frozen=True)
class ScheduleSettings:
    """When the daemon runs."""

    interval: float = 300.0
    """Seconds between runs (ignored when ``cron`` is set)."""
    jitter: float = 30.0
    """Random extra delay, up to this many seconds, to spread load."""
    cron: str = ""
    """A crontab expression (``*/5 * * * *``) instead of interval; empty = use interval."""
    retry_min: float = 10.0
    """First retry delay after a failed run; doubles per failure."""
    retry_max: float = 300.0
    """Upper bound of the retry delay."""
    run_timeout: float = 600.0
    """Per-run deadline: past it, remaining targets are skipped (each request has its own timeout)."""
    stale_after: float = 0.0
    """/readyz fails when the last success is older than this; 0 = 3 x interval."""

    @property
    def staleness(self) -> float:
        """The effective readiness staleness."""
        return self.stale_after or 3 * self.interval


@dataclass(frozen=True)
class LeaderElectionSettings:
    """Optional Lease-based leader election, so two replicas are safe."""

    enabled: bool = False
    """Only the Lease holder syncs."""
    namespace: str = ""
    """Namespace of the Lease; required when enabled."""
    name: str = "registry-credential-syncer"
    """Name of the Lease."""
    identity: str = ""
    """This replica's identity; empty = POD_NAME, else HOSTNAME."""
    lease_duration: float = 15.0
    """How long a lease is valid without renewal."""
    renew_period: float = 5.0
    """How often the holder renews and a standby retries."""


@dataclass(frozen=True)
class MetricsSettings:
    """Where the daemon serves /metrics, /healthz and /readyz."""

    host: str = "0.0.0.0"  # noqa: S104 - in-cluster scrape target
    """Listen address."""
    port: int = 9102
    """Listen port."""
    handler_timeout: float = 5.0
    """Seconds a client has to send its request and read the answer; then it is disconnected."""
    max_connections: int = 32
    """Connections served at once; a newcomer beyond it displaces the oldest unfinished request."""


@dataclass(frozen=True)
class SyncSettings:
    """Behaviour of one sync cycle."""

    conflict_retries: int = 5
    """How often a write is re-read and re-merged after a 409 Conflict."""
    concurrency: int = 16
    """Upper bound on parallel Vault reads, probes, target syncs and Event sends."""


@dataclass(frozen=True)
class RegistrySettings:
    """One registry whose login lives in Vault."""

    host: str
    """The key written under ``auths`` (may carry a port or be the Docker Hub URL)."""
    path: str
    """KV path below ``vault.kv_mount``."""
    username_key: str = "username"
    """Field of the KV secret holding the username."""
    password_key: str = "password"
    """Field of the KV secret holding the password."""
    username: str = ""
    """Fixed username when Vault holds only the password (``$oauthtoken`` for NGC)."""
    email: str = ""
    """Optional ``email`` written into the entry."""
    verify_images: tuple[ImageRef, ...] = ()
    """Canary images on this host: after the login is proven, the new credential must be able to
    pull them (a manifest HEAD); all denied = rejected like a failed login (issue 13)."""


@dataclass(frozen=True)
class TargetSettings:
    """One Kubernetes secret kept in sync."""

    namespace: str
    """Namespace of the secret."""
    name: str
    """Name of the secret."""
    registries: tuple[str, ...] = ()
    """Hosts managed in this secret; empty means every configured registry."""
    create: bool = False
    """Create the secret (type kubernetes.io/dockerconfigjson) when missing."""
    namespace_selector: str = ""
    """Label selector over namespaces (instead of ``namespace``): one secret per matching namespace."""
    service_accounts: tuple[str, ...] = ()
    """ServiceAccounts whose imagePullSecrets get a reference to this secret when it is missing."""
    drift: str = "repair"
    """A managed entry changed by hand while Vault is unchanged: ``repair`` it or only ``report`` it."""
    prune: bool = False
    """Remove hosts the syncer once managed here that are no longer configured for this target."""
    file: str = ""
    """A docker ``config.json`` path kept in sync instead of a Secret (then no namespace/name)."""

    def in_namespace(self, namespace: str) -> TargetSettings:
        """This (selector) target placed in one matching namespace, every other key kept."""
        return dataclasses.replace(self, namespace=namespace)

    @property
    def ref(self) -> str:
        """``namespace/name`` (or the file path), for logs and summaries."""
        if self.file:
            return self.file
        if self.namespace_selector and not self.namespace:
            return f"[{self.namespace_selector}]/{self.name}"
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Settings:
    """The whole validated configuration."""

    vault: VaultSettings
    """Vault connection and login."""
    registries: tuple[RegistrySettings, ...]
    """Registries to sync."""
    targets: tuple[TargetSettings, ...]
    """Secrets to keep in sync."""
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    """Kubernetes API access."""
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    """Login verification."""
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    """Daemon cadence."""
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    """Metrics and health endpoint."""
    sync: SyncSettings = field(default_factory=SyncSettings)
    """Cycle behaviour."""
    leader_election: LeaderElectionSettings = field(default_factory=LeaderElectionSettings)
    """Lease-based leader election (daemon only)."""

    def hosts_for(self, target: TargetSettings) -> tuple[str, ...]:
        """The registry hosts a target manages."""
        return target.registries or tuple(r.host for r in self.registries)


# --------------------------------------------------------------------------- sections


def _vault_auth(sec: Section, env: Mapping[str, str], present: bool) -> VaultAuthSettings:
    # VAULT_TOKEN alone selects token auth, as every Vault client does; any [vault.auth]
    # table is explicit configuration and wins.
    method = sec.get_str("method", "token" if env.get("VAULT_TOKEN") and not present else "kubernetes")
    if method not in AUTH_METHODS:
        sec.problem("method", f"must be one of {', '.join(AUTH_METHODS)} (got {method!r})")
    auth = VaultAuthSettings(
        method=method,
        mount=sec.get_str("mount").strip("/"),
        token_file=sec.get_str("token_file"),
        token="" if "token_file" in sec.data else env.get("VAULT_TOKEN", ""),
        role_id=sec.get_str("role_id"),
        secret_id_file=sec.get_str("secret_id_file"),
        role=sec.get_str("role"),
        jwt_file=sec.get_str(
            "jwt_file", DEFAULT_AUDIENCE_JWT_FILE if method == "jwt" else DEFAULT_JWT_FILE),
        client_cert=sec.get_str("client_cert"),
        client_key=sec.get_str("client_key"),
    )
    required: dict[str, tuple[str, ...]] = {
        "approle": ("role_id", "secret_id_file"),
        "kubernetes": ("role", "jwt_file"),
        "jwt": ("role", "jwt_file"),
        "cert": ("client_cert", "client_key"),
    }
    for key in required.get(method, ()):
        if not getattr(auth, key):
            sec.problem(key, f"is required when method = {method!r}")
    if method == "token" and not (auth.token_file or auth.token):
        sec.problem("token_file", "is required when method = 'token' and VAULT_TOKEN is unset")
    sec.finish()
    return auth


def _url(sec: Section, name: str, value: str) -> None:
    if value and not re.match(r"^https?://[^\s/]+(/\S*)?$", value):
        sec.problem(name, f"must be an http(s) URL (got {value!r})")


def _vault(sec: Section, env: Mapping[str, str]) -> VaultSettings:
    address = sec.get_str("address") or env.get("VAULT_ADDR", "")
    if not address:
        sec.problem("address", "is required (or set VAULT_ADDR)")
    _url(sec, "address", without_userinfo(address))
    settings = VaultSettings(
        address=address.rstrip("/"),
        namespace=sec.get_str("namespace") or env.get("VAULT_NAMESPACE", ""),
        ca_cert=sec.get_str("ca_cert") or env.get("VAULT_CACERT", ""),
        kv_mount=sec.get_str("kv_mount", "secret").strip("/"),
        kv_version=sec.get_int("kv_version", 2, 1, 2),
        timeout=sec.get_duration("timeout", 10.0),
        auth=_vault_auth(sec.table("auth"), env, present="auth" in sec.data),
    )
    if not settings.kv_mount:
        sec.problem("kv_mount", "must not be empty")
    if settings.auth.method == "cert" and not address.startswith("https://"):
        sec.problem("address", "must be https:// when auth.method = 'cert' (the certificate "
                    "is presented in the TLS handshake)")
    sec.finish()
    return settings


def _kubernetes(sec: Section) -> KubernetesSettings:
    settings = KubernetesSettings(
        kubeconfig=sec.get_str("kubeconfig"),
        context=sec.get_str("context"),
        timeout=sec.get_duration("timeout", 15.0),
        events=sec.get_bool("events", True),
        event_window=sec.get_duration("event_window", 600.0),
        list_secrets=sec.get_bool("list_secrets", True),
    )
    sec.finish()
    return settings


def _probe(sec: Section) -> ProbeSettings:
    settings = ProbeSettings(
        enabled=sec.get_bool("enabled", True),
        timeout=sec.get_duration("timeout", 10.0),
        ca_cert=sec.get_str("ca_cert"),
        verify_before_write=sec.get_bool("verify_before_write", True),
        retries=sec.get_int("retries", 2, 0, 10),
        interval=sec.get_duration("interval", 0.0, positive=False),
        deadline=sec.get_duration("deadline", 60.0),
        proxy=sec.get_str("proxy").strip(),
    )
    if settings.proxy and (problem := proxy_problem(settings.proxy)):
        sec.problem("proxy", problem)
    sec.finish()
    return settings


def _schedule(sec: Section) -> ScheduleSettings:
    settings = ScheduleSettings(
        interval=sec.get_duration("interval", 300.0),
        jitter=sec.get_duration("jitter", 30.0, positive=False),
        cron=sec.get_str("cron").strip(),
        retry_min=sec.get_duration("retry_min", 10.0),
        retry_max=sec.get_duration("retry_max", 300.0),
        run_timeout=sec.get_duration("run_timeout", 600.0),
        stale_after=sec.get_duration("stale_after", 0.0, positive=False),
    )
    if settings.cron and "interval" in sec.data:
        sec.problem("cron", "set either interval or cron, not both")
    if settings.cron:
        try:
            CronTrigger.from_crontab(settings.cron)
        except ValueError as exc:
            sec.problem("cron", f"is not a crontab expression ({exc})")
    if settings.retry_min > settings.retry_max:
        sec.problem("retry_min", "must not exceed retry_max")
    sec.finish()
    return settings


def _leader_election(sec: Section, env: Mapping[str, str]) -> LeaderElectionSettings:
    settings = LeaderElectionSettings(
        enabled=sec.get_bool("enabled", False),
        namespace=sec.get_str("namespace"),
        name=sec.get_str("name", "registry-credential-syncer"),
        identity=sec.get_str("identity") or env.get("POD_NAME") or env.get("HOSTNAME", ""),
        lease_duration=sec.get_duration("lease_duration", 15.0),
        renew_period=sec.get_duration("renew_period", 5.0),
    )
    if settings.lease_duration < 1:  # Lease.spec.leaseDurationSeconds holds whole seconds, > 0
        sec.problem("lease_duration", "must be at least 1s (the Lease holds whole seconds; "
                    f"got {settings.lease_duration:g}s)")
    if settings.enabled:
        for key in ("namespace", "identity"):
            if not getattr(settings, key):
                sec.problem(key, "is required when enabled = true"
                            + (" (or set POD_NAME)" if key == "identity" else ""))
        if settings.lease_duration >= 1 and settings.renew_period >= settings.lease_duration:
            sec.problem("renew_period", "must be shorter than lease_duration")
        for key, label in (("namespace", True), ("name", False)):
            if getattr(settings, key) and (problem := name_problem(getattr(settings, key), label)):
                sec.problem(key, problem)
    sec.finish()
    return settings


def _metrics(sec: Section) -> MetricsSettings:
    listen = sec.get_str("listen", "0.0.0.0:9102")
    host, _, port = listen.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        sec.problem("listen", f"must be HOST:PORT (got {listen!r})")
        host, port = "0.0.0.0", "9102"  # noqa: S104
    default = MetricsSettings()
    timeout = sec.get_duration("handler_timeout", default.handler_timeout)
    if timeout > 60:
        sec.problem("handler_timeout", "must be at most 60s (the kubelet's probe gives up long before)")
        timeout = default.handler_timeout
    connections = sec.get_int("max_connections", default.max_connections, 1, 1024)
    sec.finish()
    return MetricsSettings(host=host.strip("[]"), port=int(port), handler_timeout=timeout,
                           max_connections=connections)


def _sync(sec: Section) -> SyncSettings:
    settings = SyncSettings(
        conflict_retries=sec.get_int("conflict_retries", 5, 0, 50),
        concurrency=sec.get_int("concurrency", 16, 1, 256),
    )
    sec.finish()
    return settings


def _registry(sec: Section) -> RegistrySettings:
    host = sec.get_str("host")
    path = sec.get_str("path").strip("/")
    if not host:
        sec.problem("host", "is required")
    elif host.startswith("http://"):
        sec.problem("host", "plain-HTTP registries are refused; the registry must serve HTTPS")
    elif not HOST.match(host):
        sec.problem("host", f"is not a registry host (got {host!r})")
    if not path:
        sec.problem("path", "is required")
    settings = RegistrySettings(
        host=host,
        path=path,
        username_key=sec.get_str("username_key", "username"),
        password_key=sec.get_str("password_key", "password"),
        username=sec.get_str("username"),
        email=sec.get_str("email"),
        verify_images=_verify_images(sec, host),
    )
    for key in ("username_key", "password_key"):
        if not getattr(settings, key):
            sec.problem(key, "must not be empty")
    sec.finish()
    return settings


def _verify_images(sec: Section, host: str) -> tuple[ImageRef, ...]:
    """``verify_images``: each a valid image reference on ``host``, none twice."""
    images: list[ImageRef] = []
    for i, text in enumerate(sec.get_str_list("verify_images")):
        path = f"{sec.key('verify_images')}[{i}]"
        try:
            image = parse_image(text, host)
        except ValueError as exc:
            sec.problems.append(f"{path}: {exc}")
            continue
        if any((image.repository, image.reference) == (o.repository, o.reference) for o in images):
            sec.problems.append(f"{path}: duplicate image {text!r}")
            continue
        images.append(image)
    return tuple(images)


def _target(sec: Section, hosts: set[str]) -> TargetSettings:
    target = TargetSettings(
        namespace=sec.get_str("namespace"),
        name=sec.get_str("name"),
        registries=sec.get_str_list("registries"),
        create=sec.get_bool("create", False),
        namespace_selector=sec.get_str("namespace_selector").strip(),
        service_accounts=sec.get_str_list("service_accounts"),
        drift=sec.get_str("drift", "repair"),
        prune=sec.get_bool("prune", False),
        file=sec.get_str("file"),
    )
    _file_target(sec, target)
    if target.drift not in DRIFT_MODES:
        sec.problem("drift", f"must be one of {', '.join(DRIFT_MODES)} (got {target.drift!r})")
    if target.namespace and target.namespace_selector:
        sec.problem("namespace_selector", "set either namespace or namespace_selector, not both")
    elif target.namespace_selector and (problem := selector_problem(target.namespace_selector)):
        sec.problem("namespace_selector", problem)
    for key in () if target.file else ("namespace", "name"):
        value = getattr(target, key)
        if not value:
            if key == "name" or not target.namespace_selector:
                sec.problem(key, "is required" + (" (or namespace_selector)" if key == "namespace" else ""))
        elif problem := name_problem(value, label=key == "namespace"):
            sec.problem(key, problem)
    for account in target.service_accounts:
        if problem := name_problem(account):
            sec.problem("service_accounts", problem.replace("Kubernetes name", "ServiceAccount name"))
    for host in target.registries:
        if host not in hosts:
            sec.problem("registries", f"names {host!r}, which is not a configured registry host")
    sec.finish()
    return target


def _file_target(sec: Section, target: TargetSettings) -> None:
    """A file target names a path and nothing Kubernetes-specific."""
    if not target.file:
        return
    if not target.file.startswith("/"):
        sec.problem("file", f"must be an absolute path (got {target.file!r})")
    elif target.file.endswith("/"):
        sec.problem("file", f"must name a file, not a directory (got {target.file!r})")
    for key in ("namespace", "name", "namespace_selector", "service_accounts"):
        if getattr(target, key):
            sec.problem(key, "must not be set together with file (a file target is not a Secret)")


def _unique(items: list[Any], key: Callable[[Any], Any], path: str, what: str,
            problems: list[str]) -> None:
    seen: dict[Any, int] = {}
    for i, item in enumerate(items):
        k = key(item)
        if k in seen:
            problems.append(f"{path}[{i}]: duplicate {what} (same as {path}[{seen[k]}])")
        seen.setdefault(k, i)


def from_mapping(data: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    """Validate parsed TOML. Raises ConfigError listing every problem."""
    problems: list[str] = []
    root = Section(data, "", problems)
    vault = _vault(root.table("vault"), env)
    registries = [_registry(s) for s in root.table_list("registries")]
    hosts = {r.host for r in registries}
    targets = [_target(s, hosts) for s in root.table_list("targets")]
    settings = Settings(
        vault=vault,
        registries=tuple(registries),
        targets=tuple(targets),
        kubernetes=_kubernetes(root.table("kubernetes")),
        probe=_probe(root.table("probe")),
        schedule=_schedule(root.table("schedule")),
        metrics=_metrics(root.table("metrics")),
        sync=_sync(root.table("sync")),
        leader_election=_leader_election(root.table("leader_election"), env),
    )
    # An empty array counts as missing; a value of another type already has its own problem.
    if not registries and isinstance(data.get("registries", []), list):
        problems.append("registries: at least one [[registries]] entry is required")
    if not targets and isinstance(data.get("targets", []), list):
        problems.append("targets: at least one [[targets]] entry is required")
    # Keys kubelet treats as equal (nvcr.io, https://nvcr.io/v1/) would fight over one entry.
    _unique(registries, lambda r: normalize_key(r.host), "registries", "host", problems)
    _unique(targets, lambda t: (t.namespace, t.namespace_selector, t.name, t.file), "targets",
            "namespace/name", problems)
    root.finish()
    if problems:
        raise ConfigError(problems)
    return settings


def load(path: str | Path, env: Mapping[str, str]) -> Settings:
    """Read a TOML file and validate it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file ({exc.strerror})"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: config file is not UTF-8"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from None
    return from_mapping(data, env)
