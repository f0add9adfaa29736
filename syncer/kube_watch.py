"""List-then-watch of one Kubernetes collection (client-go's "reflector"), over ``kube_api.Api``.

``Reflector(api, spec, handler)`` runs on its own thread (``start()``) and keeps ``handler`` told:

1. LIST the collection (paged, with the spec's selectors) → ``handler.replace(items, rv)``;
2. WATCH from the list's resourceVersion with ``allowWatchBookmarks=true`` and a server-side
   ``timeoutSeconds`` (5-10 min, randomised like client-go so replicas do not reconnect in step)
   → ``handler.apply(type, object)`` for each ADDED/MODIFIED/DELETED event;
3. when the stream ends, watch again from the last resourceVersion seen (an event's or a
   BOOKMARK's), so nothing is missed or repeated; a 410 Expired (an ERROR event, or the open)
   goes back to 1.

Failures restart with capped, jittered exponential backoff (``Backoff``); a stream that lived at
least ``healthy_seconds`` resets it, and a clean end after such a stream reconnects at once. A
watch the server refuses to open (403: RBAC without ``watch``; 404/405/400: an old server or a
proxy) moves the reflector to ``polling``: ``handler.mode_changed(POLLING, reason)`` and one
warning, once; it retries quietly every ``polling_retry`` seconds and reports ``WATCHING`` again
when a watch opens. A LIST refused with 403 falls back the same way.

Bounded against a hostile or broken server: each event line is capped at ``max_line`` bytes
(``MAX_LINE_BYTES``), a stream that outlives its ``timeoutSeconds`` by ``grace`` seconds (a slow
drip) is cut (reason ``deadline``), a silent one hits the read timeout (``stalled``), and
undecodable lines restart the watch (``decode``). Every restart is counted by reason and every
event by type through the optional ``observer`` (``WatchObserver``; syncer.metrics implements it
as ``syncer_watch_restarts_total`` and ``syncer_watch_events_total``).

``stop()`` (from any thread, e.g. the SIGTERM handler) shuts the open stream's socket down, so the
thread ends at once. Handler and observer calls run on the reflector's thread: keep them short.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import urllib3
from kubernetes.client.exceptions import ApiException

from syncer.kube_api import TRANSPORT_ERRORS, Api, api_path, reload_token, translate

log = logging.getLogger(__name__)

JSON = dict[str, Any]
MAX_LINE_BYTES = 2 * 1024 * 1024
"""Longest event line read: a Secret holds at most 1 MiB of data (1.4 MiB as base64) plus its
metadata, so anything longer is a broken or hostile server, not an object."""
EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")
"""``type`` label values of syncer_watch_events_total."""
RESTART_REASONS = ("closed", "dropped", "stalled", "deadline", "expired", "error", "decode",
                   "too_large", "list_failed", "open_failed", "forbidden", "unsupported")
"""``reason`` label values of syncer_watch_restarts_total. ``closed`` is the normal end at
timeoutSeconds; ``forbidden``/``unsupported`` are the attempts that leave or keep polling."""
RESOURCES = ("secrets", "namespaces")
"""``resource`` label values."""
LIST_PAGE = 500
"""Items per page of the LIST before a watch."""


class WatchMode(StrEnum):
    """Where a reflector stands, as ``syncer check`` reports it."""

    STARTING = "starting"
    WATCHING = "watching"
    POLLING = "polling"
    """The watch cannot be opened: the owner reads with GET/LIST each cycle."""
    STOPPED = "stopped"


@dataclass(frozen=True)
class WatchSpec:
    """One collection to watch."""

    resource: str
    """``secrets`` or ``namespaces`` (core/v1)."""
    namespace: str = ""
    """Namespace of a namespaced collection; "" = all namespaces."""
    field_selector: str = ""
    """e.g. ``metadata.name=NAME``: what lets RBAC grant the list/watch by ``resourceNames``."""
    label_selector: str = ""
    """e.g. a fan-out target's ``namespace_selector``."""

    @property
    def path(self) -> str:
        """The collection's URL path."""
        return api_path(self.resource, self.namespace)

    @property
    def ref(self) -> str:
        """For logs: ``secrets[ns](metadata.name=x)``."""
        where = f"[{self.namespace}]" if self.namespace else ""
        sel = ",".join(s for s in (self.field_selector, self.label_selector) if s)
        return f"{self.resource}{where}({sel})" if sel else f"{self.resource}{where}"

    def query(self) -> dict[str, str]:
        """The selectors as query parameters."""
        out = {}
        if self.field_selector:
            out["fieldSelector"] = self.field_selector
        if self.label_selector:
            out["labelSelector"] = self.label_selector
        return out


