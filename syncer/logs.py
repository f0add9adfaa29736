"""Logging setup: readable text for humans, one JSON object per line for pipelines.

Both formats are a last line of defence for text from outside (Vault, Secrets, files,
registries): every message, ``extra`` field and traceback is scrubbed of known secret values
and credential-shaped text, and its control characters are escaped, so a forged newline can
never start a fake log line and an escape sequence never reaches the reader's terminal.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import sys
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from typing import TextIO

from syncer.credential import REDACTED, Credential
from syncer.text import escape

# Attributes every LogRecord has; anything else was passed via ``extra=`` and is emitted as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

CONTINUATION = "  | "
"""Prefix of every traceback line in text format: visibly part of the record above it."""

_MAX_SENSITIVE = 4096
"""Secret values remembered for scrubbing; the oldest are forgotten (rotations add new ones)."""

# Credential-shaped text a library might put in an exception (a request dump, a JSON body).
_PATTERNS = [
    re.compile(r"(?i)(authorization\s*[:=]\s*['\"]?(?:basic|bearer|token)\s+)[^\s'\",;]+"),
    re.compile(r"(?i)(x-vault-token\s*[:=]\s*['\"]?)[^\s'\",;]+"),
    re.compile(r"(?i)([\"'](?:password|auth|identitytoken|registrytoken|access_token|refresh_token|token"
               r"|client_token|secret_id)[\"']\s*:\s*[\"'])[^\"']*"),
    re.compile(r"(?i)(\b(?:password|passwd|secret_id|access_token|refresh_token)=)[^\s&,;'\"]+"),
]


class _Sensitive:
    """Secret values that must never appear in a log line, bounded (see ``_MAX_SENSITIVE``)."""

    def __init__(self) -> None:
        self._values: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, *values: str) -> None:
        with self._lock:
            for value in values:
                if len(value) >= 4:  # shorter values would redact ordinary words
                    self._values[value] = None
                    self._values.move_to_end(value)
            while len(self._values) > _MAX_SENSITIVE:
                self._values.popitem(last=False)

    def scrub(self, text: str) -> str:
        with self._lock:
            values = list(self._values)
        for value in values:
            if value in text:
                text = text.replace(value, REDACTED)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        return text


_SENSITIVE = _Sensitive()


def protect(credential: Credential) -> None:
    """Remember a credential's password (and its base64 ``auth`` form) to scrub from every log line."""
    if credential.password:
        auth = base64.b64encode(f"{credential.username}:{credential.password}".encode()).decode()
        _SENSITIVE.add(credential.password, auth)


def clean(text: str) -> str:
    """A log message as emitted: secrets scrubbed, control characters escaped."""
    return escape(_SENSITIVE.scrub(text))


def clean_traceback(text: str) -> list[str]:
    """A formatted traceback as lines, each scrubbed and escaped (outside text in an exception's
    message cannot add a line that looks like a record of its own)."""
    return [escape(line) for line in _SENSITIVE.scrub(text).split("\n")]


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``; a traceback follows with every line prefixed ``  | ``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging API
        record.message = clean(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: logging._SysExcInfoType) -> str:  # noqa: N802 - logging API
        return "\n".join(CONTINUATION + line for line in clean_traceback(super().formatException(ei)))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging API
        return "\n".join(CONTINUATION + line for line in clean_traceback(stack_info))


class JsonFormatter(logging.Formatter):
    """Stable keys: ``time``, ``level``, ``logger``, ``message``, then any ``extra`` fields;
    with an exception also ``error_type`` and ``exception`` (the traceback, on the same line)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": clean(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, int | float | bool | None) else clean(str(value))
        if record.exc_info and record.exc_info[0] is not None:
            out["error_type"] = record.exc_info[0].__name__
            out["exception"] = "\n".join(clean_traceback(self.formatException(record.exc_info)))
        elif record.exc_text:
            out["exception"] = "\n".join(clean_traceback(record.exc_text))
        if record.stack_info:
            out["stack"] = "\n".join(clean_traceback(record.stack_info))
        return json.dumps(out, ensure_ascii=False)


def setup(fmt: str, level: str, stream: TextIO | None = None) -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Client libraries log request details (URLs, sometimes headers) at DEBUG; keep them quiet.
    for noisy in ("urllib3", "kubernetes", "hvac", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
