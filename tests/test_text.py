"""Outside text rendered as data (``safe``, ``safe_list``, ``json_safe``) and the one timestamp
format the syncer writes (``rfc3339``, ``rfc3339_micro``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from syncer.text import escape, json_safe, rfc3339, rfc3339_micro, safe, safe_list


@pytest.mark.parametrize(("raw", "shown"), [
    ("nvcr.io", "nvcr.io"),
    ("evil\nERROR forged", "evil\\nERROR forged"),
    ("\x1b[31mred", "\\x1b[31mred"),
    ("\u202eevil", "\\u202eevil"),       # bidi override (Trojan Source)
    ("zero\u200bwidth", "zero\\u200bwidth"),
    ("tab\there", "tab\\there"),
    ("C:\\path\\n", "C:\\path\\n"),      # backslashes are left alone: inert, not reversible
    ("naïve ünïcode", "naïve ünïcode"),  # printable non-ASCII stays readable
])
def test_escape_makes_every_control_visible(raw: str, shown: str) -> None:
    assert escape(raw) == shown == safe(raw)
    assert safe(raw).isprintable()


def test_safe_caps_the_escaped_form_and_counts_what_it_left_out() -> None:
    assert safe("a" * 10, limit=4) == "aaaa…(+6 chars)"
    # 100 control characters would escape to 400: the cap holds on the escaped length.
    capped = safe("\x00" * 100, limit=20)
    assert capped == "\\x00" * 5 + "…(+95 chars)"
    assert safe(12345) == "12345"  # not a string: its str()


def test_safe_list_caps_items_and_each_item() -> None:
    assert safe_list(["a", "b\n"]) == "a, b\\n"
    shown = safe_list([str(i) for i in range(25)], items=3)
    assert shown == "0, 1, 2, …(+22 more)"
    assert safe_list(["x" * 50], limit=5) == "xxxxx…(+45 chars)"


@pytest.mark.parametrize("value", ["plain", "\u009b31m", "\u202e", "\u2028", "\x7f", "😀\u200d", "a\nb"])
def test_json_safe_is_the_same_data_and_inert(value: str) -> None:
    encoded = json.dumps({"k": value}, ensure_ascii=False, indent=2)
    cleaned = json_safe(encoded)
    assert json.loads(cleaned) == {"k": value}
    assert all(ch.isprintable() or ch == "\n" for ch in cleaned)


def test_rfc3339_is_utc_whole_seconds_as_kubernetes_writes_metav1_time() -> None:
    epoch = datetime(2026, 11, 29, 8, 15, 0, 987654, tzinfo=UTC).timestamp()
    assert rfc3339(epoch) == "2026-11-29T08:15:00Z"
    assert rfc3339(0) == "1970-01-01T00:00:00Z"


def test_rfc3339_micro_keeps_microseconds_as_a_lease_microtime() -> None:
    epoch = datetime(2026, 11, 29, 8, 15, 0, 123456, tzinfo=UTC).timestamp()
    assert rfc3339_micro(epoch) == "2026-11-29T08:15:00.123456Z"
    assert datetime.strptime(rfc3339_micro(epoch), "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=UTC).timestamp() == pytest.approx(epoch, abs=1e-6)
