"""Kubernetes API client: auth that follows a rotating token, JSON requests, errors, paged LISTs.

The client half of the Kubernetes side; the stores built on it (Secrets, ServiceAccounts,
namespaces) are in ``syncer.kube``, Leases in ``syncer.leader``, Events in ``syncer.events``.
Library exceptions stop here and become a KubeError with a kind (forbidden, conflict,
invalid, ...) and the namespace/name concerned. Response bodies are never copied into
messages verbatim: only the Status ``reason`` and a shortened ``message``, which the API
server already redacts for Secrets.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from syncer.config import KubernetesSettings
from syncer.target_errors import TargetError, TargetErrorKind

log = logging.getLogger(__name__)

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class KubeError(TargetError):
    """A failed Kubernetes API request about one object (a secret unless ``what`` says otherwise)."""

    def __init__(self, kind: TargetErrorKind, ref: str, message: str, what: str = "secret") -> None:
        super().__init__(kind, ref, message, what)


class TokenFile:
    """Keeps the client's bearer token equal to a token file's content.

    Projected ServiceAccount tokens rotate (kubelet swaps the file), and the
    client library re-reads them at most once a minute in-cluster and never
    for a kubeconfig ``tokenFile``. Installed as the configuration's
    ``refresh_api_key_hook``, this stats the file before every request and
    re-reads it when it changed; ``reload()`` forces a re-read after a 401.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._token = ""

    def __repr__(self) -> str:
        return f"TokenFile(path={self.path!r})"

    def __call__(self, configuration: k8s.Configuration) -> None:
        with self._lock:
            try:
                st = os.stat(self.path)
            except OSError:
                return  # keep the last token; the API server will say if it is no good
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp != self._stamp:
                self._stamp = stamp
                self._read()
            if self._token:
                configuration.api_key["BearerToken"] = self._token
                configuration.api_key_prefix.pop("BearerToken", None)

    def reload(self) -> bool:
        """Re-read the file now; True if the token changed (a retry may then succeed)."""
        with self._lock:
            before = self._token
            self._read()
            return bool(self._token) and self._token != before

    def _read(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("cannot read the Kubernetes token file %s (%s)", self.path, type(exc).__name__)
            return
        if token:
            self._token = "Bearer " + token


def _kubeconfig_token_file(path: str, context: str, env: Mapping[str, str]) -> str:
    """The ``tokenFile`` of the kubeconfig user in use, or "" (then the token is static)."""
    import yaml  # a dependency of the kubernetes client

    if not path:
        path = (env.get("KUBECONFIG") or "").split(os.pathsep)[0] or os.path.expanduser("~/.kube/config")
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        name = context or doc.get("current-context", "")
        ctx = next(c["context"] for c in doc.get("contexts") or [] if c.get("name") == name)
        user = next(u["user"] for u in doc.get("users") or [] if u.get("name") == ctx.get("user"))
        token_file = str(user.get("tokenFile") or "")
    except (OSError, ValueError, yaml.YAMLError, AttributeError, KeyError, TypeError, StopIteration):
        return ""
    if token_file and not os.path.isabs(token_file):
        token_file = os.path.join(os.path.dirname(os.path.abspath(path)), token_file)
    return token_file


def make_api_client(settings: KubernetesSettings, env: Mapping[str, str]) -> k8s.ApiClient:
    """Build the API client: explicit kubeconfig, else in-cluster, else the default kubeconfig.

    When the bearer token comes from a file (in-cluster projected token or a
    kubeconfig ``tokenFile``) the client follows the file (see ``TokenFile``).
    """
    if not settings.kubeconfig and env.get("KUBERNETES_SERVICE_HOST"):
        configuration = k8s.Configuration()
        k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration, try_refresh_token=True
        )
        configuration.refresh_api_key_hook = TokenFile(IN_CLUSTER_TOKEN)  # type: ignore[assignment]
        return k8s.ApiClient(configuration)
    api_client: k8s.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=settings.kubeconfig or None, context=settings.context or None
    )
    token_file = _kubeconfig_token_file(settings.kubeconfig, settings.context, env)
    if token_file:
        api_client.configuration.refresh_api_key_hook = TokenFile(token_file)
    return api_client


