"""The registry login probe, against real registries where they can show it and fakes elsewhere.

Each "probe case worth a test" of FIELD-NOTES.md has a test here. Sleeps are injected and
recorded, so retry/back-off behaviour is asserted without waiting.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from syncer.config import ProbeSettings
from syncer.credential import Credential
from syncer.probe import (
    DOCKER_HUB_URL,
    InsecureRegistryError,
    Outcome,
    Prober,
    ProbeResult,
    registry_url,
)
from syncer.transport import MAX_RETRY_AFTER, make_session
from tests.support.net import free_port
from tests.support.registry import FakeServer, Incoming, Registry, Reply, Responder, TokenServer
from tests.support.registry_fixtures import DEFAULT_USERS, TokenRegistry

FakeFactory = Callable[..., FakeServer]
ROBOT = Credential("robot$ci", DEFAULT_USERS["robot$ci"])
WRONG = Credential("robot$ci", "not-the-password")


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def sleeps() -> list[float]:
    """Every delay the prober asked for (the injected sleep records instead of sleeping)."""
    return []


@pytest.fixture
def make_prober(probe_settings: ProbeSettings, sleeps: list[float]) -> Callable[..., Prober]:
    def make(**changes: object) -> Prober:
        settings = dataclasses.replace(probe_settings, **changes)  # type: ignore[arg-type]
        return Prober(make_session(settings), settings, sleep=sleeps.append)

    return make


@pytest.fixture
def prober(make_prober: Callable[..., Prober]) -> Prober:
    return make_prober()


def _errors(code: str) -> bytes:
    return b'{"errors":[{"code":"' + code.encode() + b'"}]}'


def basic_registry(users: dict[str, str], *challenges: str) -> Responder:
    """A /v2/ that wants Basic auth; ``challenges`` are the WWW-Authenticate lines it sends."""
    lines = challenges or ('Basic realm="fake"',)

    def respond(req: Incoming) -> Reply:
        if req.path != "/v2/":
            return Reply(404)
        if req.basic and users.get(req.basic[0]) == req.basic[1]:
            return Reply.json(200, {})
        return Reply(401, [("WWW-Authenticate", line) for line in lines], _errors("UNAUTHORIZED"))

    return respond


def bearer_registry(token_server: TokenServer, *challenges: str) -> Responder:
    """A /v2/ that accepts tokens the token server issued (anonymous ones too, like distribution)."""

    def respond(req: Incoming) -> Reply:
        if req.path != "/v2/":
            return Reply(404)
        if req.bearer and token_server.subject_of(req.bearer) is not None:
            return Reply.json(200, {})
        return Reply(401, [("WWW-Authenticate", line) for line in challenges],
                     _errors("UNAUTHORIZED"))

    return respond


def sequence(*first: Reply, then: Responder) -> Responder:
    """Answer with ``first`` replies in turn, then hand over to ``then``."""
    queue = list(first)

    def respond(req: Incoming) -> Reply:
        return queue.pop(0) if queue else then(req)

    return respond


def authed(server: FakeServer | TokenServer) -> int:
    return sum(1 for r in server.requests if r.authorized)


# --------------------------------------------------------------------------- registry_url


@pytest.mark.parametrize(("key", "url"), [
    ("https://index.docker.io/v1/", DOCKER_HUB_URL),
    ("index.docker.io", DOCKER_HUB_URL),
    ("docker.io", DOCKER_HUB_URL),
    ("registry-1.docker.io", DOCKER_HUB_URL),
    ("https://registry-1.docker.io/v2/", DOCKER_HUB_URL),
    ("ghcr.io", "https://ghcr.io"),
    ("ghcr.io/org", "https://ghcr.io"),
    ("https://ghcr.io/org/team/", "https://ghcr.io"),
    ("nvcr.io/v2/", "https://nvcr.io"),
    ("harbor.local:8443", "https://harbor.local:8443"),
    ("https://harbor.local:8443/v1/", "https://harbor.local:8443"),
    ("HTTPS://Quay.IO", "https://quay.io"),
    ("  quay.io  ", "https://quay.io"),
    ("127.0.0.1:5000", "https://127.0.0.1:5000"),
    ("[::1]:5000", "https://[::1]:5000"),
    ("docker.io:5000", "https://docker.io:5000"),
])
def test_registry_url(key: str, url: str) -> None:
    assert registry_url(key) == url


@pytest.mark.parametrize("key", ["http://registry.local", "HTTP://registry.local:5000/v2/"])
def test_registry_url_refuses_http(key: str) -> None:
    with pytest.raises(InsecureRegistryError):
        registry_url(key)


@pytest.mark.parametrize("key", ["", "   ", "ftp://x", "user:pw@host", "host:port",
                                 "host:99999", "https:///v2/", "host:"])
def test_registry_url_rejects_non_hosts(key: str) -> None:
    with pytest.raises(ValueError, match="registry key") as info:
        registry_url(key)
    assert not isinstance(info.value, InsecureRegistryError)


# --------------------------------------------------------------------------- session


def test_make_session_adds_ca_to_default_trust(ca_file: str) -> None:
    def stats(ca_cert: str) -> int:
        session = make_session(ProbeSettings(ca_cert=ca_cert))
        adapter = session.get_adapter("https://registry.example")
        return int(adapter._context.cert_store_stats()["x509_ca"])  # type: ignore[attr-defined]

    defaults = stats("")
    assert defaults > 50  # certifi (plus whatever the system store preloads)
    assert stats(ca_file) == defaults + 1  # added, not replacing


def test_make_session_bad_ca_file(tmp_path: pytest.TempPathFactory) -> None:
    with pytest.raises(ValueError, match="probe.ca_cert"):
        make_session(ProbeSettings(ca_cert="/nonexistent/ca.pem"))


def test_make_session_ignores_environment_and_cookies(
    registry_fake_server: FakeFactory, prober: Prober, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    # A proxy that does not exist: if the session honoured it, the probe would fail.
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")
    inner = basic_registry({"robot$ci": ROBOT.password})

    def respond(req: Incoming) -> Reply:
        reply = inner(req)
        reply.headers.append(("Set-Cookie", "session=abc; Path=/"))
        return reply

    seen_cookies: list[str] = []

    def recording(req: Incoming) -> Reply:
        seen_cookies.append(req.headers.get("cookie", ""))
        return respond(req)

    server = registry_fake_server(recording)
    assert prober.probe(server.host, ROBOT).outcome is Outcome.OK
    assert prober.probe(server.host, ROBOT).outcome is Outcome.OK
    assert seen_cookies and not any(seen_cookies), "cookies must never be replayed"


# --------------------------------------------------------------------------- Basic, real registry


@pytest.mark.parametrize("user", sorted(DEFAULT_USERS))
def test_basic_ok(htpasswd_registry: Registry, prober: Prober, user: str) -> None:
    """Covers '$' and '+' in usernames and ':' in passwords."""
    result = prober.probe(htpasswd_registry.host, Credential(user, DEFAULT_USERS[user]))
    assert (result.outcome, result.reason) == (Outcome.OK, "")
    assert htpasswd_registry.host in result.detail
    assert result.outcome is not Outcome.ERROR


def test_basic_rejected_is_not_retried(
    htpasswd_registry: Registry, prober: Prober, sleeps: list[float]
) -> None:
    before = htpasswd_registry.v2_requests()
    result = prober.probe(htpasswd_registry.host, WRONG)
    assert (result.outcome, result.reason) == (Outcome.REJECTED, "rejected")
    assert result.outcome is not Outcome.ERROR
    # One anonymous ping, one login: a wrong password is never retried (GitLab bans IPs).
    assert htpasswd_registry.v2_requests() - before == 2
    assert sleeps == []


def test_basic_live_rotation(htpasswd_registry: Registry, prober: Prober) -> None:
    old = ROBOT
    new = Credential("robot$ci", "rotated:" + "x" * 20)
    assert prober.probe(htpasswd_registry.host, old).outcome is Outcome.OK
    htpasswd_registry.set_password(new.username, new.password)
    assert prober.probe(htpasswd_registry.host, old).outcome is Outcome.REJECTED
    assert prober.probe(htpasswd_registry.host, new).outcome is Outcome.OK


def test_dockerhub_style_key_with_path(htpasswd_registry: Registry, prober: Prober) -> None:
    key = f"https://{htpasswd_registry.host}/v1/"
    assert prober.probe(key, ROBOT).outcome is Outcome.OK
    assert prober.probe(f"{htpasswd_registry.host}/org/team", ROBOT).outcome is Outcome.OK


def test_tls_error_without_ca_fixed_by_ca_cert(
    htpasswd_registry: Registry, make_prober: Callable[..., Prober], sleeps: list[float]
) -> None:
    result = make_prober(ca_cert="").probe(htpasswd_registry.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "tls")
    assert result.outcome is Outcome.ERROR
    assert "certificate verify failed" in result.detail
    assert sleeps == []  # a TLS failure will not heal by itself
    assert make_prober().probe(htpasswd_registry.host, ROBOT).outcome is Outcome.OK


def test_plain_http_registry_refused(plain_registry: Registry, prober: Prober) -> None:
    before = plain_registry.v2_requests()
    result = prober.probe(f"http://{plain_registry.host}", ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "insecure")
    # The bare key is probed over HTTPS only: a plain server fails the TLS handshake, and that
    # failure is recognised as "this is not an HTTPS registry", never a mere TLS hiccup.
    result = prober.probe(plain_registry.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "insecure")
    assert "plain HTTP" in result.detail
    assert plain_registry.v2_requests() == before


# --------------------------------------------------------------------------- Bearer, real registry


@pytest.mark.parametrize("user", sorted(DEFAULT_USERS))
def test_bearer_ok(token_registry: TokenRegistry, prober: Prober, user: str) -> None:
    ts = token_registry.token_server
    result = prober.probe(token_registry.host, Credential(user, DEFAULT_USERS[user]))
    assert (result.outcome, result.reason) == (Outcome.OK, "")
    [req] = ts.requests
    assert req.username == user
    assert req.query == {"service": [ts.service], "offline_token": ["true"],
                         "client_id": ["registry-credential-syncer"], "account": [user]}


def test_bearer_client_id(token_registry: TokenRegistry, probe_settings: ProbeSettings) -> None:
    prober = Prober(make_session(probe_settings), probe_settings, sleep=lambda _s: None,
                    client_id="my-syncer")
    assert prober.probe(token_registry.host, ROBOT).outcome is Outcome.OK
    assert token_registry.token_server.requests[0].query["client_id"] == ["my-syncer"]


@pytest.mark.parametrize("status", [401, 403])
def test_bearer_rejected_at_token_endpoint(
    token_registry: TokenRegistry, prober: Prober, sleeps: list[float], status: int
) -> None:
    ts = token_registry.token_server
    ts.reject_status = status  # ghcr answers 403 DENIED
    result = prober.probe(token_registry.host, WRONG)
    assert (result.outcome, result.reason) == (Outcome.REJECTED, "rejected")
    assert f"HTTP {status}" in result.detail
    assert len(ts.requests) == 1 and sleeps == []


def test_bearer_rejected_at_v2(token_registry: TokenRegistry, prober: Prober) -> None:
    token_registry.token_server.tokens_valid = False  # signed, but for another audience
    result = prober.probe(token_registry.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.REJECTED, "rejected")
    assert "GET /v2/" in result.detail


def test_anonymous_token_is_not_a_login(
    token_registry: TokenRegistry, prober: Prober, ca_file: str
) -> None:
    ts = token_registry.token_server
    # The trap is real: without credentials the token server issues a token the registry takes.
    anonymous = requests.get(ts.realm, params={"service": ts.service}, verify=ca_file,
                             timeout=5).json()["token"]
    v2 = requests.get(f"{token_registry.registry.url}/v2/", verify=ca_file, timeout=5,
                      headers={"Authorization": f"Bearer {anonymous}"})
    assert v2.status_code == 200
    ts.clear()
    result = prober.probe(token_registry.host, WRONG)
    assert result.outcome is Outcome.REJECTED
    assert ts.requests and all(r.auth_scheme == "basic" for r in ts.requests)
    assert all("scope" not in r.query for r in ts.requests)


@pytest.mark.parametrize(("shape", "outcome", "reason"), [
    ("token", Outcome.OK, ""),
    ("access_token", Outcome.OK, ""),
    ("both", Outcome.OK, ""),  # access_token valid, token bogus: access_token must win
    ("none", Outcome.ERROR, "protocol"),
    ("not_json", Outcome.ERROR, "protocol"),
])
def test_token_response_shapes(
    token_registry: TokenRegistry, prober: Prober, shape: str, outcome: Outcome, reason: str
) -> None:
    token_registry.token_server.shape = shape
    result = prober.probe(token_registry.host, ROBOT)
    assert (result.outcome, result.reason) == (outcome, reason)


# --------------------------------------------------------------------------- challenges (fakes)


def test_challenge_without_service(
    token_registry: TokenRegistry, registry_fake_server: FakeFactory, prober: Prober
) -> None:
    ts = token_registry.token_server  # nvcr.io style: no service parameter
    server = registry_fake_server(bearer_registry(ts, f'Bearer realm="{ts.realm}"'))
    result = prober.probe(server.host, Credential("$oauthtoken", DEFAULT_USERS["$oauthtoken"]))
    assert result.outcome is Outcome.OK
    [req] = ts.requests
    assert "service" not in req.query and req.query["account"] == ["$oauthtoken"]


def test_realm_with_query_string(
    token_registry: TokenRegistry, registry_fake_server: FakeFactory, prober: Prober
) -> None:
    ts = token_registry.token_server
    realm = f"{ts.realm}?tenant=acme&service=stale&scope=repository:x:pull"
    server = registry_fake_server(bearer_registry(ts, f'Bearer realm="{realm}",service="svc"'))
    assert prober.probe(server.host, ROBOT).outcome is Outcome.OK
    [req] = ts.requests
    assert req.query["tenant"] == ["acme"]
    assert req.query["service"] == ["svc"]
    assert "scope" not in req.query  # never ask for a scope, even if the realm carries one


def test_realm_on_another_host(
    token_registry: TokenRegistry, registry_fake_server: FakeFactory, prober: Prober
) -> None:
    ts = token_registry.token_server  # Docker Hub: registry-1.docker.io -> auth.docker.io
    realm = f"{ts.url_for('localhost')}/token"
    server = registry_fake_server(bearer_registry(ts, f'Bearer realm="{realm}",service="svc"'))
    result = prober.probe(server.host, ROBOT)
    assert result.outcome is Outcome.OK
    assert ts.requests[0].host == f"localhost:{ts.port}"
    assert f"localhost:{ts.port}" in result.detail


def test_http_realm_refused(registry_fake_server: FakeFactory, prober: Prober) -> None:
    realm_server = registry_fake_server(lambda _req: Reply.json(200, {"token": "t"}), tls=False)
    server = registry_fake_server(basic_registry({}, f'Bearer realm="{realm_server.url}/token"'))
    result = prober.probe(server.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "insecure")
    assert realm_server.requests == []
    assert authed(server) == 0


def test_bearer_preferred_over_basic(
    token_registry: TokenRegistry, registry_fake_server: FakeFactory, prober: Prober
) -> None:
    ts = token_registry.token_server
    server = registry_fake_server(bearer_registry(ts, 'Basic realm="b"', f'Bearer realm="{ts.realm}"'))
    assert prober.probe(server.host, ROBOT).outcome is Outcome.OK
    assert [r.auth_scheme for r in server.requests] == [None, "bearer"]


@pytest.mark.parametrize("challenges", [
    ('Bearer realm="https://unterminated',),
    ('Basic realm="x" junk',),
    ('Bearer service="no-realm"',),
    ('Bearer realm="/relative/token"',),
    ('Bearer realm="ftp://x/token"',),
    (),  # 401 without any challenge
])
def test_malformed_challenge(
    registry_fake_server: FakeFactory, prober: Prober, challenges: tuple[str, ...]
) -> None:
    def respond(req: Incoming) -> Reply:
        return Reply(401, [("WWW-Authenticate", line) for line in challenges])

    server = registry_fake_server(respond)
    result = prober.probe(server.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "protocol")
    assert authed(server) == 0


@pytest.mark.parametrize("challenges", [
    ("Negotiate", 'Basic realm="fake"'),  # two header lines
    ('Negotiate, Basic realm="fake"',),  # one line, two challenges
    ('Digest realm="d", nonce="n", Basic realm="fake"',),
    ('Basic realm="x" junk', 'Basic realm="fake"'),  # one malformed line, one usable
    ('Bearer service="no-realm"', 'Basic realm="fake"'),  # unusable Bearer, usable Basic
])
def test_multiple_challenges(
    registry_fake_server: FakeFactory, prober: Prober, challenges: tuple[str, ...]
) -> None:
    server = registry_fake_server(basic_registry({"robot$ci": ROBOT.password}, *challenges))
    assert prober.probe(server.host, ROBOT).outcome is Outcome.OK


@pytest.mark.parametrize("challenge", ["Negotiate", "NTLM", 'Digest realm="d", nonce="n"'])
def test_unknown_scheme_only(registry_fake_server: FakeFactory, prober: Prober, challenge: str) -> None:
    server = registry_fake_server(basic_registry({}, challenge))
    result = prober.probe(server.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "protocol")
    assert "no supported auth scheme" in result.detail
    assert authed(server) == 0


# --------------------------------------------------------------------------- other answers (fakes)


def test_registry_without_auth_is_unverified(registry_fake_server: FakeFactory, prober: Prober) -> None:
    server = registry_fake_server(lambda _req: Reply.json(200, {}))
    result = prober.probe(server.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.UNVERIFIED, "unverified")
    assert result.outcome is not Outcome.ERROR
    assert authed(server) == 0 and len(server.requests) == 1


def test_404_on_v2(registry_fake_server: FakeFactory, prober: Prober, sleeps: list[float]) -> None:
    server = registry_fake_server(lambda _req: Reply(404, body=b"not found"))
    result = prober.probe(server.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "http_404")
    assert len(server.requests) == 1 and sleeps == []


def test_timeout(
    registry_fake_server: FakeFactory, make_prober: Callable[..., Prober], sleeps: list[float]
) -> None:
    server = registry_fake_server(lambda _req: Reply(200, delay=0.6))
    result = make_prober(timeout=0.15, retries=1).probe(server.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "timeout")
    assert result.outcome is Outcome.ERROR
    assert len(server.requests) == 2 and len(sleeps) == 1


def test_connection_refused(make_prober: Callable[..., Prober], sleeps: list[float]) -> None:
    result = make_prober(retries=2).probe(f"127.0.0.1:{free_port()}", ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "connection")
    assert "connection refused" in result.detail
    assert len(sleeps) == 2 and all(0 < s <= 8 for s in sleeps)


def test_5xx_then_recovery(registry_fake_server: FakeFactory, prober: Prober, sleeps: list[float]) -> None:
    server = registry_fake_server(sequence(Reply(503), Reply(502),
                                  then=basic_registry({"robot$ci": ROBOT.password})))
    result = prober.probe(server.host, ROBOT)
    assert result.outcome is Outcome.OK
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0  # jittered, growing
    assert len(server.requests) == 4


def test_5xx_persistent(registry_fake_server: FakeFactory, prober: Prober, sleeps: list[float]) -> None:
    server = registry_fake_server(lambda _req: Reply(500, body=b"boom"))
    result = prober.probe(server.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "http_500")
    assert len(server.requests) == 3 and len(sleeps) == 2  # retries=2


def test_5xx_on_login_request_retried(
    registry_fake_server: FakeFactory, prober: Prober, sleeps: list[float]
) -> None:
    base = basic_registry({"robot$ci": ROBOT.password})
    failures = [Reply(503)]

    def respond(req: Incoming) -> Reply:
        return failures.pop() if req.authorization and failures else base(req)

    server = registry_fake_server(respond)
    assert prober.probe(server.host, ROBOT).outcome is Outcome.OK
    assert authed(server) == 2 and len(sleeps) == 1


@pytest.mark.parametrize(("retry_after", "expected"), [
    ("7", 7.0), ("0", 0.0), ("3600", MAX_RETRY_AFTER),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past: retry now
])
def test_429_retry_after(
    registry_fake_server: FakeFactory, prober: Prober, sleeps: list[float], retry_after: str,
    expected: float
) -> None:
    server = registry_fake_server(sequence(
        Reply(429, [("Retry-After", retry_after)], _errors("TOOMANYREQUESTS")),
        then=basic_registry({"robot$ci": ROBOT.password})))
    assert prober.probe(server.host, ROBOT).outcome is Outcome.OK
    assert sleeps == [expected]


def test_429_at_token_endpoint(
    token_registry: TokenRegistry, registry_fake_server: FakeFactory, prober: Prober, sleeps: list[float]
) -> None:
    ts = token_registry.token_server
    limiter = registry_fake_server(sequence(Reply(429, [("Retry-After", "3")]), then=ts.respond))
    server = registry_fake_server(bearer_registry(ts, f'Bearer realm="{limiter.url}/token"'))
    assert prober.probe(server.host, ROBOT).outcome is Outcome.OK
    assert sleeps == [3.0]


@pytest.mark.parametrize("status", [401, 403])
def test_never_retries_401_403(
    registry_fake_server: FakeFactory, make_prober: Callable[..., Prober], sleeps: list[float], status: int
) -> None:
    def respond(req: Incoming) -> Reply:
        code = status if req.authorization else 401
        return Reply(code, [("WWW-Authenticate", 'Basic realm="r"')], _errors("DENIED"))

    server = registry_fake_server(respond)
    result = make_prober(retries=5).probe(server.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.REJECTED, "rejected")
    assert authed(server) == 1 and len(server.requests) == 2
    assert sleeps == []


def test_403_on_anonymous_ping(registry_fake_server: FakeFactory, prober: Prober) -> None:
    server = registry_fake_server(lambda _req: Reply(403, body=_errors("DENIED")))
    result = prober.probe(server.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "http_403")
    assert authed(server) == 0


def test_cross_host_redirect_keeps_credentials(
    registry_fake_server: FakeFactory, prober: Prober
) -> None:
    other = registry_fake_server(lambda _req: Reply.json(200, {}))
    login = basic_registry({"robot$ci": ROBOT.password})

    def respond(req: Incoming) -> Reply:
        if req.authorization:
            return Reply(307, [("Location", f"{other.url_for('localhost')}/v2/")])
        return login(req)

    server = registry_fake_server(respond)
    result = prober.probe(server.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "redirect")
    assert f"localhost:{other.port}" in result.detail
    assert other.requests == []  # not followed at all: Authorization never left the registry


def test_cross_host_redirect_of_anonymous_ping(registry_fake_server: FakeFactory, prober: Prober) -> None:
    other = registry_fake_server(lambda _req: Reply.json(200, {}))
    server = registry_fake_server(lambda _req: Reply(302, [("Location", f"{other.url}/v2/")]))
    result = prober.probe(server.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "redirect")
    assert other.requests == []


def test_redirect_to_http_refused(registry_fake_server: FakeFactory, prober: Prober) -> None:
    server = registry_fake_server(lambda req: Reply(301, [("Location", f"http://{req.headers['host']}/v2/")]))
    result = prober.probe(server.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "insecure")


def test_same_host_redirect_followed(registry_fake_server: FakeFactory, prober: Prober) -> None:
    inner = basic_registry({"robot$ci": ROBOT.password})

    def respond(req: Incoming) -> Reply:
        if req.path == "/v2/":
            return Reply(308, [("Location", "/proxy/v2/")])
        req.path = "/v2/"
        return inner(req)

    server = registry_fake_server(respond)
    assert prober.probe(server.host, ROBOT).outcome is Outcome.OK
    assert [r.path for r in server.requests] == ["/v2/", "/proxy/v2/"] * 2


def test_redirect_loop(registry_fake_server: FakeFactory, prober: Prober) -> None:
    server = registry_fake_server(lambda _req: Reply(302, [("Location", "/v2/")]))
    result = prober.probe(server.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "redirect")


@pytest.mark.parametrize("credential", [
    Credential("", "pw"), Credential("user", ""), Credential("a:b", "pw"),
])
def test_unusable_credentials_never_sent(
    registry_fake_server: FakeFactory, prober: Prober, credential: Credential
) -> None:
    server = registry_fake_server(basic_registry({}))
    result = prober.probe(server.host, credential)
    assert (result.outcome, result.reason) == (Outcome.REJECTED, "rejected")
    assert "nothing was sent" in result.detail
    assert server.requests == []


def test_invalid_host(prober: Prober, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    result = prober.probe("not a host", ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "invalid_host")
    # A key with userinfo is refused without echoing the secret in it.
    for key in ("https://user:hunter2@registry.local/v2/", "http://user:hunter2@registry.local"):
        result = prober.probe(key, ROBOT)
        assert result.outcome is Outcome.ERROR
        assert "hunter2" not in result.detail + caplog.text


def test_invalid_redirect_location(registry_fake_server: FakeFactory, prober: Prober) -> None:
    server = registry_fake_server(lambda _req: Reply(302, [("Location", "https://[::1/v2/")]))
    result = prober.probe(server.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "protocol")


def test_invalid_realm_url(registry_fake_server: FakeFactory, prober: Prober) -> None:
    server = registry_fake_server(basic_registry({}, 'Bearer realm="https://[::1/token"'))
    result = prober.probe(server.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "protocol")
    assert authed(server) == 0


def test_duration_uses_injected_clock(
    registry_fake_server: FakeFactory, probe_settings: ProbeSettings
) -> None:
    ticks = iter([100.0, 102.5])
    server = registry_fake_server(lambda _req: Reply.json(200, {}))
    prober = Prober(make_session(probe_settings), probe_settings, sleep=lambda _s: None,
                    clock=lambda: next(ticks))
    assert prober.probe(server.host, ROBOT).duration == 2.5


# --------------------------------------------------------------------------- hygiene


SENTINEL = "S3ntinel:pa55-do-not-leak"


def run_with_sentinel(
    htpasswd_registry: Registry, token_registry: TokenRegistry, registry_fake_server: FakeFactory,
    make_prober: Callable[..., Prober],
) -> tuple[list[ProbeResult], list[str]]:
    """Run many probe paths with a sentinel password; yield (results, secrets to look for)."""
    user = "robot$ci"
    cred = Credential(user, SENTINEL)
    ts = token_registry.token_server
    prober = make_prober(retries=1)
    results: list[ProbeResult] = []

    htpasswd_registry.set_password(user, SENTINEL)
    results.append(prober.probe(htpasswd_registry.host, cred))  # ok
    htpasswd_registry.set_password(user, "something-else")
    results.append(prober.probe(htpasswd_registry.host, cred))  # rejected
    results.append(make_prober(ca_cert="").probe(htpasswd_registry.host, cred))  # tls

    ts.users[user] = SENTINEL
    for shape in ("token", "both", "none", "not_json"):
        ts.shape = shape
        results.append(prober.probe(token_registry.host, cred))
    ts.shape = "token"
    ts.tokens_valid = False
    results.append(prober.probe(token_registry.host, cred))  # rejected at /v2/
    ts.tokens_valid = True
    ts.users[user] = "other"
    results.append(prober.probe(token_registry.host, cred))  # rejected at token endpoint

    other = registry_fake_server(lambda _req: Reply.json(200, {}))
    login = basic_registry({user: SENTINEL})
    elsewhere = [("Location", f"{other.url_for('localhost')}/x")]
    redirecting = registry_fake_server(
        lambda req: Reply(307, elsewhere) if req.authorization else login(req))
    http_realm = registry_fake_server(basic_registry({}, 'Bearer realm="http://127.0.0.1:1/token"'))
    slow = registry_fake_server(lambda _req: Reply(200, delay=0.5))
    flaky = registry_fake_server(sequence(Reply(503, body=SENTINEL.encode()), then=login))
    for host in (redirecting.host, http_realm.host, flaky.host, f"http://{other.host}"):
        results.append(prober.probe(host, cred))
    results.append(make_prober(timeout=0.1, retries=0).probe(slow.host, cred))

    raw = f"{user}:{SENTINEL}".encode()
    secrets = [SENTINEL, base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(),
               *(issued.token for issued in ts.issued)]
    assert len(secrets) > 3, "no tokens issued: the scenario did not exercise the token flow"
    return results, secrets


def test_no_secret_in_results_or_logs(
    htpasswd_registry: Registry, token_registry: TokenRegistry, registry_fake_server: FakeFactory,
    make_prober: Callable[..., Prober], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    results, secrets = run_with_sentinel(htpasswd_registry, token_registry, registry_fake_server,
                                         make_prober)
    outcomes = {(r.outcome, r.reason) for r in results}
    # The run really went through the interesting paths.
    for expected in [(Outcome.OK, ""), (Outcome.REJECTED, "rejected"), (Outcome.ERROR, "tls"),
                     (Outcome.ERROR, "protocol"), (Outcome.ERROR, "redirect"),
                     (Outcome.ERROR, "insecure"), (Outcome.ERROR, "timeout")]:
        assert expected in outcomes
    text = caplog.text + "".join(
        f"{r.detail}|{r.reason}|{r!r}|{r!s}" for r in results
    )
    assert caplog.records, "expected debug logs to check"
    for secret in secrets:
        assert secret not in text
    assert not re.search(r"(Basic|Bearer) [A-Za-z0-9+/_.=-]{8,}", text)


@pytest.mark.parametrize("kind", ["htpasswd_registry", "token_registry"])
def test_one_connection_per_probe(kind: str, request: pytest.FixtureRequest, prober: Prober) -> None:
    """The 401 of the anonymous GET /v2/ is read before the login, so the login reuses its
    connection (one TLS handshake per probe, not two); the last answer is closed unread, so no
    connection outlives its probe: a pooled one that a load balancer dropped silently would hang
    the next cycle's probe for its whole timeout."""
    from tests.support.proxy import FaultProxy

    registry = request.getfixturevalue(kind)
    proxy = FaultProxy("127.0.0.1", int(registry.host.rsplit(":", 1)[1])).start()
    try:
        host = f"127.0.0.1:{proxy.port}"
        outcomes = [prober.probe(host, cred).outcome for cred in (ROBOT, WRONG, ROBOT)]
        assert outcomes == [Outcome.OK, Outcome.REJECTED, Outcome.OK]
        assert proxy.connections == 3
    finally:
        proxy.stop()


def test_probe_deadline_key(tmp_path: Path) -> None:
    """probe.deadline parses as a duration (default 60 s); zero is a config error with its path."""
    from syncer.config import ConfigError, load

    path = tmp_path / "c.toml"
    base = ('[vault]\naddress = "https://v:8200"\n[vault.auth]\nmethod = "token"\n'
            '[[registries]]\nhost = "r.io"\npath = "r"\n'
            '[[targets]]\nnamespace = "ns"\nname = "pull"\n')
    path.write_text(base + '[probe]\ndeadline = "1500ms"\n')
    env = {"VAULT_TOKEN": "t"}
    assert load(str(path), env).probe.deadline == 1.5
    path.write_text(base)
    assert load(str(path), env).probe.deadline == 60.0
    path.write_text(base + '[probe]\ndeadline = "0s"\n')
    with pytest.raises(ConfigError) as info:
        load(str(path), env)
    assert any(p.startswith("probe.deadline") for p in info.value.problems), info.value.problems
