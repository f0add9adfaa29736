"""Load and validate the TOML configuration into frozen settings objects.

Every problem is collected with its key path (``registries[2].path``) and
reported at once, so a user fixes a config in one round trip. Environment
fallbacks (``VAULT_ADDR`` and friends) are applied here, from a mapping the
caller passes in: nothing else in the package reads the environment.

Each key's default is written once, as its dataclass field's default; bounds, trimming and
environment fallbacks sit next to it (``setting(default, minimum=.., maximum=.., zero_ok=..,
strip=.., env=..)``). ``Section.read`` fills every str/bool/int/duration/list field of a class
from its table by the field's type, so a new plain key needs only its field (an int needs bounds);
the per-table functions below (``_vault``, ``_probe``, ...) add only the checks that span keys.
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

from syncer.config_parse import Section, checks, name_problem, selector_problem, setting
from syncer.hosts import is_registry_host, normalize_key
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
    mount: str = setting("", strip="/")
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

    address: str = field(repr=False, metadata=checks(env=("VAULT_ADDR",)))
    """Vault URL, e.g. ``https://vault.example.com:8200``. May carry ``user:pw@`` for a
    proxy in front of Vault: print ``shown_address`` instead, never this."""
    namespace: str = setting("", env=("VAULT_NAMESPACE",))
    """Vault Enterprise / OpenBao namespace; empty for none."""
    ca_cert: str = setting("", env=("VAULT_CACERT",))
    """PEM bundle to verify Vault's TLS certificate; empty uses system CAs."""
    kv_mount: str = setting("secret", strip="/")
    """Mount point of the KV engine."""
    kv_version: int = setting(2, minimum=1, maximum=2)
    """KV engine version, 1 or 2."""
    timeout: float = 10.0
    """Seconds per Vault request."""
    auth: VaultAuthSettings = field(default_factory=VaultAuthSettings)
    """Login method and its parameters."""
    poll_interval: float = setting(30.0, zero_ok=True)
    """Daemon: seconds between checks for a new version of each registry's credential (KV v2
    metadata, KV v1 a digest); a change re-syncs that registry's targets at once. 0 = off."""

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
    watch: bool = True
    """Daemon: watch the target secrets (and the namespaces of each selector) and keep them in
    memory, so a deleted or edited secret or a new matching namespace is repaired within seconds
    and a steady cycle needs no GETs. Needs ``watch`` next to ``list`` in RBAC; refused, that
    watch falls back to polling. ``false``: poll each cycle only."""


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
    retries: int = setting(2, minimum=0, maximum=10)
    """Retries for timeouts, 429 and 5xx (never for 401/403)."""
    interval: float = setting(0.0, zero_ok=True)
    """Reuse a conclusive probe result of an unchanged login for this long; 0 = probe every cycle."""
    deadline: float = 60.0
    """Wall-clock seconds for one whole probe (every request, retry and back-off together);
    ``timeout`` still bounds each connect and read within it."""
    proxy: str = setting("", strip=True)
    """Egress proxy URL for probes (``http://`` or ``https://``, userinfo allowed, never printed);
    "" = from HTTPS_PROXY/NO_PROXY in the environment."""


@dataclass(frozen=True)
class ScheduleSettings:
    """When the daemon runs."""

    interval: float = 300.0
    """Seconds between runs (ignored when ``cron`` is set)."""
    jitter: float = setting(30.0, zero_ok=True)
    """Random extra delay, up to this many seconds, to spread load."""
    cron: str = setting("", strip=True)
    """A crontab expression (``*/5 * * * *``) instead of interval; empty = use interval."""
    retry_min: float = 10.0
    """First retry delay after a failed run; doubles per failure."""
    retry_max: float = 300.0
    """Upper bound of the retry delay."""
    run_timeout: float = 600.0
    """Per-run deadline: past it, remaining targets are skipped (each request has its own timeout)."""
    stale_after: float = setting(0.0, zero_ok=True)
    """/readyz fails when the last success is older than this; 0 = 3 x the run period."""


