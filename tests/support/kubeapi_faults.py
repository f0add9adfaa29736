"""What the test server records about each request, and the faults and hooks tests inject."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.support.kubeapi_http import Request
from tests.support.kubeapi_status import DEFAULT_REASONS, KubeError, conflict, status_details


@dataclass
class RequestRecord:
    """One request as the server saw it (bodies are never kept: they may hold secrets)."""

    method: str
    path: str
    query: dict[str, str]
    verb: str
    api_group: str
    resource: str
    namespace: str | None
    name: str | None
    subresource: str | None
    user: str
    status: int = 0
    content_type: str = ""
    dry_run: bool = False


@dataclass
class Fault:
    """An injected failure for matching requests."""

    match: Callable[[RequestRecord], bool]
    status: int | None
    reason: str
    delay: float
    reset: bool
    times: int | None


@dataclass
class Hook:
    """An action run before matching requests."""

    match: Callable[[RequestRecord], bool]
    action: Callable[[], object]
    times: int | None


@dataclass
class Faults:
    """Injected faults and hooks, consumed as matching requests arrive."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._faults: list[Fault] = []
        self._hooks: list[Hook] = []

    def add_fault(
        self,
        match: Callable[[RequestRecord], bool],
        *,
        status: int | None = None,
        reason: str = "",
        delay: float = 0.0,
        reset: bool = False,
        times: int | None = 1,
    ) -> None:
        """Before a matching request: sleep ``delay``, then drop the connection (``reset``) or
        answer a Status with ``status`` (429 gets ``Retry-After: 1``). times=None = forever."""
        with self._lock:
            self._faults.append(Fault(match, status, reason, delay, reset, times))

    def before(
        self, match: Callable[[RequestRecord], bool], action: Callable[[], object], times: int | None = 1
    ) -> None:
        """Run ``action`` right before a matching request is processed (e.g. a concurrent edit)."""
        with self._lock:
            self._hooks.append(Hook(match, action, times))

    def clear(self) -> None:
        """Drop all faults and hooks."""
        with self._lock:
            self._faults.clear()
            self._hooks.clear()

    def take(self, record: RequestRecord, hooks: bool) -> list[Any]:
        """Consume what matches ``record``: every hook, or only the first fault."""
        items: list[Any] = self._hooks if hooks else self._faults
        taken = []
        with self._lock:
            for item in list(items):
                if not item.match(record):
                    continue
                taken.append(item)
                if item.times is not None:
                    item.times -= 1
                    if item.times <= 0:
                        items.remove(item)
                if not hooks:
                    break
        return taken


def fault_error(fault: Fault, req: Request) -> KubeError:
    """The Status an injected fault answers."""
    code = int(fault.status or 500)
    reason, message = DEFAULT_REASONS.get(code, ("InternalError", f"injected fault {code}"))
    reason = fault.reason or reason
    headers = {"Retry-After": "1"} if code == 429 else {}
    if code == 409 and req.rt is not None and req.name:
        return KubeError(
            409,
            reason,
            conflict(req.rt, req.name).message,
            status_details(req.rt, req.name),
            headers,
        )
    details = status_details(req.rt, req.name) if req.rt is not None else {}
    if code == 429:
        details["retryAfterSeconds"] = 1
    return KubeError(code, reason, message, details, headers)
