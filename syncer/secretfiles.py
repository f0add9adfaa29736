"""Local files that hold secrets or trust: credential files and CA bundles.

Pure helpers with no client library: the Vault session reads its token, secret ID and
JWT files through ``read_secret_file``; ``load_ca`` checks a PEM bundle once at start-up
(the probe's transport may share it). A credential file must be a regular file of
bounded size: a FIFO would block the reader forever and ``/dev/zero`` would exhaust its
memory (issue 16, item 5).
"""

from __future__ import annotations

import os
import ssl
import stat

MAX_SECRET_FILE_BYTES = 64 * 1024
"""A token, secret ID, JWT or key larger than this is refused (real ones are < 16 KiB)."""


class SecretFileError(OSError):
    """A credential file is not a regular file or is too large. ``strerror`` says which."""


def read_secret_file(path: str, limit: int = MAX_SECRET_FILE_BYTES) -> str:
    """The content of the regular file ``path`` (UTF-8, surrounding whitespace stripped).

    Opened with ``O_NONBLOCK`` so a FIFO cannot block the open, then refused unless
    ``fstat`` says it is a regular file; at most ``limit`` bytes are accepted.
    """
    return read_secret_bytes(path, limit).decode("utf-8", errors="replace").strip()


def read_secret_bytes(path: str, limit: int = MAX_SECRET_FILE_BYTES) -> bytes:
    """Like ``read_secret_file`` but the raw bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretFileError(0, "not a regular file", path)
        if info.st_size > limit:
            raise SecretFileError(0, f"larger than {limit} bytes", path)
        data = os.read(fd, limit + 1)
        if len(data) > limit:
            raise SecretFileError(0, f"larger than {limit} bytes", path)
        return data
    finally:
        os.close(fd)


def readable_by_others(path: str) -> bool:
    """True when group or others may read (or write) ``path``: ``mode & 0o077``."""
    return bool(os.stat(path).st_mode & 0o077)


def load_ca(ca_cert: str, key: str, context: ssl.SSLContext | None = None) -> ssl.SSLContext:
    """Load ``ca_cert`` (a PEM file, or an OpenSSL hashed directory) into ``context`` (a new
    default context when None) and return it. The one CA loader for Vault and the probe.

    Raises ``ValueError`` naming the config ``key``, so a bad path fails at start-up rather
    than with an OSError on the first request.
    """
    context = context or ssl.create_default_context()
    where = {"capath": ca_cert} if os.path.isdir(ca_cert) else {"cafile": ca_cert}
    try:
        context.load_verify_locations(**where)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{key} {ca_cert!r} cannot be loaded as PEM ({exc})") from None
    return context
