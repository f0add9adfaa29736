"""A hostile HTTPS registry that answers one byte at a time (issue 16 item 1).

``mode``:

* ``"headers"``: every answer's status line and headers are trickled;
* ``"token_body"``: ``/v2/`` sends a normal Bearer challenge naming this server's ``/token``,
  whose 200 headers come at once and whose body is trickled;
* ``"challenge_body"``: ``/v2/`` sends a Basic challenge at once, its 401 body trickled;
* ``"good_basic"``: a well-behaved Basic registry for ``user``/``password``.

A trickle stops when the client is gone; ``ended`` holds the monotonic time of each stop.
``on_byte`` (if set) runs before each trickled byte, i.e. while the client is still waiting, so
a test can see what else has already happened by then.
"""

from __future__ import annotations

import base64
import socket
import ssl
import threading
import time
from collections.abc import Callable
from contextlib import suppress

import trustme

from tests.support.net import free_port

BODY_SIZE = 4096


class SlowServer:
    def __init__(self, ca: trustme.CA, mode: str, interval: float = 0.1,
                 user: str = "", password: str = "") -> None:
        self.mode = mode
        self.interval = interval
        self.credential = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.port = free_port()
        self.ended: list[float] = []
        self.started = threading.Event()
        """Set when the first trickle begins."""
        self.on_byte: Callable[[], None] | None = None
        self.paths: list[str] = []
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(self._context)
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _addr = self._sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        with suppress(OSError, ssl.SSLError):
            raw.settimeout(5)
            conn = self._context.wrap_socket(raw, server_side=True)
            with conn:
                while not self._stop.is_set():
                    head = _read_head(conn)
                    if head is None:
                        return
                    if not self._answer(conn, head):
                        return

    def _answer(self, conn: ssl.SSLSocket, head: str) -> bool:
        """Answer one request; False when the connection is done."""
        path = head.split(" ", 2)[1] if head.count(" ") >= 2 else "/"
        self.paths.append(path)
        authorized = f"Basic {self.credential}" in head
        if self.mode == "headers":
            self._trickle(conn, b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=x\r\n"
                          + b"X-Pad: " + b"a" * BODY_SIZE + b"\r\n\r\n")
            return False
        if self.mode == "token_body" and path.startswith("/token"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % BODY_SIZE)
            self._trickle(conn, b" " * BODY_SIZE)
            return False
        if self.mode == "token_body":
            realm = f"https://127.0.0.1:{self.port}/token"
            conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n"
                         + f'WWW-Authenticate: Bearer realm="{realm}",service="x"\r\n\r\n'.encode())
            return True
        if self.mode == "challenge_body":
            conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=x\r\n"
                         b"Content-Length: %d\r\n\r\n" % BODY_SIZE)
            self._trickle(conn, b"x" * BODY_SIZE)
            return False
        status = b"200 OK" if authorized else b"401 Unauthorized"
        conn.sendall(b"HTTP/1.1 " + status + b"\r\nWWW-Authenticate: Basic realm=x\r\n"
                     b"Docker-Distribution-API-Version: registry/2.0\r\nContent-Length: 2\r\n"
                     b"\r\n{}")
        return True

    def _trickle(self, conn: ssl.SSLSocket, data: bytes) -> None:
        self.started.set()
        try:
            for i in range(len(data)):
                if self._stop.wait(self.interval):
                    break
                if self.on_byte is not None:
                    self.on_byte()
                conn.sendall(data[i : i + 1])
        except OSError:
            pass
        finally:
            self.ended.append(time.monotonic())

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(5)


def _read_head(conn: ssl.SSLSocket) -> str | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        data += chunk
        if len(data) > 65536:
            return None
    return data.decode("latin-1")
