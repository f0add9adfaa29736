"""Log formatters: one record per line, tracebacks kept (JSON: an ``exception`` field), secrets
scrubbed and outside text escaped in every part of a record."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from syncer import logs
from syncer.credential import Credential
from tests.support.world import sentinel

FORGED = "boom\n2026-01-01 00:00:00,000 ERROR   syncer.sync: fake line \x1b[2J\u2028"
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


@pytest.fixture
def capture() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield io.StringIO(), logging.getLogger("syncer.test")
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def fail_with(message: str) -> None:
    raise RuntimeError(message)


def log_exception(log: logging.Logger, message: str) -> None:
    try:
        fail_with(message)
    except RuntimeError:
        log.exception("target %s failed", "ns/name")


def test_json_exception_is_a_field_on_the_same_line(capture: tuple[io.StringIO, logging.Logger]) -> None:
    stream, log = capture
    logs.setup("json", "info", stream)
    log_exception(log, FORGED)
    lines = stream.getvalue().splitlines()  # splitlines also splits at U+2028: it must not be raw
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["error_type"] == "RuntimeError" and record["message"] == "target ns/name failed"
    assert record["exception"].startswith("Traceback (most recent call last):")
    assert "in fail_with" in record["exception"]
    assert record["exception"].endswith(
        "RuntimeError: boom\n2026-01-01 00:00:00,000 ERROR   syncer.sync: fake line \\x1b[2J\\u2028")


def test_json_scrubs_a_registered_password_and_credential_shapes_from_every_field(
        capture: tuple[io.StringIO, logging.Logger]) -> None:
    stream, log = capture
    password = sentinel("logs")
    logs.protect(Credential("robot$ci", password))
    logs.setup("json", "info", stream)
    leak = f"request failed: {password} Authorization: Basic cm9ib3Q6eHl6 'password': 'hunter22'"
    log_exception(log, leak)
    log.warning("retrying %s", leak, extra={"detail": leak})
    out = stream.getvalue()
    for secret in (password, "cm9ib3Q6eHl6", "hunter22"):
        assert secret not in out
    assert out.count("<redacted>") == 9 and len(out.splitlines()) == 2


def test_text_traceback_lines_are_visibly_part_of_the_record(
        capture: tuple[io.StringIO, logging.Logger]) -> None:
    stream, log = capture
    logs.setup("text", "info", stream)
    log_exception(log, FORGED)
    lines = stream.getvalue().splitlines()
    assert RECORD.match(lines[0]) and lines[0].endswith("target ns/name failed")
    assert len(lines) > 2 and all(line.startswith(logs.CONTINUATION) for line in lines[1:])
    assert lines[1] == "  | Traceback (most recent call last):"
    assert "\x1b" not in stream.getvalue() and "\\x1b[2J\\u2028" in lines[-1]
    assert not [line for line in lines[1:] if RECORD.match(line)]


def test_text_message_with_a_forged_newline_stays_one_line(
        capture: tuple[io.StringIO, logging.Logger]) -> None:
    stream, log = capture
    logs.setup("text", "info", stream)
    log.warning("auths key %s", "evil\nERROR fake \x1b[31m\x9b")
    (line,) = stream.getvalue().splitlines()
    assert line.endswith("auths key evil\\nERROR fake \\x1b[31m\\x9b")


def test_sensitive_values_are_bounded() -> None:
    """Rotations add new passwords for the process lifetime: the set keeps only the newest."""
    store = logs._Sensitive()
    for i in range(logs._MAX_SENSITIVE + 10):
        store.add(f"value-{i:06d}")
    assert store.scrub("value-000000 value-000010") == "value-000000 <redacted>"
