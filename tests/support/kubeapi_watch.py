"""Watches, served the way kube-apiserver serves them.

``GET ...?watch=1`` (or ``watch=true``, or the legacy ``/watch/`` path) answers 200 with chunked
JSON lines ``{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}``:

- no ``resourceVersion`` (or ``"0"``): the current state as ADDED events, then every change;
- ``resourceVersion=RV``: the changes after RV; an RV older than the store's compaction is one
  ERROR event holding a 410 ``Expired`` Status, then the end of the stream (the client relists);
- ``allowWatchBookmarks=true``: BOOKMARK events (an object with only ``metadata.resourceVersion``)
  every ``bookmark_interval`` seconds and whenever a test calls ``bookmark()``;
- ``timeoutSeconds=N``: the stream ends cleanly after N seconds;
- ``fieldSelector`` / ``labelSelector`` filter like the watch cache does: an object that stops
  matching arrives as DELETED (its previous content, the new resourceVersion), one that starts
  matching as ADDED.

Authorisation happened before (kubeapi.py: a ``resourceNames`` rule authorises a watch only with a
``metadata.name`` field selector). Tests drop or end open streams (``drop``, ``end``) and inject raw
bytes into them (``inject``) for hostile-server cases.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tests.support.kubeapi_http import Request
from tests.support.kubeapi_resources import JSON, ResourceType
from tests.support.kubeapi_select import (
    FieldRequirement,
    LabelRequirement,
    parse_field_selector,
    parse_label_selector,
)
from tests.support.kubeapi_status import bad_request, ns_not_found
from tests.support.kubeapi_store import Change, ObjectStore

if TYPE_CHECKING:
    from tests.support.kubeapi_http import RequestHandler

#: how often an idle watch checks whether its client hung up
CLIENT_CHECK_SECONDS = 0.1


@dataclass
class Filter:
    """What one watch sees: a kind, optionally one namespace, and its selectors."""

    rt: ResourceType
    namespace: str | None
    fields: list[FieldRequirement]
    labels: list[LabelRequirement]

    def matches(self, obj: JSON | None) -> bool:
        """Whether an object (None: absent) is in this watch's view."""
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.rt.namespaced and self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return all(m.matches(meta.get("labels") or {}) for m in self.labels) and all(
            m.matches(obj) for m in self.fields
        )

    def event(self, change: Change) -> tuple[str, JSON] | None:
        """The event this watch sees for a change, or None (kube's cacheWatcher rules)."""
        if (change.group, change.plural) != (self.rt.group, self.rt.plural):
            return None
        now = change.type != "DELETED" and self.matches(change.new)
        before = self.matches(change.old)
        if now:
            return ("MODIFIED" if before else "ADDED"), change.new
        if not before:
            return None
        gone = json.loads(json.dumps(change.old))
        gone["metadata"]["resourceVersion"] = str(change.rv)
        return "DELETED", gone


@dataclass
class WatchStream:
    """One open watch: its filter, position and the test's requests to it."""

    hub: WatchHub
    req: Request
    filter: Filter
    cursor: int | None  # None: start with the current state as ADDED events
    bookmarks: bool
    deadline: float | None
    drop_now: bool = False
    end_now: bool = False
    bookmark_now: bool = False
    raw: list[tuple[Iterable[bytes], float]] = field(default_factory=list)
    conn: socket.socket | None = None

    def _take(self) -> tuple[list[tuple[str, JSON]], str | None]:
        """Wait (under the store's condition) for something to send: events, or a control."""
        store = self.hub.store
        with store.changed:
            next_bookmark = self._next_bookmark()
            while True:
                if self.cursor is None:
                    self.cursor = store.rv
                    return self._initial(), None
                if self.cursor < store.compacted:
                    return [], "expired"
                pending = [e for c in store.changes_after(self.cursor) if (e := self.filter.event(c))]
                self.cursor = max(self.cursor, store.rv)
                control = self._control(next_bookmark)
                if pending or control:
                    return pending, control
                if self._client_gone():
                    return [], "gone"
                waits = [t - time.monotonic() for t in (self.deadline, next_bookmark) if t is not None]
                store.changed.wait(timeout=max(0.0, min([*waits, CLIENT_CHECK_SECONDS])))

    def _client_gone(self) -> bool:
        """Whether the client hung up (a watch client sends nothing, so anything readable is its
        close), as the Go server notices a cancelled request."""
        if self.conn is None:
            return False
        try:
            readable, _, _ = select.select([self.conn], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def _next_bookmark(self) -> float | None:
        interval = self.hub.bookmark_interval
        return time.monotonic() + interval if self.bookmarks and interval else None

    def _control(self, next_bookmark: float | None) -> str | None:
        now = time.monotonic()
        if self.hub.closed or self.drop_now:
            return "drop"
        if self.raw:
            return "raw"
        if self.end_now or (self.deadline is not None and now >= self.deadline):
            return "end"
        if self.bookmarks and (self.bookmark_now or (next_bookmark is not None and now >= next_bookmark)):
            self.bookmark_now = False
            return "bookmark"
        return None

    def _initial(self) -> list[tuple[str, JSON]]:
        store = self.hub.store
        return [
            ("ADDED", json.loads(json.dumps(obj)))
            for _, obj in store.sorted_items(self.filter.rt, self.filter.namespace)
            if self.filter.matches(obj)
        ]

    def serve(self, h: RequestHandler) -> None:
        """Stream until the watch ends, is dropped, or the client hangs up."""
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("Cache-Control", "no-cache, private")
        h.end_headers()
        self.conn = h.connection
        try:
            self._loop(h)
        except OSError:
            h.close_connection = True

    def _loop(self, h: RequestHandler) -> None:
        rt = self.filter.rt
        while True:
            events, control = self._take()
            for kind, obj in events:
                _chunk(h, {"type": kind, "object": obj})
            if control == "expired":
                status = expired_status(self.cursor or 0, self.hub.store.compacted)
                _chunk(h, {"type": "ERROR", "object": status})
                control = "end"
            if control == "bookmark":
                meta = {"resourceVersion": str(self.cursor)}
                _chunk(h, {"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version,
                                                          "metadata": meta}})
            if control == "raw":
                self._send_raw(h)
            if control in ("drop", "gone"):
                _hang_up(h)
                return
            if control == "end":
                h.wfile.write(b"0\r\n\r\n")
                h.wfile.flush()
                return

    def _send_raw(self, h: RequestHandler) -> None:
        with self.hub.store.lock:
            batches, self.raw = self.raw, []
        for pieces, delay in batches:
            for piece in pieces:
                if self.hub.closed or self.drop_now:
                    return
                h.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                h.wfile.flush()
                if delay:
                    time.sleep(delay)


