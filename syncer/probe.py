"""Prove a registry login works, the way ``docker login`` does, before it is written anywhere.

The exchange follows Docker's login (``registry.loginV2`` in docker/docker, which uses the
distribution client's challenge manager and token handler) and the distribution token spec:

* https://distribution.github.io/distribution/spec/auth/token/
* https://distribution.github.io/distribution/spec/api/#api-version-check

1. ``GET https://HOST/v2/`` without credentials. 200 means the registry needs no login, so
   nothing can be proven (UNVERIFIED); 401 carries ``WWW-Authenticate`` challenges.
2. ``Basic``: repeat with Basic auth. 200 is OK, 401/403 is REJECTED.
3. ``Bearer``: ``GET realm?service=..&offline_token=true&client_id=..&account=USER`` with Basic
   auth and *no scope*, then ``GET /v2/`` with the token.

Why no scope: Harbor and Quay hand out anonymous tokens for scope requests, and an anonymous
token makes ``/v2/`` answer 200, so a scoped probe could "succeed" with a wrong password.

Known limit: registries that accept any password (Nexus with anonymous pull, some old Gitea)
answer exactly like ones that accepted a valid login. Nothing on the wire tells them apart.

Secrets never reach ``detail``, exceptions or logs: not the password, not the Authorization
header, not the token, and no response body.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import enum
import http.cookiejar
import json
import logging
import random
import re
import socket
import ssl
import string
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import certifi  # requests' own CA bundle (a dependency of requests)
import requests
from requests.adapters import HTTPAdapter

from syncer.config import ProbeSettings
from syncer.credential import Credential

log = logging.getLogger(__name__)

DOCKER_HUB_URL = "https://registry-1.docker.io"
"""Where Docker Hub's registry API lives, whatever key the auths entry uses."""
DOCKER_HUB_HOSTS = frozenset({"index.docker.io", "docker.io", "registry-1.docker.io"})
USER_AGENT = "registry-credential-syncer"
MAX_REDIRECTS = 3
"""Same-origin redirect hops followed per request (e.g. ``/v2`` -> ``/v2/`` behind a proxy)."""
MAX_RETRY_AFTER = 30.0
"""Upper bound, in seconds, on a ``Retry-After`` we honour; a registry cannot stall a cycle."""
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
MAX_TOKEN_BODY = 1 << 20
"""Token responses are a few KiB; refuse to buffer more than this from a hostile endpoint."""
MAX_DRAIN = 64 * 1024
"""Bytes of a /v2/ answer read (and dropped) so its connection can be reused; more is not worth it."""
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})


class Outcome(enum.StrEnum):
    """What a probe proved."""

    OK = "ok"
    """The registry accepted the login."""
    REJECTED = "rejected"
    """The registry (or its token endpoint) refused the login, or it was unusable (empty)."""
    UNVERIFIED = "unverified"
    """The registry needs no login at all, so nothing could be proven."""
    ERROR = "error"
    """The probe could not finish: network, TLS, protocol or server trouble."""


REASONS = (
    "",
    "rejected",
    "unverified",
    "tls",
    "timeout",
    "connection",
    "protocol",
    "insecure",
    "redirect",
    "invalid_host",
)
"""Every fixed ``ProbeResult.reason``; ``http_<status>`` (e.g. ``http_503``) comes on top."""


@dataclass(frozen=True)
class ProbeResult:
    """The verdict of one probe. ``detail`` is safe to log and to show to users."""

    outcome: Outcome
    reason: str
    """Machine label (Prometheus label value): see ``REASONS`` plus ``http_<status>``."""
    detail: str
    """One sentence naming the host and the cause. Never holds a secret or a response body."""
    duration: float
    """Seconds the probe took, including retry back-off."""

    @property
    def indeterminate(self) -> bool:
        """True when the probe could not decide (ERROR): the login is neither proven nor refuted."""
        return self.outcome is Outcome.ERROR


