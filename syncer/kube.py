"""Kubernetes target store: dockerconfigjson Secrets, with optimistic concurrency, and fan-out.

``SecretStore`` reads and conditionally writes the target Secrets (a ``targets.TargetStore``);
``FanOut`` lists the namespaces a selector matches and links ServiceAccounts to the secret.
Both speak to the API server through ``syncer.kube_api`` and raise its KubeError.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from syncer import dockerconfig
from syncer.config import TargetSettings
from syncer.kube_api import MERGE_PATCH, Api, KubeError, api_path, list_all, read_object, send
from syncer.target_errors import TargetErrorKind

log = logging.getLogger(__name__)

DOCKERCONFIGJSON = ".dockerconfigjson"
SECRET_TYPE = "kubernetes.io/dockerconfigjson"
MAX_SECRET_BYTES = 1024 * 1024
"""Kubernetes refuses a Secret whose decoded data values add up to more than 1 MiB."""
PREVIOUS = ".dockerconfigjson.previous"
"""Data key holding the ``.dockerconfigjson`` the syncer last replaced, for ``syncer rollback``.
It lives in the same Secret, so exactly the principals who can read the credentials can read it,
and kubelet ignores keys other than ``.dockerconfigjson``."""
LIST_PAGE = 500
"""Items per page of a secret LIST (``limit``), so no single answer holds thousands of secrets."""
NAMESPACE_PAGE = 1000
"""Items per page of the namespace LIST. A Namespace is about half a KB, and ``limit`` counts
namespaces before the label selector filters them, so one page covers most clusters whole."""


class WatchCache(Protocol):
    """What the daemon's watches know (``syncer.watching.Watching``): read instead of GET/LIST."""

    def cached_secret(self, namespace: str, name: str) -> tuple[bool, Mapping[str, Any] | None]:
        """(True, the secret or None when absent) when a synced watch covers it, else (False, None)."""

    def cached_namespaces(self, selector: str) -> list[str] | None:
        """The namespaces ``selector`` matches, or None when its watch is not synced."""

    def writing(self, namespace: str, name: str, payload: bytes) -> None:
        """The syncer is about to write ``payload`` as the secret's ``.dockerconfigjson``, so
        that the watch can tell its own write from someone else's."""


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
    other_bytes: int = 0
    """Decoded size of the secret's other data keys (they count towards the 1 MiB limit)."""
    previous: bytes | None = field(default=None, repr=False)
    """Decoded ``.dockerconfigjson.previous`` (the content before the last write), if kept."""

    @property
    def ref(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"

    @property
    def version(self) -> str:
        """The resourceVersion read."""
        return self.resource_version

    def document(self) -> dockerconfig.Document:
        """The ``.dockerconfigjson`` as a document. Raises MalformedError (wrong type, no key)."""
        if self.type != SECRET_TYPE:
            raise dockerconfig.MalformedError(f"type is {self.type}, not {SECRET_TYPE}")
        if self.payload is None:
            raise dockerconfig.MalformedError("has no .dockerconfigjson key")
        return self.parse(self.payload)

    @staticmethod
    def parse(content: bytes) -> dockerconfig.Document:
        """A ``.dockerconfigjson`` value (this or a kept previous one) as a document."""
        return dockerconfig.parse(content)


class SecretStore:
    """Reads and conditionally writes one kind of object: dockerconfigjson secrets (the
    ``targets.TargetStore`` of Secret targets).

    ``dry_run`` is honoured here, in the lowest write functions, so no code
    path above can write by accident.
    """

    list_page = LIST_PAGE
    """Items per page of ``list_named``."""
    what = "secret"
    emits_events = True
    """What a target of this store is called in reports."""

    def __init__(self, api: Api, dry_run: bool = False, *, cache: WatchCache | None = None) -> None:
        self.api = api
        self.dry_run = dry_run
        self.cache = cache
        """The watches' cache (daemon with ``kubernetes.watch``): first attempts read from it."""

    def read(self, namespace: str, name: str) -> SecretSnapshot | None:
        """The secret, or None when it does not exist."""
        ref = f"{namespace}/{name}"
        obj = read_object(self.api, api_path("secrets", namespace, name), ref)
        return None if obj is None else _snapshot(obj, ref)

    def read_target(self, target: TargetSettings) -> SecretSnapshot | None:
        """The target's secret, or None when it does not exist."""
        return self.read(target.namespace, target.name)

    def prefetch(self, targets: Sequence[TargetSettings], *,
                 lists: bool = True) -> dict[str, SecretSnapshot | KubeError | None]:
        """The targets' secrets by target ref (None where the secret does not exist): from the
        watches' cache where a synced watch covers them, then (``lists``) the other fan-out
        targets from one LIST per name. A failed LIST only costs speed: its targets are left
        out, so they are read one by one as usual."""
        found = self._cached(targets)
        if lists:
            found.update(self._list_fanout([t for t in targets if t.ref not in found]))
        return found

    def _cached(self, targets: Sequence[TargetSettings]) -> dict[str, SecretSnapshot | KubeError | None]:
        """What the watches' cache holds of ``targets`` (the object may be older than the
        server's: a write then gets a 409 and the retry reads it with a GET)."""
        found: dict[str, SecretSnapshot | KubeError | None] = {}
        if self.cache is None:
            return found
        for t in targets:
            known, obj = self.cache.cached_secret(t.namespace, t.name)
            if not known:
                continue
            try:
                found[t.ref] = None if obj is None else _snapshot(obj, t.ref)
            except KubeError as exc:
                found[t.ref] = exc
        return found

    def _list_fanout(self, targets: Sequence[TargetSettings]) -> dict[str, SecretSnapshot | KubeError | None]:
        """The fan-out targets' secrets from one LIST per name (see ``prefetch``)."""
        listed: dict[str, SecretSnapshot | KubeError | None] = {}
        for name in sorted({t.name for t in targets if t.namespace_selector}):
            try:
                found = self.list_named(name)
            except KubeError as exc:
                log.warning("cannot list secrets named %s cluster-wide, reading them one by one: %s",
                            name, exc)
                continue
            for t in targets:
                if t.namespace_selector and t.name == name:
                    listed[t.ref] = found.get(t.namespace)
        return listed

    @staticmethod
    def serialize(doc: dockerconfig.Document) -> bytes:
        """The ``.dockerconfigjson`` value for ``doc``."""
        return dockerconfig.serialize(doc)

    def list_named(self, name: str) -> dict[str, SecretSnapshot | KubeError]:
        """Every secret called ``name``, by namespace: one cluster-wide LIST, in pages.

        ``fieldSelector=metadata.name`` keeps the answer to the secrets the syncer manages, and
        is what lets RBAC grant this LIST by ``resourceNames`` alone. A secret that cannot be
        decoded maps to its KubeError, so only its own target fails.
        """
        found: dict[str, SecretSnapshot | KubeError] = {}
        query = {"fieldSelector": f"metadata.name={name}", "limit": str(self.list_page)}
        for item in list_all(self.api, api_path("secrets"), query, name, "secrets named"):
            meta = item.get("metadata") or {}
            if meta.get("name") != name:
                continue  # a server or proxy that ignored the fieldSelector
            namespace = str(meta.get("namespace", ""))
            try:
                found[namespace] = _snapshot(item, f"{namespace}/{name}")
            except KubeError as exc:
                found[namespace] = exc
        return found

    @staticmethod
    def _check_size(ref: str, payload: bytes, other_bytes: int = 0) -> None:
        """Refuse before sending what the API server would refuse: data over 1 MiB."""
        total = len(payload) + other_bytes
        if total > MAX_SECRET_BYTES:
            raise KubeError(TargetErrorKind.TOO_LARGE, ref,
                            f"the secret's data would be {total} bytes ({DOCKERCONFIGJSON}: "
                            f"{len(payload)} bytes), over the {MAX_SECRET_BYTES}-byte (1 MiB) "
                            "Kubernetes Secret limit; not written")

    def update(self, snapshot: SecretSnapshot, payload: bytes, annotations: Mapping[str, str],
               previous: bytes | None = None) -> None:
        """Write ``payload`` and set ``annotations`` (others are kept) only if the secret is still at
        snapshot's version.

        A JSON merge patch that touches only our key and our annotations, carrying
        ``metadata.resourceVersion`` as a precondition: the API server answers 409
        if anyone wrote in between, so a concurrent edit is never overwritten.
        ``previous``, when given, replaces the ``PREVIOUS`` copy in the same write (one
        copy only, so it never nests or grows); if both would not fit in 1 MiB the old
        copy is dropped instead, because a stale copy would roll back to the wrong state.
        """
        other = snapshot.other_bytes - len(snapshot.previous or b"")
        data: dict[str, str | None] = {DOCKERCONFIGJSON: base64.b64encode(payload).decode("ascii")}
        if previous is not None:
            if len(payload) + other + len(previous) <= MAX_SECRET_BYTES:
                data[PREVIOUS] = base64.b64encode(previous).decode("ascii")
                other += len(previous)
            else:
                log.warning("secret %s: no room for the previous content under the 1 MiB limit; "
                            "rollback will not be available for this write", snapshot.ref)
                data[PREVIOUS] = None
        elif snapshot.previous is not None:
            other += len(snapshot.previous)
        self._check_size(snapshot.ref, payload, other)
        body = {
            "metadata": {"resourceVersion": snapshot.resource_version, "annotations": dict(annotations)},
            "data": data,
        }
        if self.dry_run:
            log.info("dry-run: would update secret %s", snapshot.ref)
            return
        if self.cache is not None:
            self.cache.writing(snapshot.namespace, snapshot.name, payload)
        try:
            send(self.api, "PATCH", api_path("secrets", snapshot.namespace, snapshot.name), body,
                   snapshot.ref, content_type=MERGE_PATCH)
        except KubeError as exc:
            if exc.kind is not TargetErrorKind.NOT_FOUND:
                raise
            # Deleted since it was read: like a 409, the caller re-reads (and creates it only
            # if the target says create = true), so a deliberate delete is not silently undone.
            raise KubeError(TargetErrorKind.CONFLICT, snapshot.ref,
                            "the secret was deleted after it was read") from None

    def create(self, target: TargetSettings, payload: bytes, annotations: Mapping[str, str]) -> None:
        """Create the target's dockerconfigjson secret; AlreadyExists surfaces as a KubeError."""
        namespace, name = target.namespace, target.name
        ref = f"{namespace}/{name}"
        self._check_size(ref, payload)
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
        if self.cache is not None:
            self.cache.writing(namespace, name, payload)
        send(self.api, "POST", api_path("secrets", namespace), body, ref)


def _snapshot(obj: Mapping[str, Any], ref: str) -> SecretSnapshot:
    meta = obj.get("metadata") or {}
    data = obj.get("data") or {}
    encoded = data.get(DOCKERCONFIGJSON)
    try:
        payload = None if encoded is None else base64.b64decode(encoded, validate=True)
    except ValueError:
        raise KubeError(TargetErrorKind.INVALID, ref, f"{DOCKERCONFIGJSON} is not base64") from None
    other = sum(len(str(v)) * 3 // 4 for k, v in data.items() if k != DOCKERCONFIGJSON)
    try:
        previous = base64.b64decode(data[PREVIOUS], validate=True) if data.get(PREVIOUS) else None
    except ValueError:
        previous = None  # unreadable copy: treated as absent, replaced by the next write
    return SecretSnapshot(
        other_bytes=other,
        previous=previous,
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        type=str(obj.get("type") or "Opaque"),
        resource_version=str(meta.get("resourceVersion", "")),
        payload=payload,
        annotations=dict(meta.get("annotations") or {}),
    )


# --------------------------------------------------------------------------- fan-out


@dataclass(frozen=True)
class AccountSnapshot:
    """A ServiceAccount's pull-secret references, as read (for an append-only patch)."""

    namespace: str
    """Namespace of the ServiceAccount."""
    name: str
    """Name of the ServiceAccount."""
    resource_version: str
    """The version the patch is conditional on."""
    pull_secrets: tuple[Mapping[str, Any], ...]
    """``imagePullSecrets`` entries exactly as stored, in order."""

    def references(self, secret: str) -> bool:
        """True when ``secret`` is already listed."""
        return any(entry.get("name") == secret for entry in self.pull_secrets)


class FanOut:
    """Namespace selection and ServiceAccount pull-secret references for fan-out targets."""

    namespace_page = NAMESPACE_PAGE
    """Items per page of the namespace LIST."""

    def __init__(self, api: Api, dry_run: bool = False, *, cache: WatchCache | None = None) -> None:
        self.api = api
        self.dry_run = dry_run
        self.cache = cache
        """The watches' cache: a synced namespace watch answers instead of a LIST."""

    def namespaces(self, selector: str) -> list[str]:
        """Names of the namespaces matching ``selector`` that are not terminating (one LIST).

        A terminating namespace refuses new objects (403) and is about to lose the secret
        anyway, so it is skipped rather than reported as a failure.
        """
        cached = None if self.cache is None else self.cache.cached_namespaces(selector)
        if cached is not None:
            return cached
        query = {"labelSelector": selector, "limit": str(self.namespace_page)}
        items = list_all(self.api, api_path("namespaces"), query, selector, "namespaces matching")
        names = []
        for item in items:
            meta = item.get("metadata") or {}
            if (item.get("status") or {}).get("phase") == "Terminating" or meta.get("deletionTimestamp"):
                log.info("namespace %s is terminating; skipped", meta.get("name"))
                continue
            names.append(str(meta.get("name", "")))
        return sorted(n for n in names if n)

    def read_account(self, namespace: str, name: str) -> AccountSnapshot | None:
        """The ServiceAccount, or None when it does not exist (yet)."""
        obj = read_object(self.api, api_path("serviceaccounts", namespace, name),
                            f"{namespace}/{name}", "serviceaccount")
        if obj is None:
            return None
        meta = obj.get("metadata") or {}
        entries = obj.get("imagePullSecrets") or []
        return AccountSnapshot(namespace, name, str(meta.get("resourceVersion", "")),
                               tuple(e for e in entries if isinstance(e, dict)))

    def add_reference(self, account: AccountSnapshot, secret: str) -> None:
        """Append ``{name: secret}`` to imagePullSecrets, conditional on the version read.

        A merge patch replaces the whole list, so it carries every existing entry unchanged and
        in order plus the new one, with ``metadata.resourceVersion`` as precondition: if anyone
        edited the list in between, the API server answers 409 (a CONFLICT KubeError) and
        nothing of theirs is lost.
        """
        ref = f"{account.namespace}/{account.name}"
        if self.dry_run:
            log.info("dry-run: would add %s to imagePullSecrets of serviceaccount %s", secret, ref)
            return
        body = {
            "metadata": {"resourceVersion": account.resource_version},
            "imagePullSecrets": [dict(e) for e in account.pull_secrets] + [{"name": secret}],
        }
        send(self.api, "PATCH", api_path("serviceaccounts", account.namespace, account.name), body,
               ref, "serviceaccount", MERGE_PATCH)
