"""HTTPS transport for talking to registries: session, TLS, proxies, redirects, retries, deadline.

Used by the login probe (syncer.probe) and meant for any later registry check (a manifest HEAD
with a scoped token): ``Transport.get`` sends one GET within a ``Deadline``, follows same-origin
redirects only, retries timeouts, 429 and 5xx, and turns every library failure into a
``TransportError`` whose reason is a probe reason and whose message holds no secret.

Why a watchdog: ``timeout`` in requests/urllib3 bounds each socket read, not a request, and
http.client reads the status line and headers itself, so a server trickling one byte per second
never trips it. Every socket opened within a deadline is registered with it; when the deadline
passes (or shutdown is requested) the watchdog shuts the sockets down, which ends any blocking
read at once (https://github.com/psf/requests/issues/3099 for the per-read semantics).
"""

from __future__ import annotations

import contextlib
import email.utils
import http.cookiejar
import logging
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import certifi  # requests' own CA bundle (a dependency of requests)
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from syncer.config import ProbeSettings
from syncer.proxies import ProxyChoice, ProxyEnv, choose_proxy
from syncer.secretfiles import load_ca

log = logging.getLogger(__name__)

USER_AGENT = "registry-credential-syncer"
MAX_REDIRECTS = 3
"""Same-origin redirect hops followed per request (e.g. ``/v2`` -> ``/v2/`` behind a proxy)."""
MAX_RETRY_AFTER = 30.0
"""Upper bound, in seconds, on a ``Retry-After`` we honour; a registry cannot stall a cycle."""
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
MAX_DRAIN = 64 * 1024
"""Bytes of an answer read (and dropped) so its connection can be reused; more is not worth it."""
WATCH_INTERVAL = 0.1
"""How often the watchdog looks at the deadline and the shutdown flag (seconds)."""
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})


class TransportError(Exception):
    """A request could not be completed. ``reason`` is a probe reason; the message is safe."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --------------------------------------------------------------------------- deadline


class Deadline:
    """A wall-clock bound on a group of requests (one probe with all its retries).

    Sockets opened while the deadline is active in a thread are registered (as duplicates of
    their descriptor, so a TLS wrap or a close elsewhere cannot invalidate them) and shut down
    when it expires, is cancelled, or ends.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self.end = clock() + seconds
        self.why = ""
        """Why it expired: "" (not), "deadline" or "shutdown"."""
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []

    def remaining(self) -> float:
        """Seconds left (never negative); 0 once expired."""
        return 0.0 if self.why else max(0.0, self.end - self._clock())

    def register(self, sock: socket.socket) -> None:
        dup = sock.dup()
        with self._lock:
            self._socks.append(dup)
            late = bool(self.why)
        if late:
            _shutdown(dup)

    def expire(self, why: str) -> None:
        """Mark expired and shut every registered socket down (idempotent)."""
        with self._lock:
            if not self.why:
                self.why = why
            socks = list(self._socks)
        for sock in socks:
            _shutdown(sock)

    def close(self) -> None:
        """End of the group: no connection outlives it (see Transport.release)."""
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            _shutdown(sock)
            sock.close()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


_active = threading.local()


def _watch(deadline: Deadline, done: threading.Event, cancelled: Callable[[], bool]) -> None:
    while not done.wait(min(WATCH_INTERVAL, max(deadline.remaining(), 0.001))):
        if cancelled():
            deadline.expire("shutdown")
            return
        if deadline.remaining() <= 0:
            deadline.expire("deadline")
            return


@contextlib.contextmanager
def deadline_scope(seconds: float, cancelled: Callable[[], bool] = lambda: False,
                   clock: Callable[[], float] = time.monotonic) -> Iterator[Deadline]:
    """Run the block under a fresh ``Deadline`` watched by its own thread."""
    deadline = Deadline(seconds, clock)
    done = threading.Event()
    watchdog = threading.Thread(target=_watch, args=(deadline, done, cancelled),
                                name="probe-deadline", daemon=True)
    previous = getattr(_active, "deadline", None)
    _active.deadline = deadline
    watchdog.start()
    try:
        yield deadline
    finally:
        _active.deadline = previous
        done.set()
        watchdog.join()
        deadline.close()


class _Watched:
    """Registers each new socket with the thread's active deadline (covers CONNECT and TLS)."""

    def _new_conn(self) -> socket.socket:
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        deadline = getattr(_active, "deadline", None)
        if deadline is not None:
            deadline.register(sock)
        return sock


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


