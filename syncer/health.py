"""Liveness/readiness state and the HTTP server for /metrics, /healthz and /readyz."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


class Health:
    """What /healthz and /readyz answer, from run start/finish notifications."""

    def __init__(self, interval: float, staleness: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.staleness = staleness
        self.clock = clock
        self.born = clock()
        self.last_start: float | None = None
        self.last_finish: float | None = None
        self.last_success: float | None = None
        self.standby = False
        """True while another replica holds the lease: healthy and ready, but not syncing."""
        self.scheduler_alive: Callable[[], bool] = lambda: True
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
        """Alive: the scheduler runs and a run started within 3 intervals (or we are on standby)."""
        if not self.scheduler_alive():
            return False, "scheduler is not running"
        if self.standby:
            return True, "standby (not the leader)"
        since = self.last_start if self.last_start is not None else self.born
        age = self.clock() - since
        if age > 3 * self.interval:
            return False, f"no run started for {age:.0f}s (3 intervals = {3 * self.interval:.0f}s)"
        return True, "ok"

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


def make_server(host: str, port: int, registry: CollectorRegistry, health: Health) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) for /metrics, /healthz and /readyz."""

    class Handler(BaseHTTPRequestHandler):
        # Without this, headers and body leave as two segments and Nagle + delayed ACK add ~40 ms.
        disable_nagle_algorithm = True
        server_version = "registry-credential-syncer"

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, why = health.live() if path == "/healthz" else health.ready()
                self._send(200 if ok else 503, (why + "\n").encode(), "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("http: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
