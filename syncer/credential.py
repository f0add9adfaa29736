"""The registry login that flows from Vault to the probe and the secret.

Kept in its own tiny module so every layer can share it without importing
each other. Credential objects redact themselves: a ``repr`` or f-string of
one never shows the password, so an accidental log line cannot leak it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

REDACTED = "<redacted>"


@dataclass(frozen=True)
class Credential:
    """A username/password pair for one registry."""

    username: str
    """Login name, e.g. ``$oauthtoken`` for NGC or ``robot$ci`` for Harbor."""

    password: str = field(repr=False)
    """The secret. Never logged, never put in an exception message."""

    def __repr__(self) -> str:
        return f"Credential(username={self.username!r}, password={REDACTED})"

    __str__ = __repr__

    def fingerprint(self) -> str:
        """A short, non-reversible tag that changes when the password changes."""
        return hashlib.sha256(self.password.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class VersionedCredential:
    """A credential as read from Vault, with the KV v2 version it came from."""

    credential: Credential
    """The login itself."""

    version: int | None
    """KV v2 version number; ``None`` for KV v1."""
