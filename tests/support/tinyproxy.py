"""A real CONNECT proxy for tests: Debian's tinyproxy, one process per instance.

``requests()`` reads tinyproxy's own log, which records the request line of everything a client
sends it (``CONNECT host:port HTTP/1.1``, or ``GET https://...`` for a forwarded request), so a
test sees exactly what crossed the proxy.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

from tests.support.net import free_port

TINYPROXY = "/usr/bin/tinyproxy"
_REQUEST = re.compile(r"Request \(file descriptor \d+\): (.*)$")


class TinyProxy:
    """tinyproxy on 127.0.0.1:port. ``connect_ports`` are the ports CONNECT may reach (tinyproxy
    refuses others with 403); ``auth`` is an optional (user, password) it requires."""

    def __init__(self, workdir: Path, connect_ports: list[int],
                 auth: tuple[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log_file = workdir / "tinyproxy.log"
        lines = [f"Port {self.port}", "Listen 127.0.0.1", "Timeout 30", "MaxClients 50",
                 f'LogFile "{self.log_file}"', "LogLevel Info",
                 f'PidFile "{workdir / "tinyproxy.pid"}"']
        lines += [f"ConnectPort {port}" for port in connect_ports]
        if auth:
            lines.append(f"BasicAuth {auth[0]} {auth[1]}")
        self.config = workdir / "tinyproxy.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TinyProxy:
        self._proc = subprocess.Popen([TINYPROXY, "-d", "-c", str(self.config)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"tinyproxy exited with {self._proc.returncode}") from None
                time.sleep(0.05)
        raise RuntimeError("tinyproxy did not start listening")

    def requests(self) -> list[str]:
        """Every request line the proxy received, in order."""
        if not self.log_file.exists():
            return []
        return [m.group(1).strip() for line in self.log_file.read_text().splitlines()
                if (m := _REQUEST.search(line))]

    def log_text(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> TinyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
