"""Kubernetes side: read and write dockerconfigjson secrets with optimistic concurrency.

Library exceptions stop here and become a KubeError with a kind (forbidden,
conflict, invalid, ...) and the namespace/name concerned. Response bodies are
never copied into messages verbatim: only the Status ``reason`` and a
shortened ``message``, which the API server already redacts for Secrets.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from syncer.config import KubernetesSettings

log = logging.getLogger(__name__)

DOCKERCONFIGJSON = ".dockerconfigjson"
SECRET_TYPE = "kubernetes.io/dockerconfigjson"
MERGE_PATCH = "application/merge-patch+json"


class KubeErrorKind(StrEnum):
    """Why a Kubernetes request failed, as a metric- and log-friendly label."""

    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    ALREADY_EXISTS = "already_exists"
    INVALID = "invalid"
    RATE_LIMITED = "rate_limited"
    SERVER = "server_error"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    WRONG_TYPE = "wrong_type"


class KubeError(Exception):
    """A failed request about one secret; the message names it and the reason."""

    def __init__(self, kind: KubeErrorKind, ref: str, message: str) -> None:
        super().__init__(f"secret {ref}: {kind.value}: {message}")
        self.kind = kind
        self.ref = ref


@dataclass(frozen=True)
class SecretSnapshot:
    """What the syncer needs to know about an existing secret."""

    namespace: str
    """Namespace of the secret."""
    name: str
    """Name of the secret."""
    type: str
    """Secret type, e.g. kubernetes.io/dockerconfigjson."""
    resource_version: str
    """The version the next write is conditional on."""
    payload: bytes | None = field(repr=False)
    """Decoded ``.dockerconfigjson`` value, or None when the key is absent."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    """metadata.annotations."""

    @property
    def ref(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"


def make_api_client(settings: KubernetesSettings, env: Mapping[str, str]) -> k8s.ApiClient:
    """Build the API client: explicit kubeconfig, else in-cluster, else the default kubeconfig."""
    if not settings.kubeconfig and env.get("KUBERNETES_SERVICE_HOST"):
        configuration = k8s.Configuration()
        # try_refresh_token re-reads the projected token before it expires (bound tokens rotate).
        k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration, try_refresh_token=True
        )
        return k8s.ApiClient(configuration)
    api_client: k8s.ApiClient = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=settings.kubeconfig or None, context=settings.context or None
    )
    return api_client


def response_json(resp: object) -> Any:
    """The decoded body of a call made with ``_preload_content=False`` (a urllib3 response)."""
    return json.loads(resp.data)  # type: ignore[attr-defined]


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
    401: KubeErrorKind.UNAUTHORIZED,
    403: KubeErrorKind.FORBIDDEN,
    404: KubeErrorKind.NOT_FOUND,
    409: KubeErrorKind.CONFLICT,
    422: KubeErrorKind.INVALID,
    429: KubeErrorKind.RATE_LIMITED,
}


def translate(exc: Exception, ref: str) -> KubeError:
    """Turn a client or transport exception into a KubeError."""
    if isinstance(exc, ApiException):
        reason, message = _status_of(exc)
        kind = _BY_STATUS.get(int(exc.status or 0), KubeErrorKind.SERVER)
        if reason == "AlreadyExists":
            kind = KubeErrorKind.ALREADY_EXISTS
        return KubeError(kind, ref, f"HTTP {exc.status} {reason}: {message}".strip())
    if isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError):
        return KubeError(KubeErrorKind.TIMEOUT, ref, "API server did not answer in time")
    return KubeError(KubeErrorKind.UNREACHABLE, ref, f"API server unreachable ({type(exc).__name__})")


# Narrow set of exceptions the client raises for a request that did not complete.
TRANSPORT_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)


class SecretStore:
    """Reads and conditionally writes one kind of object: dockerconfigjson secrets.

    ``dry_run`` is honoured here, in the lowest write functions, so no code
    path above can write by accident.
    """

    def __init__(self, api: k8s.CoreV1Api, settings: KubernetesSettings, dry_run: bool = False) -> None:
        self.api = api
        self.timeout = settings.timeout
        self.dry_run = dry_run

    def read(self, namespace: str, name: str) -> SecretSnapshot | None:
        """The secret, or None when it does not exist."""
        ref = f"{namespace}/{name}"
        try:
            # Raw JSON instead of the generated models: nothing we do not know gets lost and
            # (de)serialisation stays cheap at hundreds of secrets.
            resp = self.api.read_namespaced_secret(
                name, namespace, _preload_content=False, _request_timeout=self.timeout
            )
            obj = response_json(resp)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise translate(exc, ref) from None
        except TRANSPORT_ERRORS as exc:
            raise translate(exc, ref) from None
        return _snapshot(obj, ref)

    def update(self, snapshot: SecretSnapshot, payload: bytes, annotations: Mapping[str, str]) -> None:
        """Write ``payload`` and ``annotations`` only if the secret is still at snapshot's version.

        A JSON merge patch that touches only our key and our annotations, carrying
        ``metadata.resourceVersion`` as a precondition: the API server answers 409
        if anyone wrote in between, so a concurrent edit is never overwritten.
        """
        body = {
            "metadata": {"resourceVersion": snapshot.resource_version, "annotations": dict(annotations)},
            "data": {DOCKERCONFIGJSON: base64.b64encode(payload).decode("ascii")},
        }
        if self.dry_run:
            log.info("dry-run: would update secret %s", snapshot.ref)
            return
        self._call(snapshot.ref, self.api.patch_namespaced_secret, snapshot.name, snapshot.namespace,
                   body, _content_type=MERGE_PATCH)

    def create(self, namespace: str, name: str, payload: bytes, annotations: Mapping[str, str]) -> None:
        """Create a new dockerconfigjson secret; AlreadyExists surfaces as a KubeError."""
        ref = f"{namespace}/{name}"
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": SECRET_TYPE,
            "metadata": {"name": name, "namespace": namespace, "annotations": dict(annotations)},
            "data": {DOCKERCONFIGJSON: base64.b64encode(payload).decode("ascii")},
        }
        if self.dry_run:
            log.info("dry-run: would create secret %s", ref)
            return
        self._call(ref, self.api.create_namespaced_secret, namespace, body)

    def _call(self, ref: str, method: Any, *args: Any, **kwargs: Any) -> None:
        try:
            method(*args, _request_timeout=self.timeout, _preload_content=False, **kwargs)
        except TRANSPORT_ERRORS as exc:
            raise translate(exc, ref) from None


def _snapshot(obj: Mapping[str, Any], ref: str) -> SecretSnapshot:
    meta = obj.get("metadata") or {}
    data = obj.get("data") or {}
    encoded = data.get(DOCKERCONFIGJSON)
    try:
        payload = None if encoded is None else base64.b64decode(encoded, validate=True)
    except ValueError:
        raise KubeError(KubeErrorKind.INVALID, ref, f"{DOCKERCONFIGJSON} is not base64") from None
    return SecretSnapshot(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        type=str(obj.get("type") or "Opaque"),
        resource_version=str(meta.get("resourceVersion", "")),
        payload=payload,
        annotations=dict(meta.get("annotations") or {}),
    )
