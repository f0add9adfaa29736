"""Vault failures as domain outcomes: ``VaultError`` with a ``kind``, and the one place that
turns hvac and requests exceptions into it.

The mapping is a table, the way hvac maps HTTP statuses to its exception classes
(``hvac.utils.raise_for_error``): one row per hvac exception with the kind of a KV
read, the kind during a login or token call, and the message. Messages never contain
a token, secret ID, JWT or secret value; the caller's ``scrub`` removes any that
Vault echoes back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import NoReturn, TypeVar

import hvac.exceptions
import requests

log = logging.getLogger(__name__)

_DETAIL_MAX = 200
T = TypeVar("T")


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


@dataclass(frozen=True)
class _Row:
    kind: VaultErrorKind
    """The kind for a KV read or a capabilities query."""
    login_kind: VaultErrorKind
    """The kind during a login or a token call (a 403 there means bad credentials)."""
    message: str
    """Template with ``{where}``, ``{ns}``, ``{detail}``, ``{address}``, ``{name}``."""
    login_message: str = ""
    """Template during a login, when it differs."""


K = VaultErrorKind
HVAC_ERRORS: dict[type[hvac.exceptions.VaultError], _Row] = {
    hvac.exceptions.Forbidden: _Row(K.FORBIDDEN, K.AUTH, "Vault denied access to {where}{ns}{detail}"),
    hvac.exceptions.Unauthorized: _Row(K.AUTH, K.AUTH,
                                       "Vault rejected the credentials for {where}{ns}{detail}"),
    hvac.exceptions.InvalidPath: _Row(K.MISSING, K.AUTH, "no Vault secret at {where}{ns}",
                                      "no auth method mounted at {where}{ns}"),
    hvac.exceptions.InvalidRequest: _Row(K.INVALID, K.AUTH,
                                         "Vault rejected the request for {where}{ns}{detail}"),
    hvac.exceptions.VaultDown: _Row(K.SEALED, K.SEALED,
                                    "Vault at {address} is sealed or unavailable ({where})"),
    hvac.exceptions.RateLimitExceeded: _Row(K.RATE_LIMITED, K.RATE_LIMITED,
                                            "Vault rate limit exceeded ({where})"),
}
"""hvac exception -> how the syncer reports it. Anything else is ``_OTHER``."""
_OTHER = _Row(K.SERVER, K.SERVER, "Vault server error for {where}{ns}: {name}{detail}")

TRANSPORT_ERRORS: tuple[tuple[type[requests.exceptions.RequestException], str], ...] = (
    (requests.exceptions.Timeout,
     "Vault at {address} did not answer within {timeout:g}s ({where})"),
    (requests.exceptions.SSLError,
     "TLS handshake with Vault at {address} failed ({where}); check vault.ca_cert"),
    (requests.exceptions.RequestException, "cannot reach Vault at {address} ({where}): {name}"),
)
"""requests exception -> message of an ``UNREACHABLE`` error; the first match wins."""


def is_stale_connection(exc: BaseException) -> bool:
    """True for a connection-level failure that a fresh connection may not repeat.

    hvac passes requests' exceptions through. A pooled connection that Vault closed
    (``http_idle_timeout``) just as it is reused surfaces as ``ConnectionError`` wrapping
    urllib3's ``ProtocolError`` (``RemoteDisconnected``, ``ConnectionResetError``). TLS
    failures and timeouts are subclasses or siblings that a retry would only repeat.
    """
    return isinstance(exc, requests.exceptions.ConnectionError) and not isinstance(
        exc, requests.exceptions.SSLError | requests.exceptions.Timeout
    )


@dataclass(frozen=True)
class Translator:
    """Maps library exceptions to ``VaultError`` for one Vault server."""

    address: str
    """The address as it may be printed (no userinfo)."""
    namespace: str
    timeout: float
    scrub: Callable[[str], str]
    """Removes known secrets from text Vault sent back."""
    drop_idle: Callable[[], None] = lambda: None
    """Closes the pooled connections, so a retry cannot pick another dead one."""

    @contextmanager
    def translate(self, where: str, auth: bool = False) -> Iterator[None]:
        """Map hvac and requests exceptions raised inside to ``VaultError`` for ``where``."""
        try:
            yield
        except VaultError:
            raise
        except hvac.exceptions.VaultError as exc:
            self._raise_mapped(exc, where, auth)
        except requests.exceptions.RequestException as exc:
            message = next(m for cls, m in TRANSPORT_ERRORS if isinstance(exc, cls))
            raise VaultError(VaultErrorKind.UNREACHABLE, where, message.format(
                address=self.address, timeout=self.timeout, where=where, name=type(exc).__name__,
            )) from None

    def idempotent(self, where: str, request: Callable[[], T], auth: bool = False) -> T:
        """Run a read-only ``request``; once more on a fresh connection if the pooled one was dead.

        Never use this for a login: a login that reached Vault and lost only its answer
        would mint a second token (issue 11, item 3).
        """
        with self.translate(where, auth):
            try:
                return request()
            except requests.exceptions.RequestException as exc:
                if not is_stale_connection(exc):
                    raise
                log.info("Vault connection was closed under a request to %s (%s); retrying once "
                         "on a new connection", where, type(exc).__name__)
                # Vault closes idle connections together (http_idle_timeout): the others in
                # the pool are as stale as this one.
                self.drop_idle()
        with self.translate(where, auth):
            return request()

    def _detail(self, exc: hvac.exceptions.VaultError) -> str:
        errors = exc.errors
        if isinstance(errors, list):
            text = "; ".join(str(e) for e in errors if e)
        elif isinstance(errors, str):
            text = errors
        else:
            text = ""
        return f" ({self.scrub(text)[:_DETAIL_MAX]})" if text else ""

    def _raise_mapped(self, exc: hvac.exceptions.VaultError, where: str, auth: bool) -> NoReturn:
        row = next((r for cls, r in HVAC_ERRORS.items() if isinstance(exc, cls)), _OTHER)
        kind = row.login_kind if auth else row.kind
        template = (row.login_message or row.message) if auth else row.message
        message = template.format(
            where=where, ns=f" in namespace {self.namespace}" if self.namespace else "",
            detail=self._detail(exc), address=self.address, name=type(exc).__name__,
        )
        error = VaultError(kind, where, message)
        if kind is VaultErrorKind.MISSING:
            # keep the hvac exception: the KV reader inspects its body for deletion metadata
            raise error from exc
        raise error from None
