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

import enum
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests

from syncer.challenge import Challenge, ChallengeError, parse_challenges
from syncer.config import ProbeSettings
from syncer.credential import Credential
from syncer.dockerconfig import auth_value
from syncer.proxies import ProxyChoice, ProxyEnv, netloc
from syncer.transport import (
    Deadline,
    Transport,
    TransportError,
    deadline_scope,
    has_userinfo,
)

log = logging.getLogger(__name__)

DOCKER_HUB_URL = "https://registry-1.docker.io"
"""Where Docker Hub's registry API lives, whatever key the auths entry uses."""
DOCKER_HUB_HOSTS = frozenset({"index.docker.io", "docker.io", "registry-1.docker.io"})
MAX_TOKEN_BODY = 1 << 20
"""Token responses are a few KiB; refuse to buffer more than this from a hostile endpoint."""


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
    "proxy",
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
    challenge: Challenge | None = None
    """The challenge ``GET /v2/`` answered with (None when it never got that far, or answered 200):
    the canary pull checks reuse it, as docker's challenge manager reuses the ping's for every
    repository of the host, so no per-image anonymous request is needed to learn it."""


class InsecureRegistryError(ValueError):
    """The auths key names a plain-HTTP registry; credentials are never sent over HTTP."""


class _Stop(Exception):
    """Internal: ends a probe with a verdict. Its message is the safe ``detail``."""

    def __init__(self, outcome: Outcome, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.reason = reason
        self.detail = detail
        self.challenge: Challenge | None = None


ProbeStop = _Stop
"""The verdict raised by ``Prober.challenge_of`` and ``Prober.scoped_token`` (for syncer.canary)."""


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


def _challenge_lines(resp: requests.Response) -> list[str]:
    """Every ``WWW-Authenticate`` line; requests' ``resp.headers`` would merge them with ", "."""
    raw_headers = getattr(resp.raw, "headers", None)
    getlist = getattr(raw_headers, "getlist", None)
    if callable(getlist):
        return [str(v) for v in getlist("WWW-Authenticate")]
    merged = resp.headers.get("WWW-Authenticate")
    return [merged] if merged else []


def basic_header(credential: Credential) -> str:
    # RFC 7617 with charset=UTF-8 (as docker sends it); requests' own helper uses latin-1.
    return "Basic " + auth_value(credential)


# --------------------------------------------------------------------------- the prober


class Prober:
    """Runs probes over one transport. Thread-safe as far as the shared session is."""

    def __init__(
        self,
        session: requests.Session,
        settings: ProbeSettings,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        client_id: str = "registry-credential-syncer",
        proxy_env: ProxyEnv | None = None,
    ) -> None:
        self.transport = Transport(session, settings, proxy_env, sleep)
        """The HTTPS transport (TLS, proxy, redirects, retries); shared with later checks."""
        self._settings = settings
        self._clock = clock
        self._client_id = client_id

    @property
    def settings(self) -> ProbeSettings:
        """The probe settings (deadline, timeouts) later registry checks share."""
        return self._settings

    def challenge_of(self, name: str, resp: requests.Response) -> Challenge:
        """The challenge of a 401 answer (Bearer first, then Basic). Raises ``ProbeStop``."""
        return self._pick_challenge(name, _challenge_lines(resp))

    def scoped_token(self, name: str, challenge: Challenge, credential: Credential, scope: str,
                     deadline: Deadline) -> str:
        """A token for ``scope`` requested *with* the credentials (never anonymously), by the
        same rules as the login's. Raises ``ProbeStop`` (REJECTED for a 401/403)."""
        return self._fetch_token(name, challenge, credential, deadline, scope)[0]

    def anonymous_token(self, name: str, challenge: Challenge, scope: str, deadline: Deadline) -> str:
        """The token the realm hands anyone *without* credentials for ``scope`` ("" if none):
        how the pull check tells a public repository. Raises ``ProbeStop`` for a realm that
        must not be used."""
        realm = challenge.params["realm"]
        self._check_realm(name, realm)
        parts = urlsplit(realm)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                 if k not in ("service", "scope", "account")]
        if service := challenge.params.get("service", ""):
            query.append(("service", service))
        query.append(("scope", scope))
        url = urlunsplit((parts.scheme, parts.netloc, parts.path or "/", urlencode(query), ""))
        with self._get(url, None, f"token endpoint {netloc(url)}", deadline, close=True) as resp:
            if resp.status_code != 200:
                return ""
            try:
                body = self.transport.read_body(resp, MAX_TOKEN_BODY, f"token endpoint {netloc(url)}",
                                                deadline)
                return self._token_from(body, name, netloc(url))
            except (TransportError, _Stop):
                return ""

    def proxy_for(self, host: str) -> ProxyChoice:
        """The proxy the probe of ``host`` goes through (for ``syncer check``)."""
        try:
            return self.transport.proxy_for(registry_url(host) + "/v2/")
        except ValueError:
            return ProxyChoice("", "not a registry host")

    def probe(self, host: str, credential: Credential,
              cancelled: Callable[[], bool] = lambda: False) -> ProbeResult:
        """Prove ``credential`` against the registry behind the auths key ``host``.

        The whole probe runs within ``probe.deadline``; ``cancelled`` (the daemon's shutdown
        flag) ends it early. Either closes the probe's connections, with reason ``timeout``.
        """
        start = self._clock()
        try:
            with deadline_scope(self._settings.deadline, cancelled) as deadline:
                self._probe(host, credential, deadline)
        except _Stop as stop:
            result = ProbeResult(stop.outcome, stop.reason, stop.detail, self._clock() - start,
                                 stop.challenge)
        else:  # pragma: no cover - _probe always ends with _Stop
            raise AssertionError("probe ended without a verdict")
        log.debug("probe %s: %s (%s) in %.3fs", _safe_key(host), result.outcome, result.reason,
                  result.duration)
        return result

    # The flow raises _Stop with the verdict from wherever it is reached.

    @staticmethod
    def _base(host: str, credential: Credential) -> str:
        """The registry's base URL, or a verdict when nothing may be sent."""
        try:
            base = registry_url(host)
        except InsecureRegistryError:
            raise _Stop(Outcome.ERROR, "insecure",
                        f"{_safe_key(host)} is a plain-HTTP registry; credentials are only sent "
                        "over HTTPS (nothing was sent)") from None
        except ValueError:
            raise _Stop(Outcome.ERROR, "invalid_host",
                        f"{_safe_key(host)!r} is not a registry host (nothing was sent)") from None
        name, user = netloc(base), credential.username
        # Never send empty credentials (docker login refuses them too). A ':' cannot be carried
        # in a Basic user-id (RFC 7617): the registry would split it and see another user.
        if not user or not credential.password:
            raise _Stop(Outcome.REJECTED, "rejected",
                        f"login for {name} has an empty username or password; nothing was sent")
        if ":" in user:
            raise _Stop(Outcome.REJECTED, "rejected",
                        f"username {user!r} for {name} contains ':', which Basic auth cannot "
                        "carry; nothing was sent")
        return base

    def _probe(self, host: str, credential: Credential, deadline: Deadline) -> None:
        base = self._base(host, credential)
        name, user = netloc(base), credential.username
        ping = base + "/v2/"
        # Kept open until the login: its connection is reused for the login or closed with it.
        with self._get(ping, None, f"{name} /v2/", deadline) as anonymous:
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
            try:
                if challenge.scheme == "basic":
                    self._basic(name, ping, credential, anonymous, deadline)
                self._bearer(name, ping, challenge, credential, anonymous, deadline)
            except _Stop as stop:
                stop.challenge = challenge
                raise

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

    def _basic(self, name: str, ping: str, credential: Credential, anonymous: requests.Response,
               deadline: Deadline) -> None:
        self.transport.release(anonymous)
        with self._get(ping, basic_header(credential), f"{name} /v2/", deadline) as resp:
            status = resp.status_code
        log.debug("probe %s: GET /v2/ with Basic auth -> %d", name, status)
        self._verdict(name, status, credential.username, "Basic auth")

    @staticmethod
    def _verdict(name: str, status: int, user: str, how: str) -> None:
        if status == 200:
            raise _Stop(Outcome.OK, "", f"{name} accepted the login for {user!r} ({how})")
        if status in (401, 403):
            raise _Stop(Outcome.REJECTED, "rejected",
                        f"{name} rejected the login for {user!r} (HTTP {status} to GET /v2/ "
                        f"with {how})")
        raise _Stop(Outcome.ERROR, f"http_{status}",
                    f"{name} answered HTTP {status} to GET /v2/ with {how}")

    @staticmethod
    def _check_realm(name: str, realm: str) -> None:
        """Refuse realms the credentials must not be sent to (before any request)."""
        try:
            parts = urlsplit(realm)
            userinfo = has_userinfo(realm)
            valid = parts.scheme.lower() == "https" and bool(parts.hostname) and (
                parts.port is None or parts.port > 0)
        except (ValueError, requests.exceptions.RequestException):
            raise _Stop(Outcome.ERROR, "protocol",
                        f"{name} sent a Bearer realm that is not a URL") from None
        if parts.scheme.lower() == "http":
            # Credentials would cross the network in clear text.
            raise _Stop(Outcome.ERROR, "insecure",
                        f"{name} advertises a plain-HTTP token realm ({netloc(realm)}); "
                        "credentials were not sent")
        if not valid:
            raise _Stop(Outcome.ERROR, "protocol",
                        f"{name} sent a Bearer realm that is not an absolute https URL")
        if userinfo:
            # requests would send the realm's own user:password instead of ours, and a "valid"
            # login would prove nothing about the credentials from Vault (issue 16 item 5).
            raise _Stop(Outcome.ERROR, "protocol",
                        f"{name} sent a Bearer realm with credentials in its URL "
                        f"({netloc(realm)}); not used")

    def _token_url(self, name: str, challenge: Challenge, user: str, scope: str = "") -> str:
        realm = challenge.params["realm"]
        self._check_realm(name, realm)
        parts = urlsplit(realm)
        # Keep the realm's own query (some token services need it), but set our parameters and
        # drop any scope: a scoped request can yield an anonymous token (see module docstring).
        ours = {"service", "offline_token", "client_id", "account", "scope"}
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                 if k not in ours]
        service = challenge.params.get("service", "")
        if service:  # nvcr.io sends no service; docker then omits the parameter
            query.append(("service", service))
        query += [("offline_token", "true"), ("client_id", self._client_id), ("account", user)]
        if scope:  # only the pull check asks for one (syncer.canary), always with credentials
            query.append(("scope", scope))
        return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", urlencode(query), ""))

    def _bearer(self, name: str, ping: str, challenge: Challenge, credential: Credential,
                anonymous: requests.Response, deadline: Deadline) -> None:
        user = credential.username
        token, realm_host = self._fetch_token(name, challenge, credential, deadline)
        self.transport.release(anonymous)
        with self._get(ping, "Bearer " + token, f"{name} /v2/", deadline) as resp:
            status = resp.status_code
        log.debug("probe %s: GET /v2/ with bearer token -> %d", name, status)
        self._verdict(name, status, user, f"bearer token from {realm_host}")

    def _fetch_token(self, name: str, challenge: Challenge, credential: Credential,
                     deadline: Deadline, scope: str = "") -> tuple[str, str]:
        """The token from the realm, and the realm's host for messages."""
        user = credential.username
        token_url = self._token_url(name, challenge, user, scope)
        realm_host = netloc(token_url)
        what = f"token endpoint {realm_host}"
        # Connection: close - the token body is read in full, which would pool the connection
        # past this probe (see Transport.release for why none may outlive it).
        with self._get(token_url, basic_header(credential), what, deadline, close=True) as resp:
            status = resp.status_code
            log.debug("probe %s: token endpoint %s -> %d", name, realm_host, status)
            if status in (401, 403):
                raise _Stop(Outcome.REJECTED, "rejected",
                            f"the token endpoint {realm_host} of {name} rejected the login for "
                            f"{user!r} (HTTP {status})")
            if status != 200:
                raise _Stop(Outcome.ERROR, f"http_{status}",
                            f"the token endpoint {realm_host} of {name} answered HTTP {status}")
            try:
                body = self.transport.read_body(resp, MAX_TOKEN_BODY,
                                                f"the token endpoint {realm_host} of {name}",
                                                deadline)
            except TransportError as exc:
                raise _Stop(Outcome.ERROR, exc.reason, exc.message) from None
        return self._token_from(body, name, realm_host), realm_host

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

    def _get(self, url: str, authorization: str | None, what: str, deadline: Deadline,
             close: bool = False) -> requests.Response:
        try:
            return self.transport.get(url, authorization, what, deadline, close)
        except TransportError as exc:
            raise _Stop(Outcome.ERROR, exc.reason, exc.message) from None