def reload_token(api: object) -> bool:
    """After a 401: re-read the token file behind ``api``'s client; True if the token changed."""
    configuration = getattr(getattr(api, "api_client", None), "configuration", None)
    hook = getattr(configuration, "refresh_api_key_hook", None)
    if isinstance(hook, TokenFile) and hook.reload():
        log.info("Kubernetes API answered 401; re-read the rotated token file %s", hook.path)
        return True
    return False


def api_path(resource: str, namespace: str = "", name: str = "", group: str = "") -> str:
    """``/api/v1/namespaces/NS/RESOURCE/NAME`` (or ``/apis/GROUP/v1/...``), segments quoted."""
    parts = ["/api/v1" if not group else f"/apis/{quote(group, safe='')}/v1"]
    if namespace:
        parts += ["namespaces", quote(namespace, safe="")]
    parts.append(resource)
    if name:
        parts.append(quote(name, safe=""))
    return "/".join(parts)


class Api:
    """JSON requests through the official client's transport.

    The ``ApiClient`` brings kubeconfig and in-cluster auth, TLS, proxies, token refresh and the
    connection pool. The generated API classes (``CoreV1Api`` and so on) are not used: since
    kubernetes 37 they validate every call with pydantic, so importing ``CoreV1Api`` alone costs
    about 21 MB of RSS and each call about 0.4 ms more CPU (docs/scaling.md). The syncer needs a
    handful of endpoints and reads raw JSON anyway, so that nothing it does not know gets lost.

    Failures raise what the generated methods raise: ``ApiException`` for a non-2xx answer,
    urllib3/OS errors for transport. Callers turn them into ``KubeError`` with ``translate``.
    """

    def __init__(self, api_client: k8s.ApiClient, timeout: float) -> None:
        self.api_client = api_client
        self.timeout = timeout

    def request(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
                body: Any = None, content_type: str = JSON,
                timeout: float | None = None) -> bytes:
        """Send once; after a 401 caused by a rotated token file, once more. Returns the body."""
        try:
            return self._send(method, path, query, body, content_type, timeout)
        except ApiException as exc:
            if exc.status != 401 or not reload_token(self):
                raise
        return self._send(method, path, query, body, content_type, timeout)

    def close(self) -> None:
        """Close the pooled connections."""
        self.api_client.close()  # type: ignore[no-untyped-call]

    def get(self, path: str, query: Mapping[str, str] | None = None, timeout: float | None = None) -> Any:
        """GET and decode JSON (ValueError if the body is not JSON)."""
        return json.loads(self.request("GET", path, query=query, timeout=timeout))

    def _send(self, method: str, path: str, query: Mapping[str, str] | None, body: Any,
              content_type: str, timeout: float | None) -> bytes:
        headers = {"Accept": JSON}
        if body is not None:
            headers["Content-Type"] = content_type
        # param_serialize adds the auth header (calling the token-refresh hook) and User-Agent.
        method, url, headers, _, _ = self.api_client.param_serialize(
            method, path, query_params=list((query or {}).items()), header_params=headers,
            auth_settings=["BearerToken"])
        resp = self.api_client.call_api(method, url, headers, body,
                                        _request_timeout=self.timeout if timeout is None else timeout)
        data: bytes = resp.read()  # type: ignore[no-untyped-call]
        if not 200 <= resp.status <= 299:
            raise ApiException.from_response(http_resp=resp, body=None, data=None)
        return data


def _status_of(exc: ApiException) -> tuple[str, str]:
    """(reason, message) from a Kubernetes Status body, shortened."""
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("message") or exc.reason or "")
    return str(body.get("reason") or ""), message[:300]


_BY_STATUS = {
    401: TargetErrorKind.UNAUTHORIZED,
    403: TargetErrorKind.FORBIDDEN,
    404: TargetErrorKind.NOT_FOUND,
    409: TargetErrorKind.CONFLICT,
    410: TargetErrorKind.EXPIRED,
    422: TargetErrorKind.INVALID,
    429: TargetErrorKind.RATE_LIMITED,
}


