"""The test server's storage: every object by kind and (namespace, name), and one resourceVersion
counter for all of them (etcd's revision). Every change goes through ``commit`` or ``remove`` here,
which append it to ``history`` (etcd's event log, until ``compact``) and wake the watches waiting on
``changed`` (see kubeapi_watch)."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import threading
import uuid
from bisect import bisect_right
from dataclasses import dataclass

from tests.support.kubeapi_resources import BY_PATH, JSON, STORED, ResourceType
from tests.support.kubeapi_status import KubeError, bad_request

NAMESPACES = BY_PATH[("", "v1", "namespaces")]
SERVICE_ACCOUNTS = BY_PATH[("", "v1", "serviceaccounts")]
Key = tuple[str, str]
EXPIRED_MESSAGE = (
    "The provided continue parameter is too old to display a consistent list result. You can start "
    "a new list without the continue parameter, or use the continue token in this response to "
    "retrieve the remainder of the results. Continuing with the provided token results in an "
    "inconsistent list - objects that were created, modified, or deleted between the time the "
    "first chunk was returned and now may show up in the list."
)


@dataclass(frozen=True)
class Change:
    """One stored change (an etcd event): ``new`` is the object after it; for DELETED, the last
    state stamped with the deletion's resourceVersion (as kube's watch sends it)."""

    rv: int
    group: str
    plural: str
    type: str  # ADDED | MODIFIED | DELETED
    old: JSON | None
    new: JSON


def timestamp_now() -> str:
    """Now, as kube metadata timestamps are written."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def key_of(rt: ResourceType, namespace: str | None, name: str) -> Key:
    """(namespace, name); namespace "" for cluster-scoped kinds."""
    return (namespace or "" if rt.namespaced else "", name)


