"""Fixtures for the watch client and informer tests (tests/test_kube_watch.py,
tests/test_hostile_watch.py): an informer factory on the ``kube`` server that records what it reports."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from syncer.informer import Informer, slim_namespace, slim_secret
from syncer.kube_api import Api
from syncer.kube_watch import WatchMode, WatchSpec
from tests.support.kube_fixtures import ADMIN_TOKEN, kube_client
from tests.support.kubeapi import KubeAPIServer, RequestRecord

__all__ = ["PULL", "Seen", "api_for", "eventually", "is_watch", "seen", "start"]

PULL = WatchSpec("secrets", "a", "metadata.name=pull")


class Seen:
    """Records everything an informer and its reflector report (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changes: list[tuple[str, str, str]] = []  # (type, name, resourceVersion)
        self.modes: list[tuple[WatchMode, str]] = []
        self.events: Counter[str] = Counter()
        self.restarts: Counter[str] = Counter()

    def on_change(self, kind: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        obj = new if new is not None else old
        assert obj is not None
        with self.lock:
            self.changes.append((kind, obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))

    def on_mode(self, _spec: WatchSpec, mode: WatchMode, reason: str) -> None:
        with self.lock:
            self.modes.append((mode, reason))

    def watch_event(self, _resource: str, event_type: str) -> None:
        with self.lock:
            self.events[event_type] += 1

    def watch_restart(self, _resource: str, reason: str) -> None:
        with self.lock:
            self.restarts[reason] += 1


def eventually(check: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait until ``check()`` is true (the reactions under test must take well under 2 s)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def api_for(kube: KubeAPIServer, tmp_path: Path, token: str = ADMIN_TOKEN) -> Api:
    """A syncer Api on the server for a token."""
    return Api(kube_client(kube.write_kubeconfig(tmp_path / f"kc-{token}", token)), timeout=5)


def is_watch(r: RequestRecord) -> bool:
    """Request matcher: a watch."""
    return r.verb == "watch"


@pytest.fixture
def seen() -> Seen:
    """A fresh recorder."""
    return Seen()


@pytest.fixture
def start(kube: KubeAPIServer, tmp_path: Path, seen: Seen) -> Iterator[Callable[..., Informer[Any]]]:
    """Start an informer on the kube fixture (stopped afterwards); keyword args go to it."""
    started: list[Informer[Any]] = []

    def make(spec: WatchSpec = PULL, token: str = ADMIN_TOKEN, sync: bool = True,
             **options: Any) -> Informer[Any]:
        options.setdefault("sleep", lambda _s: time.sleep(0.01))
        if spec.namespace and kube.get_object("namespaces", None, spec.namespace) is None:
            kube.add_namespace(spec.namespace)  # this server answers a LIST in a missing one 404
        informer: Informer[Any] = Informer(
            api_for(kube, tmp_path, token), spec,
            slim_namespace if spec.resource == "namespaces" else slim_secret,
            on_change=seen.on_change, on_mode=seen.on_mode, observer=seen, **options)
        started.append(informer)
        informer.start()
        if sync:
            assert informer.wait_synced(5)
        return informer

    yield make
    for informer in started:
        informer.stop()
        assert informer.reflector.join(2)


