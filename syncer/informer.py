"""In-memory caches of watched objects (client-go's "informer"), fed by kube_watch.Reflector.

``Informer(api, spec, transform, on_change=...)`` keeps what one watch sees, by
(namespace, name) with its resourceVersion, as ``transform(object)`` (``slim_secret`` and
``slim_namespace`` keep only what a sync needs; managedFields and unrelated metadata go). It
calls ``on_change(event_type, old, new)`` after each real change (``old``/``new`` None for an
ADDED/DELETED): a relist that finds what the cache already holds calls nothing, and one that
misses an object reports it DELETED. Objects outside the spec (a server or proxy that ignored the
selector) are dropped, so memory stays bounded by what the syncer manages.

``TargetWatches(api, targets, ...)`` builds the informers a configuration needs, with least
privilege (a ``metadata.name`` field selector on every secret watch, so RBAC can bind list and
watch to ``resourceNames``):

- a fixed target ``namespace/name``: one watch of secrets in that namespace named ``name``;
- a fan-out target (``namespace_selector``): one cluster-wide watch of secrets named ``name``
  (shared by every target with that name), and one watch of namespaces per selector.

Thread model: one daemon thread per informer (its Reflector); ``on_change`` and ``on_mode`` run on
that thread after the cache was updated, outside its lock, so they may call ``get`` but should
only queue work. ``get``/``synced``/``mode`` are safe from any thread; ``stop()`` ends every
thread at once (SIGTERM).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from syncer.config import TargetSettings
from syncer.kube_api import Api
from syncer.kube_watch import JSON, Reflector, WatchMode, WatchObserver, WatchSpec

T = TypeVar("T")
Key = tuple[str, str]
ChangeCallback = Callable[[str, T | None, T | None], None]
ModeCallback = Callable[[WatchSpec, WatchMode, str], None]

_SECRET_META = ("name", "namespace", "uid", "resourceVersion", "annotations", "labels",
                "deletionTimestamp")
_NAMESPACE_META = ("name", "uid", "resourceVersion", "labels", "deletionTimestamp")


def _meta(obj: JSON) -> JSON:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def slim_secret(obj: JSON) -> JSON:
    """What a sync reads of a Secret: type, data and the metadata it checks or writes."""
    meta = _meta(obj)
    out: JSON = {"metadata": {k: meta[k] for k in _SECRET_META if k in meta}, "type": obj.get("type")}
    if isinstance(obj.get("data"), dict):
        out["data"] = obj["data"]
    return out


def slim_namespace(obj: JSON) -> JSON:
    """What fan-out reads of a Namespace: name, labels, and whether it is terminating."""
    meta = _meta(obj)
    status = obj.get("status")
    status = status if isinstance(status, dict) else {}
    return {"metadata": {k: meta[k] for k in _NAMESPACE_META if k in meta},
            "status": {"phase": status.get("phase", "")}}


def key_of(obj: JSON) -> Key:
    """(namespace, name) of an object ("" namespace for cluster-scoped kinds)."""
    meta = _meta(obj)
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _rv(obj: JSON) -> str:
    return str(_meta(obj).get("resourceVersion") or "")


def _in_spec(spec: WatchSpec, key: Key) -> bool:
    """Whether an object is one the spec asked for (the name and namespace parts of it)."""
    if not key[1] or (spec.namespace and key[0] != spec.namespace):
        return False
    for term in spec.field_selector.split(","):
        field, _, value = term.partition("=")
        if field.strip() == "metadata.name" and value.strip().lstrip("=") != key[1]:
            return False
    return True


class Informer(Generic[T]):
    """One watch's objects, kept current by a Reflector (see the module docstring)."""

    def __init__(self, api: Api, spec: WatchSpec, transform: Callable[[JSON], T], *,
                 on_change: ChangeCallback[T] | None = None, on_mode: ModeCallback | None = None,
                 observer: WatchObserver | None = None, **reflector_options: Any) -> None:
        self.spec = spec
        self._transform = transform
        self._on_change = on_change
        self._on_mode = on_mode
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._items: dict[Key, tuple[str, T]] = {}
        self.reflector = Reflector(api, spec, self, observer=observer, **reflector_options)

    # ---- owner side -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the reflector thread."""
        self.reflector.start()

    def stop(self) -> None:
        """Stop the reflector (its stream is closed at once)."""
        self.reflector.stop()

    @property
    def mode(self) -> WatchMode:
        """The reflector's mode (``polling``: the cache is not kept current)."""
        return self.reflector.mode

    @property
    def synced(self) -> bool:
        """True when the cache holds a complete list and the watch keeps it current."""
        return self._synced.is_set() and self.reflector.mode is WatchMode.WATCHING

    def wait_synced(self, timeout: float) -> bool:
        """Wait until the first list has arrived and the watch is open (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not self.synced:
            left = deadline - time.monotonic()
            if left <= 0 or self.reflector.stopped:
                return self.synced
            self._synced.wait(min(left, 0.02))
        return True

    def get(self, namespace: str, name: str) -> T | None:
        """The cached object, or None when it does not exist (check ``synced`` first)."""
        with self._lock:
            entry = self._items.get((namespace, name))
        return None if entry is None else entry[1]

    def resource_version(self, namespace: str, name: str) -> str:
        """The cached object's resourceVersion ("" when absent)."""
        with self._lock:
            entry = self._items.get((namespace, name))
        return "" if entry is None else entry[0]

    def keys(self) -> list[Key]:
        """(namespace, name) of every cached object, sorted."""
        with self._lock:
            return sorted(self._items)

    def values(self) -> list[T]:
        """Every cached object, in key order."""
        with self._lock:
            return [self._items[k][1] for k in sorted(self._items)]

    # ---- WatchHandler (the reflector's thread) ---------------------------------------------------

    def replace(self, items: list[JSON], resource_version: str) -> None:
        """A fresh list: report what changed since the cache was last current."""
        fresh = {key: obj for obj in items if _in_spec(self.spec, key := key_of(obj))}
        changes: list[tuple[str, T | None, T | None]] = []
        with self._lock:
            for key in [k for k in self._items if k not in fresh]:
                changes.append(("DELETED", self._items.pop(key)[1], None))
            for key, obj in fresh.items():
                old = self._items.get(key)
                if old is not None and old[0] == _rv(obj):
                    continue
                value = self._transform(obj)
                self._items[key] = (_rv(obj), value)
                changes.append(("MODIFIED" if old else "ADDED", old[1] if old else None, value))
        self._synced.set()
        self._emit(changes)

    def apply(self, event_type: str, obj: JSON) -> None:
        """One watch event."""
        key = key_of(obj)
        if not _in_spec(self.spec, key):
            return
        with self._lock:
            old = self._items.get(key)
            if event_type == "DELETED":
                if old is None:
                    return
                del self._items[key]
                change: tuple[str, T | None, T | None] = ("DELETED", old[1], None)
            else:
                if old is not None and old[0] == _rv(obj):
                    return  # already known (a replayed event)
                value = self._transform(obj)
                self._items[key] = (_rv(obj), value)
                change = ("MODIFIED" if old else "ADDED", old[1] if old else None, value)
        self._emit([change])

    def mode_changed(self, mode: WatchMode, reason: str) -> None:
        """Pass the reflector's mode on to the owner."""
        if self._on_mode is not None:
            self._on_mode(self.spec, mode, reason)

    def _emit(self, changes: Iterable[tuple[str, T | None, T | None]]) -> None:
        if self._on_change is None:
            return
        for kind, old, new in changes:
            self._on_change(kind, old, new)


