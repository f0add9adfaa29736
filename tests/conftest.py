"""Shared fixtures. Each real server lives in tests/support/ with its own fixtures module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trustme

from tests.support.kube_fixtures import *  # noqa: F403
from tests.support.registry_fixtures import *  # noqa: F403
from tests.support.vault_fixtures import *  # noqa: F403
from tests.support.watch_fixtures import *  # noqa: F403


@pytest.fixture(scope="session")
def ca() -> Iterator[trustme.CA]:
    """One test CA for every TLS server in the session (kube API, registries, token servers)."""
    yield trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The test CA as a PEM file, for clients that want a path."""
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)
