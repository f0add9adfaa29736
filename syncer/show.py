"""``syncer show``: what a target holds, per ``auths`` entry, without showing a credential.

Replaces the manual ``kubectl get secret -o jsonpath`` + ``base64 --decode`` step. For each
entry: host, username, the password as ``•••• (sha256:1a2b3c4d)`` (the first 8 hex digits of
its SHA-256, enough to compare two copies, useless to log in) or just ``set``, whether the
syncer manages it, whether it matches Vault now, and the time of the syncer's last write.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from syncer import dockerconfig, drift, targets
from syncer.config import Settings, TargetSettings
from syncer.credential import Credential
from syncer.filetarget import FileStore
from syncer.kube import FanOut, SecretStore
from syncer.report import DETAIL_LIMIT
from syncer.target_errors import TargetError
from syncer.targets import LAST_WRITE, MANAGED_HOSTS, TargetStores
from syncer.text import json_safe, safe, safe_list
from syncer.vault import VaultError, VaultSource

log = logging.getLogger(__name__)

MASK = "••••"
CELL_LIMIT = 80
"""Characters of one table cell (a host or username from the secret) in the human table."""


@dataclass
class EntryView:
    """One ``auths`` entry, described without secret material."""

    host: str
    """The ``auths`` key as stored."""
    username: str
    """The username ("" when the entry has none)."""
    password: str
    """``•••• (sha256:1a2b3c4d)``, ``set``, or ``(none)``."""
    managed: bool
    """Listed in the syncer's ownership annotation."""
    matches_vault: str
    """``yes``, ``no``, ``not configured`` or ``unknown (why)``."""
    last_sync: str
    """The syncer's last write to this target, for managed entries; "" otherwise."""


@dataclass
class TargetView:
    """One target secret or file."""

    target: str
    """``namespace/name`` or the file path."""
    kind: str
    """``secret`` or ``file``."""
    status: str = "ok"
    """``ok``, ``missing``, ``malformed`` or ``error``."""
    detail: str = ""
    last_write: str = ""
    rollback_available: bool = False
    """A previous content is kept (``syncer rollback`` would restore it)."""
    other_keys: list[str] = field(default_factory=list)
    """Top-level keys besides ``auths`` (names only)."""
    entries: list[EntryView] = field(default_factory=list)


def mask(credential: Credential | None, fingerprint: bool = True) -> str:
    """How a password is shown: never the value."""
    if credential is None or not credential.password:
        return "(none)"
    return f"{MASK} (sha256:{credential.fingerprint()})" if fingerprint else "set"


