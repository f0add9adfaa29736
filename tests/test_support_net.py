"""Ports for the test servers: never the same one twice from one process, and a registry whose
port was taken in between starts on another (the "duplicate host" race of 50 registries started
in parallel by tests/support/scale.py)."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import trustme

from tests.support.net import free_port
from tests.support.registry import Registry


def test_free_port_never_hands_out_a_port_twice() -> None:
    """500 ports from 8 threads: bind(0) alone repeats just-closed ports (about 4 pairs expected
    in 500 draws from Linux's ~28,000 ephemeral ports), so parallel servers clashed."""
    with ThreadPoolExecutor(8) as pool:
        ports = list(pool.map(lambda _: free_port(), range(500)))
    assert len(set(ports)) == len(ports)


def test_registry_moves_to_another_port_when_its_port_was_taken(tmp_path: Path) -> None:
    """Another process took the port between free_port() and the registry's bind: the registry
    exits with "address already in use", and start() retries on a fresh port."""
    ca = trustme.CA()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        registry = Registry(tmp_path, auth="htpasswd", ca=ca, users={"bot": "pw"})
        registry.port = taken
        with registry:
            assert registry.port != taken
            ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
            answer = requests.get(f"{registry.url}/v2/", verify=str(tmp_path / "ca.pem"), timeout=5)
            assert answer.status_code == 401
