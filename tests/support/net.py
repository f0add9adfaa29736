"""Small network helpers shared by the test servers."""

from __future__ import annotations

import socket
import threading
import time
from collections import deque

#: ports handed out lately: the kernel may give a just-closed port to the next bind(0), so two
#: servers started in parallel (50 registries in tests/support/scale.py) could both get it
#: before either listens. Remembering the last few thousand keeps one process from handing a port
#: out twice; a clash with another process is left to the servers' retry on "address in use".
_RECENT: deque[int] = deque(maxlen=4096)
_LOCK = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now and not handed out lately by this process."""
    with _LOCK:
        for _ in range(1000):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in _RECENT:
                _RECENT.append(port)
                return port
    raise RuntimeError("no free port that was not handed out lately")


def address_in_use(log: str) -> bool:
    """Whether a server's log says its bind failed because the port was taken (Go and Python)."""
    return "address already in use" in log.lower()


def wait_for_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")
