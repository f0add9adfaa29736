"""Real registry servers for tests.

* ``Registry`` runs Debian's ``docker-registry`` (CNCF distribution 2.8) with htpasswd, token or
  no auth, over TLS or plain HTTP.
* ``TokenServer`` is a distribution-spec token service (RS256 JWTs with an ``x5c`` header) that,
  like Harbor and Quay, hands out *anonymous* tokens to requests without credentials.
* ``FakeServer`` is a scriptable HTTP(S) server for the edge cases a real registry cannot
  produce (odd challenges, 429, 5xx, redirects, slow answers).

Nothing here stores a password or a raw Authorization header in its request log.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import fnmatch
import http.client
import json
import os
import signal
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import bcrypt
import jwt
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.support.net import address_in_use, free_port, wait_for_port

REGISTRY_BIN = "/usr/bin/docker-registry"
SERVER_NAMES = ("127.0.0.1", "localhost")


# --------------------------------------------------------------------------- HTTP plumbing


@dataclass
class Incoming:
    """A request as the responder sees it (holds the raw Authorization; never stored)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    authorization: str = field(repr=False, default="")

    @property
    def basic(self) -> tuple[str, str] | None:
        """(username, password) from a Basic header, else None."""
        scheme, _, value = self.authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (user, password) if sep else None

    @property
    def bearer(self) -> str | None:
        scheme, _, value = self.authorization.partition(" ")
        return value if scheme.lower() == "bearer" else None


@dataclass(frozen=True)
class Recorded:
    """What a test server remembers of a request: no password, no token."""

    method: str
    path: str
    query: dict[str, list[str]]
    host: str
    auth_scheme: str | None
    """Lower-cased scheme of the Authorization header, or None when absent."""
    username: str | None
    """Username of a Basic header (not the password)."""

    @property
    def authorized(self) -> bool:
        return self.auth_scheme is not None


