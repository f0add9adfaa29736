"""File targets: keep a docker ``config.json`` on a build host or runner in sync, atomically.

A write never leaves a partial file behind, even if the process is killed at any point:
the new content goes to a temporary file in the same directory, is fsynced, chmod 0600 and
chowned to the old file's owner, then renamed over the target (an atomic replace on POSIX),
and the directory is fsynced so the rename survives a crash. Keys the syncer does not manage
(``credHelpers``, ``credsStore``, ``HttpHeaders``, unknown ones) are kept by the same merge
rules as for Secrets.

What a Secret keeps in annotations and in its ``.dockerconfigjson.previous`` key, a file
target keeps in two hidden siblings, both mode 0600 and owned like the target:
``.NAME.syncer-state`` (managed hosts, KV versions, last write; no secret material) and
``.NAME.previous`` (the content before the last write, for ``syncer rollback --file``).

Optimistic concurrency: a snapshot carries a token (inode, mtime, size and a SHA-256 of the
content); a write whose file no longer matches the token raises a CONFLICT KubeError and the
caller re-reads and re-merges, like after a 409 from the API server.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from syncer import dockerconfig
from syncer.kube import SECRET_TYPE, KubeError, KubeErrorKind

log = logging.getLogger(__name__)

FILE_MODE = 0o600
STALE_TEMP_AGE = 3600.0
"""Seconds after which a leftover temporary file (from a killed writer) is removed."""
_TEMP_MARK = ".syncer-tmp-"


@dataclass(frozen=True)
class FileSnapshot:
    """A docker config file as read, with what is needed to write it back conditionally."""

    path: str
    """The resolved path of the file."""
    token: str
    """Concurrency token: changes whenever the file is replaced or edited."""
    payload: bytes | None = field(repr=False)
    """The file's bytes."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    """The syncer's bookkeeping for this file (the sidecar state), like a Secret's annotations."""
    previous: bytes | None = field(default=None, repr=False)
    """The content before the syncer's last write, if kept."""
    uid: int = -1
    """Owner of the file (kept on every write)."""
    gid: int = -1
    """Group of the file (kept on every write)."""
    type: str = SECRET_TYPE
    """Always the dockerconfigjson shape, so the Secret code paths apply unchanged."""

    @property
    def ref(self) -> str:
        """The path, for logs and summaries."""
        return self.path


def parse(payload: bytes | None) -> dockerconfig.Document:
    """A docker config.json as a document. Unlike a Secret, an empty file or one without
    ``auths`` (only ``credsStore``, say) is normal and means "no logins yet"."""
    if payload is None or not payload.strip():
        return dockerconfig.empty()
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise dockerconfig.MalformedError("not valid JSON") from None
    if isinstance(doc, dict):
        doc.setdefault("auths", {})
    return dockerconfig.validate(doc)


def serialize(doc: dockerconfig.Document) -> bytes:
    """Tab-indented JSON with a final newline, the way the docker CLI writes config.json."""
    return (json.dumps(doc, indent="\t", ensure_ascii=False) + "\n").encode("utf-8")


def sidecar(path: str, kind: str) -> str:
    """``/dir/.config.json.syncer-state`` or ``/dir/.config.json.previous``."""
    directory, base = os.path.split(path)
    return os.path.join(directory, f".{base}.{kind}")


def _token(st: os.stat_result, content: bytes) -> str:
    digest = hashlib.sha256(content).hexdigest()[:16]
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}:{digest}"


def _error(exc: OSError, path: str) -> KubeError:
    kind = {errno.EACCES: KubeErrorKind.FORBIDDEN, errno.EPERM: KubeErrorKind.FORBIDDEN,
            errno.ENOENT: KubeErrorKind.NOT_FOUND}.get(exc.errno or 0, KubeErrorKind.IO_ERROR)
    return KubeError(kind, path, f"{exc.strerror or type(exc).__name__}", what="file")


def _read_bytes(path: str) -> tuple[os.stat_result, bytes] | None:
    """(stat, content) of a regular file, None if it does not exist."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            return st, f.read()
    except FileNotFoundError:
        return None


class FileStore:
    """Reads and atomically replaces docker config files. ``dry_run`` is honoured in ``write``."""

    def __init__(self, dry_run: bool = False) -> None:
        self.dry_run = dry_run

    def read(self, path: str) -> FileSnapshot | None:
        """The file, or None when it does not exist."""
        real = os.path.realpath(path)
        try:
            found = _read_bytes(real)
            if found is None:
                return None
            st, content = found
            state = _read_bytes(sidecar(real, "syncer-state"))
            previous = _read_bytes(sidecar(real, "previous"))
        except OSError as exc:
            raise _error(exc, path) from None
        annotations: dict[str, str] = {}
        if state is not None:
            try:
                loaded = json.loads(state[1])
                annotations = {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
            except ValueError:
                log.warning("file %s: unreadable sync state ignored", path)
        return FileSnapshot(real, _token(st, content), content, annotations,
                            previous[1] if previous else None, st.st_uid, st.st_gid)

    def write(self, path: str, snapshot: FileSnapshot | None, payload: bytes,
              annotations: Mapping[str, str], previous: bytes | None = None) -> None:
        """Replace the file with ``payload`` if it is still as ``snapshot`` saw it (absent when
        None); then record ``annotations``. ``previous`` is kept for rollback first."""
        real = snapshot.path if snapshot else os.path.realpath(path)
        if self.dry_run:
            log.info("dry-run: would write file %s", real)
            return
        owner = (snapshot.uid, snapshot.gid) if snapshot else (-1, -1)
        try:
            if snapshot is None:
                os.makedirs(os.path.dirname(real), mode=0o700, exist_ok=True)
            self._check_token(real, snapshot)
            if previous is not None:
                atomic_write(sidecar(real, "previous"), previous, owner)
            atomic_write(real, payload, owner, lambda: self._check_token(real, snapshot))
            state = json.dumps(dict(annotations), indent=1, sort_keys=True).encode() + b"\n"
            atomic_write(sidecar(real, "syncer-state"), state, owner)
        except OSError as exc:
            raise _error(exc, path) from None

    @staticmethod
    def _check_token(path: str, snapshot: FileSnapshot | None) -> None:
        found = _read_bytes(path)
        now = None if found is None else _token(*found)
        if now != (snapshot.token if snapshot else None):
            raise KubeError(KubeErrorKind.CONFLICT, path, "changed by someone else since it was read",
                            what="file")


def atomic_write(path: str, content: bytes, owner: tuple[int, int] = (-1, -1),
                 before_rename: Callable[[], None] | None = None) -> None:
    """Write ``content`` to ``path`` atomically: temp file in the same directory, fsync,
    mode 0600, owner kept, rename, fsync of the directory. Raises OSError."""
    directory, base = os.path.split(path)
    _remove_stale_temps(directory, base)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}{_TEMP_MARK}", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            if owner != (-1, -1):
                os.fchown(f.fileno(), *owner)
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()  # the last precondition check, right before the atomic replace
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _remove_stale_temps(directory: str, base: str) -> None:
    """Remove temp files a killed writer left behind (old enough not to be in use)."""
    prefix = f".{base}{_TEMP_MARK}"
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(prefix) and time.time() - entry.stat().st_mtime > STALE_TEMP_AGE:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
