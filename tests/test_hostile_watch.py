"""Hostile or broken API servers against the watch client: one test per row.

Each row makes the test API server write something a real one never would into an open watch
(``kube.watches.inject``) and checks that the reflector cuts it off with a restart reason, keeps
its memory bounded, loses no event, leaks nothing into logs, and recovers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from syncer.informer import Informer
from tests.support.kubeapi import KubeAPIServer
from tests.support.watch_fixtures import Seen, eventually

SENTINEL = "hostile-Sentinel-value-9f3"


def endless(piece: bytes, counter: list[int] | None = None) -> Iterator[bytes]:
    """The same piece forever (the server stops when the client hangs up); counts what it sent."""
    while True:
        if counter is not None:
            counter.append(len(piece))
        yield piece


@pytest.fixture
def watched(kube: KubeAPIServer, start: Callable[..., Informer[Any]]) -> Callable[..., Informer[Any]]:
    """A synced informer on a.pull with one open watch (options go to the informer)."""
    def make(**options: Any) -> Informer[Any]:
        kube.put_secret("a", "pull", data={"k": "0"})
        informer = start(**options)
        eventually(lambda: kube.watches.open_count() == 1)
        return informer
    return make


def test_an_oversize_line_is_cut_at_the_cap(
    kube: KubeAPIServer, watched: Callable[..., Informer[Any]], seen: Seen
) -> None:
    """Attack: one 'event' line far longer than the cap (16 x, then a newline). Safe: the
    reflector stops reading at the cap (too_large), relists, and the cache is intact."""
    informer = watched(max_line=64 * 1024)
    kube.watches.inject([b'{"type":"ADDED","object":"' + b"x" * 65536] + [b"x" * 65536] * 15 + [b'"}\n'])
    eventually(lambda: seen.restarts["too_large"] == 1)
    eventually(lambda: kube.count("list") == 2)
    assert informer.wait_synced(5) and informer.get("a", "pull") is not None


def test_garbage_json_restarts_from_the_last_version_without_losing_events(
    kube: KubeAPIServer, watched: Callable[..., Informer[Any]], seen: Seen, caplog: pytest.LogCaptureFixture
) -> None:
    """Attack: lines that are not JSON, or JSON that is not an event (wrong type, non-object,
    no resourceVersion), one holding a secret-looking value. Safe: each restarts the watch
    (decode) from the last good resourceVersion; a change made meanwhile still arrives once; the
    line's content never reaches a log."""
    caplog.set_level(logging.DEBUG)
    informer = watched()
    rows = [b'{"type":"ADDED","object":{"metadata":{"password":"' + SENTINEL.encode() + b'"\n',
            b'{"type":"HACKED","object":{}}\n', b'{"type":"ADDED","object":"x"}\n',
            b'{"type":"MODIFIED","object":{"metadata":{"name":"pull","namespace":"a"}}}\n', b"[1]\n"]
    for n, row in enumerate(rows, start=1):
        eventually(lambda n=n: kube.count("watch") == n and kube.watches.open_count() == 1)  # type: ignore[misc]
        kube.watches.inject([row])
        eventually(lambda n=n: seen.restarts["decode"] == n)  # type: ignore[misc]
    kube.put_secret("a", "pull", data={"k": "1"})
    eventually(lambda: informer.get("a", "pull")["data"]["k"] == "MQ==")  # type: ignore[index]
    assert [k for k, _, _ in seen.changes] == ["ADDED", "MODIFIED"]
    assert kube.count("list") == 1
    assert SENTINEL not in caplog.text


def test_an_endless_stream_without_newline_is_cut(
    kube: KubeAPIServer, watched: Callable[..., Informer[Any]], seen: Seen
) -> None:
    """Attack: a stream that never sends a newline and never ends. Safe: the client hangs up
    after the cap (the server could only write a bounded amount) instead of buffering forever."""
    watched(max_line=256 * 1024)
    sent: list[int] = []
    kube.watches.inject(endless(b"{" * 16384, sent))
    eventually(lambda: seen.restarts["too_large"] == 1)
    eventually(lambda: kube.watches.open_count() == 1 and kube.count("watch") == 2)
    assert sum(sent) < 64 * 1024 * 1024, "the client stopped reading"


def test_a_slow_drip_stream_is_cut_at_its_deadline(
    kube: KubeAPIServer, watched: Callable[..., Informer[Any]], seen: Seen
) -> None:
    """Attack: a byte every 50 ms (never a whole line, never silent long enough for the read
    timeout), ignoring timeoutSeconds. Safe: the reflector ends the stream at timeoutSeconds +
    grace (deadline) and watches again."""
    watched(timeout_seconds=1, grace=0.3, rand=lambda: 0.0)
    began = time.monotonic()
    kube.watches.inject(endless(b'{"type"'), delay=0.05)
    eventually(lambda: seen.restarts["deadline"] == 1)
    assert time.monotonic() - began < 3


def test_a_silent_stream_hits_the_read_timeout(
    kube: KubeAPIServer, watched: Callable[..., Informer[Any]], seen: Seen
) -> None:
    """Attack: a server that keeps the stream open but sends nothing past timeoutSeconds (a
    stuck proxy). Safe: the read timeout (timeoutSeconds + grace) ends it (stalled); no hang."""
    watched(timeout_seconds=1, grace=0.3, rand=lambda: 0.0)
    kube.watches.inject([b"{", b"}"], delay=10)
    eventually(lambda: seen.restarts["stalled"] == 1)


def test_an_error_event_that_is_not_expired_restarts_without_relisting(
    kube: KubeAPIServer, watched: Callable[..., Informer[Any]], seen: Seen
) -> None:
    """Attack: an ERROR event with a 500 Status (or a Status without a code). Safe: a restart
    (error) with backoff from the same resourceVersion, not a relist storm."""
    informer = watched()
    kube.watches.inject([b'{"type":"ERROR","object":{"kind":"Status","code":500}}\n'])
    eventually(lambda: seen.restarts["error"] == 1 and kube.watches.open_count() == 1)
    assert kube.count("list") == 1 and informer.synced