class Inspector:
    """Builds TargetViews from the target stores and Vault."""

    def __init__(self, settings: Settings, source: VaultSource, store: SecretStore, fanout: FanOut,
                 files: FileStore, fingerprint: bool = True) -> None:
        self.settings = settings
        self.source = source
        self.stores = TargetStores(store, files)
        self.fanout = fanout
        self.fingerprint = fingerprint
        self._vault: dict[str, Credential | str] | None = None

    def targets(self, namespace: str = "", name: str = "", file: str = "") -> list[TargetSettings]:
        """The configured targets matching the filters; an unconfigured secret or file asked for
        by name is shown too (Vault comparison then uses every configured registry)."""
        if file:
            found = [t for t in self.settings.targets if t.file == file]
            return found or [TargetSettings(namespace="", name="", file=file)]
        chosen: list[TargetSettings] = []
        for target, expansion in targets.expand(self.settings.targets, self.fanout):
            if isinstance(expansion, TargetError):
                log.error("cannot list namespaces for %r: %s", target.namespace_selector, expansion)
                continue
            # a file target has no namespace or name: shown only when neither is asked for
            chosen += [t for t in expansion if namespace in ("", t.namespace) and name in ("", t.name)]
        if not chosen and namespace and name:
            chosen.append(TargetSettings(namespace=namespace, name=name))
        return chosen

    def view(self, target: TargetSettings) -> TargetView:
        """Read one target and describe it."""
        store = self.stores.of(target)
        view = TargetView(target.ref, store.what)
        try:
            snapshot = store.read_target(target)
        except TargetError as exc:
            view.status, view.detail = "error", str(exc)
            return view
        if snapshot is None:
            view.status, view.detail = "missing", f"{view.kind} does not exist"
            return view
        try:
            doc = targets.document(snapshot)
        except dockerconfig.MalformedError as exc:
            view.status, view.detail = "malformed", str(exc)
            return view
        managed = drift.parse_hosts(snapshot.annotations.get(MANAGED_HOSTS, ""))
        view.last_write = snapshot.annotations.get(LAST_WRITE, "")
        view.rollback_available = snapshot.previous is not None and snapshot.previous != snapshot.payload
        view.other_keys = sorted(k for k in doc if k != "auths")
        hosts = self.settings.hosts_for(target) if target.concrete else ()
        for key, entry in sorted(doc["auths"].items()):
            credential = dockerconfig.entry_credential(entry)
            is_managed = any(dockerconfig.normalize_key(h) == dockerconfig.normalize_key(key)
                             for h in managed)
            view.entries.append(EntryView(
                host=key, username=credential.username if credential else str(entry.get("username", "")),
                password=mask(credential, self.fingerprint), managed=is_managed,
                matches_vault=self._matches(key, credential, hosts),
                last_sync=view.last_write if is_managed else ""))
        return view

    def _matches(self, key: str, credential: Credential | None, hosts: tuple[str, ...]) -> str:
        vault = self._vault_logins()
        host = next((h for h in vault if dockerconfig.normalize_key(h) == dockerconfig.normalize_key(key)),
                    None)
        if host is None or (hosts and host not in hosts):
            return "not configured"
        wanted = vault[host]
        if isinstance(wanted, str):
            return f"unknown ({wanted})"
        if credential is None:
            return "no"
        same = (credential.username, credential.password) == (wanted.username, wanted.password)
        return "yes" if same else "no"

    def _vault_logins(self) -> dict[str, Credential | str]:
        """Each configured registry's credential, or why it could not be read (read once)."""
        if self._vault is None:
            self._vault = {}
            for registry in self.settings.registries:
                try:
                    self._vault[registry.host] = self.source.read(registry).credential
                except VaultError as exc:
                    self._vault[registry.host] = f"Vault: {exc.kind.value}"
        return self._vault


def render(views: list[TargetView]) -> str:
    """The human table."""
    lines = []
    for v in views:
        # Keys, usernames, annotations and error text come from the secret or file (tenants may
        # edit it): shown escaped and capped, see syncer.text.
        head = f"{v.kind} {safe(v.target)}"
        if v.status != "ok":
            lines.append(f"{head}: {v.status} - {safe(v.detail, DETAIL_LIMIT)}")
            continue
        extra = [f"last sync {safe(v.last_write, CELL_LIMIT) or 'never'}",
                 f"rollback {'available' if v.rollback_available else 'not available'}"]
        if v.other_keys:
            extra.append(f"other keys: {safe_list(v.other_keys, CELL_LIMIT)}")
        lines.append(f"{head} ({'; '.join(extra)})")
        rows = [("HOST", "USERNAME", "PASSWORD", "MANAGED", "MATCHES VAULT", "LAST SYNC")]
        rows += [(safe(e.host, CELL_LIMIT), safe(e.username, CELL_LIMIT), e.password,
                  "yes" if e.managed else "no", safe(e.matches_vault, CELL_LIMIT),
                  safe(e.last_sync, CELL_LIMIT) or "-") for e in v.entries]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        if not v.entries:
            lines.append("  (no entries)")
    return "\n".join(lines)


def to_json(views: list[TargetView]) -> str:
    """``{"targets": [...]}`` with the same fields as the table."""
    data: dict[str, Any] = {"targets": [asdict(v) for v in views]}
    return json_safe(json.dumps(data, indent=2, ensure_ascii=False))