@dataclass
class Reply:
    """What a fake server answers."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    delay: float = 0.0
    """Seconds to wait before answering (for timeout tests)."""

    @classmethod
    def json(cls, status: int, data: Any, *headers: tuple[str, str]) -> Reply:
        return cls(status, [("Content-Type", "application/json"), *headers],
                   json.dumps(data).encode())


Responder = Callable[[Incoming], Reply]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, port: int, context: ssl.SSLContext | None, owner: _HTTPBase) -> None:
        self.context = context
        self.owner = owner
        super().__init__(("127.0.0.1", port), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS handshake in the worker thread, so a client that fails it cannot stall the server.
        if self.context is not None:
            try:
                request.settimeout(5)
                request = self.context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up (timeouts) are expected in these tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else ~40 ms per response (Nagle + delayed ACK)
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        parts = urlsplit(self.path)
        incoming = Incoming(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            authorization=self.headers.get("Authorization", ""),
        )
        owner = self.server.owner
        owner._record(incoming)
        reply = owner.respond(incoming)
        if reply.delay:
            time.sleep(reply.delay)
        try:
            self.send_response(reply.status)
            for name, value in reply.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)
        except OSError:
            self.close_connection = True

    do_GET = do_POST = do_HEAD = _serve


class _HTTPBase:
    """A threaded HTTP(S) server on 127.0.0.1 that records requests."""

    def __init__(self, ca: trustme.CA | None) -> None:
        context = None
        if ca is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert(*SERVER_NAMES).configure_cert(context)
        self.tls = context is not None
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._server = _Server(0, context, self)  # the kernel's port: no window for a clash
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the auths key."""
        return f"127.0.0.1:{self.port}"

    def url_for(self, hostname: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{hostname}:{self.port}"

    @property
    def url(self) -> str:
        return self.url_for()

    def _record(self, incoming: Incoming) -> None:
        basic = incoming.basic
        scheme = incoming.authorization.partition(" ")[0].lower() or None
        with self._lock:
            self.requests.append(Recorded(
                incoming.method, incoming.path, incoming.query, incoming.headers.get("host", ""),
                scheme, basic[0] if basic else None,
            ))

    def respond(self, incoming: Incoming) -> Reply:
        raise NotImplementedError

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class FakeServer(_HTTPBase):
    """A scriptable server: ``responder(incoming) -> Reply`` decides every answer."""

    def __init__(self, ca: trustme.CA | None, responder: Responder | None = None) -> None:
        self.responder: Responder = responder or (lambda _req: Reply(404))
        super().__init__(ca)

    def respond(self, incoming: Incoming) -> Reply:
        return self.responder(incoming)


# --------------------------------------------------------------------------- token server


@dataclass(frozen=True)
class IssuedToken:
    token: str
    subject: str
    valid: bool
    """False for tokens made to be refused (bogus ``token`` field, wrong audience)."""


class TokenServer(_HTTPBase):
    """A distribution token service (https://distribution.github.io/distribution/spec/auth/jwt/).

    Knobs (all live): ``users``; ``shape`` of the JSON answer; ``reject_status`` (401, or 403
    like ghcr's DENIED); ``anonymous`` tokens for requests without credentials; ``tokens_valid``
    (False issues tokens for another audience, which the registry refuses).
    """

    SHAPES = ("token", "access_token", "both", "none", "not_json")

    def __init__(self, ca: trustme.CA, users: Mapping[str, str] | None = None,
                 service: str = "test-registry", issuer: str = "test-token-issuer") -> None:
        self.service = service
        self.issuer = issuer
        self.users: dict[str, str] = dict(users or {})
        self.shape = "token"
        """``token``/``access_token`` alone; ``both`` (access_token valid, token bogus, which
        proves the client prefers access_token); ``none`` (no token field); ``not_json``."""
        self.reject_status = 401
        self.anonymous = True
        self.tokens_valid = True
        self.acl: dict[str, list[tuple[str, frozenset[str]]]] = {}
        """Per-repository grants for scoped requests, as Harbor and Quay keep them: subject
        (``""`` = anonymous, and so everyone) -> [(repository glob, actions)]. Nobody listed gets
        no access."""
        self.issued: list[IssuedToken] = []
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.signing_cert = _self_signed(self._key, "test token signer")
        super().__init__(ca)

    def reset(self, users: Mapping[str, str]) -> None:
        with self._lock:
            self.users = dict(users)
            self.shape = "token"
            self.reject_status = 401
            self.anonymous = True
            self.tokens_valid = True
            self.acl = {}
            self.issued.clear()
            self.requests.clear()

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def cert_pem(self) -> bytes:
        return self.signing_cert.public_bytes(serialization.Encoding.PEM)

    def subject_of(self, token: str | None) -> str | None:
        """The subject a valid issued token stands for ('' when anonymous), else None."""
        with self._lock:
            for issued in self.issued:
                if issued.token == token and issued.valid:
                    return issued.subject
        return None

    def grant(self, subject: str, repository: str, *actions: str) -> None:
        """Let ``subject`` ("" = anonymous) do ``actions`` on repositories matching the glob."""
        with self._lock:
            self.acl.setdefault(subject, []).append((repository, frozenset(actions)))

    def _access(self, subject: str, scopes: list[str]) -> list[dict[str, Any]]:
        """The granted part of the requested ``repository:NAME:ACTIONS`` scopes."""
        with self._lock:
            # What anonymous users may do (a public repository), every user may do, as in Harbor.
            rules = self.acl.get(subject, []) + (self.acl.get("", []) if subject else [])
        access = []
        for scope in " ".join(scopes).split():
            kind, _, rest = scope.partition(":")
            name, _, wanted = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            allowed: set[str] = set()
            for pattern, actions in rules:
                if fnmatch.fnmatchcase(name, pattern):
                    allowed |= actions
            granted = [a for a in wanted.split(",") if a in allowed]
            if granted:
                access.append({"type": "repository", "name": name, "actions": granted})
        return access

    def make_token(self, subject: str, audience: str | None = None,
                   access: list[dict[str, Any]] | None = None) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer, "sub": subject, "aud": audience or self.service,
            "exp": now + 300, "nbf": now - 5, "iat": now, "jti": uuid.uuid4().hex,
            "access": access or [],
        }
        der = self.signing_cert.public_bytes(serialization.Encoding.DER)
        return jwt.encode(claims, self._key, algorithm="RS256",
                          headers={"x5c": [base64.b64encode(der).decode()]})

    def respond(self, incoming: Incoming) -> Reply:
        basic = incoming.basic
        if incoming.authorization and basic is None:
            return self._deny()
        if basic is None:
            if not self.anonymous:
                return self._deny()
            subject = ""  # anonymous: the trap a probe that forgets credentials falls into
        else:
            user, password = basic
            with self._lock:
                known = self.users.get(user)
            if known is None or known != password:
                return self._deny()
            subject = user
        if self.shape == "not_json":
            return Reply(200, [("Content-Type", "text/html")], b"<html>login</html>")
        audience = None if self.tokens_valid else "some-other-service"
        token = self.make_token(subject, audience, self._access(subject, incoming.query.get("scope", [])))
        body: dict[str, Any] = {"expires_in": 300, "issued_at": _now_iso()}
        issued = [IssuedToken(token, subject, self.tokens_valid)]
        if self.shape in ("token", "access_token"):
            body[self.shape] = token
        elif self.shape == "both":
            bogus = "bogus-" + uuid.uuid4().hex
            body.update(access_token=token, token=bogus)
            issued.append(IssuedToken(bogus, subject, False))
        with self._lock:
            self.issued.extend(issued)
        return Reply.json(200, body)

    def _deny(self) -> Reply:
        code = "DENIED" if self.reject_status == 403 else "UNAUTHORIZED"
        return Reply.json(self.reject_status,
                          {"errors": [{"code": code, "message": "authentication failed"}]},
                          ("WWW-Authenticate", 'Basic realm="token"'))


def _self_signed(key: rsa.RSAPrivateKey, common_name: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- real registry


def htpasswd_line(user: str, password: str) -> str:
    # Low bcrypt cost: the registry checks it on every request and tests want speed.
    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}"


