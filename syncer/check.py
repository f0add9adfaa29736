"""``syncer check``: a read-only preflight of everything one sync cycle needs.

One line per check (OK / WARN / FAIL / SKIP, a reason, and a hint for the fix). Nothing is
written anywhere: Secrets are read through a dry-run SecretStore, Kubernetes permissions are
asked with SelfSubjectAccessReviews (which create nothing), and Vault permissions with
``sys/capabilities-self``. Vault secret values are read only to probe the registries; check
output names keys, never values.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from syncer import canary, dockerconfig, targets
from syncer.canary import PullChecker
from syncer.config import RegistrySettings, Settings, TargetSettings
from syncer.credential import Credential
from syncer.filetarget import FileStore
from syncer.kube import FanOut, SecretStore
from syncer.kube_api import TRANSPORT_ERRORS, Api, translate
from syncer.probe import Outcome, Prober
from syncer.secretfiles import readable_by_others
from syncer.target_errors import TargetError
from syncer.targets import TargetStores
from syncer.text import escape, json_safe, safe, safe_list
from syncer.vault import VaultError, VaultErrorKind, VaultSource

log = logging.getLogger(__name__)

REASON_LIMIT = 600
"""Characters of a check's reason shown (it may quote a Vault, registry or API server error)."""


class Status(StrEnum):
    """The verdict of one check. Only FAIL makes ``syncer check`` exit 1."""

    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(frozen=True)
class Check:
    """One line of the preflight. Never holds secret material."""

    name: str
    """What was checked, e.g. ``vault.read secret/data/registries/ngc``."""
    status: Status
    """OK, WARN, FAIL or SKIP (could not run because an earlier check failed)."""
    reason: str
    """Why, in one sentence."""
    hint: str = ""
    """How to fix a FAIL or WARN."""

    def line(self) -> str:
        """``FAIL  name: reason (hint: ...)``."""
        # Names, reasons and hints quote outside text (Vault and registry errors, secret keys).
        hint = f" (hint: {escape(self.hint)})" if self.hint else ""
        return f"{self.status.value:<4}  {safe(self.name)}: {safe(self.reason, REASON_LIMIT)}{hint}"