@dataclass(frozen=True)
class LeaderElectionSettings:
    """Optional Lease-based leader election, so two replicas are safe."""

    enabled: bool = False
    """Only the Lease holder syncs."""
    namespace: str = ""
    """Namespace of the Lease; required when enabled."""
    name: str = "registry-credential-syncer"
    """Name of the Lease."""
    identity: str = setting("", env=("POD_NAME", "HOSTNAME"))
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
    handler_timeout: float = setting(5.0, maximum=60.0, why="the kubelet's probe gives up long before")
    """Seconds a client has to send its request and read the answer; then it is disconnected."""
    max_connections: int = setting(32, minimum=1, maximum=1024)
    """Connections served at once; a newcomer beyond it displaces the oldest unfinished request."""


@dataclass(frozen=True)
class SyncSettings:
    """Behaviour of one sync cycle."""

    conflict_retries: int = setting(5, minimum=0, maximum=50)
    """How often a write is re-read and re-merged after a 409 Conflict."""
    concurrency: int = setting(16, minimum=1, maximum=256)
    """Upper bound on parallel Vault reads, probes, target syncs and Event sends."""


@dataclass(frozen=True)
class RegistrySettings:
    """One registry whose login lives in Vault."""

    host: str
    """The key written under ``auths`` (may carry a port or be the Docker Hub URL)."""
    path: str = field(metadata=checks(strip="/"))
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
    namespace_selector: str = setting("", strip=True)
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
    def concrete(self) -> bool:
        """A file, or a Secret with its namespace: not a selector target before expansion."""
        return bool(self.file or self.namespace)

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
    method = sec.value(VaultAuthSettings, "method",
                       default="token" if env.get("VAULT_TOKEN") and not present else None)
    if method not in AUTH_METHODS:
        sec.problem("method", f"must be one of {', '.join(AUTH_METHODS)} (got {method!r})")
    jwt_default = {"jwt_file": DEFAULT_AUDIENCE_JWT_FILE} if method == "jwt" else {}
    auth = VaultAuthSettings(
        method=method,
        token="" if "token_file" in sec.data else env.get("VAULT_TOKEN", ""),
        **sec.read(VaultAuthSettings, skip=("method", "token"), defaults=jwt_default),
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
    address = sec.value(VaultSettings, "address", env)
    if not address:
        sec.problem("address", "is required (or set VAULT_ADDR)")
    _url(sec, "address", without_userinfo(address))
    settings = VaultSettings(
        address=address.rstrip("/"),
        **sec.read(VaultSettings, env, skip=("address",)),
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
    settings = KubernetesSettings(**sec.read(KubernetesSettings))
    sec.finish()
    return settings


def _probe(sec: Section) -> ProbeSettings:
    settings = ProbeSettings(**sec.read(ProbeSettings))
    if settings.proxy and (problem := proxy_problem(settings.proxy)):
        sec.problem("proxy", problem)
    sec.finish()
    return settings


def _schedule(sec: Section) -> ScheduleSettings:
    settings = ScheduleSettings(**sec.read(ScheduleSettings))
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
    settings = LeaderElectionSettings(**sec.read(LeaderElectionSettings, env))
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
    default = MetricsSettings()
    listen = sec.get_str("listen", f"{default.host}:{default.port}")
    host, _, port = listen.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        sec.problem("listen", f"must be HOST:PORT (got {listen!r})")
        host, port = default.host, str(default.port)
    settings = MetricsSettings(host=host.strip("[]"), port=int(port),
                               **sec.read(MetricsSettings, skip=("host", "port")))
    sec.finish()
    return settings


def _sync(sec: Section) -> SyncSettings:
    settings = SyncSettings(**sec.read(SyncSettings))
    sec.finish()
    return settings


def _registry(sec: Section) -> RegistrySettings:
    host, path = sec.value(RegistrySettings, "host"), sec.value(RegistrySettings, "path")
    if not host:
        sec.problem("host", "is required")
    elif host.startswith("http://"):
        sec.problem("host", "plain-HTTP registries are refused; the registry must serve HTTPS")
    elif not is_registry_host(host):
        sec.problem("host", f"is not a registry host (got {host!r})")
    if not path:
        sec.problem("path", "is required")
    settings = RegistrySettings(host=host, path=path, verify_images=_verify_images(sec, host),
                                **sec.read(RegistrySettings, skip=("host", "path", "verify_images")))
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
    target = TargetSettings(**sec.read(TargetSettings))
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
