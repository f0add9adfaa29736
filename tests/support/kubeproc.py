"""The Kubernetes API test server in its own process (for the benchmark).

In-process, the test server shares the caller's GIL: at c = 16 its TLS, JSON and deep copies
competed with everything else in the benchmark process, so the benchmark measured the test
server as much as the syncer (docs/scaling.md). A real API server is a separate, multi-core Go
process; this wrapper gets closer to that by giving the test server a process of its own.

Method calls are forwarded over a pipe and must take and return picklable values.
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.connection import Connection
from typing import Any

import trustme

from tests.support.kubeapi import KubeAPIServer


def _serve(conn: Connection, ca: trustme.CA, latency: float, cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    server = KubeAPIServer(ca, latency=latency)
    server.start()
    conn.send((server.url, server.port))
    while True:
        name, args, kwargs = conn.recv()
        if name == "stop":
            server.stop()
            conn.send(None)
            return
        try:
            target: Any = server
            for part in name.split("."):  # "watches.end": the server's parts too
                target = getattr(target, part)
            conn.send((True, target(*args, **kwargs)))
        except Exception as exc:  # noqa: BLE001 - handed back to the caller
            conn.send((False, repr(exc)))


class KubeAPIProcess:
    """A ``KubeAPIServer`` running in a forked child; methods are called remotely."""

    def __init__(self, ca: trustme.CA, latency: float = 0.0, cpus: set[int] | None = None) -> None:
        self.ca_pem: bytes = ca.cert_pem.bytes()
        self._conn, child = multiprocessing.get_context("fork").Pipe()
        self._proc = multiprocessing.get_context("fork").Process(
            target=_serve, args=(child, ca, latency, cpus), daemon=True)
        self._proc.start()
        self.url, self.port = self._conn.recv()

    @property
    def pid(self) -> int:
        return int(self._proc.pid or 0)

    @property
    def alive(self) -> bool:
        return self._proc.is_alive()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self._conn.send((name, args, kwargs))
            ok, value = self._conn.recv()
            if not ok:
                raise RuntimeError(f"KubeAPIServer.{name} failed in the server process: {value}")
            return value

        return call

    def call(self, dotted: str, *args: Any, **kwargs: Any) -> Any:
        """A method of a part of the server, e.g. ``call("watches.end")`` (open watches end as at
        timeoutSeconds) or ``call("watches.open_count", "secrets")``."""
        return getattr(self, dotted)(*args, **kwargs)

    def stop(self) -> None:
        if self._proc.is_alive():
            self._conn.send(("stop", (), {}))
            self._conn.recv()
        self._proc.join(10)
