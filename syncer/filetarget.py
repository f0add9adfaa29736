"""File targets: keep a docker ``config.json`` on a build host or runner in sync, atomically.

A write never leaves a partial file behind, even if the process is killed at any point:
the new content goes to a temporary file in the same directory, is fsynced, chmod 0600 and
chowned to the old file's owner, then renamed over the target (an atomic replace on POSIX),
and the directory is fsynced so the rename survives a crash. Every path is opened through
syncer.safefs: no symlink another user could have made is followed, the file and its
bookkeeping siblings must be regular files and are read up to a cap (issue 16, item 3).
Keys the syncer does not manage (``credHelpers``, ``credsStore``, ``HttpHeaders``, unknown
ones) are kept by the same merge rules as for Secrets.

What a Secret keeps in annotations and in its ``.dockerconfigjson.previous`` key, a file
target keeps in two hidden siblings, both mode 0600 and owned like the target:
``.NAME.syncer-state`` (managed hosts, KV versions, last write; no secret material) and
``.NAME.previous`` (the content before the last write, for ``syncer rollback --file``).

Optimistic concurrency: a snapshot carries a token (inode, mtime, size and a SHA-256 of the
content); a write whose file no longer matches the token raises a CONFLICT TargetError and the
caller re-reads and re-merges, like after a 409 from the API server.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from syncer import dockerconfig, safefs
from syncer.config import TargetSettings
from syncer.target_errors import TargetError, TargetErrorKind

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 4 * 1024 * 1024
"""Largest config.json (and ``.previous``, a former config.json) read; a Secret holds 1 MiB."""
MAX_STATE_BYTES = 256 * 1024
"""Largest ``.syncer-state`` read (host names and KV versions: a few KiB in practice)."""


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

    @property
    def ref(self) -> str:
        """The path, for logs and summaries."""
        return self.path

    @property
    def version(self) -> str:
        """The concurrency token."""
        return self.token

    def document(self) -> dockerconfig.Document:
        """The file as a document. Raises MalformedError."""
        return parse(self.payload)

    @staticmethod
    def parse(content: bytes) -> dockerconfig.Document:
        """A config.json (this or a kept previous one) as a document, by the rules of files."""
        return parse(content)


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
    return os.path.join(directory, _sibling(base, kind))


def _sibling(base: str, kind: str) -> str:
    return f".{base}.{kind}"


def _token(st: os.stat_result, content: bytes) -> str:
    digest = hashlib.sha256(content).hexdigest()[:16]
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}:{digest}"


def _error(exc: OSError, path: str) -> TargetError:
    if isinstance(exc, safefs.UnsafeFileError):
        kind = TargetErrorKind.TOO_LARGE if exc.kind == "too_large" else TargetErrorKind.WRONG_TYPE
        return TargetError(kind, path, str(exc.strerror), what="file")
    kind = {errno.EACCES: TargetErrorKind.FORBIDDEN, errno.EPERM: TargetErrorKind.FORBIDDEN,
            errno.ENOENT: TargetErrorKind.NOT_FOUND}.get(exc.errno or 0, TargetErrorKind.IO_ERROR)
    return TargetError(kind, path, f"{exc.strerror or type(exc).__name__}", what="file")


def _split(path: str) -> tuple[str, str]:
    """(directory, name) of an absolute, normalised path."""
    return os.path.split(os.path.normpath(os.path.abspath(path)))


_Found = tuple[os.stat_result, bytes, dict[str, str], bytes | None]


def _read(dir_fd: int, base: str, path: str) -> _Found | None:
    """The file and its bookkeeping siblings, read without following any link."""
    found = safefs.read_regular(dir_fd, base, MAX_FILE_BYTES)
    if found is None:
        return None
    state = safefs.read_regular(dir_fd, _sibling(base, "syncer-state"), MAX_STATE_BYTES)
    previous = safefs.read_regular(dir_fd, _sibling(base, "previous"), MAX_FILE_BYTES)
    annotations: dict[str, str] = {}
    if state is not None:
        try:
            loaded = json.loads(state[1])
            annotations = {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
        except ValueError:
            log.warning("file %s: unreadable sync state ignored", path)
    return found[0], found[1], annotations, previous[1] if previous else None


class FileStore:
    """Reads and atomically replaces docker config files (the ``targets.TargetStore`` of file
    targets). ``dry_run`` is honoured in ``write``."""

    what = "file"
    emits_events = False
    """What a target of this store is called in reports."""

    def __init__(self, dry_run: bool = False) -> None:
        self.dry_run = dry_run

    def read_target(self, target: TargetSettings) -> FileSnapshot | None:
        """The target's file, or None when it does not exist."""
        return self.read(target.file)

    @staticmethod
    def prefetch(targets: Sequence[TargetSettings], *,
                 lists: bool = True) -> dict[str, FileSnapshot | TargetError | None]:
        """Nothing: files are read one by one (no LIST to save)."""
        return {}

    @staticmethod
    def serialize(doc: dockerconfig.Document) -> bytes:
        """The file's content for ``doc``."""
        return serialize(doc)

    def update(self, snapshot: FileSnapshot, payload: bytes, annotations: Mapping[str, str],
               previous: bytes | None = None) -> None:
        """Replace the file if it is still as ``snapshot`` saw it; ``annotations`` are set in the
        sync state, the other keys there are kept (as a Secret's merge patch keeps them)."""
        self.write(snapshot.path, snapshot, payload, {**snapshot.annotations, **annotations}, previous)

    def create(self, target: TargetSettings, payload: bytes, annotations: Mapping[str, str]) -> None:
        """Write the target's file, which must still not exist (and its directory if missing)."""
        self.write(target.file, None, payload, annotations)

    def read(self, path: str) -> FileSnapshot | None:
        """The file, or None when it (or its directory) does not exist."""
        directory, base = _split(path)
        try:
            dir_fd = safefs.open_dir(directory)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _error(exc, path) from None
        try:
            found = _read(dir_fd, base, path)
        except OSError as exc:
            raise _error(exc, path) from None
        finally:
            os.close(dir_fd)
        if found is None:
            return None
        st, content, annotations, previous = found
        return FileSnapshot(os.path.join(directory, base), _token(st, content), content, annotations,
                            previous, st.st_uid, st.st_gid)

    def write(self, path: str, snapshot: FileSnapshot | None, payload: bytes,
              annotations: Mapping[str, str], previous: bytes | None = None) -> None:
        """Replace the file with ``payload`` if it is still as ``snapshot`` saw it (absent when
        None); then record ``annotations``. ``previous`` is kept for rollback first."""
        directory, base = _split(snapshot.path if snapshot else path)
        if self.dry_run:
            log.info("dry-run: would write file %s", os.path.join(directory, base))
            return
        owner = (snapshot.uid, snapshot.gid) if snapshot else (-1, -1)
        try:
            dir_fd = safefs.open_dir(directory, create=snapshot is None)
        except OSError as exc:
            raise _error(exc, path) from None
        try:
            check = functools.partial(self._check_token, dir_fd, base, path, snapshot)
            check()
            if previous is not None:
                safefs.replace(dir_fd, _sibling(base, "previous"), previous, owner)
            safefs.replace(dir_fd, base, payload, owner, check)
            state = json.dumps(dict(annotations), indent=1, sort_keys=True).encode() + b"\n"
            safefs.replace(dir_fd, _sibling(base, "syncer-state"), state, owner)
        except OSError as exc:
            raise _error(exc, path) from None
        finally:
            os.close(dir_fd)

    @staticmethod
    def _check_token(dir_fd: int, base: str, path: str, snapshot: FileSnapshot | None) -> None:
        found = safefs.read_regular(dir_fd, base, MAX_FILE_BYTES)
        now = None if found is None else _token(*found)
        if now != (snapshot.token if snapshot else None):
            raise TargetError(TargetErrorKind.CONFLICT, path, "changed by someone else since it was read",
                              what="file")
