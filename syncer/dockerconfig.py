"""The ``.dockerconfigjson`` document: parse, build entries, merge per host. Pure, no I/O.

Shape (what kubelet and docker read)::

    {"auths": {"KEY": {"username": .., "password": .., "auth": base64("user:pass"), "email": ..}},
     ...other top-level keys that belong to someone else...}

Kubelet matches keys by host (glob per label), port and path prefix, ignoring
the scheme and a ``/v1/`` or ``/v2/`` suffix, see
https://kubernetes.io/docs/concepts/containers/images/#config-json. The merge
therefore treats ``https://nvcr.io/v1/`` and ``nvcr.io`` as the same registry
and updates the existing spelling in place instead of adding a twin.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from syncer.credential import Credential
from syncer.hosts import normalize_key as normalize_key  # re-exported: auths keys are matched here

# Fields that would shadow username/password in docker's own client (an OAuth
# identity token wins over the password), so a managed entry must not keep them.
_SHADOWING_FIELDS = ("identitytoken", "registrytoken")

Document = dict[str, Any]


class MalformedError(ValueError):
    """The existing document cannot be merged safely. The message never quotes its content."""


class Change(StrEnum):
    """What a merge does to one managed host."""

    ADDED = "added"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class HostChange:
    """The effect of a merge on one host, described without secret material."""

    host: str
    """The registry host as configured."""
    change: Change
    """Added, updated or unchanged."""
    username_changed: bool = False
    """The username differs from before."""
    password_changed: bool = False
    """The password differs from before."""
    username: str = ""
    """The username now in the entry (not secret; shown so operators can check it)."""

    def describe(self) -> str:
        """``nvcr.io: updated (password changed) as $oauthtoken`` - safe to print."""
        what = [w for w, on in (("username", self.username_changed),
                                ("password", self.password_changed)) if on]
        suffix = f" ({' and '.join(what)} changed)" if what and self.change is Change.UPDATED else ""
        user = f" as {self.username}" if self.username and self.change is not Change.UNCHANGED else ""
        return f"{self.host}: {self.change.value}{suffix}{user}"


def empty() -> Document:
    """The document of a secret that does not exist yet."""
    return {"auths": {}}


def parse(raw: bytes | str) -> Document:
    """Decode and validate an existing document. Raises MalformedError."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise MalformedError("not valid JSON") from None
    return validate(doc)


def validate(doc: object) -> Document:
    """Check a decoded document has the shape a merge relies on. Raises MalformedError."""
    if not isinstance(doc, dict):
        raise MalformedError("top level is not a JSON object")
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        raise MalformedError('has no "auths" object')
    bad = sorted(key for key, entry in auths.items() if not isinstance(entry, dict))
    if bad:
        raise MalformedError(f'"auths" entries are not objects: {", ".join(bad)}')
    return doc


def serialize(doc: Document) -> bytes:
    """One line of compact UTF-8 JSON with no trailing newline, as the manual procedure demands."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def auth_value(credential: Credential) -> str:
    """``base64("user:pass")`` - the ``auth`` field docker and kubelet read."""
    raw = f"{credential.username}:{credential.password}".encode()
    return base64.b64encode(raw).decode("ascii")


def find_key(doc: Mapping[str, Any], host: str) -> str | None:
    """The existing ``auths`` key for ``host``: the exact key, else one kubelet treats as equal."""
    auths = doc.get("auths", {})
    if host in auths:
        return host
    wanted = normalize_key(host)
    return next((key for key in auths if normalize_key(key) == wanted), None)


def entry_credential(entry: Mapping[str, Any]) -> Credential | None:
    """The login an existing entry carries, from username/password or else from ``auth``."""
    username, password = entry.get("username"), entry.get("password")
    if isinstance(username, str) and isinstance(password, str):
        return Credential(username, password)
    auth = entry.get("auth")
    if isinstance(auth, str):
        try:
            user, sep, pw = base64.b64decode(auth, validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        if sep:
            return Credential(user, pw)
    return None


def build_entry(existing: Mapping[str, Any] | None, credential: Credential, email: str) -> dict[str, Any]:
    """The entry to store: the new login, plus fields of the old entry it does not own."""
    entry = {k: v for k, v in (existing or {}).items() if k not in _SHADOWING_FIELDS}
    entry.update(username=credential.username, password=credential.password,
                 auth=auth_value(credential))
    if email:
        entry["email"] = email
    return entry


def _copy_auths(doc: Document) -> Document:
    """A new document with a new ``auths`` dict; entries and other keys are shared, not copied.

    Nothing here mutates a shared value (new entries are new dicts), so this is as safe as a
    deep copy; a deep copy of 500 secrets x 50 hosts was the largest CPU cost of a steady cycle.
    """
    copied = dict(doc)
    copied["auths"] = dict(doc.get("auths") or {})
    return copied


def merge(doc: Document, logins: Mapping[str, tuple[Credential, str]]) -> tuple[Document, list[HostChange]]:
    """Set each ``host -> (credential, email)`` in a copy of ``doc``.

    Every other host and every other top-level key is carried over untouched.
    Returns the new document and one HostChange per host, decided on decoded
    content, never on bytes.
    """
    merged = _copy_auths(doc)
    auths: dict[str, Any] = merged["auths"]
    changes = []
    for host, (credential, email) in logins.items():
        key = find_key(merged, host) or host
        old = auths.get(key)
        new = build_entry(old, credential, email)
        auths[key] = new
        changes.append(_describe(host, old, new, credential))
    return merged, changes


def _describe(host: str, old: Mapping[str, Any] | None, new: Mapping[str, Any],
              credential: Credential) -> HostChange:
    user = credential.username
    if old is None:
        return HostChange(host, Change.ADDED, True, True, user)
    if old == new:
        return HostChange(host, Change.UNCHANGED, username=user)
    before = entry_credential(old)
    return HostChange(
        host,
        Change.UPDATED,
        username_changed=before is None or before.username != credential.username,
        password_changed=before is None or before.password != credential.password,
        username=user,
    )


def remove(doc: Document, hosts: list[str]) -> tuple[Document, list[str]]:
    """A copy of ``doc`` without the given hosts; returns the keys actually removed."""
    pruned = _copy_auths(doc)
    removed = []
    for host in hosts:
        key = find_key(pruned, host)
        if key is not None:
            del pruned["auths"][key]
            removed.append(key)
    return pruned, removed