# --------------------------------------------------------------------------- session


class _TLSAdapter(HTTPAdapter):
    """Verify with one SSLContext (system CAs + certifi + the configured extra CA).

    requests otherwise points urllib3 at certifi's file for ``verify=True``, which would replace
    rather than extend the trust store, so the adapter pins our context on every pool, on the
    proxy's TLS too, and uses pools whose sockets the deadline can close.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        pool_kwargs["ssl_context"] = self._context
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS  # type: ignore[assignment]

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        proxy_kwargs.setdefault("proxy_ssl_context", self._context)
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _POOLS
        return manager

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: bool | str, cert: Any = None
    ) -> tuple[Any, Any]:
        host_params, base_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        pool_kwargs: dict[str, Any] = dict(base_kwargs)
        pool_kwargs["ssl_context"] = self._context
        pool_kwargs["cert_reqs"] = "CERT_REQUIRED"
        pool_kwargs.pop("ca_certs", None)
        pool_kwargs.pop("ca_cert_dir", None)
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # Always verify against our context; never let a path override it per connection.
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = None
        conn.ca_cert_dir = None


def _ssl_context(ca_cert: str) -> ssl.SSLContext:
    context = ssl.create_default_context()  # the system store (OpenSSL default paths)
    context.load_verify_locations(cafile=certifi.where())  # requests' usual bundle, too
    if ca_cert:
        load_ca(ca_cert, "probe.ca_cert", context)
    return context


def make_session(settings: ProbeSettings) -> requests.Session:
    """An HTTP session for registry requests.

    * TLS trusts the system CAs plus certifi plus ``settings.ca_cert`` (added, never replacing).
    * ``trust_env`` is off: requests would otherwise read ``~/.netrc`` and attach those
      credentials to the unauthenticated ``GET /v2/``, and honour ``REQUESTS_CA_BUNDLE``; the
      proxy is chosen per request by ``Transport`` from the environment cli.py hands in.
    * Cookies are refused: a registry that sets a session cookie after one good login would
      otherwise make a later probe with a wrong password look valid.
    """
    session = requests.Session()
    session.trust_env = False
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    session.headers["User-Agent"] = USER_AGENT
    session.mount("https://", _TLSAdapter(_ssl_context(settings.ca_cert)))
    return session


# --------------------------------------------------------------------------- error causes


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps (``__cause__``, ``__context__``, urllib3's ``reason``,
    exceptions among ``args``), each once, depth first."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        err = stack.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        yield err
        nested = (err.__cause__, err.__context__, getattr(err, "reason", None), *err.args)
        stack.extend(e for e in nested if isinstance(e, BaseException))


# What OpenSSL reports when the peer answers a ClientHello with plain-text HTTP.
_PLAIN_HTTP_SSL_REASONS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE"})


def speaks_plain_http(exc: BaseException) -> bool:
    """True when a TLS failure means the server is a plain-HTTP endpoint."""
    return any(isinstance(err, ssl.SSLError) and err.reason in _PLAIN_HTTP_SSL_REASONS
               for err in causes(exc))


def _describe(err: BaseException) -> str:
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {err.verify_message}"
    if isinstance(err, ssl.SSLError):
        return f"TLS error: {err.reason or 'handshake failed'}"
    if isinstance(err, socket.gaierror):
        return "name resolution failed"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, ConnectionResetError):
        return "connection reset"
    if isinstance(err, TimeoutError | socket.timeout):
        return "timed out"
    return ""


def cause(exc: BaseException) -> str:
    """A short, secret-free cause for a transport error (never the URL or a body)."""
    for err in causes(exc):
        if described := _describe(err):
            return described
    return type(exc).__name__


_TUNNEL_FAILED = re.compile(r"Tunnel connection failed: (\d{3}(?: [A-Za-z][A-Za-z -]{0,40})?)")


def _proxy_status(exc: BaseException) -> str:
    """``403 Forbidden`` from urllib3's "Tunnel connection failed: 403 Forbidden", if any."""
    for err in causes(exc):
        if match := _TUNNEL_FAILED.search(str(err)):
            return match.group(1).strip()
    return ""


