"""Hostile registries against the probe (issue 16 items 1 and 5): one test per attack.

Every server here is real (TLS sockets in tests/support); deadlines are kept at 1 s and the
bounds asserted generously (deadline + 2 s), measured with the real clock.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme

from syncer.config import ProbeSettings
from syncer.credential import Credential
from syncer.probe import Outcome, Prober, ProbeResult
from syncer.transport import make_session
from tests.support.hostile import SlowServer
from tests.support.operator import NS
from tests.support.registry import FakeServer, Incoming, Reply
from tests.support.world import World, sentinel

FakeFactory = Callable[..., FakeServer]
ROBOT = Credential("robot$ci", "harbor-robot-secret")
DEADLINE = 1.0
SLACK = 2.0

pytest_plugins = ["tests.support.operator_fixtures"]  # the world fixture


@pytest.fixture
def slow(ca: trustme.CA) -> Iterator[Callable[..., SlowServer]]:
    servers: list[SlowServer] = []

    def make(mode: str, **kw: Any) -> SlowServer:
        server = SlowServer(ca, mode, **kw)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def prober(probe_settings: ProbeSettings) -> Prober:
    # timeout (per read) is far above the deadline: only the deadline can end these probes.
    settings = dataclasses.replace(probe_settings, timeout=5.0, deadline=DEADLINE, retries=2)
    return Prober(make_session(settings), settings)


def timed_probe(prober: Prober, host: str, **kw: Any) -> tuple[ProbeResult, float]:
    start = time.monotonic()
    result = prober.probe(host, ROBOT, **kw)
    return result, time.monotonic() - start


def assert_cut_by_deadline(result: ProbeResult, elapsed: float, server: SlowServer) -> None:
    assert (result.outcome, result.reason) == (Outcome.ERROR, "timeout"), result
    assert "deadline" in result.detail
    assert elapsed < DEADLINE + SLACK, elapsed
    # The socket was closed, not just abandoned: the server's trickle saw the client go.
    deadline = time.monotonic() + SLACK
    while not server.ended and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.ended, "the server is still trickling to an open connection"


def test_header_trickle_is_cut_at_the_deadline(slow: Callable[..., SlowServer], prober: Prober) -> None:
    """Attack: /v2/ sends its status line and headers one byte at a time, each byte well within
    the per-read timeout, fast enough that the status line is complete when the deadline cuts
    the headers. Safe: the probe ends at its deadline with `timeout`, socket closed."""
    server = slow("headers", interval=0.02)
    result, elapsed = timed_probe(prober, server.host)
    assert_cut_by_deadline(result, elapsed, server)


def test_token_body_trickle_is_cut_at_the_deadline(slow: Callable[..., SlowServer],
                                                   prober: Prober) -> None:
    """Attack: the token realm answers 200 at once, then its body one byte at a time.
    Safe: `timeout` at the deadline; the connection to the realm is closed."""
    server = slow("token_body")
    result, elapsed = timed_probe(prober, server.host)
    assert_cut_by_deadline(result, elapsed, server)
    assert "/token" in "".join(server.paths)


def test_challenge_body_trickle_is_cut_at_the_deadline(slow: Callable[..., SlowServer],
                                                       prober: Prober) -> None:
    """Attack: the anonymous 401 has a small Content-Length (so it is drained for reuse) and
    trickles its body. Safe: the drain is cut by the deadline; `timeout`, socket closed."""
    server = slow("challenge_body")
    result, elapsed = timed_probe(prober, server.host)
    assert_cut_by_deadline(result, elapsed, server)


def test_shutdown_interrupts_a_probe_in_flight(slow: Callable[..., SlowServer],
                                               probe_settings: ProbeSettings) -> None:
    """Attack: a trickling registry while the daemon gets SIGTERM. Safe: the probe ends within
    a fraction of a second of the shutdown flag, far before its (long) deadline."""
    settings = dataclasses.replace(probe_settings, timeout=30.0, deadline=60.0)
    prober = Prober(make_session(settings), settings)
    server = slow("headers")
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    result, elapsed = timed_probe(prober, server.host, cancelled=stop.is_set)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "timeout")
    assert "shutdown" in result.detail
    assert elapsed < 0.3 + SLACK, elapsed


def test_slow_registry_delays_no_other_target(world: World, slow: Callable[..., SlowServer],
                                              htpasswd_registry: Any) -> None:
    """Attack: one registry trickles its headers. Safe: the target of a good registry is written
    while the slow probe is still waiting for a byte (order of events, seen by the slow server);
    the slow host fails with `timeout`."""
    key = sentinel("good")
    htpasswd_registry.set_password("robot$ci", key)
    world.vault_put("good", password=key)
    world.vault_put("slow", password=sentinel("slow"))
    server = slow("headers")
    written_while_slow_probe_waits: list[bool] = []
    server.on_byte = lambda: written_while_slow_probe_waits.append(
        world.kube.get_secret(NS, "good-pull") is not None)
    config = world.config(
        [{"host": htpasswd_registry.host, "path": "good", "username": "robot$ci"},
         {"host": server.host, "path": "slow", "username": "robot$ci"}],
        [{"namespace": NS, "name": "good-pull", "registries": [htpasswd_registry.host],
          "create": True},
         {"namespace": NS, "name": "slow-pull", "registries": [server.host],
          "create": True}],
        probe={"deadline": "2s", "timeout": "5s"})
    result = world.run(config)
    assert result.code == 1, result.out + result.err
    assert f"registry {server.host}: failed" in result.out
    assert "deadline of 2s" in result.out
    # A byte or two may still be attempted after the client closed; five cannot.
    assert written_while_slow_probe_waits.count(True) >= 5, written_while_slow_probe_waits
    assert world.secret_doc(NS, "good-pull")["auths"][htpasswd_registry.host]["password"] == key


def test_backslash_redirect_sends_no_credentials_elsewhere(registry_fake_server: FakeFactory,
                                                           prober: Prober) -> None:
    """Attack: after the Basic login, a redirect to `https://EVIL\\@REGISTRY/v2/`: urlsplit reads
    REGISTRY, requests connects to EVIL. Safe: `redirect`, and EVIL receives no request."""
    evil = registry_fake_server(lambda _req: Reply.json(200, {}))

    def respond(req: Incoming) -> Reply:
        if req.authorization:
            location = f"https://localhost:{evil.port}\\@127.0.0.1:{server.port}/v2/"
            return Reply(307, [("Location", location)])
        return Reply(401, [("WWW-Authenticate", 'Basic realm="x"')])

    server = registry_fake_server(respond)
    result = prober.probe(server.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "redirect"), result
    assert f"localhost:{evil.port}" in result.detail
    assert evil.requests == []


def test_realm_with_userinfo_is_refused(registry_fake_server: FakeFactory, prober: Prober) -> None:
    """Attack: a Bearer realm `https://anon:anon@REALM/token` (requests would send the realm's
    user:password instead of ours, so "ok" would prove nothing). Safe: `protocol`, the realm
    gets no request, and the realm's userinfo is not repeated in the detail."""
    realm = registry_fake_server(lambda _req: Reply.json(200, {"token": "anonymous"}))

    def respond(req: Incoming) -> Reply:
        challenge = f'Bearer realm="https://anon:anon-pw@127.0.0.1:{realm.port}/token"'
        return Reply(200 if req.bearer else 401, [("WWW-Authenticate", challenge)])

    server = registry_fake_server(respond)
    result = prober.probe(server.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "protocol"), result
    assert realm.requests == []
    assert "anon-pw" not in result.detail


def test_backslash_realm_userinfo_is_refused(registry_fake_server: FakeFactory,
                                             prober: Prober) -> None:
    """Attack: a realm `https://REALM\\@OTHER/token`, userinfo by one parser's reading only.
    Safe: `protocol` before any request to either host."""
    other = registry_fake_server(lambda _req: Reply.json(200, {"token": "t"}))

    def respond(req: Incoming) -> Reply:
        challenge = f'Bearer realm="https://127.0.0.1:{other.port}\\\\@localhost:{other.port}/t"'
        return Reply(401, [("WWW-Authenticate", challenge)])

    server = registry_fake_server(respond)
    result = prober.probe(server.host, ROBOT)
    assert result.outcome is Outcome.ERROR and result.reason in ("protocol", "redirect"), result
    assert other.requests == []
