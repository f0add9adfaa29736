"""Parse ``WWW-Authenticate`` challenges (RFC 7235 section 2.1): pure, no I/O.

Scheme and parameter names are case-insensitive; registries send bare URLs as realm values and
several challenges per line, and requests merges repeated header lines with ", ", so the parser
accepts a list of challenges per line.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge (RFC 7235 section 2.1)."""

    scheme: str
    """Lower-cased auth scheme, e.g. ``basic`` or ``bearer``."""
    params: Mapping[str, str] = field(default_factory=dict)
    """auth-params with lower-cased names; values unquoted. Empty for token68 challenges."""


class ChallengeError(ValueError):
    """A ``WWW-Authenticate`` value does not follow RFC 7235 syntax."""


_TCHAR = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)
_TOKEN68 = frozenset("-._~+/" + string.ascii_letters + string.digits)


class _Cursor:
    """A tiny scanner over one header value."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    @property
    def done(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return "" if self.done else self.text[self.pos]

    def skip_ws(self) -> bool:
        start = self.pos
        while not self.done and self.text[self.pos] in " \t":
            self.pos += 1
        return self.pos > start

    def skip_separators(self) -> None:
        """Skip OWS and commas: RFC 7230 lists may hold empty elements."""
        while not self.done and self.text[self.pos] in " \t,":
            self.pos += 1

    def token(self) -> str:
        start = self.pos
        while not self.done and self.text[self.pos] in _TCHAR:
            self.pos += 1
        return self.text[start : self.pos]

    def quoted(self) -> str:
        """A quoted-string starting at the cursor, with backslash escapes resolved."""
        self.pos += 1  # opening quote
        out: list[str] = []
        while not self.done:
            char = self.text[self.pos]
            self.pos += 1
            if char == '"':
                return "".join(out)
            if char == "\\":
                if self.done:
                    break
                char = self.text[self.pos]
                self.pos += 1
            out.append(char)
        raise ChallengeError("unterminated quoted string")

    def bare_value(self) -> str:
        """An unquoted parameter value. RFC 7235 wants a token, but some servers send bare
        URLs (``realm=https://...``); accept anything up to the next separator."""
        start = self.pos
        while not self.done and self.text[self.pos] not in ' \t,"':
            self.pos += 1
        return self.text[start : self.pos]

    def token68(self) -> bool:
        """Consume a token68 (e.g. ``Negotiate abc==``) if one ends the challenge here."""
        start = self.pos
        while not self.done and self.text[self.pos] in _TOKEN68:
            self.pos += 1
        if self.pos == start:
            return False
        while self.peek() == "=":
            self.pos += 1
        self.skip_ws()
        if self.done or self.peek() == ",":
            return True
        self.pos = start
        return False


def _parse_one(value: str) -> list[Challenge]:
    cur = _Cursor(value)
    challenges: list[Challenge] = []
    while True:
        cur.skip_separators()
        if cur.done:
            return challenges
        scheme = cur.token()
        if not scheme:
            raise ChallengeError(f"expected an auth scheme at offset {cur.pos}")
        params: dict[str, str] = {}
        spaced = cur.skip_ws()
        if not cur.done and cur.peek() != ",":
            if not spaced:
                raise ChallengeError(f"unexpected character after scheme at offset {cur.pos}")
            if not cur.token68():
                first = True
                while True:
                    mark = cur.pos
                    name = cur.token()
                    if not name:
                        raise ChallengeError(f"expected a parameter name at offset {cur.pos}")
                    cur.skip_ws()
                    if cur.peek() != "=":
                        if first:
                            raise ChallengeError(f"parameter without value at offset {mark}")
                        cur.pos = mark  # a new challenge starts here ("Negotiate, Basic ...")
                        break
                    cur.pos += 1
                    cur.skip_ws()
                    param = cur.quoted() if cur.peek() == '"' else cur.bare_value()
                    if cur.text[cur.pos - 1 : cur.pos] != '"' and not param:
                        raise ChallengeError(f"parameter without value at offset {mark}")
                    params.setdefault(name.lower(), param)  # names must be unique; first wins
                    first = False
                    cur.skip_ws()
                    if cur.done:
                        break
                    if cur.peek() != ",":
                        raise ChallengeError(f"expected ',' at offset {cur.pos}")
                    cur.skip_separators()
                    if cur.done:
                        break
        challenges.append(Challenge(scheme.lower(), params))


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header lines into challenges, in order.

    Each line may hold several comma-separated challenges (so a value that requests merged with
    ", " parses the same). Scheme and parameter names are case-insensitive and returned in lower
    case. Raises ``ChallengeError`` when any line is malformed.
    """
    out: list[Challenge] = []
    for value in values:
        out.extend(_parse_one(value))
    return out