def translate(exc: Exception, ref: str, what: str = "secret") -> KubeError:
    """Turn a client or transport exception into a KubeError."""
    if isinstance(exc, ApiException):
        reason, message = _status_of(exc)
        kind = _BY_STATUS.get(int(exc.status or 0), TargetErrorKind.SERVER)
        if reason == "AlreadyExists":
            kind = TargetErrorKind.ALREADY_EXISTS
        return KubeError(kind, ref, f"HTTP {exc.status} {reason}: {message}".strip(), what)
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and isinstance(exc.reason, Exception):
        exc = exc.reason  # urllib3 retried reads (3 times by default); report why the last one failed
    if isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError):
        return KubeError(TargetErrorKind.TIMEOUT, ref, "API server did not answer in time", what)
    return KubeError(TargetErrorKind.UNREACHABLE, ref, f"API server unreachable ({type(exc).__name__})",
                     what)


# Narrow set of exceptions the client raises for a request that did not complete.
TRANSPORT_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)


def read_object(api: Api, path: str, ref: str, what: str = "secret") -> Any:
    """The object at ``path`` as decoded JSON, or None on 404.

    Raw JSON instead of the generated models: nothing we do not know gets lost and
    (de)serialisation stays cheap at hundreds of objects.
    """
    try:
        obj = api.get(path)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise translate(exc, ref, what) from None
    except TRANSPORT_ERRORS as exc:
        raise translate(exc, ref, what) from None
    except ValueError:  # a proxy or a broken server answered 200 with something else
        raise KubeError(TargetErrorKind.SERVER, ref, "API server answered with a body that is not JSON",
                        what) from None
    if not isinstance(obj, dict):
        raise KubeError(TargetErrorKind.SERVER, ref, "API server answered with a non-object", what)
    return obj


def _get_list(api: Api, path: str, query: Mapping[str, str], ref: str,
              what: str) -> tuple[list[dict[str, Any]], str]:
    """One page of a LIST: its object items and its ``continue`` token ("" on the last page)."""
    try:
        page = api.get(path, query)
        items = [i for i in page.get("items") or [] if isinstance(i, dict)]
        return items, str((page.get("metadata") or {}).get("continue") or "")
    except TRANSPORT_ERRORS as exc:
        raise translate(exc, ref, what) from None
    except (ValueError, AttributeError, TypeError):
        raise KubeError(TargetErrorKind.SERVER, ref, "unreadable list", what) from None


def list_all(api: Api, path: str, query: Mapping[str, str], ref: str, what: str) -> list[dict[str, Any]]:
    """Every item of a paged LIST (``limit``/``continue``). Pages may be short or empty and still
    carry a token (the API server counts ``limit`` before it applies selectors). A token that
    expired (410) restarts the list from the start once; a repeated token is a server error."""
    for attempt in (1, 2):
        try:
            return _pages(api, path, dict(query), ref, what)
        except KubeError as exc:
            if exc.kind is not TargetErrorKind.EXPIRED or attempt == 2:
                raise
            log.info("%s %s: continue token expired; listing again from the start", what, ref)
    raise AssertionError("unreachable")  # pragma: no cover


def _pages(api: Api, path: str, query: dict[str, str], ref: str, what: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    while True:
        page, token = _get_list(api, path, query, ref, what)
        items += page
        if not token:
            return items
        if token in seen:
            raise KubeError(TargetErrorKind.SERVER, ref, "the API server repeated a continue token", what)
        seen.add(token)
        query["continue"] = token


def send(api: Api, method: str, path: str, body: Any, ref: str, what: str = "secret",
           content_type: str = JSON) -> None:
    """Send a write; transport and HTTP failures become a KubeError about ``ref``."""
    try:
        api.request(method, path, body=body, content_type=content_type)
    except TRANSPORT_ERRORS as exc:
        raise translate(exc, ref, what) from None


def size_connection_pool(api: Api, workers: int) -> None:
    """Keep one pooled connection per worker thread.

    The client's pool holds ``cpu_count * 5`` connections per host (10 on 2 cores); with more
    worker threads than that, every surplus connection is dropped after use and the next request
    pays a new TLS handshake, which dominated CPU at T = 500 (docs/scaling.md).
    """
    pool_manager = getattr(getattr(api.api_client, "rest_client", None), "pool_manager", None)
    kw = getattr(pool_manager, "connection_pool_kw", None)
    if isinstance(kw, dict) and int(kw.get("maxsize") or 1) < workers:
        kw["maxsize"] = workers
