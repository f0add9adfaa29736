"""Vault fixtures: one real OpenBao dev server per test session.

Tests share the server, so each one works below its own unique names
(``bao_paths``): KV paths, policy names, auth mounts and namespaces.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

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


@pytest.fixture
def bao_paths() -> BaoPaths:
    """A fresh, session-unique name prefix for KV paths, policies, mounts and namespaces."""
    return BaoPaths(f"t{next(_counter)}")
