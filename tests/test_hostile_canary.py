"""Hostile registries against the canary pull check (issue 13): one test per attack. Each
registry is a real TLS server from tests/support scripted to misbehave."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Callable

import pytest

from syncer.canary import PullChecker, PullOutcome
from syncer.config import ProbeSettings
from syncer.credential import Credential
from syncer.imageref import parse_image
from syncer.probe import Prober
from syncer.transport import make_session
from tests.support.registry import FakeServer, Incoming, Reply
from tests.support.world import sentinel

FakeFactory = Callable[..., FakeServer]
DEADLINE = 1.0


@pytest.fixture
def checker(probe_settings: ProbeSettings) -> PullChecker:
    settings = dataclasses.replace(probe_settings, deadline=DEADLINE, retries=1)
    return PullChecker(Prober(make_session(settings), settings))


def _jwt(claims: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


def _bearer_registry(make: FakeFactory, token_body: Callable[[Incoming], Reply],
                     manifest: Callable[[Incoming], Reply]) -> FakeServer:
    realm: list[str] = []

    def respond(req: Incoming) -> Reply:
        if req.path == "/token":
            return token_body(req)
        if not req.authorization:
            return Reply(401, [("WWW-Authenticate", f'Bearer realm="{realm[0]}",service="reg"')])
        return manifest(req)

    server = make(respond)
    realm.append(f"{server.url}/token")
    return server


def run(checker: PullChecker, server: FakeServer, password: str) -> tuple[PullOutcome, str, float]:
    start = time.monotonic()
    [result] = checker.check(server.host, Credential("robot$ci", password),
                             [parse_image("team/app:v1", server.host)])
    return result.outcome, result.detail, time.monotonic() - start


def test_forged_token_claiming_pull_does_not_make_a_pull_ok(checker: PullChecker,
                                                           registry_fake_server: FakeFactory) -> None:
    """Attack: the token endpoint hands out a JWT whose access claim grants pull, but the registry
    refuses it. Safe outcome: the claim is only ever used to refuse; the HEAD decides: pull_denied."""
    token = _jwt({"access": [{"type": "repository", "name": "team/app", "actions": ["pull"]}]})
    server = _bearer_registry(registry_fake_server, lambda _r: Reply.json(200, {"token": token}),
                              lambda _r: Reply(403))
    outcome, _detail, _ = run(checker, server, sentinel("forged"))
    assert outcome is PullOutcome.PULL_DENIED


def test_token_endpoint_streams_an_endless_body(checker: PullChecker,
                                                registry_fake_server: FakeFactory) -> None:
    """Attack: the pull-token answer is larger than any token (2 MiB). Safe outcome: refused as a
    protocol error after at most the cap, within the deadline; nothing is buffered past it."""
    server = _bearer_registry(registry_fake_server,
                              lambda _r: Reply(200, [("Content-Type", "application/json")], b"x" * (2 << 20)),
                              lambda _r: Reply(200))
    outcome, detail, took = run(checker, server, sentinel("big"))
    assert outcome is PullOutcome.ERROR and "oversized" in detail and took < DEADLINE + 2


def test_manifest_head_that_never_answers_is_cut_by_the_deadline(checker: PullChecker,
                                                                 registry_fake_server: FakeFactory) -> None:
    """Attack: the registry stalls the authenticated HEAD. Safe outcome: the per-image deadline
    closes the connection; the check ends as an indeterminate error (timeout), not a hang."""
    server = _bearer_registry(registry_fake_server, lambda _r: Reply.json(200, {"token": "opaque"}),
                              lambda _r: Reply(200, delay=DEADLINE + 3))
    outcome, detail, took = run(checker, server, sentinel("slow"))
    assert outcome is PullOutcome.ERROR and took < DEADLINE + 2, detail


def test_plain_http_realm_gets_no_credentials(checker: PullChecker,
                                              registry_fake_server: FakeFactory) -> None:
    """Attack: the manifest's challenge points the pull-token request at an http:// realm.
    Safe outcome: nothing is sent there; the check is an error (insecure), never pull_denied."""
    def respond(req: Incoming) -> Reply:
        return Reply(401, [("WWW-Authenticate", 'Bearer realm="http://127.0.0.1:9/token"')])

    password = sentinel("http-realm")
    outcome, detail, _ = run(checker, registry_fake_server(respond), password)
    assert outcome is PullOutcome.ERROR and "plain-HTTP" in detail and password not in detail


def test_error_text_from_the_registry_never_reaches_the_detail(checker: PullChecker,
                                                               registry_fake_server: FakeFactory) -> None:
    """Attack: the registry answers the HEAD with a 500 and a body quoting the Authorization
    header and terminal escapes. Safe outcome: only the status is reported, never the body."""
    password = sentinel("echo")
    body = f"\x1b[31mAuthorization: Basic {password}".encode()
    server = _bearer_registry(registry_fake_server, lambda _r: Reply.json(200, {"token": "opaque"}),
                              lambda _r: Reply(500, [], body))
    outcome, detail, _ = run(checker, server, password)
    assert outcome is PullOutcome.ERROR and "500" in detail
    assert password not in detail and "\x1b" not in detail