class InsecureRegistryError(ValueError):
    """The auths key names a plain-HTTP registry; credentials are never sent over HTTP."""


class _Stop(Exception):
    """Internal: ends a probe with a verdict. Its message is the safe ``detail``."""

    def __init__(self, outcome: Outcome, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- registry URLs


def _safe_key(host: str) -> str:
    """The key for messages, without any ``user:password@`` someone may have put in it."""
    return re.sub(r"[^/@]*@", "***@", host)


def registry_url(host: str) -> str:
    """Map an ``auths`` key to the base HTTPS URL whose ``/v2/`` is probed.

    The scheme, any path (``/v1/``, ``/v2/``, ``/org``) and case are dropped, ports are kept and
    Docker Hub's keys map to ``registry-1.docker.io`` (the key ``https://index.docker.io/v1/`` is
    historical; the v2 API is served elsewhere). Raises ``InsecureRegistryError`` for ``http://``
    keys and ``ValueError`` for keys that are not a host.
    """
    key = host.strip()
    lowered = key.lower()
    if lowered.startswith("http://"):
        raise InsecureRegistryError(
            f"registry {_safe_key(host)!r} is plain HTTP; only HTTPS is probed")
    if lowered.startswith("https://"):
        key = key[len("https://") :]
    elif "://" in key:
        raise ValueError(f"registry key {_safe_key(host)!r} has an unsupported scheme")
    hostport = key.split("/", 1)[0].lower()
    if not hostport or "@" in hostport or any(c.isspace() for c in hostport):
        raise ValueError(f"registry key {_safe_key(host)!r} does not name a host")
    try:
        parts = urlsplit("https://" + hostport)
        port = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError:
        raise ValueError(f"registry key {_safe_key(host)!r} does not name a host") from None
    if not parts.hostname or hostport.endswith(":"):
        raise ValueError(f"registry key {_safe_key(host)!r} does not name a host")
    if parts.hostname in DOCKER_HUB_HOSTS and port is None:
        return DOCKER_HUB_URL
    return "https://" + hostport


# --------------------------------------------------------------------------- challenges


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge (RFC 7235 section 2.1)."""

    scheme: str
    """Lower-cased auth scheme, e.g. ``basic`` or ``bearer``."""
    params: Mapping[str, str] = field(default_factory=dict)
    """auth-params with lower-cased names; values unquoted. Empty for token68 challenges."""


class ChallengeError(ValueError):
    """A ``WWW-Authenticate`` value does not follow RFC 7235 syntax."""


_TCHAR = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)
_TOKEN68 = frozenset("-._~+/" + string.ascii_letters + string.digits)


class _Cursor:
    """A tiny scanner over one header value."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    @property
    def done(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return "" if self.done else self.text[self.pos]

    def skip_ws(self) -> bool:
        start = self.pos
        while not self.done and self.text[self.pos] in " \t":
            self.pos += 1
        return self.pos > start

    def skip_separators(self) -> None:
        """Skip OWS and commas: RFC 7230 lists may hold empty elements."""
        while not self.done and self.text[self.pos] in " \t,":
            self.pos += 1

    def token(self) -> str:
        start = self.pos
        while not self.done and self.text[self.pos] in _TCHAR:
            self.pos += 1
        return self.text[start : self.pos]

    def quoted(self) -> str:
        """A quoted-string starting at the cursor, with backslash escapes resolved."""
        self.pos += 1  # opening quote
        out: list[str] = []
        while not self.done:
            char = self.text[self.pos]
            self.pos += 1
            if char == '"':
                return "".join(out)
            if char == "\\":
                if self.done:
                    break
                char = self.text[self.pos]
                self.pos += 1
            out.append(char)
        raise ChallengeError("unterminated quoted string")

    def bare_value(self) -> str:
        """An unquoted parameter value. RFC 7235 wants a token, but some servers send bare
        URLs (``realm=https://...``); accept anything up to the next separator."""
        start = self.pos
        while not self.done and self.text[self.pos] not in ' \t,"':
            self.pos += 1
        return self.text[start : self.pos]

    def token68(self) -> bool:
        """Consume a token68 (e.g. ``Negotiate abc==``) if one ends the challenge here."""
        start = self.pos
        while not self.done and self.text[self.pos] in _TOKEN68:
            self.pos += 1
        if self.pos == start:
            return False
        while self.peek() == "=":
            self.pos += 1
        self.skip_ws()
        if self.done or self.peek() == ",":
            return True
        self.pos = start
        return False


def _parse_one(value: str) -> list[Challenge]:
    cur = _Cursor(value)
    challenges: list[Challenge] = []
    while True:
        cur.skip_separators()
        if cur.done:
            return challenges
        scheme = cur.token()
        if not scheme:
            raise ChallengeError(f"expected an auth scheme at offset {cur.pos}")
        params: dict[str, str] = {}
        spaced = cur.skip_ws()
        if not cur.done and cur.peek() != ",":
            if not spaced:
                raise ChallengeError(f"unexpected character after scheme at offset {cur.pos}")
            if not cur.token68():
                first = True
                while True:
                    mark = cur.pos
                    name = cur.token()
                    if not name:
                        raise ChallengeError(f"expected a parameter name at offset {cur.pos}")
                    cur.skip_ws()
                    if cur.peek() != "=":
                        if first:
                            raise ChallengeError(f"parameter without value at offset {mark}")
                        cur.pos = mark  # a new challenge starts here ("Negotiate, Basic ...")
                        break
                    cur.pos += 1
                    cur.skip_ws()
                    param = cur.quoted() if cur.peek() == '"' else cur.bare_value()
                    if cur.text[cur.pos - 1 : cur.pos] != '"' and not param:
                        raise ChallengeError(f"parameter without value at offset {mark}")
                    params.setdefault(name.lower(), param)  # names must be unique; first wins
                    first = False
                    cur.skip_ws()
                    if cur.done:
                        break
                    if cur.peek() != ",":
                        raise ChallengeError(f"expected ',' at offset {cur.pos}")
                    cur.skip_separators()
                    if cur.done:
                        break
        challenges.append(Challenge(scheme.lower(), params))


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header lines into challenges, in order.

    Each line may hold several comma-separated challenges (so a value that requests merged with
    ", " parses the same). Scheme and parameter names are case-insensitive and returned in lower
    case. Raises ``ChallengeError`` when any line is malformed.
    """
    out: list[Challenge] = []
    for value in values:
        out.extend(_parse_one(value))
    return out


def _challenge_lines(resp: requests.Response) -> list[str]:
    """Every ``WWW-Authenticate`` line; requests' ``resp.headers`` would merge them with ", "."""
    raw_headers = getattr(resp.raw, "headers", None)
    getlist = getattr(raw_headers, "getlist", None)
    if callable(getlist):
        return [str(v) for v in getlist("WWW-Authenticate")]
    merged = resp.headers.get("WWW-Authenticate")
    return [merged] if merged else []


# --------------------------------------------------------------------------- session


class _TLSAdapter(HTTPAdapter):
    """Verify with one SSLContext (system CAs + certifi + the configured extra CA).

    requests otherwise points urllib3 at certifi's file for ``verify=True``, which would replace
    rather than extend the trust store, so the adapter pins our context on every pool.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__()

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        pool_kwargs["ssl_context"] = self._context
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)

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
        try:
            context.load_verify_locations(cafile=ca_cert)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"probe.ca_cert {ca_cert!r} cannot be loaded as PEM ({exc})") from None
    return context


def make_session(settings: ProbeSettings) -> requests.Session:
    """An HTTP session for probes.

    * TLS trusts the system CAs plus certifi plus ``settings.ca_cert`` (added, never replacing).
    * ``trust_env`` is off: requests would otherwise read ``~/.netrc`` and attach those
      credentials to the unauthenticated ``GET /v2/``, and honour ``*_PROXY`` /
      ``REQUESTS_CA_BUNDLE`` from the environment; the syncer takes settings only from config.
    * Cookies are refused: a registry that sets a session cookie after one good login would
      otherwise make a later probe with a wrong password look valid.
    """
    session = requests.Session()
    session.trust_env = False
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    session.headers["User-Agent"] = USER_AGENT
    session.mount("https://", _TLSAdapter(_ssl_context(settings.ca_cert)))
    return session


# --------------------------------------------------------------------------- helpers


def _release(resp: requests.Response) -> None:
    """Read the rest of a small body and close, so the request sent next reuses the connection.

    Called on the anonymous ``GET /v2/`` just before the login: closing a streamed response with
    its body unread closes its connection, and the login paid a second TLS handshake. Every other
    answer is closed unread (the token's is sent with ``Connection: close``), so no connection
    outlives its probe. A pooled connection that a load balancer dropped silently (many do after
    a few idle minutes, about one sync interval) would hang the next cycle's probe for its whole
    timeout. A chunked or large body, or one that stalls, is not worth waiting for either.
    """
    length = resp.headers.get("Content-Length", "")
    if length.isdigit() and int(length) <= MAX_DRAIN:
        with contextlib.suppress(requests.exceptions.RequestException):
            for _chunk in resp.iter_content(16 * 1024):
                pass
    resp.close()


def _basic_header(credential: Credential) -> str:
    # RFC 7617 with charset=UTF-8 (as docker sends it); requests' own helper uses latin-1.
    raw = f"{credential.username}:{credential.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def _netloc(url: str) -> str:
    """``host[:port]`` of a URL for messages: never its userinfo, path or query."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "?"
    return (parts.hostname or "?") + (f":{port}" if port else "")


def _retry_after(value: str | None) -> float | None:
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


# What OpenSSL reports when the peer answers a ClientHello with plain-text HTTP.
_PLAIN_HTTP_SSL_REASONS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE"})


def _speaks_plain_http(exc: BaseException) -> bool:
    """True when a TLS failure means the server is a plain-HTTP endpoint."""
    stack, seen = [exc], set()
    while stack:
        err = stack.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, ssl.SSLError) and err.reason in _PLAIN_HTTP_SSL_REASONS:
            return True
        stack += [e for e in (err.__cause__, err.__context__, getattr(err, "reason", None), *err.args)
                  if isinstance(e, BaseException)]
    return False


def _cause(exc: BaseException) -> str:
    """A short, secret-free cause for a transport error (never the URL or a body)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        err = stack.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
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
        for nested in (err.__cause__, err.__context__, getattr(err, "reason", None), *err.args):
            if isinstance(nested, BaseException):
                stack.append(nested)
    return type(exc).__name__


# --------------------------------------------------------------------------- the prober


class Prober:
    """Runs probes over one session. Thread-safe as far as the shared session is."""

    def __init__(
        self,
        session: requests.Session,
        settings: ProbeSettings,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        client_id: str = "registry-credential-syncer",
    ) -> None:
        self._session = session
        self._settings = settings
        self._sleep = sleep
        self._clock = clock
        self._client_id = client_id

    def probe(self, host: str, credential: Credential) -> ProbeResult:
        """Prove ``credential`` against the registry behind the auths key ``host``."""
        start = self._clock()
        try:
            self._probe(host, credential)
        except _Stop as stop:
            result = ProbeResult(stop.outcome, stop.reason, stop.detail, self._clock() - start)
        else:  # pragma: no cover - _probe always ends with _Stop
            raise AssertionError("probe ended without a verdict")
        log.debug("probe %s: %s (%s) in %.3fs", _safe_key(host), result.outcome, result.reason,
                  result.duration)
        return result

    # The flow raises _Stop with the verdict from wherever it is reached.

    def _probe(self, host: str, credential: Credential) -> None:
        try:
            base = registry_url(host)
        except InsecureRegistryError:
            raise _Stop(Outcome.ERROR, "insecure",
                        f"{_safe_key(host)} is a plain-HTTP registry; credentials are only sent "
                        "over HTTPS "
                        "(nothing was sent)") from None
        except ValueError:
            raise _Stop(Outcome.ERROR, "invalid_host",
                        f"{_safe_key(host)!r} is not a registry host (nothing was sent)") from None
        name = _netloc(base)
        user = credential.username
        # Never send empty credentials (docker login refuses them too). A ':' cannot be carried
        # in a Basic user-id (RFC 7617): the registry would split it and see another user.
        if not user or not credential.password:
            raise _Stop(Outcome.REJECTED, "rejected",
                        f"login for {name} has an empty username or password; nothing was sent")
        if ":" in user:
            raise _Stop(Outcome.REJECTED, "rejected",
                        f"username {user!r} for {name} contains ':', which Basic auth cannot "
                        "carry; nothing was sent")

        ping = base + "/v2/"
        # Kept open until the login: its connection is reused for the login or closed with it.
        with self._get(ping, None, f"{name} /v2/") as anonymous:
            status = anonymous.status_code
            log.debug("probe %s: anonymous GET /v2/ -> %d", name, status)
            if status == 200:
                raise _Stop(Outcome.UNVERIFIED, "unverified",
                            f"{name} serves /v2/ without authentication, so the login for {user!r} "
                            "cannot be verified")
            if status != 401:
                raise _Stop(Outcome.ERROR, f"http_{status}",
                            f"{name} answered HTTP {status} to GET /v2/; is it a registry?")
            challenge = self._pick_challenge(name, _challenge_lines(anonymous))
            if challenge.scheme == "basic":
                self._basic(name, ping, credential, anonymous)
            self._bearer(name, ping, challenge, credential, anonymous)

    def _pick_challenge(self, name: str, lines: list[str]) -> Challenge:
        """Bearer first, then Basic: the order of docker's authorizer handlers."""
        challenges: list[Challenge] = []
        malformed = 0
        for line in lines:
            try:
                challenges.extend(parse_challenges([line]))
            except ChallengeError as exc:
                malformed += 1
                log.debug("probe %s: malformed WWW-Authenticate line: %s", name, exc)
        schemes = [c.scheme for c in challenges]
        log.debug("probe %s: challenges %s", name, schemes)
        # A Bearer challenge is only usable with a realm; without one, fall back to Basic.
        for challenge in challenges:
            if challenge.scheme == "bearer" and challenge.params.get("realm"):
                return challenge
        for challenge in challenges:
            if challenge.scheme == "basic":
                return challenge
        if "bearer" in schemes:
            raise _Stop(Outcome.ERROR, "protocol", f"{name} sent a Bearer challenge without realm")
        if malformed:
            raise _Stop(Outcome.ERROR, "protocol",
                        f"{name} sent a malformed WWW-Authenticate challenge")
        if not challenges:
            raise _Stop(Outcome.ERROR, "protocol",
                        f"{name} answered 401 to GET /v2/ without a WWW-Authenticate challenge")
        offered = ", ".join(sorted(set(schemes)))
        raise _Stop(Outcome.ERROR, "protocol",
                    f"{name} offers no supported auth scheme (offered: {offered}; "
                    "supported: Bearer, Basic)")

    def _basic(self, name: str, ping: str, credential: Credential, anonymous: requests.Response) -> None:
        _release(anonymous)
        resp = self._get(ping, _basic_header(credential), f"{name} /v2/")
        with resp:
            status = resp.status_code
        log.debug("probe %s: GET /v2/ with Basic auth -> %d", name, status)
        self._verdict(name, status, credential.username, "Basic auth")

    def _verdict(self, name: str, status: int, user: str, how: str) -> None:
        if status == 200:
            raise _Stop(Outcome.OK, "", f"{name} accepted the login for {user!r} ({how})")
        if status in (401, 403):
            raise _Stop(Outcome.REJECTED, "rejected",
                        f"{name} rejected the login for {user!r} (HTTP {status} to GET /v2/ "
                        f"with {how})")
        raise _Stop(Outcome.ERROR, f"http_{status}",
                    f"{name} answered HTTP {status} to GET /v2/ with {how}")

    def _token_url(self, name: str, challenge: Challenge, user: str) -> str:
        realm = challenge.params["realm"]
        try:
            parts = urlsplit(realm)
        except ValueError:
            raise _Stop(Outcome.ERROR, "protocol",
                        f"{name} sent a Bearer realm that is not a URL") from None
        if parts.scheme.lower() == "http":
            # Credentials would cross the network in clear text: refuse before any request.
            raise _Stop(Outcome.ERROR, "insecure",
                        f"{name} advertises a plain-HTTP token realm ({_netloc(realm)}); "
                        "credentials were not sent")
        try:
            valid = parts.scheme.lower() == "https" and bool(parts.hostname) and (
                parts.port is None or parts.port > 0)
        except ValueError:
            valid = False
        if not valid:
            raise _Stop(Outcome.ERROR, "protocol",
                        f"{name} sent a Bearer realm that is not an absolute https URL")
        # Keep the realm's own query (some token services need it), but set our parameters and
        # drop any scope: a scoped request can yield an anonymous token (see module docstring).
        ours = {"service", "offline_token", "client_id", "account", "scope"}
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                 if k not in ours]
        service = challenge.params.get("service", "")
        if service:  # nvcr.io sends no service; docker then omits the parameter
            query.append(("service", service))
        query += [("offline_token", "true"), ("client_id", self._client_id), ("account", user)]
        return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", urlencode(query), ""))

    def _bearer(self, name: str, ping: str, challenge: Challenge, credential: Credential,
                anonymous: requests.Response) -> None:
        user = credential.username
        token_url = self._token_url(name, challenge, user)
        realm_host = _netloc(token_url)
        # Connection: close - the token body is read in full, which would pool the connection
        # past this probe (see _release for why none may outlive it).
        resp = self._get(token_url, _basic_header(credential), f"token endpoint {realm_host}", close=True)
        with resp:
            status = resp.status_code
            log.debug("probe %s: token endpoint %s -> %d", name, realm_host, status)
            if status in (401, 403):
                raise _Stop(Outcome.REJECTED, "rejected",
                            f"the token endpoint {realm_host} of {name} rejected the login for "
                            f"{user!r} (HTTP {status})")
            if status != 200:
                raise _Stop(Outcome.ERROR, f"http_{status}",
                            f"the token endpoint {realm_host} of {name} answered HTTP {status}")
            body = self._read_limited(resp, name, realm_host)
        token = self._token_from(body, name, realm_host)
        _release(anonymous)
        resp = self._get(ping, "Bearer " + token, f"{name} /v2/")
        with resp:
            status = resp.status_code
        log.debug("probe %s: GET /v2/ with bearer token -> %d", name, status)
        self._verdict(name, status, user, f"bearer token from {realm_host}")

    @staticmethod
    def _read_limited(resp: requests.Response, name: str, realm_host: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in resp.iter_content(64 * 1024):
                size += len(chunk)
                if size > MAX_TOKEN_BODY:
                    raise _Stop(Outcome.ERROR, "protocol",
                                f"the token endpoint {realm_host} of {name} sent an oversized "
                                "response")
                chunks.append(chunk)
        except requests.exceptions.RequestException as exc:
            raise _Stop(Outcome.ERROR, "connection",
                        f"reading the token from {realm_host} for {name} failed: "
                        f"{_cause(exc)}") from None
        return b"".join(chunks)

    @staticmethod
    def _token_from(body: bytes, name: str, realm_host: str) -> str:
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise _Stop(Outcome.ERROR, "protocol",
                        f"the token endpoint {realm_host} of {name} did not answer with a JSON "
                        "object")
        # The spec names "token"; OAuth-style servers send "access_token". Docker prefers
        # access_token when both are present.
        for key in ("access_token", "token"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return value
        raise _Stop(Outcome.ERROR, "protocol",
                    f"the token endpoint {realm_host} of {name} answered without a token")

    # ----------------------------------------------------------------------- transport

    def _get(self, url: str, authorization: str | None, what: str, close: bool = False) -> requests.Response:
        """GET with retries for timeouts, connection errors, 429 and 5xx (never 401/403)."""
        attempt = 0
        while True:
            delay: float | None = None
            try:
                resp = self._get_following(url, authorization, what, close)
            except requests.exceptions.SSLError as exc:  # before ConnectionError: a subclass
                if _speaks_plain_http(exc):
                    raise _Stop(Outcome.ERROR, "insecure", f"{what} answers in plain HTTP, not HTTPS; "
                                "credentials are never sent to it") from None
                raise _Stop(Outcome.ERROR, "tls",
                            f"TLS verification of {what} failed ({_cause(exc)})") from None
            except requests.exceptions.Timeout:
                reason, problem = "timeout", f"{what} timed out after {self._settings.timeout:g}s"
            except requests.exceptions.ConnectionError as exc:
                reason, problem = "connection", f"cannot connect to {what} ({_cause(exc)})"
            except requests.exceptions.RequestException as exc:
                raise _Stop(Outcome.ERROR, "connection",
                            f"request to {what} failed ({type(exc).__name__})") from None
            except ValueError:
                # requests parses Location even with allow_redirects=False (Response.next).
                raise _Stop(Outcome.ERROR, "protocol",
                            f"{what} sent a response that cannot be parsed") from None
            else:
                status = resp.status_code
                if status != 429 and not 500 <= status <= 599:
                    return resp
                delay = _retry_after(resp.headers.get("Retry-After"))
                resp.close()
                reason, problem = f"http_{status}", f"{what} answered HTTP {status}"
            if attempt >= self._settings.retries:
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise _Stop(Outcome.ERROR, reason, problem + tries)
            if delay is None:
                # Full-ish jitter keeps many syncers from retrying in lockstep.
                delay = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt) * random.uniform(0.5, 1.0)  # noqa: S311
            log.debug("probe: %s (%s); retry %d in %.2fs", what, reason, attempt + 1, delay)
            self._sleep(delay)
            attempt += 1

    def _get_following(self, url: str, authorization: str | None, what: str,
                       close: bool = False) -> requests.Response:
        """One GET; follows same-origin redirects only, so Authorization never changes host."""
        origin = _origin(url)
        headers = {"Authorization": authorization} if authorization else {}
        if close:
            headers["Connection"] = "close"
        timeout = self._settings.timeout
        for _hop in range(MAX_REDIRECTS + 1):
            resp = self._session.get(url, headers=headers, timeout=(timeout, timeout),
                                     allow_redirects=False, stream=True)
            location = resp.headers.get("Location")
            if resp.status_code not in _REDIRECT_CODES or not location:
                return resp
            resp.close()
            try:
                target = urljoin(url, location)
                same = _origin(target) == origin
            except ValueError:
                raise _Stop(Outcome.ERROR, "protocol",
                            f"{what} redirected to an invalid location") from None
            if not same:
                if urlsplit(target).scheme.lower() != "https":
                    raise _Stop(Outcome.ERROR, "insecure",
                                f"{what} redirected to plain HTTP; not followed")
                raise _Stop(Outcome.ERROR, "redirect",
                            f"{what} redirected to another host ({_netloc(target)}); not followed "
                            "so credentials stay with the registry")
            log.debug("probe: %s redirected within the same host", what)
            url = target
        raise _Stop(Outcome.ERROR, "redirect", f"{what} redirected more than {MAX_REDIRECTS} times")