class Registry:
    """``docker-registry serve`` on a free 127.0.0.1 port.

    ``auth`` is ``"htpasswd"`` (``users`` dict), ``"token"`` (needs ``token_server``) or
    ``"none"``. TLS when ``ca`` is given (server cert for 127.0.0.1 and localhost).
    """

    def __init__(self, workdir: Path, *, auth: str = "none", ca: trustme.CA | None = None,
                 users: Mapping[str, str] | None = None,
                 token_server: TokenServer | None = None) -> None:
        if auth not in ("htpasswd", "token", "none"):
            raise ValueError(f"unknown auth mode {auth!r}")
        if auth == "token" and token_server is None:
            raise ValueError("token auth needs a token_server")
        self.workdir = workdir
        self.auth = auth
        self.ca = ca
        self.users: dict[str, str] = dict(users or {})
        self.token_server = token_server
        self.port = free_port()
        self.log_path = workdir / "registry.log"
        self._htpasswd = workdir / "htpasswd"
        self._mtime = time.time()
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses

    @property
    def tls(self) -> bool:
        return self.ca is not None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the auths key a test probes."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    # -- users

    def set_password(self, user: str, password: str) -> None:
        """Add or change a user; the registry re-reads the file on its next request."""
        self.users[user] = password
        self._write_htpasswd()

    def set_users(self, users: Mapping[str, str]) -> None:
        self.users = dict(users)
        self._write_htpasswd()

    def _write_htpasswd(self) -> None:
        lines = "".join(htpasswd_line(u, p) + "\n" for u, p in self.users.items())
        self._htpasswd.write_text(lines)
        # distribution reloads when the mtime differs; move it forward a full second each time
        # so coarse file-system timestamps cannot hide a rewrite.
        self._mtime = max(self._mtime + 1, time.time())
        os.utime(self._htpasswd, (self._mtime, self._mtime))

    # -- lifecycle

    def _config(self) -> dict[str, Any]:
        storage = self.workdir / "storage"
        storage.mkdir(exist_ok=True)
        http_cfg: dict[str, Any] = {"addr": self.host, "secret": uuid.uuid4().hex,
                                    "headers": {"X-Content-Type-Options": ["nosniff"]}}
        if self.ca is not None:
            cert = self.ca.issue_cert(*SERVER_NAMES)
            cert_path, key_path = self.workdir / "server.pem", self.workdir / "server.key"
            cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
            cert.private_key_pem.write_to_path(str(key_path))
            http_cfg["tls"] = {"certificate": str(cert_path), "key": str(key_path)}
        config: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "error", "formatter": "text"},  # access log stays on: we count it
            "storage": {"filesystem": {"rootdirectory": str(storage)}},
            "http": http_cfg,
        }
        if self.auth == "htpasswd":
            self._write_htpasswd()
            config["auth"] = {"htpasswd": {"realm": "test-registry", "path": str(self._htpasswd)}}
        elif self.auth == "token":
            assert self.token_server is not None
            bundle = self.workdir / "token-signer.pem"
            bundle.write_bytes(self.token_server.cert_pem())
            config["auth"] = {"token": {
                "realm": self.token_server.realm, "service": self.token_server.service,
                "issuer": self.token_server.issuer, "rootcertbundle": str(bundle),
            }}
        return config

    def start(self) -> Registry:
        """Start and wait until /v2/ answers; a port another process took meanwhile (the
        registry exits with "address already in use") is replaced by a new one, up to 5 times."""
        for attempt in range(5):
            config_path = self.workdir / "config.yml"
            config_path.write_text(json.dumps(self._config(), indent=2))  # JSON is valid YAML
            log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            with open(self.log_path, "ab") as log_file:
                self._proc = subprocess.Popen(
                    [REGISTRY_BIN, "serve", str(config_path)],
                    stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )
            try:
                self._wait_ready()
                return self
            except BaseException:
                exited = self._proc is not None and self._proc.poll() is not None
                self.stop()
                with open(self.log_path, "rb") as log:
                    log.seek(log_start)
                    clash = address_in_use(log.read().decode(errors="replace"))
                if not (exited and clash) or attempt == 4:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        wait_for_port(self.port, timeout)
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log_path.read_text()[-2000:]}")
            try:
                conn: http.client.HTTPConnection
                if self.ca is not None:
                    context = ssl.create_default_context()
                    self.ca.configure_trust(context)
                    conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=2,
                                                       context=context)
                else:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/v2/", headers={"User-Agent": "registry-readiness"})
                status = conn.getresponse().status
                conn.close()
                if status in (200, 401):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"docker-registry on {self.host} did not serve /v2/")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observation

    def v2_requests(self) -> int:
        """GET /v2/ requests so far from clients other than our readiness check (access log)."""
        if not self.log_path.exists():
            return 0
        return sum(1 for line in self.log_path.read_text(errors="replace").splitlines()
                   if '"GET /v2/ ' in line and "registry-readiness" not in line)

    def manifest_heads(self, repository: str) -> int:
        """HEAD requests for manifests of ``repository`` so far (access log), with or without auth."""
        if not self.log_path.exists():
            return 0
        needle = f'"HEAD /v2/{repository}/manifests/'
        return sum(needle in line for line in self.log_path.read_text(errors="replace").splitlines())
