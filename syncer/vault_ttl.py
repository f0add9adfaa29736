"""When a Vault token needs renewing or replacing: pure arithmetic over a clock."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

RENEW_FRACTION = 1 / 3
"""Renew once less than this share of the token's full TTL remains."""

EXPIRY_MARGIN = 5.0
"""Seconds: a token with less left than this (or a tenth of its full TTL, if that is
smaller) is treated as already expired."""

Due = Literal["expired", "renew", "relogin"] | None


class TokenClock:
    """The TTL of the current token as last reported by Vault, and what it calls for."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._ttl: float | None = None
        """Seconds left at ``_at``; ``math.inf`` for a token that never expires."""
        self._at = 0.0
        self.full = 0.0
        """The token's full TTL (creation TTL), the base of the renewal thresholds."""
        self.renewable = False
        self.renew_exhausted = False
        """Renewing is known not to help (max TTL reached, or renewal refused)."""

    def clear(self) -> None:
        self._ttl = None
        self.renewable = False
        self.renew_exhausted = False

    def set(self, ttl: float, renewable: bool, full: float) -> None:
        """Record a TTL from a login or renewal; 0 means "never expires"."""
        if ttl <= 0:
            ttl = full = math.inf
        self._ttl = ttl
        self._at = self._clock()
        self.full = full
        self.renewable = renewable

    def from_lookup(self, data: Mapping[str, Any]) -> None:
        """Record the TTL of a ``lookup-self`` answer."""
        ttl = float(data.get("ttl") or 0)
        full = float(data.get("creation_ttl") or 0)
        if ttl <= 0:
            self.set(math.inf, bool(data.get("renewable")), full=math.inf)
        else:
            self.set(ttl, bool(data.get("renewable")), full=max(full, ttl))

    def exhaust(self) -> None:
        self.renew_exhausted = True

    def remaining(self) -> float | None:
        """Seconds left now (``math.inf`` if it never expires); None if unknown."""
        if self._ttl is None:
            return None
        if math.isinf(self._ttl):
            return math.inf
        return max(0.0, self._ttl - (self._clock() - self._at))

    def capped(self, ttl: float) -> bool:
        """After a renewal that granted ``ttl``: the max TTL left it below the threshold."""
        return ttl < self.full * RENEW_FRACTION

    def due(self) -> Due:
        """What the token needs now: nothing, a login, a renewal, or a login because it cannot
        be renewed."""
        remaining = self.remaining()
        if remaining is None or math.isinf(remaining):
            return None
        if remaining <= min(EXPIRY_MARGIN, self.full * 0.1):
            return "expired"
        if remaining >= self.full * RENEW_FRACTION:
            return None
        return "renew" if self.renewable and not self.renew_exhausted else "relogin"

    def describe(self) -> str:
        if self._ttl is None:
            return "ttl unknown"
        if math.isinf(self._ttl):
            return "no expiry"
        return f"ttl {int(self._ttl)}s"