class ObjectStore:
    """Objects and versions; callers hold ``lock`` across a read-modify-write."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.rv = 0
        #: revisions below this one are gone (etcd compaction): continue tokens from before it
        #: are 410 Expired
        self.compacted = 0
        #: changes after ``compacted``, in resourceVersion order (what a watch replays)
        self.history: list[Change] = []
        #: older changes are compacted away automatically beyond this many (etcd compacts too)
        self.history_limit = 5000
        #: notified (under ``lock``) after every change, so waiting watches wake up
        self.changed = threading.Condition(self.lock)
        self._objects: dict[tuple[str, str], dict[Key, JSON]] = {(r.group, r.plural): {} for r in STORED}

    # ---- primitives (call under the lock) ------------------------------------------------------

    def next_rv(self) -> str:
        """Consume the next resourceVersion."""
        self.rv += 1
        return str(self.rv)

    def compact(self) -> None:
        """Forget history before now, as etcd's compaction does (older continue tokens and watch
        resourceVersions expire: 410)."""
        with self.lock:
            self.compacted = self.rv
            self.history.clear()
            self.changed.notify_all()

    def changes_after(self, rv: int) -> list[Change]:
        """The recorded changes with a resourceVersion above ``rv`` (call under the lock)."""
        return self.history[bisect_right(self.history, rv, key=lambda c: c.rv):]

    def _record(self, rt: ResourceType, kind: str, old: JSON | None, new: JSON) -> None:
        self.history.append(Change(int(new["metadata"]["resourceVersion"]), rt.group, rt.plural, kind,
                                   copy.deepcopy(old), copy.deepcopy(new)))
        if len(self.history) > self.history_limit:
            dropped = self.history[: len(self.history) - self.history_limit]
            del self.history[: len(dropped)]
            self.compacted = dropped[-1].rv
        self.changed.notify_all()

    @staticmethod
    def encode_continue(last: Key, rv: int) -> str:
        """An opaque continue token: the last key served and the list's revision."""
        return base64.urlsafe_b64encode(json.dumps({"k": list(last), "rv": rv}).encode()).decode()

    def decode_continue(self, token: str) -> tuple[list[str] | None, int]:
        """(key to start after, revision) of a token; ("", now) for none. An undecodable token is
        a 400 (storage.DecodeContinue fails); a compacted revision is 410 Expired."""
        if not token:
            return None, self.rv
        try:
            state = json.loads(base64.urlsafe_b64decode(token))
            start_after, rv = [str(k) for k in state["k"]], int(state["rv"])
        except (ValueError, KeyError, TypeError) as exc:
            raise bad_request(f"invalid continue token: {exc.__class__.__name__}") from exc
        if rv < self.compacted or rv > self.rv:
            raise KubeError(410, "Expired", EXPIRED_MESSAGE)
        return start_after, rv

    def kind(self, rt: ResourceType) -> dict[Key, JSON]:
        """The live mapping of one kind (mutate only through commit/remove)."""
        return self._objects[(rt.group, rt.plural)]

    def lookup(self, rt: ResourceType, namespace: str | None, name: str) -> JSON | None:
        """The stored object (not a copy) or None."""
        return self.kind(rt).get(key_of(rt, namespace, name))

    def has_namespace(self, name: str) -> bool:
        """Whether the namespace exists (in any phase)."""
        return ("", name) in self.kind(NAMESPACES)

    def sorted_items(self, rt: ResourceType, namespace: str | None) -> list[tuple[Key, JSON]]:
        """The kind's objects in key order (a LIST's order), optionally in one namespace."""
        return [
            (key, obj)
            for key, obj in sorted(self.kind(rt).items())
            if not rt.namespaced or namespace is None or key[0] == namespace
        ]

    def stamp_new(self, rt: ResourceType, obj: JSON, namespace: str | None, dry_run: bool = False) -> JSON:
        """Give a new object its server-set metadata (a dry run consumes no resourceVersion)."""
        meta = obj.setdefault("metadata", {})
        if rt.namespaced and namespace is not None:
            meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = timestamp_now()
        if dry_run:
            meta.pop("resourceVersion", None)
        else:
            meta["resourceVersion"] = self.next_rv()
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        return obj

    def commit(self, rt: ResourceType, obj: JSON) -> None:
        """Store an object (already stamped with a new resourceVersion) under its metadata's
        namespace and name, and record the change."""
        meta = obj["metadata"]
        key = key_of(rt, meta.get("namespace"), meta["name"])
        old = self.kind(rt).get(key)
        self.kind(rt)[key] = obj
        self._record(rt, "MODIFIED" if old is not None else "ADDED", old, obj)

    def remove(self, rt: ResourceType, namespace: str | None, name: str) -> None:
        """Drop an object if present; the deletion consumes a resourceVersion, like etcd's."""
        old = self.kind(rt).pop(key_of(rt, namespace, name), None)
        if old is not None:
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = self.next_rv()
            self._record(rt, "DELETED", old, gone)

    # ---- direct state access for tests (bypasses auth and validation) ---------------------------

    @staticmethod
    def resolve(kind_plural: str) -> ResourceType:
        """``secrets``, ``leases`` or ``events.events.k8s.io`` -> its ResourceType."""
        plural, _, group = kind_plural.partition(".")
        for rt in STORED:
            if rt.plural == plural and (not group or rt.group == group):
                return rt
        raise KeyError(f"unknown resource {kind_plural!r}")

    def put_object(self, kind_plural: str, namespace: str | None, obj: JSON) -> JSON:
        """Create or replace any stored object verbatim (no validation); returns a copy."""
        rt = self.resolve(kind_plural)
        obj = copy.deepcopy(obj)
        name = obj["metadata"]["name"]
        with self.lock:
            if rt.namespaced and namespace and not self.has_namespace(namespace):
                self.add_namespace(namespace)
            old = self.lookup(rt, namespace, name)
            self.stamp_new(rt, obj, namespace)
            if old is not None:
                obj["metadata"]["uid"] = old["metadata"]["uid"]
                obj["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            self.commit(rt, obj)
            return copy.deepcopy(obj)

    def get_object(self, kind_plural: str, namespace: str | None, name: str) -> JSON | None:
        """A deep copy of a stored object, or None."""
        rt = self.resolve(kind_plural)
        with self.lock:
            return copy.deepcopy(self.kind(rt).get((namespace or "", name)))

    def delete_object(self, kind_plural: str, namespace: str | None, name: str) -> None:
        """Remove a stored object if present."""
        rt = self.resolve(kind_plural)
        with self.lock:
            self.remove(rt, namespace, name)

    def list_objects(self, kind_plural: str, namespace: str | None = None) -> list[JSON]:
        """Deep copies of stored objects of a kind (all namespaces when namespace is None)."""
        rt = self.resolve(kind_plural)
        with self.lock:
            return [copy.deepcopy(o) for (ns, _), o in self.kind(rt).items() if namespace in (None, ns)]

    def add_namespace(self, name: str, labels: dict[str, str] | None = None, phase: str = "Active") -> None:
        """Create (or replace) a namespace; kube's ``kubernetes.io/metadata.name`` label is added."""
        obj: JSON = {
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **(labels or {})}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": phase},
        }
        with self.lock:
            old = self.lookup(NAMESPACES, None, name)
            self.stamp_new(NAMESPACES, obj, None)
            if old is not None:
                obj["metadata"]["uid"] = old["metadata"]["uid"]
            if phase == "Terminating":
                obj["metadata"]["deletionTimestamp"] = timestamp_now()
            self.commit(NAMESPACES, obj)

    def remove_namespace(self, name: str) -> None:
        """Drop a namespace and everything in it."""
        with self.lock:
            self.remove(NAMESPACES, None, name)
            for rt in STORED:
                if rt.namespaced:
                    for ns, obj_name in [k for k in self.kind(rt) if k[0] == name]:
                        self.remove(rt, ns, obj_name)

    def put_secret(
        self,
        namespace: str,
        name: str,
        type: str = "Opaque",  # noqa: A002
        data: dict[str, bytes] | None = None,
        annotations: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
    ) -> JSON:
        """Create or replace a Secret (bumps resourceVersion, keeps uid; creates the namespace
        if missing). ``data`` values are raw bytes (str is UTF-8 encoded)."""
        meta: JSON = {"name": name}
        if annotations:
            meta["annotations"] = dict(annotations)
        if labels:
            meta["labels"] = dict(labels)
        obj: JSON = {"metadata": meta, "type": type}
        if data:
            obj["data"] = {
                k: base64.b64encode(v.encode() if isinstance(v, str) else v).decode() for k, v in data.items()
            }
        return self.put_object("secrets", namespace, obj)

    def secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """The decoded data of a stored Secret, or None when it does not exist."""
        obj = self.get_object("secrets", namespace, name)
        if obj is None:
            return None
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

    def add_service_account(
        self, namespace: str, name: str, image_pull_secrets: list[str] | None = None
    ) -> JSON:
        """Create or replace a ServiceAccount."""
        obj: JSON = {"metadata": {"name": name}}
        if image_pull_secrets is not None:
            obj["imagePullSecrets"] = [{"name": n} for n in image_pull_secrets]
        return self.put_object("serviceaccounts", namespace, obj)

    def events(self, namespace: str | None = None) -> list[JSON]:
        """Stored events of both APIs (each keeps its apiVersion), in creation order."""
        with self.lock:
            out = [
                copy.deepcopy(o)
                for grp in ("", "events.k8s.io")
                for (ns, _), o in self._objects[(grp, "events")].items()
                if namespace in (None, ns)
            ]
        out.sort(key=lambda o: int(o["metadata"].get("resourceVersion") or 0))
        return out
