"""A small, strict Kubernetes API test server (there is no kube-apiserver on these machines).

It speaks HTTPS/JSON like a real API server for the handful of resources the syncer touches
(namespaces, secrets, serviceaccounts, core/v1 and events.k8s.io/v1 events, leases, token and
access reviews) and is strict where real clusters are strict: resourceVersion preconditions,
AlreadyExists, missing namespaces, Secret validation (base64, dockerconfigjson, type immutability,
the 1 MiB limit), RBAC per bearer token (list/watch bound to ``resourceNames`` through
``fieldSelector=metadata.name``), etcd-style paging (``limit`` before selectors, 410 for a
compacted continue token) and the PATCH content types. Error bodies are kube ``Status`` objects
and never echo secret contents.

Tests reach into the state directly (``put_secret``, ``get_secret`` ...), observe every request
(``requests``, ``count``, ``writes``) and inject faults (``add_fault``, ``before``).

Layout: this module is the HTTP front (recording, faults, routing, authorisation); the pieces are
``kubeapi_store`` (objects and resourceVersions: ``ObjectStore``), ``kubeapi_crud`` (the verbs),
``kubeapi_auth`` (tokens and the review APIs), ``kubeapi_rbac``, ``kubeapi_faults`` (request records,
injected faults and hooks), ``kubeapi_discovery`` (version and discovery), and the pure helpers
``kubeapi_patch``, ``kubeapi_select``, ``kubeapi_validate``, ``kubeapi_status`` and
``kubeapi_resources``; ``kubeapi_watch`` serves watches (``watches``: drop, end, bookmark, inject;
``compact`` expires old resourceVersions); ``kubeapi_http`` holds the socket plumbing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import ssl
import struct
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import trustme
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.kubeapi_auth import Authenticator, Identity, Reviews
from tests.support.kubeapi_crud import ResourceVerbs
from tests.support.kubeapi_discovery import non_resource
from tests.support.kubeapi_faults import Faults, RequestRecord, fault_error
from tests.support.kubeapi_http import KubeHTTPServer, Request, RequestHandler, parse_request, read_body
from tests.support.kubeapi_rbac import Attributes, forbidden, request_name
from tests.support.kubeapi_rbac import allowed as rbac_allowed
from tests.support.kubeapi_resources import JSON, VIRTUAL
from tests.support.kubeapi_status import KubeError, bad_request, status_details
from tests.support.kubeapi_store import ObjectStore
from tests.support.kubeapi_watch import WatchHub, WatchStream

MAX_BODY_BYTES = 3 * 1024 * 1024

# --------------------------------------------------------------------------------------------
# the server


class KubeAPIServer:
    """A strict in-process Kubernetes API server over HTTPS for tests: HTTP in front of an
    ObjectStore (objects and versions), an Authenticator (tokens), ResourceVerbs and Reviews."""

    def __init__(self, ca: trustme.CA, latency: float = 0.0) -> None:
        self.ca = ca
        self.latency = latency
        self.ca_pem: bytes = ca.cert_pem.bytes()
        self.requests: list[RequestRecord] = []
        #: tracebacks of bugs in this server (answered as 500); the ``kube`` fixture asserts none
        self.internal_errors: list[str] = []
        self.store = ObjectStore()
        self.auth = Authenticator(self.store)
        self.verbs = ResourceVerbs(self.store)
        self.reviews = Reviews(self.auth, self.verbs)
        #: open watches: ``watches.drop()``, ``end()``, ``bookmark()``, ``inject()`` (kubeapi_watch)
        self.watches = WatchHub(self.store)
        self.compact = self.store.compact
        self._lock = self.store.lock
        self.faults = Faults(self._lock)
        self.add_fault = self.faults.add_fault
        self.before = self.faults.before
        self.clear_faults = self.faults.clear
        self._server: KubeHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.port = 0
        # direct state access for tests (bypasses auth and validation): see ObjectStore
        self.put_object = self.store.put_object
        self.get_object = self.store.get_object
        self.delete_object = self.store.delete_object
        self.list_objects = self.store.list_objects
        self.add_namespace = self.store.add_namespace
        self.remove_namespace = self.store.remove_namespace
        self.put_secret = self.store.put_secret
        self.secret_data = self.store.secret_data
        self.add_service_account = self.store.add_service_account
        self.events = self.store.events
        # tokens: see Authenticator
        self.add_token = self.auth.add_token
        self.set_rules = self.auth.set_rules
        self.remove_token = self.auth.remove_token
        self.issue_service_account_token = self.auth.issue_service_account_token

    def get_secret(self, namespace: str, name: str) -> JSON | None:
        """The stored Secret (data values are base64 strings), a deep copy, or None."""
        return self.store.get_object("secrets", namespace, name)

    def delete_secret(self, namespace: str, name: str) -> None:
        """Remove a Secret if present."""
        self.store.delete_object("secrets", namespace, name)

    @property
    def signing_key(self) -> rsa.RSAPrivateKey:
        """The service-account token signing key."""
        return self.auth.signing_key

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on 127.0.0.1 (random port) and serve in a background thread."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
        self._server = KubeHTTPServer(self, ctx)
        self.port = int(self._server.server_address[1])
        self.url = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and hang up open connections."""
        if self._server is None:
            return
        self.watches.close()
        self._server.shutdown()
        self._server.server_close()
        self._server.close_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> KubeAPIServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- observation -----------------------------------------------------------------------

    def reset_requests(self) -> None:
        """Forget recorded requests."""
        with self._lock:
            self.requests.clear()

    def count(
        self,
        verb: str | None = None,
        resource: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
    ) -> int:
        """How many recorded requests match all the given attributes."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (verb is None or r.verb == verb)
                and (resource is None or r.resource == resource)
                and (namespace is None or r.namespace == namespace)
                and (name is None or r.name == name)
            )

    def writes(self, resource: str = "secrets") -> int:
        """Successful (2xx), non-dry-run create/update/patch/delete requests on a resource."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if r.resource == resource
                and r.verb in ("create", "update", "patch", "delete")
                and 200 <= r.status < 300
                and not r.dry_run
            )

    # ---- fault injection: see Faults ------------------------------------------------------

    # ---- kubeconfig ------------------------------------------------------------------------

    def write_kubeconfig(
        self, path: str | Path, token: str, namespace: str = "default", context: str = "test"
    ) -> str:
        """Write a kubeconfig (JSON is valid YAML) for this server and token; returns the path."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": context,
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": base64.b64encode(self.ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": context, "user": {"token": token}}],
            "contexts": [
                {
                    "name": context,
                    "context": {"cluster": context, "user": context, "namespace": namespace},
                }
            ],
            "current-context": context,
        }
        out = Path(path)
        out.write_text(json.dumps(config, indent=2))
        out.chmod(0o600)
        return str(out)

    # ---- request handling ------------------------------------------------------------------

    def _handle(self, h: RequestHandler) -> None:
        try:
            body = read_body(h)
        except (OSError, ValueError):
            h.close_connection = True
            return
        req = parse_request(h.command, h.path, h.headers, body)
        auth = str(h.headers.get("Authorization") or "")
        ident: Identity | None = None
        if auth[:7].lower() == "bearer ":
            ident = self.auth.identity(auth[7:].strip())
        record = RequestRecord(
            method=req.method,
            path=req.path,
            query=dict(req.query),
            verb=req.verb,
            api_group=req.group,
            resource=req.resource,
            namespace=req.namespace,
            name=req.name,
            subresource=req.subresource,
            user=ident.user if ident else "",
            content_type=req.content_type,
            dry_run=req.dry_run,
        )
        with self._lock:
            self.requests.append(record)
        if self.latency:
            time.sleep(self.latency)

        status, payload, headers = 500, None, {}
        try:
            for fault in self.faults.take(record, hooks=False):
                if fault.delay:
                    time.sleep(fault.delay)
                if fault.reset:
                    record.status = 0
                    self._reset(h)
                    return
                if fault.status is not None:
                    raise fault_error(fault, req)
            for hook in self.faults.take(record, hooks=True):
                hook.action()
            if ident is None and not self._public(req):
                raise KubeError(401, "Unauthorized", "Unauthorized")
            if len(body) > MAX_BODY_BYTES:
                raise KubeError(413, "RequestEntityTooLarge", "request entity too large")
            status, payload = self._route(req, ident)
        except KubeError as err:
            status, payload, headers = err.code, err.status(), err.headers
        except Exception:  # a bug in the test server: answer 500, never leak request contents
            self.internal_errors.append(traceback.format_exc())
            status = 500
            payload = KubeError(500, "InternalError", "Internal error occurred: test server failure").status()
        if record.name is None and req.verb == "create" and req.name:
            record.name = req.name  # like kube audit's objectRef: the created object's name
        record.status = status
        if isinstance(payload, WatchStream):
            self.watches.serve(payload, h)
            return
        self._send(h, status, payload, headers)

    @staticmethod
    def _public(req: Request) -> bool:
        return not req.is_resource and req.path.rstrip("/") in (
            "/version",
            "/healthz",
            "/livez",
            "/readyz",
        )

    @staticmethod
    def _reset(h: RequestHandler) -> None:
        h.close_connection = True
        conn = h.connection
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            conn.close()

    @staticmethod
    def _send(h: RequestHandler, status: int, payload: Any, headers: dict[str, str]) -> None:
        data = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.send_header("Audit-Id", str(uuid.uuid4()))
            h.send_header("Cache-Control", "no-cache, private")
            for key, value in headers.items():
                h.send_header(key, value)
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(data)
        except OSError:
            h.close_connection = True

    def _route(self, req: Request, ident: Identity | None) -> tuple[int, Any]:
        if not req.is_resource:
            return non_resource(req, self.port)
        assert ident is not None
        if req.unknown or req.rt is None:
            raise KubeError(404, "NotFound", "the server could not find the requested resource")
        rt = req.rt
        if (
            req.subresource
            and not (rt.plural == "serviceaccounts" and req.subresource == "token")
            and not (rt.plural == "namespaces" and req.subresource in ("status", "finalize"))
        ):
            raise KubeError(404, "NotFound", "the server could not find the requested resource")
        if rt.plural == "selfsubjectaccessreviews" or rt.plural == "selfsubjectreviews":
            pass  # every authenticated user may ask about themselves (system:basic-user)
        else:
            name = request_name(req.verb, req.name, req.query)  # list/watch: the fieldSelector's name
            attrs = Attributes(req.verb, rt.group, rt.plural, req.subresource, req.namespace, name)
            if not rbac_allowed(ident.rules, attrs):
                raise forbidden(ident.user, attrs)
        if (
            req.verb not in rt.verbs
            or (rt.namespaced and req.namespace is None and req.verb not in ("list", "watch"))
            or (not rt.namespaced and rt.plural != "namespaces" and req.namespace is not None)
        ):
            raise KubeError(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
                status_details(rt, req.name),
            )
        dry = req.query.get("dryRun")
        if dry is not None and dry != "All":
            raise bad_request(f'dryRun: Unsupported value: "{dry}": supported values: "All"')
        if rt.plural in VIRTUAL:
            return self.reviews.review(req, ident)
        if req.subresource == "token":
            return self.reviews.token_request(req)
        if req.verb == "watch":
            return 200, self.watches.open(req, self.verbs.list_missing_namespace_404)
        handler = {
            "get": self.verbs.get,
            "list": self.verbs.list,
            "create": self.verbs.create,
            "update": self.verbs.update,
            "patch": self.verbs.patch,
            "delete": self.verbs.delete,
        }.get(req.verb)
        if handler is None:
            raise KubeError(
                405,
                "MethodNotAllowed",
                f"{req.verb} is not supported by this test server",
                status_details(rt, req.name),
            )
        return handler(req)


def iter_records(records: Iterable[RequestRecord], **attrs: Any) -> Iterator[RequestRecord]:
    """Records whose attributes equal all of ``attrs`` (e.g. ``verb="patch"``)."""
    for rec in records:
        if all(getattr(rec, k) == v for k, v in attrs.items()):
            yield rec