@dataclass
class Report:
    """All checks of one run."""

    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing failed (WARN and SKIP do not fail the preflight)."""
        return not any(c.status is Status.FAIL for c in self.checks)

    def add(self, name: str, status: Status, reason: str, hint: str = "") -> Check:
        check = Check(name, status, reason, hint)
        self.checks.append(check)
        log.debug("%s", check.line())
        return check

    def names(self) -> set[str]:
        """Names of the checks made so far."""
        return {c.name for c in self.checks}

    def render(self) -> str:
        """The table printed by ``syncer check``."""
        counts = {s: sum(c.status is s for c in self.checks) for s in Status}
        tail = ", ".join(f"{n} {s.value.lower()}" for s, n in counts.items() if n)
        verdict = "all checks passed" if self.ok else "some checks FAILED"
        return "\n".join([c.line() for c in self.checks] + [f"check: {verdict} ({tail})"])

    def to_json(self) -> str:
        """``{"ok": bool, "checks": [{"name", "status", "reason", "hint"}, ...]}``."""
        return json_safe(json.dumps({"ok": self.ok, "checks": [asdict(c) for c in self.checks]}, indent=2))


def config_failure(problems: list[str]) -> Report:
    """The report for a configuration that does not validate: nothing else can be checked."""
    report = Report()
    for problem in problems:
        report.add("config", Status.FAIL, problem, "fix the key named; see config.example.toml")
    return report


MALFORMED_HINTS = {
    "secret": 'fix or delete it: it must be of type kubernetes.io/dockerconfigjson and hold a '
              '.dockerconfigjson JSON object with an "auths" object; the syncer never overwrites it',
    "file": "fix the JSON by hand (it must be an object; \"auths\" must be an object)",
}
"""How to fix a malformed target, by what holds it."""

PROBE_HINTS = {
    "tls": "trust the registry's CA with probe.ca_cert",
    "proxy": "check the proxy (probe.proxy or HTTPS_PROXY) allows CONNECT to the registry port, "
             "or list the registry in NO_PROXY",
    "timeout": "check network, DNS, proxy and firewall from here to the registry",
    "connection": "check network, DNS, proxy and firewall from here to the registry",
    "insecure": "the registry must serve HTTPS; credentials are never sent over plain HTTP",
    "redirect": "the registry redirects to another host; use the host it redirects to",
}


class Preflight:
    """Runs the checks with clients handed in by the caller."""

    def __init__(self, settings: Settings, source: VaultSource, api: Api, prober: Prober | None) -> None:
        self.settings = settings
        self.source = source
        self.api = api
        # dry_run=True: even a bug above cannot make a preflight write.
        self.stores = TargetStores(SecretStore(api, dry_run=True), FileStore(dry_run=True))
        self.fanout = FanOut(api, dry_run=True)
        self.prober = prober if settings.probe.enabled else None
        self.report = Report()

    def run(self) -> Report:
        """Every check, in the order a cycle needs them."""
        s = self.settings
        self.report.add("config", Status.OK, f"{len(s.registries)} registries, {len(s.targets)} targets")
        logins = self._vault()
        self._registries(logins)
        secrets, files = self.stores.split(s.targets)
        if secrets or s.leader_election.enabled:
            self._kubernetes(secrets)
        for target in files:
            self._file_target(target)
        return self.report

    # ------------------------------------------------------------------ vault

    def _vault_files(self) -> None:
        """Warn (never fail) about credential files that group or others can read."""
        for key, path in self.settings.vault.auth.secret_files():
            try:
                loose = readable_by_others(path)
            except OSError:
                continue  # the login below reports a missing file
            if loose:
                self.report.add(f"vault.auth.{key}", Status.WARN,
                                f"{path} is readable by group or others",
                                f"chmod 600 {path} (or defaultMode: 0400 on the volume)")

    def _vault(self) -> dict[str, Credential]:
        add, s = self.report.add, self.settings
        auth = s.vault.auth
        role = f", role {auth.role}" if auth.role and auth.method != "approle" else ""
        where = f"{s.vault.shown_address} (auth: {auth.method} at auth/{auth.mount_path}{role})"
        self._vault_files()
        try:
            self.source.ensure_login()
        except VaultError as exc:
            if exc.kind in (VaultErrorKind.UNREACHABLE, VaultErrorKind.SEALED):
                add("vault.reachable", Status.FAIL, str(exc),
                    "check vault.address, vault.ca_cert and the network; unseal Vault if sealed")
            else:
                add("vault.reachable", Status.OK, s.vault.shown_address)
                add("vault.login", Status.FAIL, str(exc), _login_hint(s.vault.auth.method))
            return {}
        add("vault.reachable", Status.OK, s.vault.shown_address)
        add("vault.login", Status.OK, f"logged in to {where}")
        paths = [self.source.api_path(r.path) for r in s.registries]
        watched = self._watched_paths()
        try:
            caps: dict[str, list[str]] | None = self.source.capabilities(paths + watched)
        except VaultError as exc:
            add("vault.capabilities", Status.WARN, f"cannot query sys/capabilities-self ({exc})",
                "the token lacks the default policy; the reads below still tell")
            caps = None
        logins = {}
        for registry, path in zip(s.registries, paths, strict=True):
            if caps is not None:
                granted = caps.get(path, [])
                if not {"read", "root"} & set(granted):
                    add(f"vault.policy {path}", Status.FAIL,
                        f"the token's policies do not allow read (capabilities: {', '.join(granted)})",
                        f'add to the syncer\'s Vault policy: path "{path}" {{ capabilities = ["read"] }}')
                    continue
                add(f"vault.policy {path}", Status.OK, "read allowed")
            credential = self._read(registry, path)
            if credential is not None:
                logins[registry.host] = credential
        if caps is not None:
            self._poll_policy(watched, caps)
        return logins

    def _watched_paths(self) -> list[str]:
        """KV v2 metadata paths Vault change detection reads (none with KV v1 or the poll off)."""
        vault = self.settings.vault
        if vault.kv_version != 2 or vault.poll_interval <= 0:
            return []
        return sorted({self.source.metadata_path(r.path) for r in self.settings.registries})

    def _poll_policy(self, watched: list[str], caps: dict[str, list[str]]) -> None:
        """A missing metadata grant only slows rotations down (the cycle still runs): WARN."""
        for path in watched:
            if {"read", "root"} & set(caps.get(path, [])):
                self.report.add(f"vault.poll {path}", Status.OK, "read allowed (change detection)")
            else:
                self.report.add(f"vault.poll {path}", Status.WARN,
                                "the token's policies do not allow read: Vault change detection "
                                "cannot see new versions, rotations wait for the next cycle",
                                f'add to the syncer\'s Vault policy: path "{path}" '
                                '{ capabilities = ["read"] }, or set vault.poll_interval = "0s"')

    def _read(self, registry: RegistrySettings, path: str) -> Credential | None:
        keys = [k for k in (None if registry.username else registry.username_key, registry.password_key) if k]
        name = f"vault.keys {path}"
        shown = f"{self.settings.vault.kv_mount}/{registry.path}"
        try:
            versioned = self.source.read(registry)
        except VaultError as exc:
            hints = {
                VaultErrorKind.MISSING: f"store it: vault kv put {shown} "
                                        + " ".join(f"{k}=..." for k in keys),
                VaultErrorKind.INVALID: f"the secret needs the keys {', '.join(keys)} (or set "
                                        "username_key/password_key/username for this registry)",
                VaultErrorKind.FORBIDDEN: f'add to the syncer\'s Vault policy: path "{path}" '
                                          '{ capabilities = ["read"] }',
            }
            add_hint = hints.get(exc.kind, "see the reason")
            self.report.add(name, Status.FAIL, str(exc), add_hint)
            return None
        version = f" (version {versioned.version})" if versioned.version is not None else ""
        self.report.add(name, Status.OK, f"keys {', '.join(keys)} present{version}")
        return versioned.credential

    # ------------------------------------------------------------------ registries

    def _registries(self, logins: dict[str, Credential]) -> None:
        for registry in self.settings.registries:
            name = f"registry.login {registry.host}"
            credential = logins.get(registry.host)
            if credential is None:
                self.report.add(name, Status.SKIP, "no credentials (the Vault checks above failed)")
                continue
            if self.prober is None:
                self.report.add(name, Status.SKIP, "probe.enabled = false")
                continue
            self.report.add(f"registry.proxy {registry.host}", Status.OK,
                            self.prober.proxy_for(registry.host).describe())
            result = self.prober.probe(registry.host, credential)
            shown = f"{self.settings.vault.kv_mount}/{registry.path}"
            if result.outcome is Outcome.OK:
                self.report.add(name, Status.OK, f"login verified as {safe(credential.username)}")
            elif result.outcome is Outcome.UNVERIFIED:
                self.report.add(name, Status.WARN, result.detail,
                                "the registry allows anonymous access, so no login can be proven")
            elif result.outcome is Outcome.REJECTED:
                self.report.add(name, Status.FAIL, result.detail,
                                f"the registry rejects the login from Vault: put the current password "
                                f"(and username \"{safe(credential.username)}\") at {shown}")
            else:
                self.report.add(name, Status.FAIL, result.detail,
                                PROBE_HINTS.get(result.reason, "see the reason; retry later if transient"))
            if result.outcome in (Outcome.OK, Outcome.UNVERIFIED):
                checks = PullChecker(self.prober).check(registry.host, credential, registry.verify_images,
                                                        challenge=result.challenge)
                for status, check, reason, hint in canary.preflight(registry.host, checks):
                    self.report.add(check, Status(status), reason, hint)

    # ------------------------------------------------------------------ kubernetes

    def _kubernetes(self, secrets: list[TargetSettings]) -> None:
        try:
            info = self.api.get("/version")
        except TRANSPORT_ERRORS as exc:
            self.report.add("kubernetes.api", Status.FAIL, str(translate(exc, "/version", "endpoint")),
                            "check kubernetes.kubeconfig / kubernetes.context and the network")
            return
        self.report.add("kubernetes.api", Status.OK, f"API server {info.get('gitVersion', '?')}")
        for target, expansion in targets.expand(secrets, self.fanout):
            for concrete in self._namespaces(target, expansion):
                self._rbac(concrete)
                self._target(concrete)
        for target in secrets:
            watch_mode(self.report, self.settings.kubernetes.watch, self._allowed, target)
        if self.settings.leader_election.enabled:
            le = self.settings.leader_election
            self._verbs(f"rbac lease {le.namespace}/{le.name}", [
                ("get", "coordination.k8s.io", "leases", le.namespace, le.name),
                ("create", "coordination.k8s.io", "leases", le.namespace, ""),
                ("patch", "coordination.k8s.io", "leases", le.namespace, le.name)])

    def _namespaces(self, target: TargetSettings, expansion: targets.Expansion) -> list[TargetSettings]:
        """The concrete targets of ``target``, with the checks of a selector's namespace LIST."""
        name = f"kubernetes.namespaces [{target.namespace_selector}]"
        if isinstance(expansion, TargetError):  # only a selector's LIST can fail
            self.report.add(name, Status.FAIL, str(expansion), "grant list on namespaces (cluster scope)")
            return []
        if not target.namespace_selector:
            return expansion
        self.report.add(name, Status.OK if expansion else Status.WARN,
                        f"{len(expansion)} namespaces match",
                        "" if expansion else "no namespace carries the labels yet")
        check = f"rbac list secrets named {target.name} (kubernetes.list_secrets)"
        if self.settings.kubernetes.list_secrets and check not in self.report.names():
            # the name goes into the review: RBAC binds a list to resourceNames only through
            # the LIST's fieldSelector=metadata.name, which list_named always sends
            # a WARN, not a FAIL: without the grant the sync falls back to a GET per namespace
            self._verbs(check, [("list", "", "secrets", "", target.name)], denied=Status.WARN,
                        fallback="; until then each cycle falls back to one GET per namespace")
        return expansion

    def _rbac(self, target: TargetSettings) -> None:
        ns, name = target.namespace, target.name
        wanted = [("get", "", "secrets", ns, name), ("patch", "", "secrets", ns, name)]
        if target.create:
            wanted.append(("create", "", "secrets", ns, ""))
        if self.settings.kubernetes.events:
            wanted += [("create", "", "events", ns, ""), ("patch", "", "events", ns, "")]
        for account in target.service_accounts:
            wanted += [(verb, "", "serviceaccounts", ns, account) for verb in ("get", "patch")]
        self._verbs(f"rbac {target.ref}", wanted)

    def _verbs(self, name: str, wanted: list[tuple[str, str, str, str, str]],
               denied: Status = Status.FAIL, fallback: str = "") -> None:
        refused = []
        for verb, group, resource, ns, obj in wanted:
            try:
                if not self._allowed(verb, group, resource, ns, obj):
                    refused.append((verb, group, resource, ns, obj))
            except TRANSPORT_ERRORS as exc:
                self.report.add(name, Status.FAIL, "SelfSubjectAccessReview failed: "
                                f"{translate(exc, name, 'review')}", "check the API server and token")
                return
        if not refused:
            granted = ", ".join(f"{v} {r}" for v, _, r, _, _ in wanted)
            self.report.add(name, Status.OK, f"allowed: {granted}")
            return
        what = ", ".join(f"{v} {r}{'/' + o if o else ''}" for v, _, r, _, o in refused)
        rules = "; ".join(f'verbs ["{v}"] on {r}{f" resourceNames [{o}]" if o else ""} '
                          f'(apiGroups ["{g}"]) {f"in namespace {ns}" if ns else "cluster-wide"}'
                          for v, g, r, ns, o in refused)
        kind = "Role" if all(ns for _, _, _, ns, _ in refused) else "ClusterRole"
        self.report.add(name, denied, f"denied: {what}",
                        f"grant the syncer's ServiceAccount a {kind} with {rules}, and bind it{fallback}")

    def _allowed(self, verb: str, group: str, resource: str, namespace: str, name: str) -> bool:
        attributes = {"namespace": namespace, "verb": verb, "group": group, "resource": resource}
        if name:
            attributes["name"] = name
        body: Any = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes}}
        path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
        resp = json.loads(self.api.request("POST", path, body=body))
        return bool((resp.get("status") or {}).get("allowed"))

    def _file_target(self, target: TargetSettings) -> None:
        directory = os.path.dirname(target.file)
        name = f"target {target.file}"
        if not os.path.exists(target.file) and target.create and not os.path.isdir(directory):
            self.report.add(name, Status.OK, f"absent; will be created with its directory {directory}")
            return
        self._target(target)
        if os.path.isdir(directory) and not os.access(directory, os.W_OK):
            self.report.add(f"{name} writable", Status.FAIL, f"cannot write to {directory}",
                            "run the syncer as the owner of the docker config directory")

    def _target(self, target: TargetSettings) -> None:
        name = f"target {target.ref}"
        store = self.stores.of(target)
        what = store.what
        try:
            snapshot = store.read_target(target)
        except TargetError as exc:
            self.report.add(name, Status.FAIL, f"cannot read: {exc}", "see the rbac line above")
            return
        if snapshot is None:
            if target.create:
                self.report.add(name, Status.OK, "absent; will be created (create = true)")
            else:
                self.report.add(name, Status.FAIL, f"{what} does not exist",
                                "create it, or set create = true for this target")
            return
        try:
            doc = targets.document(snapshot)
        except dockerconfig.MalformedError as exc:
            self.report.add(name, Status.FAIL, f"malformed: {exc}", MALFORMED_HINTS[what])
            return
        hosts = sorted(doc["auths"])
        self.report.add(name, Status.OK, f"well formed, {len(hosts)} entries"
                        + (f" ({safe_list(hosts)})" if hosts else ""))