# --------------------------------------------------------------------------- URLs


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``url`` as requests will send it.

    requests prepares URLs with urllib3's parser, which ends the authority at a backslash, while
    ``urllib.parse`` does not: ``https://EVIL\\@registry/`` is ``registry`` to urlsplit and
    ``EVIL`` on the wire. Comparing what is sent is the only comparison that holds.
    """
    sent = requests.Request("GET", url).prepare().url or ""
    parts = urllib3.util.parse_url(sent)
    scheme = (parts.scheme or "").lower()
    return scheme, (parts.host or "").lower(), parts.port or (443 if scheme == "https" else 80)


def has_userinfo(url: str) -> bool:
    """True when ``url`` carries ``user[:password]@`` by either parser's reading."""
    sent = requests.Request("GET", url).prepare().url or ""
    return bool(urlsplit(url).username or urllib3.util.parse_url(sent).auth)


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(int(value))
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


# --------------------------------------------------------------------------- transport


class Transport:
    """Sends registry requests over one session. Thread-safe as far as the session is."""

    def __init__(self, session: requests.Session, settings: ProbeSettings,
                 proxy_env: ProxyEnv | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._session = session
        self._settings = settings
        self._proxy_env = proxy_env or ProxyEnv()
        self._sleep = sleep

    def proxy_for(self, url: str) -> ProxyChoice:
        """The proxy a request to ``url`` goes through (``probe.proxy``, environment, NO_PROXY)."""
        return choose_proxy(url, self._proxy_env, self._settings.proxy)

    def get(self, url: str, authorization: str | None, what: str, deadline: Deadline,
            close: bool = False, method: str = "GET", accept: str = "") -> requests.Response:
        """GET (or ``method``, e.g. a manifest HEAD with an ``accept`` list) with retries for
        timeouts, connection errors, 429 and 5xx (never 401/403), all within ``deadline``.
        Raises ``TransportError``."""
        attempt = 0
        while True:
            delay: float | None = None
            try:
                resp = self._get_following(url, authorization, what, deadline, close, method, accept)
            except _Retryable as exc:
                reason, problem = exc.reason, exc.message
            else:
                status = resp.status_code
                if status != 429 and not 500 <= status <= 599:
                    return resp
                delay = retry_after(resp.headers.get("Retry-After"))
                resp.close()
                reason, problem = f"http_{status}", f"{what} answered HTTP {status}"
            if attempt >= self._settings.retries:
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise TransportError(reason, problem + tries)
            if delay is None:
                # Full-ish jitter keeps many syncers from retrying in lockstep.
                delay = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt) * random.uniform(0.5, 1.0)  # noqa: S311
            if delay >= deadline.remaining():
                raise TransportError(reason, f"{problem}; no time left within the "
                                     f"{deadline.seconds:g}s probe deadline to retry")
            log.debug("transport: %s (%s); retry %d in %.2fs", what, reason, attempt + 1, delay)
            self._sleep(delay)
            attempt += 1

    def _get_following(self, url: str, authorization: str | None, what: str,
                       deadline: Deadline, close: bool, method: str = "GET",
                       accept: str = "") -> requests.Response:
        """One request; follows same-origin redirects only, so Authorization never changes host."""
        start = _checked_origin(url, what)
        headers = {"Authorization": authorization} if authorization else {}
        if close:
            headers["Connection"] = "close"
        if accept:
            headers["Accept"] = accept
        for _hop in range(MAX_REDIRECTS + 1):
            resp = self._send(url, headers, what, deadline, method)
            location = resp.headers.get("Location")
            if resp.status_code not in _REDIRECT_CODES or not location:
                return resp
            resp.close()
            target = urljoin(url, location)
            if _checked_origin(target, what, "redirected to an invalid location") != start:
                if urlsplit(target).scheme.lower() != "https":
                    raise TransportError("insecure", f"{what} redirected to plain HTTP; not followed")
                raise TransportError("redirect",
                                     f"{what} redirected to another host ({_sent_netloc(target)}); "
                                     "not followed so credentials stay with the registry")
            log.debug("transport: %s redirected within the same host", what)
            url = target
        raise TransportError("redirect", f"{what} redirected more than {MAX_REDIRECTS} times")

    def _send(self, url: str, headers: dict[str, str], what: str,
              deadline: Deadline, method: str = "GET") -> requests.Response:
        """One request, every failure mapped: TransportError, or _Retryable for retries."""
        timeout = min(self._settings.timeout, deadline.remaining())
        if timeout <= 0:
            raise _expired(deadline, what)
        choice = self.proxy_for(url)
        proxies = {"https": choice.url, "http": choice.url} if choice.url else {}
        try:
            resp = self._session.request(method, url, headers=headers, timeout=(timeout, timeout),
                                         allow_redirects=False, stream=True, proxies=proxies)
        except requests.exceptions.RequestException as exc:
            if deadline.why:
                raise _expired(deadline, what) from None
            raise _mapped(exc, what, choice, self._settings.timeout) from None
        except ValueError:
            # requests parses Location even with allow_redirects=False (Response.next).
            raise TransportError("protocol", f"{what} sent a response that cannot be parsed") from None
        if deadline.why:
            # Cut in the middle of its headers: http.client ends the header block at EOF, so
            # what arrived looks like a complete (shorter) answer. It is not one.
            resp.close()
            raise _expired(deadline, what)
        return resp

    def read_body(self, resp: requests.Response, limit: int, what: str,
                  deadline: Deadline) -> bytes:
        """The whole body, at most ``limit`` bytes (else ``protocol``), within ``deadline``."""
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in resp.iter_content(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise TransportError("protocol", f"{what} sent an oversized response")
                chunks.append(chunk)
        except requests.exceptions.RequestException as exc:
            if deadline.why:
                raise _expired(deadline, what) from None
            raise TransportError("connection", f"reading the answer of {what} failed: "
                                 f"{cause(exc)}") from None
        if deadline.why:  # the watchdog's shutdown can look like a clean end of body
            raise _expired(deadline, what)
        return b"".join(chunks)

    @staticmethod
    def release(resp: requests.Response) -> None:
        """Read the rest of a small body and close, so the request sent next reuses the connection.

        Used on the anonymous ``GET /v2/`` just before the login: closing a streamed response
        with its body unread closes its connection, and the login paid a second TLS handshake.
        Every other answer is closed unread, and the deadline shuts every socket of a probe when
        it ends, so no connection outlives its probe: a pooled connection that a load balancer
        dropped silently would hang the next cycle's probe. A chunked or large body is not worth
        waiting for, and one that stalls is cut by the deadline.
        """
        length = resp.headers.get("Content-Length", "")
        if length.isdigit() and int(length) <= MAX_DRAIN:
            with contextlib.suppress(requests.exceptions.RequestException):
                for _chunk in resp.iter_content(16 * 1024):
                    pass
        resp.close()


class _Retryable(TransportError):
    """A failure worth another attempt (timeout, connection trouble)."""


def _expired(deadline: Deadline, what: str) -> TransportError:
    if deadline.why == "shutdown":
        return TransportError("timeout", f"{what}: interrupted by shutdown; connection closed")
    return TransportError("timeout", f"{what} did not finish within the probe deadline of "
                          f"{deadline.seconds:g}s; connection closed")


def _mapped(exc: requests.exceptions.RequestException, what: str, choice: ProxyChoice,
            timeout: float) -> TransportError:
    """A requests exception as a (possibly retryable) TransportError with a safe message."""
    if isinstance(exc, requests.exceptions.ProxyError):
        status = _proxy_status(exc)
        problem = (f"refused the tunnel ({status})" if status
                   else f"could not be used ({cause(exc)})")
        return TransportError("proxy", f"proxy {choice.shown} ({choice.why}) {problem} "
                              f"for {what}; nothing was sent to the registry")
    if isinstance(exc, requests.exceptions.SSLError):  # before ConnectionError: a subclass
        if speaks_plain_http(exc):
            return TransportError("insecure", f"{what} answers in plain HTTP, not HTTPS; "
                                  "credentials are never sent to it")
        return TransportError("tls", f"TLS verification of {what} failed ({cause(exc)})")
    if isinstance(exc, requests.exceptions.Timeout):
        return _Retryable("timeout", f"{what} timed out after {timeout:g}s")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return _Retryable("connection", f"cannot connect to {what} ({cause(exc)})")
    return TransportError("connection", f"request to {what} failed ({type(exc).__name__})")


def _checked_origin(url: str, what: str, problem: str = "has an invalid URL") -> tuple[str, str, int]:
    try:
        return origin(url)
    except (ValueError, requests.exceptions.RequestException, urllib3.exceptions.HTTPError):
        raise TransportError("protocol", f"{what} {problem}") from None


def _sent_netloc(url: str) -> str:
    """``host[:port]`` as requests sends it, for messages."""
    _scheme, host, port = origin(url)
    return f"{host}:{port}"
