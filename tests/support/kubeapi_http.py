"""HTTP plumbing of the Kubernetes API test server: TLS socket server, handler, request parsing."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.support.kubeapi_resources import BY_PATH, ResourceType

if TYPE_CHECKING:
    from tests.support.kubeapi import KubeAPIServer

# HTTP plumbing


class RequestHandler(BaseHTTPRequestHandler):
    """Hands every request to the KubeAPIServer that owns the HTTP server."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 60
    server: KubeHTTPServer

    def setup(self) -> None:
        """Finish the TLS handshake in this thread (not in the accept loop)."""
        super().setup()
        conn = self.connection
        if isinstance(conn, ssl.SSLSocket):
            try:
                conn.do_handshake()
            except (OSError, ssl.SSLError):
                self.close_connection = True
                raise

    def handle(self) -> None:
        """Serve requests until the connection closes; swallow socket errors quietly."""
        with contextlib.suppress(OSError, ssl.SSLError, ValueError):
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Silenced: requests may carry secrets."""

    def do_GET(self) -> None:  # noqa: N802
        """Dispatch."""
        self.server.kube._handle(self)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET  # noqa: N815


def object_key(req: Request, rt: ResourceType) -> tuple[str, str]:
    """(namespace, name) of the object a request names; namespace "" for cluster-scoped kinds."""
    return (req.namespace or "" if rt.namespaced else "", req.name or "")


class KubeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, kube: KubeAPIServer, ctx: ssl.SSLContext) -> None:
        self.kube = kube
        self.ssl_ctx = ctx
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), RequestHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        tls = self.ssl_ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self.sockets_lock:
            self.open_sockets.add(tls)
        return tls, addr

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a client hanging up mid-request is normal in fault tests."""

    def close_all(self) -> None:
        """Hang up every open keep-alive connection."""
        with self.sockets_lock:
            socks = list(self.open_sockets)
            self.open_sockets.clear()
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Any
    body: bytes
    verb: str = ""
    group: str = ""
    version: str = ""
    resource: str = ""
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    rt: ResourceType | None = None
    is_resource: bool = False
    unknown: bool = False

    @property
    def content_type(self) -> str:
        return str(self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    @property
    def dry_run(self) -> bool:
        return self.query.get("dryRun") == "All"


def parse_request(method: str, target: str, headers: Any, body: bytes) -> Request:
    split = urlsplit(target)
    query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
    path = split.path
    req = Request(method, path, query, headers, body)
    parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
    rest: list[str]
    if parts[:1] == ["api"] and len(parts) >= 3:
        req.group, req.version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        req.group, req.version, rest = parts[1], parts[2], parts[3:]
    else:
        req.verb = method.lower()
        return req
    req.is_resource = True
    watch = False
    if rest[0] == "watch":
        watch, rest = True, rest[1:]
    if not rest:
        req.unknown = True
        return req
    if (
        rest[0] == "namespaces"
        and len(rest) >= 3
        and not (len(rest) == 3 and rest[2] in ("status", "finalize"))
    ):
        req.namespace, req.resource = rest[1], rest[2]
        tail = rest[3:]
    else:
        req.resource, tail = rest[0], rest[1:]
    if len(tail) > 2:
        req.unknown = True
    req.name = tail[0] if tail else None
    req.subresource = tail[1] if len(tail) > 1 else None
    if req.resource == "namespaces":
        req.namespace = req.name
    req.rt = BY_PATH.get((req.group, req.version, req.resource))
    if req.rt is None:
        req.unknown = True
    if query.get("watch") in ("true", "1"):
        watch = True
    req.verb = {
        "GET": "watch" if watch else ("get" if req.name else "list"),
        "HEAD": "get",
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if req.name else "deletecollection",
    }.get(method, method.lower())
    return req


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                handler.rfile.readline()
                break
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
        return b"".join(chunks)
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""
