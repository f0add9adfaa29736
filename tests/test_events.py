"""Event rules and messages: escaped, capped, aggregated (against the Kubernetes API test server)."""

from __future__ import annotations

from typing import Any

import pytest

from syncer.config import KubernetesSettings, TargetSettings
from syncer.events import MESSAGE_LIMIT, EventRecorder, EventSpec, event_message
from syncer.kube_api import Api
from syncer.report import Summary, TargetOutcome, TargetReport, events_for
from tests.support.kube_fixtures import kube_client

NS = "default"
HOSTILE = "key \x1b[2J\x1b]0;pwned\x07\nERROR   syncer.sync: fake\u202e\u2028"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def recorder(kube: Any, kube_admin_kubeconfig: str) -> tuple[EventRecorder, Clock]:
    clock = Clock()
    api = Api(kube_client(kube_admin_kubeconfig), timeout=5)
    return EventRecorder(api, KubernetesSettings(event_window=60.0), clock=clock), clock


def test_event_message_escapes_controls_and_bidi() -> None:
    text = event_message(HOSTILE)
    assert text == "key \\x1b[2J\\x1b]0;pwned\\x07\\nERROR   syncer.sync: fake\\u202e\\u2028"


def test_event_message_is_capped_with_a_marker() -> None:
    text = event_message("\x1b" * 5000)
    assert len(text) <= 1024 and text.endswith(f"…(+{5000 - MESSAGE_LIMIT // 4} chars)")


def test_recorded_event_holds_the_escaped_capped_message(recorder: Any, kube: Any) -> None:
    rec, _clock = recorder
    rec.emit(EventSpec(NS, "pull", "MalformedSecret", HOSTILE + "x" * 3000, warning=True))
    (event,) = kube.events(NS)
    assert event["message"].startswith("key \\x1b[2J") and "\n" not in event["message"]
    assert len(event["message"]) <= 1024 and "…(+" in event["message"]
    assert event["type"] == "Warning" and event["involvedObject"]["name"] == "pull"


def test_repeats_within_the_window_bump_one_event_and_later_ones_start_a_new_one(
        recorder: Any, kube: Any) -> None:
    rec, clock = recorder
    spec = EventSpec(NS, "pull", "SyncFailed", HOSTILE, warning=True)
    rec.emit(spec)
    clock.now += 30
    rec.emit(spec)
    events = kube.events(NS)
    assert len(events) == 1 and events[0]["count"] == 2
    clock.now += 120  # past the 60 s window
    rec.emit(spec)
    assert [e["count"] for e in kube.events(NS)] == [2, 1]


def test_events_for_a_malformed_target_quotes_the_detail() -> None:
    report = TargetReport(TargetSettings(namespace=NS, name="pull"), TargetOutcome.MALFORMED,
                          detail=f"existing secret is malformed ({HOSTILE}); left untouched")
    (spec,) = events_for(Summary([], [report]))
    assert spec.reason == "MalformedSecret" and spec.warning
    assert "\\x1b[2J" in event_message(spec.message)
