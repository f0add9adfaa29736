"""Read registry credentials from Vault (or OpenBao) KV, logging in once per process.

``VaultSource`` owns the token life cycle: it logs in lazily (token, AppRole or
Kubernetes auth), renews a renewable token before it runs low, logs in again
when the token expired or was revoked, and revokes what it obtained on
``close()`` so a CronJob run leaks no lease. Every failure surfaces as a
``VaultError`` with a ``kind`` the caller can act on and the KV path or auth
mount it concerns. Tokens, secret IDs, JWTs and secret values never reach an
exception message, a log line or a ``repr``.

The source is safe to share between threads: token state changes under a lock,
KV reads run in parallel.
"""

from __future__ import annotations

import logging
import math
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

import hvac
import hvac.adapters
import hvac.exceptions
import requests

from syncer.config import RegistrySettings, VaultSettings
from syncer.credential import Credential, VersionedCredential

log = logging.getLogger(__name__)

RENEW_FRACTION = 1 / 3
"""Renew once less than this share of the token's full TTL remains."""

EXPIRY_MARGIN = 5.0
"""Seconds: a token with less left than this (or a tenth of its full TTL, if that is
smaller) is treated as already expired."""

FORBIDDEN_RELOGIN_INTERVAL = 60.0
"""Seconds: a 403 with a token that still looks valid triggers a fresh login (its
policy list may be stale) only if the last login is at least this old. Bounds
login storms when a path is genuinely denied."""

_REDACTED = "<redacted>"
_DETAIL_MAX = 200


class VaultErrorKind(StrEnum):
    """Why a Vault operation failed; decides how the caller reacts."""

    UNREACHABLE = "unreachable"
    """Connection refused, DNS, TLS or timeout: transient, retry later."""
    FORBIDDEN = "forbidden"
    """The token's policies do not allow the path (after a fresh login)."""
    MISSING = "missing"
    """No secret at the path, or its latest version is deleted or destroyed."""
    INVALID = "invalid"
    """The secret exists but lacks a key or holds a value of the wrong type."""
    SEALED = "sealed"
    """Vault answered 503: sealed or not ready."""
    AUTH = "auth"
    """Login failed or the token was rejected; fix the credentials of the syncer."""
    RATE_LIMITED = "rate_limited"
    """Vault answered 429."""
    SERVER = "server"
    """Any other server-side failure (5xx, unexpected response)."""