class WatchHandler(Protocol):
    """Told by a Reflector (on its thread) what the collection holds."""

    def replace(self, items: list[JSON], resource_version: str) -> None:
        """A fresh LIST: the whole collection now."""

    def apply(self, event_type: str, obj: JSON) -> None:
        """One ADDED, MODIFIED or DELETED event."""

    def mode_changed(self, mode: WatchMode, reason: str) -> None:
        """The reflector entered ``mode`` (``reason``: why it polls, else "")."""


class WatchObserver(Protocol):
    """Counts for the metrics (syncer.metrics.Metrics implements it)."""

    def watch_event(self, resource: str, event_type: str) -> None:
        """One event read from a watch."""

    def watch_restart(self, resource: str, reason: str) -> None:
        """One watch (or list) that ended or failed, by reason."""


class Backoff:
    """Capped exponential backoff with jitter: attempt n waits between half and all of
    ``min(cap, base * 2**n)``, so many reflectors failing together do not retry in step."""

    def __init__(self, base: float = 0.5, cap: float = 30.0,
                 rand: Callable[[], float] = random.random) -> None:
        self.base, self.cap, self.rand = base, cap, rand
        self.attempt = 0

    def next(self) -> float:
        """The delay before the next attempt."""
        ceiling = min(self.cap, self.base * 2.0 ** min(self.attempt, 30))
        self.attempt += 1
        return ceiling / 2 + self.rand() * ceiling / 2

    def reset(self) -> None:
        """After a success."""
        self.attempt = 0


