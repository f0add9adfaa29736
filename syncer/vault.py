"""Read registry credentials from Vault (or OpenBao) KV, logging in once per process.

``VaultSource`` is the thin KV reader: it asks its ``TokenSession`` (``vault_token``)
for a valid token, reads the secret, and after a 403 lets the session decide whether a
fresh token is worth one more try. Idempotent reads are retried once when Vault closed
the pooled connection under them (``vault_errors.Translator.idempotent``). Every failure
surfaces as a ``VaultError`` with a ``kind`` the caller can act on and the KV path or
auth mount it concerns. Tokens, secret IDs, JWTs and secret values never reach an
exception message, a log line or a ``repr``.

The source is safe to share between threads: token state changes under the session's
lock, KV reads run in parallel.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from typing import Any, Unpack

import hvac
import hvac.adapters

from syncer.config import RegistrySettings, VaultSettings
from syncer.credential import Credential, VersionedCredential
from syncer.secretfiles import load_ca
from syncer.vault_errors import VaultError, VaultErrorKind
from syncer.vault_token import FORBIDDEN_RELOGIN_INTERVAL, SessionOptions, TokenSession
from syncer.vault_ttl import EXPIRY_MARGIN, RENEW_FRACTION

__all__ = [
    "EXPIRY_MARGIN", "FORBIDDEN_RELOGIN_INTERVAL", "RENEW_FRACTION", "VaultError",
    "VaultErrorKind", "VaultSource", "make_client",
]



def make_client(settings: VaultSettings) -> hvac.Client:
    """An hvac client configured only from ``settings``.

    hvac falls back to ``VAULT_ADDR``, ``VAULT_TOKEN``, ``VAULT_CACERT``,
    ``VAULT_CAPATH`` and ``VAULT_CLIENT_CERT`` when its arguments are None. The
    environment belongs to ``syncer.config``, so the adapter is built here with
    every value explicit and no token. Redirects are not followed: requests would
    carry the ``X-Vault-Token`` header to whatever host a redirect names.
    """
    if not settings.address:
        raise ValueError("VaultSettings.address must not be empty")
    if settings.ca_cert:
        load_ca(settings.ca_cert, "vault.ca_cert")
    verify: bool | str = settings.ca_cert or True
    auth = settings.auth
    # cert auth: the pair goes with every request, as with VAULT_CLIENT_CERT, because Vault
    # checks the certificate again when the token is renewed.
    cert = (auth.client_cert, auth.client_key) if auth.method == "cert" else None

    def adapter(**kwargs: Any) -> hvac.adapters.JSONAdapter:
        # hvac.Client fills ``cert`` from VAULT_CLIENT_CERT/KEY when it is None: replace it.
        kwargs.update(cert=cert, verify=verify, token="", namespace=settings.namespace or None)
        return hvac.adapters.JSONAdapter(**kwargs)

    return hvac.Client(
        url=settings.address,
        token="",
        verify=verify,
        timeout=settings.timeout,
        allow_redirects=False,
        namespace=settings.namespace or None,
        adapter=adapter,
    )


class VaultSource:
    """Reads registry credentials from one Vault KV mount with one login per process."""

    def __init__(self, client: hvac.Client, settings: VaultSettings,
                 **session: Unpack[SessionOptions]) -> None:
        self._client = client
        self._settings = settings
        self.session = TokenSession(client, settings, **session)
        """The token's life: login, renewal, re-login, revoke."""
        self._errors = self.session.translator
        self._digest_key = secrets.token_bytes(32)
        """Keys the KV v1 change digests: they mean nothing outside this process."""

    def __repr__(self) -> str:
        return (
            f"VaultSource(address={self._settings.shown_address!r}, "
            f"method={self._settings.auth.method!r}, logins={self.logins})"
        )

    @property
    def logins(self) -> int:
        """Logins performed (for the token method: tokens adopted)."""
        return self.session.logins

    @property
    def renewals(self) -> int:
        """Successful token renewals."""
        return self.session.renewals

    @property
    def _token(self) -> str:
        # Leak checks in the tests add the live token to their sentinels.
        return self.session.token

    # ------------------------------------------------------------------ public API

    def ensure_login(self) -> None:
        """Make sure a usable token is set: log in, renew or log in again as needed."""
        self.session.ensure()

    def read(self, registry: RegistrySettings) -> VersionedCredential:
        """The credential for ``registry`` and the KV v2 version it came from."""
        self.ensure_login()
        token_used = self.session.token
        try:
            data, version = self._fetch(registry.path)
        except VaultError as exc:
            if exc.kind is not VaultErrorKind.FORBIDDEN:
                raise
            if not self.session.recover_from_forbidden(token_used, exc):
                raise
            data, version = self._fetch(registry.path)
        return VersionedCredential(self._credential(registry, data), version)

    def api_path(self, path: str) -> str:
        """The API path a read of KV ``path`` uses (``secret/data/x`` for KV v2), as policies name it."""
        if self._settings.kv_version == 2:
            return f"{self._settings.kv_mount}/data/{path}"
        return self._display(path)

    def metadata_path(self, path: str) -> str:
        """The API path change detection reads for KV ``path`` (KV v2 metadata; KV v1 the data)."""
        if self._settings.kv_version == 2:
            return f"{self._settings.kv_mount}/metadata/{path}"
        return self._display(path)

    def change_marker(self, path: str) -> str:
        """A value that changes whenever the credential at KV ``path`` does, in one request.

        KV v2: the metadata's ``current_version`` (and whether it is deleted), no secret data
        read. KV v1: a digest of the data keyed per process; only the digest is kept.
        """
        self.ensure_login()
        where = self.metadata_path(path)
        kv = self._client.secrets.kv
        mount = self._settings.kv_mount
        if self._settings.kv_version == 2:
            response = self._errors.idempotent(
                where, lambda: kv.v2.read_secret_metadata(path=path, mount_point=mount))
            meta = _mapping(response, "data") or {}
            current = meta.get("current_version")
            if not isinstance(current, int) or isinstance(current, bool):
                raise VaultError(VaultErrorKind.SERVER, where,
                                 f"Vault returned unexpected KV v2 metadata for {where}")
            state = _mapping(_mapping(meta, "versions"), str(current)) or {}
            gone = "destroyed" if state.get("destroyed") else "deleted" if state.get("deletion_time") else ""
            return f"v{current}{':' + gone if gone else ''}"
        response = self._errors.idempotent(
            where, lambda: kv.v1.read_secret(path=path, mount_point=mount))
        data = _mapping(response, "data")
        if data is None:
            raise VaultError(VaultErrorKind.SERVER, where,
                             f"Vault returned an unexpected KV response for {where}")
        canonical = json.dumps(data, sort_keys=True, default=str).encode()
        return "d" + hmac.new(self._digest_key, canonical, hashlib.sha256).hexdigest()

    def capabilities(self, paths: list[str]) -> dict[str, list[str]]:
        """The current token's capabilities on each API path (``sys/capabilities-self``).

        Answers what the policies grant without reading anything, so a preflight can tell
        "denied by policy" from "missing". Logs in first if needed.
        """
        self.ensure_login()
        where = "sys/capabilities-self"
        response = self._errors.idempotent(where, lambda: self._client.sys.get_capabilities(paths))
        body = _mapping(response, "data") or (response if isinstance(response, Mapping) else {})
        result = {}
        for path in paths:
            caps = body.get(path)
            if not isinstance(caps, list):
                raise VaultError(VaultErrorKind.SERVER, where,
                                 f"unexpected answer from Vault at {where} for {path}")
            result[path] = [str(c) for c in caps]
        return result

    def token_ttl(self) -> float | None:
        """Seconds left on the current token (``math.inf`` if it never expires); None if unknown."""
        return self.session.remaining()

    def close(self) -> None:
        """Revoke a token this source obtained by login; forget any token. Idempotent."""
        self.session.close()

    # ------------------------------------------------------------------ KV

    def _display(self, path: str) -> str:
        return f"{self._settings.kv_mount}/{path}"

    def _fetch(self, path: str) -> tuple[Mapping[str, Any], int | None]:
        where = self._display(path)
        kv = self._client.secrets.kv
        if self._settings.kv_version == 2:
            try:
                response = self._errors.idempotent(where, lambda: kv.v2.read_secret_version(
                    path=path, mount_point=self._settings.kv_mount, raise_on_deleted_version=True,
                ))
            except VaultError as exc:
                if exc.kind is not VaultErrorKind.MISSING:
                    raise
                if isinstance(exc.__cause__, Exception):
                    self._raise_deleted(where, exc.__cause__)
                raise VaultError(exc.kind, exc.path, exc.message) from None
            body = _mapping(response, "data")
            data = _mapping(body, "data") if body is not None else None
            metadata = _mapping(body, "metadata") if body is not None else None
            version_value = metadata.get("version") if metadata is not None else None
            version = version_value if isinstance(version_value, int) else None
            if data is None or version is None:
                raise VaultError(
                    VaultErrorKind.SERVER, where,
                    f"Vault returned an unexpected KV v2 response for {where} "
                    "(is kv_version right?)",
                )
            return data, version
        response = self._errors.idempotent(
            where, lambda: kv.v1.read_secret(path=path, mount_point=self._settings.kv_mount))
        data = _mapping(response, "data")
        if data is None:
            raise VaultError(
                VaultErrorKind.SERVER, where,
                f"Vault returned an unexpected KV response for {where}",
            )
        return data, None

    def _raise_deleted(self, where: str, cause: Exception) -> None:
        """Turn a KV v2 404 for a deleted or destroyed latest version into a precise MISSING."""
        body = getattr(cause, "json", None)
        data = _mapping(body, "data")
        metadata = _mapping(data, "metadata") if data is not None else None
        if metadata is None:
            return
        version = metadata.get("version")
        if metadata.get("destroyed"):
            raise VaultError(
                VaultErrorKind.MISSING, where,
                f"the latest version ({version}) of Vault secret {where} is destroyed",
            ) from None
        if metadata.get("deletion_time"):
            raise VaultError(
                VaultErrorKind.MISSING, where,
                f"the latest version ({version}) of Vault secret {where} is deleted",
            ) from None

    def _credential(self, registry: RegistrySettings, data: Mapping[str, Any]) -> Credential:
        where = self._display(registry.path)
        username = registry.username or _field(data, registry.username_key, where)
        if ":" in username:
            # docker and kubelet split ``auth`` at the first ':': the part after it would be
            # taken for the password (issue 16, item 5). Checked here, so it holds with the
            # probe off too. The value itself is never shown.
            raise VaultError(
                VaultErrorKind.INVALID, where,
                f"the username for registry {registry.host} (Vault secret {where}, key "
                f"{registry.username_key!r}) contains ':', which a docker config cannot carry",
            )
        password = _field(data, registry.password_key, where)
        return Credential(username=username, password=password)


def _mapping(container: object, key: str) -> Mapping[str, Any] | None:
    if not isinstance(container, Mapping):
        return None
    value = container.get(key)
    return value if isinstance(value, Mapping) else None


def _field(data: Mapping[str, Any], key: str, where: str) -> str:
    if key not in data:
        present = ", ".join(sorted(str(k) for k in data)) or "none"
        raise VaultError(
            VaultErrorKind.INVALID, where,
            f"Vault secret {where} has no key {key!r} (keys present: {present})",
        )
    value = data[key]
    if not isinstance(value, str):
        raise VaultError(
            VaultErrorKind.INVALID, where,
            f"key {key!r} of Vault secret {where} must be a string, not {_type_name(value)}",
        )
    if not value.strip():
        raise VaultError(
            VaultErrorKind.INVALID, where, f"key {key!r} of Vault secret {where} is empty"
        )
    return value


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, Mapping):
        return "a map"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return type(value).__name__
