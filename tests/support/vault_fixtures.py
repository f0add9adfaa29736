"""Vault fixtures: one real OpenBao dev server per test session.

Tests share the server, so each one works below its own unique names
(``bao_paths``): KV paths, policy names, auth mounts and namespaces.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from syncer.config import RegistrySettings, VaultAuthSettings, VaultSettings
from syncer.vault import VaultError, VaultSource, make_client
from tests.support.vault import BaoServer

_counter = itertools.count(1)


class BaoPaths:
    """Unique names for one test: ``p.kv("x")`` -> ``t17/x``, ``p.name("pol")`` -> ``t17-pol``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def kv(self, name: str = "cred") -> str:
        return f"{self.prefix}/{name}"

    def name(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def __repr__(self) -> str:
        return f"BaoPaths({self.prefix!r})"


@pytest.fixture(scope="session")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoServer]:
    """A running OpenBao dev server (root token ``root``), shared by the session."""
    server = BaoServer(log_dir=tmp_path_factory.mktemp("bao"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def bao_tls(tmp_path_factory: pytest.TempPathFactory, ca: Any) -> Iterator[BaoServer]:
    """An OpenBao dev server with a second, TLS listener (``tls_address``, trusted by ``ca``),
    for ``cert`` auth. A server of its own so the shared one starts as fast as before."""
    server = BaoServer(log_dir=tmp_path_factory.mktemp("bao-tls"), tls_ca=ca)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bao_paths() -> BaoPaths:
    """A fresh, session-unique name prefix for KV paths, policies, mounts and namespaces."""
    return BaoPaths(f"t{next(_counter)}")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def reg(path: str, **kw: Any) -> RegistrySettings:
    return RegistrySettings(host="registry.example.com", path=path, **kw)


def vsettings(address: str, auth: VaultAuthSettings, **kw: Any) -> VaultSettings:
    kw.setdefault("timeout", 5.0)
    return VaultSettings(address=address, auth=auth, **kw)


@pytest.fixture
def sources() -> Iterator[Callable[..., VaultSource]]:
    """Build VaultSources with real clients; close them all at the end."""
    made: list[VaultSource] = []

    def build(settings: VaultSettings, **kw: Any) -> VaultSource:
        src = VaultSource(make_client(settings), settings, **kw)
        made.append(src)
        return src

    yield build
    for src in made:
        src.close()


def error_of(fn: Callable[[], object]) -> VaultError:
    with pytest.raises(VaultError) as info:
        fn()
    return info.value
