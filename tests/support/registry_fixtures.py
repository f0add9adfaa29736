"""Registry fixtures: real ``docker-registry`` servers, a token server and scriptable fakes.

The real servers are session-scoped (each costs a process start); the function-scoped fixtures
put users and token-server knobs back to their defaults before every test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import trustme

from syncer.config import ProbeSettings
from tests.support.images import Layout, build_layout, push
from tests.support.registry import FakeServer, Registry, Responder, TokenServer

__all__ = [
    "CANARY_REPOSITORIES",
    "DEFAULT_USERS",
    "canary_images",
    "TokenRegistry",
    "registry_fake_server",
    "htpasswd_registry",
    "htpasswd_registry_server",
    "open_registry",
    "plain_registry",
    "probe_settings",
    "token_registry",
    "token_registry_server",
]

DEFAULT_USERS = {
    "$oauthtoken": "ngc-api-key-0001",  # NGC: the username is literally $oauthtoken
    "robot$ci": "harbor-robot-secret",  # Harbor robot account
    "ns+bot": "pa:ss:word",  # Quay robot; passwords may contain ':'
}


@dataclass(frozen=True)
class TokenRegistry:
    """A token-auth registry and the token server it trusts."""

    registry: Registry
    token_server: TokenServer

    @property
    def host(self) -> str:
        return self.registry.host


@pytest.fixture(scope="session")
def htpasswd_registry_server(
    ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """TLS + htpasswd registry shared by the session; prefer ``htpasswd_registry``."""
    with Registry(tmp_path_factory.mktemp("registry-htpasswd"), auth="htpasswd", ca=ca,
                  users=DEFAULT_USERS) as registry:
        yield registry


@pytest.fixture
def htpasswd_registry(htpasswd_registry_server: Registry) -> Registry:
    """The htpasswd registry with ``DEFAULT_USERS`` restored (tests may rotate passwords)."""
    if htpasswd_registry_server.users != DEFAULT_USERS:
        htpasswd_registry_server.set_users(DEFAULT_USERS)
    return htpasswd_registry_server


@pytest.fixture(scope="session")
def token_registry_server(
    ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TokenRegistry]:
    """TLS + token-auth registry and its token server, shared by the session."""
    token_server = TokenServer(ca, DEFAULT_USERS)
    try:
        with Registry(tmp_path_factory.mktemp("registry-token"), auth="token", ca=ca,
                      token_server=token_server) as registry:
            yield TokenRegistry(registry, token_server)
    finally:
        token_server.stop()


@pytest.fixture
def token_registry(token_registry_server: TokenRegistry) -> TokenRegistry:
    """The token registry with users, answer shape and request log reset."""
    token_registry_server.token_server.reset(DEFAULT_USERS)
    return token_registry_server


@pytest.fixture(scope="session")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A plain-HTTP registry (htpasswd auth): the probe must never talk to it."""
    with Registry(tmp_path_factory.mktemp("registry-plain"), auth="htpasswd",
                  users=DEFAULT_USERS) as registry:
        yield registry


@pytest.fixture
def probe_settings(ca_file: str) -> ProbeSettings:
    """Probe settings trusting the test CA, with short timeouts."""
    return ProbeSettings(enabled=True, timeout=5.0, ca_cert=ca_file, verify_before_write=True,
                         retries=2)


@pytest.fixture
def registry_fake_server(ca: trustme.CA) -> Iterator[Callable[..., FakeServer]]:
    """Factory for scriptable servers: ``registry_fake_server(responder, tls=True)``; stopped after."""
    servers: list[FakeServer] = []

    def make(responder: Responder | None = None, tls: bool = True) -> FakeServer:
        server = FakeServer(ca if tls else None, responder)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


CANARY_REPOSITORIES = ("team/app", "other/secret", "public/base")
"""Pushed to the token registry as ``:v1`` by ``canary_images`` (team/app to htpasswd's too)."""


@pytest.fixture(scope="session")
def canary_images(token_registry_server: TokenRegistry, htpasswd_registry_server: Registry,
                  ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """One small image pushed with skopeo to ``CANARY_REPOSITORIES`` (``:v1``) on the token
    registry and to ``team/app:v1`` and ``nvidia/pytorch:24.01-py3`` (the Domino examples'
    canary) on the htpasswd registry; the Layout carries its digest."""
    certs = tmp_path_factory.mktemp("skopeo-certs")
    ca.cert_pem.write_to_path(str(certs / "ca.crt"))
    layout = build_layout(tmp_path_factory.mktemp("oci-layout"), "v1", b"canary image\n")
    tokens = token_registry_server.token_server
    tokens.reset({**DEFAULT_USERS, "pusher": "pusher-secret"})
    tokens.grant("pusher", "*", "pull", "push")
    try:
        for repository in CANARY_REPOSITORIES:
            push(layout, token_registry_server.host, repository, ("pusher", "pusher-secret"), certs)
    finally:
        tokens.reset(DEFAULT_USERS)
    robot = ("robot$ci", DEFAULT_USERS["robot$ci"])
    push(layout, htpasswd_registry_server.host, "team/app", robot, certs)
    # The canary of the shipped Domino examples, for the tests that run them as deployed.
    push(layout, htpasswd_registry_server.host, "nvidia/pytorch", robot, certs, tag="24.01-py3")
    return layout


@pytest.fixture(scope="session")
def open_registry(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A TLS registry with no auth at all (an internal mirror: anyone may pull and push), with
    ``team/app:v1`` pushed anonymously by skopeo."""
    certs = tmp_path_factory.mktemp("skopeo-certs-open")
    ca.cert_pem.write_to_path(str(certs / "ca.crt"))
    layout = build_layout(tmp_path_factory.mktemp("oci-layout-open"), "v1", b"open mirror\n")
    with Registry(tmp_path_factory.mktemp("registry-open"), auth="none", ca=ca) as registry:
        push(layout, registry.host, "team/app", None, certs)
        yield registry
