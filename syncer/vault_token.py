"""The life of one Vault token: log in (or adopt a supplied one), renew, re-login, revoke.

``TokenSession`` logs in lazily with the configured method (``vault_login.LOGINS``),
renews a renewable token before it runs low, logs in again when it expired, was
revoked or its policies look stale after a 403, and revokes what it obtained on
``close()`` so a CronJob run leaks no lease. For the token method it adopts the
supplied token (file or ``VAULT_TOKEN``) and never revokes it.

Thread-safe: every change of token state happens under one re-entrant lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypedDict

import hvac

from syncer.config import VaultSettings
from syncer.secretfiles import read_secret_file
from syncer.vault_errors import Translator, VaultError, VaultErrorKind
from syncer.vault_login import LOGINS
from syncer.vault_ttl import TokenClock

log = logging.getLogger(__name__)

FORBIDDEN_RELOGIN_INTERVAL = 60.0
"""Seconds: a 403 with a token that still looks valid triggers a fresh login (its
policy list may be stale) only if the last login is at least this old. Bounds
login storms when a path is genuinely denied."""

_REDACTED = "<redacted>"
_TOKEN_PATH = "auth/token"


class SessionOptions(TypedDict, total=False):
    """What a ``VaultSource`` passes on to its ``TokenSession`` (the defaults are the session's)."""

    read_file: Callable[[str], str]
    """Reads a credential file (tests hand in their own)."""
    clock: Callable[[], float]
    """Monotonic seconds, for renewal and re-login timing."""


class TokenSession:
    """Holds the token an ``hvac.Client`` uses, and keeps it valid."""

    def __init__(
        self,
        client: hvac.Client,
        settings: VaultSettings,
        read_file: Callable[[str], str] = read_secret_file,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._auth = settings.auth
        self._read_file = read_file
        self._clock = clock
        self._lock = threading.RLock()
        self.token = ""
        """The token in use ("" before a login); never logged."""
        self._owned = False
        """True when this session obtained the token by logging in (and must revoke it)."""
        self.ttl = TokenClock(clock)
        self._logged_in_at: float | None = None
        self._sensitive: set[str] = set()
        self._closed = False
        """After close() no new login may happen (a late maintenance job would leak a token)."""
        self.translator = Translator(settings.shown_address, settings.namespace,
                                     settings.timeout, self.scrub,
                                     drop_idle=client.adapter.session.close)
        self.logins = 0
        """Logins performed (for the token method: tokens adopted)."""
        self.renewals = 0
        """Successful token renewals."""

    @property
    def can_login(self) -> bool:
        """False for the token method: a supplied token cannot be replaced by a login."""
        return self._auth.method != "token"

    def scrub(self, text: str) -> str:
        """``text`` with every token, secret ID and JWT this session has seen removed."""
        for secret in self._sensitive | {self.token, self._auth.token}:
            if secret:
                text = text.replace(secret, _REDACTED)
        return text

    # ------------------------------------------------------------------ public

    def ensure(self) -> None:
        """Make sure a usable token is set: log in, adopt, renew or log in again as needed."""
        with self._lock:
            if self._closed:
                raise VaultError(VaultErrorKind.AUTH, f"auth/{self._auth.mount_path}",
                                 "the Vault session is closed (shutting down)")
            if not self.can_login:
                supplied = self._supplied_token(required=not self.token)
                if supplied and supplied != self.token:
                    self._adopt(supplied)
                    return
            elif not self.token:
                self._login()
                return
            self._maintain()

    def remaining(self) -> float | None:
        """Seconds left on the token (``math.inf`` if it never expires); None if unknown."""
        with self._lock:
            return self.ttl.remaining() if self.token else None

    def recover_from_forbidden(self, token_used: str, error: VaultError) -> bool:
        """After a 403: True if a new token is in place and the request should be retried.

        Raises AUTH instead of FORBIDDEN when the supplied token itself is dead.
        """
        with self._lock:
            if self.token != token_used:
                return True  # another thread already replaced the token
            if not self.can_login:
                return self._recover_supplied(token_used, error)
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

    def close(self) -> None:
        """Revoke a token this session obtained by login; forget any token. Idempotent."""
        with self._lock:
            self._closed = True
            if self.token and self._owned:
                self._revoke(self.token, "shutdown")
            self._set_token("", owned=False)
            self.ttl.clear()

    # ------------------------------------------------------------------ supplied token

    def _supplied_token(self, required: bool) -> str:
        """The token of the token method: the token file's content, else settings.auth.token."""
        auth = self._auth
        if not auth.token_file:
            if not auth.token:
                raise VaultError(VaultErrorKind.AUTH, _TOKEN_PATH,
                                 "no Vault token configured (set vault.auth.token_file or VAULT_TOKEN)")
            return auth.token
        try:
            token = self._read_file(auth.token_file)
        except OSError as exc:
            if required:
                raise VaultError(VaultErrorKind.AUTH, _TOKEN_PATH,
                                 f"cannot read Vault token file {auth.token_file}: "
                                 f"{exc.strerror or type(exc).__name__}") from None
            log.warning("cannot re-read Vault token file %s (%s); keeping the current token",
                        auth.token_file, exc.strerror or type(exc).__name__)
            return self.token
        if not token and required:
            raise VaultError(VaultErrorKind.AUTH, _TOKEN_PATH,
                             f"Vault token file {auth.token_file} is empty")
        return token or self.token

    def _adopt(self, token: str) -> None:
        """Use a user-supplied token (token method) after checking it with lookup-self."""
        self._sensitive.add(token)
        previous = self._client.token
        self._client.token = token
        try:
            data = self._lookup_self()
        except VaultError as exc:
            self._client.token = previous
            if exc.kind is VaultErrorKind.AUTH:
                raise VaultError(exc.kind, exc.path,
                                 f"Vault rejected the supplied token (lookup-self: {exc.message}); "
                                 "is it expired or revoked?") from None
            raise
        self._set_token(token, owned=False)
        self.ttl.from_lookup(data)
        self.logins += 1
        self._logged_in_at = self._clock()
        log.info("using the supplied Vault token (%s, renewable=%s)",
                 self.ttl.describe(), self.ttl.renewable)

    def _recover_supplied(self, token_used: str, error: VaultError) -> bool:
        supplied = self._supplied_token(required=False)
        if supplied and supplied != token_used:
            self._adopt(supplied)
            return True
        if not self._token_is_valid():
            raise VaultError(VaultErrorKind.AUTH, error.path,
                             f"{error.message}: the supplied Vault token is revoked or expired")
        return False

    # ------------------------------------------------------------------ login, renew, revoke

    def _secret(self, path: str, what: str) -> str:
        """Read a credential file for a login; its content becomes a scrubbed secret."""
        where = f"auth/{self._auth.mount_path}"
        try:
            value = self._read_file(path)
        except OSError as exc:
            raise VaultError(VaultErrorKind.AUTH, where,
                             f"cannot read the {what} file {path} for {where}: "
                             f"{exc.strerror or type(exc).__name__}") from None
        if not value:
            raise VaultError(VaultErrorKind.AUTH, where, f"the {what} file {path} is empty")
        self._sensitive.add(value)
        return value

    def _login(self) -> None:
        """Log in with the configured method; revoke the token this replaces.

        Never retried here: a login whose answer was lost may have minted a token.
        """
        auth = self._auth
        where = f"auth/{auth.mount_path}"
        login = LOGINS.get(auth.method)
        if login is None:
            raise VaultError(VaultErrorKind.AUTH, where, f"unknown Vault auth method {auth.method!r}")
        block = self._call(where, "auth", lambda: login(self._client, auth, self._secret))
        try:
            token = str(block["client_token"])
            ttl = float(block.get("lease_duration") or 0)
            renewable = bool(block.get("renewable"))
        except (KeyError, TypeError, ValueError):
            raise VaultError(VaultErrorKind.SERVER, where,
                             f"Vault login at {where} returned no token") from None
        self._sensitive.add(token)
        old_token, old_owned = self.token, self._owned
        self._set_token(token, owned=True)
        self.ttl.set(ttl, renewable, full=ttl)
        self.logins += 1
        self._logged_in_at = self._clock()
        log.info("logged in to Vault at %s (login #%d, %s, renewable=%s)",
                 where, self.logins, self.ttl.describe(), renewable)
        if old_owned and old_token and old_token != token:
            self._revoke(old_token, "replaced")

    def _set_token(self, token: str, owned: bool) -> None:
        self.token = token
        self._client.token = token
        self._owned = owned
        self.ttl.renew_exhausted = False

    def _maintain(self) -> None:
        """Renew a token running low; log in again when it expired or cannot be renewed."""
        due = self.ttl.due()
        if due == "expired":
            if self.can_login:
                log.info("Vault token expired or about to expire; logging in again")
                self._login()
        elif due == "renew":
            self._renew()
        elif due == "relogin" and self.can_login:
            log.info("Vault token is running low and cannot be renewed; logging in again")
            self._login()

    def _renew(self) -> None:
        try:
            block = self._call(_TOKEN_PATH, "auth", self._client.auth.token.renew_self,
                               idempotent=True)
            ttl = float(block.get("lease_duration") or 0)
            renewable = bool(block.get("renewable"))
        except VaultError as exc:
            if exc.kind in (VaultErrorKind.UNREACHABLE, VaultErrorKind.SEALED):
                raise
            log.warning("Vault token renewal failed (%s)", exc.kind.value)
            if exc.kind is VaultErrorKind.AUTH:
                self._owned = False  # the token is dead: nothing to revoke
            if self.can_login:
                self._login()
            else:
                self.ttl.exhaust()
            return
        except (KeyError, TypeError, ValueError):
            log.warning("Vault token renewal returned no auth block")
            if self.can_login:
                self._login()
            return
        self.ttl.set(ttl, renewable, full=self.ttl.full)
        self.renewals += 1
        log.debug("renewed the Vault token (%s)", self.ttl.describe())
        if not self.ttl.capped(ttl):
            return
        # Capped by the token's max TTL: renewing again would not help.
        if self.can_login:
            log.info("Vault token reached its maximum TTL; logging in again")
            self._login()
        else:
            self.ttl.exhaust()
            log.warning("the supplied Vault token reached its maximum TTL and expires in %ds; "
                        "replace it", int(ttl))

    def _revoke(self, token: str, why: str) -> None:
        """Best-effort revoke-self of a token this session obtained."""
        adapter = type(self._client.adapter).from_adapter(self._client.adapter)
        adapter.token = token
        try:
            with self.translator.translate(_TOKEN_PATH, auth=True):
                adapter.post("/v1/auth/token/revoke-self")
        except VaultError as exc:
            # A replaced token may simply have expired already: not worth a warning.
            level = logging.WARNING if why == "shutdown" else logging.DEBUG
            log.log(level, "could not revoke the Vault token (%s): %s", why, exc.kind.value)
        else:
            log.info("revoked the Vault token this process obtained (%s)", why)

    def _lookup_self(self) -> Mapping[str, Any]:
        return self._call(_TOKEN_PATH, "data", self._client.auth.token.lookup_self, idempotent=True)

    def _token_is_valid(self) -> bool:
        """lookup-self with the current token; False if Vault rejects it."""
        try:
            data = self._lookup_self()
        except VaultError as exc:
            if exc.kind in (VaultErrorKind.AUTH, VaultErrorKind.FORBIDDEN):
                return False
            raise
        self.ttl.from_lookup(data)
        return True

    def _call(self, where: str, key: str, request: Callable[[], object],
              idempotent: bool = False) -> Mapping[str, Any]:
        """Run an auth/token request and return the ``key`` block of its JSON answer."""
        if idempotent:
            response = self.translator.idempotent(where, request, auth=True)
        else:
            with self.translator.translate(where, auth=True):
                response = request()
        block = response.get(key) if isinstance(response, Mapping) else None
        if not isinstance(block, Mapping):
            status = getattr(response, "status_code", None)
            raise VaultError(VaultErrorKind.SERVER, where,
                             f"unexpected answer from Vault at {where}"
                             + (f" (HTTP {status})" if status is not None else ""))
        return block