def _chunk(h: RequestHandler, event: JSON) -> None:
    data = json.dumps(event, separators=(",", ":")).encode() + b"\n"
    h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
    h.wfile.flush()


def _hang_up(h: RequestHandler) -> None:
    """Drop the connection mid-stream (no terminating chunk), as a restarting server does."""
    h.close_connection = True
    with contextlib.suppress(OSError):
        h.connection.shutdown(socket.SHUT_RDWR)


def expired_status(rv: int, compacted: int) -> JSON:
    """The Status of an ERROR event for a compacted resourceVersion."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {rv} ({compacted})",
        "reason": "Expired",
        "code": 410,
    }


class WatchHub:
    """Opens watches on an ObjectStore and lets tests steer the open ones."""

    #: seconds between periodic BOOKMARK events (for watches that allow them); None: only on
    #: ``bookmark()`` (kube-apiserver sends them about once a minute)
    bookmark_interval: float | None = None

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.closed = False
        self._open: list[WatchStream] = []

    def open(self, req: Request, missing_namespace_404: bool) -> WatchStream:
        """Validate a watch request (400 for a bad parameter or an unsupported field)."""
        rt = req.rt
        assert rt is not None
        fields = parse_field_selector(rt, req.query.get("fieldSelector", ""))
        labels = parse_label_selector(req.query.get("labelSelector", ""))
        if req.name and rt.plural != "namespaces":
            fields.append(FieldRequirement("metadata.name", req.name, False))
        namespace = req.namespace if rt.namespaced else None
        if rt.plural == "namespaces" and req.name:
            fields.append(FieldRequirement("metadata.name", req.name, False))
        raw_rv = req.query.get("resourceVersion", "")
        if raw_rv not in ("", "0") and not raw_rv.isdigit():
            raise bad_request(f"invalid resource version: {raw_rv!r}")
        timeout = req.query.get("timeoutSeconds", "")
        if timeout and not timeout.isdigit():
            raise bad_request(f"invalid timeoutSeconds: {timeout!r}")
        with self.store.lock:
            if namespace is not None and missing_namespace_404 and not self.store.has_namespace(namespace):
                raise ns_not_found(namespace)
            stream = WatchStream(
                hub=self,
                req=req,
                filter=Filter(rt, namespace, fields, labels),
                cursor=int(raw_rv) if raw_rv not in ("", "0") else None,
                bookmarks=req.query.get("allowWatchBookmarks") in ("true", "1"),
                deadline=time.monotonic() + int(timeout) if timeout and int(timeout) > 0 else None,
            )
            self._open.append(stream)
        return stream

    def serve(self, stream: WatchStream, h: RequestHandler) -> None:
        """Run an opened stream on the handler's thread; forget it when it ends."""
        try:
            stream.serve(h)
        finally:
            with self.store.lock:
                if stream in self._open:
                    self._open.remove(stream)

    # ---- steering open watches (tests) ------------------------------------------------------------

    def streams(self, match: Callable[[WatchStream], bool] | None = None) -> list[WatchStream]:
        """The open watches (that ``match``)."""
        with self.store.lock:
            return [s for s in self._open if match is None or match(s)]

    def open_count(self, resource: str | None = None) -> int:
        """How many watches are open (on one resource plural)."""
        return len(self.streams(lambda s: resource is None or s.filter.rt.plural == resource))

    def _poke(self, attr: str, match: Callable[[WatchStream], bool] | None) -> int:
        with self.store.changed:
            streams = [s for s in self._open if match is None or match(s)]
            for s in streams:
                setattr(s, attr, True)
            self.store.changed.notify_all()
        return len(streams)

    def drop(self, match: Callable[[WatchStream], bool] | None = None) -> int:
        """Hang up open watches mid-stream (a server restart); returns how many."""
        return self._poke("drop_now", match)

    def end(self, match: Callable[[WatchStream], bool] | None = None) -> int:
        """End open watches cleanly, as timeoutSeconds does; returns how many."""
        return self._poke("end_now", match)

    def bookmark(self, match: Callable[[WatchStream], bool] | None = None) -> int:
        """Send a BOOKMARK now on the open watches that allow them; returns how many."""
        return self._poke("bookmark_now", match)

    def inject(self, pieces: Iterable[bytes], delay: float = 0.0,
               match: Callable[[WatchStream], bool] | None = None) -> int:
        """Write raw chunks (``delay`` seconds apart) into open watches: hostile-server tests."""
        with self.store.changed:
            streams = [s for s in self._open if match is None or match(s)]
            for s in streams:
                s.raw.append((pieces, delay))
            self.store.changed.notify_all()
        return len(streams)

    def close(self) -> None:
        """Hang up every open watch (server stop)."""
        with self.store.changed:
            self.closed = True
            self.store.changed.notify_all()
