"""Hostile clients on the metrics/health port (issue 16, item 2): one test per row.

Anyone the NetworkPolicy admits can reach the port. Idle sockets, trickled headers and huge
requests must neither exhaust the daemon's file descriptors or threads, nor lock the kubelet's
probe out, nor stall the sync, nor delay shutdown.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from prometheus_client import CollectorRegistry

from syncer.config import MetricsSettings
from syncer.health import MAX_REQUEST_BYTES, BoundedHTTPServer, Health, make_server
from tests.support.net import free_port
from tests.support.world import DaemonProcess, World, sentinel
from tests.test_daemon import NAME, NS, fast_schedule, ngc, reg, world  # noqa: F401 - fixtures

IDLE = 1000
"""Idle connections opened by the flood tests (issue 16 reproduced it with about 1,000)."""
CHILD_FD_LIMIT = 512
"""RLIMIT_NOFILE of the daemon under attack: below IDLE, so holding every socket would exhaust it."""
SLACK_FDS = 16


def open_idle(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that never send a byte (bounded loop; the caller closes them)."""
    need = count + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"ulimit -n is {hard}; this test needs {need} descriptors")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    sockets = []
    for _ in range(count):
        sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    return sockets


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def timed_get(url: str) -> tuple[int, float]:
    t0 = time.monotonic()
    status = requests.get(url, timeout=5).status_code
    return status, time.monotonic() - t0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.contextmanager
def serving(settings: MetricsSettings) -> Iterator[BoundedHTTPServer]:
    server = make_server("127.0.0.1", 0, CollectorRegistry(), Health(60, 180), settings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def handler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "process_request_thread" in t.name]


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or resets) the connection, and when."""
    t0, data = time.monotonic(), b""
    sock.settimeout(limit)
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        while chunk := sock.recv(4096):
            data += chunk
    return data, time.monotonic() - t0


# ------------------------------------------------------------------------------ rows


def test_thousand_idle_connections_neither_exhaust_fds_nor_block_healthz_nor_the_sync(
        world: World, ngc: dict[str, Any], htpasswd_registry: Any) -> None:  # noqa: F811
    """Attack: 1,000 TCP connections to the daemon's metrics port that never send a byte, held
    open, against a daemon whose fd limit (512) is below that.
    Safe: the daemon holds at most ``max_connections`` of them (fd count stays bounded), a fresh
    /healthz answers 200 within 2 s (about 10 ms measured), and a rotation is still synced while
    they are held."""
    port = free_port()
    config = world.config([reg(ngc)], [{"namespace": NS, "name": NAME}],
                          schedule=fast_schedule(interval="500ms"), metrics={"listen": f"127.0.0.1:{port}"})
    daemon = DaemonProcess(world, config, port)
    idle: list[socket.socket] = []
    try:
        resource.prlimit(daemon.proc.pid, resource.RLIMIT_NOFILE, (CHILD_FD_LIMIT, CHILD_FD_LIMIT))
        daemon.wait_for(lambda: ngc["host"] in world.secret_doc(NS, NAME)["auths"], what="first sync")
        daemon.wait_for(lambda: daemon.get("/readyz")[0] == 200, what="/readyz")
        baseline = fd_count(daemon.proc.pid)
        idle = open_idle(port, IDLE)
        held = fd_count(daemon.proc.pid)
        status, latency = timed_get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200
        assert latency < 2.0, f"/healthz took {latency:.2f}s with {IDLE} idle connections"
        # The sync keeps working: a rotation reaches the secret while the sockets are held.
        new_key = sentinel("rotated")
        htpasswd_registry.set_password("$oauthtoken", new_key)
        world.vault_put("ngc", password=new_key)
        daemon.wait_for(lambda: world.secret_doc(NS, NAME)["auths"][ngc["host"]]["password"] == new_key,
                        what="rotation synced while idle connections are held")
        status, _ = timed_get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200
        peak = max(held, fd_count(daemon.proc.pid))
        bound = baseline + MetricsSettings().max_connections + SLACK_FDS
        print(f"fds: baseline {baseline}, with {IDLE} idle connections {peak} (bound {bound}); "
              f"/healthz {latency * 1000:.1f} ms")
        assert peak <= bound, f"daemon holds {peak} fds with {IDLE} idle connections (baseline {baseline})"
    finally:
        close_all(idle)
        assert daemon.stop() == 0, daemon.output()[-2000:]


def test_slowloris_trickling_headers_is_cut_off_at_the_handler_timeout() -> None:
    """Attack: a request line, then one header byte every 100 ms, never finishing the request
    (each byte resets a per-read timeout, so ``settimeout`` alone would serve it forever).
    Safe: the connection is closed, without an answer, once ``handler_timeout`` (1 s) is up."""
    with serving(MetricsSettings(handler_timeout=1.0)) as server:
        sock = socket.create_connection(server.server_address[:2], timeout=5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        t0, closed = time.monotonic(), False
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while time.monotonic() - t0 < 4:
                sock.sendall(b"X")
                time.sleep(0.1)
        sock.settimeout(0.5)
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            closed = sock.recv(1024) == b""
        elapsed = time.monotonic() - t0
        sock.close()
        assert closed or elapsed < 4, "a trickling client was still connected after 4 s"
        assert elapsed < 1.0 + 1.5, f"cut off only after {elapsed:.1f}s"


def test_oversized_request_is_refused_without_an_answer() -> None:
    """Attack: a GET with about 40 KiB of headers (http.server alone accepts 100 x 64 KiB).
    Safe: nothing past ``MAX_REQUEST_BYTES`` is read; the connection closes with no 200."""
    with serving(MetricsSettings()) as server:
        sock = socket.create_connection(server.server_address[:2], timeout=5)
        headers = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(40))
        assert len(headers) > MAX_REQUEST_BYTES
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"GET /healthz HTTP/1.0\r\n" + headers + b"\r\n")
        data, _ = read_until_closed(sock, 3)
        sock.close()
        assert not data.startswith(b"HTTP/1.0 200"), data[:80]


def test_excess_connections_get_no_thread_and_healthz_still_answers() -> None:
    """Attack: 200 idle connections against a server allowing 4.
    Safe: never more than 4 handler threads (all daemon threads), the oldest idle ones are
    dropped for newcomers, and a fresh /healthz is answered at once."""
    limit = 4
    with serving(MetricsSettings(max_connections=limit, handler_timeout=30)) as server:
        before = len(handler_threads())
        idle = open_idle(server.server_address[1], 200)
        try:
            time.sleep(0.3)
            threads = handler_threads()
            assert len(threads) - before <= limit + 1, f"{len(threads)} handler threads"
            assert all(t.daemon for t in threads)
            assert server.evicted >= 200 - limit - 1
            status, latency = timed_get(f"http://127.0.0.1:{server.server_address[1]}/healthz")
            assert status == 200 and latency < 1.0, (status, latency)
        finally:
            close_all(idle)


def test_idle_connections_do_not_delay_shutdown() -> None:
    """Attack: idle connections held while the daemon is told to stop (SIGTERM).
    Safe: ``shutdown`` + ``server_close`` return at once; handler threads are not waited for."""
    server = make_server("127.0.0.1", 0, CollectorRegistry(), Health(60, 180),
                         MetricsSettings(handler_timeout=30))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    idle = open_idle(server.server_address[1], 8)
    try:
        time.sleep(0.2)
        t0 = time.monotonic()
        server.shutdown()
        server.server_close()
        assert time.monotonic() - t0 < 1.5
    finally:
        close_all(idle)
