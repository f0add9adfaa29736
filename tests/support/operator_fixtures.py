"""Fixtures of the operator-tool tests; register with ``pytest_plugins`` in a test module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.operator import NS, ngc_login
from tests.support.world import World


@pytest.fixture
def world(tmp_path: Path, bao: Any, kube: Any, ca_file: str) -> World:
    """A World with the customer's namespace; import into a test module to use."""
    kube.add_namespace(NS)
    return World(tmp_path, bao, kube, ca_file)


@pytest.fixture
def ngc(world: World, htpasswd_registry: Any) -> dict[str, Any]:
    """The NGC-like registry login (see ngc_login)."""
    return ngc_login(world, htpasswd_registry)
