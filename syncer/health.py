"""Liveness/readiness state and the HTTP server for /metrics, /healthz and /readyz.

The port is reachable by anything the NetworkPolicy admits, so the server is built to survive
idle and trickling clients (issue 16): every connection has one wall-clock deadline for reading
its request and writing the answer, the request size is capped, and at most
``metrics.max_connections`` connections are held at once. When all slots are taken, the
connection that has waited longest without completing its request is dropped for the newcomer,
so a flood of idle sockets can neither exhaust file descriptors nor lock the kubelet's probe out.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from syncer.config import MetricsSettings

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 16 * 1024
"""Request line plus headers; a GET for three fixed paths needs a few hundred bytes."""
EVICT_WAIT = 1.0
"""Seconds the accept loop waits for an evicted connection's thread to give its slot back."""


class Heartbeat:
    """Progress of the sync cycle: when its last step (a Vault read, a probe, a target) completed.

    The Syncer calls ``beat`` (handed to it as its ``progress`` callback); Health reads ``last``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last: float | None = None
        """Clock time of the last completed step; None before the first."""
        self.steps = 0
        """Steps completed since start."""
        self._lock = threading.Lock()

    def beat(self) -> None:
        with self._lock:
            self.last = self.clock()
            self.steps += 1


class Health:
    """What /healthz and /readyz answer, from run start/finish and progress notifications."""

    def __init__(self, interval: float, staleness: float, *, stuck_after: float = 0.0,
                 heartbeat: Heartbeat | None = None,
                 scheduler_alive: Callable[[], bool] = lambda: True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.staleness = staleness
        self.stuck_after = stuck_after or 3 * interval
        """A running cycle without progress for longer than this is stuck (liveness fails)."""
        self.heartbeat = heartbeat or Heartbeat(clock)
        self.scheduler_alive = scheduler_alive
        self.clock = clock
        self.born = clock()
        self.last_start: float | None = None
        self.last_finish: float | None = None
        self.last_success: float | None = None
        self.standby = False
        """True while another replica holds the lease: healthy and ready, but not syncing."""
        self._lock = threading.Lock()

    def run_started(self) -> None:
        with self._lock:
            self.last_start = self.clock()

    def run_finished(self, ok: bool) -> None:
        with self._lock:
            self.last_finish = self.clock()
            if ok:
                self.last_success = self.last_finish

    def live(self) -> tuple[bool, str]:
        """Alive: the scheduler runs, and either a cycle is running and made progress within
        ``stuck_after``, or none is running and one started within 3 intervals (or standby).

        A long cycle that keeps completing steps is alive: restarting it would only start over.
        """
        if not self.scheduler_alive():
            return False, "scheduler is not running"
        if self.standby:
            return True, "standby (not the leader)"
        now = self.clock()
        with self._lock:
            start, finish = self.last_start, self.last_finish
        if start is not None and (finish is None or finish < start):
            return self._live_running(now, start)
        age = now - (start if start is not None else self.born)
        if age > 3 * self.interval:
            return False, f"no run started for {age:.0f}s (3 intervals = {3 * self.interval:.0f}s)"
        return True, "ok"

    def _live_running(self, now: float, start: float) -> tuple[bool, str]:
        beat = self.heartbeat.last
        quiet = now - max(start, beat if beat is not None else start)
        if quiet > self.stuck_after:
            return False, (f"sync cycle stuck: running for {now - start:.0f}s, no progress for "
                           f"{quiet:.0f}s (limit {self.stuck_after:.0f}s)")
        return True, f"ok (cycle running for {now - start:.0f}s, last progress {quiet:.0f}s ago)"

    def ready(self) -> tuple[bool, str]:
        """Ready: a run completed and the last success is fresher than the staleness."""
        if self.standby:
            return self.live()
        if self.last_finish is None:
            return False, "no run has completed yet"
        if self.last_success is None:
            return False, "no run has succeeded yet"
        age = self.clock() - self.last_success
        if age > self.staleness:
            return False, f"last success {age:.0f}s ago (stale after {self.staleness:.0f}s)"
        return True, "ok"


class RequestTooLarge(OSError):
    """The client sent more than ``MAX_REQUEST_BYTES`` before its request was complete."""


class _DeadlineReader(io.RawIOBase):
    """A socket's read side with one deadline for the whole request and a byte cap.

    ``settimeout`` alone bounds each recv, so a client sending a byte a second would be served
    forever; here every recv may only wait for what is left of the connection's deadline.
    """

    def __init__(self, sock: socket.socket, deadline: float, limit: int) -> None:
        self.sock = sock
        self.deadline = deadline
        self.left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request not complete within the handler timeout")
        if self.left <= 0:
            raise RequestTooLarge(f"request larger than {MAX_REQUEST_BYTES} bytes")
        self.sock.settimeout(remaining)
        view = memoryview(buffer)[: self.left]
        n = self.sock.recv_into(view)
        self.left -= n
        return n


class BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them (see the module docstring)."""

    # server_close() joins non-daemon handler threads: a trickling client would delay shutdown.
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 settings: MetricsSettings) -> None:
        self.settings = settings
        self._slots = threading.BoundedSemaphore(settings.max_connections)
        self._reading: dict[socket.socket, None] = {}
        """Connections whose request is not complete yet, oldest first."""
        self._lock = threading.Lock()
        self.evicted = 0
        self.refused = 0
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._evict_oldest_reader()
            if not self._slots.acquire(timeout=EVICT_WAIT):
                # Every slot is busy answering a complete request: refuse without a thread.
                self.refused += 1
                self.shutdown_request(request)
                return
        with self._lock:
            self._reading[request] = None
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            self.shutdown_request(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def request_complete(self, request: socket.socket) -> None:
        """The handler has read the whole request: it is no longer a candidate for eviction."""
        with self._lock:
            self._reading.pop(request, None)

    def _release(self, request: socket.socket) -> None:
        self.request_complete(request)
        self._slots.release()

    def _evict_oldest_reader(self) -> None:
        with self._lock:
            oldest = next(iter(self._reading), None)
            if oldest is None:
                return
            del self._reading[oldest]
        self.evicted += 1
        # Wakes the handler thread blocked in recv; it closes the socket and frees its slot.
        with contextlib.suppress(OSError):
            oldest.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up or misbehaved is not an error of ours: no traceback on stderr.
        log.debug("http: connection from %s ended with an error", client_address[0], exc_info=True)


def make_server(host: str, port: int, registry: CollectorRegistry, health: Health,
                settings: MetricsSettings | None = None) -> BoundedHTTPServer:
    """An HTTP server (not yet serving) for /metrics, /healthz and /readyz."""
    limits = settings or MetricsSettings()

    class Handler(BaseHTTPRequestHandler):
        # Without this, headers and body leave as two segments and Nagle + delayed ACK add ~40 ms.
        disable_nagle_algorithm = True
        server_version = "registry-credential-syncer"
        timeout = limits.handler_timeout
        server: BoundedHTTPServer

        def setup(self) -> None:
            super().setup()
            self.deadline = time.monotonic() + limits.handler_timeout
            self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self.deadline,
                                                           MAX_REQUEST_BYTES))

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            self.server.request_complete(self.connection)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, why = health.live() if path == "/healthz" else health.ready()
                self._send(200 if ok else 503, (why + "\n").encode(), "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            # The answer shares the deadline: a client that never reads cannot hold the thread.
            self.connection.settimeout(max(0.001, self.deadline - time.monotonic()))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("http: " + format, *args)

    return BoundedHTTPServer((host, port), Handler, limits)
