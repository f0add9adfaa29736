"""Kubernetes Events on target secrets, aggregated so repeats do not spam.

The first occurrence of (secret, reason, message) creates a core/v1 Event;
repeats within ``kubernetes.event_window`` only bump its ``count`` and
``lastTimestamp`` with one PATCH, the way kubelet's recorder aggregates.
Messages name hosts and outcomes only, never secret material.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from syncer.config import KubernetesSettings
from syncer.kube_api import JSON, MERGE_PATCH, TRANSPORT_ERRORS, Api, api_path, translate
from syncer.text import rfc3339, safe

log = logging.getLogger(__name__)

COMPONENT = "registry-credential-syncer"
MESSAGE_LIMIT = 1000
"""Characters of an Event message before the cap marker (events.k8s.io caps a note at 1 KiB)."""


def event_message(message: str) -> str:
    """The message as recorded: it may quote outside text (the API server's or a registry's error,
    a malformed secret's keys), so control characters are escaped and the length is capped."""
    return safe(message, MESSAGE_LIMIT)


@dataclass(frozen=True)
class EventSpec:
    """One Event to record on a Secret."""

    namespace: str
    """Namespace of the secret (and of the Event)."""
    name: str
    """The secret the Event is about."""
    reason: str
    """CamelCase reason: CredentialsRotated, LoginRejected, SyncFailed, MalformedSecret."""
    message: str
    """Human text without secret material (escaped and capped when recorded)."""
    warning: bool = False
    """Event type Warning instead of Normal."""


@dataclass
class _Seen:
    event_name: str
    count: int
    last: float


def _key(spec: EventSpec) -> tuple[str, str, str, str]:
    return spec.namespace, spec.name, spec.reason, spec.message


class EventRecorder:
    """Creates and aggregates Events. Failures to record are logged, never raised."""

    def __init__(self, api: Api, settings: KubernetesSettings,
                 clock: Callable[[], float] = time.time, workers: int = 1) -> None:
        self.api = api
        self.window = settings.event_window
        self.clock = clock
        self.workers = max(1, workers)
        self._seen: dict[tuple[str, str, str, str], _Seen] = {}
        self._lock = threading.Lock()

    def emit_all(self, specs: Iterable[EventSpec]) -> None:
        """Record each spec, on up to ``workers`` threads.

        After a full rotation there is one Event per secret: sent one after another they took
        T x API latency (10 s for T = 500 at 20 ms). Repeats of one key stay in order on one thread.
        """
        groups: dict[tuple[str, str, str, str], list[EventSpec]] = {}
        for spec in specs:
            groups.setdefault(_key(spec), []).append(spec)
        if len(groups) <= 1 or self.workers == 1:
            for group in groups.values():
                self._emit_group(group)
            return
        with ThreadPoolExecutor(min(self.workers, len(groups)), thread_name_prefix="events") as pool:
            list(pool.map(self._emit_group, groups.values()))

    def _emit_group(self, specs: list[EventSpec]) -> None:
        for spec in specs:
            self.emit(spec)

    def emit(self, spec: EventSpec) -> None:
        """Create the Event, or bump the count of the same one seen within the window."""
        key = _key(spec)
        now = self.clock()
        with self._lock:  # bookkeeping only; requests go out without the lock
            seen = self._seen.get(key)
            if seen is not None and now - seen.last <= self.window:
                seen.count += 1
                seen.last = now
                patch = {"count": seen.count, "lastTimestamp": rfc3339(now)}
            else:
                seen = None
        if seen is not None:
            if not self._send(spec, "PATCH", api_path("events", spec.namespace, seen.event_name), patch,
                              MERGE_PATCH):
                with self._lock:
                    seen.last = 0.0  # the Event is gone or unreachable: create a fresh one next time
            return
        name = f"{spec.name}.{uuid.uuid4().hex[:16]}"
        created = self._create(spec, name, now)
        with self._lock:
            if created:
                self._seen[key] = _Seen(name, 1, now)
            self._expire(now)

    def _expire(self, now: float) -> None:
        for key in [k for k, v in self._seen.items() if now - v.last > self.window]:
            del self._seen[key]

    def _create(self, spec: EventSpec, name: str, now: float) -> bool:
        stamp = rfc3339(now)
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": spec.namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Secret", "namespace": spec.namespace,
                               "name": spec.name},
            "reason": spec.reason,
            "message": event_message(spec.message),
            "type": "Warning" if spec.warning else "Normal",
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": COMPONENT,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        return self._send(spec, "POST", api_path("events", spec.namespace), body)

    def _send(self, spec: EventSpec, method: str, path: str, body: Any,
              content_type: str = JSON) -> bool:
        try:
            self.api.request(method, path, body=body, content_type=content_type)
        except TRANSPORT_ERRORS as exc:
            ref = f"{spec.namespace}/{spec.name}"
            log.warning("could not record event %s: %s", spec.reason, translate(exc, ref))
            return False
        return True