class TargetWatches:
    """The informers of a configuration's Kubernetes targets (see the module docstring)."""

    def __init__(self, api: Api, targets: Iterable[TargetSettings], *,
                 on_secret: ChangeCallback[JSON] | None = None,
                 on_namespace: Callable[[str, JSON | None, JSON | None, str], None] | None = None,
                 on_mode: ModeCallback | None = None, observer: WatchObserver | None = None,
                 **reflector_options: Any) -> None:
        common: dict[str, Any] = {"on_mode": on_mode, "observer": observer, **reflector_options}
        self.fixed: dict[Key, Informer[JSON]] = {}
        self.by_name: dict[str, Informer[JSON]] = {}
        self.by_selector: dict[str, Informer[JSON]] = {}
        for t in targets:
            if t.file:
                continue
            selector = f"metadata.name={t.name}"
            if not t.namespace_selector:
                self.fixed.setdefault((t.namespace, t.name), Informer(
                    api, WatchSpec("secrets", t.namespace, selector), slim_secret,
                    on_change=on_secret, **common))
                continue
            self.by_name.setdefault(t.name, Informer(
                api, WatchSpec("secrets", "", selector), slim_secret, on_change=on_secret, **common))
            if t.namespace_selector not in self.by_selector:
                self.by_selector[t.namespace_selector] = Informer(
                    api, WatchSpec("namespaces", label_selector=t.namespace_selector), slim_namespace,
                    on_change=_with_selector(on_namespace, t.namespace_selector), **common)

    @property
    def informers(self) -> list[Informer[JSON]]:
        """Every informer, fixed secrets first."""
        return [*self.fixed.values(), *self.by_name.values(), *self.by_selector.values()]

    def start(self) -> None:
        """Start every reflector thread."""
        for informer in self.informers:
            informer.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop every reflector (streams closed at once), then wait up to ``timeout`` for all."""
        for informer in self.informers:
            informer.stop()
        deadline = time.monotonic() + timeout
        for informer in self.informers:
            informer.reflector.join(max(0.0, deadline - time.monotonic()))

    def wait_synced(self, timeout: float) -> bool:
        """Wait until every informer is synced (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        return all(i.wait_synced(max(0.0, deadline - time.monotonic())) for i in self.informers)

    def secret_informer(self, namespace: str, name: str) -> Informer[JSON] | None:
        """The informer whose view holds secret ``namespace/name``, or None when none does."""
        return self.fixed.get((namespace, name)) or self.by_name.get(name)

    def namespaces(self, selector: str) -> list[str] | None:
        """Names of the namespaces matching ``selector`` that are not terminating (as
        ``FanOut.namespaces`` answers), or None when that watch is not synced."""
        informer = self.by_selector.get(selector)
        if informer is None or not informer.synced:
            return None
        return sorted(ns["metadata"]["name"] for ns in informer.values()
                      if ns["status"].get("phase") != "Terminating"
                      and not ns["metadata"].get("deletionTimestamp"))

    def modes(self) -> dict[str, WatchMode]:
        """Each watch's mode by its ref (for ``syncer check`` and logs)."""
        return {i.spec.ref: i.mode for i in self.informers}


def _with_selector(callback: Callable[[str, JSON | None, JSON | None, str], None] | None,
                   selector: str) -> ChangeCallback[JSON] | None:
    if callback is None:
        return None
    return lambda kind, old, new: callback(kind, old, new, selector)
