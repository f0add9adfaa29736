"""Outside text rendered as data. Pure: no I/O.

Key names, usernames and error text from Vault, ``auths`` keys and annotations from Secrets
(which tenants may edit), file contents and registry answers all end up in terminal output,
logs and Events. Printed raw, a newline forges a log line (``evil\\nERROR ...``), an ANSI
escape rewrites an operator's terminal, a bidi override reorders what they read (CVE-2021-42574,
"Trojan Source"). ``safe`` makes every such character visible as an escape and caps the length.

Backslashes are deliberately left alone: the result only has to be inert, not reversible, and
doubling backslashes would make Windows paths and regexes in messages unreadable and escape
twice where a value passes through two boundaries (a report line that is logged too).

The other text the syncer writes for others to read, timestamps, has its one format here too:
RFC 3339 in UTC as Kubernetes writes it (``rfc3339``, ``rfc3339_micro``).
"""

from __future__ import annotations

from datetime import UTC, datetime

DEFAULT_LIMIT = 200
"""Characters kept of one outside value (an auths key, a username, a registry's error text)."""

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    """One character as shown: itself if printable, else a visible escape."""
    if ch.isprintable():
        # isprintable() is False for C0/C1 controls, DEL, format characters (zero-width,
        # bidi embeddings/overrides/isolates, BOM), U+2028/2029, surrogates, unassigned code
        # points and every space but U+0020: exactly what may not reach a terminal raw.
        return ch
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(value: object) -> str:
    """``value`` as text with every non-printable character escaped; no length cap."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the common case, in C
        return text
    return "".join(_escape_char(ch) for ch in text)


def safe(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """``value`` escaped and capped at ``limit`` output characters plus a ``…(+N chars)`` marker.

    The cap counts the escaped form, so a value made of control characters cannot grow six-fold;
    N counts the original characters left out.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit and text.isprintable():
        return text
    out: list[str] = []
    used = 0
    for index, ch in enumerate(text):
        piece = _escape_char(ch)
        if used + len(piece) > limit:
            return "".join(out) + f"…(+{len(text) - index} chars)"
        out.append(piece)
        used += len(piece)
    return "".join(out)


def safe_list(values: list[str] | tuple[str, ...], limit: int = DEFAULT_LIMIT, items: int = 20) -> str:
    """``a, b, c`` with each item made safe, at most ``items`` of them plus ``(+N more)``."""
    shown = ", ".join(safe(v, limit) for v in values[:items])
    return shown + (f", …(+{len(values) - items} more)" if len(values) > items else "")


def json_safe(encoded: str) -> str:
    """JSON text (from ``json.dumps(..., ensure_ascii=False)``) with every non-printable character
    that json leaves raw (DEL, C1 controls such as CSI U+009B, bidi and zero-width characters,
    U+2028/2029) written as a ``\\uXXXX`` escape: the same data for a parser, inert on a terminal.
    Newlines are left alone: inside strings json has escaped them already, so the remaining
    ones are the indentation's."""
    if encoded.isprintable():
        return encoded
    return "".join(ch if ch.isprintable() or ch == "\n" else _json_escape(ch) for ch in encoded)


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # a UTF-16 surrogate pair, as JSON spells code points above U+FFFF
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def rfc3339(epoch: float) -> str:
    """``2026-11-29T08:15:00Z``: a ``metav1.Time`` (Event timestamps, our ``last-write``
    annotations), whole seconds."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_micro(epoch: float) -> str:
    """``2026-11-29T08:15:00.123456Z``: a ``metav1.MicroTime`` (a Lease's ``renewTime``)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