class VaultError(Exception):
    """A Vault failure. ``path`` is the KV path (``mount/path``) or auth mount (``auth/NAME``).

    The message never contains a token, secret ID, JWT or secret value.
    """

    def __init__(self, kind: VaultErrorKind, path: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.path = path

    @property
    def message(self) -> str:
        """The human-readable description."""
        return str(self.args[0])

    def __repr__(self) -> str:
        return f"VaultError(kind={self.kind.value!r}, path={self.path!r}, message={self.message!r})"


def _read_stripped(path: str) -> str:
    """Read a credential file (token, secret ID, JWT) and strip surrounding whitespace."""
    return Path(path).read_text(encoding="utf-8").strip()


def _check_ca(ca_cert: str) -> None:
    """Fail at start-up, naming the key, rather than with an OSError on the first request."""
    where = {"capath": ca_cert} if os.path.isdir(ca_cert) else {"cafile": ca_cert}
    try:
        ssl.create_default_context().load_verify_locations(**where)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"vault.ca_cert {ca_cert!r} cannot be loaded as PEM ({exc})") from None


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
        _check_ca(settings.ca_cert)
    verify: bool | str = settings.ca_cert or True

    def adapter(**kwargs: Any) -> hvac.adapters.JSONAdapter:
        # hvac.Client fills ``cert`` from VAULT_CLIENT_CERT/KEY when it is None: drop it.
        kwargs.update(cert=None, verify=verify, token="", namespace=settings.namespace or None)
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

    def __init__(
        self,
        client: hvac.Client,
        settings: VaultSettings,
        read_file: Callable[[str], str] = _read_stripped,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._settings = settings
        self._auth = settings.auth
        self._read_file = read_file
        self._clock = clock
        self._lock = threading.RLock()
        self._token = ""
        self._owned = False
        """True when this source obtained the token by logging in (and must revoke it)."""
        self._ttl: float | None = None
        """Seconds left at ``_ttl_at``; ``math.inf`` for a token that never expires."""
        self._ttl_at = 0.0
        self._full_ttl = 0.0
        self._renewable = False
        self._renew_exhausted = False
        self._logged_in_at: float | None = None
        self._sensitive: set[str] = set()
        self._closed = False
        """After close() no new login may happen (a late maintenance job would leak a token)."""
        self.logins = 0
        """Logins performed (for the token method: tokens adopted)."""
        self.renewals = 0
        """Successful token renewals."""

    def __repr__(self) -> str:
        return (
            f"VaultSource(address={self._settings.address!r}, "
            f"method={self._auth.method!r}, logins={self.logins})"
        )

    # ------------------------------------------------------------------ public API

    def ensure_login(self) -> None:
        """Make sure a usable token is set: log in, renew or log in again as needed."""
        with self._lock:
            if self._closed:
                raise VaultError(VaultErrorKind.AUTH, f"auth/{self._auth.mount_path}",
                                 "the Vault session is closed (shutting down)")
            if self._auth.method == "token":
                supplied = self._supplied_token(required=not self._token)
                if supplied and supplied != self._token:
                    self._adopt(supplied)
                    return
                self._maintain()
                return
            if not self._token:
                self._login()
                return
            self._maintain()

    def read(self, registry: RegistrySettings) -> VersionedCredential:
        """The credential for ``registry`` and the KV v2 version it came from."""
        self.ensure_login()
        token_used = self._token
        try:
            data, version = self._fetch(registry.path)
        except VaultError as exc:
            if exc.kind is not VaultErrorKind.FORBIDDEN:
                raise
            if not self._recover_from_forbidden(token_used, exc):
                raise
            data, version = self._fetch(registry.path)
        return VersionedCredential(self._credential(registry, data), version)

    def api_path(self, path: str) -> str:
        """The API path a read of KV ``path`` uses (``secret/data/x`` for KV v2), as policies name it."""
        if self._settings.kv_version == 2:
            return f"{self._settings.kv_mount}/data/{path}"
        return self._display(path)

    def capabilities(self, paths: list[str]) -> dict[str, list[str]]:
        """The current token's capabilities on each API path (``sys/capabilities-self``).

        Answers what the policies grant without reading anything, so a preflight can tell
        "denied by policy" from "missing". Logs in first if needed.
        """
        self.ensure_login()
        where = "sys/capabilities-self"
        with self._translate(where):
            response = self._client.sys.get_capabilities(paths)
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
        with self._lock:
            if not self._token or self._ttl is None:
                return None
            if math.isinf(self._ttl):
                return math.inf
            return max(0.0, self._ttl - (self._clock() - self._ttl_at))

    def close(self) -> None:
        """Revoke a token this source obtained by login; forget any token. Idempotent."""
        with self._lock:
            self._closed = True
            if self._token and self._owned:
                self._revoke(self._token, "shutdown")
            self._forget()

    # ------------------------------------------------------------------ token life cycle

    def _forget(self) -> None:
        self._token = ""
        self._client.token = ""
        self._owned = False
        self._ttl = None
        self._renewable = False
        self._renew_exhausted = False

    def _supplied_token(self, required: bool) -> str:
        """The token of the token method: the token file's content, else settings.auth.token."""
        auth = self._auth
        if auth.token_file:
            try:
                token = self._read_file(auth.token_file)
            except OSError as exc:
                if required:
                    raise VaultError(
                        VaultErrorKind.AUTH,
                        "auth/token",
                        f"cannot read Vault token file {auth.token_file}: "
                        f"{exc.strerror or type(exc).__name__}",
                    ) from None
                log.warning(
                    "cannot re-read Vault token file %s (%s); keeping the current token",
                    auth.token_file, exc.strerror or type(exc).__name__,
                )
                return self._token
            if not token and required:
                raise VaultError(
                    VaultErrorKind.AUTH, "auth/token",
                    f"Vault token file {auth.token_file} is empty",
                )
            return token or self._token
        if not auth.token:
            raise VaultError(
                VaultErrorKind.AUTH,
                "auth/token",
                "no Vault token configured (set vault.auth.token_file or VAULT_TOKEN)",
            )
        return auth.token

    def _adopt(self, token: str) -> None:
        """Use a user-supplied token (token method) after checking it with lookup-self."""
        self._sensitive.add(token)
        previous = self._token
        self._client.token = token
        try:
            data = self._call("auth/token", "data", self._client.auth.token.lookup_self)
        except VaultError as exc:
            self._client.token = previous
            if exc.kind is VaultErrorKind.AUTH:
                raise VaultError(
                    exc.kind, exc.path,
                    f"Vault rejected the supplied token (lookup-self: {exc.message}); "
                    "is it expired or revoked?",
                ) from None
            raise
        self._token = token
        self._owned = False
        self._renew_exhausted = False
        self._apply_lookup(data)
        self.logins += 1
        self._logged_in_at = self._clock()
        log.info(
            "using the supplied Vault token (%s, renewable=%s)",
            self._describe_ttl(), self._renewable,
        )

    def _login(self) -> None:
        """Log in with AppRole or Kubernetes auth; revoke the token this replaces."""
        auth = self._auth
        mount = auth.mount_path
        where = f"auth/{mount}"
        if auth.method == "approle":
            secret_id = self._read_credential_file(auth.secret_id_file, "secret ID", where)
            block = self._call(where, "auth", lambda: self._client.auth.approle.login(
                role_id=auth.role_id, secret_id=secret_id, use_token=False, mount_point=mount
            ))
        elif auth.method == "kubernetes":
            jwt = self._read_credential_file(auth.jwt_file, "ServiceAccount token", where)
            block = self._call(where, "auth", lambda: self._client.auth.kubernetes.login(
                role=auth.role, jwt=jwt, use_token=False, mount_point=mount
            ))
        else:
            raise VaultError(
                VaultErrorKind.AUTH, where, f"unknown Vault auth method {auth.method!r}"
            )
        try:
            token = str(block["client_token"])
            ttl = float(block.get("lease_duration") or 0)
            renewable = bool(block.get("renewable"))
        except (KeyError, TypeError, ValueError):
            raise VaultError(
                VaultErrorKind.SERVER, where, f"Vault login at {where} returned no token"
            ) from None
        self._sensitive.add(token)
        old_token, old_owned = self._token, self._owned
        self._token = token
        self._client.token = token
        self._owned = True
        self._renew_exhausted = False
        self._set_ttl(ttl, renewable, full=ttl)
        self.logins += 1
        self._logged_in_at = self._clock()
        log.info(
            "logged in to Vault at %s (login #%d, %s, renewable=%s)",
            where, self.logins, self._describe_ttl(), renewable,
        )
        if old_owned and old_token and old_token != token:
            self._revoke(old_token, "replaced")

    def _call(self, where: str, key: str, request: Callable[[], object]) -> Mapping[str, Any]:
        """Run an auth/token request and return the ``key`` block of its JSON answer."""
        with self._translate(where, auth=True):
            response = request()
        block = _mapping(response, key)
        if block is None:
            status = getattr(response, "status_code", None)
            raise VaultError(
                VaultErrorKind.SERVER, where,
                f"unexpected answer from Vault at {where}"
                + (f" (HTTP {status})" if status is not None else ""),
            )
        return block

    def _read_credential_file(self, path: str, what: str, where: str) -> str:
        try:
            value = self._read_file(path)
        except OSError as exc:
            raise VaultError(
                VaultErrorKind.AUTH,
                where,
                f"cannot read the {what} file {path} for {where}: "
                f"{exc.strerror or type(exc).__name__}",
            ) from None
        if not value:
            raise VaultError(VaultErrorKind.AUTH, where, f"the {what} file {path} is empty")
        self._sensitive.add(value)
        return value

    def _maintain(self) -> None:
        """Renew a token running low; log in again when it expired or cannot be renewed."""
        remaining = self.token_ttl()
        if remaining is None or math.isinf(remaining):
            return
        can_login = self._auth.method != "token"
        if remaining <= min(EXPIRY_MARGIN, self._full_ttl * 0.1):
            if can_login:
                log.info("Vault token expired or about to expire; logging in again")
                self._login()
            return
        if remaining >= self._full_ttl * RENEW_FRACTION:
            return
        if self._renewable and not self._renew_exhausted:
            self._renew()
        elif can_login:
            log.info("Vault token is running low and cannot be renewed; logging in again")
            self._login()

    def _renew(self) -> None:
        can_login = self._auth.method != "token"
        try:
            block = self._call("auth/token", "auth", self._client.auth.token.renew_self)
            ttl = float(block.get("lease_duration") or 0)
            renewable = bool(block.get("renewable"))
        except VaultError as exc:
            if exc.kind in (VaultErrorKind.UNREACHABLE, VaultErrorKind.SEALED):
                raise
            log.warning("Vault token renewal failed (%s)", exc.kind.value)
            if exc.kind is VaultErrorKind.AUTH:
                self._owned = False  # the token is dead: nothing to revoke
            if can_login:
                self._login()
            else:
                self._renew_exhausted = True
            return
        except (KeyError, TypeError, ValueError):
            log.warning("Vault token renewal returned no auth block")
            if can_login:
                self._login()
            return
        self._set_ttl(ttl, renewable, full=self._full_ttl)
        self.renewals += 1
        log.debug("renewed the Vault token (%s)", self._describe_ttl())
        if ttl < self._full_ttl * RENEW_FRACTION:
            # Capped by the token's max TTL: renewing again would not help.
            if can_login:
                log.info("Vault token reached its maximum TTL; logging in again")
                self._login()
            else:
                self._renew_exhausted = True
                log.warning(
                    "the supplied Vault token reached its maximum TTL and expires in %ds; "
                    "replace it", int(ttl),
                )

    def _revoke(self, token: str, why: str) -> None:
        """Best-effort revoke-self of a token this source obtained."""
        adapter = type(self._client.adapter).from_adapter(self._client.adapter)
        adapter.token = token
        try:
            with self._translate("auth/token", auth=True):
                adapter.post("/v1/auth/token/revoke-self")
        except VaultError as exc:
            # A replaced token may simply have expired already: not worth a warning.
            level = logging.WARNING if why == "shutdown" else logging.DEBUG
            log.log(level, "could not revoke the Vault token (%s): %s", why, exc.kind.value)
        else:
            log.info("revoked the Vault token this process obtained (%s)", why)

    def _token_is_valid(self) -> bool:
        """lookup-self with the current token; False if Vault rejects it."""
        try:
            data = self._call("auth/token", "data", self._client.auth.token.lookup_self)
        except VaultError as exc:
            if exc.kind in (VaultErrorKind.AUTH, VaultErrorKind.FORBIDDEN):
                return False
            raise
        self._apply_lookup(data)
        return True

    def _recover_from_forbidden(self, token_used: str, error: VaultError) -> bool:
        """After a 403: True if a new token is in place and the read should be retried.

        Raises AUTH instead of FORBIDDEN when the supplied token itself is dead.
        """
        with self._lock:
            if self._token != token_used:
                return True  # another thread already replaced the token
            if self._auth.method == "token":
                supplied = self._supplied_token(required=False)
                if supplied and supplied != token_used:
                    self._adopt(supplied)
                    return True
                if not self._token_is_valid():
                    raise VaultError(
                        VaultErrorKind.AUTH,
                        error.path,
                        f"{error.message}: the supplied Vault token is revoked or expired",
                    )
                return False
            if self._token_is_valid():
                age = self._clock() - (self._logged_in_at or 0.0)
                if age < FORBIDDEN_RELOGIN_INTERVAL:
                    return False
                log.info("403 from Vault at %s; logging in again in case policies changed",
                         error.path)
            else:
                log.info("Vault token was rejected (revoked or expired); logging in again")
                self._owned = False  # a dead token needs no revoke
            self._login()
            return True

    def _apply_lookup(self, data: Mapping[str, Any]) -> None:
        ttl = float(data.get("ttl") or 0)
        full = float(data.get("creation_ttl") or 0)
        if ttl <= 0:
            self._set_ttl(math.inf, bool(data.get("renewable")), full=math.inf)
        else:
            self._set_ttl(ttl, bool(data.get("renewable")), full=max(full, ttl))

    def _set_ttl(self, ttl: float, renewable: bool, full: float) -> None:
        if ttl <= 0:
            ttl = full = math.inf
        self._ttl = ttl
        self._ttl_at = self._clock()
        self._full_ttl = full
        self._renewable = renewable

    def _describe_ttl(self) -> str:
        if self._ttl is None:
            return "ttl unknown"
        if math.isinf(self._ttl):
            return "no expiry"
        return f"ttl {int(self._ttl)}s"

    # ------------------------------------------------------------------ KV

    def _display(self, path: str) -> str:
        return f"{self._settings.kv_mount}/{path}"

    def _fetch(self, path: str) -> tuple[Mapping[str, Any], int | None]:
        where = self._display(path)
        kv = self._client.secrets.kv
        if self._settings.kv_version == 2:
            try:
                with self._translate(where):
                    response = kv.v2.read_secret_version(
                        path=path, mount_point=self._settings.kv_mount,
                        raise_on_deleted_version=True,
                    )
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
        with self._translate(where):
            response = kv.v1.read_secret(path=path, mount_point=self._settings.kv_mount)
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
        password = _field(data, registry.password_key, where)
        return Credential(username=username, password=password)

    # ------------------------------------------------------------------ error mapping

    def _scrub(self, text: str) -> str:
        for secret in self._sensitive | {self._token, self._auth.token}:
            if secret:
                text = text.replace(secret, _REDACTED)
        return text[:_DETAIL_MAX]

    def _detail(self, exc: hvac.exceptions.VaultError) -> str:
        errors = exc.errors
        if isinstance(errors, list):
            text = "; ".join(str(e) for e in errors if e)
        elif isinstance(errors, str):
            text = errors
        else:
            text = ""
        return f" ({self._scrub(text)})" if text else ""

    @contextmanager
    def _translate(self, where: str, auth: bool = False) -> Iterator[None]:
        """Map hvac and requests exceptions to VaultError for ``where``."""
        try:
            yield
        except VaultError:
            raise
        except hvac.exceptions.VaultError as exc:
            self._raise_mapped(exc, where, auth)
        except requests.exceptions.Timeout:
            raise VaultError(
                VaultErrorKind.UNREACHABLE, where,
                f"Vault at {self._settings.address} did not answer within "
                f"{self._settings.timeout:g}s ({where})",
            ) from None
        except requests.exceptions.SSLError:
            raise VaultError(
                VaultErrorKind.UNREACHABLE, where,
                f"TLS handshake with Vault at {self._settings.address} failed ({where}); "
                "check vault.ca_cert",
            ) from None
        except requests.exceptions.RequestException as exc:
            raise VaultError(
                VaultErrorKind.UNREACHABLE, where,
                f"cannot reach Vault at {self._settings.address} ({where}): "
                f"{type(exc).__name__}",
            ) from None

    def _raise_mapped(self, exc: hvac.exceptions.VaultError, where: str, auth: bool) -> NoReturn:
        detail = self._detail(exc)
        ns = f" in namespace {self._settings.namespace}" if self._settings.namespace else ""
        kind: VaultErrorKind
        if isinstance(exc, hvac.exceptions.Forbidden):
            kind = VaultErrorKind.AUTH if auth else VaultErrorKind.FORBIDDEN
            message = f"Vault denied access to {where}{ns}{detail}"
        elif isinstance(exc, hvac.exceptions.Unauthorized):
            kind = VaultErrorKind.AUTH
            message = f"Vault rejected the credentials for {where}{ns}{detail}"
        elif isinstance(exc, hvac.exceptions.InvalidPath):
            kind = VaultErrorKind.AUTH if auth else VaultErrorKind.MISSING
            message = (
                f"no auth method mounted at {where}{ns}" if auth
                else f"no Vault secret at {where}{ns}"
            )
        elif isinstance(exc, hvac.exceptions.InvalidRequest):
            kind = VaultErrorKind.AUTH if auth else VaultErrorKind.INVALID
            message = f"Vault rejected the request for {where}{ns}{detail}"
        elif isinstance(exc, hvac.exceptions.VaultDown):
            kind = VaultErrorKind.SEALED
            message = f"Vault at {self._settings.address} is sealed or unavailable ({where})"
        elif isinstance(exc, hvac.exceptions.RateLimitExceeded):
            kind = VaultErrorKind.RATE_LIMITED
            message = f"Vault rate limit exceeded ({where})"
        else:
            kind = VaultErrorKind.SERVER
            message = f"Vault server error for {where}{ns}: {type(exc).__name__}{detail}"
        error = VaultError(kind, where, message)
        if kind is VaultErrorKind.MISSING:
            # keep the hvac exception: _fetch inspects its body for deletion metadata
            raise error from exc
        raise error from None


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