class _Restart(Exception):
    def __init__(self, reason: str, relist: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.relist = reason, relist


class _Fallback(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


_FALLBACK_STATUS = {403: "forbidden", 400: "unsupported", 404: "unsupported", 405: "unsupported"}
ERROR_BODY_BYTES = 64 * 1024
"""Most of a refused watch's answer kept (for the Status reason and message)."""
READ_SIZE = 64 * 1024


class Reflector:
    """Keeps one ``WatchHandler`` told about one collection: list, then watch, forever (see the
    module docstring). Thread-safe: ``start``, ``stop`` and the read-only properties."""

    def __init__(self, api: Api, spec: WatchSpec, handler: WatchHandler, *,
                 observer: WatchObserver | None = None, timeout_seconds: int = 300,
                 grace: float = 30.0, healthy_seconds: float = 1.0,
                 polling_retry: float | None = 600.0, backoff: Backoff | None = None,
                 max_line: int = MAX_LINE_BYTES, list_page: int = LIST_PAGE,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] | None = None,
                 rand: Callable[[], float] = random.random) -> None:
        self.api, self.spec, self.handler, self.observer = api, spec, handler, observer
        self.timeout_seconds, self.grace, self.healthy_seconds = timeout_seconds, grace, healthy_seconds
        self.polling_retry = polling_retry
        self.backoff = backoff or Backoff(rand=rand)
        self.max_line, self.list_page = max_line, list_page
        self.clock, self.rand = clock, rand
        self._stopped = threading.Event()
        self._sleep = sleep or self._stopped.wait
        self._lock = threading.Lock()
        self._resp: urllib3.BaseHTTPResponse | None = None
        self._thread: threading.Thread | None = None
        self._started_at: float | None = None
        self.mode = WatchMode.STARTING
        """Where the reflector stands (read from any thread)."""
        self.resource_version = ""
        """The last resourceVersion seen (a list's, an event's or a bookmark's); "" = relist."""

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> threading.Thread:
        """Run on a daemon thread named after the spec."""
        self._thread = threading.Thread(target=self.run, name=f"watch {self.spec.ref}", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        """End now: no more calls to the handler after the current one; the open stream's
        socket is shut down so a blocked read returns at once."""
        self._stopped.set()
        with self._lock:
            resp = self._resp
        if resp is not None:
            _shutdown(resp)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True when it ended."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def stopped(self) -> bool:
        """Whether ``stop()`` was called (or polling gave up)."""
        return self._stopped.is_set()

    def run(self) -> None:
        """The loop (blocking): list/watch, back off, repeat until stopped."""
        while not self._stopped.is_set():
            delay = self._step()
            if delay > 0 and not self._stopped.is_set():
                self._sleep(delay)
        self._set_mode(WatchMode.STOPPED, "")

    # ---- one round ----------------------------------------------------------------------------

    def _step(self) -> float:
        """One (re)list and watch; returns the delay before the next round."""
        self._started_at = None
        try:
            if not self.resource_version:
                self._relist()
            self._watch()
        except _Fallback as fb:
            self._count(fb.reason)
            self._set_mode(WatchMode.POLLING, fb.reason, fb.detail)
            if self.polling_retry is None:
                self._stopped.set()
            return self.polling_retry or 0.0
        except _Restart as rs:
            if self._stopped.is_set():
                return 0.0
            self._count(rs.reason)
            if rs.relist:
                self.resource_version = ""
            self._reset_if_healthy()
            delay = self.backoff.next()
            log.info("watch %s restarts in %.1fs (%s)", self.spec.ref, delay, rs.reason)
            return delay
        if self._stopped.is_set():
            return 0.0
        self._count("closed")  # the normal end at timeoutSeconds
        return 0.0 if self._reset_if_healthy() else self.backoff.next()

    def _reset_if_healthy(self) -> bool:
        started = self._started_at
        if started is not None and self.clock() - started >= self.healthy_seconds:
            self.backoff.reset()
            return True
        return False

    def _relist(self) -> None:
        try:
            items, rv = list_with_version(self.api, self.spec, self.list_page)
        except ApiException as exc:
            if exc.status == 403:
                raise _Fallback("forbidden", translate(exc, self.spec.ref, "watch").args[0]) from None
            raise _Restart("expired" if exc.status == 410 else "list_failed") from None
        except (*TRANSPORT_ERRORS, ValueError, TypeError, AttributeError):
            raise _Restart("list_failed") from None
        if self._stopped.is_set():
            return
        self.handler.replace(items, rv)
        self.resource_version = rv

    def _watch(self) -> None:
        timeout = int(self.timeout_seconds * (1 + self.rand()))
        query = {**self.spec.query(), "watch": "1", "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(timeout)}
        if self.resource_version:
            query["resourceVersion"] = self.resource_version
        resp = self._open(query, timeout + self.grace)
        self._started_at = self.clock()
        deadline = self._started_at + timeout + self.grace
        self._set_mode(WatchMode.WATCHING, "")
        try:
            for line in read_lines(resp, self.max_line, lambda: self.clock() > deadline):
                if self._stopped.is_set():
                    return
                self._dispatch(line)
        finally:
            with self._lock:
                self._resp = None
            _discard(resp)

    def _open(self, query: dict[str, str], read_timeout: float) -> urllib3.BaseHTTPResponse:
        for attempt in (1, 2):
            try:
                resp = open_stream(self.api, self.spec.path, query, (self.api.timeout, read_timeout))
            except ApiException as exc:
                status = int(exc.status or 0)
                if status == 401 and attempt == 1 and reload_token(self.api):
                    continue
                if status == 410:
                    raise _Restart("expired", relist=True) from None
                if status in _FALLBACK_STATUS:
                    detail = translate(exc, self.spec.ref, "watch").args[0]
                    raise _Fallback(_FALLBACK_STATUS[status], detail) from None
                raise _Restart("open_failed") from None
            except TRANSPORT_ERRORS:
                raise _Restart("open_failed") from None
            with self._lock:
                self._resp = resp
            if self._stopped.is_set():
                _shutdown(resp)
            return resp
        raise _Restart("open_failed")

    def _dispatch(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            raise _Restart("decode") from None
        kind = event.get("type") if isinstance(event, dict) else None
        obj = event.get("object") if isinstance(event, dict) else None
        if kind not in EVENT_TYPES or not isinstance(obj, dict):
            raise _Restart("decode")
        if self.observer is not None:
            self.observer.watch_event(self.spec.resource, kind)
        if kind == "ERROR":
            # a Status: 410 = the resourceVersion was compacted away (relist); else restart
            raise _Restart("expired", relist=True) if obj.get("code") == 410 else _Restart("error")
        meta = obj.get("metadata")
        rv = str(meta.get("resourceVersion") or "") if isinstance(meta, dict) else ""
        if not rv:
            raise _Restart("decode")
        if kind != "BOOKMARK":
            self.handler.apply(kind, obj)
        self.resource_version = rv

    # ---- reporting ----------------------------------------------------------------------------

    def _count(self, reason: str) -> None:
        if self.observer is not None:
            self.observer.watch_restart(self.spec.resource, reason)

    def _set_mode(self, mode: WatchMode, reason: str, detail: str = "") -> None:
        if mode is self.mode:
            return
        before, self.mode = self.mode, mode
        if mode is WatchMode.POLLING:
            log.warning("cannot watch %s (%s): falling back to polling each cycle; %s",
                        self.spec.ref, reason, detail)
        elif mode is WatchMode.WATCHING and before is WatchMode.POLLING:
            log.info("watch %s works again; polling ends", self.spec.ref)
        self.handler.mode_changed(mode, reason)


# --------------------------------------------------------------------------- HTTP helpers


def list_with_version(api: Api, spec: WatchSpec, page: int) -> tuple[list[JSON], str]:
    """Every item of a paged LIST, and the list's resourceVersion (where a watch continues).
    Raises what ``Api.get`` raises, ValueError for an answer that is not a list."""
    query = {**spec.query(), "limit": str(page)}
    items: list[JSON] = []
    rv, seen = "", set()
    while True:
        body = api.get(spec.path, query)
        if not isinstance(body, dict) or not isinstance(body.get("items") or [], list):
            raise ValueError("not a list")
        items += [i for i in body.get("items") or [] if isinstance(i, dict)]
        meta = body.get("metadata") or {}
        rv = rv or str(meta.get("resourceVersion") or "")  # every page carries the snapshot's
        token = str(meta.get("continue") or "")
        if not token:
            return items, rv
        if token in seen:
            raise ValueError("the API server repeated a continue token")
        seen.add(token)
        query["continue"] = token


def open_stream(api: Api, path: str, query: dict[str, str],
                timeouts: tuple[float, float]) -> urllib3.BaseHTTPResponse:
    """GET through the Api's client without reading the body (``preload_content=False``, which
    the client's REST layer always uses); a non-2xx answer raises ApiException with at most
    ``ERROR_BODY_BYTES`` of its body."""
    client = api.api_client
    # param_serialize adds the auth header (calling the token-refresh hook) and User-Agent.
    method, url, headers, _, _ = client.param_serialize(
        "GET", path, query_params=list(query.items()), header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"])
    rest = client.call_api(method, url, headers, None, _request_timeout=timeouts)
    resp: urllib3.BaseHTTPResponse = rest.response
    if 200 <= rest.status <= 299:
        return resp
    try:
        body = resp.read(ERROR_BODY_BYTES)
    except (urllib3.exceptions.HTTPError, OSError):
        body = b""
    finally:
        _discard(resp)
    raise ApiException(status=rest.status, reason=rest.reason, body=body.decode("utf-8", "replace"))


def read_lines(resp: urllib3.BaseHTTPResponse, max_line: int,
               expired: Callable[[], bool]) -> Iterator[bytes]:
    """The non-empty lines of a streamed body, each at most ``max_line`` bytes. Raises _Restart:
    ``too_large`` (a longer line, or that much without a newline), ``stalled`` (read timeout),
    ``dropped`` (the connection broke), ``deadline`` (``expired()`` became true)."""
    buf = bytearray()
    while True:
        try:
            data = resp.read1(READ_SIZE)
        except urllib3.exceptions.ReadTimeoutError:  # before HTTPError: it is one
            raise _Restart("stalled") from None
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            raise _Restart("dropped") from None
        if not data:
            if buf.strip():
                raise _Restart("dropped")  # a partial line: the stream was cut
            return
        buf += data
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            if end - start > max_line:
                raise _Restart("too_large", relist=True)
            if end > start:
                yield bytes(buf[start:end])
            start = end + 1
        del buf[:start]
        if len(buf) > max_line:
            # relist: a LIST reads the object the stream could not, so the watch moves past it
            raise _Restart("too_large", relist=True)
        if expired():
            raise _Restart("deadline")


def _shutdown(resp: urllib3.BaseHTTPResponse) -> None:
    """Shut the response's socket down from another thread, so a blocked read returns."""
    try:
        resp.shutdown()
    except (RuntimeError, ValueError, OSError, AttributeError):
        _discard(resp)


def _discard(resp: urllib3.BaseHTTPResponse) -> None:
    """Close a response that may be half read (its connection is not reused)."""
    for step in (resp.close, resp.release_conn):
        with contextlib.suppress(urllib3.exceptions.HTTPError, OSError, RuntimeError, ValueError):
            step()
