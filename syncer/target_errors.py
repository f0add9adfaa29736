"""Why a target store could not read or write a target: one error for Secrets and files alike.

Kept apart from both stores (``syncer.kube`` for Secrets, ``syncer.filetarget`` for docker
config files) so that the engine handles a failed target one way, whatever holds it. The
kind's value is the ``reason`` of a failed target in summaries, Events and metrics: a contract.
"""

from __future__ import annotations

from enum import StrEnum


class TargetErrorKind(StrEnum):
    """Why a request about a target (or another object of its store) failed."""

    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    """Changed by someone else since it was read (409, or a file's token no longer matches)."""
    ALREADY_EXISTS = "already_exists"
    INVALID = "invalid"
    RATE_LIMITED = "rate_limited"
    EXPIRED = "expired"
    """410: a LIST's continue token is older than the API server's compacted history."""
    SERVER = "server_error"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    WRONG_TYPE = "wrong_type"
    TOO_LARGE = "too_large"
    IO_ERROR = "io_error"
    """A file could not be read or written for another operating-system reason."""


class TargetError(Exception):
    """A failed request about one object; the message names it (``what ref``) and the reason."""

    def __init__(self, kind: TargetErrorKind, ref: str, message: str, what: str) -> None:
        super().__init__(f"{what} {ref}: {kind.value}: {message}")
        self.kind = kind
        self.ref = ref