def watch_mode(report: Report, watch: bool, allowed: Callable[[str, str, str, str, str], bool],
               target: TargetSettings) -> None:
    """``target.watch NS/NAME``: whether the daemon will watch the target or poll it, by
    SelfSubjectAccessReviews (``allowed``) for list and watch with the name (the watch's
    fieldSelector), and for a selector the namespaces' list and watch."""
    ns = "" if target.namespace_selector else target.namespace
    name = f"target.watch {ns or '*'}/{target.name}"
    if name in report.names():
        return
    if not watch:
        report.add(name, Status.OK, "poll (kubernetes.watch = false)")
        return
    wanted = [(v, "", "secrets", ns, target.name) for v in ("list", "watch")]
    if target.namespace_selector:
        wanted += [(v, "", "namespaces", "", "") for v in ("list", "watch")]
    try:
        refused = [w for w in wanted if not allowed(*w)]
    except TRANSPORT_ERRORS as exc:
        report.add(name, Status.WARN,
                   f"unknown (SelfSubjectAccessReview failed: {translate(exc, name, 'review')})")
        return
    if not refused:
        report.add(name, Status.OK, "watch")
        return
    what = ", ".join(f"{v} {r}{'/' + o if o else ''}" for v, _, r, _, o in refused)
    report.add(name, Status.WARN, f"poll (denied: {what})",
               "grant list and watch next to get with the same resourceNames; until then the "
               "daemon reads this target each cycle and repairs it only then")


def _login_hint(method: str) -> str:
    return {
        "token": "the token in vault.auth.token_file (or VAULT_TOKEN) is wrong, expired or revoked",
        "approle": "check vault.auth.role_id and the secret ID file; the secret ID may be expired",
        "kubernetes": "check vault.auth.role and that the role is bound to this ServiceAccount "
                      "and namespace (bound_service_account_names/namespaces)",
        "jwt": "check vault.auth.role, that the role's bound_audiences match the token's audience "
               "and that Vault trusts its issuer (jwt_validation_pubkeys or jwks_url)",
        "cert": "check that Vault's cert auth trusts the CA of vault.auth.client_cert, that the "
                "certificate has a CN and is not expired, and that vault.address is https",
    }.get(method, "check vault.auth")
