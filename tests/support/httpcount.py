"""An HTTP reverse proxy that counts requests (method, path, status) on their way to a real server.

OpenBao refuses to enable audit devices through its API, so tests and the benchmark count
Vault requests here instead: point ``vault.address`` at ``proxy.url``. Bodies and headers are
forwarded untouched and never recorded (they carry tokens and secrets).
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
               "upgrade"}


@dataclass(frozen=True)
class Counted:
    """One proxied request."""

    method: str
    path: str
    status: int


class CountingProxy:
    """``http://127.0.0.1:PORT`` -> ``target`` (an http:// URL), recording every request."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("CountingProxy forwards to plain http:// servers only")
        self.target = (parts.hostname, parts.port or 80)
        self.requests: list[Counted] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _forward(self) -> None:
                owner._forward(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_LIST = _forward  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> CountingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observation

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def count(self, method: str | None = None, path_contains: str = "") -> int:
        """Requests so far with this method (any if None) whose path contains ``path_contains``."""
        with self._lock:
            return sum(1 for r in self.requests
                       if (method is None or r.method == method) and path_contains in r.path)

    # -- forwarding

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(*self.target, timeout=30)
            self._local.conn = conn
        return conn

    def _forward(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP_BY_HOP | {"host"}}
        for attempt in range(2):
            conn = self._connection()
            try:
                conn.request(h.command, h.path, body=body, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt:
                    h.send_error(502)
                    return
        with self._lock:
            self.requests.append(Counted(h.command, h.path.split("?", 1)[0], resp.status))
        h.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in _HOP_BY_HOP | {"content-length"}:
                h.send_header(key, value)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)
