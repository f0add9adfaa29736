"""A small TCP fault proxy: forwards to a real server, or refuses, resets, delays, answers an HTTP
status, or cuts a response in the middle, on demand."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress

from tests.support.net import free_port


class FaultProxy:
    """127.0.0.1:port -> target. ``mode``: "pass", "refuse" (close at once), "reset" (RST),
    "hang" (accept and never answer), "status" (read the request, answer ``status`` with
    ``headers``/``body`` and close) or "cut" (forward, then RST after ``cut_after`` response
    bytes). ``delay`` adds latency before forwarding. ``chooser``, when set, picks the mode per
    connection (random faults in the soak)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.mode = "pass"
        self.delay = 0.0
        self.connections = 0
        self.status = 503
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.cut_after = 16
        self.chooser: Callable[[], str] | None = None
        self.faults = 0
        """Connections that got a mode other than "pass"."""
        self.swallow_idle = 0.0
        """When > 0: a request arriving on a forwarded connection that moved no data for this
        many seconds is read, never forwarded, and the connection closed. That is Vault's
        ``http_idle_timeout`` closing a keep-alive connection just as the client reuses it."""
        self.swallowed = 0
        """Requests dropped by ``swallow_idle``."""
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._open: list[socket.socket] = []
        self._active: dict[socket.socket, float] = {}
        """Last time data moved on each forwarded client connection (for ``drop_idle``)."""

    def set_mode(self, mode: str) -> None:
        """Switch behaviour; established connections are cut so clients cannot keep using them."""
        self.mode = mode
        self.chooser = None
        if mode != "pass":
            self.drop_connections()

    def drop_connections(self) -> None:
        open_now, self._open = self._open, []
        for conn in open_now:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with suppress(OSError):
                conn.close()

    def drop_idle(self, idle: float) -> None:
        """Cut forwarded connections that moved no data for ``idle`` seconds (between requests),
        so the next request opens a new connection and meets the chooser again."""
        now = time.monotonic()
        for conn, last in list(self._active.items()):
            with suppress(OSError, ValueError):
                if select.select([conn], [], [], 0)[0]:
                    continue  # the client is sending right now: not idle after all
            if now - last >= idle:
                self._active.pop(conn, None)
                with suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def answer(self, status: int, body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> None:
        """Answer every request with ``status`` (e.g. 503 sealed, 429 with Retry-After)."""
        self.status, self.body, self.headers = status, body, list(headers or [])
        self.set_mode("status")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()
        self.drop_connections()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        mode = self.chooser() if self.chooser else self.mode
        if mode != "pass":
            self.faults += 1
        if mode == "refuse":
            client.close()
            return
        if mode == "reset":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            client.close()
            return
        if mode == "hang":
            self._open.append(client)
            return
        if mode == "status":
            self._answer(client)
            return
        if self.delay:
            time.sleep(self.delay)
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        if mode == "cut":
            self._cut(client, upstream)
            return
        self._open += [client, upstream]
        self._active[client] = time.monotonic()
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst, client), daemon=True).start()

    def _idle_too_long(self, client: socket.socket) -> bool:
        last = self._active.get(client)
        return bool(self.swallow_idle) and last is not None and (
            time.monotonic() - last > self.swallow_idle)

    def _cut(self, client: socket.socket, upstream: socket.socket) -> None:
        """Forward the client's first send (a request, or a TLS ClientHello), relay ``cut_after``
        bytes of the answer, then RST. One thread owns the socket, so the RST really goes out."""
        with suppress(OSError):
            client.settimeout(5)
            upstream.settimeout(5)
            upstream.sendall(client.recv(65536))
            sent = 0
            while sent < self.cut_after and (data := upstream.recv(self.cut_after - sent)):
                client.sendall(data)
                sent += len(data)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        for s in (client, upstream):
            with suppress(OSError):
                s.close()

    def _answer(self, client: socket.socket) -> None:
        """Read one request head (and its body), answer the configured status, close."""
        client.settimeout(5)
        data = b""
        with suppress(OSError):
            while b"\r\n\r\n" not in data:
                chunk = client.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip() or 0)
            while len(rest) < length and (chunk := client.recv(65536)):
                rest += chunk
            reason = {403: "Forbidden", 429: "Too Many Requests", 500: "Internal Server Error",
                      503: "Service Unavailable"}.get(self.status, "Status")
            lines = [f"HTTP/1.1 {self.status} {reason}", f"Content-Length: {len(self.body)}",
                     "Connection: close"]
            if self.body[:1] in (b"{", b"["):
                lines.append("Content-Type: application/json")
            lines += [f"{k}: {v}" for k, v in self.headers]
            client.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + self.body)
        with suppress(OSError):
            client.close()

    def _pump(self, src: socket.socket, dst: socket.socket, client: socket.socket) -> None:
        with suppress(OSError):
            while data := src.recv(65536):
                if src is client and self._idle_too_long(client):
                    self.swallowed += 1
                    break
                if client in self._active:
                    self._active[client] = time.monotonic()
                dst.sendall(data)
        self._active.pop(client, None)
        for s in (src, dst):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
